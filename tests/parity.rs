//! Parity with diffusers' `AutoencoderKL`: the fixtures in tests/fixtures were
//! written by tools/make_fixtures.py (PyTorch + diffusers, seeded); every weights
//! layout and dtype must reproduce them.

mod common;

use burn::tensor::{Tensor, TensorData};
use vae::imageio::{self, DEFAULT_MAX_PIXELS};

use common::parity::{TOLERANCE, check_decoder, check_encoder, device, full_fixtures, kl, load, load_with};
use common::{max_abs_diff, read_tensors};

#[test]
fn diffusers_folder_f32() {
    let mut vae = load("tiny_sd");
    assert_eq!(kl(&vae).config.block_out_channels, [32, 32, 64, 64]);
    check_encoder(&vae, "tiny_sd");
    check_decoder(&mut vae, "tiny_sd");
}

#[test]
fn diffusers_f16() {
    let mut vae = load("tiny_sd_f16.safetensors");
    check_encoder(&vae, "tiny_sd_f16");
    check_decoder(&mut vae, "tiny_sd_f16");
}

#[test]
fn diffusers_bf16() {
    let mut vae = load("tiny_sd_bf16.safetensors");
    check_encoder(&vae, "tiny_sd_bf16");
    check_decoder(&mut vae, "tiny_sd_bf16");
}

#[test]
fn compvis_ldm_layout() {
    let mut vae = load("tiny_sd_ldm.safetensors");
    assert_eq!(vae.info().layout, vae::weights::Layout::Ldm);
    check_encoder(&vae, "tiny_sd");
    check_decoder(&mut vae, "tiny_sd");
}

#[test]
fn legacy_attention_names() {
    let vae = load("tiny_sd_old_attn.safetensors");
    assert_eq!(vae.info().layout, vae::weights::Layout::DiffusersLegacyAttention);
    check_encoder(&vae, "tiny_sd");
}

#[test]
fn full_checkpoint_first_stage_model() {
    let mut vae = load("tiny_sd_ckpt.safetensors");
    assert_eq!(vae.info().prefix, Some("first_stage_model."));
    assert_eq!(vae.info().ignored, 4); // UNet conv weight and bias, text position ids, alphas_cumprod
    check_encoder(&vae, "tiny_sd_f16");
    check_decoder(&mut vae, "tiny_sd_f16");
}

#[test]
fn full_checkpoint_vae_prefix() {
    let vae = load("tiny_sd_vae_prefix.safetensors");
    assert_eq!(vae.info().prefix, Some("vae."));
    check_encoder(&vae, "tiny_sd_f16");
}

#[test]
fn sixteen_channel_vae_without_quant_convs() {
    let mut vae = load("tiny_flux");
    let cfg = &kl(&vae).config;
    assert_eq!((cfg.latent_channels, cfg.use_quant_conv, cfg.use_post_quant_conv), (16, false, false));
    assert_eq!((cfg.scaling_factor, cfg.shift_factor), (0.3611, 0.1159));
    check_encoder(&vae, "tiny_flux");
    check_decoder(&mut vae, "tiny_flux");
}

/// The real SD 1.x size with random weights; needs the fixtures of
/// `python3 tools/make_fixtures.py --full-size target/fixtures-full` (or
/// `$VAE_FULL_FIXTURES`). Run: `cargo test --release --test parity -- --ignored`.
#[test]
#[ignore = "needs Python-made full-size fixtures; see README"]
fn full_size_sd15() {
    let dir = full_fixtures();
    let vae = load_with(&dir.join("sd15_random").display().to_string(), |_| {});
    assert_eq!(kl(&vae).config.block_out_channels, [128, 256, 512, 512]);
    let input = imageio::load(&dir.join("images/kodim03.png"), DEFAULT_MAX_PIXELS).unwrap();
    let want = read_tensors(&dir.join("expected/sd15_random__kodim03.safetensors"));
    let posterior = kl(&vae).encode(input.to_tensor(8, &device()));
    let mean = posterior.mean.into_data().try_into_vec::<f32>().unwrap();
    let err = max_abs_diff(&mean, &want["mean"].1);
    eprintln!("full size: latent mean max abs error {err:e}");
    assert!(err <= TOLERANCE, "latent mean max abs error {err:e}");
    let (shape, expected_mean) = &want["mean"];
    let z = Tensor::<4>::from_data(TensorData::new(expected_mean.clone(), shape.clone()), &device());
    let decoded = kl(&vae).decode(z).into_data().try_into_vec::<f32>().unwrap();
    let err = max_abs_diff(&decoded, &want["decoded"].1);
    eprintln!("full size: decoded max abs error {err:e}");
    assert!(err <= TOLERANCE, "decoded max abs error {err:e}");
}
