//! Parity checks against the fixtures of tools/make_fixtures.py, shared by the
//! test binaries that run them with and without the CPU kernels.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use vae::Vae;
use vae::imageio::{self, DEFAULT_MAX_PIXELS};
use vae::latent::{Latent, LatentMeta};
use vae::weights::WeightsSource;

use super::{fixtures, max_abs_diff, read_tensors};

/// Latents and decoded images are compared in f32 after ~40 convolutions
/// whose sums run in a different order than PyTorch's (oneDNN vs gemm): the
/// observed differences are ~1e-6; 1e-4 is the bound the project promises.
pub const TOLERANCE: f32 = 1e-4;

const IMAGES: [&str; 2] = ["kodim03", "kodim04"];

pub fn device() -> Device {
    Device::flex()
}

pub fn load(weights: &str) -> Vae {
    let source = WeightsSource::from_path(&fixtures().join("weights").join(weights)).expect("fixture weights exist");
    Vae::load(&source, &device(), None).unwrap_or_else(|e| panic!("loading {weights}: {e}"))
}

/// Encodes each fixture image and compares mean and log-variance with diffusers.
pub fn check_encoder(vae: &Vae, expected: &str) {
    for image in IMAGES {
        let input = imageio::load(&fixtures().join(format!("images/{image}.png")), DEFAULT_MAX_PIXELS).unwrap();
        let x = input.to_tensor(vae.model.config.downscale(), &device());
        let posterior = vae.model.encode(x);
        let want = read_tensors(&fixtures().join(format!("expected/{expected}__{image}.safetensors")));
        for (name, got) in [("mean", posterior.mean), ("logvar", posterior.logvar)] {
            let (shape, values) = &want[name];
            assert_eq!(&got.dims().to_vec(), shape, "{expected}/{image}: {name} shape");
            let got = got.into_data().try_into_vec::<f32>().unwrap();
            let err = max_abs_diff(&got, values);
            eprintln!("{expected}/{image}: {name} max abs error {err:.1e}");
            assert!(err <= TOLERANCE, "{expected}/{image}: {name} max abs error {err:e} > {TOLERANCE:e}");
        }
    }
}

/// diffusers' unscaled `mean` (`shape` `[1, C, h, w]`) scaled as a latent
/// file holds it, with the model's scaling and no metadata.
pub fn scaled_latent(vae: &Vae, shape: &[usize], mean: &[f32]) -> Latent {
    let cfg = &vae.model.config;
    Latent {
        channels: shape[1],
        height: shape[2],
        width: shape[3],
        data: mean.iter().map(|v| ((*v as f64 - cfg.shift_factor) * cfg.scaling_factor) as f32).collect(),
        meta: LatentMeta::default(),
    }
}

/// Decodes diffusers' own latent of each image and compares the 8-bit PNG
/// (within one level: rounding at x.5 may flip) and, where the fixture has it,
/// the float output before quantisation.
pub fn check_decoder(vae: &Vae, expected: &str) {
    for image in IMAGES {
        let want = read_tensors(&fixtures().join(format!("expected/{expected}__{image}.safetensors")));
        let (shape, mean) = &want["mean"];
        if let Some((_, decoded)) = want.get("decoded") {
            let z = Tensor::<4>::from_data(TensorData::new(mean.clone(), shape.clone()), &device());
            let got = vae.model.decode(z).into_data().try_into_vec::<f32>().unwrap();
            let err = max_abs_diff(&got, decoded);
            eprintln!("{expected}/{image}: decoded max abs error {err:.1e}");
            assert!(err <= TOLERANCE, "{expected}/{image}: decoded max abs error {err:e} > {TOLERANCE:e}");
        }
        // Through the user-facing path: a scaled latent, as a file would hold it.
        let latent = scaled_latent(vae, shape, mean);
        let got = vae.decode(&latent, Path::new("fixture"), DEFAULT_MAX_PIXELS).unwrap();
        let want_png = image::open(fixtures().join(format!("expected/{expected}__{image}.png"))).unwrap().to_rgb8();
        assert_eq!((got.width as u32, got.height as u32), want_png.dimensions());
        let worst = got.rgb8.iter().zip(want_png.as_raw()).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
        if worst > 1 {
            let dump = mismatch_dir().join(format!("{expected}__{image}.png"));
            got.save_png(&dump, vae::output::Overwrite::Replace).unwrap();
            panic!("{expected}/{image}: PNG differs by {worst} levels; ours is at {}", dump.display());
        }
    }
}

/// Where mismatching outputs are written for a person to look at.
fn mismatch_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("parity-mismatch");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
