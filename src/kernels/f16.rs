//! Conversions between f32 and f16, the storage of activations when memory
//! is short: with the CPU's F16C instructions where it has them (8 values
//! an instruction), else value by value. Both round to nearest, ties to
//! even, and give the same bits.
//!
//! The `half` crate's slice conversions use F16C too, but through a call
//! per 8 values that its loop cannot inline; these loops are several times
//! faster, and a read writes into memory not yet initialised (a band read
//! without zeroing its vector first).

use std::mem::MaybeUninit;

use half::f16;

#[cfg(target_arch = "x86_64")]
use super::isa::{Isa, isa};

/// `dst = src` as f32.
pub fn to_f32(src: &[f16], dst: &mut [MaybeUninit<f32>]) {
    assert_eq!(src.len(), dst.len(), "f16 to f32: lengths");
    #[cfg(target_arch = "x86_64")]
    if isa() >= Isa::Avx2 {
        // SAFETY: both of these instruction sets include F16C.
        return unsafe { x86::to_f32(src, dst) };
    }
    for (s, d) in src.iter().zip(dst) {
        d.write(s.to_f32());
    }
}

/// `dst = src` rounded to f16 (to nearest, ties to even).
pub fn from_f32(src: &[f32], dst: &mut [f16]) {
    assert_eq!(src.len(), dst.len(), "f32 to f16: lengths");
    #[cfg(target_arch = "x86_64")]
    if isa() >= Isa::Avx2 {
        // SAFETY: as above.
        return unsafe { x86::from_f32(src, dst) };
    }
    for (s, d) in src.iter().zip(dst) {
        *d = f16::from_f32(*s);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    use half::f16;

    #[target_feature(enable = "avx,f16c")]
    pub fn to_f32(src: &[f16], dst: &mut [MaybeUninit<f32>]) {
        let mut s = src.chunks_exact(8);
        let mut d = dst.chunks_exact_mut(8);
        for (s, d) in (&mut s).zip(&mut d) {
            // SAFETY: 8 f16 (16 bytes) read, 8 f32 (32 bytes) written, both
            // unaligned moves.
            unsafe { _mm256_storeu_ps(d.as_mut_ptr().cast(), _mm256_cvtph_ps(_mm_loadu_si128(s.as_ptr().cast()))) };
        }
        for (s, d) in s.remainder().iter().zip(d.into_remainder()) {
            d.write(s.to_f32());
        }
    }

    #[target_feature(enable = "avx,f16c")]
    pub fn from_f32(src: &[f32], dst: &mut [f16]) {
        let mut s = src.chunks_exact(8);
        let mut d = dst.chunks_exact_mut(8);
        for (s, d) in (&mut s).zip(&mut d) {
            // SAFETY: 8 f32 read, 8 f16 written, unaligned moves.
            unsafe {
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(s.as_ptr()));
                _mm_storeu_si128(d.as_mut_ptr().cast(), h);
            }
        }
        for (s, d) in s.remainder().iter().zip(d.into_remainder()) {
            *d = f16::from_f32(*s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every f16 to f32 and back, and f32 values at and between f16's,
    /// agree with `half`'s conversions bit for bit (lengths not multiples
    /// of 8, so that the tails run too).
    #[test]
    fn conversions_match_half() {
        let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).filter(|h| !h.is_nan()).collect();
        let all = &all[..all.len() - 3];
        let mut wide = vec![MaybeUninit::new(0.0f32); all.len()];
        to_f32(all, &mut wide);
        // SAFETY: every element was initialised above, and to_f32 writes only values.
        let wide: Vec<f32> = wide.into_iter().map(|v| unsafe { v.assume_init() }).collect();
        assert!(all.iter().zip(&wide).all(|(h, f)| h.to_f32().to_bits() == f.to_bits()));
        // Each value, and the points a quarter and half-way to the next.
        let probes: Vec<f32> = wide
            .windows(2)
            .flat_map(|w| [w[0], w[0] + (w[1] - w[0]) * 0.25, w[0] + (w[1] - w[0]) * 0.5])
            .chain([1e6, -1e6, 65520.0, f32::INFINITY, f32::MIN_POSITIVE, 1e-9])
            .collect();
        let mut narrow = vec![f16::ZERO; probes.len()];
        from_f32(&probes, &mut narrow);
        for (p, h) in probes.iter().zip(&narrow) {
            assert_eq!(f16::from_f32(*p).to_bits(), h.to_bits(), "{p}");
        }
    }
}
