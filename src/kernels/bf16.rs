//! Matrix products on bf16 inputs with f32 sums (`--precision bf16` on the
//! CPU): `C (f32) = A · B (+ C)`, both factors rounded to bf16 (to nearest
//! even), every product and sum in f32.
//!
//! x86-64 CPUs with AVX512_BF16 run it with `vdpbf16ps`, which multiplies two
//! pairs of bf16 per 32-bit lane and adds both products to an f32 lane. So
//! both factors hold their `k` dimension in pairs: one `u32` per pair, the
//! element of even `k` in the low half. `A` (the weights) is packed once, in
//! blocks of [`MR`] rows, `k` pair by pair; `B` (the activations) is any
//! strided f32 [`Matrix`], rounded and packed by [`matmul`] a strip at a time.
//!
//! Speed: one `vdpbf16ps` does 32 multiply-adds where an f32 FMA does 16,
//! but on the Xeon this was written on (family 6 model 207, AVX512_BF16
//! without AMX) it issues at under half the FMA's rate (measured on one
//! quiet core: 1.31-1.37 G `vdpbf16ps`/s against 3.4-3.6 G `vfmadd231ps`/s,
//! `examples/ops.rs --rates`), so these products run at about half of
//! gemm's f32 rate there (`examples/ops.rs --gemm`): the microkernel is
//! bound by that instruction alone. AMX-BF16 (tile multiplies, Sapphire
//! Rapids and later) is the unit that would make bf16 faster than f32, but
//! its intrinsics are not stable in Rust 1.95 and no CPU here has it to test
//! on: it is not used. CPUs without AVX512_BF16 refuse `--precision bf16`
//! ([`support`]); on other architectures (and such CPUs, in tests)
//! [`matmul`] falls back to a scalar loop of the same arithmetic.

use half::bf16;
use rayon::prelude::*;

/// Rows of `A` per register block of the microkernel.
pub const MR: usize = 14;
/// Columns of `B` per register block: two vectors of 16 f32 lanes. 14 x 2
/// accumulators, two `B` vectors and one broadcast fill the 32 registers.
const NR: usize = 32;
/// `k` pairs per pass over a block of `C`: the `B` strip (`KC x NR` pairs,
/// 16 KiB) and a block of `A` (7 KiB) stay in L1.
const KC: usize = 128;

/// The environment variable that makes [`support`] answer as on a CPU
/// without AVX512_BF16, to check the refusal on one that has it.
pub const DISABLE_VAR: &str = "VAE_DISABLE_AVX512_BF16";

/// Whether this CPU runs [`matmul`] at speed: `Err` names the missing
/// instruction set.
pub fn support() -> Result<(), &'static str> {
    let disabled = std::env::var_os(DISABLE_VAR).is_some_and(|v| !v.is_empty() && v != "0");
    if disabled || !detected() {
        return Err("AVX512_BF16");
    }
    Ok(())
}

#[cfg(target_arch = "x86_64")]
fn detected() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512bf16")
}

#[cfg(not(target_arch = "x86_64"))]
fn detected() -> bool {
    false
}

/// Two f32 as one pair: `lo` (even `k`) in the low half.
fn pair(lo: f32, hi: f32) -> u32 {
    u32::from(bf16::from_f32(lo).to_bits()) | (u32::from(bf16::from_f32(hi).to_bits()) << 16)
}

fn unpair(p: u32) -> (f32, f32) {
    (bf16::from_bits(p as u16).to_f32(), bf16::from_bits((p >> 16) as u16).to_f32())
}

/// `A` `[m, k]` packed for the microkernel: blocks of [`MR`] rows (the last
/// padded with zero rows), each `[k/2][MR]` pairs (an odd `k` ends in a pair
/// whose high half is zero).
#[derive(Debug, Clone)]
pub struct PackedA {
    data: Vec<u32>,
    m: usize,
    k: usize,
}

impl PackedA {
    /// From f32 `a` with element `(i, j)` at `a[i * strides.0 + j * strides.1]`.
    pub fn new(a: &[f32], (m, k): (usize, usize), strides: (usize, usize)) -> Self {
        let k2 = k.div_ceil(2);
        let blocks = m.div_ceil(MR);
        let mut data = vec![0u32; blocks * k2 * MR];
        let at = |i: usize, j: usize| if j < k { a[i * strides.0 + j * strides.1] } else { 0.0 };
        for i in 0..m {
            let (block, r) = (i / MR, i % MR);
            for kk in 0..k2 {
                data[(block * k2 + kk) * MR + r] = pair(at(i, 2 * kk), at(i, 2 * kk + 1));
            }
        }
        Self { data, m, k }
    }

    /// From row-major `a` `[m, k]`.
    pub fn from_rows(a: &[f32], m: usize, k: usize) -> Self {
        Self::new(a, (m, k), (k, 1))
    }

    pub fn rows(&self) -> usize {
        self.m
    }

    /// Pairs of `k`.
    fn k2(&self) -> usize {
        self.k.div_ceil(2)
    }
}

/// An f32 matrix `[rows, cols]` with element `(i, j)` at
/// `data[i * row_stride + j * col_stride]`: a view of `B` (a convolution's
/// shifted input, Winograd's transformed input, attention's keys, which are
/// read transposed, or its values).
#[derive(Debug, Clone, Copy)]
pub struct Matrix<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> Matrix<'a> {
    /// Row-major `[rows, cols]` with rows `row_stride` apart.
    pub fn rows(data: &'a [f32], (rows, cols): (usize, usize), row_stride: usize) -> Self {
        Self { data, rows, cols, row_stride, col_stride: 1 }
    }

    /// Whether every element is inside `data`.
    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride < self.data.len()
    }

    /// Rows `2 * kk0 ..` (`kc` pairs of them; a missing last odd row counts
    /// as zeros), columns `j0..j0 + cols`, into `panel` `[kc][NR]` as pairs,
    /// zero beyond `cols`.
    fn pack(&self, (kk0, kc): (usize, usize), (j0, cols): (usize, usize), panel: &mut [u32]) {
        for kk in 0..kc {
            let out = &mut panel[kk * NR..][..NR];
            let (r, pairs) = (2 * (kk0 + kk), &mut out[..cols]);
            let row = |r: usize| &self.data[r * self.row_stride + j0..][..cols];
            match (self.col_stride, r + 1 < self.rows) {
                (1, true) => pair_row(row(r), Some(row(r + 1)), pairs),
                (1, false) => pair_row(row(r), None, pairs),
                (step, has_hi) => {
                    let at = |r: usize, j: usize| self.data[r * self.row_stride + (j0 + j) * step];
                    for (j, p) in pairs.iter_mut().enumerate() {
                        *p = pair(at(r, j), if has_hi { at(r + 1, j) } else { 0.0 });
                    }
                }
            }
            out[cols..].fill(0);
        }
    }
}

/// `out[j] = pair(lo[j], hi[j])` (`hi` zero when `None`).
fn pair_row(lo: &[f32], hi: Option<&[f32]>, out: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if detected() {
        // SAFETY: the CPU has the features `avx512::pair_row` enables.
        return unsafe { avx512::pair_row(lo, hi, out) };
    }
    match hi {
        Some(hi) => out.iter_mut().zip(lo.iter().zip(hi)).for_each(|(o, (&l, &h))| *o = pair(l, h)),
        None => out.iter_mut().zip(lo).for_each(|(o, &l)| *o = pair(l, 0.0)),
    }
}

/// `C = A · B`, or `C += A · B` with `accumulate`, where `C` `[m, n]` has
/// element `(i, j)` at `c[i * ldc + j]`, `m = a.rows()` and `n = b.cols`.
/// `B` is rounded to bf16 as it is packed, a strip of `NR` columns and
/// `KC` pairs of rows at a time, which then stays in L1 while all of `A`
/// passes. `parallel`: split the strips among rayon's threads (else this
/// thread computes all of them, for callers that are parallel already).
pub fn matmul(c: &mut [f32], ldc: usize, a: &PackedA, b: Matrix, accumulate: bool, parallel: bool) {
    let (m, n, k2) = (a.m, b.cols, a.k2());
    assert_eq!(a.k, b.rows, "inner dimensions");
    assert!(
        b.in_bounds(),
        "B is {} long, not {} x {n} with strides {}, {}",
        b.data.len(),
        b.rows,
        b.row_stride,
        b.col_stride
    );
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * ldc + n <= c.len(), "C is {} long, not {m} x {n} with row stride {ldc}", c.len());
    let out = SharedC(c.as_mut_ptr());
    let strip = |p: usize| {
        let (j0, cols) = (p * NR, NR.min(n - p * NR));
        if k2 == 0 && !accumulate {
            for i in 0..m {
                // SAFETY: in bounds (asserted above); only this strip writes these columns.
                unsafe { std::slice::from_raw_parts_mut(out.ptr().add(i * ldc + j0), cols) }.fill(0.0);
            }
        }
        let mut panel = [0u32; KC * NR];
        for k0 in (0..k2).step_by(KC) {
            let kc = KC.min(k2 - k0);
            b.pack((k0, kc), (j0, cols), &mut panel);
            for block in 0..m.div_ceil(MR) {
                let (i0, rows) = (block * MR, MR.min(m - block * MR));
                let tile = Tile { kc, rows, cols, accumulate: accumulate || k0 > 0 };
                let a = &a.data[(block * k2 + k0) * MR..][..kc * MR];
                // SAFETY: rows i0..i0+rows and columns j0..j0+cols of C are
                // in bounds (asserted above) and no other strip writes them.
                unsafe { tile.run(a, &panel, out.ptr().add(i0 * ldc + j0), ldc) };
            }
        }
    };
    let strips = n.div_ceil(NR);
    if parallel && strips > 1 {
        (0..strips).into_par_iter().for_each(strip);
    } else {
        (0..strips).for_each(strip);
    }
}

/// `C`'s pointer, shared by the strips of columns that write disjoint parts of it.
#[derive(Clone, Copy)]
struct SharedC(*mut f32);
// SAFETY: see `matmul`: strips write disjoint columns.
unsafe impl Sync for SharedC {}

impl SharedC {
    /// Through a method, so that closures capture the whole (`Sync`) struct.
    fn ptr(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: as above.
unsafe impl Send for SharedC {}

/// One block of `C`: `rows <= MR` by `cols <= NR`, over `kc` pairs of `k`.
struct Tile {
    kc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
}

impl Tile {
    /// `a`: `[kc][MR]` pairs, `b`: `[kc][NR]` pairs.
    ///
    /// # Safety
    /// `c` points to `rows` rows of at least `cols` f32, `ldc` apart, which
    /// no other thread touches meanwhile.
    unsafe fn run(&self, a: &[u32], b: &[u32], c: *mut f32, ldc: usize) {
        assert!(a.len() >= self.kc * MR && b.len() >= self.kc * NR && self.rows <= MR && self.cols <= NR);
        #[cfg(target_arch = "x86_64")]
        if detected() {
            // SAFETY: the CPU has the features; `c` as the caller promised.
            return unsafe { avx512::tile(self, a, b, c, ldc) };
        }
        let mut acc = [[0.0f32; NR]; MR];
        for (r, row) in acc.iter_mut().enumerate().take(self.rows) {
            if self.accumulate {
                // SAFETY: row r of C has `cols` elements (caller).
                row[..self.cols].copy_from_slice(unsafe { std::slice::from_raw_parts(c.add(r * ldc), self.cols) });
            }
        }
        for kk in 0..self.kc {
            let b = &b[kk * NR..][..self.cols];
            for (r, row) in acc.iter_mut().enumerate().take(self.rows) {
                let (a_lo, a_hi) = unpair(a[kk * MR + r]);
                for (x, &p) in row.iter_mut().zip(b) {
                    // vdpbf16ps's order: the odd product first.
                    let (b_lo, b_hi) = unpair(p);
                    *x = (*x + a_hi * b_hi) + a_lo * b_lo;
                }
            }
        }
        for (r, row) in acc.iter().enumerate().take(self.rows) {
            // SAFETY: as above; no other thread writes it (caller).
            unsafe { std::slice::from_raw_parts_mut(c.add(r * ldc), self.cols) }.copy_from_slice(&row[..self.cols]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{MR, NR, Tile};

    const LANES: usize = 16;
    const NV: usize = NR / LANES;

    /// The mask of the first `n` (at most 16) lanes.
    fn lanes(n: usize) -> __mmask16 {
        ((1u32 << n.min(LANES)) - 1) as __mmask16
    }

    /// # Safety
    /// As [`Tile::run`] (whose assertions hold), on a CPU with AVX512F,
    /// AVX512BW and AVX512_BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn tile(t: &Tile, a: &[u32], b: &[u32], c: *mut f32, ldc: usize) {
        let masks: [__mmask16; NV] = std::array::from_fn(|v| lanes(t.cols.saturating_sub(v * LANES)));
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        if t.accumulate {
            for (r, row) in acc.iter_mut().enumerate().take(t.rows) {
                for (v, x) in row.iter_mut().enumerate() {
                    // SAFETY: masked to the row's `cols` elements (caller).
                    *x = unsafe { _mm512_maskz_loadu_ps(masks[v], c.add(r * ldc + v * LANES)) };
                }
            }
        }
        let (a, b) = (a.as_ptr(), b.as_ptr());
        for kk in 0..t.kc {
            // SAFETY: `b` holds kc rows of NR pairs (asserted by the caller).
            let bv: [__m512bh; NV] = std::array::from_fn(|v| unsafe {
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(b.add(kk * NR + v * LANES).cast()))
            });
            for (r, row) in acc.iter_mut().enumerate() {
                // SAFETY: `a` holds kc rows of MR pairs (asserted by the
                // caller); 16 equal u32 are 32 bf16.
                let av = unsafe {
                    std::mem::transmute::<__m512, __m512bh>(_mm512_set1_ps(*a.add(kk * MR + r).cast::<f32>()))
                };
                for (x, &bv) in row.iter_mut().zip(&bv) {
                    *x = _mm512_dpbf16_ps(*x, av, bv);
                }
            }
        }
        for (r, row) in acc.iter().enumerate().take(t.rows) {
            for (v, &x) in row.iter().enumerate() {
                // SAFETY: masked to the row's `cols` elements (caller).
                unsafe { _mm512_mask_storeu_ps(c.add(r * ldc + v * LANES), masks[v], x) };
            }
        }
    }

    /// [`super::pair_row`] 16 pairs at a time: `vcvtne2ps2bf16` rounds 16
    /// values of each row (the even rows' into the low 16 halves), and
    /// `vpermw` interleaves them.
    ///
    /// # Safety
    /// The CPU has AVX512F, AVX512BW and AVX512_BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn pair_row(lo: &[f32], hi: Option<&[f32]>, out: &mut [u32]) {
        let n = out.len();
        assert!(lo.len() >= n && hi.is_none_or(|h| h.len() >= n));
        let idx: [u16; 32] = std::array::from_fn(|i| (i / 2 + (i % 2) * 16) as u16);
        // SAFETY: 32 u16 are 64 bytes.
        let idx = unsafe { _mm512_loadu_si512(idx.as_ptr().cast()) };
        for j in (0..n).step_by(LANES) {
            let mask = lanes(n - j);
            // SAFETY: masked to the `n - j` elements left in each slice.
            unsafe {
                let l = _mm512_maskz_loadu_ps(mask, lo.as_ptr().add(j));
                let h = match hi {
                    Some(hi) => _mm512_maskz_loadu_ps(mask, hi.as_ptr().add(j)),
                    None => _mm512_setzero_ps(),
                };
                let both = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(h, l));
                _mm512_mask_storeu_epi32(out.as_mut_ptr().add(j).cast(), mask, _mm512_permutexvar_epi16(idx, both));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::random;

    fn round(x: f32) -> f64 {
        bf16::from_f32(x).to_f64()
    }

    /// `A · B` in f64 of the bf16-rounded factors, `a` `[m, k]` and `b` `[k, n]` row-major.
    fn reference(a: &[f32], b: &[f32], (m, k, n): (usize, usize, usize)) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for p in 0..k {
                let x = round(a[i * k + p]);
                for j in 0..n {
                    c[i * n + j] += x * round(b[p * n + j]);
                }
            }
        }
        c
    }

    /// Odd sizes put every edge in play: partial register blocks of rows
    /// and columns, a partial last vector, an odd `k` (a half-empty pair),
    /// more than one pass over `k` (`k > 2 * KC`).
    #[test]
    fn matches_f64_on_the_rounded_factors_at_every_edge() {
        for &(m, k, n) in
            &[(1, 1, 1), (13, 7, 17), (15, 33, 31), (29, 2 * 2 * KC + 3, 70), (MR, 64, NR), (40, 520, 100)]
        {
            let (a, b) = (random(m * k, 3), random(k * n, 5));
            let want = reference(&a, &b, (m, k, n));
            let packed = PackedA::from_rows(&a, m, k);
            // B with rows wider than n, and B transposed (read down its columns).
            let stride = n + 5;
            let wide: Vec<f32> = (0..k * stride)
                .map(|i| if i % stride < n { b[i / stride * n + i % stride] } else { f32::NAN })
                .collect();
            let transposed: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            let views = [
                Matrix::rows(&wide, (k, n), stride),
                Matrix { data: &transposed, rows: k, cols: n, row_stride: 1, col_stride: k },
            ];
            let ldc = n + 3;
            for (view, (accumulate, parallel)) in views.into_iter().zip([(false, false), (true, true)]) {
                let mut c = vec![1.0f32; m * ldc];
                matmul(&mut c, ldc, &packed, view, accumulate, parallel);
                for i in 0..m {
                    for j in 0..ldc {
                        let got = c[i * ldc + j] as f64;
                        if j >= n {
                            assert_eq!(got, 1.0, "({i}, {j}) is outside C");
                            continue;
                        }
                        let want = want[i * n + j] + if accumulate { 1.0 } else { 0.0 };
                        // f32 sums of k products of at most 0.25.
                        let bound = 1e-6 * (k as f64).sqrt() * 2.0 + 1e-6;
                        assert!((got - want).abs() <= bound, "{m}x{k}x{n} ({i}, {j}): {got} vs {want}");
                    }
                }
            }
        }
    }

    #[test]
    fn pairs_round_to_nearest_even_and_keep_specials() {
        let lo = [1.0, 1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, f32::INFINITY, -0.0, 3.3e38, 1e-3, 2.5];
        let hi: Vec<f32> = lo.iter().map(|x| -x).collect();
        let mut out = vec![0u32; lo.len()];
        pair_row(&lo, Some(&hi), &mut out);
        // The vector path (on CPUs with it) and the scalar one agree.
        for (j, &p) in out.iter().enumerate() {
            let want = pair(lo[j], hi[j]);
            assert_eq!(p, want, "{}", lo[j]);
        }
        // Ties to even: 1 + 2^-8 is halfway between 1 and 1 + 2^-7.
        assert_eq!(unpair(out[1]).0, 1.0);
        assert_eq!(unpair(out[2]).0, 1.0 + 4.0 / 256.0);
        let mut nan = [0u32; 1];
        pair_row(&[f32::NAN], None, &mut nan);
        assert!(unpair(nan[0]).0.is_nan() && unpair(nan[0]).1 == 0.0);
    }
}
