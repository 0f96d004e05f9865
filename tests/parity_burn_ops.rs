//! The same parity checks through burn's own operations instead of the CPU
//! kernels: the path that GPU devices take, checked here on the CPU.

mod common;

use common::parity::{check_decoder, check_encoder, check_tiny, load};

#[test]
fn burn_ops_sd_layout() {
    vae::kernels::set_enabled(false);
    let mut vae = load("tiny_sd");
    check_encoder(&vae, "tiny_sd");
    check_decoder(&mut vae, "tiny_sd");
}

#[test]
fn burn_ops_sixteen_channels() {
    vae::kernels::set_enabled(false);
    let mut vae = load("tiny_flux");
    check_encoder(&vae, "tiny_flux");
    check_decoder(&mut vae, "tiny_flux");
}

#[test]
fn burn_ops_taesd() {
    vae::kernels::set_enabled(false);
    // Stride-2 convolutions padded on all sides, convolutions without bias,
    // and nearest upsampling as burn's interpolate.
    check_tiny(&mut load("tiny_taesd"), "tiny_taesd");
}

/// FLUX.2, Wan 2.1 / Qwen-Image, Wan 2.2 and Qwen-Image 2.1 through burn's
/// operations: RMS norms, the causal convolutions' last tap, the `Shuffle`
/// steps (patchify, `AvgDown3D`, `DupUp3D`) and FLUX.2's narrower decoder,
/// against the fixtures of `tests/families.rs` (same 1e-4 bound).
#[test]
fn burn_ops_new_families() {
    use vae::imageio;
    use vae::latent::Posterior;
    use vae::latent_space::{LatentForm, LatentSpaceRequest};

    vae::kernels::set_enabled(false);
    let families = common::fixtures().join("families");
    // (weights folder, expected-output folder, decoded-output prefix)
    let cases = [
        ("flux2/diffusers", "flux2", ""),
        ("flux2/small_decoder", "flux2", "small_decoder_"),
        ("qwen/diffusers", "qwen", ""),
        ("wan22/diffusers", "wan22", ""),
        ("qwenimage21/diffusers", "qwenimage21", ""),
    ];
    for (weights, expected, prefix) in cases {
        let mut vae = common::parity::load_with(families.join(weights).to_str().unwrap(), |o| {
            o.latent_space = LatentSpaceRequest { form: Some(LatentForm::Raw), ..Default::default() };
        });
        for stem in ["kodim03_96x64", "kodim07_80x112"] {
            let want = common::read_tensors(&families.join(format!("{expected}/expected/{stem}.safetensors")));
            let (shape, mean) = &want["mean"];
            if prefix.is_empty() {
                let image = imageio::load(&families.join(format!("images/{stem}.png")), imageio::DEFAULT_MAX_PIXELS);
                let latent = vae.encode(&image.unwrap(), Posterior::Mean).unwrap();
                assert_eq!([1, latent.channels, latent.height, latent.width], shape[..], "{weights}: latent shape");
                let err = common::max_abs_diff(&latent.data, mean);
                eprintln!("{weights} {stem} latent: max abs error {err:.1e}");
                assert!(err <= 1e-4, "{weights} {stem}: latent differs by {err:e}");
            }
            let latent = common::parity::raw_latent(shape, mean);
            let decoded = vae.decode_float(&latent).unwrap();
            let reference =
                common::read_tensors(&families.join(format!("{expected}/expected/{prefix}{stem}.safetensors")));
            let err = common::max_abs_diff(&decoded, &reference["decoded"].1);
            eprintln!("{weights} {stem} decoded: max abs error {err:.1e}");
            assert!(err <= 1e-4, "{weights} {stem}: decoded differs by {err:e}");
        }
    }
}
