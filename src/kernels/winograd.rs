//! 3x3 stride-1 "same" convolution by Winograd's minimal filtering (Lavin &
//! Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
//!
//! F(T x T, 3x3) computes each T x T block of output pixels (a tile) from the
//! (T + 2)^2 input patch around it as `Y = A^T [ (G g G^T) ⊙ (B^T d B) ] A`.
//! Summed over input channels, the element-wise product becomes (T + 2)^2
//! independent GEMMs `M[k] = U[k] · V[k]` with `U[k]` `[co, ci]` (the
//! transformed weights) and `V[k]` `[ci, tiles]` (the transformed input).
//! Each algorithm is its three matrices ([`Tiles`]):
//!
//! - f32 products use F(4x4, 3x3): 36 multiplications per tile and channel
//!   pair instead of the direct method's 144, 4x fewer. Its transforms
//!   multiply by up to 8 and round more than F(2x2, 3x3)'s: with the points
//!   0, 1, -1, -2, 1/2 ([`F4`]; Barabasz et al., "Error analysis and
//!   improving the accuracy of Winograd convolution", 2020) the error is
//!   about 6x F(2x2)'s, 3x less than with the textbook 0, 1, -1, 2, -2. A
//!   nearest-x2 upsampled input (the decoder's upsampling convolutions)
//!   uses the textbook points ([`F4Upsampled`]): its patches repeat pixels
//!   in pairs, which zeroes transformed row and column 2, so 11 of the 36
//!   products are skipped (1.56 multiplications per output pixel and input
//!   channel, against 9 for the direct method).
//! - bf16 products use F(2x2, 3x3) ([`F2`]): 16 per tile, 2.25x fewer than
//!   direct. F(4x4)'s larger transformed values lose too much in bf16's 8
//!   significant bits (5% of the output against 1% in the tests).
//!
//! The f32 weights are kept as loaded (tap-major) and transformed at each
//! call, for the algorithm the call needs: F(4x4)'s `U` is 4x the weights,
//! and holding it for every layer would cost more memory than the
//! activations of a banded run. A banded run transforms once per step
//! ([`Prepared`]).
//!
//! Every output row reads only rows of its own tile's patch, and only the
//! first (last) output row of a tile reads the patch's first (last) row:
//! a band computed from the row above its first tile to the row below its
//! last, with tiles on the whole image's grid, gives the whole image's
//! values bit for bit (`tiling`; [`TILE`] is a multiple of every tile).
//!
//! Work is split into chunks of whole tile rows, small enough that one
//! chunk's transformed input and products stay near the cores; chunks run in
//! parallel, each with single-threaded GEMMs.

use std::ops::Range;
use std::sync::{Mutex, PoisonError};

use rayon::prelude::*;

use super::Arithmetic;
use super::bf16::{self, Matrix, PackedA};
use super::isa;
use super::matmul;

/// Rows of the tallest tile: bands start on multiples of it.
pub const TILE: usize = 4;

/// Winograd's F(T x T, 3x3), `P = T + 2`: `B^T` `[P][P]`, `G` `[P][3]`,
/// `A^T` `[T][P]`, and the transformed row (and column) of a patch
/// `[a, b, b, c, c, ...]` that is zero, if any.
/// `input` and `output` are `B^T d` and `A^T m` written out, in the order
/// of the matrices' terms.
pub trait Tiles<const T: usize, const P: usize> {
    const BT: [[f32; P]; P];
    const G: [[f32; 3]; P];
    const AT: [[f32; P]; T];
    const VANISHING: Option<usize>;
    fn input(d: [f32; P]) -> [f32; P];
    fn output(m: [f32; P]) -> [f32; T];
}

/// F(2x2, 3x3), points 0, 1, -1.
pub enum F2 {}

impl Tiles<2, 4> for F2 {
    const BT: [[f32; 4]; 4] = [[1., 0., -1., 0.], [0., 1., 1., 0.], [0., -1., 1., 0.], [0., 1., 0., -1.]];
    const G: [[f32; 3]; 4] = [[1., 0., 0.], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0., 0., 1.]];
    const AT: [[f32; 4]; 2] = [[1., 1., 1., 0.], [0., 1., -1., -1.]];
    const VANISHING: Option<usize> = Some(2);

    #[inline(always)]
    fn input([d0, d1, d2, d3]: [f32; 4]) -> [f32; 4] {
        [d0 - d2, d1 + d2, -d1 + d2, d1 - d3]
    }

    #[inline(always)]
    fn output([m0, m1, m2, m3]: [f32; 4]) -> [f32; 2] {
        [m0 + m1 + m2, m1 - m2 - m3]
    }
}

/// F(4x4, 3x3), points 0, 1, -1, -2, 1/2 (rows of `B^T` doubled and those
/// of `G` halved to keep `B^T` in integers, which rounds nothing).
pub enum F4 {}

impl Tiles<4, 6> for F4 {
    const BT: [[f32; 6]; 6] = [
        [2., -3., -4., 3., 2., 0.],
        [0., -2., 1., 5., 2., 0.],
        [0., 2., -5., 1., 2., 0.],
        [0., 1., -2., -1., 2., 0.],
        [0., -2., -1., 2., 1., 0.],
        [0., 2., -3., -4., 3., 2.],
    ];
    const G: [[f32; 3]; 6] = [
        [1. / 2., 0., 0.],
        [1. / 6., 1. / 6., 1. / 6.],
        [-1. / 6., 1. / 6., -1. / 6.],
        [1. / 30., -1. / 15., 2. / 15.],
        [-16. / 15., -8. / 15., -4. / 15.],
        [0., 0., 1. / 2.],
    ];
    const AT: [[f32; 6]; 4] = [
        [1., 1., 1., 1., 1., 0.],
        [0., 1., -1., -2., 0.5, 0.],
        [0., 1., 1., 4., 0.25, 0.],
        [0., 1., -1., -8., 0.125, 1.],
    ];
    const VANISHING: Option<usize> = None;

    #[inline(always)]
    fn input([d0, d1, d2, d3, d4, d5]: [f32; 6]) -> [f32; 6] {
        [
            2. * d0 - 3. * d1 - 4. * d2 + 3. * d3 + 2. * d4,
            -2. * d1 + d2 + 5. * d3 + 2. * d4,
            2. * d1 - 5. * d2 + d3 + 2. * d4,
            d1 - 2. * d2 - d3 + 2. * d4,
            -2. * d1 - d2 + 2. * d3 + d4,
            2. * d1 - 3. * d2 - 4. * d3 + 3. * d4 + 2. * d5,
        ]
    }

    #[inline(always)]
    fn output([m0, m1, m2, m3, m4, m5]: [f32; 6]) -> [f32; 4] {
        [
            m0 + m1 + m2 + m3 + m4,
            m1 - m2 - 2. * m3 + 0.5 * m4,
            m1 + m2 + 4. * m3 + 0.25 * m4,
            m1 - m2 - 8. * m3 + 0.125 * m4 + m5,
        ]
    }
}

/// F(4x4, 3x3), points 0, 1, -1, 2, -2: row 2 of `B^T`
/// (`x (x - 1) (x^2 - 4)`) vanishes on pairs.
pub enum F4Upsampled {}

impl Tiles<4, 6> for F4Upsampled {
    const BT: [[f32; 6]; 6] = [
        [4., 0., -5., 0., 1., 0.],
        [0., -4., -4., 1., 1., 0.],
        [0., 4., -4., -1., 1., 0.],
        [0., -2., -1., 2., 1., 0.],
        [0., 2., -1., -2., 1., 0.],
        [0., 4., 0., -5., 0., 1.],
    ];
    const G: [[f32; 3]; 6] = [
        [1. / 4., 0., 0.],
        [-1. / 6., -1. / 6., -1. / 6.],
        [-1. / 6., 1. / 6., -1. / 6.],
        [1. / 24., 1. / 12., 1. / 6.],
        [1. / 24., -1. / 12., 1. / 6.],
        [0., 0., 1.],
    ];
    const AT: [[f32; 6]; 4] =
        [[1., 1., 1., 1., 1., 0.], [0., 1., -1., 2., -2., 0.], [0., 1., 1., 4., 4., 0.], [0., 1., -1., 8., -8., 1.]];
    const VANISHING: Option<usize> = Some(2);

    #[inline(always)]
    fn input([d0, d1, d2, d3, d4, d5]: [f32; 6]) -> [f32; 6] {
        [
            4. * d0 - 5. * d2 + d4,
            -4. * d1 - 4. * d2 + d3 + d4,
            4. * d1 - 4. * d2 - d3 + d4,
            -2. * d1 - d2 + 2. * d3 + d4,
            2. * d1 - d2 - 2. * d3 + d4,
            4. * d1 - 5. * d3 + d5,
        ]
    }

    #[inline(always)]
    fn output([m0, m1, m2, m3, m4, m5]: [f32; 6]) -> [f32; 4] {
        [
            m0 + m1 + m2 + m3 + m4,
            m1 - m2 + 2. * m3 - 2. * m4,
            m1 + m2 + 4. * m3 + 4. * m4,
            m1 - m2 + 8. * m3 - 8. * m4 + m5,
        ]
    }
}

/// Which products of an algorithm with `vanishing` row vanish for an input
/// upsampled `up` times.
fn skipped<const P: usize>(vanishing: Option<usize>, up: usize) -> impl Fn(usize) -> bool {
    move |k| up == 2 && vanishing.is_some_and(|r| k / P == r || k % P == r)
}

/// A 3x3 convolution's weights for [`conv3x3`].
#[derive(Debug, Clone)]
pub struct WinogradWeights {
    form: Form,
    c_out: usize,
    c_in: usize,
}

#[derive(Debug, Clone)]
enum Form {
    /// f32 products: the weights as loaded, tap-major `[9][co][ci]`,
    /// transformed per call.
    F32(Vec<f32>),
    /// bf16 products: F(2x2)'s `U[k]`, each packed for the bf16 product
    /// (the transform of the weights as loaded, rounded once more).
    Bf16(Vec<PackedA>),
}

/// A convolution of inputs upsampled `up` times, ready for [`conv3x3`]:
/// its transformed weights `U` `[P*P][co][ci]`, and the buffers its calls'
/// chunks ran with, kept for the next ones (a chunk's transformed input and
/// products are megabytes, which a fresh buffer per chunk would allocate
/// and zero again each time): as many as ran at once, one per thread at
/// most, given back with the weights.
pub struct Prepared<'a> {
    wts: &'a WinogradWeights,
    up: usize,
    u: Transformed<'a>,
    scratch: Mutex<Vec<Scratch>>,
}

enum Transformed<'a> {
    F4(Vec<f32>),
    F4Upsampled(Vec<f32>),
    Bf16(&'a [PackedA]),
}

/// Tiles per chunk aim for this many floats of scratch (transformed input
/// plus products): about 8 MiB, near this machine's L2 + L3 slice.
const CHUNK_FLOATS: usize = 2 << 20;
/// Narrower GEMMs spend more of their time packing the weights; wider
/// chunks leave a 64x64 layer (256 tiles of F(4x4)) to one thread.
const MIN_CHUNK_TILES: usize = 128;

impl WinogradWeights {
    /// From PyTorch's `[co, ci, 3, 3]` weight.
    pub fn new(weight: &[f32], c_out: usize, c_in: usize, arithmetic: Arithmetic) -> Self {
        assert_eq!(weight.len(), c_out * c_in * 9, "weight length");
        let mut taps = vec![0.0f32; weight.len()];
        for (e, g) in weight.chunks_exact(9).enumerate() {
            for (t, &v) in g.iter().enumerate() {
                taps[t * c_out * c_in + e] = v;
            }
        }
        let form = match arithmetic {
            Arithmetic::F32 => Form::F32(taps),
            Arithmetic::Bf16 => {
                let u = transform_weights::<F2, 2, 4>(&taps, c_out * c_in, |_| false);
                Form::Bf16(u.chunks_exact(c_out * c_in).map(|u| PackedA::from_rows(u, c_out, c_in)).collect())
            }
        };
        Self { form, c_out, c_in }
    }

    pub fn c_out(&self) -> usize {
        self.c_out
    }

    /// The transformed weights a call on an input upsampled `up` times uses.
    pub fn prepare(&self, up: usize) -> Prepared<'_> {
        assert!(up == 1 || up == 2, "upsampling by {up}");
        let n = self.c_out * self.c_in;
        let u = match (&self.form, up) {
            (Form::F32(taps), 1) => Transformed::F4(transform_weights::<F4, 4, 6>(taps, n, |_| false)),
            (Form::F32(taps), _) => {
                let skip = skipped::<6>(F4Upsampled::VANISHING, up);
                Transformed::F4Upsampled(transform_weights::<F4Upsampled, 4, 6>(taps, n, skip))
            }
            (Form::Bf16(u), _) => Transformed::Bf16(u),
        };
        Prepared { wts: self, up, u, scratch: Mutex::default() }
    }

    /// The most that [`WinogradWeights::prepare`]'s result holds after
    /// calls of up to `rows` output rows `w` wide on `threads` threads:
    /// F(4x4)'s 36 planes of `U`, upsampled or not (the skipped ones stay
    /// zero), and its chunks' buffers.
    pub fn prepared_bytes(&self, (rows, w): (usize, usize), threads: usize) -> u64 {
        let shape = (self.c_in, self.c_out);
        match &self.form {
            Form::F32(_) => {
                36 * (self.c_out * self.c_in) as u64 * 4 + Scratch::bytes::<4, 6>(shape, (rows, w), threads)
            }
            Form::Bf16(_) => Scratch::bytes::<2, 4>(shape, (rows, w), threads),
        }
    }
}

/// `U[k] = (G g G^T)[k]` of the tap-major weights `taps` (`[9][n]`):
/// `[P*P][n]`, the `skip`ped planes left zero (never read).
fn transform_weights<A: Tiles<T, P>, const T: usize, const P: usize>(
    taps: &[f32],
    n: usize,
    skip: impl Fn(usize) -> bool + Sync,
) -> Vec<f32> {
    // Blocks of weights small enough that their 9 taps stay in L1.
    const BLOCK: usize = 512;
    let mut u = vec![0.0f32; P * P * n];
    let planes = SharedOut(u.as_mut_ptr());
    (0..n.div_ceil(BLOCK)).into_par_iter().for_each(|b| {
        let (e0, e1) = (b * BLOCK, ((b + 1) * BLOCK).min(n));
        let g: [&[f32]; 9] = std::array::from_fn(|t| &taps[t * n + e0..t * n + e1]);
        for k in (0..P * P).filter(|&k| !skip(k)) {
            let c: [f32; 9] = std::array::from_fn(|t| A::G[k / P][t / 3] * A::G[k % P][t % 3]);
            // SAFETY: elements [e0, e1) of plane k, written by this block alone.
            let plane = unsafe { std::slice::from_raw_parts_mut(planes.at(k * n + e0), e1 - e0) };
            for (u, &g) in plane.iter_mut().zip(g[0]) {
                *u = c[0] * g;
            }
            for t in 1..9 {
                for (u, &g) in plane.iter_mut().zip(g[t]) {
                    *u += c[t] * g;
                }
            }
        }
    });
    u
}

/// `N` consecutive `len`-long slices of `s`, `stride` apart.
#[inline(always)]
fn strided_mut<const N: usize>(s: &mut [f32], stride: usize, len: usize) -> [&mut [f32]; N] {
    let mut parts = s.chunks_mut(stride);
    std::array::from_fn(|_| &mut parts.next().expect("N slices")[..len])
}

/// `N` consecutive `len`-long slices of `s`, `stride` apart.
#[inline(always)]
fn strided<const N: usize>(s: &[f32], stride: usize, len: usize) -> [&[f32]; N] {
    let mut parts = s.chunks(stride);
    std::array::from_fn(|_| &parts.next().expect("N slices")[..len])
}

/// `x` `[batch, ci, h0, w0]`, upsampled `conv.up` (1 or 2) times by nearest
/// neighbour, convolved with padding 1: returns rows `rows` of the result,
/// `[batch, co, rows.len(), up*w0]`, computed in tiles that start on row
/// `rows.start`.
pub fn conv3x3(
    x: &[f32],
    batch: usize,
    (h0, w0): (usize, usize),
    rows: Range<usize>,
    conv: &Prepared,
    bias: &[f32],
) -> Vec<f32> {
    let (up, wts) = (conv.up, conv.wts);
    assert!(rows.end <= h0 * up, "rows {rows:?} of {}", h0 * up);
    let (ci, co) = (wts.c_in, wts.c_out);
    let call = Call { batch, h0, w0, up, rows, ci, co, bias };
    let pool = &conv.scratch;
    match &conv.u {
        Transformed::F4(u) => call.run::<F4, 4, 6>(x, Products::F32(u), pool),
        Transformed::F4Upsampled(u) => call.run::<F4Upsampled, 4, 6>(x, Products::F32(u), pool),
        Transformed::Bf16(u) => call.run::<F2, 2, 4>(x, Products::Bf16(u), pool),
    }
}

/// The transformed weights in the arithmetic of the products.
#[derive(Clone, Copy)]
enum Products<'a> {
    F32(&'a [f32]),
    Bf16(&'a [PackedA]),
}

/// Tile rows per chunk of a call on `ci` input and `co` output channels
/// whose output is `tiles_y` x `tiles_x` tiles.
fn rows_per_chunk<const P: usize>((ci, co): (usize, usize), (tiles_y, tiles_x): (usize, usize)) -> usize {
    let chunk_tiles = (CHUNK_FLOATS / (P * P * (ci + co))).max(MIN_CHUNK_TILES);
    (chunk_tiles / tiles_x.max(1)).clamp(1, tiles_y.max(1))
}

/// One call's shapes.
struct Call<'a> {
    batch: usize,
    h0: usize,
    w0: usize,
    up: usize,
    rows: Range<usize>,
    ci: usize,
    co: usize,
    bias: &'a [f32],
}

impl Call<'_> {
    fn run<A: Tiles<T, P>, const T: usize, const P: usize>(
        &self,
        x: &[f32],
        u: Products,
        pool: &Mutex<Vec<Scratch>>,
    ) -> Vec<f32> {
        let Call { batch, h0, w0, up, ci, co, .. } = *self;
        let (h, w) = (self.rows.len(), w0 * up);
        let (tiles_y, tiles_x) = (h.div_ceil(T), w.div_ceil(T));
        let rows_per_chunk = rows_per_chunk::<P>((ci, co), (tiles_y, tiles_x));
        // Every element is written exactly once below, so the buffer is not
        // zeroed first (that would be one more pass over the whole output).
        let len = batch * co * h * w;
        let mut out = Vec::<f32>::with_capacity(len);
        for b in 0..batch {
            let src = Source { x: &x[b * ci * h0 * w0..][..ci * h0 * w0], h0, w0, up, r0: self.rows.start };
            // SAFETY: in bounds of the allocation of `len` floats.
            let dst = SharedOut(unsafe { out.as_mut_ptr().add(b * co * h * w) });
            let chunks: Vec<usize> = (0..tiles_y).step_by(rows_per_chunk).collect();
            chunks.into_par_iter().for_each(|ty0| {
                let ty1 = (ty0 + rows_per_chunk).min(tiles_y);
                let chunk = Chunk { ty0, ty1, tiles_x, h, w };
                let taken = pool.lock().unwrap_or_else(PoisonError::into_inner).pop();
                let mut scratch = taken.unwrap_or_default();
                // SAFETY: chunks cover disjoint output rows [T*ty0, T*ty1) of
                // each channel plane, so no two threads write the same
                // element, and `out` outlives the parallel loop.
                unsafe { chunk.run::<A, T, P>(&src, (ci, co), u, self.bias, &mut scratch, &dst) };
                pool.lock().unwrap_or_else(PoisonError::into_inner).push(scratch);
            });
        }
        // SAFETY: the chunks of every image wrote all `co * h * w` of its
        // elements (tile rows cover rows [0, h), and each row is written whole).
        unsafe { out.set_len(len) };
        out
    }
}

/// One image's input as the padded 3x3 convolution sees it, from the
/// first output row computed (`r0`) on.
struct Source<'a> {
    x: &'a [f32],
    h0: usize,
    w0: usize,
    up: usize,
    r0: usize,
}

impl Source<'_> {
    /// Padded row `p` (image row `r0 + p - 1`) of channel `c` as `T` phases
    /// `q[j]` (`half` long each, one after the other in `q`): `q[j][k]` is
    /// padded column `T k + j` (image column `T k + j - 1`), zero outside
    /// the image. Tile `t` reads `q[0..T][t]` and `q[0..2][t + 1]`.
    #[inline(always)]
    fn phases<const T: usize>(&self, c: usize, p: usize, q: &mut [f32], half: usize) {
        let (h, w, up) = (self.h0 * self.up, self.w0 * self.up, self.up);
        let p = self.r0 + p;
        if p == 0 || p > h {
            q.fill(0.0);
            return;
        }
        let row = &self.x[(c * self.h0 + (p - 1) / up) * self.w0..][..self.w0];
        let mut q: [&mut [f32]; T] = strided_mut(q, half, half);
        // Phase k's columns T k - 1 ..= T k + T - 2 are all inside the image
        // for 1 <= k < inner.
        let inner = if w >= T - 1 { (w + 1 - T) / T + 1 } else { 1 };
        let at = |col: usize| if col >= 1 && col <= w { row[(col - 1) / up] } else { 0.0 };
        for k in std::iter::once(0).chain(inner..half) {
            for (j, q) in q.iter_mut().enumerate() {
                q[k] = at(T * k + j);
            }
        }
        // Image column T k - 1 + j is source column T k - 1 + j, or
        // T/2 k - 1 + ceil(j / 2) upsampled (T is even).
        for (j, q) in q.iter_mut().enumerate().filter(|_| inner > 1) {
            let q = &mut q[1..inner];
            match up {
                1 => q.iter_mut().zip(row[T - 1 + j..].iter().step_by(T)).for_each(|(q, &v)| *q = v),
                _ => {
                    q.iter_mut().zip(row[T / 2 - 1 + j.div_ceil(2)..].iter().step_by(T / 2)).for_each(|(q, &v)| *q = v)
                }
            }
        }
    }
}

/// Output pointer shared by the chunks of one image.
struct SharedOut(*mut f32);
// SAFETY: see `conv3x3` and `transform_weights`: each thread writes elements
// no other writes.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// # Safety
    /// `at` is inside the buffer.
    unsafe fn at(&self, at: usize) -> *mut f32 {
        // SAFETY: the caller's contract.
        unsafe { self.0.add(at) }
    }
}

/// One chunk's buffers, reused by the chunks after it. Only grown: every
/// value a chunk reads it wrote first (`V`'s second column of a one-tile
/// chunk excepted, whose products are never read).
#[derive(Default)]
struct Scratch {
    /// Transformed input `V`, `[P*P][ci][tiles]`.
    v: Vec<f32>,
    /// Products `M`, `[P*P][co][tiles]`.
    m: Vec<f32>,
    /// `P` padded input rows, each as `T` column phases.
    rows: Vec<f32>,
    /// Output-transform intermediates.
    s: Vec<f32>,
    /// A row of zeros standing for the products that vanish with an
    /// upsampled input.
    zeros: Vec<f32>,
}

impl Scratch {
    /// The most that the buffers of calls of F(T x T) on `ci` and `co`
    /// channels, up to `rows` output rows `w` wide, hold on `threads`
    /// threads: one chunk's (a whole number of tile rows) per chunk running
    /// at once.
    fn bytes<const T: usize, const P: usize>(
        (ci, co): (usize, usize),
        (rows, w): (usize, usize),
        threads: usize,
    ) -> u64 {
        let (tiles_y, tx) = (rows.div_ceil(T), w.div_ceil(T));
        let rows_per_chunk = rows_per_chunk::<P>((ci, co), (tiles_y, tx));
        let floats: usize = Self::lens::<T, P>((ci, co), tx, Chunk::columns(rows_per_chunk, tx)).iter().sum();
        let at_once = threads.min(tiles_y.div_ceil(rows_per_chunk)).max(1);
        (at_once * 4 * floats) as u64
    }

    /// The buffers' lengths for a chunk of `nt` tiles, `tx` to a row:
    /// `v`, `m`, `rows` (`P` padded rows of `T` phases, `tx + 1` each),
    /// `s` and `zeros`.
    fn lens<const T: usize, const P: usize>((ci, co): (usize, usize), tx: usize, nt: usize) -> [usize; 5] {
        [P * P * ci * nt, P * P * co * nt, P * T * (tx + 1), T * P * tx, tx]
    }

    /// Grows the buffers to a chunk's lengths ([`Scratch::lens`]).
    fn fit<const T: usize, const P: usize>(&mut self, shape: (usize, usize), tx: usize, nt: usize) {
        let buffers = [&mut self.v, &mut self.m, &mut self.rows, &mut self.s, &mut self.zeros];
        for (v, n) in buffers.into_iter().zip(Self::lens::<T, P>(shape, tx, nt)) {
            grow(v, n);
        }
    }

    /// Bytes held.
    #[cfg(test)]
    fn held(&self) -> u64 {
        [&self.v, &self.m, &self.rows, &self.s, &self.zeros].iter().map(|v| 4 * v.capacity() as u64).sum()
    }
}

/// Makes `v` at least `n` long (new values zero) in exactly that much
/// memory: never shorter, so that no chunk zeroes what an earlier one
/// already had, and not doubled as a growing `Vec` would be, so that
/// [`Scratch::bytes`] is what it holds.
fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.reserve_exact(n - v.len());
        v.resize(n, 0.0);
    }
}

/// Tiles per step of the transforms' loops: fixed-size arrays of this many
/// lanes, which the compiler turns into whole vectors (a loop over slices
/// of run-time length kept scalar code with bounds checks).
const LANES: usize = 16;

/// `out[j][t] = f([ins[0][t], ..., ins[P-1][t]])[j]` for every column `t`
/// of `out`, [`LANES`] columns at a time.
#[inline(always)]
fn columns<const P: usize, const N: usize>(
    ins: [&[f32]; P],
    mut out: [&mut [f32]; N],
    f: impl Fn([f32; P]) -> [f32; N],
) {
    let n = out[0].len();
    let mut t0 = 0;
    while t0 + LANES <= n {
        let mut x = [[0.0f32; LANES]; P];
        for (x, ins) in x.iter_mut().zip(&ins) {
            x.copy_from_slice(&ins[t0..t0 + LANES]);
        }
        let mut y = [[0.0f32; LANES]; N];
        for l in 0..LANES {
            let mut xl = [0.0f32; P];
            for (xl, x) in xl.iter_mut().zip(&x) {
                *xl = x[l];
            }
            for (y, v) in y.iter_mut().zip(f(xl)) {
                y[l] = v;
            }
        }
        for (out, y) in out.iter_mut().zip(&y) {
            out[t0..t0 + LANES].copy_from_slice(y);
        }
        t0 += LANES;
    }
    for t in t0..n {
        let mut xl = [0.0f32; P];
        for (xl, ins) in xl.iter_mut().zip(&ins) {
            *xl = ins[t];
        }
        for (out, v) in out.iter_mut().zip(f(xl)) {
            out[t] = v;
        }
    }
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
    /// Tiles, and columns of `V` and `M`, of a chunk of `rows` tile rows
    /// `tiles_x` wide: gemm multiplies a single column by another routine
    /// (gemv), whose sums round differently, so one tile is given a second
    /// column, and its values do not depend on the chunk that holds it.
    fn columns(rows: usize, tiles_x: usize) -> usize {
        (rows * tiles_x).max(2)
    }

    /// [`Chunk::run_portable`] compiled for this CPU's instruction set (see
    /// [`isa`](super::isa): the transforms vectorise over tiles).
    ///
    /// # Safety
    /// As for [`Chunk::run_portable`].
    unsafe fn run<A: Tiles<T, P>, const T: usize, const P: usize>(
        &self,
        src: &Source,
        shape: (usize, usize),
        u: Products,
        bias: &[f32],
        scratch: &mut Scratch,
        dst: &SharedOut,
    ) {
        match isa::isa() {
            // SAFETY: `isa()` names only instruction sets this CPU has; the
            // rest is the caller's contract.
            #[cfg(target_arch = "x86_64")]
            isa::Isa::Avx512 => unsafe { self.run_avx512::<A, T, P>(src, shape, u, bias, scratch, dst) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            isa::Isa::Avx2 => unsafe { self.run_avx2::<A, T, P>(src, shape, u, bias, scratch, dst) },
            // SAFETY: the caller's contract.
            _ => unsafe { self.run_portable::<A, T, P>(src, shape, u, bias, scratch, dst) },
        }
    }

    /// The features of `multiversion!`'s AVX-512 version.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")]
    unsafe fn run_avx512<A: Tiles<T, P>, const T: usize, const P: usize>(
        &self,
        src: &Source,
        shape: (usize, usize),
        u: Products,
        bias: &[f32],
        scratch: &mut Scratch,
        dst: &SharedOut,
    ) {
        // SAFETY: the caller's contract.
        unsafe { self.run_portable::<A, T, P>(src, shape, u, bias, scratch, dst) }
    }

    /// The features of `multiversion!`'s AVX2 version.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn run_avx2<A: Tiles<T, P>, const T: usize, const P: usize>(
        &self,
        src: &Source,
        shape: (usize, usize),
        u: Products,
        bias: &[f32],
        scratch: &mut Scratch,
        dst: &SharedOut,
    ) {
        // SAFETY: the caller's contract.
        unsafe { self.run_portable::<A, T, P>(src, shape, u, bias, scratch, dst) }
    }

    /// # Safety
    /// `dst` points to a `[co, h, w]` buffer of which this chunk writes only
    /// rows `[T*ty0, T*ty1)`, and no other thread writes those.
    #[inline(always)]
    unsafe fn run_portable<A: Tiles<T, P>, const T: usize, const P: usize>(
        &self,
        src: &Source,
        (ci, co): (usize, usize),
        u: Products,
        bias: &[f32],
        scratch: &mut Scratch,
        dst: &SharedOut,
    ) {
        let nt = Self::columns(self.ty1 - self.ty0, self.tiles_x);
        scratch.fit::<T, P>((ci, co), self.tiles_x, nt);
        self.transform_input::<A, T, P>(src, ci, nt, scratch);
        let skip = skipped::<P>(A::VANISHING, src.up);
        for k in (0..P * P).filter(|&k| !skip(k)) {
            let m = &mut scratch.m[k * co * nt..][..co * nt];
            let v = &scratch.v[k * ci * nt..][..ci * nt];
            let u = match u {
                Products::F32(u) => &u[k * co * ci..][..co * ci],
                Products::Bf16(u) => {
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
        unsafe { self.transform_output::<A, T, P>(co, nt, bias, skip, scratch, dst) };
    }

    /// `V = B^T d B` for every tile and channel, `V[k][c]` `nt` apart.
    #[inline(always)]
    fn transform_input<A: Tiles<T, P>, const T: usize, const P: usize>(
        &self,
        src: &Source,
        ci: usize,
        nt: usize,
        scratch: &mut Scratch,
    ) {
        let tx = self.tiles_x;
        let half = tx + 1;
        let row_len = T * half;
        for c in 0..ci {
            for (r, ty) in (self.ty0..self.ty1).enumerate() {
                // Padded rows T ty .. T ty + P, each as T column phases.
                let rows: [&mut [f32]; P] = strided_mut(&mut scratch.rows, row_len, row_len);
                for (i, q) in rows.into_iter().enumerate() {
                    src.phases::<T>(c, T * ty + i, q, half);
                }
                // Vertical: t = B^T d, column by column, in place.
                let mut rows: [&mut [f32]; P] = strided_mut(&mut scratch.rows, row_len, row_len);
                for q in 0..row_len {
                    let t = A::input(std::array::from_fn(|i| rows[i][q]));
                    for (row, t) in rows.iter_mut().zip(t) {
                        row[q] = t;
                    }
                }
                // Horizontal: V = t B, tile by tile, into V[P i + j][c][tile].
                for i in 0..P {
                    let q: [&[f32]; T] = strided(&scratch.rows[i * row_len..], half, half);
                    let at = ((P * i * ci + c) * nt) + r * tx;
                    let v: [&mut [f32]; P] = strided_mut(&mut scratch.v[at..], ci * nt, tx);
                    let d = std::array::from_fn(|j| if j < T { &q[j][..tx] } else { &q[j - T][1..] });
                    columns(d, v, A::input);
                }
            }
        }
    }

    /// `Y = A^T M A + bias`, written to the output rows of this chunk.
    ///
    /// # Safety
    /// As for [`Chunk::run`].
    #[inline(always)]
    unsafe fn transform_output<A: Tiles<T, P>, const T: usize, const P: usize>(
        &self,
        co: usize,
        nt: usize,
        bias: &[f32],
        skip: impl Fn(usize) -> bool,
        scratch: &mut Scratch,
        dst: &SharedOut,
    ) {
        let (tx, w) = (self.tiles_x, self.w);
        let (m, zeros) = (&scratch.m, &scratch.zeros);
        for (o, &bias) in bias.iter().enumerate().take(co) {
            for (r, ty) in (self.ty0..self.ty1).enumerate() {
                let mk = |k: usize| if skip(k) { &zeros[..tx] } else { &m[(k * co + o) * nt + r * tx..][..tx] };
                // Vertical: s[dy][j] = A^T[dy] (m[0][j], ..., m[P-1][j]).
                for j in 0..P {
                    let col: [&[f32]; P] = std::array::from_fn(|i| mk(P * i + j));
                    let mut s: [&mut [f32]; T] = strided_mut(&mut scratch.s[j * tx..], P * tx, tx);
                    for t in 0..tx {
                        for (s, y) in s.iter_mut().zip(A::output(std::array::from_fn(|i| col[i][t]))) {
                            s[t] = y;
                        }
                    }
                }
                for dy in 0..T {
                    let y = T * ty + dy;
                    if y >= self.h {
                        break;
                    }
                    // SAFETY: row y of channel o is inside this chunk's rows.
                    let out = unsafe { std::slice::from_raw_parts_mut(dst.0.add((o * self.h + y) * w), w) };
                    let s: [&[f32]; P] = strided(&scratch.s[dy * P * tx..], tx, tx);
                    let row = |t: usize| A::output(std::array::from_fn(|j| s[j][t]));
                    let mut px = out.chunks_exact_mut(T);
                    for (t, px) in px.by_ref().enumerate() {
                        for (p, y) in px.iter_mut().zip(row(t)) {
                            *p = y + bias;
                        }
                    }
                    let tail = px.into_remainder();
                    for (p, y) in tail.iter_mut().zip(row(tx - 1)) {
                        *p = y + bias;
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
        let wts = WinogradWeights::new(&weight, co, ci, arithmetic);
        let got = conv3x3(&x, 1, (h0, w0), 0..h, &wts.prepare(up), &bias);
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        // f32: F(4x4)'s transforms round values up to 8x (textbook points,
        // upsampled) or 5x (ours) the inputs: measured up to 4e-6 of the
        // largest output here (F(2x2): 1e-6). bf16 keeps 8 significant
        // bits: each of the 9 * ci products is off by about 2^-8 of its size
        // (the transforms' sums included), and the errors add up like a
        // random walk: a few 1e-3 of the largest output for these sizes.
        // A wrong index is off by its whole size.
        let bound = match arithmetic {
            Arithmetic::F32 => 1e-5,
            Arithmetic::Bf16 => 1e-2,
        };
        assert!(err <= bound * scale.max(1.0), "ci {ci} co {co} {h0}x{w0} up {up}: error {err} (scale {scale})");
    }

    /// `A^T [(G g) ⊙ (B^T d)]` is the correlation of `d` with `g`, exactly
    /// (in f64, to rounding), for each algorithm's matrices.
    #[test]
    fn transforms_are_minimal_filtering() {
        fn check<A: Tiles<T, P>, const T: usize, const P: usize>() {
            let d: [f64; P] = std::array::from_fn(|i| [0.7, -1.3, 2.1, 0.4, -0.9, 1.6][i]);
            let g = [0.5, -1.25, 0.75];
            let gg: [f64; P] = std::array::from_fn(|i| (0..3).map(|a| f64::from(A::G[i][a]) * g[a]).sum());
            let bd: [f64; P] = std::array::from_fn(|i| (0..P).map(|j| f64::from(A::BT[i][j]) * d[j]).sum());
            for y in 0..T {
                let got: f64 = (0..P).map(|k| f64::from(A::AT[y][k]) * gg[k] * bd[k]).sum();
                let want: f64 = (0..3).map(|a| d[y + a] * g[a]).sum();
                // G's thirds and fifteenths are f32.
                assert!((got - want).abs() < 1e-6, "F({T}, 3) row {y}: {got} against {want}");
            }
            // The written-out transforms are the matrices'.
            let d32 = d.map(|v| v as f32);
            for (i, v) in A::input(d32).into_iter().enumerate() {
                let want: f32 = (0..P).map(|j| A::BT[i][j] * d32[j]).sum();
                assert!((v - want).abs() < 1e-5, "B^T row {i}: {v} against {want}");
            }
            for (i, v) in A::output(d32).into_iter().enumerate() {
                let want: f32 = (0..P).map(|j| A::AT[i][j] * d32[j]).sum();
                assert!((v - want).abs() < 1e-5, "A^T row {i}: {v} against {want}");
            }
            // The vanishing row is zero on a patch of repeated pairs.
            if let Some(r) = A::VANISHING {
                let pairs: [f64; P] = std::array::from_fn(|i| [0.3, 1.1, 1.1, -0.8, -0.8, 2.0][i]);
                let v: f64 = (0..P).map(|j| f64::from(A::BT[r][j]) * pairs[j]).sum();
                assert_eq!(v, 0.0);
            }
        }
        check::<F2, 2, 4>();
        check::<F4, 4, 6>();
        check::<F4Upsampled, 4, 6>();
    }

    /// A band computed from the row above its first tile to the row below
    /// its last gives the whole image's rows bit for bit, upsampled or not.
    #[test]
    fn bands_on_the_tile_grid_are_the_whole_image() {
        let (ci, co, h0, w0) = (5, 6, 13, 11);
        let x = random(ci * h0 * w0, 21);
        let weight = random(co * ci * 9, 23);
        let bias = random(co, 29);
        let wts = WinogradWeights::new(&weight, co, ci, Arithmetic::F32);
        for up in [1, 2] {
            let (h, w) = (h0 * up, w0 * up);
            let u = wts.prepare(up);
            let whole = conv3x3(&x, 1, (h0, w0), 0..h, &u, &bias);
            // Output rows [o0, o1) from input rows [i0, i1) (source rows).
            for (o0, o1) in [(0, 4), (4, 8), (8, 12), (12, h), (4, 6)] {
                let i0 = (o0 / up).saturating_sub(1);
                let i1 = (o1.next_multiple_of(TILE) / up + 1).min(h0);
                let band = &x[..].chunks(h0 * w0).flat_map(|c| &c[i0 * w0..i1 * w0]).copied().collect::<Vec<_>>();
                let rows = o0 - up * i0..o1 - up * i0;
                let got = conv3x3(band, 1, (i1 - i0, w0), rows, &u, &bias);
                let want: Vec<f32> = whole.chunks(h * w).flat_map(|c| &c[o0 * w..o1 * w]).copied().collect();
                assert_eq!(got, want, "up {up}, rows {o0}..{o1}");
            }
        }
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
        // The last whole phase ends on the last source column.
        check(5, 4, (3, 8), 2);
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
        let u = wts.prepare(1);
        let both = conv3x3(&x, 2, (h, w), 0..h, &u, &bias);
        for b in 0..2 {
            let one = conv3x3(&x[b * ci * h * w..][..ci * h * w], 1, (h, w), 0..h, &u, &bias);
            assert_eq!(&both[b * co * h * w..][..co * h * w], &one[..]);
        }
    }

    #[test]
    fn scratch_holds_what_the_estimate_says() {
        // The first two tall enough for their widest chunk (269 and 36 tile
        // rows), the last shorter than one chunk.
        let calls = [(8, 16, (1076, 36), 1), (40, 24, (72, 50), 2), (16, 16, (8, 300), 1)];
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("threads");
            for (ci, co, (h0, w0), up) in calls {
                let wts = WinogradWeights::new(&random(co * ci * 9, 5), co, ci, Arithmetic::F32);
                let prepared = wts.prepare(up);
                let (h, w) = (h0 * up, w0 * up);
                pool.install(|| conv3x3(&random(ci * h0 * w0, 3), 1, (h0, w0), 0..h, &prepared, &random(co, 9)));
                let held: u64 = prepared.scratch.lock().unwrap().iter().map(Scratch::held).sum();
                let estimate = Scratch::bytes::<4, 6>((ci, co), (h, w), threads);
                // One thread ran every chunk: exactly one chunk's buffers.
                match threads {
                    1 => assert_eq!(held, estimate, "{ci} -> {co} at {h0}x{w0} up {up}"),
                    _ => assert!(held <= estimate, "{ci} -> {co} at {h0}x{w0} up {up}: {held} over {estimate}"),
                }
            }
        }
    }
}
