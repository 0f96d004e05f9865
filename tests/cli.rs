//! The `vae` binary end to end: encode, decode, roundtrip, weights discovery
//! and the safety of outputs. Each test works in its own temporary folder.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_fails, fixtures, listing, stderr, stdout, vae};
use vae::latent::{Latent, Posterior};

fn tiny_sd() -> String {
    fixtures().join("weights/tiny_sd").display().to_string()
}

/// A `width` x `height` crop of a Kodak photo, written into `dir` in the
/// format that `name`'s extension says.
fn photo(dir: &Path, name: &str, width: u32, height: u32) -> PathBuf {
    let img = image::open(fixtures().join("images/kodim03.png")).unwrap().to_rgb8();
    let crop = image::imageops::crop_imm(&img, 100, 0, width, height).to_image();
    let path = dir.join(name);
    crop.save(&path).unwrap();
    path
}

#[test]
fn encode_512_gives_4x64x64_and_decodes_back() {
    let dir = tempfile::tempdir().unwrap();
    photo(dir.path(), "in.png", 512, 512);
    let out = vae(dir.path(), &["encode", "in.png", "-o", "z.safetensors", "--weights", &tiny_sd()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let latent = Latent::read(&dir.path().join("z.safetensors")).unwrap();
    assert_eq!((latent.channels, latent.height, latent.width), (4, 64, 64));
    let meta = &latent.meta;
    assert_eq!(meta.scaling_factor, Some(0.18215));
    assert_eq!(meta.posterior, Some(Posterior::Mean));
    assert_eq!((meta.width, meta.height), (Some(512), Some(512)));
    assert_eq!(meta.weights.as_deref(), Some("diffusion_pytorch_model.safetensors"));
    assert_eq!(meta.weights_sha256.as_ref().map(String::len), Some(16));

    let out = vae(dir.path(), &["decode", "z.safetensors", "-o", "out.png", "--weights", &tiny_sd()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let decoded = image::open(dir.path().join("out.png")).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (512, 512));
}

/// `--version` says which backends the build has, so that a log or a bug
/// report shows whether `--device gpu` could work; `-V` stays the bare version.
#[test]
fn version_lists_the_backends_built_in() {
    let dir = tempfile::tempdir().unwrap();
    let out = vae(dir.path(), &["--version"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with(&format!("vae {} (backends: cpu", env!("CARGO_PKG_VERSION"))), "{text}");
    assert_eq!(text.contains("wgpu"), cfg!(feature = "wgpu"), "{text}");
    assert_eq!(text.contains("cuda"), cfg!(feature = "cuda"), "{text}");
    let short = stdout(&vae(dir.path(), &["-V"]));
    assert_eq!(short.trim(), format!("vae {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn odd_sizes_are_padded_and_cropped_back() {
    let dir = tempfile::tempdir().unwrap();
    photo(dir.path(), "odd.jpg", 101, 37);
    let out = vae(dir.path(), &["encode", "odd.jpg", "--weights", &tiny_sd()]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Default output: the image's name with .safetensors.
    let latent = Latent::read(&dir.path().join("odd.safetensors")).unwrap();
    assert_eq!((latent.height, latent.width), (5, 13));
    let out = vae(dir.path(), &["decode", "odd.safetensors", "--weights", &tiny_sd()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let decoded = image::open(dir.path().join("odd.png")).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (101, 37));
}

#[test]
fn sample_is_seeded_and_differs_from_the_mean() {
    let dir = tempfile::tempdir().unwrap();
    photo(dir.path(), "in.png", 64, 48);
    let w = tiny_sd();
    for (name, extra) in [
        ("mean", &[][..]),
        ("s1", &["--sample", "--seed", "1"][..]),
        ("s1b", &["--sample", "--seed", "1"][..]),
        ("s2", &["--sample", "--seed", "2"][..]),
    ] {
        let out_name = format!("{name}.safetensors");
        let mut args = vec!["encode", "in.png", "-o", &out_name, "--weights", &w];
        args.extend_from_slice(extra);
        let out = vae(dir.path(), &args);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let read = |n: &str| Latent::read(&dir.path().join(format!("{n}.safetensors"))).unwrap();
    let (mean, s1, s1b, s2) = (read("mean"), read("s1"), read("s1b"), read("s2"));
    assert_eq!(s1.data, s1b.data, "same seed, same latent");
    assert_ne!(s1.data, s2.data);
    assert_ne!(s1.data, mean.data);
    assert_eq!(s1.meta.posterior, Some(Posterior::Sample { seed: 1 }));
}

#[test]
fn roundtrip_reports_quality_as_json() {
    let dir = tempfile::tempdir().unwrap();
    photo(dir.path(), "a.png", 64, 64);
    let out = vae(
        dir.path(),
        &["roundtrip", "a.png", "-o", "recon.png", "--error-map", "err.png", "--json", "--weights", &tiny_sd()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let row: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let psnr = row["psnr"].as_f64().unwrap();
    let ssim = row["ssim"].as_f64().unwrap();
    assert!(psnr > 0.0 && psnr < 100.0, "{row}");
    assert!(ssim > -1.0 && ssim < 1.0, "{row}");
    assert_eq!(row["latent_shape"], serde_json::json!([1, 4, 8, 8]));
    // The reported numbers are those of the written reconstruction.
    let a = image::open(dir.path().join("a.png")).unwrap().to_rgb8();
    let r = image::open(dir.path().join("recon.png")).unwrap().to_rgb8();
    assert!((vae::metrics::psnr(a.as_raw(), r.as_raw()) - psnr).abs() < 1e-9);
    assert!(dir.path().join("err.png").exists());
}

/// What a new user met: `roundtrip -o DIR` with several images creates the
/// folder as encode and decode do; an existing output names --skip-existing;
/// decoding a latent that this model just encoded warns of nothing.
#[test]
fn new_user_paper_cuts() {
    let dir = tempfile::tempdir().unwrap();
    photo(dir.path(), "a.png", 32, 32);
    photo(dir.path(), "b.png", 32, 40);
    let out = vae(dir.path(), &["roundtrip", "a.png", "b.png", "-o", "recon", "--weights", &tiny_sd()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(listing(&dir.path().join("recon")), ["a.recon.png", "b.recon.png"]);

    let out = vae(dir.path(), &["encode", "a.png", "-o", "z.safetensors", "--weights", &tiny_sd()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = vae(dir.path(), &["encode", "a.png", "-o", "z.safetensors", "--weights", &tiny_sd()]);
    assert_fails(&out, "z.safetensors", "--skip-existing");
    let out = vae(dir.path(), &["decode", "z.safetensors", "-o", "z.png", "--weights", &tiny_sd()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
}

#[test]
fn roundtrip_refuses_to_write_over_an_input() {
    let dir = tempfile::tempdir().unwrap();
    photo(dir.path(), "a.png", 32, 32);
    let before = std::fs::read(dir.path().join("a.png")).unwrap();
    let out = vae(dir.path(), &["roundtrip", "a.png", "-o", "a.png", "--force", "--weights", &tiny_sd()]);
    assert_fails(&out, "a.png", "also an input");
    assert_eq!(std::fs::read(dir.path().join("a.png")).unwrap(), before);
}

#[test]
fn existing_outputs_need_force() {
    let dir = tempfile::tempdir().unwrap();
    photo(dir.path(), "in.png", 32, 32);
    std::fs::write(dir.path().join("z.safetensors"), b"precious").unwrap();
    let out = vae(dir.path(), &["encode", "in.png", "-o", "z.safetensors", "--weights", &tiny_sd()]);
    assert_fails(&out, "z.safetensors", "already exists");
    assert_eq!(std::fs::read(dir.path().join("z.safetensors")).unwrap(), b"precious");
    let out = vae(dir.path(), &["encode", "in.png", "-o", "z.safetensors", "--force", "--weights", &tiny_sd()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(Latent::read(&dir.path().join("z.safetensors")).is_ok());
    // No temporary file is left behind.
    assert_eq!(listing(dir.path()), ["in.png", "z.safetensors"]);
}

#[test]
fn weights_from_env_then_weights_folder() {
    let dir = tempfile::tempdir().unwrap();
    photo(dir.path(), "in.png", 32, 32);
    // Nothing anywhere: the error says what to download and where.
    let out = vae(dir.path(), &["encode", "in.png"]);
    assert_fails(&out, "./weights/", "sd-vae-ft-mse");
    assert!(!dir.path().join("in.safetensors").exists());

    // $VAE_WEIGHTS.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vae"))
        .args(["encode", "in.png", "-o", "env.safetensors"])
        .current_dir(dir.path())
        .env("VAE_WEIGHTS", fixtures().join("weights/tiny_sd_ldm.safetensors"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("CompVis/LDM"), "{}", stderr(&out));

    // ./weights/ holding one diffusers folder.
    let model = dir.path().join("weights/tiny");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(fixtures().join("weights/tiny_sd").join(f), model.join(f)).unwrap();
    }
    let out = vae(dir.path(), &["encode", "in.png", "-o", "dir.safetensors"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = vae(dir.path(), &["encode"]);
    assert_eq!(out.status.code(), Some(2));
    let out = vae(dir.path(), &["encode", "x.png", "--seed", "3"]);
    assert_eq!(out.status.code(), Some(2), "--seed needs --sample");
}

/// The released binary must run on x86-64 CPUs without AVX-512: the GEMM picks
/// its kernels at run time. Valgrind emulates a CPU without AVX-512 (and would
/// stop on any AVX-512 instruction), so running under it takes the fallback
/// path; its latent must match the native one. Needs valgrind (Debian package):
/// `cargo test --release --test cli -- --ignored without_avx512`.
#[test]
#[ignore = "needs valgrind; see the doc comment"]
fn runs_without_avx512() {
    let dir = tempfile::tempdir().unwrap();
    photo(dir.path(), "in.png", 48, 32);
    let w = tiny_sd();
    let out = vae(dir.path(), &["encode", "in.png", "-o", "native.safetensors", "-w", &w]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = std::process::Command::new("valgrind")
        .args([
            "--tool=none",
            "-q",
            env!("CARGO_BIN_EXE_vae"),
            "encode",
            "in.png",
            "-o",
            "emulated.safetensors",
            "-w",
            &w,
        ])
        .current_dir(dir.path())
        .output()
        .expect("valgrind is installed");
    assert!(out.status.success(), "{}", stderr(&out));
    let native = Latent::read(&dir.path().join("native.safetensors")).unwrap();
    let emulated = Latent::read(&dir.path().join("emulated.safetensors")).unwrap();
    let err = native.data.iter().zip(&emulated.data).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(err < 1e-5, "AVX-512 and fallback paths differ by {err}");
}

/// The kernels' own loops (norms, Winograd's transforms, f16 storage, the
/// softmax) are compiled for SSE2, AVX2 and AVX-512 and run with the widest
/// the CPU has; `VAE_CPU_CAPABILITY` caps that. Every version gives the same
/// bits: latents and PNGs, whole and in bands with f16 activations on disk,
/// for the GroupNorm (SD) and the RMS norm (Qwen-Image). On a CPU without
/// AVX-512 (or AVX2) the cap changes nothing and the outputs agree trivially.
#[test]
fn every_instruction_set_gives_the_same_bits() {
    let dir = tempfile::tempdir().unwrap();
    photo(dir.path(), "in.png", 96, 64);
    let qwen = fixtures().join("families/qwen/diffusers").display().to_string();
    let run = |cap: &str, args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vae"))
            .args(args)
            .current_dir(dir.path())
            .env("VAE_CPU_CAPABILITY", cap)
            .output()
            .unwrap();
        assert!(out.status.success(), "{cap} {args:?}: {}", stderr(&out));
    };
    for (family, w) in [("sd", tiny_sd()), ("qwen", qwen)] {
        for (tile, budget) in [("off", "16G"), ("16", "1K")] {
            let mut files: Vec<(String, Vec<u8>, Vec<u8>)> = Vec::new();
            for cap in ["baseline", "avx2", "avx512"] {
                let (z, png) = (format!("{family}_{tile}_{cap}.safetensors"), format!("{family}_{tile}_{cap}.png"));
                let common = ["--tile", tile, "--max-memory", budget, "--tmp-dir", ".", "-w", &w];
                run(cap, &[&["encode", "in.png", "-o", &z][..], &common].concat());
                run(cap, &[&["decode", &z, "-o", &png][..], &common].concat());
                let read = |f: &str| std::fs::read(dir.path().join(f)).unwrap();
                files.push((cap.to_string(), read(&z), read(&png)));
            }
            for (cap, z, png) in &files[1..] {
                assert!(*z == files[0].1, "{family}, tile {tile}: {cap}'s latent differs from the baseline's");
                assert!(*png == files[0].2, "{family}, tile {tile}: {cap}'s PNG differs from the baseline's");
            }
        }
    }
}

#[test]
fn bands_give_the_untiled_png_and_say_so() {
    let dir = tempfile::tempdir().unwrap();
    photo(dir.path(), "in.png", 203, 133); // not multiples of 8
    let w = tiny_sd();
    let out = vae(dir.path(), &["encode", "in.png", "-o", "z.safetensors", "--tile", "off", "--weights", &w]);
    assert!(out.status.success(), "{}", stderr(&out));
    for (tile, png) in [("off", "whole.png"), ("16", "bands.png")] {
        let out = vae(dir.path(), &["decode", "z.safetensors", "-o", png, "--tile", tile, "--weights", &w]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stderr(&out).contains("bands of 16 image rows, activations stored in f32"), tile == "16");
    }
    let whole = image::open(dir.path().join("whole.png")).unwrap().to_rgb8();
    let bands = image::open(dir.path().join("bands.png")).unwrap().to_rgb8();
    let worst = whole.as_raw().iter().zip(bands.as_raw()).map(|(a, b)| a.abs_diff(*b)).max();
    assert_eq!(worst, Some(0), "16-row bands changed the decoded PNG");
}

#[test]
fn a_tiny_memory_budget_spills_f16_to_disk_and_warns() {
    let dir = tempfile::tempdir().unwrap();
    photo(dir.path(), "in.png", 128, 96);
    std::fs::create_dir(dir.path().join("spill")).unwrap();
    let w = tiny_sd();
    let out = vae(dir.path(), &["roundtrip", "in.png", "--max-memory", "1K", "--tmp-dir", "spill", "--weights", &w]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("activations stored in f16, those over 0 bytes on disk in spill ("), "{err}");
    assert!(err.contains("warning: needs about") && err.contains("over --max-memory"), "{err}");
    // Unnamed files: nothing to clean up.
    assert!(listing(&dir.path().join("spill")).is_empty());
}

#[test]
fn a_spill_folder_that_cannot_take_them_is_one_error_and_no_output() {
    let dir = tempfile::tempdir().unwrap();
    photo(dir.path(), "in.png", 64, 48);
    let w = tiny_sd();
    let out = vae(dir.path(), &["encode", "in.png", "-o", "z.safetensors", "--weights", &w]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A folder that does not exist, and a file where the folder should be.
    std::fs::write(dir.path().join("file"), b"").unwrap();
    for (tmp, problem) in [("missing", "No such file or directory"), ("file", "Not a directory")] {
        let args =
            ["decode", "z.safetensors", "-o", "out.png", "--max-memory", "1K", "--tmp-dir", tmp, "--weights", &w];
        let out = vae(dir.path(), &args);
        assert_fails(&out, &format!("{tmp}: activations spilled to disk"), problem);
        assert!(!dir.path().join("out.png").exists());
    }
    assert_eq!(listing(dir.path()), ["file", "in.png", "z.safetensors"]);
}

#[test]
fn bad_tile_and_memory_values_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    for args in
        [["--tile", "4"], ["--tile", "big"], ["--max-memory", "lots"], ["--max-memory", "0"], ["--max-memory", "0.5"]]
    {
        let out = vae(dir.path(), &["decode", "z.safetensors", args[0], args[1]]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(args[1]), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn comfyui_and_numpy_latents_decode_like_ours() {
    let dir = tempfile::tempdir().unwrap();
    photo(dir.path(), "in.png", 64, 48);
    let w = tiny_sd();
    for z in ["a.safetensors", "b.latent", "c.npy"] {
        let out = vae(dir.path(), &["encode", "in.png", "-o", z, "--weights", &w]);
        assert!(out.status.success(), "{z}: {}", stderr(&out));
    }
    // A folder of latents: all three formats are found.
    let out = vae(dir.path(), &["decode", ".", "-o", "png", "--weights", &w]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(listing(&dir.path().join("png")), ["a.png", "b.png", "c.png"]);
    let ours = image::open(dir.path().join("png/a.png")).unwrap().to_rgb8();
    assert_eq!(ours.dimensions(), (64, 48));
    for png in ["b.png", "c.png"] {
        let other = image::open(dir.path().join("png").join(png)).unwrap().to_rgb8();
        assert_eq!(other.dimensions(), (64, 48), "{png}");
        let worst = ours.as_raw().iter().zip(other.as_raw()).map(|(a, b)| a.abs_diff(*b)).max();
        assert!(worst <= Some(1), "{png} is {worst:?} levels away from the safetensors decode");
    }
}

#[test]
fn shell_completions() {
    let dir = tempfile::tempdir().unwrap();
    for (shell, marker) in [("bash", "_vae()"), ("zsh", "#compdef vae"), ("fish", "complete -c vae")] {
        let out = vae(dir.path(), &["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        assert!(script.contains(marker) && script.contains("max-memory"), "{shell}: {script}");
    }
    assert_eq!(vae(dir.path(), &["completions", "tcsh"]).status.code(), Some(2));
}

#[test]
fn inspect_weights_and_latents() {
    let dir = tempfile::tempdir().unwrap();
    photo(dir.path(), "in.png", 64, 48);
    let w = tiny_sd();
    assert!(vae(dir.path(), &["encode", "in.png", "-o", "z.latent", "--weights", &w]).status.success());
    let ckpt = fixtures().join("weights/tiny_sd_ckpt.safetensors").display().to_string();
    let out = vae(dir.path(), &["inspect", &ckpt, "z.latent", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let reports: Vec<serde_json::Value> = stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let (weights, latent) = (&reports[0], &reports[1]);
    assert_eq!(weights["kind"], "weights");
    assert_eq!(weights["layout"], "CompVis/LDM");
    assert_eq!(weights["prefix"], "first_stage_model.");
    assert_eq!(weights["dtype"], "f16");
    assert_eq!(weights["parameters"], 1_399_879);
    assert_eq!(weights["other_tensors"], 4);
    assert_eq!(latent["kind"], "latent");
    assert_eq!(latent["format"], "ComfyUI .latent");
    assert_eq!(latent["shape"], serde_json::json!([1, 4, 6, 8]));
    assert_eq!(latent["channels"].as_array().map(Vec::len), Some(4));
    // Human output, and a bad file among good ones.
    let out = vae(dir.path(), &["inspect", "z.latent", "in.png"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("kind: latent"), "{}", stdout(&out));
    assert!(stderr(&out).contains("in.png"), "{}", stderr(&out));
}

#[test]
fn family_sets_and_records_the_scaling() {
    let dir = tempfile::tempdir().unwrap();
    photo(dir.path(), "in.png", 64, 48);
    let loose = fixtures().join("weights/tiny_sd_f16.safetensors").display().to_string();
    let out = vae(dir.path(), &["encode", "in.png", "-o", "z.safetensors", "--family", "sdxl", "--weights", &loose]);
    assert!(out.status.success(), "{}", stderr(&out));
    let meta = Latent::read(&dir.path().join("z.safetensors")).unwrap().meta;
    assert_eq!((meta.scaling_factor, meta.family), (Some(0.13025), Some(vae::model::Family::Sdxl)));
    // A folder with config.json keeps its scaling, and says so.
    let out =
        vae(dir.path(), &["encode", "in.png", "-o", "c.safetensors", "--family", "sdxl", "--weights", &tiny_sd()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("using config.json's"), "{}", stderr(&out));
    assert_eq!(Latent::read(&dir.path().join("c.safetensors")).unwrap().meta.scaling_factor, Some(0.18215));
    // A 16-channel family on 4-channel weights is an error naming the file.
    let out = vae(dir.path(), &["encode", "in.png", "--family", "flux", "--weights", &loose]);
    assert_fails(&out, "tiny_sd_f16.safetensors", "the weights have 4 latent channels; --family flux has 16");
    assert_eq!(vae(dir.path(), &["encode", "in.png", "--family", "sd9"]).status.code(), Some(2));
}

#[test]
fn preview_maps_channels_to_colours_without_weights() {
    let dir = tempfile::tempdir().unwrap();
    // Channel 0 at 1.0, the rest 0, scaled as SD 1.x: each pixel is the first
    // row of ComfyUI's SD 1.x factors.
    let (h, w) = (3, 4);
    let mut data = vec![0.0f32; 4 * h * w];
    data[..h * w].fill(1.0);
    let meta = vae::latent::LatentMeta {
        scaling_factor: Some(0.18215),
        width: Some(27),
        height: Some(21),
        family: Some(vae::model::Family::Sd1),
        ..Default::default()
    };
    let latent = Latent { channels: 4, height: h, width: w, data, meta };
    latent.write(&dir.path().join("z.safetensors"), vae::output::Overwrite::Refuse).unwrap();
    let out = vae(dir.path(), &["preview", "z.safetensors"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let png = image::open(dir.path().join("z.preview.png")).unwrap().to_rgb8();
    assert_eq!(png.dimensions(), (27, 21), "cropped to the recorded image size");
    let want = [0.3512f32, 0.2297, 0.3227].map(vae::imageio::to_u8);
    assert!(png.pixels().all(|p| p.0 == want), "{:?} vs {want:?}", png.get_pixel(0, 0));
    // --scale 1: one pixel per latent position; a 16-channel family on a
    // 4-channel latent is refused.
    let out = vae(dir.path(), &["preview", "z.safetensors", "--scale", "1", "-o", "small.png"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(image::open(dir.path().join("small.png")).unwrap().to_rgb8().dimensions(), (4, 3));
    let out = vae(dir.path(), &["preview", "z.safetensors", "--family", "flux", "-o", "f.png"]);
    assert_fails(&out, "z.safetensors", "no preview for a latent of 4 channels");
}

#[test]
fn skip_existing_resumes_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("in")).unwrap();
    photo(&dir.path().join("in"), "a.png", 32, 32);
    photo(&dir.path().join("in"), "b.png", 32, 32);
    std::fs::create_dir(dir.path().join("out")).unwrap();
    std::fs::write(dir.path().join("out/a.safetensors"), b"from an earlier run").unwrap();
    let out = vae(dir.path(), &["encode", "in", "-o", "out", "--skip-existing", "--weights", &tiny_sd()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("skipping 1 of 2 files whose output exists"), "{}", stderr(&out));
    assert_eq!(std::fs::read(dir.path().join("out/a.safetensors")).unwrap(), b"from an earlier run");
    assert!(Latent::read(&dir.path().join("out/b.safetensors")).is_ok());
    // All done: nothing to load, nothing to do.
    let out = vae(dir.path(), &["encode", "in", "-o", "out", "--skip-existing", "--weights", "missing"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = vae(dir.path(), &["encode", "in", "-o", "out", "--skip-existing", "--force"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn json_lines_for_encode_and_decode() {
    let dir = tempfile::tempdir().unwrap();
    photo(dir.path(), "a.png", 40, 24);
    photo(dir.path(), "b.png", 16, 16);
    let w = tiny_sd();
    let out = vae(dir.path(), &["encode", "a.png", "b.png", "-o", "z", "--json", "--weights", &w]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["latent"], serde_json::json!([1, 4, 3, 5]));
    assert_eq!((lines[0]["width"].as_u64(), lines[0]["height"].as_u64()), (Some(40), Some(24)));
    let out = vae(dir.path(), &["decode", "z/a.safetensors", "-o", "a.out.png", "--json", "--weights", &w]);
    assert!(out.status.success(), "{}", stderr(&out));
    let line: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!((line["output"].as_str(), line["width"].as_u64()), (Some("a.out.png"), Some(40)));
}

#[test]
fn overlapped_batch_reports_in_input_order() {
    // Reading and writing run beside the compute; reports must still follow
    // the inputs, a bad file in the middle included.
    let dir = tempfile::tempdir().unwrap();
    photo(dir.path(), "a.png", 40, 24);
    std::fs::write(dir.path().join("b.png"), b"not a png").unwrap();
    photo(dir.path(), "c.png", 16, 16);
    photo(dir.path(), "d.png", 24, 8);
    let w = tiny_sd();
    let out = vae(dir.path(), &["encode", "a.png", "b.png", "c.png", "d.png", "-o", "z", "--json", "--weights", &w]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let inputs: Vec<String> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["input"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(inputs, ["a.png", "c.png", "d.png"]);
    let err = stderr(&out);
    let at = |s: &str| err.find(s).unwrap_or_else(|| panic!("{s} not in {err}"));
    assert!(at("wrote z/a.safetensors") < at("b.png") && at("b.png") < at("wrote z/c.safetensors"), "{err}");
    assert!(at("wrote z/c.safetensors") < at("wrote z/d.safetensors"), "{err}");
    assert!(err.contains("encoded 3 of 4 files; 1 failed"), "{err}");
    let out = vae(dir.path(), &["decode", "z", "-o", "png", "--weights", &w]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(listing(&dir.path().join("png")), ["a.png", "c.png", "d.png"]);
}

#[test]
fn a_missing_input_names_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let w = tiny_sd();
    for args in [["encode", "gone.png"], ["decode", "gone.safetensors"]] {
        let out = vae(dir.path(), &[args[0], args[1], "--weights", &w]);
        assert_fails(&out, args[1], "cannot read");
        assert_eq!(stderr(&out).matches("os error 2").count(), 1, "{}", stderr(&out));
    }
}

#[test]
fn quoted_patterns_are_expanded_and_must_match() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("in")).unwrap();
    for name in ["a.png", "b.png", "c.jpg"] {
        photo(&dir.path().join("in"), name, 16, 16);
    }
    // As a shell would: only the PNGs, in name order.
    let out = vae(dir.path(), &["encode", "in/*.png", "-o", "z", "--json", "--weights", &tiny_sd()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(listing(&dir.path().join("z")), ["a.safetensors", "b.safetensors"]);
    let inputs: Vec<String> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["input"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(inputs, ["in/a.png", "in/b.png"]);
    // Nothing matches: an error naming the pattern, and nothing written.
    let out = vae(dir.path(), &["encode", "in/*.gif", "-o", "none", "--weights", &tiny_sd()]);
    assert_fails(&out, "in/*.gif", "no file matches this pattern");
    assert!(!dir.path().join("none").exists());
    // A file whose name looks like a pattern is taken as it is.
    photo(dir.path(), "x[1].png", 16, 16);
    let out = vae(dir.path(), &["encode", "x[1].png", "-o", "x.safetensors", "--weights", &tiny_sd()]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Other commands too.
    let out = vae(dir.path(), &["inspect", "z/?.safetensors", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 2);
}

// Hostile input and careless operators (issue #18).

/// `vae` in `dir` with `args`, its stdout a pipe whose reader has already
/// gone (as `vae ... | head -0` once head has exited): every write meets EPIPE.
fn with_closed_stdout(dir: &Path, args: &[&str]) -> std::process::Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    std::process::Command::new(env!("CARGO_BIN_EXE_vae"))
        .args(args)
        .current_dir(dir)
        .env_remove("VAE_WEIGHTS")
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn a_closed_stdout_ends_the_output_quietly() {
    let dir = tempfile::tempdir().unwrap();
    photo(dir.path(), "in.png", 16, 16);
    let w = tiny_sd();
    // encode --json: the file was written; a report nobody reads is no failure.
    let out = with_closed_stdout(dir.path(), &["encode", "in.png", "--json", "--weights", &w]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("error"), "{}", stderr(&out));
    assert!(dir.path().join("in.safetensors").is_file());
    for args in [
        &["inspect", "in.safetensors"][..],
        &["inspect", "in.safetensors", "--json"],
        &["roundtrip", "in.png", "--weights", &w],
    ] {
        let out = with_closed_stdout(dir.path(), args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked") && !stderr(&out).contains("error"), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn encodes_are_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    photo(dir.path(), "in.png", 16, 16);
    for ext in ["safetensors", "latent"] {
        let (a, b) = (format!("a.{ext}"), format!("b.{ext}"));
        for out in [&a, &b] {
            let run = vae(dir.path(), &["encode", "in.png", "-o", out, "--weights", &tiny_sd()]);
            assert!(run.status.success(), "{}", stderr(&run));
        }
        let bytes = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
        assert!(bytes(&a) == bytes(&b), "{ext}: two encodes of one image differ");
    }
}

/// Runs `vae` with the umask set to `mask`.
fn with_umask(dir: &Path, mask: libc::mode_t, args: &[&str]) -> std::process::Output {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_vae"));
    cmd.args(args).current_dir(dir).env_remove("VAE_WEIGHTS");
    // SAFETY: umask is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(mask);
            Ok(())
        });
    }
    cmd.output().unwrap()
}

#[test]
fn outputs_get_the_umask_mode_or_keep_the_replaced_one() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    photo(dir.path(), "in.png", 16, 16);
    let mode = |name: &str| std::fs::metadata(dir.path().join(name)).unwrap().permissions().mode() & 0o777;
    let out = with_umask(dir.path(), 0o022, &["encode", "in.png", "-o", "z.safetensors", "--weights", &tiny_sd()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(mode("z.safetensors"), 0o644);
    let out = with_umask(dir.path(), 0o002, &["decode", "z.safetensors", "-o", "z.png", "--weights", &tiny_sd()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(mode("z.png"), 0o664);
    // --force keeps the mode of the file it replaces.
    std::fs::set_permissions(dir.path().join("z.png"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let out =
        with_umask(dir.path(), 0o022, &["decode", "z.safetensors", "-o", "z.png", "--force", "--weights", &tiny_sd()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(mode("z.png"), 0o640);
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

#[test]
fn force_replaces_only_regular_files() {
    let dir = tempfile::tempdir().unwrap();
    photo(dir.path(), "in.png", 16, 16);
    std::fs::write(dir.path().join("victim.txt"), "keep me").unwrap();
    std::os::unix::fs::symlink("victim.txt", dir.path().join("link.safetensors")).unwrap();
    mkfifo(&dir.path().join("fifo.safetensors"));
    for (name, what) in [("link.safetensors", "is a symbolic link"), ("fifo.safetensors", "is a FIFO")] {
        let out = vae(dir.path(), &["encode", "in.png", "-o", name, "--force", "--weights", &tiny_sd()]);
        assert_fails(&out, name, what);
    }
    assert!(std::fs::symlink_metadata(dir.path().join("link.safetensors")).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_to_string(dir.path().join("victim.txt")).unwrap(), "keep me");
    assert_eq!(listing(dir.path()), ["fifo.safetensors", "in.png", "link.safetensors", "victim.txt"]);
}

#[test]
fn fifo_inputs_are_refused_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    photo(dir.path(), "in.png", 16, 16);
    for name in ["pipe.png", "pipe.safetensors", "pipe.npy"] {
        mkfifo(&dir.path().join(name));
    }
    let w = tiny_sd();
    let cases: [&[&str]; 4] = [
        &["encode", "pipe.png", "-o", "z.safetensors", "--weights", &w],
        &["encode", "in.png", "-o", "z.safetensors", "--weights", "pipe.safetensors"],
        &["decode", "pipe.npy", "-o", "z.png", "--weights", &w],
        &["inspect", "pipe.safetensors"],
    ];
    for args in cases {
        let out = vae(dir.path(), args);
        let name = args.iter().find(|a| a.starts_with("pipe")).unwrap();
        assert_fails(&out, name, "is a FIFO, not a regular file");
    }
    assert!(!dir.path().join("z.safetensors").exists() && !dir.path().join("z.png").exists());
}

#[test]
fn skip_existing_counts_only_regular_files_as_done() {
    let dir = tempfile::tempdir().unwrap();
    photo(dir.path(), "in.png", 16, 16);
    std::fs::create_dir(dir.path().join("in.safetensors")).unwrap();
    let out = vae(dir.path(), &["encode", "in.png", "--skip-existing", "--weights", &tiny_sd()]);
    assert_fails(&out, "in.safetensors", "is a folder, not a regular file");
}

#[test]
fn missing_weights_name_their_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    photo(dir.path(), "in.png", 16, 16);
    let out = vae(dir.path(), &["encode", "in.png", "--weights", "gone.safetensors"]);
    assert_fails(&out, "gone.safetensors", "no such file or directory");
    assert_eq!(stderr(&out).matches("no such file or directory").count(), 1, "{}", stderr(&out));
}

#[test]
fn double_star_patterns_do_not_follow_folder_links() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("d/sub")).unwrap();
    photo(&dir.path().join("d/sub"), "a.png", 16, 16);
    // A loop, and two self-loops (exponential when followed).
    std::os::unix::fs::symlink(".", dir.path().join("d/loop")).unwrap();
    std::os::unix::fs::symlink(".", dir.path().join("d/sub/x")).unwrap();
    std::os::unix::fs::symlink(".", dir.path().join("d/sub/y")).unwrap();
    std::fs::create_dir(dir.path().join("out")).unwrap();
    let out = vae(dir.path(), &["encode", "d/**/*.png", "-o", "out", "--json", "--weights", &tiny_sd()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 1, "{}", stdout(&out));
    assert_eq!(listing(&dir.path().join("out")), ["a.safetensors"]);
    // From the current folder too.
    let out = vae(dir.path(), &["inspect", "**/*.safetensors", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 1, "{}", stdout(&out));
}

/// A copy of the tiny_sd folder whose config.json sets `key` to `value`s.
fn tiny_sd_with(dir: &Path, entries: &[(&str, f64)]) -> String {
    let src = fixtures().join("weights/tiny_sd");
    let dst = dir.join("w");
    std::fs::create_dir(&dst).unwrap();
    std::fs::copy(src.join("diffusion_pytorch_model.safetensors"), dst.join("diffusion_pytorch_model.safetensors"))
        .unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    for (key, value) in entries {
        config[*key] = serde_json::json!(value);
    }
    std::fs::write(dst.join("config.json"), config.to_string()).unwrap();
    dst.display().to_string()
}

#[test]
fn scaling_factors_are_checked_where_they_enter() {
    let dir = tempfile::tempdir().unwrap();
    photo(dir.path(), "in.png", 16, 16);
    for value in ["1e39", "1e-40", "0", "inf", "nan"] {
        let out = vae(dir.path(), &["encode", "in.png", "--scaling-factor", value, "--weights", &tiny_sd()]);
        assert_eq!(out.status.code(), Some(2), "{value}: {}", stderr(&out));
        assert!(stderr(&out).contains("--scaling-factor"), "{value}: {}", stderr(&out));
    }
    let w = tiny_sd_with(dir.path(), &[("scaling_factor", 1e300)]);
    let out = vae(dir.path(), &["encode", "in.png", "--weights", &w]);
    assert_fails(&out, "config.json", "scaling factor 1e300 is not");
    assert_eq!(listing(dir.path()), ["in.png", "w"]);
}

#[test]
fn a_latent_that_overflows_is_not_written() {
    let dir = tempfile::tempdir().unwrap();
    photo(dir.path(), "in.png", 16, 16);
    // Each valid for f32, together they overflow: (z - 1e30) * 3e38.
    let w = tiny_sd_with(dir.path(), &[("scaling_factor", 3e38), ("shift_factor", 1e30)]);
    for ext in ["safetensors", "latent", "npy"] {
        let out = vae(dir.path(), &["encode", "in.png", "-o", &format!("z.{ext}"), "--weights", &w]);
        assert_fails(&out, "in.png", "the latent has 16 infinite values after scaling by 3e38 and shift 1e30");
    }
    let out = vae(dir.path(), &["roundtrip", "in.png", "--weights", &w]);
    assert_fails(&out, "in.png", "the latent has 16 infinite values");
    assert_eq!(listing(dir.path()), ["in.png", "w"]);
}

/// A checkpoint whose VAE is a small part (tiny_sd's tensors beside 192 MiB
/// of other weights, as in a full Stable Diffusion file): the encode's peak
/// resident memory stays far below the file's size (the file is hashed
/// through a small buffer, and only the VAE's tensors are read from the
/// map), and the latent records the file's SHA-256.
#[test]
fn a_full_checkpoint_is_hashed_without_being_read_into_memory() {
    use sha2::Digest as _;
    use std::os::unix::process::ExitStatusExt as _;

    let dir = tempfile::tempdir().unwrap();
    photo(dir.path(), "in.png", 64, 64);
    let source = std::fs::read(fixtures().join("weights/tiny_sd/diffusion_pytorch_model.safetensors")).unwrap();
    let source = safetensors::SafeTensors::deserialize(&source).unwrap();
    let filler = vec![0u8; 192 << 20];
    let mut tensors: Vec<(String, safetensors::tensor::TensorView)> = source.tensors();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![filler.len() / 4], &filler);
    tensors.push(("model.diffusion_model.filler".to_owned(), view.unwrap()));
    let checkpoint = dir.path().join("checkpoint.safetensors");
    safetensors::serialize_to_file(tensors, None, &checkpoint).unwrap();
    drop(filler);

    #[allow(clippy::zombie_processes, reason = "reaped by wait4 below, which also gives its resource usage")]
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_vae"))
        .args(["encode", "in.png", "-o", "z.safetensors", "--weights", "checkpoint.safetensors"])
        .current_dir(dir.path())
        .env_remove("VAE_WEIGHTS")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The child's own peak resident memory, from wait4 (std's wait gives no usage).
    // SAFETY: rusage is plain integers and timevals, for which all zeros is a value.
    let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    // SAFETY: a child of this process, waited for once; both pointers are valid.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as libc::pid_t);
    assert!(std::process::ExitStatus::from_raw(status).success());
    let peak_mib = usage.ru_maxrss / 1024;
    eprintln!("peak resident memory with a 192 MiB checkpoint: {peak_mib} MiB");
    assert!(peak_mib < 128, "peak resident memory {peak_mib} MiB: the checkpoint was read into memory");

    let digest = sha2::Sha256::digest(std::fs::read(&checkpoint).unwrap());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let latent = Latent::read(&dir.path().join("z.safetensors")).unwrap();
    assert_eq!(latent.meta.weights_sha256.as_deref(), Some(&hex[..16]));
}
