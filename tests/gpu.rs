//! The GPU path (`--device gpu`, wgpu) against diffusers' fixtures and the
//! CPU path. Built with `--features wgpu`; on a machine without a GPU,
//! Debian's `mesa-vulkan-drivers` (lavapipe, a software Vulkan driver) gives
//! wgpu an adapter. Where wgpu finds no adapter at all, each test prints why
//! it skipped and passes: the only skip allowed here.
//!
//! lavapipe is slow (a 768x512 encode of the tiny fixture takes 20-30 s
//! against 1.5 s on the CPU path), so each test does one image.
#![cfg(feature = "wgpu")]

mod common;

use std::path::{Path, PathBuf};

use burn::tensor::{FloatDType, Tensor, TensorData};
use vae::device::{self, DeviceRequest};
use vae::imageio::{self, DEFAULT_MAX_PIXELS};
use vae::latent::Latent;

use common::parity::{TOLERANCE, kl, load_on};
use common::{fixtures, max_abs_diff, read_tensors, stderr, vae};

/// The GPU device, or `None` after printing why the test is skipped.
fn gpu() -> Option<device::Chosen> {
    match device::choose(DeviceRequest::Gpu) {
        Ok(chosen) => {
            eprintln!("GPU tests on {chosen}");
            Some(chosen)
        }
        Err(err) => {
            eprintln!("SKIPPED: no GPU adapter for wgpu ({err}); install mesa-vulkan-drivers for lavapipe");
            None
        }
    }
}

/// burn's operations on the GPU (no CPU kernels there) against diffusers'
/// float64 pass: latent mean and log-variance, and the decoder's float output
/// before quantisation. On lavapipe the latents are within 2.7e-5 and the
/// decoded image within 1.24e-4: cubecl's convolutions and reductions sum in
/// other orders than burn-flex (whose burn-op path keeps 1e-4,
/// tests/parity_burn_ops.rs), so the decoded image gets twice the CPU's
/// `TOLERANCE`; a wrong layer or weight moves it by 1e-2 or more.
const GPU_DECODED_TOLERANCE: f32 = 2.0 * TOLERANCE;

#[test]
fn parity_with_diffusers_f32() {
    let Some(chosen) = gpu() else { return };
    let vae = load_on("tiny_sd", DeviceRequest::Gpu);
    let input = imageio::load(&kodim03(), DEFAULT_MAX_PIXELS).unwrap();
    let want = read_tensors(&fixtures().join("expected/tiny_sd__kodim03.safetensors"));
    let posterior = kl(&vae).encode(input.to_tensor(8, &chosen.device));
    for (name, got) in [("mean", posterior.mean), ("logvar", posterior.logvar)] {
        let err = max_abs_diff(&got.into_data().try_into_vec::<f32>().unwrap(), &want[name].1);
        eprintln!("gpu {name}: max abs error {err:.1e}");
        assert!(err <= TOLERANCE, "gpu {name} max abs error {err:e} > {TOLERANCE:e}");
    }
    let (shape, mean) = &want["mean"];
    let z = Tensor::<4>::from_data(TensorData::new(mean.clone(), shape.clone()), &chosen.device);
    let decoded = kl(&vae).decode(z).into_data().try_into_vec::<f32>().unwrap();
    let err = max_abs_diff(&decoded, &want["decoded"].1);
    eprintln!("gpu decoded: max abs error {err:.1e}");
    assert!(err <= GPU_DECODED_TOLERANCE, "gpu decoded max abs error {err:e} > {GPU_DECODED_TOLERANCE:e}");
}

fn kodim03() -> PathBuf {
    fixtures().join("images/kodim03.png")
}

/// A scratch folder under the target dir, emptied first.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gpu").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the binary, asserting success; returns its stderr.
fn run_ok(dir: &Path, args: &[&str]) -> String {
    let out = vae(dir, args);
    let err = stderr(&out);
    assert!(out.status.success(), "vae {args:?} failed: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn latent_values(path: &Path) -> Vec<f32> {
    Latent::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).data
}

fn png_levels_apart(a: &Path, b: &Path) -> u8 {
    let (a, b) = (image::open(a).unwrap().to_rgb8(), image::open(b).unwrap().to_rgb8());
    assert_eq!(a.dimensions(), b.dimensions());
    a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| x.abs_diff(*y)).max().unwrap()
}

/// Encodes `image` and decodes the CPU's latent with `weights` on the CPU
/// and with `gpu_args`, into `dir` (cpu.safetensors, cpu.png, gpu.*);
/// returns the GPU runs' stderr.
fn cpu_and_gpu(dir: &Path, image: &Path, weights: &Path, gpu_args: &[&str]) -> String {
    let (image, weights) = (image.to_str().unwrap(), weights.to_str().unwrap());
    let mut log = String::new();
    for (name, device_args) in [("cpu", &["--device", "cpu"][..]), ("gpu", gpu_args)] {
        let latent = format!("{name}.safetensors");
        let encode = [&["encode", image, "-o", &latent, "--weights", weights][..], device_args].concat();
        let err = run_ok(dir, &encode);
        // Both decode the CPU's latent, so that each half is compared on its own.
        let png = format!("{name}.png");
        let decode = [&["decode", "cpu.safetensors", "-o", &png, "--weights", weights][..], device_args].concat();
        if name == "gpu" {
            log = err + &run_ok(dir, &decode);
        } else {
            run_ok(dir, &decode);
        }
    }
    log
}

/// The binary with `--device gpu` against `--device cpu`: latents within the
/// parity tolerance, decoded PNGs within one level (rounding at x.5 may flip).
#[test]
fn cli_gpu_matches_cpu() {
    if gpu().is_none() {
        return;
    }
    let dir = scratch("cli");
    let log = cpu_and_gpu(&dir, &kodim03(), &fixtures().join("weights/tiny_sd"), &["--device", "gpu"]);
    assert!(log.contains("device: wgpu"), "{log}");
    let err = max_abs_diff(&latent_values(&dir.join("cpu.safetensors")), &latent_values(&dir.join("gpu.safetensors")));
    eprintln!("CLI latent, gpu vs cpu: max abs diff {err:.1e}");
    assert!(err <= TOLERANCE, "latent gpu vs cpu {err:e}");
    let levels = png_levels_apart(&dir.join("cpu.png"), &dir.join("gpu.png"));
    assert!(levels <= 1, "decoded PNG gpu vs cpu differs by {levels} levels");
}

/// `--precision f16` where the adapter has f16 (lavapipe does): the unscaled
/// latent mean within 0.25 of diffusers' float64 one. The tiny fixture's
/// redrawn random weights amplify rounding far more than trained ones: on it
/// PyTorch's own fp16 CPU pass is 0.032 off, bf16 0.26, and ours on lavapipe
/// measured 0.14 (cubecl's f16 convolutions); a wrong layer is off by 1 or more.
/// Where the adapter has no f16, the refusal is one clear line.
#[test]
fn f16_close_to_diffusers_or_refused() {
    let Some(chosen) = gpu() else { return };
    let dir = scratch("f16");
    let image = kodim03();
    let weights = fixtures().join("weights/tiny_sd");
    let (image, weights) = (image.to_str().unwrap(), weights.to_str().unwrap());
    let args =
        ["encode", image, "-o", "f16.safetensors", "--weights", weights, "--device", "gpu", "--precision", "f16"];
    let out = vae(&dir, &args);
    if !chosen.device.supports_dtype(FloatDType::F16) {
        common::assert_fails(&out, "does not support f16", "use --precision f32");
        eprintln!("{chosen} has no f16: refused as expected");
        return;
    }
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(!log.contains("computed again in f32"), "no retry expected: {log}");
    let want = read_tensors(&fixtures().join("expected/tiny_sd__kodim03.safetensors"));
    let got: Vec<f32> = latent_values(&dir.join("f16.safetensors")).iter().map(|v| v / 0.18215).collect();
    let err = max_abs_diff(&got, &want["mean"].1);
    eprintln!("f16 latent mean vs diffusers: max abs diff {err:.2e}");
    assert!(err <= 0.25, "f16 latent mean off by {err:e}");
}

/// tiny_sd with one bias of the encoder's and one of the decoder's first
/// convolutions set to 1e5: finite in f32 (the GroupNorm after it scales it
/// away), infinite in f16 (whose largest value is 65504), so that every f16
/// output is NaN.
fn overflowing_weights(dir: &Path) -> PathBuf {
    let folder = dir.join("overflow");
    std::fs::create_dir_all(&folder).unwrap();
    let source = fixtures().join("weights/tiny_sd");
    std::fs::copy(source.join("config.json"), folder.join("config.json")).unwrap();
    let bytes = std::fs::read(source.join("diffusion_pytorch_model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.dtype(), view.shape().to_vec(), view.data().to_vec()))
        .collect();
    for name in ["encoder.conv_in.bias", "decoder.conv_in.bias"] {
        let (_, dtype, _, data) = tensors.iter_mut().find(|t| t.0 == name).expect("tiny_sd has it");
        assert_eq!(*dtype, safetensors::Dtype::F32);
        data[..4].copy_from_slice(&1e5f32.to_le_bytes());
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            (name.clone(), safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, &folder.join("diffusion_pytorch_model.safetensors")).unwrap();
    folder
}

/// A reduced-precision result with NaN or Inf is computed again in f32, with
/// a warning: without the retry these weights give a NaN latent and a black
/// image; with it, the CPU's f32 result.
#[test]
fn f16_overflow_is_redone_in_f32() {
    let Some(chosen) = gpu() else { return };
    let dir = scratch("retry");
    if !chosen.device.supports_dtype(FloatDType::F16) {
        // Nothing can overflow f16 here; what remains to check is the refusal.
        let out = vae(&dir, &["encode", "x.png", "--device", "gpu", "--precision", "f16"]);
        common::assert_fails(&out, "does not support f16", "use --precision f32");
        return;
    }
    let weights = overflowing_weights(&dir);
    let log = cpu_and_gpu(&dir, &kodim03(), &weights, &["--device", "gpu", "--precision", "f16"]);
    let warnings = log.lines().filter(|l| l.contains("warning: the F16 result held NaN or Inf; computed again in f32"));
    assert_eq!(warnings.count(), 2, "one warning from encode, one from decode: {log}");
    let (cpu, gpu) = (latent_values(&dir.join("cpu.safetensors")), latent_values(&dir.join("gpu.safetensors")));
    assert!(gpu.iter().all(|v| v.is_finite()), "latent has NaN or Inf");
    let err = max_abs_diff(&cpu, &gpu);
    assert!(err <= TOLERANCE, "retried latent vs cpu {err:e}");
    let levels = png_levels_apart(&dir.join("cpu.png"), &dir.join("gpu.png"));
    assert!(levels <= 1, "retried PNG vs cpu differs by {levels} levels");
}

/// Autotune's results land in the user cache directory (`XDG_CACHE_HOME`
/// here), not in `target/environment` of the Cargo project the binary runs
/// in (the scratch folders are inside this one), and a `cubecl.toml` naming a
/// folder puts them there instead; the second run, reading them, gives the
/// same latent.
#[test]
fn autotune_results_are_kept_in_the_user_cache() {
    if gpu().is_none() {
        return;
    }
    let dir = scratch("tune-cache");
    image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([(x * 4) as u8, (y * 5) as u8, 128]))
        .save(dir.join("in.png"))
        .unwrap();
    let weights = fixtures().join("weights/tiny_sd");
    let encode = |dir: &Path, output: &str| {
        let args = ["encode", "in.png", "-o", output, "--device", "gpu", "--weights", weights.to_str().unwrap()];
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vae"))
            .args(args)
            .current_dir(dir)
            .env("XDG_CACHE_HOME", dir.join("user-cache"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        latent_values(&dir.join(output))
    };
    let database = |root: &Path| root.join("default.db");
    let first = encode(&dir, "first.safetensors");
    assert!(database(&dir.join("user-cache/cubecl")).is_file(), "no autotune database in XDG_CACHE_HOME/cubecl");
    let project_cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/environment");
    assert!(!project_cache.exists(), "{} was written", project_cache.display());
    assert_eq!(first, encode(&dir, "again.safetensors"));

    let configured = dir.join("configured");
    std::fs::create_dir_all(&configured).unwrap();
    std::fs::copy(dir.join("in.png"), configured.join("in.png")).unwrap();
    let chosen = configured.join("chosen");
    std::fs::write(configured.join("cubecl.toml"), format!("[environment]\npath = {{ directory = {:?} }}\n", chosen))
        .unwrap();
    assert_eq!(first, encode(&configured, "configured.safetensors"));
    assert!(database(&chosen).is_file(), "cubecl.toml's folder holds no autotune database");
    assert!(!configured.join("user-cache/cubecl").exists());
}

/// Each newer family's fixture (tests/fixtures/families) on the GPU against
/// diffusers' float64 pass: the raw latent mean of one image, and the
/// decoder's float output (every plane: Qwen-Image 2.1 decodes RGBA) on
/// diffusers' mean. The GPU runs burn's operations for the same graph the
/// CPU kernels run (RMS norm, patchify, the residual blocks' shuffles), so a
/// layer that only the CPU path had right would be off by 1e-2 or more.
#[test]
fn newer_families_match_diffusers() {
    use vae::latent::Posterior;
    use vae::latent_space::{LatentForm, LatentSpaceRequest};
    use vae::{Vae, VaeOptions};

    if gpu().is_none() {
        return;
    }
    let families = fixtures().join("families");
    let stem = "kodim03_96x64";
    let input = imageio::load(&families.join(format!("images/{stem}.png")), DEFAULT_MAX_PIXELS).unwrap();
    // (weights, expected tensors of the encoder, of the decoder)
    let cases = [
        ("flux2/diffusers", "flux2", format!("flux2/expected/{stem}")),
        ("flux2/small_decoder", "flux2", format!("flux2/expected/small_decoder_{stem}")),
        ("qwen/diffusers", "qwen", format!("qwen/expected/{stem}")),
        ("wan22/diffusers", "wan22", format!("wan22/expected/{stem}")),
        ("qwenimage21/diffusers", "qwenimage21", format!("qwenimage21/expected/{stem}")),
    ];
    for (weights, encoded, decoded) in cases {
        let options = VaeOptions {
            device: DeviceRequest::Gpu,
            latent_space: LatentSpaceRequest { form: Some(LatentForm::Raw), ..Default::default() },
            ..VaeOptions::new(families.join(weights))
        };
        let mut vae = Vae::open(&options).unwrap_or_else(|e| panic!("{weights}: {e}"));
        let want = read_tensors(&families.join(format!("{encoded}/expected/{stem}.safetensors")));
        let (shape, mean) = &want["mean"];
        let latent = vae.encode(&input, Posterior::Mean).unwrap();
        assert_eq!([1, latent.channels, latent.height, latent.width], shape[..], "{weights}: latent shape");
        let err = max_abs_diff(&latent.data, mean);
        eprintln!("gpu {weights} latent: max abs error {err:.1e}");
        assert!(err <= TOLERANCE, "gpu {weights} latent max abs error {err:e} > {TOLERANCE:e}");

        let reference = read_tensors(&families.join(format!("{decoded}.safetensors")));
        let got = vae.decode_float(&common::parity::raw_latent(shape, mean)).unwrap();
        assert_eq!(got.len(), reference["decoded"].1.len(), "{weights}: the decoder's planes");
        let err = max_abs_diff(&got, &reference["decoded"].1);
        eprintln!("gpu {weights} decoded: max abs error {err:.1e}");
        assert!(
            err <= GPU_DECODED_TOLERANCE,
            "gpu {weights} decoded max abs error {err:e} > {GPU_DECODED_TOLERANCE:e}"
        );
    }
}

/// The binary with `--device gpu` on Qwen-Image and Wan 2.2, in their
/// default latent form (normalised per channel): the latent within the
/// parity tolerance of `--device cpu`'s, the PNG within one level.
#[test]
fn cli_newer_families_gpu_match_cpu() {
    if gpu().is_none() {
        return;
    }
    for weights in ["qwen/diffusers", "wan22/diffusers"] {
        let dir = scratch(&weights.replace('/', "-"));
        let families = fixtures().join("families");
        let image = families.join("images/kodim07_80x112.png");
        let log = cpu_and_gpu(&dir, &image, &families.join(weights), &["--device", "gpu"]);
        assert!(log.contains("device: wgpu"), "{log}");
        let (cpu, gpu) = (latent_values(&dir.join("cpu.safetensors")), latent_values(&dir.join("gpu.safetensors")));
        let err = max_abs_diff(&cpu, &gpu);
        eprintln!("CLI {weights} latent, gpu vs cpu: max abs diff {err:.1e}");
        assert!(err <= TOLERANCE, "{weights} latent gpu vs cpu {err:e}");
        let levels = png_levels_apart(&dir.join("cpu.png"), &dir.join("gpu.png"));
        assert!(levels <= 1, "{weights}: decoded PNG gpu vs cpu differs by {levels} levels");
    }
}
