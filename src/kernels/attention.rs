//! Single-head attention `softmax(q k^T * scale) v` on the CPU, in blocks of
//! query rows so that the score block stays small: two GEMMs per block and
//! one vectorised exp sweep, with the softmax normaliser summed in f64.

use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use super::norm::fast_exp;

/// Score elements per block of query rows (64 MiB of f32).
const BLOCK_ELEMENTS: usize = 16 * 1024 * 1024;

/// `q`, `k`, `v`: `[n, c]` row-major. Returns `[n, c]`.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], n: usize, c: usize, scale: f32) -> Vec<f32> {
    let threads = rayon::current_num_threads();
    let rows = (BLOCK_ELEMENTS / n).clamp(1, n);
    let mut out = vec![0.0f32; n * c];
    let mut scores = vec![0.0f32; rows * n];
    for start in (0..n).step_by(rows) {
        let r = rows.min(n - start);
        let s = &mut scores[..r * n];
        // s = scale * q[start..start + r] k^T  ([r, c] x [c, n]).
        // SAFETY: all three matrices are in bounds for the given sizes and strides.
        unsafe {
            gemm(
                r,
                n,
                c,
                s.as_mut_ptr(),
                1,
                n as isize,
                false,
                q.as_ptr().add(start * c),
                1,
                c as isize,
                k.as_ptr(),
                c as isize,
                1,
                0.0,
                scale,
                false,
                false,
                false,
                Parallelism::Rayon(threads),
            );
        }
        // Row-wise exp(s - max); keep each row's sum.
        let sums: Vec<f64> = s
            .par_chunks_mut(n)
            .map(|row| {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut lanes = [0.0f64; 8];
                for chunk in row.chunks_mut(8) {
                    for (lane, x) in lanes.iter_mut().zip(chunk.iter_mut()) {
                        *x = fast_exp(*x - max);
                        *lane += *x as f64;
                    }
                }
                lanes.iter().sum()
            })
            .collect();
        let o = &mut out[start * c..(start + r) * c];
        // o = p v  ([r, n] x [n, c]), then divide each row by its sum.
        // SAFETY: as above.
        unsafe {
            gemm(
                r,
                c,
                n,
                o.as_mut_ptr(),
                1,
                c as isize,
                false,
                s.as_ptr(),
                1,
                n as isize,
                v.as_ptr(),
                1,
                c as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                Parallelism::Rayon(threads),
            );
        }
        for (row, sum) in o.chunks_exact_mut(c).zip(sums) {
            let inv = (1.0 / sum) as f32;
            row.iter_mut().for_each(|x| *x *= inv);
        }
    }
    out
}

/// `x [n, d_in] * weight^T + bias` with PyTorch's `weight [d_out, d_in]`.
pub fn linear(x: &[f32], n: usize, weight: &[f32], bias: &[f32]) -> Vec<f32> {
    let d_out = bias.len();
    let d_in = weight.len() / d_out;
    let mut out: Vec<f32> = (0..n).flat_map(|_| bias.iter().copied()).collect();
    // SAFETY: dst [n, d_out], lhs [n, d_in], rhs = weight^T read as [d_in, d_out].
    unsafe {
        gemm(
            n,
            d_out,
            d_in,
            out.as_mut_ptr(),
            1,
            d_out as isize,
            true,
            x.as_ptr(),
            1,
            d_in as isize,
            weight.as_ptr(),
            d_in as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::Rayon(rayon::current_num_threads()),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_definition() {
        let (n, c) = (37, 5);
        let val = |i: usize, salt: usize| (((i * 7919 + salt * 104_729) % 1000) as f32 / 250.0) - 2.0;
        let q: Vec<f32> = (0..n * c).map(|i| val(i, 1)).collect();
        let k: Vec<f32> = (0..n * c).map(|i| val(i, 2)).collect();
        let v: Vec<f32> = (0..n * c).map(|i| val(i, 3)).collect();
        let scale = 1.0 / (c as f32).sqrt();
        let got = attention(&q, &k, &v, n, c, scale);
        for i in 0..n {
            let scores: Vec<f64> = (0..n)
                .map(|j| (0..c).map(|d| q[i * c + d] as f64 * k[j * c + d] as f64).sum::<f64>() * scale as f64)
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            for d in 0..c {
                let want = (0..n).map(|j| weights[j] * v[j * c + d] as f64).sum::<f64>() / total;
                assert!((got[i * c + d] as f64 - want).abs() < 1e-5, "row {i} dim {d}");
            }
        }
    }
}
