//! Parity checks against the fixtures of tools/make_fixtures.py, shared by the
//! test binaries that run them with and without the CPU kernels.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use vae::device::DeviceRequest;
use vae::imageio::{self, DEFAULT_MAX_PIXELS};
use vae::latent::{Latent, LatentMeta};
use vae::model::{AutoencoderKl, AutoencoderTiny, Model};
use vae::{Vae, VaeOptions};

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
    load_with(weights, |_| {})
}

/// [`load`] on another device (tests/gpu.rs).
pub fn load_on(weights: &str, device: DeviceRequest) -> Vae {
    load_with(weights, |options| options.device = device)
}

/// [`load`] of the fixture `weights` (or of a path, when `weights` is one),
/// on the CPU unless `options` says otherwise, with `options` changed by `f`.
pub fn load_with(weights: &str, f: impl FnOnce(&mut VaeOptions)) -> Vae {
    let mut options =
        VaeOptions { device: DeviceRequest::Cpu, ..VaeOptions::new(fixtures().join("weights").join(weights)) };
    f(&mut options);
    Vae::open(&options).unwrap_or_else(|e| panic!("loading {weights}: {e}"))
}

/// The fixtures of `python3 tools/make_fixtures.py --full-size` (not
/// committed): `$VAE_FULL_FIXTURES`, else target/fixtures-full.
pub fn full_fixtures() -> PathBuf {
    std::env::var_os("VAE_FULL_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fixtures-full"))
}

/// The `AutoencoderKL` of a VAE that a test loaded as one.
pub fn kl(vae: &Vae) -> &AutoencoderKl {
    match vae.model() {
        Model::Kl(model) => model,
        other => panic!("expected an AutoencoderKL, loaded an {}", other.class_name()),
    }
}

/// Encodes each fixture image and compares mean and log-variance with diffusers.
pub fn check_encoder(vae: &Vae, expected: &str) {
    check_encoder_on(vae, expected, &device());
}

/// [`check_encoder`] for a model loaded on `device`.
pub fn check_encoder_on(vae: &Vae, expected: &str, device: &Device) {
    for image in IMAGES {
        let input = imageio::load(&fixtures().join(format!("images/{image}.png")), DEFAULT_MAX_PIXELS).unwrap();
        let x = input.to_tensor(vae.model().downscale(), device);
        let posterior = kl(vae).encode(x);
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
    let (scaling, shift) = (vae.latent_space().scaling_factor, vae.latent_space().shift_factor);
    Latent {
        channels: shape[1],
        height: shape[2],
        width: shape[3],
        data: mean.iter().map(|v| ((*v as f64 - shift) * scaling) as f32).collect(),
        meta: LatentMeta::default(),
    }
}

/// diffusers' unscaled `mean` (`shape` `[1, C, h, w]`) as a latent file that
/// says so (scale 1, shift 0), whatever the model's latent space.
pub fn raw_latent(shape: &[usize], mean: &[f32]) -> Latent {
    Latent {
        channels: shape[1],
        height: shape[2],
        width: shape[3],
        data: mean.to_vec(),
        meta: LatentMeta { scaling_factor: Some(1.0), shift_factor: Some(0.0), ..Default::default() },
    }
}

/// Decodes diffusers' own latent of each image and compares the 8-bit PNG
/// (within one level: rounding at x.5 may flip) and, where the fixture has it,
/// the float output before quantisation.
pub fn check_decoder(vae: &mut Vae, expected: &str) {
    check_decoder_on(vae, expected, &device());
}

/// [`check_decoder`] for a model loaded on `device`.
pub fn check_decoder_on(vae: &mut Vae, expected: &str, device: &Device) {
    for image in IMAGES {
        let want = read_tensors(&fixtures().join(format!("expected/{expected}__{image}.safetensors")));
        let (shape, mean) = &want["mean"];
        if let Some((_, decoded)) = want.get("decoded") {
            let z = Tensor::<4>::from_data(TensorData::new(mean.clone(), shape.clone()), device);
            let got = kl(vae).decode(z).into_data().try_into_vec::<f32>().unwrap();
            let err = max_abs_diff(&got, decoded);
            eprintln!("{expected}/{image}: decoded max abs error {err:.1e}");
            assert!(err <= TOLERANCE, "{expected}/{image}: decoded max abs error {err:e} > {TOLERANCE:e}");
        }
        // Through the user-facing path: a scaled latent, as a file would hold it.
        let latent = scaled_latent(vae, shape, mean);
        let got = vae.decode(&latent).unwrap();
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

/// TAESD has no GroupNorm and no attention: against diffusers' float64 pass
/// our f32 result differs only by the rounding of ~40 convolutions whose sums
/// run in another order. torch's own f32 pass is 1e-6 to 4e-6 off (the script
/// prints it) and ours measured under 4e-6; 2e-5 leaves room for other CPUs'
/// GEMM kernels while a wrong layer, weight or index moves outputs by 1e-2
/// or more.
pub const TINY_TOLERANCE: f32 = 2e-5;

/// The crops TAESD runs on (small fixtures).
pub const TINY_IMAGES: [&str; 2] = ["kodim03_160x128", "kodim04_96x136"];

/// The `AutoencoderTiny` of a VAE that a test loaded as one.
pub fn tiny(vae: &Vae) -> &AutoencoderTiny {
    match vae.model() {
        Model::Tiny(model) => model,
        other => panic!("expected an AutoencoderTiny, loaded an {}", other.class_name()),
    }
}

/// Encodes each image and decodes diffusers' latents, comparing both with
/// `expected`, the decoded float image and, through `Vae::decode`, the PNG.
/// Returns the max abs errors (latents, decoded).
pub fn check_tiny(vae: &mut Vae, expected: &str) -> (f32, f32) {
    let (mut latent_err, mut decoded_err) = (0.0f32, 0.0f32);
    for name in TINY_IMAGES {
        let want = read_tensors(&fixtures().join(format!("expected/{expected}__{name}.safetensors")));
        let input = imageio::load(&fixtures().join(format!("images/{name}.png")), DEFAULT_MAX_PIXELS).unwrap();
        let latents = tiny(vae).encode(input.to_tensor(8, &device())).unwrap();
        let (shape, values) = &want["latents"];
        assert_eq!(&latents.dims().to_vec(), shape, "{expected}/{name}: latents shape");
        let err = max_abs_diff(&latents.into_data().try_into_vec::<f32>().unwrap(), values);
        assert!(err <= TINY_TOLERANCE, "{expected}/{name}: latents max abs error {err:e} > {TINY_TOLERANCE:e}");
        latent_err = latent_err.max(err);

        let z = Tensor::<4>::from_data(TensorData::new(values.clone(), shape.clone()), &device());
        let decoded = tiny(vae).decode(z).unwrap().into_data().try_into_vec::<f32>().unwrap();
        let err = max_abs_diff(&decoded, &want["decoded"].1);
        assert!(err <= TINY_TOLERANCE, "{expected}/{name}: decoded max abs error {err:e} > {TINY_TOLERANCE:e}");
        decoded_err = decoded_err.max(err);

        // The user-facing path: TAESD latents are the big VAE's scaled latents,
        // so a file holds them as they are, with the model's scaling recorded.
        let (scaling, shift) = (vae.latent_space().scaling_factor, vae.latent_space().shift_factor);
        let meta = LatentMeta { scaling_factor: Some(scaling), shift_factor: Some(shift), ..LatentMeta::default() };
        let latent = Latent { channels: shape[1], height: shape[2], width: shape[3], data: values.clone(), meta };
        let got = vae.decode(&latent).unwrap();
        assert_png_close(&got.rgb8, &fixtures().join(format!("expected/{expected}__{name}.png")));
    }
    eprintln!("{expected}: latents max abs error {latent_err:e}, decoded {decoded_err:e}");
    (latent_err, decoded_err)
}

/// Every 8-bit value within one level of `png`'s (rounding at x.5 may flip).
pub fn assert_png_close(rgb8: &[u8], png: &Path) {
    let want = image::open(png).unwrap().to_rgb8();
    assert_eq!(rgb8.len(), want.as_raw().len(), "{}: size", png.display());
    let worst = rgb8.iter().zip(want.as_raw()).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    assert!(worst <= 1, "{}: PNG differs by {worst} levels", png.display());
}
