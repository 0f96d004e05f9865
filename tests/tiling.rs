//! Banded (bounded-memory) encode and decode give the untiled result: the
//! same diffusers fixtures as tests/parity.rs, at the same tolerance with f32
//! storage, for band heights that do and don't divide the image, a band of a
//! single latent row, and one band for the whole image. Activations spilled
//! to disk give the bands' results in memory, bit for bit.

mod common;

use vae::Vae;
use vae::imageio::{self, DEFAULT_MAX_PIXELS};
use vae::latent::Posterior;
use vae::tiling::{self, Plan, Rows, Storage, Tile};

use common::parity::{TOLERANCE, kl, load_with, scaled_latent};
use common::{fixtures, max_abs_diff, read_tensors};

/// f16 storage rounds each stored activation (relative 2^-11); ~40 layers
/// of that move latents and images by a few 1e-3 at most.
const F16_TOLERANCE: f32 = 5e-2;

/// `weights` opened with `tile` and `max_memory`.
fn tiled(weights: &str, tile: Tile, max_memory: u64) -> Vae {
    load_with(weights, |options| (options.tile, options.max_memory) = (tile, Some(max_memory)))
}

/// Max abs errors of (latent mean, decoded image) against diffusers for
/// `image` (the decoded image where the fixture holds it, else 0).
fn errors(vae: &mut Vae, expected: &str, image: &str) -> (f32, f32) {
    let (scaling, shift) = (vae.latent_space().scaling_factor, vae.latent_space().shift_factor);
    let want = read_tensors(&fixtures().join(format!("expected/{expected}__{image}.safetensors")));
    let input = imageio::load(&fixtures().join(format!("images/{image}.png")), DEFAULT_MAX_PIXELS).unwrap();
    let latent = vae.encode(&input, Posterior::Mean).unwrap();
    let mean: Vec<f32> = latent.data.iter().map(|v| (*v as f64 / scaling + shift) as f32).collect();
    let latent_err = max_abs_diff(&mean, &want["mean"].1);
    let (shape, expected_mean) = &want["mean"];
    let fixture_latent = scaled_latent(vae, shape, expected_mean);
    let decoded = vae.decode_float(&fixture_latent).unwrap();
    (latent_err, want.get("decoded").map_or(0.0, |(_, d)| max_abs_diff(&decoded, d)))
}

#[test]
fn f32_bands_match_diffusers() {
    // 8 rows: one latent row, rounded up to bands of two; 24 and 200 don't divide the images;
    // 4096: one band.
    for (weights, bands) in [("tiny_sd", [8, 200]), ("tiny_flux", [24, 4096])] {
        let expected = weights;
        for rows in bands {
            let mut vae = tiled(weights, Tile::Rows(rows), u64::MAX);
            let input = imageio::load(&fixtures().join("images/kodim03.png"), DEFAULT_MAX_PIXELS).unwrap();
            assert!(matches!(vae.encode_plan(&input), Plan::Banded { storage: Storage::F32, .. }));
            for image in ["kodim03", "kodim04"] {
                let (latent, decoded) = errors(&mut vae, expected, image);
                eprintln!("{weights} rows {rows} {image}: latent {latent:e}, decoded {decoded:e}");
                assert!(latent <= TOLERANCE, "{weights}, {rows}-row bands, {image}: latent error {latent:e}");
                assert!(decoded <= TOLERANCE, "{weights}, {rows}-row bands, {image}: decoded error {decoded:e}");
            }
        }
    }
}

#[test]
fn f16_storage_stays_close() {
    // A budget too small for f32 storage.
    let mut vae = tiled("tiny_sd", Tile::Rows(40), 1);
    let input = imageio::load(&fixtures().join("images/kodim03.png"), DEFAULT_MAX_PIXELS).unwrap();
    assert!(matches!(vae.encode_plan(&input), Plan::Banded { storage: Storage::F16, .. }));
    for image in ["kodim03", "kodim04"] {
        let (latent, decoded) = errors(&mut vae, "tiny_sd", image);
        eprintln!("f16 {image}: latent {latent:e}, decoded {decoded:e}");
        assert!(latent <= F16_TOLERANCE && decoded <= F16_TOLERANCE, "{image}: {latent:e} {decoded:e}");
    }
}

#[test]
fn auto_bands_only_over_budget() {
    let input = imageio::load(&fixtures().join("images/kodim03.png"), DEFAULT_MAX_PIXELS).unwrap();
    assert!(matches!(tiled("tiny_sd", Tile::Auto, u64::MAX).encode_plan(&input), Plan::Whole { .. }));
    assert!(matches!(tiled("tiny_sd", Tile::Auto, 1).encode_plan(&input), Plan::Banded { .. }));
    assert!(matches!(tiled("tiny_sd", Tile::Off, 1).encode_plan(&input), Plan::Whole { .. }));
}

#[test]
fn spilled_bands_are_the_bands_in_memory() {
    // A budget too small for any activation in memory: all of them spill.
    let tmp = tempfile::tempdir().unwrap();
    let mut vae = load_with("tiny_sd", |options| {
        (options.max_memory, options.tmp_dir) = (Some(1), Some(tmp.path().to_owned()));
    });
    let want = read_tensors(&fixtures().join("expected/tiny_sd__kodim03.safetensors"));
    let (shape, mean) = &want["mean"];
    let latent = scaled_latent(&vae, shape, mean);
    let plan = vae.decode_plan(&latent);
    let Plan::Banded { storage: Storage::F16, spill: Some(spill), .. } = &plan else { panic!("{plan:?}") };
    assert_eq!((spill.above, spill.dir.as_path()), (0, tmp.path()));
    // Through the front door: as close to diffusers as f16 bands in memory.
    let decoded = vae.decode_float(&latent).unwrap();
    let err = max_abs_diff(&decoded, &want["decoded"].1);
    assert!(err <= F16_TOLERANCE, "spilled decode off diffusers by {err:e}");
    // The decoder's graph on the same input, with the same bands and
    // storage, with and without the disk: the same bits.
    let graph = kl(&vae).decoder_graph();
    let device = burn::tensor::Device::flex();
    let z = || vae::kernels::tensor(mean.clone(), [1, shape[1], shape[2], shape[3]], &device);
    let rows = Rows::Image { rows: 24, image_height: 8 * shape[2] };
    for storage in [Storage::F32, Storage::F16] {
        let run = |spill| {
            let plan = Plan::Banded { storage, rows, estimate: 0, spill };
            vae::kernels::values(tiling::run(&graph, z(), &plan).unwrap())
        };
        let (in_memory, on_disk) = (run(None), run(Some(spill.clone())));
        let differ = in_memory.iter().zip(&on_disk).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(differ, 0, "{storage:?}: spilled bands differ from bands in memory");
    }
    assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none(), "files left in the spill folder");
}
