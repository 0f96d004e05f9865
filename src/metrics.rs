//! Image-quality metrics between two 8-bit RGB images of the same size.
//!
//! Images are `&[u8]` in row-major HWC order (`(y * width + x) * 3 + c`).
//! The numbers match scikit-image 0.26 (checked to ~1e-15 relative in the
//! tests below):
//!
//! * [`psnr`] = `skimage.metrics.peak_signal_noise_ratio(a, b, data_range=255)`
//! * [`ssim`] = `skimage.metrics.structural_similarity(a, b, channel_axis=2,
//!   gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
//!   data_range=255)`, i.e. the SSIM of Wang et al. 2004.

use std::fmt;

/// Gaussian window radius: skimage uses `truncate = 3.5`, so
/// `int(3.5 * 1.5 + 0.5) = 5`, an 11-tap window.
const RADIUS: usize = 5;
/// Window side; skimage refuses images smaller than this in either dimension.
pub const SSIM_MIN_SIZE: usize = 2 * RADIUS + 1;
const SIGMA: f64 = 1.5;
const DATA_RANGE: f64 = 255.0;
const C1: f64 = (0.01 * DATA_RANGE) * (0.01 * DATA_RANGE);
const C2: f64 = (0.03 * DATA_RANGE) * (0.03 * DATA_RANGE);

/// Why two images cannot be compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsError {
    /// A buffer's length is not `width * height * 3`.
    LengthMismatch { expected: usize, a: usize, b: usize },
    /// An image side is below [`SSIM_MIN_SIZE`] (skimage raises `ValueError`).
    TooSmall { width: usize, height: usize },
}

impl fmt::Display for MetricsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LengthMismatch { expected, a, b } => {
                write!(f, "image buffers must hold width*height*3 = {expected} bytes, got {a} and {b}")
            }
            Self::TooSmall { width, height } => {
                write!(f, "SSIM needs images of at least {SSIM_MIN_SIZE}x{SSIM_MIN_SIZE} pixels, got {width}x{height}")
            }
        }
    }
}

impl std::error::Error for MetricsError {}

/// All metrics of one comparison.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quality {
    /// Peak signal-to-noise ratio in dB (`INFINITY` when identical).
    pub psnr: f64,
    /// Mean SSIM over the three channels, in `[-1, 1]`.
    pub ssim: f64,
    /// Largest absolute difference of any channel of any pixel.
    pub max_abs_error: u8,
}

fn check(a: &[u8], b: &[u8], width: usize, height: usize) -> Result<(), MetricsError> {
    let expected = width * height * 3;
    if a.len() != expected || b.len() != expected {
        return Err(MetricsError::LengthMismatch { expected, a: a.len(), b: b.len() });
    }
    Ok(())
}

/// Computes PSNR, SSIM and the maximum absolute error, after checking that
/// both buffers hold `width * height * 3` bytes.
///
/// # Errors
/// As [`ssim`]: wrong buffer lengths, or a side under 11 pixels.
pub fn compare(a: &[u8], b: &[u8], width: usize, height: usize) -> Result<Quality, MetricsError> {
    check(a, b, width, height)?;
    Ok(Quality { psnr: psnr(a, b), ssim: ssim(a, b, width, height)?, max_abs_error: max_abs_error(a, b) })
}

/// PSNR in dB over all samples with data range 255: `10 log10(255² / MSE)`,
/// `f64::INFINITY` when the images are identical.
///
/// # Panics
/// If the slices differ in length.
pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len(), "psnr: image buffers differ in length");
    // Squared u8 differences sum exactly in u64, so this is the exact MSE
    // up to the final division (numpy's float64 sum is exact here too).
    let sse: u64 = a.iter().zip(b).map(|(&x, &y)| u64::from(x.abs_diff(y)).pow(2)).sum();
    if sse == 0 {
        return f64::INFINITY;
    }
    let mse = sse as f64 / a.len() as f64;
    10.0 * (DATA_RANGE * DATA_RANGE / mse).log10()
}

/// The largest absolute difference between corresponding bytes (0 if empty).
///
/// # Panics
/// If the slices differ in length.
pub fn max_abs_error(a: &[u8], b: &[u8]) -> u8 {
    assert_eq!(a.len(), b.len(), "max_abs_error: image buffers differ in length");
    a.iter().zip(b).map(|(&x, &y)| x.abs_diff(y)).max().unwrap_or(0)
}

/// A `width * height` grey map of the largest channel difference per pixel,
/// scaled so that an error of 32 levels or more is white.
///
/// # Panics
/// If either buffer is not `width * height * 3` bytes long.
pub fn error_map(a: &[u8], b: &[u8], width: usize, height: usize) -> Vec<u8> {
    if let Err(e) = check(a, b, width, height) {
        panic!("error_map: {e}");
    }
    a.chunks_exact(3)
        .zip(b.chunks_exact(3))
        .map(|(p, q)| {
            let d = u32::from(max_abs_error(p, q));
            ((d * 255 + 16) / 32).min(255) as u8
        })
        .collect()
}

/// scipy's `_gaussian_kernel1d(1.5, 0, 5)`: `exp(-x² / (2σ²))`, normalised.
fn gaussian_kernel() -> [f64; SSIM_MIN_SIZE] {
    let mut w = [0.0; SSIM_MIN_SIZE];
    for (i, w) in w.iter_mut().enumerate() {
        let x = i as f64 - RADIUS as f64;
        *w = (-0.5 / (SIGMA * SIGMA) * (x * x)).exp();
    }
    let sum: f64 = w.iter().sum();
    w.map(|v| v / sum)
}

/// Mean SSIM over the RGB channels, as skimage computes it (see the module
/// docs for the exact call).
///
/// Per channel, skimage filters `x`, `y`, `x²`, `y²` and `xy` with an 11-tap
/// Gaussian (σ = 1.5, boundary mode `reflect`), builds the SSIM map with
/// population (co)variances and `C1 = (0.01·255)²`, `C2 = (0.03·255)²`, and
/// averages the map after cropping 5 pixels from every border. Every window
/// centred in that cropped region lies inside the image, so the boundary
/// mode never reaches the result: we filter in "valid" mode only there. The
/// filter is separable and done as a vertical then a horizontal 1-D pass in
/// f64 (scipy's axis order), streaming one output row at a time.
///
/// # Errors
/// If the buffers are not `width * height * 3` bytes, or if either side is
/// below 11 pixels (where skimage raises `win_size exceeds image
/// extent`).
pub fn ssim(a: &[u8], b: &[u8], width: usize, height: usize) -> Result<f64, MetricsError> {
    check(a, b, width, height)?;
    if width < SSIM_MIN_SIZE || height < SSIM_MIN_SIZE {
        return Err(MetricsError::TooSmall { width, height });
    }
    let w = gaussian_kernel();
    let stride = width * 3;
    // Vertically filtered rows of x, y, x², y², xy, all channels interleaved.
    let mut cols = vec![[0.0f64; 5]; stride];
    let mut sums = [0.0f64; 3];
    for row in RADIUS..height - RADIUS {
        cols.fill([0.0; 5]);
        for (k, &wk) in w.iter().enumerate() {
            let start = (row + k - RADIUS) * stride;
            let (ra, rb) = (&a[start..start + stride], &b[start..start + stride]);
            for ((acc, &x), &y) in cols.iter_mut().zip(ra).zip(rb) {
                let (x, y) = (f64::from(x), f64::from(y));
                acc[0] += wk * x;
                acc[1] += wk * y;
                acc[2] += wk * (x * x);
                acc[3] += wk * (y * y);
                acc[4] += wk * (x * y);
            }
        }
        for col in RADIUS..width - RADIUS {
            for (c, sum) in sums.iter_mut().enumerate() {
                let mut m = [0.0f64; 5];
                for (k, &wk) in w.iter().enumerate() {
                    let v = &cols[(col + k - RADIUS) * 3 + c];
                    for (m, &v) in m.iter_mut().zip(v) {
                        *m += wk * v;
                    }
                }
                let [ux, uy, uxx, uyy, uxy] = m;
                let (vx, vy, vxy) = (uxx - ux * ux, uyy - uy * uy, uxy - ux * uy);
                let (a1, a2) = (2.0 * ux * uy + C1, 2.0 * vxy + C2);
                let (b1, b2) = (ux * ux + uy * uy + C1, vx + vy + C2);
                *sum += (a1 * a2) / (b1 * b2);
            }
        }
    }
    let n = ((width - 2 * RADIUS) * (height - 2 * RADIUS)) as f64;
    Ok(sums.iter().map(|s| s / n).sum::<f64>() / 3.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pair that the expected numbers come from, in Python:
    /// ```python
    /// import numpy as np
    /// from skimage.metrics import structural_similarity as ssim, peak_signal_noise_ratio as psnr
    /// def mk(w, h, k):
    ///     y, x, c = np.mgrid[:h, :w, :3]
    ///     a = x * 180 // w + y * 60 // h + c * 5
    ///     b = np.clip(a + k * ((x * 7 + y * 13 + c * 3) % 11 - 5), 0, 255)
    ///     return a.astype(np.uint8), b.astype(np.uint8)
    /// S = dict(channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    /// ```
    fn mk(w: usize, h: usize, k: i32) -> (Vec<u8>, Vec<u8>) {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    let base = (x * 180 / w + y * 60 / h + c * 5) as i32;
                    let noise = ((x * 7 + y * 13 + c * 3) % 11) as i32 - 5;
                    a.push(base as u8);
                    b.push((base + k * noise).clamp(0, 255) as u8);
                }
            }
        }
        (a, b)
    }

    fn assert_close(got: f64, want: f64) {
        let rel = ((got - want) / want).abs();
        assert!(rel < 1e-9, "got {got:.17}, want {want:.17} (rel {rel:e})");
    }

    /// `(w, h, k, psnr, ssim, max_abs_error)`, each from
    /// `a, b = mk(w, h, k); psnr(a, b, data_range=255), ssim(a, b, **S), np.abs(a.astype(int) - b).max()`
    /// with scikit-image 0.26.0 / scipy 1.17.1.
    const CASES: [(usize, usize, i32, f64, f64, u8); 4] = [
        (37, 23, 3, 28.596949241148224, 0.6841128150528272, 15),
        (11, 11, 1, 38.16081716848575, 0.9928798609083067, 5), // smallest allowed
        (64, 48, 5, 24.17337352881351, 0.28829400892106055, 25),
        (16, 40, 20, 12.698674642423436, 0.1352418181052156, 100), // clamps at 0 and 255
    ];

    #[test]
    fn matches_skimage() {
        for (w, h, k, want_psnr, want_ssim, want_max) in CASES {
            let (a, b) = mk(w, h, k);
            let q = compare(&a, &b, w, h).unwrap();
            assert_close(q.psnr, want_psnr);
            assert_close(q.ssim, want_ssim);
            assert_eq!(q.max_abs_error, want_max);
            // Symmetric in its arguments, like the formulas.
            assert_close(ssim(&b, &a, w, h).unwrap(), want_ssim);
        }
    }

    #[test]
    fn identical_images() {
        let (a, _) = mk(20, 13, 0);
        let q = compare(&a, &a, 20, 13).unwrap();
        assert_eq!(q.psnr, f64::INFINITY);
        assert_close(q.ssim, 1.0);
        assert_eq!(q.max_abs_error, 0);
        assert!(error_map(&a, &a, 20, 13).iter().all(|&v| v == 0));
    }

    #[test]
    fn rejects_bad_sizes() {
        let (a, b) = mk(11, 10, 1);
        assert_eq!(ssim(&a, &b, 11, 10), Err(MetricsError::TooSmall { width: 11, height: 10 }));
        let (a, b) = mk(7, 7, 1);
        assert_eq!(compare(&a, &b, 7, 7), Err(MetricsError::TooSmall { width: 7, height: 7 }));
        let (a, b) = mk(12, 12, 1);
        let err = compare(&a, &b[..b.len() - 1], 12, 12).unwrap_err();
        assert_eq!(err, MetricsError::LengthMismatch { expected: 432, a: 432, b: 431 });
        assert!(err.to_string().contains("432"));
        assert!(compare(&a, &b, 12, 11).is_err());
    }

    #[test]
    fn error_map_scaling() {
        let a = [0u8, 0, 0, 0, 0, 0, 0, 0, 0, 9, 9, 9];
        let b = [0u8, 0, 0, 1, 0, 0, 16, 3, 0, 9, 200, 9];
        assert_eq!(error_map(&a, &b, 4, 1), vec![0, 8, 128, 255]);
    }
}
