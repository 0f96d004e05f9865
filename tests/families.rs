//! FLUX.2 (`AutoencoderKLFlux2`), Wan 2.1 / Qwen-Image
//! (`AutoencoderKLWan`, `AutoencoderKLQwenImage`), Wan 2.2 (`AutoencoderKLWan`
//! with `is_residual`) and Qwen-Image 2.1 (`AutoencoderKLQwenImage21`)
//! against diffusers, through the binary where a user would go: the fixtures
//! in tests/fixtures/families were written by tools/make_family_fixtures.py
//! and tools/make_wan22_fixtures.py (seeded, float64 reference).

mod common;

use std::path::{Path, PathBuf};

use vae::device::DeviceRequest;
use vae::imageio::{self, DEFAULT_MAX_PIXELS};
use vae::latent::{Latent, LatentMeta, Posterior};
use vae::latent_space::{LatentForm, LatentSpaceRequest};
use vae::model::Family;
use vae::tiling::Tile;
use vae::{Vae, VaeOptions};

use common::parity::{full_fixtures, raw_latent};
use common::{assert_fails, fixtures, max_abs_diff, read_tensors, stderr, stdout, vae};

/// The bound the project promises for latents and decoded floats.
const TOLERANCE: f32 = 1e-4;
const IMAGES: [&str; 2] = ["kodim03_96x64", "kodim07_80x112"];

fn families() -> PathBuf {
    fixtures().join("families")
}

fn image(stem: &str) -> PathBuf {
    families().join(format!("images/{stem}.png"))
}

fn expected(family: &str, stem: &str) -> std::collections::HashMap<String, (Vec<usize>, Vec<f32>)> {
    read_tensors(&families().join(format!("{family}/expected/{stem}.safetensors")))
}

/// `vae encode` of `stem` with `weights` and `args`, read back.
fn encode(dir: &Path, weights: &Path, stem: &str, out: &str, args: &[&str]) -> Latent {
    let (input, weights) = (image(stem), weights.to_str().unwrap().to_owned());
    let mut all = vec!["encode", input.to_str().unwrap(), "-w", &weights, "-o", out, "--force"];
    all.extend(args);
    let run = vae(dir, &all);
    assert!(run.status.success(), "encode {stem} {args:?}: {}", stderr(&run));
    Latent::read(&dir.join(out)).unwrap()
}

/// `vae decode` of `latent` with `weights`: the PNG's pixels, and stderr.
fn decode(dir: &Path, weights: &Path, latent: &str, args: &[&str]) -> (image::RgbImage, String) {
    let weights = weights.to_str().unwrap().to_owned();
    let out = format!("{latent}.png");
    let mut all = vec!["decode", latent, "-w", &weights, "-o", &out, "--force"];
    all.extend(args);
    let run = vae(dir, &all);
    assert!(run.status.success(), "decode {latent} {args:?}: {}", stderr(&run));
    (image::open(dir.join(&out)).unwrap().to_rgb8(), stderr(&run))
}

/// Within one 8-bit level of diffusers' PNG (rounding at x.5 may flip).
fn assert_png_close(got: &image::RgbImage, family: &str, name: &str) {
    let want = image::open(families().join(format!("{family}/expected/{name}.png"))).unwrap().to_rgb8();
    assert_eq!(got.dimensions(), want.dimensions(), "{family}/{name}: size");
    let worst = got.as_raw().iter().zip(want.as_raw()).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    assert!(worst <= 1, "{family}/{name}: PNG differs by {worst} levels");
}

fn assert_close(got: &[f32], want: &[f32], bound: f32, what: &str) {
    let err = max_abs_diff(got, want);
    eprintln!("{what}: max abs error {err:.1e}");
    assert!(err <= bound, "{what}: max abs error {err:e} > {bound:e}");
}

/// A latent file holding `values` of `shape` `[1, C, h, w]`, as `meta` says.
fn write_latent(path: &Path, shape: &[usize], values: &[f32], meta: LatentMeta) {
    let latent = Latent { channels: shape[1], height: shape[2], width: shape[3], data: values.to_vec(), meta };
    latent.write(path, vae::output::Overwrite::Replace).unwrap();
}

fn open(weights: &Path, form: Option<LatentForm>) -> Vae {
    let options = VaeOptions {
        device: DeviceRequest::Cpu,
        latent_space: LatentSpaceRequest { form, ..Default::default() },
        ..VaeOptions::new(weights)
    };
    Vae::open(&options).unwrap_or_else(|e| panic!("{}: {e}", weights.display()))
}

fn flux2_layouts() -> [PathBuf; 2] {
    [families().join("flux2/diffusers"), families().join("flux2/ae.safetensors")]
}

#[test]
fn flux2_encodes_raw_and_normalized_latents_in_both_layouts() {
    let dir = tempfile::tempdir().unwrap();
    for weights in flux2_layouts() {
        for stem in IMAGES {
            let want = expected("flux2", stem);
            let raw = encode(dir.path(), &weights, stem, "raw.safetensors", &[]);
            let (shape, mean) = &want["mean"];
            assert_eq!([1, raw.channels, raw.height, raw.width], shape[..], "{stem}: raw is the VAE's 32 channels");
            assert_eq!((raw.meta.family, raw.meta.channel_stats.as_ref()), (Some(Family::Flux2), None));
            assert_close(&raw.data, mean, TOLERANCE, &format!("flux2 {stem} raw ({})", weights.display()));
            let normalized = encode(dir.path(), &weights, stem, "n.safetensors", &["--latent-form", "normalized"]);
            let (shape, values) = &want["normalized"];
            assert_eq!([1, normalized.channels, normalized.height, normalized.width], shape[..], "{stem}: 2x2 patches");
            assert_eq!(normalized.meta.channel_stats.as_ref().map(|s| (s.patch, s.mean.len())), Some((2, 128)));
            assert_close(&normalized.data, values, TOLERANCE, &format!("flux2 {stem} normalized"));
        }
    }
}

#[test]
fn flux2_pipeline_normalisation_of_a_raw_latent_is_ours() {
    // diffusers' pipeline (_patchify_latents, then the batch norm) applied to
    // the raw mean gave `normalized`; our latent space applied to the same
    // raw mean must give it too.
    let vae = open(&families().join("flux2/diffusers"), Some(LatentForm::Normalized));
    for stem in IMAGES {
        let want = expected("flux2", stem);
        let (shape, mean) = &want["mean"];
        let ours = vae.latent_space().to_stored(mean, (shape[1], shape[2], shape[3]));
        assert_close(&ours, &want["normalized"].1, 1e-5, &format!("flux2 {stem} pipeline normalisation"));
    }
}

#[test]
fn flux2_raw_and_normalized_latents_decode_to_the_same_png() {
    let dir = tempfile::tempdir().unwrap();
    let weights = families().join("flux2/diffusers");
    for stem in IMAGES {
        let want = expected("flux2", stem);
        let (shape, mean) = &want["mean"];
        let meta = LatentMeta { family: Some(Family::Flux2), ..Default::default() };
        write_latent(&dir.path().join("raw.safetensors"), shape, mean, meta);
        let (raw_png, said) = decode(dir.path(), &weights, "raw.safetensors", &[]);
        assert!(said.contains("the raw form (32 channels)"), "{said}");
        assert_png_close(&raw_png, "flux2", stem);
        // diffusers' normalised latent, as another tool would write it: no metadata.
        let (shape, normalized) = &want["normalized"];
        write_latent(&dir.path().join("n.npy"), shape, normalized, LatentMeta::default());
        let (n_png, said) = decode(dir.path(), &weights, "n.npy", &[]);
        assert!(said.contains("the normalized form (128 channels)"), "{said}");
        let worst = raw_png.as_raw().iter().zip(n_png.as_raw()).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
        assert!(worst <= 1, "{stem}: raw and normalized decode {worst} levels apart");
        // Our own normalised file, which records its statistics, likewise.
        encode(dir.path(), &weights, stem, "ours.safetensors", &["--latent-form", "normalized"]);
        let (ours, _) = decode(dir.path(), &weights, "ours.safetensors", &[]);
        assert_png_close(&ours, "flux2", stem);
    }
}

#[test]
fn flux2_decoders_match_diffusers_in_floats() {
    for (folder, prefix) in [("diffusers", ""), ("small_decoder", "small_decoder_")] {
        let mut vae = open(&families().join("flux2").join(folder), None);
        for stem in IMAGES {
            let want = expected("flux2", stem);
            let (shape, mean) = &want["mean"];
            let latent = Latent {
                channels: shape[1],
                height: shape[2],
                width: shape[3],
                data: mean.clone(),
                meta: LatentMeta { family: Some(Family::Flux2), ..Default::default() },
            };
            let decoded = vae.decode_float(&latent).unwrap();
            let name = format!("{prefix}{stem}");
            let reference = expected("flux2", &name);
            assert_close(&decoded, &reference["decoded"].1, TOLERANCE, &format!("flux2 {name} decoded"));
            let png = vae.decode(&latent).unwrap();
            let png = image::RgbImage::from_raw(png.width as u32, png.height as u32, png.rgb8).unwrap();
            assert_png_close(&png, "flux2", &name);
        }
    }
}

/// The Qwen-Image weights, and the same tensors as an `AutoencoderKLWan`
/// folder (its config.json beside a copy of them) and as the original Wan
/// 2.1 file.
fn wan_layouts(dir: &Path) -> [PathBuf; 3] {
    let wan = dir.join("wan");
    std::fs::create_dir_all(&wan).unwrap();
    std::fs::copy(families().join("wan/diffusers/config.json"), wan.join("config.json")).unwrap();
    let weights = "diffusion_pytorch_model.safetensors";
    std::fs::copy(families().join("qwen/diffusers").join(weights), wan.join(weights)).unwrap();
    [families().join("qwen/diffusers"), wan, families().join("qwen/wan21_original.safetensors")]
}

/// `vae encode` of each image with each of `layouts` (the weights of the
/// fixture `name`, a family normalised per channel), raw and in the default
/// normalised form, against diffusers. A folder's config.json has the
/// fixture's own (seeded) statistics; a single file, without one, the family's.
fn check_encode_per_channel(dir: &Path, name: &str, layouts: &[PathBuf], family: Family) {
    for weights in layouts {
        let original = weights.extension().is_some();
        for stem in IMAGES {
            let want = expected(name, stem);
            let raw = encode(dir, weights, stem, "raw.safetensors", &["--latent-form", "raw"]);
            let (shape, mean) = &want["mean"];
            assert_eq!([1, raw.channels, raw.height, raw.width], shape[..]);
            assert_close(&raw.data, mean, TOLERANCE, &format!("{name} {stem} raw ({})", weights.display()));
            let normalized = encode(dir, weights, stem, "n.safetensors", &[]);
            assert_eq!(normalized.meta.family, Some(family));
            let stats = normalized.meta.channel_stats.clone().expect("normalised per channel by default");
            if original {
                let (mean, std) = family.channel_stats().expect("the family's own statistics");
                assert_eq!((&stats.mean[..], &stats.std[..]), (mean, std), "{name}: no config.json");
            } else {
                assert_close(&normalized.data, &want["normalized"].1, TOLERANCE, &format!("{name} {stem} normalized"));
            }
        }
    }
}

#[test]
fn qwen_and_wan_encode_as_diffusers_in_every_layout() {
    let dir = tempfile::tempdir().unwrap();
    check_encode_per_channel(dir.path(), "qwen", &wan_layouts(dir.path()), Family::Wan21);
    // Wan 2.1's own statistics, from diffusers' AutoencoderKLWan defaults.
    assert_eq!(Family::Wan21.channel_stats().map(|(mean, std)| (mean[0], std[15])), Some((-0.7571, 1.9160)));
}

/// The decoder of each of `layouts` (the weights of the fixture `name`) on
/// diffusers' mean, in floats (every plane: Qwen-Image 2.1 decodes RGBA);
/// then, through the binary, diffusers' normalised latent without metadata,
/// which the diffusers folder (`layouts[0]`) reads by default.
fn check_decode_per_channel(dir: &Path, name: &str, layouts: &[PathBuf]) {
    for weights in layouts {
        let mut vae = open(weights, None);
        for stem in IMAGES {
            let want = expected(name, stem);
            let (shape, mean) = &want["mean"];
            let latent = raw_latent(shape, mean);
            let decoded = vae.decode_float(&latent).unwrap();
            assert_eq!(decoded.len(), want["decoded"].1.len(), "{name}: the decoder's planes");
            let what = format!("{name} {stem} decoded ({})", weights.display());
            assert_close(&decoded, &want["decoded"].1, TOLERANCE, &what);
            assert!(decoded.iter().all(|v| (-1.0..=1.0).contains(v)), "clamped to [-1, 1] as diffusers' _decode");
        }
    }
    for stem in IMAGES {
        let want = expected(name, stem);
        let (shape, normalized) = &want["normalized"];
        write_latent(&dir.join("n.npy"), shape, normalized, LatentMeta::default());
        let (png, _) = decode(dir, &layouts[0], "n.npy", &[]);
        assert_png_close(&png, name, stem);
    }
}

#[test]
fn qwen_and_wan_decode_as_diffusers_in_every_layout() {
    let dir = tempfile::tempdir().unwrap();
    check_decode_per_channel(dir.path(), "qwen", &wan_layouts(dir.path()));
}

/// `weights` encode and decode in bands of 16 rows exactly as whole.
fn check_bands(dir: &Path, name: &str, weights: &Path) {
    let stem = IMAGES[1];
    let whole = encode(dir, weights, stem, "whole.safetensors", &["--tile", "off"]);
    let banded = encode(dir, weights, stem, "banded.safetensors", &["--tile", "16"]);
    assert_eq!(whole.data, banded.data, "{name}: encoded in bands of 16 rows");
    let (a, _) = decode(dir, weights, "whole.safetensors", &["--tile", "off"]);
    let (b, _) = decode(dir, weights, "whole.safetensors", &["--tile", "16"]);
    assert_eq!(a, b, "{name}: decoded in bands of 16 rows");
}

#[test]
fn bands_are_identical_to_the_whole_pass() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["flux2", "qwen"] {
        check_bands(dir.path(), name, &families().join(name).join("diffusers"));
    }
}

#[test]
fn a_latent_of_other_channels_is_refused_naming_both_counts() {
    let dir = tempfile::tempdir().unwrap();
    write_latent(&dir.path().join("z.safetensors"), &[1, 16, 4, 4], &[0.5; 256], LatentMeta::default());
    let weights = families().join("flux2/ae.safetensors");
    let out = vae(dir.path(), &["decode", "z.safetensors", "-w", weights.to_str().unwrap()]);
    assert_fails(&out, "z.safetensors", "16 channels but the weights expect 32 (or 128 in their other form)");
    assert!(!dir.path().join("z.png").exists());
    let weights = families().join("qwen/diffusers");
    write_latent(&dir.path().join("z.safetensors"), &[1, 4, 4, 4], &[0.5; 64], LatentMeta::default());
    let out = vae(dir.path(), &["decode", "z.safetensors", "-w", weights.to_str().unwrap(), "--force"]);
    assert_fails(&out, "z.safetensors", "4 channels but the weights expect 16");
}

/// With `weights`, the posterior mean of an image (left in m.safetensors)
/// and a seeded draw twice: the draw repeats and is not the mean.
fn check_seeded_draws(dir: &Path, name: &str, weights: &Path) {
    let stem = IMAGES[0];
    let mean = encode(dir, weights, stem, "m.safetensors", &[]);
    let a = encode(dir, weights, stem, "a.safetensors", &["--sample", "--seed", "3"]);
    let b = encode(dir, weights, stem, "b.safetensors", &["--sample", "--seed", "3"]);
    assert_eq!(a.data, b.data, "{name}: a seeded draw is repeatable");
    assert_ne!(a.data, mean.data, "{name}: a draw is not the mean");
}

#[test]
fn sampling_and_preview_work_for_flux2_and_wan21() {
    let dir = tempfile::tempdir().unwrap();
    for (name, weights) in [
        ("flux2", families().join("flux2/ae.safetensors")),
        ("qwen", families().join("qwen/wan21_original.safetensors")),
    ] {
        check_seeded_draws(dir.path(), name, &weights);
        let out = vae(dir.path(), &["preview", "m.safetensors", "-o", "p.png", "--force"]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let png = image::open(dir.path().join("p.png")).unwrap().to_rgb8();
        assert_eq!(png.dimensions(), (96, 64), "{name}: the image's size");
    }
}

/// The members of the tar at `path`, by name.
fn tar_members(path: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    let entries = archive.entries().unwrap().map(|e| {
        let mut e = e.unwrap();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        (e.path().unwrap().to_string_lossy().into_owned(), data)
    });
    entries.collect()
}

#[test]
fn dataset_shards_and_comfy_latents_work_for_the_new_families() {
    let dir = tempfile::tempdir().unwrap();
    let shard = dir.path().join("files/00000");
    std::fs::create_dir_all(&shard).unwrap();
    for (key, stem) in ["a", "b"].iter().zip(IMAGES) {
        std::fs::copy(image(stem), shard.join(format!("{key}.png"))).unwrap();
    }
    let cases: [(&str, PathBuf, &[&str]); 2] = [
        ("flux2", families().join("flux2/diffusers"), &["--latent-form", "normalized"]),
        ("qwen", families().join("qwen/diffusers"), &[]),
    ];
    for (family, weights, args) in cases {
        let out_dir = format!("out-{family}");
        let w = weights.to_str().unwrap();
        let mut all = vec!["dataset", "encode", "files", "-o", &out_dir, "-w", w, "-q"];
        all.extend(args);
        let run = vae(dir.path(), &all);
        assert!(run.status.success(), "{family}: {}", stderr(&run));
        let members = tar_members(&dir.path().join(&out_dir).join("00000.tar"));
        for (key, stem) in ["a", "b"].iter().zip(IMAGES) {
            let name = format!("{key}.latent.safetensors");
            let in_shard = Latent::from_bytes(&members[&name], Path::new(&name)).unwrap();
            let alone = encode(dir.path(), &weights, stem, "alone.safetensors", args);
            assert_eq!((in_shard.channels, &in_shard.data), (alone.channels, &alone.data), "{family}/{key}");
        }
        // ComfyUI's .latent holds the VAE's latent unscaled (unpatched for
        // FLUX.2): it decodes to the image the safetensors file decodes to.
        encode(dir.path(), &weights, IMAGES[0], "z.latent", args);
        encode(dir.path(), &weights, IMAGES[0], "z.safetensors", args);
        let comfy = Latent::read(&dir.path().join("z.latent")).unwrap();
        assert_eq!(comfy.channels, if family == "flux2" { 32 } else { 16 }, "{family}: .latent is the VAE's latent");
        let (a, _) = decode(dir.path(), &weights, "z.latent", &[]);
        let (b, _) = decode(dir.path(), &weights, "z.safetensors", &[]);
        let worst = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
        assert!(worst <= 1, "{family}: .latent and .safetensors decode {worst} levels apart");
    }
}

/// Wan 2.2 (`AutoencoderKLWan` with `is_residual`) and Qwen-Image 2.1
/// (`AutoencoderKLQwenImage21`): the fixtures of tools/make_wan22_fixtures.py.
/// `(fixture folder, weights in every layout, family)`.
fn residual_families() -> [(&'static str, Vec<PathBuf>, Family); 2] {
    [
        (
            "wan22",
            vec![families().join("wan22/diffusers"), families().join("wan22/wan22_original.safetensors")],
            Family::Wan22,
        ),
        ("qwenimage21", vec![families().join("qwenimage21/diffusers")], Family::QwenImage21),
    ]
}

#[test]
fn wan22_and_qwen_image21_encode_as_diffusers_in_every_layout() {
    let dir = tempfile::tempdir().unwrap();
    for (name, layouts, family) in residual_families() {
        check_encode_per_channel(dir.path(), name, &layouts, family);
    }
    // Wan 2.2's own statistics, from ComfyUI's Wan22 latent format.
    assert_eq!(Family::Wan22.channel_stats().map(|(mean, std)| (mean[0], std[47])), Some((-0.2289, 0.7744)));
}

#[test]
fn wan22_and_qwen_image21_decode_as_diffusers_in_every_layout() {
    let dir = tempfile::tempdir().unwrap();
    for (name, layouts, _) in residual_families() {
        check_decode_per_channel(dir.path(), name, &layouts);
    }
}

#[test]
fn wan22_and_qwen_image21_bands_are_identical_to_the_whole_pass() {
    let dir = tempfile::tempdir().unwrap();
    for (name, layouts, _) in residual_families() {
        check_bands(dir.path(), name, &layouts[0]);
    }
}

#[test]
fn wan22_and_qwen_image21_sample_preview_and_refuse_other_channels() {
    let dir = tempfile::tempdir().unwrap();
    for (name, layouts, family) in residual_families() {
        let weights = layouts.last().unwrap();
        check_seeded_draws(dir.path(), name, weights);
        let out = vae(dir.path(), &["preview", "m.safetensors", "-o", "p.png", "--force", "--scale", "16"]);
        if family == Family::Wan22 {
            assert!(out.status.success(), "{name}: {}", stderr(&out));
            let png = image::open(dir.path().join("p.png")).unwrap().to_rgb8();
            assert_eq!(png.dimensions(), (96, 64), "{name}: the image's size");
        } else {
            assert_fails(&out, "m.safetensors", "no preview for qwenimage21 latents");
        }
        write_latent(&dir.path().join("z.safetensors"), &[1, 16, 4, 4], &[0.5; 256], LatentMeta::default());
        let out = vae(dir.path(), &["decode", "z.safetensors", "-w", weights.to_str().unwrap(), "--force"]);
        let expect = format!("16 channels but the weights expect {}", family.latent_channels());
        assert_fails(&out, "z.safetensors", &expect);
    }
}

/// `vae inspect --json` of `path`, parsed.
fn inspect(dir: &Path, path: &Path) -> serde_json::Value {
    let out = vae(dir, &["inspect", "--json", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}: {}", path.display(), stderr(&out));
    serde_json::from_str(stdout(&out).trim()).unwrap()
}

#[test]
fn inspect_reports_each_family_s_architecture_and_latent_space() {
    let dir = tempfile::tempdir().unwrap();
    // (weights, what the report must hold): the fixtures' configs, in
    // tools/family_configs.py.
    let cases = [
        (
            "flux2/ae.safetensors",
            serde_json::json!({
                "model": "AutoencoderKLFlux2", "family": "flux2", "latent_channels": 32, "downscale": 8,
                "latent_space": "raw (flux2)",
                "other_latent_form": "normalized per channel (128 channels, 2x2 patches) (flux2)",
                "block_out_channels": [32, 32, 32, 64], "layers_per_block": 1, "quant_convs": true,
            }),
        ),
        (
            "flux2/small_decoder",
            serde_json::json!({
                "model": "AutoencoderKLFlux2", "decoder_block_out_channels": [32, 32, 32, 32],
            }),
        ),
        (
            "qwen/wan21_original.safetensors",
            serde_json::json!({
                "model": "AutoencoderKLWan", "family": "wan21", "latent_channels": 16, "downscale": 8,
                "latent_space": "normalized per channel (16 channels) (wan21)",
                "base_dim": 4, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
                "temperal_downsample": [false, true, true],
            }),
        ),
        (
            "wan22/wan22_original.safetensors",
            serde_json::json!({
                "model": "AutoencoderKLWan", "family": "wan22", "latent_channels": 48, "downscale": 16,
                "latent_space": "normalized per channel (48 channels) (wan22)",
                "base_dim": 4, "decoder_base_dim": 5, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
                "temperal_downsample": [false, true, true], "is_residual": true, "image": "RGB",
                "patch_size": 2, "in_channels": 12, "out_channels": 12,
                "convolutions": "causal 3D (one frame: their last temporal tap)",
            }),
        ),
        (
            "wan22/diffusers",
            serde_json::json!({ "family": "wan22", "patch_size": 2, "layout": "diffusers (Wan/Qwen-Image)" }),
        ),
        (
            "qwenimage21/diffusers",
            serde_json::json!({
                "model": "AutoencoderKLQwenImage21", "family": "qwenimage21", "latent_channels": 64,
                "downscale": 16, "latent_space": "normalized per channel (64 channels) (qwenimage21)",
                "base_dim": 4, "decoder_base_dim": 5, "dim_mult": [1, 2, 4, 8, 8], "num_res_blocks": 2,
                "temperal_downsample": [false, true, true, true], "is_residual": true, "patch_size": 1,
                "in_channels": 4, "out_channels": 4, "convolutions": "2D",
            }),
        ),
    ];
    for (weights, want) in cases {
        let report = inspect(dir.path(), &families().join(weights));
        for (key, value) in want.as_object().unwrap() {
            assert_eq!(&report[key], value, "{weights}: {key} in {report}");
        }
    }
    let qwen21 = inspect(dir.path(), &families().join("qwenimage21/diffusers"));
    assert!(qwen21["image"].as_str().unwrap().starts_with("RGBA"), "{qwen21}");
    // The human form has the same lines.
    let out = vae(dir.path(), &["inspect", families().join("wan22/diffusers").to_str().unwrap()]);
    let text = stdout(&out);
    for line in ["model: AutoencoderKLWan\n", "downscale: 16\n", "decoder_base_dim: 5\n", "patch_size: 2\n"] {
        assert!(text.contains(line), "{line:?} in {text}");
    }
    // A latent of each: the image size it decodes to, at the family's scale
    // (from its metadata; a .npy has none: from its channel count).
    for (weights, args, at) in [
        ("wan22/diffusers", &[][..], "96x64 (at 16x)"),
        ("qwenimage21/diffusers", &[], "96x64 (at 16x)"),
        ("flux2/diffusers", &[], "96x64 (at 8x)"),
        ("flux2/diffusers", &["--latent-form", "normalized"], "96x64 (at 16x)"),
    ] {
        encode(dir.path(), &families().join(weights), IMAGES[0], "z.safetensors", args);
        let report = inspect(dir.path(), &dir.path().join("z.safetensors"));
        assert_eq!(report["decodes_to"], at, "{weights} {args:?}: {report}");
    }
    encode(dir.path(), &families().join("wan22/diffusers"), IMAGES[0], "z.npy", &[]);
    let report = inspect(dir.path(), &dir.path().join("z.npy"));
    assert_eq!(report["decodes_to"], "96x64 (at 16x, by its 48 channels)", "{report}");
}

// ------------------------------------------------------------- real size (opt-in)

/// The crop the real-size models run on (`FULL_IMAGE` of
/// tools/make_family_fixtures.py).
const FULL_IMAGE: &str = "kodim03_256x256";

/// The real-size model `weights` (a path under [`full_fixtures`]) against
/// diffusers' outputs `expected/{name}__FULL_IMAGE.safetensors`: the raw
/// mean, the default normalised latent where `normalized_by_default` (else
/// `--latent-form normalized`'s), the decoder in floats and its PNG.
fn check_full_size(weights: &Path, name: &str, normalized_by_default: bool) {
    let dir = full_fixtures();
    let input = imageio::load(&dir.join(format!("images/{FULL_IMAGE}.png")), DEFAULT_MAX_PIXELS).unwrap();
    let want = read_tensors(&dir.join(format!("expected/{name}__{FULL_IMAGE}.safetensors")));
    let what = |part: &str| format!("full-size {name} {part} ({})", weights.display());
    // Whole passes: under the default memory budget, with two real-size
    // models loaded, bands would keep activations in f16.
    let open = |form| {
        let latent_space = LatentSpaceRequest { form, ..Default::default() };
        let options =
            VaeOptions { device: DeviceRequest::Cpu, latent_space, tile: Tile::Off, ..VaeOptions::new(weights) };
        Vae::open(&options).unwrap_or_else(|e| panic!("{}: {e}", weights.display()))
    };
    let mut raw = open(Some(LatentForm::Raw));
    let mean = raw.encode(&input, Posterior::Mean).unwrap();
    assert_eq!([1, mean.channels, mean.height, mean.width], want["mean"].0[..]);
    assert_close(&mean.data, &want["mean"].1, TOLERANCE, &what("mean"));
    let form = if normalized_by_default { None } else { Some(LatentForm::Normalized) };
    let normalized = open(form).encode(&input, Posterior::Mean).unwrap();
    match normalized.meta.family.and_then(|f| f.channel_stats()).filter(|_| weights.is_file()) {
        // A single file has no config.json: it normalises with the family's
        // own statistics, where the fixture's folder has random ones.
        Some((mean, std)) => {
            let stats = normalized.meta.channel_stats.as_ref().expect("normalised per channel");
            assert_eq!((&stats.mean[..], &stats.std[..]), (mean, std), "{}", what("statistics"));
        }
        None => assert_close(&normalized.data, &want["normalized"].1, TOLERANCE, &what("normalized")),
    }
    // diffusers' own mean, decoded.
    let (shape, values) = &want["mean"];
    let latent = Latent { data: values.clone(), ..mean };
    assert_eq!(shape[1..], [latent.channels, latent.height, latent.width]);
    let decoded = raw.decode_float(&latent).unwrap();
    assert_close(&decoded, &want["decoded"].1, TOLERANCE, &what("decoded"));
    let png = raw.decode(&latent).unwrap();
    let png = image::RgbImage::from_raw(png.width as u32, png.height as u32, png.rgb8).unwrap();
    let reference = image::open(dir.join(format!("expected/{name}__{FULL_IMAGE}.png"))).unwrap().to_rgb8();
    let worst = png.as_raw().iter().zip(reference.as_raw()).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    assert!(worst <= 1, "{}: PNG differs by {worst} levels", what("decoded"));
}

/// FLUX.2's real size (`AutoencoderKLFlux2` defaults: widths 128, 256, 512,
/// 512, 2 layers per block, about 84M parameters) with random weights, as a
/// diffusers folder and as BFL's `ae.safetensors`; needs the fixtures of
/// `python3 tools/make_family_fixtures.py --full-size` (`$VAE_FULL_FIXTURES`,
/// else target/fixtures-full). Run:
/// `cargo test --release --test families -- --ignored`.
#[test]
#[ignore = "needs Python-made full-size fixtures; see tests/fixtures/README.md"]
fn full_size_flux2() {
    for weights in ["flux2", "flux2_ae.safetensors"] {
        check_full_size(&full_fixtures().join(weights), "flux2", false);
    }
}

/// The Qwen-Image / Wan 2.1 VAE's real size (base_dim 96, about 127M
/// parameters, the classes' own latent statistics) with random weights;
/// fixtures and command as [`full_size_flux2`].
#[test]
#[ignore = "needs Python-made full-size fixtures; see tests/fixtures/README.md"]
fn full_size_qwen_and_wan21() {
    check_full_size(&full_fixtures().join("qwen"), "qwen", true);
}

/// Wan 2.2 TI2V's VAE (base_dim 160, decoder_base_dim 256, 48 channels,
/// 2x2 patches) as a diffusers folder and as the original single file, and
/// Qwen-Image 2.1's (96 / 144, 64 channels, RGBA), at real size with random
/// weights; needs `python3 tools/make_wan22_fixtures.py --full-size` (after
/// `make_family_fixtures.py --full-size`, whose crop it uses). Run as
/// [`full_size_flux2`].
#[test]
#[ignore = "needs Python-made full-size fixtures; see tests/fixtures/README.md"]
fn full_size_wan22_and_qwen_image21() {
    for weights in ["wan22", "wan22_original.safetensors"] {
        check_full_size(&full_fixtures().join(weights), "wan22", true);
    }
    check_full_size(&full_fixtures().join("qwenimage21"), "qwenimage21", true);
}
