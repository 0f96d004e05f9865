//! 3x3 stride-1 "same" convolution by Winograd's F(2x2, 3x3) (Lavin & Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2016).
//!
//! Each 2x2 block of output pixels (a tile) is computed from the 4x4 input
//! patch around it as `Y = A^T [ (G g G^T) ⊙ (B^T d B) ] A`. Summed over input
//! channels, the element-wise product becomes 16 independent GEMMs
//! `M[k] = U[k] · V[k]` with `U[k]` `[co, ci]` (the transformed weights) and
//! `V[k]` `[ci, tiles]` (the transformed input): 16 multiplications per tile
//! and channel pair instead of the direct method's 36, so 2.25x fewer.
//!
//! The transforms use only additions (and halves, in `G`), so their rounding
//! error is a few f32 ulps: see the tests, which compare with an f64 direct
//! convolution.
//!
//! Work is split into chunks of whole tile rows, small enough that one
//! chunk's transformed input and products stay in cache; chunks run in
//! parallel, each with single-threaded GEMMs.
//!
//! A nearest-x2 upsampled input makes two of the four transformed rows and
//! columns of every patch vanish (the patch repeats each source pixel twice),
//! so 7 of the 16 GEMMs are skipped: 2.25 multiplications per output pixel
//! and input channel, against 9 for the direct method.

use super::matmul;
use rayon::prelude::*;

use super::Arithmetic;
use super::bf16::{self, Matrix, PackedA};

/// Transformed weights `U[k] = (G g G^T)[k]`, `[16][co][ci]`.
#[derive(Debug, Clone)]
pub struct WinogradWeights {
    u: Transformed,
    c_out: usize,
    c_in: usize,
}

/// `U` as the products of its arithmetic read it: in bf16, the transform of
/// the weights as loaded, rounded once more (to nearest even).
#[derive(Debug, Clone)]
enum Transformed {
    F32(Vec<f32>),
    Bf16(Vec<PackedA>),
}

/// Tiles per chunk aim for this many floats of scratch (transformed input
/// plus products): about 8 MiB, which stays in this machine's L2 + L3
/// slice while keeping each GEMM at least a few hundred columns wide.
const CHUNK_FLOATS: usize = 2 << 20;
/// Narrower GEMMs spend more of their time packing the weights.
const MIN_CHUNK_TILES: usize = 256;

impl WinogradWeights {
    /// From PyTorch's `[co, ci, 3, 3]` weight; the transform runs in f64.
    pub fn new(weight: &[f32], c_out: usize, c_in: usize, arithmetic: Arithmetic) -> Self {
        assert_eq!(weight.len(), c_out * c_in * 9, "weight length");
        const G: [[f64; 3]; 4] = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];
        let mut u = vec![0.0f32; 16 * c_out * c_in];
        for co in 0..c_out {
            for ci in 0..c_in {
                let g = &weight[(co * c_in + ci) * 9..][..9];
                // G g: [4][3]
                let mut gg = [[0.0f64; 3]; 4];
                for (a, row) in gg.iter_mut().enumerate() {
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = (0..3).map(|i| G[a][i] * g[i * 3 + j] as f64).sum();
                    }
                }
                for a in 0..4 {
                    for b in 0..4 {
                        let v: f64 = (0..3).map(|j| gg[a][j] * G[b][j]).sum();
                        u[((a * 4 + b) * c_out + co) * c_in + ci] = v as f32;
                    }
                }
            }
        }
        let u = match arithmetic {
            Arithmetic::F32 => Transformed::F32(u),
            Arithmetic::Bf16 => {
                Transformed::Bf16(u.chunks_exact(c_out * c_in).map(|u| PackedA::from_rows(u, c_out, c_in)).collect())
            }
        };
        Self { u, c_out, c_in }
    }

    pub fn c_out(&self) -> usize {
        self.c_out
    }
}

/// `x` `[batch, ci, h0, w0]`, upsampled `up` (1 or 2) times by nearest
/// neighbour, convolved with padding 1: returns `[batch, co, up*h0, up*w0]`.
pub fn conv3x3(
    x: &[f32],
    batch: usize,
    (h0, w0): (usize, usize),
    up: usize,
    wts: &WinogradWeights,
    bias: &[f32],
) -> Vec<f32> {
    assert!(up == 1 || up == 2, "upsampling by {up}");
    let (ci, co) = (wts.c_in, wts.c_out);
    let (h, w) = (h0 * up, w0 * up);
    let (tiles_y, tiles_x) = (h.div_ceil(2), w.div_ceil(2));
    let chunk_tiles = (CHUNK_FLOATS / (16 * (ci + co))).max(MIN_CHUNK_TILES);
    let rows_per_chunk = (chunk_tiles / tiles_x).clamp(1, tiles_y);
    // Every element is written exactly once below, so the buffer is not
    // zeroed first (that would be one more pass over the whole output).
    let len = batch * co * h * w;
    let mut out = Vec::<f32>::with_capacity(len);
    for b in 0..batch {
        let src = Source { x: &x[b * ci * h0 * w0..][..ci * h0 * w0], h0, w0, up };
        // SAFETY: in bounds of the allocation of `len` floats.
        let dst = SharedOut(unsafe { out.as_mut_ptr().add(b * co * h * w) });
        let chunks: Vec<usize> = (0..tiles_y).step_by(rows_per_chunk).collect();
        chunks.into_par_iter().for_each_init(Scratch::default, |scratch, ty0| {
            let ty1 = (ty0 + rows_per_chunk).min(tiles_y);
            let chunk = Chunk { ty0, ty1, tiles_x, h, w };
            // SAFETY: chunks cover disjoint output rows [2*ty0, 2*ty1) of each
            // channel plane, so no two threads write the same element, and
            // `out` outlives the parallel loop.
            unsafe { chunk.run(&src, wts, bias, scratch, &dst) };
        });
    }
    // SAFETY: the chunks of every image wrote all `co * h * w` of its elements
    // (tile rows cover rows [0, h), and each row is written whole).
    unsafe { out.set_len(len) };
    out
}

/// Which of the 16 products vanish: with a 2x-upsampled input, transformed
/// row and column 2 of every patch are zero (`d2 - d1` of two equal pixels).
fn vanishing(up: usize) -> impl Fn(usize) -> bool {
    move |k| up == 2 && (k / 4 == 2 || k % 4 == 2)
}

/// One image's input as the padded 3x3 convolution sees it.
struct Source<'a> {
    x: &'a [f32],
    h0: usize,
    w0: usize,
    up: usize,
}

impl Source<'_> {
    /// Padded row `p` (image row `p - 1`) of channel `c`, split into its even
    /// and odd padded columns (`even[k]` is image column `2k - 1`, `odd[k]`
    /// is `2k`), each `half` long, zero outside the image.
    fn split_row(&self, c: usize, p: usize, even: &mut [f32], odd: &mut [f32]) {
        let (h, w) = (self.h0 * self.up, self.w0 * self.up);
        if p == 0 || p > h {
            even.fill(0.0);
            odd.fill(0.0);
            return;
        }
        let row = &self.x[(c * self.h0 + (p - 1) / self.up) * self.w0..][..self.w0];
        // Column -1 (even[0]) is padding; so is every column from w on.
        even[0] = 0.0;
        if self.up == 2 {
            // Image column 2k - 1 is source column k - 1 and 2k is k.
            even[1..=self.w0].copy_from_slice(row);
            odd[..self.w0].copy_from_slice(row);
            odd[self.w0..].fill(0.0);
            return;
        }
        // Image columns (2k - 1, 2k) for k >= 1, and column 0 alone.
        odd[0] = row[0];
        for (k, pair) in row[1..].chunks_exact(2).enumerate() {
            even[k + 1] = pair[0];
            odd[k + 1] = pair[1];
        }
        // Even width: column w - 1 is even[w / 2] and odd[w / 2] (column w)
        // is padding. Odd width: both even and odd end in padding.
        let k = w / 2;
        if w % 2 == 0 {
            even[k] = row[w - 1];
            odd[k..].fill(0.0);
        } else {
            even[k + 1..].fill(0.0);
            odd[k + 1..].fill(0.0);
        }
    }
}

/// Output pointer shared by the chunks of one image.
struct SharedOut(*mut f32);
// SAFETY: see `conv3x3`: chunks write disjoint elements.
unsafe impl Sync for SharedOut {}

/// Per-thread buffers, reused across chunks.
#[derive(Default)]
struct Scratch {
    /// Transformed input `V`, `[16][ci][tiles]`.
    v: Vec<f32>,
    /// Products `M`, `[16][co][tiles]`.
    m: Vec<f32>,
    /// Four padded input rows, each split into even and odd columns.
    rows: Vec<f32>,
    /// Output-transform intermediates.
    s: Vec<f32>,
    /// A row of zeros standing for the products that vanish with an
    /// upsampled input.
    zeros: Vec<f32>,
}

/// Tile rows `[ty0, ty1)` of one image.
struct Chunk {
    ty0: usize,
    ty1: usize,
    tiles_x: usize,
    h: usize,
    w: usize,
}

impl Chunk {
    /// # Safety
    /// `dst` points to a `[co, h, w]` buffer of which this chunk writes only
    /// rows `[2*ty0, 2*ty1)`, and no other thread writes those.
    unsafe fn run(&self, src: &Source, wts: &WinogradWeights, bias: &[f32], scratch: &mut Scratch, dst: &SharedOut) {
        let (ci, co, tx) = (wts.c_in, wts.c_out, self.tiles_x);
        let nt = (self.ty1 - self.ty0) * tx;
        scratch.v.resize(16 * ci * nt, 0.0);
        scratch.m.resize(16 * co * nt, 0.0);
        self.transform_input(src, ci, scratch);
        let zero = vanishing(src.up);
        for k in (0..16).filter(|&k| !zero(k)) {
            let m = &mut scratch.m[k * co * nt..][..co * nt];
            let v = &scratch.v[k * ci * nt..][..ci * nt];
            let u = match &wts.u {
                Transformed::F32(u) => &u[k * co * ci..][..co * ci],
                Transformed::Bf16(u) => {
                    bf16::matmul(m, nt, &u[k], Matrix::rows(v, (ci, nt), nt), false, false);
                    continue;
                }
            };
            // SAFETY: m is co x nt, u is co x ci, v is ci x nt, all row-major
            // with unit column stride, as the strides below say.
            unsafe {
                matmul(
                    co,
                    nt,
                    ci,
                    (m.as_mut_ptr(), 1, nt as isize),
                    false,
                    (u.as_ptr(), 1, ci as isize),
                    (v.as_ptr(), 1, nt as isize),
                    0.0,
                    1.0,
                );
            }
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.transform_output(co, bias, zero, scratch, dst) };
    }

    /// `V = B^T d B` for every tile and channel, where
    /// `B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`.
    fn transform_input(&self, src: &Source, ci: usize, scratch: &mut Scratch) {
        let (tx, nt) = (self.tiles_x, (self.ty1 - self.ty0) * self.tiles_x);
        let half = tx + 1;
        scratch.rows.resize(8 * half, 0.0);
        for c in 0..ci {
            for (r, ty) in (self.ty0..self.ty1).enumerate() {
                // Padded rows 2ty..2ty+4, each as (even, odd) columns.
                let rows = &mut scratch.rows;
                for i in 0..4 {
                    let (even, odd) = rows[2 * i * half..][..2 * half].split_at_mut(half);
                    src.split_row(c, 2 * ty + i, even, odd);
                }
                // Vertical: t = B^T d, row by row, in place.
                let (r0, rest) = rows.split_at_mut(2 * half);
                let (r1, rest) = rest.split_at_mut(2 * half);
                let (r2, r3) = rest.split_at_mut(2 * half);
                for q in 0..2 * half {
                    let (d0, d1, d2, d3) = (r0[q], r1[q], r2[q], r3[q]);
                    r0[q] = d0 - d2;
                    r1[q] = d1 + d2;
                    r2[q] = d2 - d1;
                    r3[q] = d1 - d3;
                }
                // Horizontal: V = t B, tile by tile, into V[4i + j][c][tile].
                for i in 0..4 {
                    let (even, odd) = rows[2 * i * half..][..2 * half].split_at(half);
                    let at = |j: usize| (((4 * i + j) * ci + c) * nt) + r * tx;
                    let (v, rest) = scratch.v.split_at_mut(at(1));
                    let v0 = &mut v[at(0)..][..tx];
                    let (v1, rest) = rest.split_at_mut(at(2) - at(1));
                    let (v2, v3) = rest.split_at_mut(at(3) - at(2));
                    let (v1, v2, v3) = (&mut v1[..tx], &mut v2[..tx], &mut v3[..tx]);
                    for t in 0..tx {
                        let (e0, o0, e1, o1) = (even[t], odd[t], even[t + 1], odd[t + 1]);
                        v0[t] = e0 - e1;
                        v1[t] = o0 + e1;
                        v2[t] = e1 - o0;
                        v3[t] = o0 - o1;
                    }
                }
            }
        }
    }

    /// `Y = A^T M A + bias`, where `A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]`,
    /// written to the output rows of this chunk.
    ///
    /// # Safety
    /// As for [`Chunk::run`].
    unsafe fn transform_output(
        &self,
        co: usize,
        bias: &[f32],
        zero: impl Fn(usize) -> bool,
        scratch: &mut Scratch,
        dst: &SharedOut,
    ) {
        let (tx, nt, w) = (self.tiles_x, (self.ty1 - self.ty0) * self.tiles_x, self.w);
        scratch.s.resize(8 * tx, 0.0);
        scratch.zeros.resize(tx, 0.0);
        let (m, zeros) = (&scratch.m, &scratch.zeros);
        for (o, &bias) in bias.iter().enumerate().take(co) {
            for (r, ty) in (self.ty0..self.ty1).enumerate() {
                let mk = |k: usize| if zero(k) { &zeros[..] } else { &m[(k * co + o) * nt + r * tx..][..tx] };
                // Vertical: s[0][j] = m0j + m1j + m2j, s[1][j] = m1j - m2j - m3j.
                let (s0, s1) = scratch.s.split_at_mut(4 * tx);
                for j in 0..4 {
                    let (a, b, c, d) = (mk(j), mk(4 + j), mk(8 + j), mk(12 + j));
                    let (s0, s1) = (&mut s0[j * tx..][..tx], &mut s1[j * tx..][..tx]);
                    for t in 0..tx {
                        s0[t] = a[t] + b[t] + c[t];
                        s1[t] = b[t] - c[t] - d[t];
                    }
                }
                for (dy, s) in [&*s0, &*s1].into_iter().enumerate() {
                    let y = 2 * ty + dy;
                    if y >= self.h {
                        break;
                    }
                    // SAFETY: row y of channel o is inside this chunk's rows.
                    let out = unsafe { std::slice::from_raw_parts_mut(dst.0.add((o * self.h + y) * w), w) };
                    let (a, b, c, d) = (&s[..tx], &s[tx..2 * tx], &s[2 * tx..3 * tx], &s[3 * tx..]);
                    let pairs = out.chunks_exact_mut(2);
                    let odd_tail = w % 2 == 1;
                    for (t, px) in pairs.enumerate() {
                        px[0] = a[t] + b[t] + c[t] + bias;
                        px[1] = b[t] - c[t] - d[t] + bias;
                    }
                    if odd_tail {
                        out[w - 1] = a[tx - 1] + b[tx - 1] + c[tx - 1] + bias;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::{Geometry, tests::reference};
    use crate::kernels::random;

    /// Max abs error against the f64 reference, relative to the largest output.
    fn check(ci: usize, co: usize, (h0, w0): (usize, usize), up: usize) {
        check_in(ci, co, (h0, w0), up, Arithmetic::F32);
    }

    fn check_in(ci: usize, co: usize, (h0, w0): (usize, usize), up: usize, arithmetic: Arithmetic) {
        let x = random(ci * h0 * w0, 7);
        let weight = random(co * ci * 9, 11);
        let bias = random(co, 13);
        let (h, w) = (h0 * up, w0 * up);
        let big: Vec<f32> = (0..ci * h * w)
            .map(|i| {
                let (c, y, xx) = (i / (h * w), (i / w) % h, i % w);
                x[(c * h0 + y / up) * w0 + xx / up]
            })
            .collect();
        let want = reference(&big, (h, w), &weight, &bias, 3, Geometry::SAME_3X3);
        let got = conv3x3(&x, 1, (h0, w0), up, &WinogradWeights::new(&weight, co, ci, arithmetic), &bias);
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        // bf16 keeps 8 significant bits: each of the 9 * ci products is off
        // by about 2^-8 of its size (the transforms' sums included), and
        // the errors add up like a random walk: a few 1e-3 of the largest
        // output for these sizes, where a wrong index is off by its whole size.
        let bound = match arithmetic {
            Arithmetic::F32 => 2e-6,
            Arithmetic::Bf16 => 1e-2,
        };
        assert!(err <= bound * scale.max(1.0), "ci {ci} co {co} {h0}x{w0} up {up}: error {err} (scale {scale})");
    }

    #[test]
    fn even_and_odd_sizes_match_direct_convolution() {
        check(16, 16, (8, 8), 1);
        check(17, 19, (7, 9), 1);
        check(16, 24, (1, 1), 1);
        check(20, 16, (3, 2), 1);
        // The image's 3 channels in, and out.
        check(3, 16, (5, 7), 1);
        check(16, 3, (6, 6), 1);
    }

    #[test]
    fn upsampled_input_matches_direct_convolution() {
        check(16, 16, (4, 5), 2);
        check(18, 17, (1, 3), 2);
    }

    #[test]
    fn bf16_products_match_direct_convolution() {
        if let Err(isa) = bf16::support() {
            eprintln!("skipped: this CPU lacks {isa}");
            return;
        }
        check_in(17, 19, (7, 9), 1, Arithmetic::Bf16);
        check_in(3, 16, (5, 7), 1, Arithmetic::Bf16);
        check_in(18, 17, (1, 3), 2, Arithmetic::Bf16);
        check_in(40, 35, (9, 300), 1, Arithmetic::Bf16);
    }

    #[test]
    fn many_chunks_and_batches_match_direct_convolution() {
        // Wide rows force one tile row per chunk.
        check(16, 16, (9, 600), 1);
        let (ci, co, h, w) = (16, 16, 6, 5);
        let x = random(2 * ci * h * w, 3);
        let weight = random(co * ci * 9, 5);
        let bias = random(co, 9);
        let wts = WinogradWeights::new(&weight, co, ci, Arithmetic::F32);
        let both = conv3x3(&x, 2, (h, w), 1, &wts, &bias);
        for b in 0..2 {
            let one = conv3x3(&x[b * ci * h * w..][..ci * h * w], 1, (h, w), 1, &wts, &bias);
            assert_eq!(&both[b * co * h * w..][..co * h * w], &one[..]);
        }
    }
}
