//! 2D convolution on the CPU as k*k GEMMs over shifted views of a padded
//! input: no im2col buffer, no layout change (NCHW in, NCHW out).
//!
//! With the input padded into planes of `rows x row_len` (row_len a multiple
//! of the stride), output pixel `j = y * (row_len / s) + x` reads input index
//! `s * j + kh * row_len + kw` for kernel tap (kh, kw): a uniform stride over
//! `j`. So each tap is one GEMM `out[co, j] += W[kh, kw][co, ci] * X[ci, s*j + off]`
//! computed over `row_len / s` columns per output row, of which the last
//! few are padding and are cropped at the end.

use std::ops::Range;

use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use super::Arithmetic;
use super::bf16::{self, Matrix, PackedA};
use super::winograd::{self, WinogradWeights};

/// A convolution's weights, laid out once for the algorithm that suits its
/// shape: Winograd ([`winograd`]) for the "same" 3x3 convolutions (all but
/// three of the VAE's 3x3 convolutions, and nearly all of its FLOPs), else
/// one GEMM per kernel tap. Winograd was measured faster for every such shape
/// in the model, even 3 -> 128 and 128 -> 3 (`examples/ops.rs`).
#[derive(Debug, Clone)]
pub struct ConvWeights {
    algorithm: Algorithm,
    bias: Vec<f32>,
    c_out: usize,
    c_in: usize,
    kernel: usize,
    geometry: Geometry,
}

#[derive(Debug, Clone)]
enum Algorithm {
    /// Tap-major `[k*k][co][ci]`.
    Taps(Vec<f32>),
    /// Each tap's `[co][ci]`, packed for the bf16 product.
    TapsBf16(Vec<PackedA>),
    Winograd(WinogradWeights),
}

impl ConvWeights {
    /// From PyTorch's `[co, ci, k, k]` weight and `[co]` bias, for products
    /// in `arithmetic`.
    pub fn new(
        weight: &[f32],
        bias: &[f32],
        (c_out, c_in, kernel): (usize, usize, usize),
        geometry: Geometry,
        arithmetic: Arithmetic,
    ) -> Self {
        let algorithm = match (kernel == 3 && geometry == Geometry::SAME_3X3, arithmetic) {
            (true, _) => Algorithm::Winograd(WinogradWeights::new(weight, c_out, c_in, arithmetic)),
            (false, Arithmetic::F32) => Algorithm::Taps(taps(weight, c_out, c_in, kernel)),
            (false, Arithmetic::Bf16) => {
                let taps = taps(weight, c_out, c_in, kernel);
                Algorithm::TapsBf16(
                    taps.chunks_exact(c_out * c_in).map(|t| PackedA::from_rows(t, c_out, c_in)).collect(),
                )
            }
        };
        Self { algorithm, bias: bias.to_vec(), c_out, c_in, kernel, geometry }
    }

    /// The same weights, always computed one tap at a time (to compare).
    pub fn direct(
        weight: &[f32],
        bias: &[f32],
        (c_out, c_in, kernel): (usize, usize, usize),
        geometry: Geometry,
    ) -> Self {
        let algorithm = Algorithm::Taps(taps(weight, c_out, c_in, kernel));
        Self { algorithm, bias: bias.to_vec(), c_out, c_in, kernel, geometry }
    }

    pub fn c_out(&self) -> usize {
        self.c_out
    }
}

/// `[co, ci, k, k]` -> `[k*k][co][ci]`.
fn taps(weight: &[f32], c_out: usize, c_in: usize, kernel: usize) -> Vec<f32> {
    let kk = kernel * kernel;
    assert_eq!(weight.len(), c_out * c_in * kk, "weight length");
    let mut taps = vec![0.0; weight.len()];
    for co in 0..c_out {
        for ci in 0..c_in {
            for t in 0..kk {
                taps[(t * c_out + co) * c_in + ci] = weight[(co * c_in + ci) * kk + t];
            }
        }
    }
    taps
}

/// Stride and per-side padding of a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub stride: usize,
    /// (top, bottom)
    pub pad_h: (usize, usize),
    /// (left, right)
    pub pad_w: (usize, usize),
}

impl Geometry {
    /// Stride 1, padding 1 on every side: a 3x3 convolution that keeps the size.
    pub const SAME_3X3: Geometry = Geometry { stride: 1, pad_h: (1, 1), pad_w: (1, 1) };
}

/// `x` `[batch, ci, h, w]` -> `[batch, co, ho, wo]`; returns the output and `(ho, wo)`.
pub fn conv2d(x: &[f32], batch: usize, h: usize, w: usize, wts: &ConvWeights) -> (Vec<f32>, usize, usize) {
    conv2d_upsampled(x, batch, (h, w), 1, wts)
}

/// [`conv2d`] of `x` upsampled `up` times by nearest neighbour, without
/// materialising the upsampled image: its pixels are written straight into
/// the padded input. `(h, w)` is the size before upsampling.
pub fn conv2d_upsampled(
    x: &[f32],
    batch: usize,
    (h0, w0): (usize, usize),
    up: usize,
    wts: &ConvWeights,
) -> (Vec<f32>, usize, usize) {
    wts.prepare(up).run(x, batch, (h0, w0), None)
}

impl ConvWeights {
    /// The convolution of inputs upsampled `up` times, ready to run on any
    /// number of them (bands): a Winograd convolution's f32 weights
    /// transformed for the algorithm that `up` calls for.
    pub fn prepare(&self, up: usize) -> Prepared<'_> {
        let how = match &self.algorithm {
            Algorithm::Winograd(w) => How::Winograd(w.prepare(up)),
            Algorithm::Taps(taps) => How::Taps(Taps::F32(taps)),
            Algorithm::TapsBf16(taps) => How::Taps(Taps::Bf16(taps)),
        };
        Prepared { wts: self, up, how }
    }

    /// The most that [`ConvWeights::prepare`]'s result holds after calls of
    /// up to `rows` output rows `w` wide on `threads` threads.
    pub fn prepared_bytes(&self, (rows, w): (usize, usize), threads: usize) -> u64 {
        match &self.algorithm {
            Algorithm::Winograd(wts) => wts.prepared_bytes((rows, w), threads),
            Algorithm::Taps(_) | Algorithm::TapsBf16(_) => 0,
        }
    }
}

/// A convolution ready to run ([`ConvWeights::prepare`]).
pub struct Prepared<'a> {
    wts: &'a ConvWeights,
    up: usize,
    how: How<'a>,
}

/// Winograd with its transformed weights, or one GEMM per tap.
enum How<'a> {
    Winograd(winograd::Prepared<'a>),
    Taps(Taps<'a>),
}

impl Prepared<'_> {
    /// Output rows `rows` (all by default) of the convolution of `x`
    /// (`[batch, ci, h0, w0]`, upsampled): `([batch, co, rows, wo], rows,
    /// wo)`. A Winograd convolution computes them alone, in tiles that start
    /// on `rows.start` (so a band that starts on a tile boundary of the whole
    /// image gives its values bit for bit); the others compute every row and
    /// keep these.
    pub fn run(
        &self,
        x: &[f32],
        batch: usize,
        (h0, w0): (usize, usize),
        rows: Option<Range<usize>>,
    ) -> (Vec<f32>, usize, usize) {
        let (wts, up) = (self.wts, self.up);
        let taps = match &self.how {
            How::Winograd(conv) => {
                let rows = rows.unwrap_or(0..h0 * up);
                let n = rows.len();
                return (winograd::conv3x3(x, batch, (h0, w0), rows, conv, &wts.bias), n, w0 * up);
            }
            How::Taps(taps) => *taps,
        };
        let (all, ho, wo) = by_taps(x, batch, (h0, w0), up, taps, wts);
        let rows = rows.unwrap_or(0..ho);
        assert!(rows.end <= ho, "rows {rows:?} of {ho}");
        if rows == (0..ho) {
            return (all, ho, wo);
        }
        let planes = all.chunks_exact(ho * wo);
        let kept = planes.flat_map(|plane| &plane[rows.start * wo..rows.end * wo]).copied().collect();
        (kept, rows.len(), wo)
    }
}

/// [`conv2d_upsampled`] one kernel tap at a time.
fn by_taps(
    x: &[f32],
    batch: usize,
    (h0, w0): (usize, usize),
    up: usize,
    taps: Taps,
    wts: &ConvWeights,
) -> (Vec<f32>, usize, usize) {
    let (h, w) = (h0 * up, w0 * up);
    let g = wts.geometry;
    let (k, s, ci, co) = (wts.kernel, g.stride, wts.c_in, wts.c_out);
    let hp = h + g.pad_h.0 + g.pad_h.1;
    let wp = w + g.pad_w.0 + g.pad_w.1;
    let (ho, wo) = ((hp - k) / s + 1, (wp - k) / s + 1);
    // The padded input is split into s*s phase planes (row phase, column phase),
    // each of `rows x row_len`: a stride-s conv is then a stride-1 conv of each
    // tap over its phase, and every tap reads a uniform-stride view.
    let (rows, row_len) = (hp.div_ceil(s), wp.div_ceil(s));
    let plane = rows * row_len;
    let cols = ho * row_len;
    let tap_offset = |kh: usize, kw: usize| ((kh % s) * s + kw % s) * ci * plane + (kh / s) * row_len + kw / s;
    let last_tap = (0..k).flat_map(|kh| (0..k).map(move |kw| (kh, kw))).map(|(kh, kw)| tap_offset(kh, kw)).max();
    let furthest = last_tap.unwrap_or(0) + (ci - 1) * plane + cols;
    let len = (s * s * ci * plane).max(furthest);
    let mut padded = vec![0.0f32; len];
    let mut out = Vec::with_capacity(batch * co * ho * wo);
    let threads = rayon::current_num_threads();
    for b in 0..batch {
        let src = &x[b * ci * h0 * w0..][..ci * h0 * w0];
        let layout = PhaseLayout { stride: s, pad: (g.pad_h.0, g.pad_w.0), plane, row_len };
        fill_phases(&mut padded, src, ci, (h0, w0), up, layout);
        // One image's output, `row_len` wide per row: the padding columns are
        // computed too and squeezed out below.
        let mut wide = vec![0.0f32; co * cols];
        wide.par_chunks_mut(cols.max(1)).zip(&wts.bias).for_each(|(w, &b)| w.fill(b));
        let taps = match taps {
            Taps::F32(taps) => taps,
            Taps::Bf16(taps) => {
                for kh in 0..k {
                    for kw in 0..k {
                        let b = Matrix::rows(&padded[tap_offset(kh, kw)..], (ci, cols), plane);
                        bf16::matmul(&mut wide, cols, &taps[kh * k + kw], b, true, true);
                    }
                }
                squeeze(&mut wide, co, (ho, wo), cols, row_len);
                if batch == 1 {
                    return (wide, ho, wo);
                }
                out.extend_from_slice(&wide);
                continue;
            }
        };
        for kh in 0..k {
            for kw in 0..k {
                let tap = &taps[(kh * k + kw) * co * ci..][..co * ci];
                let offset = tap_offset(kh, kw);
                debug_assert!(offset + (ci - 1) * plane + cols <= padded.len());
                // SAFETY: dst is co x cols; lhs is co x ci; rhs reads
                // padded[offset + c * plane + j] for c < ci, j < cols, which is
                // in bounds by the choice of `len` (see the debug assertion).
                unsafe {
                    gemm(
                        co,
                        cols,
                        ci,
                        wide.as_mut_ptr(),
                        1,
                        cols as isize,
                        true,
                        tap.as_ptr(),
                        1,
                        ci as isize,
                        padded.as_ptr().add(offset),
                        1,
                        plane as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::Rayon(threads),
                    );
                }
            }
        }
        squeeze(&mut wide, co, (ho, wo), cols, row_len);
        if batch == 1 {
            return (wide, ho, wo);
        }
        out.extend_from_slice(&wide);
    }
    (out, ho, wo)
}

/// A convolution's taps in the arithmetic of its products.
#[derive(Clone, Copy)]
enum Taps<'a> {
    F32(&'a [f32]),
    Bf16(&'a [PackedA]),
}

/// `wide` `[co][ho][row_len]` (`cols = ho * row_len` per channel) to
/// `[co][ho][wo]`, dropping the padding columns (a channel per task).
fn squeeze(wide: &mut Vec<f32>, co: usize, (ho, wo): (usize, usize), cols: usize, row_len: usize) {
    if wo == row_len {
        return wide.truncate(co * ho * wo);
    }
    let mut out = vec![0.0f32; co * ho * wo];
    out.par_chunks_mut((ho * wo).max(1)).zip(wide.par_chunks(cols.max(1))).for_each(|(out, wide)| {
        for (dst, src) in out.chunks_exact_mut(wo).zip(wide.chunks(row_len)) {
            dst.copy_from_slice(&src[..wo]);
        }
    });
    *wide = out;
}

/// Where padded pixels go: pixel (py, px) to phase (py % stride, px % stride)
/// at (py / stride, px / stride).
#[derive(Clone, Copy)]
struct PhaseLayout {
    stride: usize,
    pad: (usize, usize),
    plane: usize,
    row_len: usize,
}

/// Writes `src` `[ci, h, w]`, upsampled `up` times, into the zeroed phase
/// planes of `padded`, one plane (a phase of a channel) per task.
fn fill_phases(padded: &mut [f32], src: &[f32], ci: usize, (h, w): (usize, usize), up: usize, l: PhaseLayout) {
    let s = l.stride;
    let (hu, wu) = (h * up, w * up);
    padded[..s * s * ci * l.plane].par_chunks_mut(l.plane).enumerate().for_each(|(i, plane)| {
        let (phase, c) = (i / ci, i % ci);
        let (ry, rx) = (phase / s, phase % s);
        // Column j of the phase is padded column s j + rx, image column
        // s j + rx - pad: the first inside the image, and its image column.
        let first = l.pad.1.saturating_sub(rx).div_ceil(s);
        let x0 = first * s + rx - l.pad.1;
        for (r, dst) in plane.chunks_exact_mut(l.row_len).enumerate() {
            // Row r is padded row s r + ry.
            let Some(y) = (r * s + ry).checked_sub(l.pad.0).filter(|&y| y < hu) else { continue };
            let row = &src[(c * h + y / up) * w..][..w];
            if s == 1 && up == 1 {
                dst[first..first + w].copy_from_slice(row);
                continue;
            }
            for (d, x) in dst[first..].iter_mut().zip((x0..wu).step_by(s)) {
                *d = row[x / up];
            }
        }
    });
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Direct f64 convolution, the reference: `x` `[ci, h, w]`, `weight` `[co, ci, k, k]`.
    pub(in crate::kernels) fn reference(
        x: &[f32],
        (h, w): (usize, usize),
        weight: &[f32],
        bias: &[f32],
        k: usize,
        g: Geometry,
    ) -> Vec<f32> {
        let (co, ci) = (bias.len(), x.len() / (h * w));
        let hp = h + g.pad_h.0 + g.pad_h.1;
        let wp = w + g.pad_w.0 + g.pad_w.1;
        let (ho, wo) = ((hp - k) / g.stride + 1, (wp - k) / g.stride + 1);
        let mut out = vec![0.0; co * ho * wo];
        for o in 0..co {
            for y in 0..ho {
                for xx in 0..wo {
                    let mut acc = bias[o] as f64;
                    for c in 0..ci {
                        for kh in 0..k {
                            for kw in 0..k {
                                let iy = (y * g.stride + kh) as isize - g.pad_h.0 as isize;
                                let ix = (xx * g.stride + kw) as isize - g.pad_w.0 as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                    acc += x[(c * h + iy as usize) * w + ix as usize] as f64
                                        * weight[((o * ci + c) * k + kh) * k + kw] as f64;
                                }
                            }
                        }
                    }
                    out[(o * ho + y) * wo + xx] = acc as f32;
                }
            }
        }
        out
    }

    fn check(ci: usize, co: usize, h: usize, w: usize, k: usize, g: Geometry) {
        check_in(ci, co, h, w, k, g, None);
    }

    /// `arithmetic: None` is [`ConvWeights::direct`] (f32).
    fn check_in(ci: usize, co: usize, h: usize, w: usize, k: usize, g: Geometry, arithmetic: Option<Arithmetic>) {
        let values = crate::kernels::random(ci * h * w + co * ci * k * k + co, 0x2545F4914F6CDD1D);
        let (x, rest) = values.split_at(ci * h * w);
        let (weight, bias) = rest.split_at(co * ci * k * k);
        let wts = match arithmetic {
            None => ConvWeights::direct(weight, bias, (co, ci, k), g),
            Some(arithmetic) => ConvWeights::new(weight, bias, (co, ci, k), g, arithmetic),
        };
        let (got, _, _) = conv2d(x, 1, h, w, &wts);
        let want = reference(x, (h, w), weight, bias, k, g);
        assert_eq!(got.len(), want.len());
        let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        // bf16: products of 8-bit significands, see winograd.rs's tests.
        let bound = if arithmetic == Some(Arithmetic::Bf16) { 1e-2 } else { 1e-5 };
        assert!(err < bound, "ci {ci} co {co} {h}x{w} k {k} {g:?}: error {err}");
    }

    #[test]
    fn bf16_products_of_every_tap_geometry() {
        if let Err(isa) = bf16::support() {
            eprintln!("skipped: this CPU lacks {isa}");
            return;
        }
        let bf16 = Some(Arithmetic::Bf16);
        check_in(6, 3, 4, 5, 1, Geometry { stride: 1, pad_h: (0, 0), pad_w: (0, 0) }, bf16);
        check_in(5, 7, 9, 13, 3, Geometry { stride: 1, pad_h: (1, 1), pad_w: (1, 1) }, bf16);
        check_in(33, 20, 8, 10, 3, Geometry { stride: 2, pad_h: (0, 1), pad_w: (0, 1) }, bf16);
        check_in(3, 2, 7, 9, 3, Geometry { stride: 2, pad_h: (0, 1), pad_w: (0, 1) }, bf16);
    }

    #[test]
    fn same_3x3() {
        check(5, 7, 9, 13, 3, Geometry { stride: 1, pad_h: (1, 1), pad_w: (1, 1) });
    }

    #[test]
    fn nearest_upsampling_is_fused() {
        let (ci, co, h, w) = (3, 4, 5, 6);
        let x: Vec<f32> = (0..ci * h * w).map(|i| (i % 13) as f32 * 0.1 - 0.6).collect();
        let weight: Vec<f32> = (0..co * ci * 9).map(|i| (i % 7) as f32 * 0.05 - 0.15).collect();
        let bias = vec![0.1, -0.2, 0.3, 0.0];
        let wts = ConvWeights::direct(&weight, &bias, (co, ci, 3), Geometry::SAME_3X3);
        let big: Vec<f32> = (0..ci * 2 * h * 2 * w)
            .map(|i| {
                let (c, y, xx) = (i / (4 * h * w), (i / (2 * w)) % (2 * h), i % (2 * w));
                x[(c * h + y / 2) * w + xx / 2]
            })
            .collect();
        let (want, ..) = conv2d(&big, 1, 2 * h, 2 * w, &wts);
        let (got, ho, wo) = conv2d_upsampled(&x, 1, (h, w), 2, &wts);
        assert_eq!((ho, wo), (2 * h, 2 * w));
        assert_eq!(got, want);
    }

    #[test]
    fn pointwise() {
        check(6, 3, 4, 5, 1, Geometry { stride: 1, pad_h: (0, 0), pad_w: (0, 0) });
    }

    #[test]
    fn downsample_pads_right_and_bottom() {
        check(4, 4, 8, 10, 3, Geometry { stride: 2, pad_h: (0, 1), pad_w: (0, 1) });
        check(3, 2, 7, 9, 3, Geometry { stride: 2, pad_h: (0, 1), pad_w: (0, 1) });
    }
}
