//! Single-head attention `softmax(q k^T * scale) v` on the CPU, streamed over
//! the keys (flash attention): a block of query rows walks the keys a block
//! at a time, keeping each row's running maximum and sum of exponentials and
//! rescaling its accumulator when the maximum grows. Nothing is `n x n` or
//! `n x (large block)`: beyond `q`, `k`, `v` and the output, memory is a few
//! cache-sized blocks per thread. Both products are GEMMs; blocks of queries
//! run in parallel.
//!
//! Keys and values come through [`KeyValues`], a block of rows at a time:
//! slices in memory for the plain forward pass, or arrays that a banded run
//! keeps on disk. A band of query positions that starts on a query block
//! boundary computes each block exactly as the whole pass does.
//!
//! Exactness: scores, exponentials and the accumulator are f32 (as PyTorch's
//! fp32 attention); each row's normaliser is summed in f32 within a key block
//! and in f64 across blocks, since one flat f32 sum over 4096+ terms costs
//! ~2e-4 at the decoder output.

use super::matmul;
use rayon::prelude::*;

use super::isa::multiversion;
use super::norm::fast_exp;

/// Most query rows per block: each key block is reused by this many rows, so
/// `k` and `v` are read from memory `n / QUERY_BLOCK` times in all. (At
/// `n = 4096, c = 512` on 2 cores, 256 rows ran 10% faster than 128 and 20%
/// faster than 64; 256 or 512 keys per block the same as 256. At
/// `n = 16384`, 512 rows ran 7-10% faster than 256: BENCHMARKS.md.)
pub const QUERY_BLOCK: usize = 512;

/// Keys per block: with `c = 512` a block of `k` or `v` is 512 KiB.
const KEY_BLOCK: usize = 256;

/// Positions per block of the key and value projections ([`project`]).
pub const PROJECTION_ROWS: usize = 256;

/// The keys and values `[n, c]` (row-major) that the kernel reads a block of
/// rows at a time: borrowed from memory, or read from wherever they are
/// kept into buffers it is lent.
pub trait KeyValues: Sync {
    type Error: Send;
    /// Elements of `k` (and of `v`): `n * c`.
    fn elements(&self) -> usize;
    /// Elements `[start, start + len)` of `k` and of `v`, borrowed from
    /// `self` or read into `buffers`.
    fn block<'a>(
        &'a self,
        start: usize,
        len: usize,
        buffers: &'a mut [Vec<f32>; 2],
    ) -> Result<[&'a [f32]; 2], Self::Error>;
}

/// `[k, v]` in memory.
impl KeyValues for [&[f32]; 2] {
    type Error = std::convert::Infallible;
    fn elements(&self) -> usize {
        self[0].len()
    }
    fn block<'a>(&'a self, start: usize, len: usize, _: &'a mut [Vec<f32>; 2]) -> Result<[&'a [f32]; 2], Self::Error> {
        Ok(self.map(|a| &a[start..start + len]))
    }
}

/// `q`, `k`, `v`: `[n, c]` row-major. Returns `[n, c]`.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], n: usize, c: usize, scale: f32) -> Vec<f32> {
    assert!(q.len() == n * c && k.len() == n * c && v.len() == n * c);
    let rows = query_rows(n);
    let mut out = vec![0.0f32; n * c];
    out.par_chunks_mut(rows * c).zip(q.par_chunks(rows * c)).for_each_init(Scratch::default, |scratch, (o, q)| {
        let Ok(()) = attend_block(q, &[k, v], c, scale, o, scratch);
    });
    out
}

/// Query rows per block for `n` positions: [`QUERY_BLOCK`], or fewer when
/// that would leave threads idle (at least 32, below which the GEMMs slow).
pub fn query_rows(n: usize) -> usize {
    n.div_ceil(4 * rayon::current_num_threads()).clamp(32, QUERY_BLOCK)
}

/// One thread's working memory for [`attend_block`].
pub struct Scratch {
    /// `[QUERY_BLOCK, KEY_BLOCK]` scores, then their exponentials.
    scores: Vec<f32>,
    /// Per query row: the largest score so far and the sum of exponentials
    /// relative to it.
    max: Vec<f32>,
    sum: Vec<f64>,
    /// A block of keys and one of values, where [`KeyValues`] reads them.
    blocks: [Vec<f32>; 2],
}

impl Default for Scratch {
    fn default() -> Self {
        Self {
            scores: vec![0.0; QUERY_BLOCK * KEY_BLOCK],
            max: vec![0.0; QUERY_BLOCK],
            sum: vec![0.0; QUERY_BLOCK],
            blocks: [Vec::new(), Vec::new()],
        }
    }
}

/// Bytes of one thread's working memory in [`attend`] with `c` channels:
/// its [`Scratch`] (with blocks of keys and values read) and a block of
/// queries and of their output.
pub fn thread_bytes(c: usize) -> u64 {
    4 * (QUERY_BLOCK * KEY_BLOCK + 2 * QUERY_BLOCK + 2 * KEY_BLOCK * c + 2 * QUERY_BLOCK * c) as u64
}

/// `out = softmax(scale * q k^T) v` for one block of query rows: `q` and
/// `out` are `[r, c]` with `r <= QUERY_BLOCK`; `kv` holds `k` and `v`,
/// `[n, c]` each (any `n >= 1`), read once, a block at a time.
pub fn attend_block<K: KeyValues>(
    q: &[f32],
    kv: &K,
    c: usize,
    scale: f32,
    out: &mut [f32],
    scratch: &mut Scratch,
) -> Result<(), K::Error> {
    let r = q.len() / c;
    let n = kv.elements() / c;
    assert!(r <= QUERY_BLOCK && out.len() == r * c && n > 0);
    let Scratch { scores, max, sum, blocks } = scratch;
    let (max, sum) = (&mut max[..r], &mut sum[..r]);
    for start in (0..n).step_by(KEY_BLOCK) {
        let bk = KEY_BLOCK.min(n - start);
        let first = start == 0;
        let [k, v] = kv.block(start * c, bk * c, blocks)?;
        let s = &mut scores[..r * bk];
        // s = scale * q k[start..start + bk]^T  ([r, c] x [c, bk]).
        // SAFETY: q is [r, c], the key block [bk, c] read transposed, s [r, bk].
        unsafe {
            matmul(
                r,
                bk,
                c,
                (s.as_mut_ptr(), 1, bk as isize),
                false,
                (q.as_ptr(), 1, c as isize),
                (k.as_ptr(), c as isize, 1),
                0.0,
                scale,
            );
        }
        for (i, row) in s.chunks_exact_mut(bk).enumerate() {
            let block_max = row_max(row);
            let (new_max, rescale) = match first {
                true => (block_max, None),
                false if block_max > max[i] => (block_max, Some(fast_exp(max[i] - block_max))),
                false => (max[i], None),
            };
            let block_sum = exp_in_place(row, new_max);
            max[i] = new_max;
            sum[i] = match rescale {
                Some(factor) => {
                    out[i * c..(i + 1) * c].iter_mut().for_each(|x| *x *= factor);
                    sum[i] * factor as f64 + block_sum as f64
                }
                None if first => block_sum as f64,
                None => sum[i] + block_sum as f64,
            };
        }
        // out (+)= p v[start..start + bk]  ([r, bk] x [bk, c]).
        // SAFETY: s is [r, bk], the value block [bk, c], out [r, c].
        unsafe {
            matmul(
                r,
                c,
                bk,
                (out.as_mut_ptr(), 1, c as isize),
                !first,
                (s.as_ptr(), 1, bk as isize),
                (v.as_ptr(), 1, c as isize),
                1.0,
                1.0,
            );
        }
    }
    for (row, total) in out.chunks_exact_mut(c).zip(sum.iter()) {
        let inv = (1.0 / total) as f32;
        row.iter_mut().for_each(|x| *x *= inv);
    }
    Ok(())
}

multiversion! {
    /// The largest value of `row`, in 16 lanes so that the loop vectorises.
    fn row_max(row: &[f32]) -> f32 {
        let mut lanes = [f32::NEG_INFINITY; 16];
        let mut chunks = row.chunks_exact(16);
        for chunk in &mut chunks {
            for (lane, &x) in lanes.iter_mut().zip(chunk) {
                *lane = lane.max(x);
            }
        }
        let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
        lanes.into_iter().fold(tail, f32::max)
    }
}

multiversion! {
    /// `row = exp(row - max)`, returning the sum (in 16 f32 lanes: a block
    /// holds at most [`KEY_BLOCK`] terms, each at most 1).
    fn exp_in_place(row: &mut [f32], max: f32) -> f32 {
        let mut lanes = [0.0f32; 16];
        let mut chunks = row.chunks_exact_mut(16);
        for chunk in &mut chunks {
            for (lane, x) in lanes.iter_mut().zip(chunk.iter_mut()) {
                *x = fast_exp(*x - max);
                *lane += *x;
            }
        }
        let mut tail = 0.0;
        for x in chunks.into_remainder() {
            *x = fast_exp(*x - max);
            tail += *x;
        }
        lanes.into_iter().sum::<f32>() + tail
    }
}

/// A `torch.nn.Linear`'s parameters: `weight [d_out, d_in]`, `bias [d_out]`.
#[derive(Debug, Clone, Copy)]
pub struct Linear<'a> {
    pub weight: &'a [f32],
    pub bias: &'a [f32],
}

/// The four projections of a single-head self-attention, `c -> c` each.
#[derive(Debug, Clone, Copy)]
pub struct Projections<'a> {
    pub q: Linear<'a>,
    pub k: Linear<'a>,
    pub v: Linear<'a>,
    pub out: Linear<'a>,
}

/// diffusers' single-head self-attention over one image, residual included:
/// `x += to_out(softmax(q k^T / sqrt(c)) v)` with `q`, `k`, `v` the
/// projections of `tokens`. `x` and `tokens` (the normalised `x`) are
/// channels-first `[c, n]`, as the model holds activations.
///
/// Besides `x` and `tokens` this holds `k` and `v` (`[n, c]` each) and, per
/// thread, one block of queries, its output and scores (see [`attend`]).
pub fn self_attention(x: &mut [f32], tokens: &[f32], n: usize, c: usize, p: Projections) {
    assert!(x.len() == n * c && tokens.len() == n * c);
    let (k, v) = (project(tokens, n, p.k), project(tokens, n, p.v));
    let Ok(()) = attend(x, tokens, c, p, &[&k[..], &v[..]], query_rows(n));
}

/// [`self_attention`] for a band of `m` query positions of an image whose
/// keys and values (all `n` positions) `kv` holds: `x` and `tokens` are the
/// band's `[c, m]`. The queries are projected, attended and projected out a
/// block of `rows` at a time (`rows` from [`query_rows`] of `n`), and each
/// block's output is added into its own columns of `x`. A band that starts
/// at a multiple of `rows` computes the blocks of the whole image: the same
/// values.
pub fn attend<K: KeyValues>(
    x: &mut [f32],
    tokens: &[f32],
    c: usize,
    p: Projections,
    kv: &K,
    rows: usize,
) -> Result<(), K::Error> {
    let m = x.len() / c;
    assert!(tokens.len() == m * c && rows <= QUERY_BLOCK);
    for (row, &b) in x.chunks_exact_mut(m).zip(p.out.bias) {
        row.iter_mut().for_each(|x| *x += b);
    }
    let scale = (c as f32).sqrt().recip();
    let x = SharedMut(x.as_mut_ptr());
    (0..m.div_ceil(rows)).into_par_iter().try_for_each_init(
        || (Scratch::default(), vec![0.0f32; rows * c], vec![0.0f32; rows * c]),
        |(scratch, q, o), block| {
            let (p0, r) = (block * rows, rows.min(m - block * rows));
            let (q, o) = (&mut q[..r * c], &mut o[..r * c]);
            project_into(&tokens[p0..], m, r, p.q, q);
            attend_block(q, kv, c, scale, o, scratch)?;
            // x[:, p0..p0 + r] += W_out o^T  ([c, c] x [c, r]).
            // SAFETY: the destination is columns p0..p0 + r of x [c, m], which
            // no other block writes; W_out is [c, c]; o is [r, c] read
            // transposed.
            unsafe {
                matmul(
                    c,
                    r,
                    c,
                    (x.at(p0), 1, m as isize),
                    true,
                    (p.out.weight.as_ptr(), 1, c as isize),
                    (o.as_ptr(), c as isize, 1),
                    1.0,
                    1.0,
                );
            }
            Ok(())
        },
    )
}

/// A pointer to `x` in [`attend`], shared by the blocks that write
/// disjoint columns of it.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);

impl SharedMut {
    /// The element at `offset`. (A method, so that closures capture the
    /// whole wrapper rather than its pointer field.)
    ///
    /// # Safety
    /// `offset` is in bounds of the array pointed to.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: the caller's contract.
        unsafe { self.0.add(offset) }
    }
}

// SAFETY: each block writes only its own columns (see `attend`).
unsafe impl Send for SharedMut {}
// SAFETY: as for `Send`.
unsafe impl Sync for SharedMut {}

/// `tokens^T weight^T + bias`: the projection `[n, d_out]` of channels-first
/// `tokens [d_in, n]`, in parallel blocks of [`PROJECTION_ROWS`] positions
/// (so a band of an image that starts at a multiple of it is projected
/// exactly as the whole).
pub fn project(tokens: &[f32], n: usize, linear: Linear) -> Vec<f32> {
    let d_out = linear.bias.len();
    let mut out = vec![0.0f32; n * d_out];
    out.par_chunks_mut(PROJECTION_ROWS * d_out).enumerate().for_each(|(i, o)| {
        project_into(&tokens[i * PROJECTION_ROWS..], n, o.len() / d_out, linear, o);
    });
    out
}

/// `out [r, d_out]` = the projection of positions `0..r` of `tokens`, a
/// channels-first array with `n` positions per channel (the caller offsets
/// it to the first position).
fn project_into(tokens: &[f32], n: usize, r: usize, linear: Linear, out: &mut [f32]) {
    let d_out = linear.bias.len();
    let d_in = linear.weight.len() / d_out;
    assert!(out.len() == r * d_out && tokens.len() >= (d_in - 1) * n + r);
    for row in out.chunks_exact_mut(d_out) {
        row.copy_from_slice(linear.bias);
    }
    // SAFETY: dst [r, d_out]; lhs [r, d_in] with element (i, j) at
    // tokens[j * n + i], in bounds by the assert; rhs = weight^T read as
    // [d_in, d_out].
    unsafe {
        matmul(
            r,
            d_out,
            d_in,
            (out.as_mut_ptr(), 1, d_out as isize),
            true,
            (tokens.as_ptr(), n as isize, 1),
            (linear.weight.as_ptr(), d_in as isize, 1),
            1.0,
            1.0,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `softmax(scale q k^T) v` in f64, straight from the definition.
    fn reference(q: &[f32], k: &[f32], v: &[f32], c: usize, scale: f32) -> Vec<f64> {
        let n = k.len() / c;
        let mut out = Vec::with_capacity(q.len());
        for qi in q.chunks_exact(c) {
            let scores: Vec<f64> = k
                .chunks_exact(c)
                .map(|kj| qi.iter().zip(kj).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() * scale as f64)
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            out.extend((0..c).map(|d| (0..n).map(|j| weights[j] * v[j * c + d] as f64).sum::<f64>() / total));
        }
        out
    }

    fn values(len: usize, salt: u64, spread: f32) -> Vec<f32> {
        crate::kernels::random(len, salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)).into_iter().map(|x| x * spread).collect()
    }

    /// Odd sizes (not multiples of either block), from one key to several
    /// key blocks and query blocks; `spread` large enough that the running
    /// maximum moves between key blocks and the weights are far from uniform.
    #[test]
    fn matches_the_definition() {
        for (n, c) in [(1, 3), (2, 1), (37, 5), (129, 7), (300, 16), (KEY_BLOCK + 1, 9), (QUERY_BLOCK * 3 + 5, 24)] {
            let [q, k, v] = [1, 2, 3].map(|salt| values(n * c, salt + n as u64, 6.0));
            let scale = 1.0 / (c as f32).sqrt();
            let got = attention(&q, &k, &v, n, c, scale);
            let want = reference(&q, &k, &v, c, scale);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((*g as f64 - w).abs() < 2e-6 * (1.0 + w.abs()), "n {n} c {c}: row {} dim {}", i / c, i % c);
            }
        }
    }

    /// [`self_attention`] against the projections and attention written out
    /// in f64, channels-first in and out, with the residual.
    #[test]
    fn self_attention_matches_the_definition() {
        for (n, c) in [(5, 3), (QUERY_BLOCK + 70, 6)] {
            let tokens = values(c * n, 11, 2.0);
            let x = values(c * n, 12, 2.0);
            let params: Vec<Vec<f32>> =
                (0..8).map(|i| values(if i % 2 == 0 { c * c } else { c }, 20 + i, 1.0)).collect();
            let linear = |i: usize| Linear { weight: &params[2 * i], bias: &params[2 * i + 1] };
            let p = Projections { q: linear(0), k: linear(1), v: linear(2), out: linear(3) };
            // y [n, c] = tokens^T W^T + b, in f64 then rounded as the kernel's inputs.
            let project = |t: &[f32], l: Linear| -> Vec<f32> {
                let rows = t.len() / c;
                let mut y = Vec::with_capacity(rows * c);
                for i in 0..rows {
                    for o in 0..c {
                        let dot: f64 = (0..c).map(|j| t[j * rows + i] as f64 * l.weight[o * c + j] as f64).sum();
                        y.push((dot + l.bias[o] as f64) as f32);
                    }
                }
                y
            };
            let [q, k, v] = [p.q, p.k, p.v].map(|l| project(&tokens, l));
            let attended = reference(&q, &k, &v, c, (c as f32).sqrt().recip());
            let mut got = x.clone();
            self_attention(&mut got, &tokens, n, c, p);
            for o in 0..c {
                for i in 0..n {
                    let dot: f64 = (0..c).map(|j| attended[i * c + j] * p.out.weight[o * c + j] as f64).sum();
                    let want = x[o * n + i] as f64 + dot + p.out.bias[o] as f64;
                    let g = got[o * n + i] as f64;
                    assert!(
                        (g - want).abs() < 1e-5 * (1.0 + want.abs()),
                        "n {n}: channel {o} position {i}: {g} vs {want}"
                    );
                }
            }
            // In bands of query positions, keys and values read block by
            // block into the kernel's buffers: the same bits.
            let (k, v) = (super::project(&tokens, n, p.k), super::project(&tokens, n, p.v));
            let rows = query_rows(n);
            for band in [rows, 3 * rows] {
                let mut banded = vec![0.0f32; c * n];
                for p0 in (0..n).step_by(band) {
                    let m = band.min(n - p0);
                    let part = |a: &[f32]| (0..c).flat_map(|o| a[o * n + p0..][..m].to_vec()).collect::<Vec<f32>>();
                    let (mut y, t) = (part(&x), part(&tokens));
                    let Ok(()) = attend(&mut y, &t, c, p, &Copied(k.clone(), v.clone()), rows);
                    for o in 0..c {
                        banded[o * n + p0..][..m].copy_from_slice(&y[o * m..][..m]);
                    }
                }
                let differ = got.iter().zip(&banded).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                assert_eq!(differ, 0, "n {n}: bands of {band} positions");
            }
        }
    }

    /// Keys and values that each block copies out, as from a file.
    struct Copied(Vec<f32>, Vec<f32>);

    impl KeyValues for Copied {
        type Error = std::convert::Infallible;
        fn elements(&self) -> usize {
            self.0.len()
        }
        fn block<'a>(
            &'a self,
            start: usize,
            len: usize,
            [k, v]: &'a mut [Vec<f32>; 2],
        ) -> Result<[&'a [f32]; 2], Self::Error> {
            k.clear();
            k.extend_from_slice(&self.0[start..start + len]);
            v.clear();
            v.extend_from_slice(&self.1[start..start + len]);
            Ok([k, v])
        }
    }

    /// Scores whose maximum rises steeply from key block to key block (each
    /// later key scores higher), so that every block rescales the accumulator.
    #[test]
    fn rescales_when_the_maximum_grows() {
        let (n, c) = (3 * KEY_BLOCK + 17, 4);
        let q: Vec<f32> = (0..2 * c).map(|i| if i % c == 0 { 1.0 } else { 0.0 }).collect();
        let k: Vec<f32> = (0..n * c).map(|i| if i % c == 0 { (i / c) as f32 * 0.05 } else { 0.1 }).collect();
        let v = values(n * c, 9, 2.0);
        let mut out = vec![0.0; 2 * c];
        let Ok(()) = attend_block(&q, &[&k[..], &v[..]], c, 1.0, &mut out, &mut Scratch::default());
        let want = reference(&q, &k, &v, c, 1.0);
        for (g, w) in out.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 2e-6 * (1.0 + w.abs()), "{g} vs {w}");
        }
    }
}
