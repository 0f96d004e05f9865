//! The banded executor: the steps of a model's [`Graph`] run over whole
//! activations, each computed in bands of rows, and the estimate of the
//! memory that takes.
//!
//! A convolution step ([`ConvOp`]: an optional norm + SiLU, one
//! convolution, an optional residual) is everything between two norms.
//! A band of it reads its rows of the input plus the one or two halo rows
//! its convolution needs, so every band is exact; a GroupNorm uses
//! statistics summed over the whole input as the previous step wrote it (an
//! RMS norm, per pixel, needs none). An attention step runs in two passes
//! over bands of positions (see [`super::attention`]). A shuffle step (a rearrangement between space and channels
//! within 2x2 cells, plus an optional earlier buffer) needs no halo: a band
//! of its output reads its own input rows. The result is the untiled
//! forward pass, computed with a bounded working set. Nothing here knows the
//! model's blocks: only the three kinds of step.
//!
//! Each activation is stored in memory or, when the plan spills those of its
//! size ([`Spill`]), on disk: the same values either way.

use std::io;

use burn::tensor::{Device, Tensor};
use rayon::prelude::*;

use super::store::{Activation, Place, Storage};
use super::{Rows, Spill, TilingError};
use crate::kernels;
use crate::kernels::isa::multiversion;
use crate::kernels::winograd::TILE;
use crate::model::{ConvOp, Graph, Op, Resample, Residual, ShuffleOp, Step};

/// The rows a band of output rows `[o0, o1)` of a `resample` convolution
/// reads and computes.
struct BandRows {
    /// Input rows `[i0, i1)`.
    i0: usize,
    i1: usize,
    /// The output row of the convolution of those input rows' first row.
    base: usize,
    /// The first output row computed (`<= o0`).
    first: usize,
}

impl BandRows {
    /// A 3x3 convolution (`halo` 1) computes tiles of [`TILE`] rows
    /// (Winograd's): the band computes whole tiles of the whole image's
    /// grid, from the row above the first tile's to the row below the last
    /// one's, and every row comes out as in the whole pass, bit for bit.
    fn new(resample: Resample, o0: usize, o1: usize, h_in: usize, halo: usize) -> Self {
        let (first, end) = (o0 / TILE * TILE, o1.next_multiple_of(TILE));
        match resample {
            Resample::Same if halo == 0 => Self { i0: o0, i1: o1, base: o0, first: o0 },
            Resample::Same => {
                let i0 = first.saturating_sub(halo);
                Self { i0, i1: (end + halo).min(h_in), base: i0, first }
            }
            // Upsampled row r is input row r / 2, and tiles start on even rows.
            Resample::Up2 => {
                let i0 = (first / 2).saturating_sub(1);
                Self { i0, i1: (end / 2 + 1).min(h_in), base: 2 * i0, first }
            }
            // Output row r reads input rows 2r to 2r + 2.
            Resample::Down2 => Self { i0: 2 * o0, i1: (2 * o1 + 1).min(h_in), base: o0, first: o0 },
        }
    }
}

/// Whether step `i` of `graph` (whose input has `c_in` channels) can write
/// its output over its input: a same-size convolution reading that input
/// for the last time (and not also as its residual), neither the graph's
/// input nor its output.
fn in_place(graph: &Graph, i: usize, last: &[usize], c_in: usize) -> bool {
    let step = &graph.steps()[i];
    let same_size = matches!(step.op, Op::Conv(ConvOp { resample: Resample::Same, conv, .. }) if conv.c_out() == c_in);
    let input = step.input.index();
    let own_residual = step.residual() == Some(step.input);
    same_size && !own_residual && input != 0 && step.output != graph.output() && last[input] == i
}

/// How step `i` of `graph` stores its output: the graph's output, and
/// attention's (a whole array at the lowest resolution), in f32.
fn storage_of(graph: &Graph, i: usize, storage: Storage) -> Storage {
    let step = &graph.steps()[i];
    match step.output == graph.output() || matches!(step.op, Op::Attention(_)) {
        true => Storage::F32,
        false => storage,
    }
}

/// Where an activation of `bytes` goes.
fn place(spill: Option<&Spill>, bytes: u64) -> Place<'_> {
    match spill {
        Some(spill) if bytes > spill.above => Place::Disk(&spill.dir),
        _ => Place::Memory,
    }
}

/// Bytes of each buffer of a banded run of `graph` on an input of `shape`
/// (the input in f32), with intermediate activations stored as `storage`.
pub fn stored_bytes(graph: &Graph, shape: (usize, usize, usize), storage: Storage) -> Vec<u64> {
    let mut shapes = vec![(0, 0, 0); graph.buffers()];
    let mut bytes = vec![0; graph.buffers()];
    shapes[0] = shape;
    bytes[0] = Activation::bytes(shape, Storage::F32);
    for (i, step) in graph.steps().iter().enumerate() {
        let (c_in, h_in, w_in) = shapes[step.input.index()];
        let out = match step.op {
            Op::Conv(ConvOp { conv, resample, .. }) => {
                let (h, w) = resample.output_size(h_in, w_in);
                (conv.c_out(), h, w)
            }
            Op::Attention(_) => (c_in, h_in, w_in),
            Op::Shuffle(ShuffleOp { shuffle, .. }) => {
                let (h, w) = shuffle.output_size(h_in, w_in);
                (shuffle.c_out(), h, w)
            }
        };
        shapes[step.output.index()] = out;
        bytes[step.output.index()] = Activation::bytes(out, storage_of(graph, i, storage));
    }
    bytes
}

/// Estimated peak bytes of a banded run of `graph` on an input of `[c, h, w]`,
/// with intermediate activations stored as `storage` (input and output in f32)
/// and those of more than `spill_above` bytes on disk.
pub fn peak(graph: &Graph, (c, h, w): (usize, usize, usize), storage: Storage, rows: Rows, spill_above: u64) -> Peak {
    let last = graph.last_reads();
    let mut shapes = vec![(0, 0, 0); graph.buffers()];
    shapes[0] = (c, h, w);
    let bytes = stored_bytes(graph, (c, h, w), storage);
    // Live bytes in memory and on disk.
    let mut live = [0u64; 2];
    let at = |bytes: u64| usize::from(bytes > spill_above);
    live[at(bytes[0])] += bytes[0];
    let mut peak = Peak::default();
    let threads = rayon::current_num_threads();
    for (i, step) in graph.steps().iter().enumerate() {
        let (input, out) = (step.input.index(), step.output.index());
        // Bytes in memory and on disk of the step's own arrays.
        let mut own = [0u64; 2];
        let (c_in, h_in, w_in) = shapes[input];
        let (shape, temporaries) = match step.op {
            Op::Conv(ConvOp { conv, resample, residual, .. }) => {
                let (h, w) = resample.output_size(h_in, w_in);
                let c_res = residual.map_or(0, |r| shapes[r.buffer.index()].0);
                let per_row = band_bytes_per_row((c_in, w_in), (conv.c_out(), w), c_res, resample);
                // The step's prepared weights keep their transform and
                // Winograd's buffers from band to band.
                let band = rows.for_pass(per_row, h);
                let kept = conv.prepared_bytes((band, w), threads);
                ((conv.c_out(), h, w), kept + per_row * band as u64)
            }
            // Attention stores its keys and values, each of its input's size
            // in f32, for the length of the step.
            Op::Attention(attention) => {
                let kv = Activation::bytes((c_in, h_in, w_in), Storage::F32);
                own[at(kv)] += 2 * kv;
                ((c_in, h_in, w_in), super::attention::temporaries(attention, (c_in, h_in, w_in), rows))
            }
            Op::Shuffle(ShuffleOp { shuffle, plus }) => {
                let (h, w) = shuffle.output_size(h_in, w_in);
                let per_row = shuffle_bytes_per_row(c_in, w_in, shuffle.c_out(), w, plus.is_some(), shuffle.down());
                ((shuffle.c_out(), h, w), per_row * rows.for_pass(per_row, h) as u64)
            }
        };
        shapes[out] = shape;
        // In place, the output takes over the input's bytes.
        let in_place = in_place(graph, i, &last, c_in);
        if !in_place {
            live[at(bytes[out])] += bytes[out];
        }
        peak.stored = peak.stored.max(live[0] + own[0]);
        peak.disk = peak.disk.max(live[1] + own[1]);
        peak.temporaries = peak.temporaries.max(temporaries);
        peak.together = peak.together.max(live[0] + own[0] + temporaries);
        // A step may add its own input: that buffer is freed once.
        let residual = step.residual().map(|r| r.index()).filter(|&r| r != input);
        let freed = [(!in_place).then_some(input), residual];
        for buf in freed.into_iter().flatten() {
            if last[buf] == i {
                live[at(bytes[buf])] -= bytes[buf];
            }
        }
    }
    peak
}

/// Runs the steps of `graph` on `x` (`[1, C, H, W]`), storing intermediate
/// buffers as `storage`, those over `spill`'s size on disk; returns the output.
pub fn run(
    graph: &Graph,
    x: Tensor<4>,
    storage: Storage,
    rows: Rows,
    spill: Option<&Spill>,
    device: &Device,
) -> Result<Activation, TilingError> {
    let failed = |cause: io::Error| match spill {
        Some(spill) => TilingError::Disk { dir: spill.dir.clone(), cause },
        None => TilingError::Memory(cause),
    };
    let last = graph.last_reads();
    let mut buffers: Vec<Option<Activation>> = (0..graph.buffers()).map(|_| None).collect();
    let [_, c, h, w] = x.dims();
    let input = kernels::values(x);
    let at = place(spill, Activation::bytes((c, h, w), Storage::F32));
    buffers[0] = Some(Activation::from_values(&input, c, h, w, at).map_err(failed)?);
    drop(input);
    for (i, step) in graph.steps().iter().enumerate() {
        let storage = storage_of(graph, i, storage);
        let c_in = buffers[step.input.index()].as_ref().map_or(0, |x| x.channels);
        let reuse = in_place(graph, i, &last, c_in);
        let out = run_step(step, &mut buffers, Stored { storage, spill }, reuse, rows, device).map_err(failed)?;
        buffers[step.output.index()] = Some(out);
        for buf in step.reads() {
            if last[buf.index()] == i {
                buffers[buf.index()] = None;
            }
        }
        release_free_heap();
    }
    Ok(buffers[graph.output().index()].take().expect("the last step writes the output"))
}

/// Gives the heap's free pages back to the system. `main` has glibc keep
/// freed blocks for reuse, which suits bands of one step (the same sizes
/// over and over), but across steps the bands change shape and the kept
/// blocks add up beyond what any one step needs: a 2048x2048 decode ended
/// up holding 0.3 GiB of them, over `--max-memory`.
fn release_free_heap() {
    // SAFETY: malloc_trim only unmaps or discards pages of free blocks.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How a step stores its output: as `storage`, on disk when `spill` says.
#[derive(Clone, Copy)]
struct Stored<'a> {
    storage: Storage,
    spill: Option<&'a Spill>,
}

impl Stored<'_> {
    /// A zeroed `[c, h, w]` output.
    fn zeroed(self, (c, h, w): (usize, usize, usize)) -> io::Result<Activation> {
        Activation::new(c, h, w, self.storage, place(self.spill, Activation::bytes((c, h, w), self.storage)))
    }
}

/// Memory a run needs at its peak.
#[derive(Debug, Clone, Copy, Default)]
pub struct Peak {
    /// Stored activations in memory, at the step that holds the most.
    pub stored: u64,
    /// Stored activations on disk, at the step that holds the most.
    pub disk: u64,
    /// Band temporaries, at the step that needs the most.
    pub temporaries: u64,
    /// Both, at the step where their sum is largest.
    pub together: u64,
}

impl Peak {
    /// Banded: activations live in their own memory maps, temporaries on the
    /// heap, which is given back after each step (see `run`) but keeps
    /// its largest size within one; the peaks add up.
    pub fn banded(self) -> u64 {
        self.stored + self.temporaries
    }
}

/// Bytes of temporaries per output row of a band: the input rows read and
/// normalised, the convolution's zero-padded copy of its input and its
/// result, and the residual rows with their projection (`c_res` channels,
/// 0 without a residual).
fn band_bytes_per_row(
    (c_in, w_in): (usize, usize),
    (c_out, w_out): (usize, usize),
    c_res: usize,
    resample: Resample,
) -> u64 {
    let (read, padded) = match resample {
        Resample::Same => (c_in * w_in, c_in * w_in),
        Resample::Up2 => (c_in * w_in / 2, c_in * w_out),
        Resample::Down2 => (2 * c_in * w_in, 2 * c_in * w_in),
    };
    4 * (2 * read + padded + 2 * c_out * w_out + c_res * w_out) as u64
}

/// Runs one step. When `reuse` is set (a same-size convolution whose input
/// is read for the last time), the output overwrites the input in place:
/// each band is written one band late, once the next band has read the halo
/// rows it shares with it.
fn run_step(
    step: &Step,
    buffers: &mut [Option<Activation>],
    stored: Stored,
    reuse: bool,
    rows: Rows,
    device: &Device,
) -> io::Result<Activation> {
    let input = step.input.index();
    let x = buffers[input].as_ref().expect("a step reads a live buffer");
    let (c_in, h_in, w_in) = (x.channels, x.height, x.width);
    let ConvOp { norm, conv, resample, residual } = match step.op {
        Op::Attention(attention) if kernels::applies_to(device) => {
            let mut out = stored.zeroed((c_in, h_in, w_in))?;
            let kv = place(stored.spill, Activation::bytes((c_in, h_in, w_in), Storage::F32));
            super::attention::run(x, attention, &mut out, kv, rows)?;
            return Ok(out);
        }
        // Elsewhere than on the CPU kernels, on the whole input at once.
        Op::Attention(attention) => {
            let whole = kernels::tensor(x.read_rows(0, h_in)?, [1, c_in, h_in, w_in], device);
            let mut out = stored.zeroed((c_in, h_in, w_in))?;
            out.write_rows(0, h_in, &kernels::values(attention.forward(whole)), h_in, 0)?;
            return Ok(out);
        }
        Op::Shuffle(op) => return run_shuffle(x, op, buffers, stored, rows, device),
        Op::Conv(op) => op,
    };
    let ((h_out, w_out), c_out) = (resample.output_size(h_in, w_in), conv.c_out());
    let (sums, plane) = (x.sums().to_vec(), x.plane());
    let mut out = match reuse {
        true => buffers[input].take().expect("checked above").cleared_sums(),
        false => stored.zeroed((c_out, h_out, w_out))?,
    };
    let mut pending: Option<Band> = None;
    let c_res = residual.and_then(|r| buffers[r.buffer.index()].as_ref()).map_or(0, |r| r.channels);
    let band = rows.for_pass(band_bytes_per_row((c_in, w_in), (c_out, w_out), c_res, resample), h_out);
    let prepared = conv.prepare(resample.up());
    for o0 in (0..h_out).step_by(band) {
        let o1 = (o0 + band).min(h_out);
        let BandRows { i0, i1, base, first } = BandRows::new(resample, o0, o1, h_in, conv.pad_top());
        let x = if reuse { &out } else { buffers[input].as_ref().expect("a step reads a live buffer") };
        let mut band_in = kernels::tensor(x.read_rows(i0, i1)?, [1, c_in, i1 - i0, w_in], device);
        if let Some(norm) = norm {
            band_in = norm.forward_silu_with(band_in, &sums, plane);
        }
        let y = prepared.forward_rows(band_in, first - base..o1 - base);
        let y_rows = y.dims()[2];
        let mut y = kernels::values(y);
        if let Some(Residual { buffer, shortcut }) = residual {
            let r = buffers[buffer.index()].as_ref().expect("a residual is a live buffer");
            let mut res = r.read_rows(o0, o1)?;
            if let Some(shortcut) = shortcut {
                let t = kernels::tensor(res, [1, r.channels, o1 - o0, w_out], device);
                res = kernels::values(shortcut.forward(t));
            }
            add_rows(&mut y, &res, y_rows, o0 - first, (o1 - o0) * w_out);
        }
        let done = Band { row: o0, rows: o1 - o0, values: y, src_rows: y_rows, skip: o0 - first };
        match reuse {
            true => pending.replace(done).map_or(Ok(()), |b| b.write(&mut out))?,
            false => done.write(&mut out)?,
        }
    }
    if let Some(b) = pending {
        b.write(&mut out)?;
    }
    Ok(out)
}

/// Bytes of temporaries per output row of a shuffle: the input rows read
/// and their space-to-depth copy, the gathered parts and their sum, and the
/// rows added.
fn shuffle_bytes_per_row(c_in: usize, w_in: usize, c_out: usize, w_out: usize, plus: bool, down: usize) -> u64 {
    let read = c_in * w_in * down;
    4 * (2 * read + 3 * c_out * w_out + usize::from(plus) * c_out * w_out) as u64
}

/// Runs a shuffle step on `x` in bands: each band of output rows from its
/// own input rows, by the same operations as the whole pass.
fn run_shuffle(
    x: &Activation,
    ShuffleOp { shuffle, plus }: ShuffleOp,
    buffers: &[Option<Activation>],
    stored: Stored,
    rows: Rows,
    device: &Device,
) -> io::Result<Activation> {
    let (c_in, h_in, w_in) = (x.channels, x.height, x.width);
    let ((h_out, w_out), c_out) = (shuffle.output_size(h_in, w_in), shuffle.c_out());
    let mut out = stored.zeroed((c_out, h_out, w_out))?;
    let band = rows.for_pass(shuffle_bytes_per_row(c_in, w_in, c_out, w_out, plus.is_some(), shuffle.down()), h_out);
    for o0 in (0..h_out).step_by(band) {
        let o1 = (o0 + band).min(h_out);
        let (i0, i1, first) = shuffle.input_rows(o0, o1, h_in);
        let y = shuffle.forward(kernels::tensor(x.read_rows(i0, i1)?, [1, c_in, i1 - i0, w_in], device));
        let y_rows = y.dims()[2];
        let mut y = kernels::values(y);
        if let Some(buffer) = plus {
            let r = buffers[buffer.index()].as_ref().expect("a residual is a live buffer");
            add_rows(&mut y, &r.read_rows(o0, o1)?, y_rows, o0 - first, (o1 - o0) * w_out);
        }
        Band { row: o0, rows: o1 - o0, values: y, src_rows: y_rows, skip: o0 - first }.write(&mut out)?;
    }
    Ok(out)
}

/// Computed rows waiting to be stored: rows `[row, row + rows)` are rows
/// `skip..` of `values` (`[C, src_rows, W]`).
struct Band {
    row: usize,
    rows: usize,
    values: Vec<f32>,
    src_rows: usize,
    skip: usize,
}

impl Band {
    fn write(self, out: &mut Activation) -> io::Result<()> {
        out.write_rows(self.row, self.rows, &self.values, self.src_rows, self.skip)
    }
}

/// Adds `res` (`[C, rows, W]`) into `y` (`[C, y_rows, W]`) from row `skip` on.
fn add_rows(y: &mut [f32], res: &[f32], y_rows: usize, skip: usize, band_plane: usize) {
    let channels = res.len() / band_plane;
    let y_plane = y.len() / channels;
    let row = y_plane / y_rows;
    y.par_chunks_mut(y_plane)
        .zip(res.par_chunks(band_plane))
        .for_each(|(yc, rc)| add(&mut yc[skip * row..][..band_plane], rc));
}

multiversion! {
    /// `y += x`.
    fn add(y: &mut [f32], x: &[f32]) {
        for (y, x) in y.iter_mut().zip(x) {
            *y += x;
        }
    }
}
