//! Batches (`--batch-size`): inputs of one size computed in one pass of the
//! model give what each gives alone, mixed sizes are grouped, and a bad input
//! in a batch fails alone. GPUs batch by default; on the CPU these tests ask.

mod common;

use std::path::{Path, PathBuf};

use vae::VaeOptions;
use vae::batch::BatchSize;
use vae::imageio::{self, DEFAULT_MAX_PIXELS, InputImage};
use vae::latent::{Latent, Posterior};

use common::parity::{load, load_with};
use common::{fixtures, listing, max_abs_diff, stderr, vae};

/// Batched and alone differ only by the order of float sums, if at all.
const TOLERANCE: f32 = 1e-5;

/// A `width` x `height` crop of a Kodak photo at (`x`, `y`), saved in `dir`.
fn crop(dir: &Path, name: &str, (x, y): (u32, u32), (width, height): (u32, u32)) -> PathBuf {
    let img = image::open(fixtures().join("images/kodim03.png")).unwrap().to_rgb8();
    let path = dir.join(name);
    image::imageops::crop_imm(&img, x, y, width, height).to_image().save(&path).unwrap();
    path
}

/// Three 48x40 images (different crops) and one 32x32, in input order.
fn images(dir: &Path) -> Vec<InputImage> {
    let paths = [
        crop(dir, "a.png", (0, 0), (48, 40)),
        crop(dir, "b.png", (200, 100), (32, 32)),
        crop(dir, "c.png", (300, 200), (48, 40)),
        crop(dir, "d.png", (500, 300), (48, 40)),
    ];
    paths.iter().map(|p| imageio::load(p, DEFAULT_MAX_PIXELS).unwrap()).collect()
}

#[test]
fn a_pass_of_several_images_gives_each_ones_latent_and_image() {
    let dir = tempfile::tempdir().unwrap();
    let images = images(dir.path());
    for weights in ["tiny_sd", "tiny_taesd"] {
        let mut model = load_with(weights, |options| options.batch = BatchSize::Images(4));
        let all: Vec<&InputImage> = images.iter().collect();
        assert_eq!(model.encode_passes(&all), vec![vec![0, 2, 3], vec![1]], "{weights}: grouped by size");

        let same: Vec<&InputImage> = [0, 2, 3].iter().map(|&i| &images[i]).collect();
        let mut posteriors = [Posterior::Mean, Posterior::Sample { seed: 7 }, Posterior::Sample { seed: 8 }];
        if !model.has_posterior() {
            // TAESD has no posterior: the library refuses draws from it.
            let err = model.encode_batch(&same, &posteriors).unwrap_err();
            assert!(err.to_string().contains("no posterior to sample from"), "{err}");
            posteriors = [Posterior::Mean; 3];
        }
        let batched = model.encode_batch(&same, &posteriors).unwrap();
        let alone: Vec<Latent> =
            same.iter().zip(&posteriors).map(|(image, p)| model.encode(image, *p).unwrap()).collect();
        for (b, a) in batched.iter().zip(&alone) {
            assert_eq!(b.meta, a.meta, "{weights}");
            let diff = max_abs_diff(&b.data, &a.data);
            assert!(diff <= TOLERANCE, "{weights}: batched latent differs by {diff}");
        }
        // The three are different images, and (on the big VAE) the draws differ from the mean.
        assert!(max_abs_diff(&alone[0].data, &alone[1].data) > 1e-2, "{weights}");

        let latents: Vec<&Latent> = alone.iter().collect();
        assert_eq!(model.decode_passes(&latents), vec![vec![0, 1, 2]], "{weights}");
        let batched = model.decode_float_batch(&latents).unwrap();
        for (b, latent) in batched.iter().zip(&alone) {
            let a = model.decode_float(latent).unwrap();
            let diff = max_abs_diff(b, &a);
            assert!(diff <= TOLERANCE, "{weights}: batched image differs by {diff}");
        }
    }
}

#[test]
fn passes_stay_within_the_memory_budget_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let images = images(dir.path());
    let all: Vec<&InputImage> = images.iter().collect();
    // The CPU's default: one image a pass.
    assert_eq!(load("tiny_sd").encode_passes(&all), vec![vec![0], vec![1], vec![2], vec![3]]);
    let two = |options: &mut VaeOptions| options.batch = BatchSize::Images(2);
    assert_eq!(load_with("tiny_sd", two).encode_passes(&all), vec![vec![0, 2], vec![1], vec![3]]);
    // A budget that one image fills runs them one at a time (in bands).
    let tight = |options: &mut VaeOptions| {
        two(options);
        options.max_memory = Some(1);
    };
    assert_eq!(load_with("tiny_sd", tight).encode_passes(&all), vec![vec![0], vec![1], vec![2], vec![3]]);
    // Without tiling, the budget is not consulted.
    let untiled = |options: &mut VaeOptions| {
        tight(options);
        options.tile = vae::tiling::Tile::Off;
    };
    assert_eq!(load_with("tiny_sd", untiled).encode_passes(&all), vec![vec![0, 2], vec![1], vec![3]]);
}

/// The `bench:` lines' batch sizes, in order.
fn batches(stderr: &str) -> Vec<u64> {
    let lines = stderr.lines().filter_map(|l| l.strip_prefix("bench: "));
    lines.map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["batch"].as_u64().unwrap()).collect()
}

#[test]
fn the_command_line_batches_when_asked_and_writes_the_same_files() {
    let dir = tempfile::tempdir().unwrap();
    images(dir.path());
    let weights = fixtures().join("weights/tiny_sd").display().to_string();
    let run = |args: &[&str]| {
        let out = vae(dir.path(), &[args, &["--weights", &weights, "--repeat", "1"]].concat());
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        stderr(&out)
    };
    let encode =
        |out: &str, batch: &str| run(&["encode", "a.png", "b.png", "c.png", "d.png", "-o", out, "--batch-size", batch]);
    assert_eq!(batches(&encode("one", "1")), [1, 1, 1, 1]);
    assert_eq!(batches(&encode("four", "4")), [3, 1], "a pass of the three 48x40, then the 32x32");
    assert_eq!(listing(&dir.path().join("four")), ["a.safetensors", "b.safetensors", "c.safetensors", "d.safetensors"]);
    for name in listing(&dir.path().join("one")) {
        let one = Latent::read(&dir.path().join("one").join(&name)).unwrap();
        let four = Latent::read(&dir.path().join("four").join(&name)).unwrap();
        assert!(max_abs_diff(&one.data, &four.data) <= TOLERANCE, "{name}");
    }

    let decode = |out: &str, batch: &str| run(&["decode", "four", "-o", out, "--batch-size", batch]);
    assert_eq!(batches(&decode("png1", "1")), [1, 1, 1, 1]);
    assert_eq!(batches(&decode("png4", "4")), [3, 1]);
    for name in listing(&dir.path().join("png4")) {
        let one = image::open(dir.path().join("png1").join(&name)).unwrap().to_rgb8();
        let four = image::open(dir.path().join("png4").join(&name)).unwrap().to_rgb8();
        let worst = one.iter().zip(four.iter()).map(|(a, b)| a.abs_diff(*b)).max();
        assert!(worst <= Some(1), "{name}: pixels differ by {worst:?}");
    }
}

#[test]
fn a_bad_input_in_a_batch_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    images(dir.path());
    std::fs::write(dir.path().join("bad.png"), b"\x89PNG\r\n\x1a\n not really").unwrap();
    let weights = fixtures().join("weights/tiny_sd").display().to_string();
    let args = ["encode", "a.png", "bad.png", "c.png", "-o", "out", "--batch-size", "3", "--weights", &weights];
    let out = vae(dir.path(), &args);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.lines().any(|l| l.starts_with("vae: error:") && l.contains("bad.png")), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(listing(&dir.path().join("out")), ["a.safetensors", "c.safetensors"]);

    // A latent of the wrong channel count among good ones.
    let good = Latent::read(&dir.path().join("out/a.safetensors")).unwrap();
    let wrong = Latent { channels: 16, data: vec![0.0; 16 * good.height * good.width], ..good.clone() };
    wrong.write(&dir.path().join("out/wrong.safetensors"), vae::output::Overwrite::Refuse).unwrap();
    let out = vae(dir.path(), &["decode", "out", "-o", "png", "--batch-size", "3", "--weights", &weights]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.lines().any(|l| l.starts_with("vae: error:") && l.contains("wrong.safetensors") && l.contains("channels"))
    );
    assert_eq!(listing(&dir.path().join("png")), ["a.png", "c.png"]);
}
