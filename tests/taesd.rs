//! TAESD (diffusers' `AutoencoderTiny`): parity with diffusers in every weights
//! layout (tests/fixtures, written by tools/make_fixtures.py), latents that the
//! big VAE of the same family decodes and the other way round, and the command
//! line with TAESD weights.

mod common;

use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData};
use vae::device::DeviceRequest;
use vae::imageio::{self, DEFAULT_MAX_PIXELS};
use vae::latent::{Latent, Posterior};
use vae::model::{AutoencoderTinyConfig, Family};
use vae::weights::{Layout, Parts};
use vae::{Vae, VaeOptions};

use common::parity::{
    TINY_IMAGES, TINY_TOLERANCE, assert_png_close, check_tiny, device, full_fixtures, load, load_with, tiny,
};
use common::{assert_fails, fixtures, max_abs_diff, read_tensors, stderr, stdout, vae};

fn weights(name: &str) -> String {
    fixtures().join("weights").join(name).display().to_string()
}

fn image(name: &str) -> PathBuf {
    fixtures().join(format!("images/{name}.png"))
}

#[test]
fn diffusers_folder() {
    let mut vae = load("tiny_taesd");
    assert_eq!(vae.info().layout, Layout::Diffusers);
    let cfg = &tiny(&vae).config;
    assert_eq!((cfg.latent_channels, cfg.num_encoder_blocks.as_slice()), (4, &[1, 3, 3, 3][..]));
    // "taesd" in the folder name: SD 1.x latents.
    assert_eq!((vae.latent_space().scaling_factor, vae.latent_space().shift_factor), (0.18215, 0.0));
    check_tiny(&mut vae, "tiny_taesd");
}

#[test]
fn original_split_files_in_one_folder() {
    let mut vae = load("tiny_taesd_split");
    assert_eq!(vae.info().layout, Layout::Taesd);
    // Read off the shapes: no config.json.
    assert_eq!(tiny(&vae).config.num_decoder_blocks, [3, 3, 3, 1]);
    assert!(vae.info().path.ends_with("taesd_encoder.safetensors"), "{}", vae.info().path.display());
    check_tiny(&mut vae, "tiny_taesd");
}

#[test]
fn original_halves_alone() {
    let open = |half: &str, parts: Parts| {
        let weights = fixtures().join("weights/tiny_taesd_split").join(half);
        Vae::open(&VaeOptions { parts, device: DeviceRequest::Cpu, ..VaeOptions::new(weights) })
    };
    let mut encoder = open("taesd_encoder.safetensors", Parts::Encoder).unwrap();
    let input = imageio::load(&image(TINY_IMAGES[0]), DEFAULT_MAX_PIXELS).unwrap();
    let latent = encoder.encode(&input, Posterior::Mean).unwrap();
    let want = read_tensors(&fixtures().join(format!("expected/tiny_taesd__{}.safetensors", TINY_IMAGES[0])));
    assert!(max_abs_diff(&latent.data, &want["latents"].1) <= TINY_TOLERANCE);

    let mut decoder = open("taesd_decoder.safetensors", Parts::Decoder).unwrap();
    assert!(!tiny(&decoder).config.has_encoder());
    let planar = decoder.decode_float(&latent).unwrap();
    assert!(max_abs_diff(&planar, &want["decoded"].1) <= 1e-4, "decoding our own latents");

    // The missing half is named, before anything is read.
    let err = open("taesd_encoder.safetensors", Parts::Decoder).err().unwrap();
    assert!(err.to_string().contains("holds only the encoder of a TAESD, and decoding needs its decoder"), "{err}");
    let err = open("taesd_decoder.safetensors", Parts::Both).err().unwrap();
    assert!(err.to_string().contains("a roundtrip needs its encoder"), "{err}");
}

#[test]
fn comfyui_combined_f16_with_its_scaling() {
    let mut vae = load("tiny_taesd_comfy_f16.safetensors");
    assert_eq!((vae.info().layout, vae.info().dtype.as_str()), (Layout::Taesd, "f16+f32"));
    // vae_scale / vae_shift win over the name (taesd: SD 1.x): SDXL's, exactly.
    assert_eq!((vae.latent_space().scaling_factor, vae.latent_space().shift_factor), (0.13025, 0.0));
    assert_eq!(vae.latent_space().family, Some(vae::model::Family::Sdxl));
    check_tiny(&mut vae, "tiny_taesd_f16");
}

#[test]
fn sixteen_channels_from_config_json() {
    let mut vae = load("tiny_taef1");
    let cfg = &tiny(&vae).config;
    assert_eq!((cfg.latent_channels, cfg.num_encoder_blocks.as_slice()), (16, &[1, 2, 2, 2][..]));
    assert_eq!(cfg.num_decoder_blocks, [2, 2, 2, 1]);
    // "taef1" in the folder name: FLUX.1 latents.
    assert_eq!((vae.latent_space().scaling_factor, vae.latent_space().shift_factor), (0.3611, 0.1159));
    check_tiny(&mut vae, "tiny_taef1");
}

/// One model encodes, the other decodes, through latent files as `vae` writes
/// them: the PNGs of diffusers doing the same (a pipeline hands TAESD the
/// scaled latent, and the big VAE that latent over its scaling factor).
#[test]
fn taesd_and_the_big_vae_read_each_other_latents() {
    let (mut taesd, mut sd) = (load("tiny_taesd"), load("tiny_sd"));
    let input = imageio::load(&image(TINY_IMAGES[0]), DEFAULT_MAX_PIXELS).unwrap();
    for (taesd_encodes, expected) in [(true, "tiny_taesd_to_tiny_sd"), (false, "tiny_sd_to_tiny_taesd")] {
        let (encoder, decoder) = if taesd_encodes { (&mut taesd, &mut sd) } else { (&mut sd, &mut taesd) };
        let latent = encoder.encode(&input, Posterior::Mean).unwrap();
        assert_eq!((latent.meta.scaling_factor, latent.meta.family), (Some(0.18215), Some(Family::Sd1)));
        let got = decoder.decode(&latent).unwrap();
        assert_png_close(&got.rgb8, &fixtures().join(format!("expected/{expected}__{}.png", TINY_IMAGES[0])));
    }
    // A latent scaled for another family is rescaled for TAESD's: TAESD sees
    // the same input, so decodes the same image.
    let latent = taesd.encode(&input, Posterior::Mean).unwrap();
    let mut rescaled = latent.clone();
    rescaled.data = latent.data.iter().map(|v| ((*v as f64 / 0.18215 - 0.1) * 0.5) as f32).collect();
    (rescaled.meta.scaling_factor, rescaled.meta.shift_factor) = (Some(0.5), Some(0.1));
    let a = taesd.decode_float(&latent).unwrap();
    let b = taesd.decode_float(&rescaled).unwrap();
    assert!(max_abs_diff(&a, &b) < 1e-5);
}

/// madebyollin/taesd's real shape (64 channels, about 1.2M parameters a half)
/// with random weights, on the whole 768x512 kodim03; needs the fixtures of
/// `python3 tools/make_fixtures.py --full-size` (see `full_fixtures`).
/// Run: `cargo test --release --test taesd -- --ignored`.
#[test]
#[ignore = "needs Python-made full-size fixtures; see README"]
fn full_size_taesd() {
    let dir = full_fixtures();
    let vae = load_with(&dir.join("taesd_random").display().to_string(), |_| {});
    assert_eq!(tiny(&vae).config, AutoencoderTinyConfig::taesd());
    let model = tiny(&vae);
    let want = read_tensors(&dir.join("expected/taesd_random__kodim03.safetensors"));
    let input = imageio::load(&dir.join("images/kodim03.png"), DEFAULT_MAX_PIXELS).unwrap();
    let latents = model.encode(input.to_tensor(8, &device())).unwrap().into_data().try_into_vec::<f32>().unwrap();
    let err = max_abs_diff(&latents, &want["latents"].1);
    eprintln!("full size: latents max abs error {err:e}");
    assert!(err <= TINY_TOLERANCE, "latents max abs error {err:e}");
    let (shape, values) = &want["latents"];
    let z = Tensor::<4>::from_data(TensorData::new(values.clone(), shape.clone()), &device());
    let decoded = model.decode(z).unwrap().into_data().try_into_vec::<f32>().unwrap();
    let err = max_abs_diff(&decoded, &want["decoded"].1);
    eprintln!("full size: decoded max abs error {err:e}");
    assert!(err <= TINY_TOLERANCE, "decoded max abs error {err:e}");
}

// ---------------------------------------------------------------- command line

fn photo(dir: &Path, name: &str) -> String {
    std::fs::copy(image(TINY_IMAGES[0]), dir.join(name)).unwrap();
    name.to_owned()
}

#[test]
fn cli_encode_decode_and_roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    photo(p, "in.png");
    let w = weights("tiny_taesd");
    let out = vae(p, &["encode", "in.png", "-o", "z.safetensors", "--weights", &w]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("AutoencoderTiny, diffusers layout"), "{}", stderr(&out));
    let latent = Latent::read(&p.join("z.safetensors")).unwrap();
    assert_eq!((latent.channels, latent.height, latent.width), (4, 16, 20));
    let meta = &latent.meta;
    assert_eq!((meta.scaling_factor, meta.shift_factor, meta.family), (Some(0.18215), Some(0.0), Some(Family::Sd1)));

    // TAESD and the big VAE decode it; TAESD's PNG is diffusers' within a level.
    let sd = weights("tiny_sd");
    for (weights, png) in [(&w, "taesd.png"), (&sd, "sd.png")] {
        let out = vae(p, &["decode", "z.safetensors", "-o", png, "--weights", weights]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let ours = image::open(p.join("taesd.png")).unwrap().to_rgb8();
    assert_png_close(ours.as_raw(), &fixtures().join(format!("expected/tiny_taesd__{}.png", TINY_IMAGES[0])));

    // ComfyUI's .latent holds the unscaled latent: TAESD's over SD 1.x's scaling, and back.
    for args in [&["encode", "in.png", "-o", "z.latent"][..], &["decode", "z.latent", "-o", "comfy.png"][..]] {
        let out = vae(p, &[args, &["--weights", &w]].concat());
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let unscaled: Vec<f32> = latent.data.iter().map(|v| (*v as f64 / 0.18215) as f32).collect();
    assert!(max_abs_diff(&Latent::read(&p.join("z.latent")).unwrap().data, &unscaled) < 1e-4);
    assert_png_close(ours.as_raw(), &p.join("comfy.png"));

    // madebyollin's two files, given as their folder, round-trip.
    let out = vae(p, &["roundtrip", "in.png", "--json", "--weights", &weights("tiny_taesd_split")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let row: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(row["latent_shape"], serde_json::json!([1, 4, 16, 20]));
}

#[test]
fn cli_tile_is_ignored_and_said() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    photo(p, "in.png");
    let w = weights("tiny_taesd");
    for (tile, out_name) in [("off", "a.safetensors"), ("16", "b.safetensors")] {
        let out = vae(p, &["encode", "in.png", "-o", out_name, "--tile", tile, "--max-memory", "1K", "--weights", &w]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stderr(&out).contains("TAESD runs untiled"), "{}", stderr(&out));
    }
    let (a, b) = (Latent::read(&p.join("a.safetensors")).unwrap(), Latent::read(&p.join("b.safetensors")).unwrap());
    assert_eq!(a.data, b.data);
}

#[test]
fn cli_mismatched_kinds_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    photo(p, "in.png");
    let out = vae(p, &["encode", "in.png", "-o", "z.safetensors", "--weights", &weights("tiny_taesd")]);
    assert!(out.status.success(), "{}", stderr(&out));

    // An encoder-only file cannot decode, nor a decoder-only one encode.
    let encoder = weights("tiny_taesd_split/taesd_encoder.safetensors");
    let out = vae(p, &["decode", "z.safetensors", "-o", "x.png", "--weights", &encoder]);
    assert_fails(
        &out,
        "taesd_encoder.safetensors",
        "holds only the encoder of a TAESD, and decoding needs its decoder",
    );
    let decoder = weights("tiny_taesd_split/taesd_decoder.safetensors");
    let out = vae(p, &["encode", "in.png", "-o", "y.safetensors", "--weights", &decoder]);
    assert_fails(&out, "taesd_decoder.safetensors", "encoding needs its encoder");

    // A 4-channel TAESD latent is not a 16-channel one.
    let out = vae(p, &["decode", "z.safetensors", "-o", "x.png", "--weights", &weights("tiny_taef1")]);
    assert_fails(&out, "z.safetensors", "latent has 4 channels but the weights expect 16");

    // TAESD has no posterior to sample.
    let out = vae(p, &["encode", "in.png", "-o", "s.safetensors", "--sample", "--weights", &weights("tiny_taesd")]);
    assert_fails(&out, "tiny_taesd", "deterministic");

    // A config.json that describes the other kind of model.
    let mixed = p.join("mixed");
    std::fs::create_dir(&mixed).unwrap();
    std::fs::copy(fixtures().join("weights/tiny_taesd/config.json"), mixed.join("config.json")).unwrap();
    let sd_weights = fixtures().join("weights/tiny_sd/diffusion_pytorch_model.safetensors");
    std::fs::copy(sd_weights, mixed.join("diffusion_pytorch_model.safetensors")).unwrap();
    let out = vae(p, &["encode", "in.png", "-o", "m.safetensors", "--weights", "mixed"]);
    assert_fails(&out, "config.json", "describes an AutoencoderTiny, but the weights beside it hold an AutoencoderKL");
    assert!(!p.join("x.png").exists() && !p.join("y.safetensors").exists() && !p.join("s.safetensors").exists());
}

/// A TAESD file missing a tensor, or with one of the wrong shape, is refused
/// with every such tensor named (by its diffusers name).
#[test]
fn incomplete_weights_name_the_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    photo(p, "in.png");
    let bytes = std::fs::read(fixtures().join("weights/tiny_taesd_split/taesd_encoder.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let wrong = vec![0u8; 4 * 8];
    let tensors: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(name, _)| name != "1.conv.2.bias")
        .map(|(name, view)| match name.as_str() {
            "3.conv.4.bias" => (name, safetensors::tensor::TensorView::new(view.dtype(), vec![8], &wrong).unwrap()),
            _ => (name, view),
        })
        .collect();
    std::fs::write(p.join("broken_encoder.safetensors"), safetensors::serialize(tensors, None).unwrap()).unwrap();
    let out = vae(p, &["encode", "in.png", "-o", "z.safetensors", "--weights", "broken_encoder.safetensors"]);
    assert_fails(&out, "broken_encoder.safetensors", "tensors do not fit an AutoencoderTiny");
    let err = stderr(&out);
    assert!(err.contains("missing 1: encoder.layers.1.conv.2.bias"), "{err}");
    assert!(err.contains("encoder.layers.3.conv.4.bias (expected [16], file has [8])"), "{err}");
    assert!(!p.join("z.safetensors").exists());
}

#[test]
fn cli_family_and_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    photo(p, "in.png");
    // A TAESD named for no family: SD 1.x assumed from 4 channels, and said;
    // --family sets it (and silences the note).
    std::fs::copy(fixtures().join("weights/tiny_taesd_comfy_f16.safetensors"), p.join("tiny.safetensors")).unwrap();
    let encoder = weights("tiny_taesd_split/taesd_encoder.safetensors");
    std::fs::copy(encoder, p.join("half.safetensors")).unwrap();
    let out = vae(p, &["encode", "in.png", "-o", "a.safetensors", "--weights", "half.safetensors"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("sd1, assumed from its 4 latent channels"), "{}", stderr(&out));
    let out = vae(p, &["encode", "in.png", "-o", "b.safetensors", "--family", "sdxl", "--weights", "half.safetensors"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("assumed"), "{}", stderr(&out));
    let (a, b) = (Latent::read(&p.join("a.safetensors")).unwrap(), Latent::read(&p.join("b.safetensors")).unwrap());
    assert_eq!(a.data, b.data, "the family changes the metadata, not TAESD's output");
    assert_eq!((a.meta.scaling_factor, b.meta.scaling_factor), (Some(0.18215), Some(0.13025)));

    let out = vae(p, &["inspect", "--json", "tiny.safetensors", &weights("tiny_taesd_split")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let reports: Vec<serde_json::Value> = stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let (comfy, split) = (&reports[0], &reports[1]);
    assert_eq!(comfy["model"], "AutoencoderTiny");
    assert_eq!(comfy["layout"], "TAESD original (madebyollin)");
    assert_eq!(comfy["halves"], "encoder and decoder");
    assert_eq!((comfy["scaling_factor"].as_f64(), comfy["latent_channels"].as_u64()), (Some(0.13025), Some(4)));
    assert!(comfy["family"].as_str().unwrap().starts_with("sdxl (latent scaling 0.13025"), "{comfy}");
    assert_eq!(split["parameters"], comfy["parameters"].as_u64().unwrap() - 2, "less vae_scale and vae_shift");
    let out = vae(p, &["inspect", &weights("tiny_sd")]);
    assert!(stdout(&out).contains("model: AutoencoderKL"), "{}", stdout(&out));
}
