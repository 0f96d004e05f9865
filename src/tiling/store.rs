//! Whole activations kept between the passes of a banded run: one `[C, H, W]`
//! array per live buffer, in f32 or f16, with each channel's sums of the
//! values written (the GroupNorm statistics the next pass needs).

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use crate::kernels::norm::channel_sums;

/// How a stored activation holds its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    F32,
    /// Half the memory; values are rounded to f16 (relative error 2^-11).
    /// A buffer whose values overflow f16 switches itself to f32.
    F16,
}

impl Storage {
    pub fn bytes(self) -> u64 {
        match self {
            Storage::F32 => 4,
            Storage::F16 => 2,
        }
    }
}

/// A `[C, H, W]` activation written in bands of rows.
pub struct Activation {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    data: Data,
    /// Per channel, `(sum x, sum x^2)` over the rows written so far.
    sums: Vec<[f64; 2]>,
}

enum Data {
    F32(Mapped<f32>),
    F16(Mapped<f16>),
}

/// A zeroed array in its own anonymous memory map, returned to the system
/// when dropped. Stored activations are the largest and longest-lived
/// allocations of a run; on the heap (where `main` keeps even large blocks
/// for speed) they would leave holes that band temporaries cannot reuse.
struct Mapped<T> {
    map: memmap2::MmapMut,
    len: usize,
    _values: std::marker::PhantomData<T>,
}

/// Plain numbers, for which every bit pattern is a value and zero bytes are zero.
trait Plain: Copy {}
impl Plain for f32 {}
impl Plain for f16 {}

impl<T: Plain> Mapped<T> {
    fn zeroed(len: usize) -> Self {
        let bytes = (len * std::mem::size_of::<T>()).max(1);
        let map = memmap2::MmapOptions::new()
            .len(bytes)
            .map_anon()
            .unwrap_or_else(|e| panic!("cannot map {bytes} bytes for an activation: {e}"));
        Self { map, len, _values: std::marker::PhantomData }
    }

    fn from_slice(values: &[T]) -> Self {
        let mut m = Self::zeroed(values.len());
        m.copy_from_slice(values);
        m
    }
}

impl<T: Plain> std::ops::Deref for Mapped<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: the map is page-aligned, at least len * size_of::<T>()
        // bytes, zero-initialised, and T is plain data.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast(), self.len) }
    }
}

impl<T: Plain> std::ops::DerefMut for Mapped<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as for Deref, and the map is borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().cast(), self.len) }
    }
}

impl Activation {
    pub fn new(channels: usize, height: usize, width: usize, storage: Storage) -> Self {
        let n = channels * height * width;
        let data = match storage {
            Storage::F32 => Data::F32(Mapped::zeroed(n)),
            Storage::F16 => Data::F16(Mapped::zeroed(n)),
        };
        Self { channels, height, width, data, sums: vec![[0.0; 2]; channels] }
    }

    /// A whole `[C, H, W]` array, kept in f32.
    pub fn from_values(values: Vec<f32>, channels: usize, height: usize, width: usize) -> Self {
        assert_eq!(values.len(), channels * height * width, "activation shape");
        let sums = channel_sums(&values, height * width);
        Self { channels, height, width, data: Data::F32(Mapped::from_slice(&values)), sums }
    }

    /// The same buffer, to be overwritten: its sums start again from zero.
    pub fn cleared_sums(mut self) -> Self {
        self.sums.iter_mut().for_each(|s| *s = [0.0; 2]);
        self
    }

    pub fn sums(&self) -> &[[f64; 2]] {
        &self.sums
    }

    /// Positions per channel: the count behind [`Self::sums`] once every row is written.
    pub fn plane(&self) -> usize {
        self.height * self.width
    }

    /// Rows `[r0, r1)` of every channel, as `[C, r1 - r0, W]` f32 values.
    pub fn read_rows(&self, r0: usize, r1: usize) -> Vec<f32> {
        let (w, plane, rows) = (self.width, self.plane(), r1 - r0);
        let mut out = vec![0.0f32; self.channels * rows * w];
        let src = |c: usize| c * plane + r0 * w..c * plane + r1 * w;
        match &self.data {
            Data::F32(v) => out.par_chunks_mut(rows * w).enumerate().for_each(|(c, d)| d.copy_from_slice(&v[src(c)])),
            Data::F16(v) => {
                out.par_chunks_mut(rows * w).enumerate().for_each(|(c, d)| v[src(c)].convert_to_f32_slice(d))
            }
        }
        out
    }

    /// Writes rows `[r0, r0 + rows)` from `values`, a `[C, src_rows, W]` array
    /// whose row `skip` is row `r0`, and adds them to the channel sums.
    pub fn write_rows(&mut self, r0: usize, rows: usize, values: &[f32], src_rows: usize, skip: usize) {
        let (w, plane) = (self.width, self.plane());
        let part = |c: usize| &values[(c * src_rows + skip) * w..(c * src_rows + skip + rows) * w];
        if let Data::F16(v) = &self.data
            && (0..self.channels).any(|c| part(c).iter().any(|x| x.is_finite() && !f16::from_f32(*x).is_finite()))
        {
            let mut wide = Mapped::zeroed(v.len());
            v.convert_to_f32_slice(&mut wide);
            self.data = Data::F32(wide);
        }
        let band_sums: Vec<[f64; 2]> =
            (0..self.channels).into_par_iter().map(|c| channel_sums(part(c), rows * w)[0]).collect();
        for (total, band) in self.sums.iter_mut().zip(band_sums) {
            total[0] += band[0];
            total[1] += band[1];
        }
        let band = r0 * w..(r0 + rows) * w;
        match &mut self.data {
            Data::F32(v) => {
                v.par_chunks_mut(plane).enumerate().for_each(|(c, d)| d[band.clone()].copy_from_slice(part(c)))
            }
            Data::F16(v) => {
                v.par_chunks_mut(plane).enumerate().for_each(|(c, d)| d[band.clone()].convert_from_f32_slice(part(c)))
            }
        }
    }

    /// The values as f32, `[C, H, W]`.
    pub fn into_values(self) -> Vec<f32> {
        match self.data {
            Data::F32(v) => v.to_vec(),
            Data::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_round_trip_and_sum() {
        let (c, h, w) = (3, 5, 4);
        let values: Vec<f32> = (0..c * h * w).map(|i| i as f32 * 0.5 - 7.0).collect();
        for storage in [Storage::F32, Storage::F16] {
            let mut a = Activation::new(c, h, w, storage);
            // Bands of 2 rows taken from a band buffer with one halo row above.
            for r0 in (0..h).step_by(2) {
                let rows = 2.min(h - r0);
                let first = r0.saturating_sub(1);
                let src_rows = (r0 + rows) - first;
                let src: Vec<f32> = (0..c)
                    .flat_map(|ch| values[(ch * h + first) * w..(ch * h + first + src_rows) * w].to_vec())
                    .collect();
                a.write_rows(r0, rows, &src, src_rows, r0 - first);
            }
            let whole = Activation::from_values(values.clone(), c, h, w);
            assert_eq!(a.sums(), whole.sums());
            assert_eq!(a.read_rows(1, 4), whole.read_rows(1, 4));
            assert_eq!(a.into_values(), values);
        }
    }

    #[test]
    fn f16_storage_switches_to_f32_on_overflow() {
        let mut a = Activation::new(1, 2, 2, Storage::F16);
        a.write_rows(0, 1, &[1.5, 2.0], 1, 0);
        a.write_rows(1, 1, &[1e6, -3.0], 1, 0);
        assert_eq!(a.into_values(), vec![1.5, 2.0, 1e6, -3.0]);
    }
}
