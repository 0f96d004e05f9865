//! The encoder and decoder as a list of passes over whole activations, each
//! computed in bands of rows, and the loop that runs them.
//!
//! A pass is one GroupNorm + SiLU (optional) followed by one convolution, with
//! an optional residual added: everything between two GroupNorms. A band of a
//! pass reads its rows of the input plus the one or two halo rows its
//! convolution needs, so every band is exact; each GroupNorm uses statistics
//! summed over the whole input as the previous pass wrote it. The result is
//! the untiled forward pass, computed with a bounded working set.

use burn::tensor::{Device, Tensor};
use rayon::prelude::*;

use super::Rows;
use super::store::{Activation, Storage};
use crate::kernels;
use crate::model::{Attention, AutoencoderKl, Conv2d, GroupNorm, ResnetBlock2d, UNetMidBlock2d};

/// How a pass's convolution maps input rows to output rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    /// Stride 1 with "same" padding: `H -> H`.
    Same,
    /// Nearest x2, then the convolution: `H -> 2H` (decoder `Upsample2D`).
    Up2,
    /// Stride 2, padded bottom and right by one: `H -> H/2` (encoder `Downsample2D`).
    Down2,
}

impl Resample {
    fn output_size(self, h: usize, w: usize) -> (usize, usize) {
        match self {
            Resample::Same => (h, w),
            Resample::Up2 => (2 * h, 2 * w),
            Resample::Down2 => (h / 2, w / 2),
        }
    }

    /// Input rows `[i0, i1)` from which output rows `[o0, o1)` are computed
    /// exactly, and the output row that the band's first result row is.
    fn input_rows(self, o0: usize, o1: usize, h_in: usize, halo: usize) -> (usize, usize, usize) {
        match self {
            // From an even row (one more than the halo when o0 is even), so
            // that the band's 2-row convolution tiles are the whole image's.
            Resample::Same => {
                let i0 = o0.saturating_sub(halo) & !1;
                (i0, (o1 + halo).min(h_in), i0)
            }
            // Upsampled row r reads input row r / 2; the 3x3 convolution
            // needs upsampled rows o0 - 1 to o1.
            Resample::Up2 => {
                let i0 = o0.saturating_sub(1) / 2;
                (i0, (o1 / 2 + 1).min(h_in), 2 * i0)
            }
            // Output row r reads input rows 2r to 2r + 2.
            Resample::Down2 => (2 * o0, (2 * o1 + 1).min(h_in), o0),
        }
    }
}

/// What a pass computes.
#[derive(Clone, Copy)]
pub enum Step<'m> {
    /// `conv(silu(norm(x)))`, plus `shortcut(residual)` (or the residual
    /// itself) when the pass has one.
    Conv { norm: Option<&'m GroupNorm>, conv: &'m Conv2d, resample: Resample, shortcut: Option<&'m Conv2d> },
    /// The mid-block attention, over all positions at once: exact, and at the
    /// lowest resolution, so the whole activation is small.
    Attention(&'m Attention),
}

#[derive(Clone, Copy)]
pub struct Pass<'m> {
    pub input: usize,
    pub residual: Option<usize>,
    pub output: usize,
    pub step: Step<'m>,
}

/// Passes over numbered buffers; buffer 0 is the input.
pub struct Program<'m> {
    pub passes: Vec<Pass<'m>>,
    pub output: usize,
}

impl<'m> Program<'m> {
    /// `[C, h, w]` unscaled latent to `[3, 8h, 8w]` image.
    pub fn decoder(model: &'m AutoencoderKl) -> Self {
        let d = &model.decoder;
        let mut b = Builder::default();
        let mut x = 0;
        if let Some(conv) = &model.post_quant_conv {
            x = b.conv(x, None, conv, Resample::Same);
        }
        x = b.conv(x, None, &d.conv_in, Resample::Same);
        x = b.mid(x, &d.mid_block);
        for block in &d.up_blocks {
            x = block.resnets.iter().fold(x, |x, r| b.resnet(x, r));
            if let Some(up) = &block.upsamplers {
                x = b.conv(x, None, &up.conv, Resample::Up2);
            }
        }
        let output = b.conv(x, Some(&d.conv_norm_out), &d.conv_out, Resample::Same);
        Self { passes: b.passes, output }
    }

    /// `[3, H, W]` image (H, W multiples of 8) to `[2C, H/8, W/8]` moments.
    pub fn encoder(model: &'m AutoencoderKl) -> Self {
        let e = &model.encoder;
        let mut b = Builder::default();
        let mut x = b.conv(0, None, &e.conv_in, Resample::Same);
        for block in &e.down_blocks {
            x = block.resnets.iter().fold(x, |x, r| b.resnet(x, r));
            if let Some(down) = &block.downsamplers {
                x = b.conv(x, None, &down.conv, Resample::Down2);
            }
        }
        x = b.mid(x, &e.mid_block);
        let mut output = b.conv(x, Some(&e.conv_norm_out), &e.conv_out, Resample::Same);
        if let Some(conv) = &model.quant_conv {
            output = b.conv(output, None, conv, Resample::Same);
        }
        Self { passes: b.passes, output }
    }

    /// Whether pass `i` (whose input has `c_in` channels) can write its output
    /// over its input: a same-size convolution reading that input for the
    /// last time, neither the program's input nor its output.
    fn in_place(&self, i: usize, last: &[usize], c_in: usize) -> bool {
        let pass = &self.passes[i];
        let same_size = matches!(pass.step, Step::Conv { resample: Resample::Same, conv, .. } if conv.c_out() == c_in);
        same_size && pass.input != 0 && pass.output != self.output && last[pass.input] == i
    }

    /// The pass after which each buffer is no longer read.
    fn last_reads(&self) -> Vec<usize> {
        let mut last = vec![0; self.output + 1];
        for (i, pass) in self.passes.iter().enumerate() {
            last[pass.input] = i;
            if let Some(r) = pass.residual {
                last[r] = i;
            }
        }
        last
    }

    /// Estimated peak bytes of a run on an input of `[c, h, w]`, with
    /// intermediate activations stored as `storage` (input and output in f32).
    pub fn peak(&self, (c, h, w): (usize, usize, usize), storage: Storage, rows: Rows) -> Peak {
        let last = self.last_reads();
        let mut shapes = vec![(0, 0, 0); self.output + 1];
        shapes[0] = (c, h, w);
        let bytes = |buf: usize, (c, h, w): (usize, usize, usize)| {
            let per = if buf == 0 || buf == self.output { 4 } else { storage.bytes() };
            (c * h * w) as u64 * per
        };
        let mut live = bytes(0, shapes[0]);
        let mut peak = Peak::default();
        for (i, pass) in self.passes.iter().enumerate() {
            let (c_in, h_in, w_in) = shapes[pass.input];
            let (shape, temporaries) = match pass.step {
                Step::Conv { conv, resample, .. } => {
                    let (h, w) = resample.output_size(h_in, w_in);
                    let c_res = pass.residual.map_or(0, |r| shapes[r].0);
                    let per_row = band_bytes_per_row((c_in, w_in), (conv.c_out(), w), c_res, resample);
                    ((conv.c_out(), h, w), per_row * rows.for_pass(per_row, h) as u64)
                }
                // Attention holds about seven copies of its input (read, normalised,
                // q, k, v, output, projection) and a block of scores.
                Step::Attention(_) => ((c_in, h_in, w_in), 28 * (c_in * h_in * w_in) as u64 + 64 * (1 << 20)),
            };
            shapes[pass.output] = shape;
            // In place, the output takes over the input's bytes.
            let in_place = self.in_place(i, &last, c_in);
            if !in_place {
                live += bytes(pass.output, shape);
            }
            peak.stored = peak.stored.max(live);
            peak.temporaries = peak.temporaries.max(temporaries);
            peak.together = peak.together.max(live + temporaries);
            for buf in [(!in_place).then_some(pass.input), pass.residual].into_iter().flatten() {
                if last[buf] == i {
                    live -= bytes(buf, shapes[buf]);
                }
            }
        }
        peak
    }

    /// Runs the passes on `input`, storing intermediate buffers as `storage`.
    pub fn run(&self, input: Activation, storage: Storage, rows: Rows, device: &Device) -> Activation {
        let last = self.last_reads();
        let mut buffers: Vec<Option<Activation>> = (0..=self.output).map(|_| None).collect();
        buffers[0] = Some(input);
        for (i, pass) in self.passes.iter().enumerate() {
            let is_output = pass.output == self.output;
            let storage = if is_output { Storage::F32 } else { storage };
            let c_in = buffers[pass.input].as_ref().map_or(0, |x| x.channels);
            let reuse = self.in_place(i, &last, c_in);
            let out = run_pass(pass, &mut buffers, storage, reuse, rows, device);
            buffers[pass.output] = Some(out);
            for buf in [Some(pass.input), pass.residual].into_iter().flatten() {
                if last[buf] == i {
                    buffers[buf] = None;
                }
            }
        }
        buffers[self.output].take().expect("the last pass writes the output")
    }
}

/// Memory a run needs at its peak.
#[derive(Debug, Clone, Copy, Default)]
pub struct Peak {
    /// Stored activations, at the pass that holds the most.
    pub stored: u64,
    /// Band temporaries, at the pass that needs the most.
    pub temporaries: u64,
    /// Both, at the pass where their sum is largest.
    pub together: u64,
}

impl Peak {
    /// Banded: activations live in their own memory maps, temporaries on the
    /// heap, which keeps its largest size; the two peaks add up.
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

#[derive(Default)]
struct Builder<'m> {
    passes: Vec<Pass<'m>>,
    buffers: usize,
}

impl<'m> Builder<'m> {
    fn push(&mut self, input: usize, residual: Option<usize>, step: Step<'m>) -> usize {
        self.buffers += 1;
        self.passes.push(Pass { input, residual, output: self.buffers, step });
        self.buffers
    }

    fn conv(&mut self, x: usize, norm: Option<&'m GroupNorm>, conv: &'m Conv2d, resample: Resample) -> usize {
        self.push(x, None, Step::Conv { norm, conv, resample, shortcut: None })
    }

    /// `ResnetBlock2D`: two passes, the second adding the (projected) input.
    fn resnet(&mut self, x: usize, r: &'m ResnetBlock2d) -> usize {
        let h = self.conv(x, Some(&r.norm1), &r.conv1, Resample::Same);
        let step = Step::Conv {
            norm: Some(&r.norm2),
            conv: &r.conv2,
            resample: Resample::Same,
            shortcut: r.conv_shortcut.as_ref(),
        };
        self.push(h, Some(x), step)
    }

    fn mid(&mut self, x: usize, m: &'m UNetMidBlock2d) -> usize {
        let mut x = self.resnet(x, &m.resnets[0]);
        if let Some(attention) = &m.attentions {
            x = self.push(x, None, Step::Attention(attention));
        }
        self.resnet(x, &m.resnets[1])
    }
}

/// Runs one pass. When `reuse` is set (a same-size convolution whose input
/// is read for the last time), the output overwrites the input in place:
/// each band is written one band late, once the next band has read the halo
/// rows it shares with it.
fn run_pass(
    pass: &Pass,
    buffers: &mut [Option<Activation>],
    storage: Storage,
    reuse: bool,
    rows: Rows,
    device: &Device,
) -> Activation {
    let x = buffers[pass.input].as_ref().expect("a pass reads a live buffer");
    let (c_in, h_in, w_in) = (x.channels, x.height, x.width);
    let (norm, conv, resample, shortcut) = match pass.step {
        Step::Attention(attention) => {
            let whole = kernels::tensor(x.read_rows(0, h_in), [1, c_in, h_in, w_in], device);
            return Activation::from_values(kernels::values(attention.forward(whole)), c_in, h_in, w_in);
        }
        Step::Conv { norm, conv, resample, shortcut } => (norm, conv, resample, shortcut),
    };
    let ((h_out, w_out), c_out) = (resample.output_size(h_in, w_in), conv.c_out());
    let (sums, plane) = (x.sums().to_vec(), x.plane());
    let mut out = match reuse {
        true => buffers[pass.input].take().expect("checked above").cleared_sums(),
        false => Activation::new(c_out, h_out, w_out, storage),
    };
    let mut pending: Option<Band> = None;
    let c_res = pass.residual.and_then(|r| buffers[r].as_ref()).map_or(0, |r| r.channels);
    let band = rows.for_pass(band_bytes_per_row((c_in, w_in), (c_out, w_out), c_res, resample), h_out);
    for o0 in (0..h_out).step_by(band) {
        let o1 = (o0 + band).min(h_out);
        let (i0, i1, first) = resample.input_rows(o0, o1, h_in, conv.pad_top());
        let x = if reuse { &out } else { buffers[pass.input].as_ref().expect("a pass reads a live buffer") };
        let mut band_in = kernels::tensor(x.read_rows(i0, i1), [1, c_in, i1 - i0, w_in], device);
        if let Some(norm) = norm {
            band_in = norm.forward_silu_with(band_in, &sums, plane);
        }
        let y = match resample {
            Resample::Up2 => conv.forward_upsampled(band_in, 2),
            Resample::Same | Resample::Down2 => conv.forward(band_in),
        };
        let y_rows = y.dims()[2];
        let mut y = kernels::values(y);
        if let Some(r) = pass.residual {
            let r = buffers[r].as_ref().expect("a residual is a live buffer");
            let mut res = r.read_rows(o0, o1);
            if let Some(shortcut) = shortcut {
                let t = kernels::tensor(res, [1, r.channels, o1 - o0, w_out], device);
                res = kernels::values(shortcut.forward(t));
            }
            add_rows(&mut y, &res, y_rows, o0 - first, (o1 - o0) * w_out);
        }
        let done = Band { row: o0, rows: o1 - o0, values: y, src_rows: y_rows, skip: o0 - first };
        match reuse {
            true => pending.replace(done).into_iter().for_each(|b| b.write(&mut out)),
            false => done.write(&mut out),
        }
    }
    if let Some(b) = pending {
        b.write(&mut out);
    }
    out
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
    fn write(self, out: &mut Activation) {
        out.write_rows(self.row, self.rows, &self.values, self.src_rows, self.skip);
    }
}

/// Adds `res` (`[C, rows, W]`) into `y` (`[C, y_rows, W]`) from row `skip` on.
fn add_rows(y: &mut [f32], res: &[f32], y_rows: usize, skip: usize, band_plane: usize) {
    let channels = res.len() / band_plane;
    let y_plane = y.len() / channels;
    let row = y_plane / y_rows;
    y.par_chunks_mut(y_plane).zip(res.par_chunks(band_plane)).for_each(|(yc, rc)| {
        for (d, r) in yc[skip * row..][..band_plane].iter_mut().zip(rc) {
            *d += r;
        }
    });
}

/// Image `[3, H, W]` or latent `[C, h, w]` as a whole f32 activation.
pub fn activation(x: Tensor<4>) -> Activation {
    let [_, c, h, w] = x.dims();
    Activation::from_values(kernels::values(x), c, h, w)
}
