//! GroupNorm followed by SiLU in two passes over memory: statistics per
//! group (summed in f64), then normalise, scale, shift and SiLU in one sweep.

use rayon::prelude::*;

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
    let GroupNormParams { groups, eps, gamma, beta } = params;
    let per_group = channels / groups * hw;
    x.par_chunks_mut(per_group).enumerate().for_each(|(i, group)| {
        let n = group.len() as f64;
        let mean = sum_f64(group, |v| v) / n;
        let var = sum_f64(group, |v| (v - mean) * (v - mean)) / n;
        let rstd = 1.0 / (var + eps).sqrt();
        let first_channel = (i % groups) * (channels / groups);
        for (c, xc) in group.chunks_exact_mut(hw).enumerate() {
            let channel = first_channel + c;
            // y = x * a + b with a = gamma * rstd, b = beta - mean * a.
            let a = (gamma[channel] as f64 * rstd) as f32;
            let b = (beta[channel] as f64 - mean * gamma[channel] as f64 * rstd) as f32;
            affine_in_place(xc, a, b, silu);
        }
    });
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

#[inline(always)]
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

/// `(sum x, sum x^2)` of each channel of `x` (`[channels, hw]`), in f64.
pub fn channel_sums(x: &[f32], hw: usize) -> Vec<[f64; 2]> {
    x.par_chunks(hw).map(|s| [sum_f64(s, |v| v), sum_f64(s, |v| v * v)]).collect()
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
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest by the 1.5 * 2^23 trick, which vectorises (`round` does not).
    let n = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
    // Cody-Waite: ln2 split in two so that r keeps full precision.
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0 + r * (0.5 + r * (0.166_666_67 + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
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
