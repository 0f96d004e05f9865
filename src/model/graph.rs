//! The one description of a VAE's encoder and decoder (`AutoencoderKL`'s, and
//! the Wan / Qwen-Image VAE's for one frame): a list of steps over numbered
//! buffers, which both executors run.
//!
//! - [`Graph::forward`] is the plain forward pass, on any device, through
//!   burn tensors and the fused CPU kernels.
//! - [`crate::tiling`] runs the same steps over whole activations computed in
//!   bands of rows, in bounded memory, and estimates their peak memory.
//!
//! # Steps
//!
//! A [`Step`] reads one buffer and writes a new one; buffer 0 is the graph's
//! input and every other buffer is the output of exactly one step. A step is
//! one of the primitives both executors know ([`Op`]):
//!
//! - [`Op::Conv`]: everything between two norms. An optional norm + SiLU
//!   (a [`Norm`]: GroupNorm, or the per-pixel RMS norm), one convolution
//!   ([`Resample`]: same size, after a nearest x2 upsampling, or stride 2
//!   down; it may change the channel count), and optionally a [`Residual`]:
//!   an earlier buffer added to the result, through a 1x1 shortcut
//!   convolution or as it is. Being local, it can be computed in bands of
//!   rows with the halo its convolution needs; GroupNorm statistics are
//!   those of the whole input (the RMS norm needs none).
//! - [`Op::Attention`]: the mid block's self-attention over all positions,
//!   with its own norm and residual. It runs on the whole activation.
//! - [`Op::Shuffle`]: a parameter-free rearrangement between space and
//!   channels within cells of 2x2 pixels ([`Shuffle`]: Wan 2.2's patchify,
//!   the residual blocks' `AvgDown3D` and `DupUp3D` shortcuts), plus
//!   optionally an earlier buffer of the output's shape. Local with no
//!   halo: a band of output rows reads its own input rows.
//!
//! Each executor drops a buffer once the last step that reads it has run
//! ([`Graph::last_reads`]), so the plain pass hands an activation read for
//! the last time to the kernels by value (no copy) and the banded pass can
//! overwrite it in place.
//!
//! # Adding a block
//!
//! A block type (`ResnetBlock2d`, `UNetMidBlock2d`, an up or down block, the
//! encoder or decoder itself) states its topology once, in a `describe`
//! method that takes the [`Builder`] and its input buffer and returns its
//! output buffer:
//!
//! ```ignore
//! impl ResnetBlock2d {
//!     pub fn describe<'m>(&'m self, b: &mut Builder<'m>, x: Buffer) -> Buffer {
//!         let h = b.conv(x, ConvOp::new(&self.conv1).normed(&self.norm1));
//!         b.conv(h, ConvOp::new(&self.conv2).normed(&self.norm2).plus(x, self.conv_shortcut.as_ref()))
//!     }
//! }
//! ```
//!
//! A new block made of these primitives needs its `describe` and nothing
//! else: both executors, the memory estimate and the liveness follow from
//! the steps it adds (the tests below add one). Only a new primitive, an
//! operation neither step can express, needs a new [`Op`] and its banded
//! form in `tiling/program.rs`.

use burn::tensor::Tensor;

use super::attention::Attention;
use super::layers::{Conv2d, Norm};
use super::shuffle::Shuffle;

/// An activation `[B, C, H, W]` that a step writes and later steps read.
/// Only a [`Builder`] makes them, so a step reads only buffers written before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Buffer(usize);

impl Buffer {
    /// The graph's input.
    pub const INPUT: Buffer = Buffer(0);

    /// Its number: 0 for the input, then in the order the steps write them.
    pub fn index(self) -> usize {
        self.0
    }
}

/// How a convolution maps input rows to output rows.
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
    /// The output's `(H, W)` for an input of `(h, w)`.
    pub fn output_size(self, h: usize, w: usize) -> (usize, usize) {
        match self {
            Resample::Same => (h, w),
            Resample::Up2 => (2 * h, 2 * w),
            Resample::Down2 => (h / 2, w / 2),
        }
    }

    /// How many times the convolution's input is upsampled first.
    pub fn up(self) -> usize {
        match self {
            Resample::Up2 => 2,
            Resample::Same | Resample::Down2 => 1,
        }
    }
}

/// An earlier buffer added to a convolution's result.
#[derive(Debug, Clone, Copy)]
pub struct Residual<'m> {
    pub buffer: Buffer,
    /// A 1x1 projection of it, where the channel count changes.
    pub shortcut: Option<&'m Conv2d>,
}

/// `conv(silu(norm(x)))` (the norm optional), resampled, plus a residual.
#[derive(Debug, Clone, Copy)]
pub struct ConvOp<'m> {
    pub norm: Option<&'m Norm>,
    pub conv: &'m Conv2d,
    pub resample: Resample,
    pub residual: Option<Residual<'m>>,
}

impl<'m> ConvOp<'m> {
    /// `conv` alone, same size.
    pub fn new(conv: &'m Conv2d) -> Self {
        Self { norm: None, conv, resample: Resample::Same, residual: None }
    }

    /// With the norm (GroupNorm or RMS) + SiLU before the convolution.
    pub fn normed(self, norm: &'m Norm) -> Self {
        Self { norm: Some(norm), ..self }
    }

    /// With the convolution applied as `resample` says.
    pub fn resampled(self, resample: Resample) -> Self {
        Self { resample, ..self }
    }

    /// With `buffer` (projected by `shortcut` when there is one) added to the result.
    pub fn plus(self, buffer: Buffer, shortcut: Option<&'m Conv2d>) -> Self {
        Self { residual: Some(Residual { buffer, shortcut }), ..self }
    }
}

/// A [`Shuffle`] of the input, plus an earlier buffer of the result's shape.
#[derive(Debug, Clone, Copy)]
pub struct ShuffleOp {
    pub shuffle: Shuffle,
    /// Added to the result (the main path of a residual block whose
    /// shortcut the shuffle is).
    pub plus: Option<Buffer>,
}

/// What a step computes: a primitive both executors know.
#[derive(Debug, Clone, Copy)]
pub enum Op<'m> {
    Conv(ConvOp<'m>),
    /// The mid-block attention, over all positions at once.
    Attention(&'m Attention),
    /// A rearrangement between space and channels, with no parameters.
    Shuffle(ShuffleOp),
}

/// `output = op(input)`.
#[derive(Debug, Clone, Copy)]
pub struct Step<'m> {
    pub input: Buffer,
    pub output: Buffer,
    pub op: Op<'m>,
}

impl Step<'_> {
    /// The residual buffer this step adds, if any.
    pub fn residual(&self) -> Option<Buffer> {
        match self.op {
            Op::Conv(ConvOp { residual, .. }) => residual.map(|r| r.buffer),
            Op::Attention(_) => None,
            Op::Shuffle(ShuffleOp { plus, .. }) => plus,
        }
    }

    /// Every buffer the step reads: its input, then its residual.
    pub fn reads(&self) -> impl Iterator<Item = Buffer> {
        std::iter::once(self.input).chain(self.residual())
    }
}

/// Records the steps of a network, one block's `describe` after another.
#[derive(Debug)]
pub struct Builder<'m> {
    steps: Vec<Step<'m>>,
}

impl<'m> Builder<'m> {
    /// An empty graph and its input buffer.
    pub fn new() -> (Self, Buffer) {
        (Self { steps: Vec::new() }, Buffer::INPUT)
    }

    /// Adds a step reading `input`; returns the buffer it writes.
    pub fn push(&mut self, input: Buffer, op: Op<'m>) -> Buffer {
        let output = Buffer(self.steps.len() + 1);
        self.steps.push(Step { input, output, op });
        output
    }

    /// Adds a convolution step (see [`ConvOp`]).
    pub fn conv(&mut self, input: Buffer, op: ConvOp<'m>) -> Buffer {
        self.push(input, Op::Conv(op))
    }

    /// Adds an attention step.
    pub fn attention(&mut self, input: Buffer, attention: &'m Attention) -> Buffer {
        self.push(input, Op::Attention(attention))
    }

    /// Adds a shuffle step, `plus` added to its result.
    pub fn shuffle(&mut self, input: Buffer, shuffle: Shuffle, plus: Option<Buffer>) -> Buffer {
        self.push(input, Op::Shuffle(ShuffleOp { shuffle, plus }))
    }

    /// The graph whose result is `output`, the buffer the last step wrote.
    ///
    /// # Panics
    /// When `output` is not that buffer (a block that forgot to return the
    /// buffer it wrote last): a bug in a `describe`, not in any input.
    pub fn finish(self, output: Buffer) -> Graph<'m> {
        let last = self.steps.last().map_or(Buffer::INPUT, |s| s.output);
        assert_eq!(output, last, "a graph's output is the buffer its last step writes");
        Graph { steps: self.steps, output }
    }
}

/// Steps over numbered buffers: buffer 0 is the input, the last step's
/// output the result. Made by a [`Builder`].
#[derive(Debug)]
pub struct Graph<'m> {
    steps: Vec<Step<'m>>,
    output: Buffer,
}

impl<'m> Graph<'m> {
    pub fn steps(&self) -> &[Step<'m>] {
        &self.steps
    }

    /// The buffer holding the result.
    pub fn output(&self) -> Buffer {
        self.output
    }

    /// How many buffers the steps use, the input included.
    pub fn buffers(&self) -> usize {
        self.steps.len() + 1
    }

    /// For each buffer, the index of the step after which it is no longer
    /// read (0 for a buffer never read, such as the output).
    pub fn last_reads(&self) -> Vec<usize> {
        let mut last = vec![0; self.buffers()];
        for (i, step) in self.steps.iter().enumerate() {
            for buf in step.reads() {
                last[buf.0] = i;
            }
        }
        last
    }

    /// The plain forward pass: `x` (`[B, C, H, W]`) through every step, each
    /// buffer dropped after its last read and handed over by value there.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let last = self.last_reads();
        let mut buffers: Vec<Option<Tensor<4>>> = vec![None; self.buffers()];
        buffers[0] = Some(x);
        for (i, step) in self.steps.iter().enumerate() {
            // A buffer read again later (or again by this step) is shared;
            // otherwise it is moved out, so that the kernels need no copy.
            let mut read = |buf: Buffer, again: bool| {
                let slot = &mut buffers[buf.0];
                let value = if again { slot.clone() } else { slot.take() };
                value.expect("a Builder's steps read only buffers written before them")
            };
            let residual = step.residual();
            let x = read(step.input, last[step.input.0] != i || residual == Some(step.input));
            let y = match step.op {
                Op::Attention(attention) => attention.forward(x),
                Op::Shuffle(ShuffleOp { shuffle, plus }) => {
                    let y = shuffle.forward(x);
                    match plus {
                        // The main path plus the shortcut, as diffusers adds them.
                        Some(buffer) => read(buffer, last[buffer.0] != i) + y,
                        None => y,
                    }
                }
                Op::Conv(op) => {
                    let x = match op.norm {
                        Some(norm) => norm.forward_silu(x),
                        None => x,
                    };
                    let y = match op.resample {
                        Resample::Up2 => op.conv.forward_upsampled(x, 2),
                        Resample::Same | Resample::Down2 => op.conv.forward(x),
                    };
                    match op.residual {
                        Some(Residual { buffer, shortcut }) => {
                            let r = read(buffer, last[buffer.0] != i);
                            // output_scale_factor is 1.0 in every VAE block.
                            match shortcut {
                                Some(conv) => conv.forward(r) + y,
                                None => r + y,
                            }
                        }
                        None => y,
                    }
                }
            };
            buffers[step.output.0] = Some(y);
        }
        buffers[self.output.0].take().expect("the last step writes the output")
    }
}

#[cfg(test)]
mod tests {
    //! A block type made up here, in the model alone, runs banded exactly as
    //! it runs whole: the tiling executor needs nothing for it.

    use burn::tensor::{Device, TensorData};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::model::layers::Linear;
    use crate::model::testing::{banded, bits_differ, values};
    use crate::model::{GroupNorm, ResnetBlock2d, VAE_NORM_EPS};
    use crate::tiling::{self, Plan, Rows, Spill, Storage, TileOptions};

    /// Made up: three normed convolutions with the block's input added once,
    /// at the end (two ResNets sharing one residual), so that the input stays
    /// live across three steps.
    struct TripleConvBlock {
        norms: [Norm; 3],
        convs: [Conv2d; 3],
        conv_shortcut: Option<Conv2d>,
    }

    impl TripleConvBlock {
        fn describe<'m>(&'m self, b: &mut Builder<'m>, x: Buffer) -> Buffer {
            let h = b.conv(x, ConvOp::new(&self.convs[0]).normed(&self.norms[0]));
            let h = b.conv(h, ConvOp::new(&self.convs[1]).normed(&self.norms[1]));
            b.conv(h, ConvOp::new(&self.convs[2]).normed(&self.norms[2]).plus(x, self.conv_shortcut.as_ref()))
        }
    }

    /// Made up: a convolution alone, adding its own input (the step reads
    /// one buffer twice, so the banded pass must not overwrite it in place).
    struct SkipConvBlock {
        conv: Conv2d,
    }

    impl SkipConvBlock {
        fn describe<'m>(&'m self, b: &mut Builder<'m>, x: Buffer) -> Buffer {
            b.conv(x, ConvOp::new(&self.conv).plus(x, None))
        }
    }

    struct Weights {
        rng: ChaCha8Rng,
        device: Device,
    }

    impl Weights {
        fn values(&mut self, n: usize, scale: f32) -> Vec<f32> {
            (0..n).map(|_| self.rng.random_range(-scale..scale)).collect()
        }

        fn tensor<const D: usize>(&mut self, shape: [usize; D], scale: f32) -> Tensor<D> {
            let values = self.values(shape.iter().product(), scale);
            Tensor::from_data(TensorData::new(values, shape), &self.device)
        }

        fn conv_with(
            &mut self,
            c_in: usize,
            c_out: usize,
            k: usize,
            stride: usize,
            pad: [(usize, usize); 2],
        ) -> Conv2d {
            // About unit gain: a uniform weight of this scale over c_in * k * k inputs.
            let scale = (3.0 / (c_in * k * k) as f32).sqrt();
            let (weight, bias) = (self.tensor([c_out, c_in, k, k], scale), self.tensor([c_out], 0.1));
            Conv2d::from_tensors(weight, bias, c_in, c_out, k, stride, pad)
        }

        fn conv(&mut self, c_in: usize, c_out: usize, k: usize) -> Conv2d {
            self.conv_with(c_in, c_out, k, 1, [(k / 2, k / 2); 2])
        }

        fn norm(&mut self, channels: usize) -> Norm {
            let weight = Tensor::from_data(TensorData::new(self.values(channels, 0.2), [channels]), &self.device) + 1.0;
            GroupNorm::new(weight, self.tensor([channels], 0.1), 4, VAE_NORM_EPS).into()
        }

        fn linear(&mut self, c: usize) -> Linear {
            let scale = (3.0 / c as f32).sqrt();
            Linear { weight: self.tensor([c, c], scale), bias: self.tensor([c], 0.1) }
        }
    }

    /// A tiny network with the made-up blocks among the real ones.
    struct Network {
        conv_in: Conv2d,
        block: TripleConvBlock,
        skip: SkipConvBlock,
        down: Conv2d,
        resnet: ResnetBlock2d,
        attention: Attention,
        up: Conv2d,
        norm_out: Norm,
        conv_out: Conv2d,
    }

    impl Network {
        fn random(device: &Device) -> Self {
            let mut w = Weights { rng: ChaCha8Rng::seed_from_u64(19), device: device.clone() };
            Self {
                conv_in: w.conv(3, 8, 3),
                block: TripleConvBlock {
                    norms: [w.norm(8), w.norm(16), w.norm(16)],
                    convs: [w.conv(8, 16, 3), w.conv(16, 16, 3), w.conv(16, 16, 3)],
                    conv_shortcut: Some(w.conv(8, 16, 1)),
                },
                skip: SkipConvBlock { conv: w.conv(16, 16, 3) },
                down: w.conv_with(16, 16, 3, 2, [(0, 1), (0, 1)]),
                resnet: ResnetBlock2d {
                    norm1: w.norm(16),
                    conv1: w.conv(16, 16, 3),
                    norm2: w.norm(16),
                    conv2: w.conv(16, 16, 3),
                    conv_shortcut: None,
                },
                attention: Attention {
                    norm: w.norm(16),
                    to_q: w.linear(16),
                    to_k: w.linear(16),
                    to_v: w.linear(16),
                    to_out: w.linear(16),
                },
                up: w.conv(16, 16, 3),
                norm_out: w.norm(16),
                conv_out: w.conv(16, 3, 3),
            }
        }

        /// `[1, 3, H, W] -> [1, 3, H, W]`
        fn graph(&self) -> Graph<'_> {
            let (mut b, x) = Builder::new();
            let h = b.conv(x, ConvOp::new(&self.conv_in));
            let h = self.block.describe(&mut b, h);
            let h = self.skip.describe(&mut b, h);
            let h = b.conv(h, ConvOp::new(&self.down).resampled(Resample::Down2));
            let h = self.resnet.describe(&mut b, h);
            let h = b.attention(h, &self.attention);
            let h = b.conv(h, ConvOp::new(&self.up).resampled(Resample::Up2));
            let y = b.conv(h, ConvOp::new(&self.conv_out).normed(&self.norm_out));
            b.finish(y)
        }
    }

    #[test]
    fn made_up_block_runs_banded_as_whole() {
        let device = Device::flex();
        let network = Network::random(&device);
        let graph = network.graph();
        assert_eq!(graph.steps().len(), 11, "four steps of the made-up blocks, two of the ResNet, five others");
        let (h, w) = (36, 20);
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let image: Vec<f32> = (0..3 * h * w).map(|_| rng.random_range(-1.0..1.0)).collect();
        let x = || Tensor::<4>::from_data(TensorData::new(image.clone(), [1, 3, h, w]), &device);
        let whole = values(graph.forward(x()));
        assert_eq!(whole.len(), 3 * h * w);
        // Bands of 8 rows (4 at half resolution), of 10 (bands that don't
        // divide the image), and one band for the whole.
        for rows in [8, 10, 64] {
            let banded = banded(&graph, x(), rows, h);
            let err = whole.iter().zip(&banded).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            // Bands start on tile boundaries (multiples of 4 rows), so each
            // convolution computes the whole pass's Winograd tiles, and the
            // GroupNorm coefficients come out the same: identical, not
            // merely close.
            let differ = bits_differ(&whole, &banded);
            assert_eq!(differ, 0, "{rows}-row bands differ from the whole pass (max abs difference {err:e})");
        }
        // The planner sees the block's steps too: untiled when memory allows,
        // banded under a budget smaller than the whole pass's estimate, with
        // every activation spilled to disk under one too small for any.
        let unbounded = TileOptions { max_memory: u64::MAX, ..TileOptions::default() };
        assert!(matches!(unbounded.plan(&graph, (3, h, w), h, 0), Plan::Whole { estimate } if estimate > 0));
        let tmp = tempfile::tempdir().unwrap();
        let tight = TileOptions { max_memory: 1, tmp_dir: tmp.path().to_owned(), ..TileOptions::default() };
        let plan = tight.plan(&graph, (3, h, w), h, 0);
        let Plan::Banded { storage: Storage::F16, spill: Some(spill), .. } = &plan else { panic!("{plan:?}") };
        assert_eq!((spill.above, spill.dir.as_path()), (0, tmp.path()));
        assert!(spill.disk >= (16 * h * w * 2) as u64, "{spill:?}");
        // Whatever the budget, the plan's estimate (of a large image, the
        // weights' 40 MiB resident) stays within it, unless even every
        // activation on disk and the narrowest bands would not.
        let (size, resident) = (2048, 40 << 20);
        const MIN_BAND: u64 = 32 << 20;
        for budget_mib in [48, 64, 100, 150, 200, 300, 450, 700, 1000, 1500, 2500] {
            let budget = budget_mib << 20;
            let options = TileOptions { max_memory: budget, tmp_dir: tmp.path().to_owned(), ..TileOptions::default() };
            match options.plan(&graph, (3, size, size), size, resident) {
                Plan::Whole { estimate } | Plan::Banded { estimate, .. } if estimate <= budget => {}
                Plan::Banded { spill: Some(Spill { above: 0, .. }), rows: Rows::Budget(MIN_BAND), .. } => {}
                plan => panic!("{budget_mib} MiB: {plan:?}"),
            }
        }
        // Spilled activations hold the same values as those in memory, in
        // both storages: the results are identical, and leave no file behind.
        for storage in [Storage::F32, Storage::F16] {
            let rows = Rows::Image { rows: 10, image_height: h };
            let in_memory = Plan::Banded { storage, rows, estimate: 0, spill: None };
            let on_disk = Plan::Banded { storage, rows, estimate: 0, spill: Some(spill.clone()) };
            let in_memory = values(tiling::run(&graph, x(), &in_memory).unwrap());
            let on_disk = values(tiling::run(&graph, x(), &on_disk).unwrap());
            let differ = bits_differ(&in_memory, &on_disk);
            assert_eq!(differ, 0, "{storage:?}: spilled bands differ from bands in memory");
        }
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
        // A folder without the room is refused before the run starts.
        let full = Spill { disk: u64::MAX, ..spill.clone() };
        let plan = Plan::Banded { storage: Storage::F16, rows: Rows::Budget(0), estimate: 0, spill: Some(full) };
        let err = tiling::run(&graph, x(), &plan).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}: activations spilled to disk need", tmp.path().display())), "{err}");
        assert!(err.contains("GiB there") && err.contains("free (--tmp-dir"), "{err}");
    }

    #[test]
    fn liveness_follows_the_steps() {
        let network = Network::random(&Device::flex());
        let graph = network.graph();
        let last = graph.last_reads();
        // The made-up block's input (buffer 1) is read by its first step
        // (index 1) and, as the residual, by its third (index 3).
        assert_eq!(last[1], 3);
        assert_eq!(graph.steps()[3].residual(), Some(graph.steps()[0].output));
        // The conv-only block reads its input (buffer 4) twice, in step 4 alone.
        let skip = graph.steps()[4];
        assert_eq!((skip.input, skip.residual()), (Buffer(4), Some(Buffer(4))));
        assert_eq!(last[4], 4);
        assert_eq!(graph.output(), Buffer(graph.buffers() - 1));
    }
}
