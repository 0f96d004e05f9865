//! The attention step of a banded run, in two passes over bands of
//! positions, so that it holds no whole copy of its input in memory:
//!
//! 1. The keys and values of every position, each an `[n, c]` f32 array
//!    stored as the plan stores an activation of that size (in memory, or
//!    on disk). A band reads its input positions, normalises them and
//!    projects them.
//! 2. A band of query positions reads its input positions again,
//!    normalises and projects them, attends over all keys (read from the
//!    arrays a block at a time), projects out, adds the input and is
//!    written to the output.
//!
//! The GroupNorm's statistics are gathered first, one group of channels at
//! a time, by the whole pass's arithmetic; bands start on the whole pass's
//! blocks of projected and attending positions. Every value is computed as
//! by [`Attention::forward`] on the whole input: the same bits.

use std::io;

use super::Rows;
use super::store::{Activation, Flat, Place};
use crate::kernels::attention::{self as kernel, KeyValues, PROJECTION_ROWS};
use crate::model::Attention;

/// Bytes of band temporaries per position of an input of `c` channels: the
/// input read, its normalised copy, and a projection (or an output) with
/// the copy that a write to disk makes.
pub(super) fn bytes_per_position(c: usize) -> u64 {
    12 * c as u64
}

/// Bytes of temporaries of the step on a `[c, h, w]` input in bands of
/// `rows`: a band, or a group of channels read for the norm's statistics,
/// whichever is larger, and each thread's blocks.
pub(super) fn temporaries(attention: &Attention, (c, h, w): (usize, usize, usize), rows: Rows) -> u64 {
    let band = bytes_per_position(c) * (band_rows((c, h, w), rows) * w) as u64;
    let group = 4 * (attention.norm.group_channels(c) * h * w) as u64;
    band.max(group) + threads_bytes(c)
}

/// Bytes of every thread's blocks.
fn threads_bytes(c: usize) -> u64 {
    rayon::current_num_threads() as u64 * kernel::thread_bytes(c)
}

/// Image rows per band of a `[c, h, w]` input: as `rows` says, in what a
/// budget leaves once each thread has its blocks.
fn band_rows((c, h, w): (usize, usize, usize), rows: Rows) -> usize {
    let rows = match rows {
        Rows::Budget(bytes) => Rows::Budget(bytes.saturating_sub(threads_bytes(c))),
        rows => rows,
    };
    rows.for_pass(bytes_per_position(c) * w as u64, h)
}

/// Writes `attention` of `x` into `out` (zeroed, of `x`'s shape), its keys
/// and values at `kv`, in bands of `rows`.
pub(super) fn run(
    x: &Activation,
    attention: &Attention,
    out: &mut Activation,
    kv: Place,
    rows: Rows,
) -> io::Result<()> {
    let (c, h, w) = (x.channels, x.height, x.width);
    let n = h * w;
    let norm = attention.norm.for_bands(c, |first, count| x.read_channels(first, first + count))?;
    let weights = attention.kernel_weights();
    let p = weights.projections();
    let band_rows = band_rows((c, h, w), rows);
    let mut kv = KeysValues { arrays: [Flat::new(n * c, kv)?, Flat::new(n * c, kv)?], elements: n * c };
    let band = (band_rows * w).next_multiple_of(PROJECTION_ROWS);
    for p0 in (0..n).step_by(band) {
        let p1 = (p0 + band).min(n);
        let mut tokens = x.read_positions(p0, p1)?;
        norm.apply(&mut tokens, p1 - p0);
        for (array, linear) in kv.arrays.iter_mut().zip([p.k, p.v]) {
            array.write(p0 * c, &kernel::project(&tokens, p1 - p0, linear))?;
        }
    }
    let query_rows = kernel::query_rows(n);
    let band = (band_rows * w).next_multiple_of(query_rows);
    for p0 in (0..n).step_by(band) {
        let p1 = (p0 + band).min(n);
        let mut y = x.read_positions(p0, p1)?;
        let mut tokens = y.clone();
        norm.apply(&mut tokens, p1 - p0);
        kernel::attend(&mut y, &tokens, c, p, &kv, query_rows)?;
        drop(tokens);
        out.write_positions(p0, &y)?;
    }
    Ok(())
}

/// The keys and values of every position, `elements` each.
struct KeysValues {
    arrays: [Flat; 2],
    elements: usize,
}

impl KeyValues for KeysValues {
    type Error = io::Error;

    fn elements(&self) -> usize {
        self.elements
    }

    fn block<'a>(&'a self, start: usize, len: usize, buffers: &'a mut [Vec<f32>; 2]) -> io::Result<[&'a [f32]; 2]> {
        let [k, v] = buffers;
        let [keys, values] = &self.arrays;
        Ok([keys.read(start, len, k)?, values.read(start, len, v)?])
    }
}

#[cfg(test)]
mod tests {
    use crate::model::testing::{RandomParams, bits_differ, random_tensor, values};
    use crate::model::{Attention, Builder};
    use crate::tiling::{self, Plan, Rows, Spill, Storage};

    /// An attention step alone, AutoencoderKL's (GroupNorm) and Wan's (RMS
    /// norm), in bands of two rows (several bands in both passes, none on a
    /// row boundary) with keys and values in memory and on disk: the bits of
    /// the whole pass.
    #[test]
    fn bands_are_the_whole_pass() {
        let (c, h, w) = (64, 24, 20);
        let group_norm = Attention::load(&mut RandomParams::new(5), "attention", c, 32);
        let rms_norm = Attention::load_wan(&mut RandomParams::new(6), "attention", c);
        let tmp = tempfile::tempdir().unwrap();
        let spill = Spill { dir: tmp.path().to_owned(), above: 0, disk: 0 };
        for attention in [&group_norm, &rms_norm] {
            let (mut b, x) = Builder::new();
            let y = b.attention(x, attention);
            let graph = b.finish(y);
            let x = || random_tensor([1, c, h, w], 7);
            let whole = values(attention.forward(x()));
            for spill in [None, Some(spill.clone())] {
                let rows = Rows::Image { rows: 2, image_height: h };
                let plan = Plan::Banded { storage: Storage::F16, rows, estimate: 0, spill };
                let banded = values(tiling::run(&graph, x(), &plan).unwrap());
                assert_eq!(bits_differ(&whole, &banded), 0, "{plan:?}");
            }
        }
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
