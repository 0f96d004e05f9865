//! GroupNorm followed by SiLU in two passes over memory: statistics per
//! group (summed in f64), then normalise, scale, shift and SiLU in one sweep.
//! And the RMS norm of the Wan / Qwen-Image VAE (+ SiLU), per pixel across
//! channels, in the same two passes.

use rayon::prelude::*;

use super::isa::multiversion;

/// A GroupNorm layer's parameters.
#[derive(Debug, Clone, Copy)]
pub struct GroupNormParams<'a> {
    pub groups: usize,
    pub eps: f64,
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
}

/// `x` is `[batch, channels, hw]`; normalised (and, with `silu`, activated)
/// in place.
pub fn group_norm(x: &mut [f32], channels: usize, hw: usize, params: GroupNormParams, silu: bool) {
    let per_group = channels / params.groups;
    x.par_chunks_mut(per_group * hw).enumerate().for_each(|(i, group)| {
        let coefficients = group_coefficients(group, (i % params.groups) * per_group, params);
        for (xc, (a, b)) in group.chunks_exact_mut(hw).zip(coefficients) {
            affine_in_place(xc, a, b, silu);
        }
    });
}

/// Per channel of one group of an image (its channels' values, one whole
/// plane after another; `first` its first channel), the `(a, b)` of the
/// `y = x * a + b` that [`group_norm`] applies: statistics in f64, mean
/// first, then the mean of centred squares.
pub fn group_coefficients(group: &[f32], first: usize, params: GroupNormParams) -> Vec<(f32, f32)> {
    let GroupNormParams { groups, eps, gamma, beta } = params;
    let n = group.len() as f64;
    let mean = sum(group) / n;
    let var = centred_squares(group, mean) / n;
    let rstd = 1.0 / (var + eps).sqrt();
    (first..first + gamma.len() / groups)
        .map(|channel| {
            // a = gamma * rstd, b = beta - mean * a.
            let a = (gamma[channel] as f64 * rstd) as f32;
            let b = (beta[channel] as f64 - mean * gamma[channel] as f64 * rstd) as f32;
            (a, b)
        })
        .collect()
}

/// `x = x * a[c] + b[c]` per channel (then SiLU), in place: GroupNorm with
/// statistics known in advance. `x` is `[batch, channels, hw]`.
pub fn affine(x: &mut [f32], hw: usize, a: &[f32], b: &[f32], silu: bool) {
    let channels = a.len();
    x.par_chunks_mut(hw).enumerate().for_each(|(i, xc)| {
        let c = i % channels;
        affine_in_place(xc, a[c], b[c], silu);
    });
}

multiversion! {
    fn affine_in_place(x: &mut [f32], a: f32, b: f32, silu: bool) {
        if silu {
            for v in x.iter_mut() {
                let y = *v * a + b;
                *v = y / (1.0 + fast_exp(-y));
            }
        } else {
            for v in x.iter_mut() {
                *v = *v * a + b;
            }
        }
    }
}

/// Pixels per task of the RMS norm's first pass: each task sums the squares
/// of its pixels over every channel, reading one contiguous run per channel.
const RMS_PIXELS: usize = 1024;

/// The RMS norm of diffusers' `WanRMS_norm` / `QwenImageRMS_norm` (no bias):
/// `F.normalize(x, dim=1) * sqrt(C) * gamma`, that is
/// `x / max(||x||, 1e-12) * sqrt(C) * gamma[c]` with the L2 norm taken over
/// the channels of each pixel; with `silu`, SiLU after. `x` is
/// `[batch, channels, hw]`, normalised in place.
///
/// Two passes: the squares summed across channels into a per-pixel f64
/// buffer (channel by channel, so the loop vectorises; the order, hence the
/// result, is the same whatever the number of pixels), then each channel
/// scaled by `sqrt(C) * gamma[c] / norm` in f64 and rounded once to f32.
/// Every pixel is computed alone: a band of rows gives what the whole does.
pub fn rms_norm(x: &mut [f32], channels: usize, hw: usize, gamma: &[f32], silu: bool) {
    assert_eq!(gamma.len(), channels, "one gamma per channel");
    if hw == 0 || channels == 0 {
        return;
    }
    let scale = (channels as f64).sqrt();
    let gamma: Vec<f64> = gamma.iter().map(|&g| g as f64 * scale).collect();
    for image in x.chunks_exact_mut(channels * hw) {
        let inv = rms_inverse_norms(image, channels, hw);
        image.par_chunks_mut(hw).zip(gamma.par_iter()).for_each(|(xc, &g)| rms_scale(xc, &inv, g, silu));
    }
}

multiversion! {
    /// `x[p] * inv[p] * g` (then SiLU), in f64 and rounded once.
    fn rms_scale(x: &mut [f32], inv: &[f64], g: f64, silu: bool) {
        if silu {
            for (v, &r) in x.iter_mut().zip(inv) {
                let y = (*v as f64 * (r * g)) as f32;
                *v = y / (1.0 + fast_exp(-y));
            }
        } else {
            for (v, &r) in x.iter_mut().zip(inv) {
                *v = (*v as f64 * (r * g)) as f32;
            }
        }
    }
}

multiversion! {
    /// `acc[p] += row[p]^2`, in f64.
    fn add_squares(acc: &mut [f64], row: &[f32]) {
        for (a, &v) in acc.iter_mut().zip(row) {
            let v = v as f64;
            *a += v * v;
        }
    }
}

/// `1 / max(sqrt(sum_c x[c, p]^2), 1e-12)` for each pixel `p` of one image
/// `[channels, hw]`, in f64.
fn rms_inverse_norms(image: &[f32], channels: usize, hw: usize) -> Vec<f64> {
    let mut inv = vec![0.0f64; hw];
    inv.par_chunks_mut(RMS_PIXELS).enumerate().for_each(|(block, acc)| {
        let p0 = block * RMS_PIXELS;
        for c in 0..channels {
            add_squares(acc, &image[c * hw + p0..][..acc.len()]);
        }
        for a in acc.iter_mut() {
            // F.normalize's eps clamps the norm, not its square.
            *a = 1.0 / a.sqrt().max(1e-12);
        }
    });
    inv
}

/// `(sum x, sum x^2)` of each channel of `x` (`[channels, hw]`), in f64.
pub fn channel_sums(x: &[f32], hw: usize) -> Vec<[f64; 2]> {
    x.par_chunks(hw).map(|s| [sum(s), squares(s)]).collect()
}

multiversion! {
    /// `sum x`, in f64.
    fn sum(xs: &[f32]) -> f64 {
        sum_f64(xs, |v| v)
    }
}

multiversion! {
    /// `sum x^2`, in f64.
    fn squares(xs: &[f32]) -> f64 {
        sum_f64(xs, |v| v * v)
    }
}

multiversion! {
    /// `sum (x - mean)^2`, in f64.
    fn centred_squares(xs: &[f32], mean: f64) -> f64 {
        sum_f64(xs, |v| (v - mean) * (v - mean))
    }
}

/// `sum(f(x))` in f64 over eight independent lanes, so that the loop
/// vectorises (one running sum would serialise on the add latency).
#[inline(always)]
fn sum_f64(xs: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    let mut lanes = [0.0f64; 8];
    let chunks = xs.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&v| f(v as f64)).sum();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v as f64);
        }
    }
    lanes.iter().sum::<f64>() + tail
}

/// exp(x) for f32 to ~2 ulp, branch-free so that loops over it vectorise:
/// 2^n * p(r) with x = n ln2 + r, |r| <= ln2/2 and a degree-6 polynomial.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest by adding 1.5 * 2^23, which vectorises (`round` does
    // not): the sum's low mantissa bits are then n, as an integer.
    let shifted = x * std::f32::consts::LOG2_E + MAGIC;
    let n = shifted - MAGIC;
    // Cody-Waite: ln2 split in two so that r keeps full precision.
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0 + r * (0.5 + r * (0.166_666_67 + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
    // 2^n from n's bits (n + 127 in 1..=254: a normal number). `n as i32`
    // would say the same, but its saturating conversion does not vectorise.
    p * f32::from_bits(shifted.to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(127) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_accurate() {
        let mut worst = 0.0f64;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let want = (x as f64).exp();
            worst = worst.max((fast_exp(x) as f64 - want).abs() / want);
        }
        assert!(worst < 3e-7, "relative error {worst:e}");
        // 2^n taken from the rounding sum's bits is `n as i32`'s.
        for x in [-87.0f32, -86.9, -1.0, -0.2, 0.0, 0.3, 1.0, 50.5, 88.0, -1e9, 1e9] {
            let n = ((x.clamp(-87.0, 88.0) * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0) as i32;
            let r = x.clamp(-87.0, 88.0) - n as f32 * 0.693_145_75 - n as f32 * 1.428_606_8e-6;
            let p = 1.0
                + r * (1.0
                    + r * (0.5 + r * (0.166_666_67 + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
            assert_eq!(fast_exp(x).to_bits(), (p * f32::from_bits(((n + 127) as u32) << 23)).to_bits(), "{x}");
        }
    }

    /// `F.normalize(x, dim=1) * sqrt(C) * gamma` (then SiLU) in f64.
    fn rms_reference(x: &[f32], c: usize, hw: usize, gamma: &[f32], silu: bool) -> Vec<f64> {
        let mut out = vec![0.0; x.len()];
        for (image, o) in x.chunks(c * hw).zip(out.chunks_mut(c * hw)) {
            for p in 0..hw {
                let norm = (0..c).map(|ch| (image[ch * hw + p] as f64).powi(2)).sum::<f64>().sqrt();
                for ch in 0..c {
                    let y = image[ch * hw + p] as f64 / norm.max(1e-12) * (c as f64).sqrt() * gamma[ch] as f64;
                    o[ch * hw + p] = if silu { y / (1.0 + (-y).exp()) } else { y };
                }
            }
        }
        out
    }

    #[test]
    fn rms_norm_matches_the_definition() {
        use rand::{Rng, SeedableRng};
        // Two images, 96 channels, a pixel count that is not a multiple of
        // the block (three blocks, the last short), values of mixed scales,
        // and one pixel of zeros (the norm clamped to 1e-12: zeros out).
        let (b, c, hw) = (2, 96, 2 * RMS_PIXELS + 40);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut x: Vec<f32> = (0..b * c * hw).map(|i| rng.random_range(-1.0f32..1.0) * (1 + i % 5) as f32).collect();
        for ch in 0..c {
            x[ch * hw + 5] = 0.0;
        }
        let gamma: Vec<f32> = (0..c).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        for silu in [false, true] {
            let want = rms_reference(&x, c, hw, &gamma, silu);
            let mut got = x.clone();
            rms_norm(&mut got, c, hw, &gamma, silu);
            let mut worst = 0.0f64;
            for (&g, &w) in got.iter().zip(&want) {
                // Relative to the value, or to 1 near zero; SiLU's slope
                // (up to 1 + |y| relatively, for negative y) is allowed for.
                let err = (g as f64 - w).abs() / w.abs().max(1.0);
                worst = worst.max(err);
            }
            assert!(worst < 1e-6, "silu {silu}: worst relative error {worst:e}");
            assert!((0..c).all(|ch| got[ch * hw + 5] == 0.0), "a zero pixel stays zero");
        }
        // Each pixel alone: the rows of a band come out bit for bit as in the whole.
        let (rows, w) = (hw / 36, 36);
        let image = &x[..c * hw];
        let mut whole = image.to_vec();
        rms_norm(&mut whole, c, hw, &gamma, true);
        let (r0, r1) = (3, rows - 2);
        let mut band: Vec<f32> = (0..c).flat_map(|ch| image[ch * hw + r0 * w..ch * hw + r1 * w].to_vec()).collect();
        rms_norm(&mut band, c, (r1 - r0) * w, &gamma, true);
        for ch in 0..c {
            let part = &whole[ch * hw + r0 * w..ch * hw + r1 * w];
            assert!(part.iter().zip(&band[ch * (r1 - r0) * w..]).all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }

    #[test]
    fn matches_the_definition() {
        let (c, hw, groups) = (4, 6, 2);
        let x: Vec<f32> = (0..c * hw).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
        let gamma = [1.0, 0.5, 2.0, -1.0];
        let beta = [0.1, 0.0, -0.2, 0.3];
        let params = GroupNormParams { groups, eps: 1e-6, gamma: &gamma, beta: &beta };
        let mut got = x.clone();
        group_norm(&mut got, c, hw, params, true);
        for g in 0..groups {
            let s = &x[g * 2 * hw..(g + 1) * 2 * hw];
            let mean = s.iter().map(|&v| v as f64).sum::<f64>() / s.len() as f64;
            let var = s.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / s.len() as f64;
            for (j, &v) in s.iter().enumerate() {
                let ch = g * 2 + j / hw;
                let y = (v as f64 - mean) / (var + 1e-6).sqrt() * gamma[ch] as f64 + beta[ch] as f64;
                let want = y / (1.0 + (-y).exp());
                assert!((got[g * 2 * hw + j] as f64 - want).abs() < 1e-5);
            }
        }
    }
}
