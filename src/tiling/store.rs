//! Whole activations kept between the passes of a banded run: one `[C, H, W]`
//! array per live buffer, in f32 or f16, in memory or spilled to disk, with
//! each channel's sums of the values written (the GroupNorm statistics the
//! next pass needs).
//!
//! A spilled activation is an unnamed temporary file (`O_TMPFILE` where the
//! file system has it), so nothing is left behind on exit, Ctrl-C or a crash.
//! Bands move through it with `pread`/`pwrite` rather than a shared mapping:
//! a mapping's touched pages would count as resident memory until dropped
//! by hand, and a write into a mapping on a full disk is a SIGBUS, where
//! `pwrite` returns an error. Its whole size is reserved when it is created
//! (`posix_fallocate`), so a full disk shows there, before any work.

use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use half::f16;
use rayon::prelude::*;

use crate::kernels;
use crate::kernels::isa::multiversion;
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

/// Where a stored activation lives.
#[derive(Debug, Clone, Copy)]
pub enum Place<'a> {
    Memory,
    /// An unnamed file in this folder.
    Disk(&'a Path),
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
    F32(Values<f32>),
    F16(Values<f16>),
}

/// The values of an activation, `[C, H, W]` in one array.
enum Values<T> {
    Memory(Mapped<T>),
    Disk(Spilled<T>),
}

/// Plain numbers, for which every bit pattern is a value and zero bytes are
/// zero, stored from and read back into f32.
trait Plain: Copy + Send + Sync + Default {
    fn from_f32s(src: &[f32], dst: &mut [Self]);
    /// Into memory not yet written (a band read without zeroing its vector
    /// first, a band's worth of memset per read).
    fn to_uninit_f32s(src: &[Self], dst: &mut [MaybeUninit<f32>]);
}

impl Plain for f32 {
    fn from_f32s(src: &[f32], dst: &mut [Self]) {
        dst.copy_from_slice(src);
    }
    fn to_uninit_f32s(src: &[Self], dst: &mut [MaybeUninit<f32>]) {
        dst.write_copy_of_slice(src);
    }
}

impl Plain for f16 {
    fn from_f32s(src: &[f32], dst: &mut [Self]) {
        kernels::f16::from_f32(src, dst);
    }
    fn to_uninit_f32s(src: &[Self], dst: &mut [MaybeUninit<f32>]) {
        kernels::f16::to_f32(src, dst);
    }
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

impl<T: Plain> Mapped<T> {
    fn zeroed(len: usize) -> io::Result<Self> {
        let bytes = (len * std::mem::size_of::<T>()).max(1);
        let map = memmap2::MmapOptions::new().len(bytes).map_anon()?;
        Ok(Self { map, len, _values: std::marker::PhantomData })
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

/// A zeroed array of `len` values in an unnamed file, its space reserved.
struct Spilled<T> {
    file: File,
    /// Its folder, for a wider copy.
    dir: PathBuf,
    _values: std::marker::PhantomData<T>,
}

impl<T: Plain> Spilled<T> {
    fn zeroed(len: usize, dir: &Path) -> io::Result<Self> {
        let file = tempfile::tempfile_in(dir)?;
        reserve(&file, (len * std::mem::size_of::<T>()) as u64)?;
        Ok(Self { file, dir: dir.to_owned(), _values: std::marker::PhantomData })
    }

    /// Values `[start, start + dst.len())`, as f32.
    fn read(&self, start: usize, dst: &mut [MaybeUninit<f32>]) -> io::Result<()> {
        let mut values = vec![T::default(); dst.len()];
        self.file.read_exact_at(as_bytes_mut(&mut values), Self::offset(start))?;
        T::to_uninit_f32s(&values, dst);
        Ok(())
    }

    /// Stores `src` as values `[start, start + src.len())`.
    fn write(&self, start: usize, src: &[f32]) -> io::Result<()> {
        let mut values = vec![T::default(); src.len()];
        T::from_f32s(src, &mut values);
        self.file.write_all_at(as_bytes_mut(&mut values), Self::offset(start))
    }

    fn offset(start: usize) -> u64 {
        (start * std::mem::size_of::<T>()) as u64
    }
}

/// The bytes of plain values.
fn as_bytes_mut<T: Plain>(values: &mut [T]) -> &mut [u8] {
    // SAFETY: T is plain data (any bytes are a value), the slice covers
    // exactly the values' memory, and u8 has no alignment requirement.
    unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast(), std::mem::size_of_val(values)) }
}

/// Makes `file` `bytes` long with its blocks allocated, so that a full disk
/// is an error now (ENOSPC) rather than partway through a run.
#[cfg(target_os = "linux")]
fn reserve(file: &File, bytes: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(bytes).map_err(|_| io::Error::from(io::ErrorKind::FileTooLarge))?;
    // SAFETY: the descriptor is open for writing for the duration of the call.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len.max(1)) } {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// Elsewhere a sparse file: a full disk shows when a band is written.
#[cfg(not(target_os = "linux"))]
fn reserve(file: &File, bytes: u64) -> io::Result<()> {
    file.set_len(bytes)
}

impl<T: Plain> Values<T> {
    fn zeroed(len: usize, place: Place) -> io::Result<Self> {
        Ok(match place {
            Place::Memory => Values::Memory(Mapped::zeroed(len)?),
            Place::Disk(dir) => Values::Disk(Spilled::zeroed(len, dir)?),
        })
    }

    /// Values `[start, start + n)` of each of the first `channels`
    /// `plane`-long channels, as `[channels, n]` f32 values.
    fn read(&self, plane: usize, start: usize, n: usize, channels: usize) -> io::Result<Vec<f32>> {
        let at = |c: usize| c * plane + start;
        let mut out = Vec::with_capacity(channels * n);
        let dst = out.spare_capacity_mut()[..channels * n].par_chunks_mut(n.max(1)).enumerate();
        match self {
            Values::Memory(v) => dst.for_each(|(c, d)| T::to_uninit_f32s(&v[at(c)..at(c) + n], d)),
            Values::Disk(f) => dst.try_for_each(|(c, d)| f.read(at(c), d))?,
        }
        // SAFETY: each channel's chunk was written whole above (a failed
        // read returned first).
        unsafe { out.set_len(channels * n) };
        Ok(out)
    }

    /// Stores `part(c)` at value `start` of each `plane`-long channel `c`.
    fn write<'s>(
        &mut self,
        plane: usize,
        start: usize,
        channels: usize,
        part: impl Fn(usize) -> &'s [f32] + Sync,
    ) -> io::Result<()> {
        match self {
            Values::Memory(v) => {
                v.par_chunks_mut(plane.max(1)).take(channels).enumerate().for_each(|(c, d)| {
                    let src = part(c);
                    T::from_f32s(src, &mut d[start..start + src.len()]);
                });
                Ok(())
            }
            Values::Disk(f) => (0..channels).into_par_iter().try_for_each(|c| f.write(c * plane + start, part(c))),
        }
    }
}

impl Data {
    fn read(&self, plane: usize, start: usize, n: usize, channels: usize) -> io::Result<Vec<f32>> {
        match self {
            Data::F32(v) => v.read(plane, start, n, channels),
            Data::F16(v) => v.read(plane, start, n, channels),
        }
    }
}

impl Activation {
    pub fn new(channels: usize, height: usize, width: usize, storage: Storage, place: Place) -> io::Result<Self> {
        let n = channels * height * width;
        let data = match storage {
            Storage::F32 => Data::F32(Values::zeroed(n, place)?),
            Storage::F16 => Data::F16(Values::zeroed(n, place)?),
        };
        Ok(Self { channels, height, width, data, sums: vec![[0.0; 2]; channels] })
    }

    /// A whole `[C, H, W]` array, kept in f32.
    pub fn from_values(values: &[f32], channels: usize, height: usize, width: usize, place: Place) -> io::Result<Self> {
        assert_eq!(values.len(), channels * height * width, "activation shape");
        let mut a = Self::new(channels, height, width, Storage::F32, place)?;
        a.write_rows(0, height, values, height, 0)?;
        Ok(a)
    }

    /// Bytes of `[c, h, w]` values stored as `storage`.
    pub fn bytes((c, h, w): (usize, usize, usize), storage: Storage) -> u64 {
        (c * h * w) as u64 * storage.bytes()
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

    /// Whether the values are in a file.
    pub fn spilled(&self) -> bool {
        matches!(self.data, Data::F32(Values::Disk(_)) | Data::F16(Values::Disk(_)))
    }

    /// Rows `[r0, r1)` of every channel, as `[C, r1 - r0, W]` f32 values.
    pub fn read_rows(&self, r0: usize, r1: usize) -> io::Result<Vec<f32>> {
        self.read_positions(r0 * self.width, r1 * self.width)
    }

    /// Positions `[p0, p1)` (row-major, `p = row * W + column`) of every
    /// channel, as `[C, p1 - p0]` f32 values.
    pub fn read_positions(&self, p0: usize, p1: usize) -> io::Result<Vec<f32>> {
        self.data.read(self.plane(), p0, p1 - p0, self.channels)
    }

    /// Channels `[c0, c1)` whole, as `[c1 - c0, H, W]` f32 values.
    pub fn read_channels(&self, c0: usize, c1: usize) -> io::Result<Vec<f32>> {
        self.data.read(self.plane(), c0 * self.plane(), self.plane(), c1 - c0)
    }

    /// Writes rows `[r0, r0 + rows)` from `values`, a `[C, src_rows, W]` array
    /// whose row `skip` is row `r0`, and adds them to the channel sums.
    pub fn write_rows(
        &mut self,
        r0: usize,
        rows: usize,
        values: &[f32],
        src_rows: usize,
        skip: usize,
    ) -> io::Result<()> {
        let w = self.width;
        let part = |c: usize| &values[(c * src_rows + skip) * w..(c * src_rows + skip + rows) * w];
        self.write_parts(r0 * w, rows * w, part)
    }

    /// Writes positions `[p0, p0 + n)` from `values`, `[C, n]`, and adds
    /// them to the channel sums.
    pub fn write_positions(&mut self, p0: usize, values: &[f32]) -> io::Result<()> {
        let n = values.len() / self.channels.max(1);
        self.write_parts(p0, n, |c| &values[c * n..(c + 1) * n])
    }

    /// Stores `part(c)` (`n` values) at position `start` of each channel `c`.
    fn write_parts<'s>(&mut self, start: usize, n: usize, part: impl Fn(usize) -> &'s [f32] + Sync) -> io::Result<()> {
        let (plane, channels) = (self.plane(), self.channels);
        if let Data::F16(v) = &self.data
            && (0..channels).into_par_iter().any(|c| overflows_f16(part(c)))
        {
            self.data = Data::F32(self.widened(v)?);
        }
        let band_sums: Vec<[f64; 2]> = (0..channels).into_par_iter().map(|c| channel_sums(part(c), n)[0]).collect();
        for (total, band) in self.sums.iter_mut().zip(band_sums) {
            total[0] += band[0];
            total[1] += band[1];
        }
        match &mut self.data {
            Data::F32(v) => v.write(plane, start, channels, part),
            Data::F16(v) => v.write(plane, start, channels, part),
        }
    }

    /// `v`'s values in f32, where `v` is: a band of rows at a time.
    fn widened(&self, v: &Values<f16>) -> io::Result<Values<f32>> {
        let (plane, channels, w) = (self.plane(), self.channels, self.width);
        let place = match v {
            Values::Memory(_) => Place::Memory,
            Values::Disk(f) => Place::Disk(&f.dir),
        };
        let mut wide = Values::zeroed(channels * plane, place)?;
        let band = (WIDEN_VALUES / (channels * w).max(1)).max(1);
        for r0 in (0..self.height).step_by(band) {
            let r1 = (r0 + band).min(self.height);
            let n = (r1 - r0) * w;
            let rows = v.read(plane, r0 * w, n, channels)?;
            wide.write(plane, r0 * w, channels, |c| &rows[c * n..(c + 1) * n])?;
        }
        Ok(wide)
    }

    /// The values as f32, `[C, H, W]`.
    pub fn into_values(self) -> io::Result<Vec<f32>> {
        self.read_rows(0, self.height)
    }
}

/// An f32 array in one run, in memory or spilled like an activation: the
/// attention's keys or values (`[n, c]`, position by position), written a
/// band of positions at a time and read a block at a time.
pub struct Flat(Values<f32>);

impl Flat {
    /// `len` zeros, at `place`.
    pub fn new(len: usize, place: Place) -> io::Result<Self> {
        Ok(Self(Values::zeroed(len, place)?))
    }

    /// Stores `src` as values `[start, start + src.len())`.
    pub fn write(&mut self, start: usize, src: &[f32]) -> io::Result<()> {
        // One channel, its plane longer than any array.
        self.0.write(usize::MAX, start, 1, |_| src)
    }

    /// Values `[start, start + len)`: borrowed from memory, or read from
    /// disk into `buffer`.
    pub fn read<'a>(&'a self, start: usize, len: usize, buffer: &'a mut Vec<f32>) -> io::Result<&'a [f32]> {
        match &self.0 {
            Values::Memory(v) => Ok(&v[start..start + len]),
            Values::Disk(f) => {
                buffer.resize(len, 0.0);
                f.file.read_exact_at(as_bytes_mut(&mut buffer[..]), Spilled::<f32>::offset(start))?;
                Ok(buffer)
            }
        }
    }
}

multiversion! {
    /// Whether a finite value of `xs` rounds to infinity in f16: those of
    /// magnitude 65520 and above (halfway from f16's largest, 65504, to
    /// 2^16, and a tie rounds to the even 2^16). A comparison that
    /// vectorises, where converting each value would not.
    fn overflows_f16(xs: &[f32]) -> bool {
        const HALFWAY: f32 = 65520.0;
        xs.iter().fold(false, |any, x| any | ((x.abs() >= HALFWAY) & x.is_finite()))
    }
}

/// Values per band when an f16 buffer is copied into f32.
const WIDEN_VALUES: usize = 1 << 24;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_round_trip_and_sum() {
        let (c, h, w) = (3, 5, 4);
        let values: Vec<f32> = (0..c * h * w).map(|i| i as f32 * 0.5 - 7.0).collect();
        let dir = tempfile::tempdir().unwrap();
        for place in [Place::Memory, Place::Disk(dir.path())] {
            for storage in [Storage::F32, Storage::F16] {
                let mut a = Activation::new(c, h, w, storage, place).unwrap();
                assert_eq!(a.spilled(), matches!(place, Place::Disk(_)));
                // Bands of 2 rows taken from a band buffer with one halo row above.
                for r0 in (0..h).step_by(2) {
                    let rows = 2.min(h - r0);
                    let first = r0.saturating_sub(1);
                    let src_rows = (r0 + rows) - first;
                    let src: Vec<f32> = (0..c)
                        .flat_map(|ch| values[(ch * h + first) * w..(ch * h + first + src_rows) * w].to_vec())
                        .collect();
                    a.write_rows(r0, rows, &src, src_rows, r0 - first).unwrap();
                }
                let whole = Activation::from_values(&values, c, h, w, Place::Memory).unwrap();
                assert_eq!(a.sums(), whole.sums());
                assert_eq!(a.read_rows(1, 4).unwrap(), whole.read_rows(1, 4).unwrap());
                assert_eq!(a.into_values().unwrap(), values);
            }
        }
        // Unnamed files: nothing is left in the folder, even while they are open.
        let open = Activation::new(c, h, w, Storage::F32, Place::Disk(dir.path())).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        drop(open);
    }

    #[test]
    fn f16_storage_switches_to_f32_on_overflow() {
        let dir = tempfile::tempdir().unwrap();
        for place in [Place::Memory, Place::Disk(dir.path())] {
            let mut a = Activation::new(1, 2, 2, Storage::F16, place).unwrap();
            a.write_rows(0, 1, &[1.5, 2.0], 1, 0).unwrap();
            a.write_rows(1, 1, &[1e6, -3.0], 1, 0).unwrap();
            assert_eq!(a.spilled(), matches!(place, Place::Disk(_)));
            assert_eq!(a.into_values().unwrap(), vec![1.5, 2.0, 1e6, -3.0]);
        }
    }

    #[test]
    fn f16_overflow_is_what_f16_rounds_to_infinity() {
        let halfway = 65520.0f32;
        let edges = [65504.0, halfway, f32::from_bits(halfway.to_bits() - 1), f32::from_bits(halfway.to_bits() + 1)];
        let others = [0.0, 1e6, f32::MAX, f32::INFINITY, f32::NAN, f32::MIN_POSITIVE];
        for x in edges.into_iter().chain(others).flat_map(|x| [x, -x]) {
            let want = x.is_finite() && !f16::from_f32(x).is_finite();
            assert_eq!(overflows_f16(&[1.0, x, 2.0]), want, "{x}");
        }
    }

    #[test]
    fn a_missing_folder_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        assert!(Activation::new(1, 2, 2, Storage::F32, Place::Disk(&missing)).is_err());
    }
}
