//! PSNR and SSIM against scikit-image on real photos: tests/fixtures/expected/metrics.json
//! was computed by tools/make_fixtures.py with skimage's `peak_signal_noise_ratio` and
//! `structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`.

mod common;

use common::fixtures;

fn rgb(path: &str) -> (Vec<u8>, usize, usize) {
    let img = image::open(fixtures().join(path)).unwrap().to_rgb8();
    let (w, h) = img.dimensions();
    (img.into_raw(), w as usize, h as usize)
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected/metrics.json")).unwrap()).unwrap()
}

/// Both are float64 computations of the same formulas; only summation order differs.
fn assert_close(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() <= 1e-9 * want.abs().max(1.0), "{what}: {got} vs skimage {want}");
}

#[test]
fn reconstructions_match_skimage() {
    let table = expected();
    for image in ["kodim03", "kodim04"] {
        let (a, w, h) = rgb(&format!("images/{image}.png"));
        let (b, ..) = rgb(&format!("expected/tiny_sd__{image}.png"));
        let want = &table[image];
        let q = vae::metrics::compare(&a, &b, w, h).unwrap();
        assert_close(q.psnr, want["psnr"].as_f64().unwrap(), &format!("{image} psnr"));
        assert_close(q.ssim, want["ssim"].as_f64().unwrap(), &format!("{image} ssim"));
        assert_eq!(u64::from(q.max_abs_error), want["max_abs_error"].as_u64().unwrap());
    }
}

#[test]
fn near_identical_pair_matches_skimage() {
    let table = expected();
    for image in ["kodim03", "kodim04"] {
        let (a, w, h) = rgb(&format!("images/{image}.png"));
        let mut b = a.clone();
        for v in b.iter_mut().step_by(7) {
            *v = v.saturating_add(1);
        }
        let want = &table[format!("{image}_plus1_every7").as_str()];
        let q = vae::metrics::compare(&a, &b, w, h).unwrap();
        assert_close(q.psnr, want["psnr"].as_f64().unwrap(), &format!("{image} psnr"));
        assert_close(q.ssim, want["ssim"].as_f64().unwrap(), &format!("{image} ssim"));
        assert_eq!(q.max_abs_error, 1);
    }
}
