//! FLUX.2 (`AutoencoderKLFlux2`), Wan 2.1 / Qwen-Image
//! (`AutoencoderKLWan`, `AutoencoderKLQwenImage`), Wan 2.2 (`AutoencoderKLWan`
//! with `is_residual`) and Qwen-Image 2.1 (`AutoencoderKLQwenImage21`)
//! against diffusers, through the binary where a user would go: the fixtures
//! in tests/fixtures/families were written by tools/make_family_fixtures.py
//! and tools/make_wan22_fixtures.py (seeded, float64 reference).

mod common;

use std::path::{Path, PathBuf};

use vae::device::DeviceRequest;
use vae::latent::{Latent, LatentMeta};
use vae::latent_space::{LatentForm, LatentSpaceRequest};
use vae::model::Family;
use vae::{Vae, VaeOptions};

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

#[test]
fn qwen_and_wan_encode_as_diffusers_in_every_layout() {
    let dir = tempfile::tempdir().unwrap();
    for weights in wan_layouts(dir.path()) {
        let original = weights.extension().is_some();
        for stem in IMAGES {
            let want = expected("qwen", stem);
            let raw = encode(dir.path(), &weights, stem, "raw.safetensors", &["--latent-form", "raw"]);
            let (shape, mean) = &want["mean"];
            assert_eq!([1, raw.channels, raw.height, raw.width], shape[..]);
            assert_close(&raw.data, mean, TOLERANCE, &format!("qwen {stem} raw ({})", weights.display()));
            let normalized = encode(dir.path(), &weights, stem, "n.safetensors", &[]);
            assert_eq!(normalized.meta.family, Some(Family::Wan21));
            let stats = normalized.meta.channel_stats.clone().expect("normalised per channel by default");
            if original {
                // No config.json: Wan 2.1's own statistics.
                assert_eq!(stats.mean[0], -0.7571);
            } else {
                // The fixture's config.json has its own (seeded) statistics.
                assert_close(&normalized.data, &want["normalized"].1, TOLERANCE, &format!("qwen {stem} normalized"));
            }
        }
    }
}

#[test]
fn qwen_and_wan_decode_as_diffusers_in_every_layout() {
    let dir = tempfile::tempdir().unwrap();
    for weights in wan_layouts(dir.path()) {
        let mut vae = open(&weights, None);
        for stem in IMAGES {
            let want = expected("qwen", stem);
            let (shape, mean) = &want["mean"];
            let latent = Latent {
                channels: shape[1],
                height: shape[2],
                width: shape[3],
                data: mean.clone(),
                meta: LatentMeta { scaling_factor: Some(1.0), shift_factor: Some(0.0), ..Default::default() },
            };
            let decoded = vae.decode_float(&latent).unwrap();
            assert_close(
                &decoded,
                &want["decoded"].1,
                TOLERANCE,
                &format!("qwen {stem} decoded ({})", weights.display()),
            );
            assert!(decoded.iter().all(|v| (-1.0..=1.0).contains(v)), "clamped to [-1, 1] as diffusers' _decode");
        }
    }
    // Through the binary: diffusers' normalised latent, without metadata, is
    // what the Qwen-Image weights read by default.
    let weights = families().join("qwen/diffusers");
    for stem in IMAGES {
        let want = expected("qwen", stem);
        let (shape, normalized) = &want["normalized"];
        write_latent(&dir.path().join("n.npy"), shape, normalized, LatentMeta::default());
        let (png, _) = decode(dir.path(), &weights, "n.npy", &[]);
        assert_png_close(&png, "qwen", stem);
    }
}

#[test]
fn bands_are_identical_to_the_whole_pass() {
    let dir = tempfile::tempdir().unwrap();
    for (family, weights) in
        [("flux2", families().join("flux2/diffusers")), ("qwen", families().join("qwen/diffusers"))]
    {
        let stem = IMAGES[1];
        let whole = encode(dir.path(), &weights, stem, "whole.safetensors", &["--tile", "off"]);
        let banded = encode(dir.path(), &weights, stem, "banded.safetensors", &["--tile", "16"]);
        assert_eq!(whole.data, banded.data, "{family}: encoded in bands of 16 rows");
        let (a, _) = decode(dir.path(), &weights, "whole.safetensors", &["--tile", "off"]);
        let (b, _) = decode(dir.path(), &weights, "whole.safetensors", &["--tile", "16"]);
        assert_eq!(a, b, "{family}: decoded in bands of 16 rows");
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

#[test]
fn sampling_inspect_and_preview_work_for_the_new_families() {
    let dir = tempfile::tempdir().unwrap();
    for (family, weights, name) in [
        ("flux2", families().join("flux2/ae.safetensors"), "flux2"),
        ("qwen", families().join("qwen/wan21_original.safetensors"), "wan21"),
    ] {
        let stem = IMAGES[0];
        let mean = encode(dir.path(), &weights, stem, "m.safetensors", &[]);
        let a = encode(dir.path(), &weights, stem, "a.safetensors", &["--sample", "--seed", "3"]);
        let b = encode(dir.path(), &weights, stem, "b.safetensors", &["--sample", "--seed", "3"]);
        assert_eq!(a.data, b.data, "{family}: a seeded draw is repeatable");
        assert_ne!(a.data, mean.data, "{family}: a draw is not the mean");
        let out = vae(dir.path(), &["inspect", weights.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stdout(&out).contains(&format!("family: {name}")), "{}", stdout(&out));
        let out = vae(dir.path(), &["preview", "m.safetensors", "-o", "p.png", "--force"]);
        assert!(out.status.success(), "{family}: {}", stderr(&out));
        let png = image::open(dir.path().join("p.png")).unwrap().to_rgb8();
        assert_eq!(png.dimensions(), (96, 64), "{family}: the image's size");
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
        for weights in layouts {
            let original = weights.extension().is_some();
            for stem in IMAGES {
                let want = expected(name, stem);
                let raw = encode(dir.path(), &weights, stem, "raw.safetensors", &["--latent-form", "raw"]);
                let (shape, mean) = &want["mean"];
                assert_eq!([1, raw.channels, raw.height, raw.width], shape[..]);
                assert_close(&raw.data, mean, TOLERANCE, &format!("{name} {stem} raw ({})", weights.display()));
                let normalized = encode(dir.path(), &weights, stem, "n.safetensors", &[]);
                assert_eq!(normalized.meta.family, Some(family));
                let stats = normalized.meta.channel_stats.clone().expect("normalised per channel by default");
                if original {
                    // No config.json: Wan 2.2's own statistics.
                    assert_eq!((stats.mean[0], stats.std[47]), (-0.2289, 0.7744));
                } else {
                    assert_close(
                        &normalized.data,
                        &want["normalized"].1,
                        TOLERANCE,
                        &format!("{name} {stem} normalized"),
                    );
                }
            }
        }
    }
}

#[test]
fn wan22_and_qwen_image21_decode_as_diffusers_in_every_layout() {
    let dir = tempfile::tempdir().unwrap();
    for (name, layouts, _) in residual_families() {
        for weights in &layouts {
            let mut vae = open(weights, None);
            for stem in IMAGES {
                let want = expected(name, stem);
                let (shape, mean) = &want["mean"];
                let latent = Latent {
                    channels: shape[1],
                    height: shape[2],
                    width: shape[3],
                    data: mean.clone(),
                    meta: LatentMeta { scaling_factor: Some(1.0), shift_factor: Some(0.0), ..Default::default() },
                };
                let decoded = vae.decode_float(&latent).unwrap();
                // Qwen-Image 2.1 decodes RGBA: all four planes are compared.
                assert_eq!(decoded.len(), want["decoded"].1.len(), "{name}: the decoder's planes");
                let what = format!("{name} {stem} decoded ({})", weights.display());
                assert_close(&decoded, &want["decoded"].1, TOLERANCE, &what);
                assert!(decoded.iter().all(|v| (-1.0..=1.0).contains(v)), "clamped to [-1, 1] as diffusers' _decode");
            }
        }
        // Through the binary: diffusers' normalised latent, without metadata,
        // is what the diffusers folder reads by default.
        for stem in IMAGES {
            let want = expected(name, stem);
            let (shape, normalized) = &want["normalized"];
            write_latent(&dir.path().join("n.npy"), shape, normalized, LatentMeta::default());
            let (png, _) = decode(dir.path(), &layouts[0], "n.npy", &[]);
            assert_png_close(&png, name, stem);
        }
    }
}

#[test]
fn wan22_and_qwen_image21_bands_are_identical_to_the_whole_pass() {
    let dir = tempfile::tempdir().unwrap();
    for (name, layouts, _) in residual_families() {
        let weights = &layouts[0];
        let stem = IMAGES[1];
        let whole = encode(dir.path(), weights, stem, "whole.safetensors", &["--tile", "off"]);
        let banded = encode(dir.path(), weights, stem, "banded.safetensors", &["--tile", "16"]);
        assert_eq!(whole.data, banded.data, "{name}: encoded in bands of 16 rows");
        let (a, _) = decode(dir.path(), weights, "whole.safetensors", &["--tile", "off"]);
        let (b, _) = decode(dir.path(), weights, "whole.safetensors", &["--tile", "16"]);
        assert_eq!(a, b, "{name}: decoded in bands of 16 rows");
    }
}

#[test]
fn wan22_and_qwen_image21_sample_inspect_preview_and_refuse_other_channels() {
    let dir = tempfile::tempdir().unwrap();
    for (name, layouts, family) in residual_families() {
        let weights = layouts.last().unwrap();
        let stem = IMAGES[0];
        let mean = encode(dir.path(), weights, stem, "m.safetensors", &[]);
        let a = encode(dir.path(), weights, stem, "a.safetensors", &["--sample", "--seed", "3"]);
        let b = encode(dir.path(), weights, stem, "b.safetensors", &["--sample", "--seed", "3"]);
        assert_eq!(a.data, b.data, "{name}: a seeded draw is repeatable");
        assert_ne!(a.data, mean.data, "{name}: a draw is not the mean");
        let out = vae(dir.path(), &["inspect", weights.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stdout(&out).contains(&format!("family: {}", family.name())), "{}", stdout(&out));
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
