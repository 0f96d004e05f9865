//! The Wan 2.2 TI2V VAE and the Qwen-Image 2.1 VAE on one frame: diffusers'
//! `AutoencoderKLWan` with `is_residual=True` and `AutoencoderKLQwenImage21`,
//! which share their architecture and parameter names.
//!
//! As for Wan 2.1 ([`super::wan`]), one frame makes the causal 3D network a
//! 2D one: each `CausalConv3d` is the 2D convolution of its last temporal
//! tap (Qwen-Image 2.1 stores those 2D convolutions directly), and the
//! `time_conv` of a temporal resampling is skipped on the first frame. What
//! differs from Wan 2.1:
//!
//! - Wan 2.2 patches the image 2x2 into 12 channels before the encoder and
//!   unpatches the decoder's 12 channels after it ([`Shuffle::Patchify`]);
//!   Qwen-Image 2.1 reads and writes 4 channels, RGBA, unpatched.
//! - Each encoder level is a `WanResidualDownBlock`: its ResNets and
//!   downsampling, plus a shortcut from the level's input, `AvgDown3D`
//!   ([`Shuffle::AvgDown`]).
//! - Each decoder level is a `WanResidualUpBlock`: ResNets, an upsampling
//!   that keeps the width (`upsample_out_dim`), plus a shortcut from the
//!   level's input, `DupUp3D` ([`Shuffle::DupUp`]); the decoder has widths of
//!   its own (`decoder_base_dim`).
//!
//! The shortcuts are parameter-free rearrangements, steps of their own in
//! the [`Graph`], so that bands stay identical to the whole pass.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::Params;
use super::autoencoder::DiagonalGaussian;
use super::encoder::UNetMidBlock2d;
use super::graph::{Buffer, Builder, ConvOp, Graph, Resample};
use super::layers::{Conv2d, Norm, RmsNorm};
use super::resnet::{self, ResnetBlock2d};
use super::shuffle::Shuffle;
use super::wan::unused_time_conv;

/// The architecture part of the `config.json` of `AutoencoderKLWan` (with
/// `is_residual`) and `AutoencoderKLQwenImage21` (their names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WanResidualConfig {
    /// Width of the encoder's first level (160 for Wan 2.2, 96 for Qwen-Image 2.1).
    pub base_dim: usize,
    /// Width of the decoder's last level, over `dim_mult[0]` (256, 144).
    pub decoder_base_dim: usize,
    /// Latent channels (48, 64).
    pub z_dim: usize,
    /// Width of each level as a multiple of the base, from the image side down.
    pub dim_mult: Vec<usize>,
    /// Residual blocks per encoder level (the decoder has one more per level).
    pub num_res_blocks: usize,
    /// Per downsampling: whether it also halves time (a `time_conv` one
    /// frame does not use, and the shortcut's zero frame). The decoder's
    /// upsamplings are the same, reversed.
    pub temperal_downsample: Vec<bool>,
    /// Channels of the encoder's `conv_in` (12: RGB patched 2x2; 4: RGBA).
    pub in_channels: usize,
    /// Channels of the decoder's `conv_out`.
    pub out_channels: usize,
    /// The image patch (2 for Wan 2.2; 1: none).
    pub patch_size: usize,
    /// Causal 3D convolutions (Wan 2.2), or their 2D image form (Qwen-Image 2.1).
    pub conv3d: bool,
}

impl WanResidualConfig {
    /// Wan 2.2 TI2V's VAE (`Wan-AI/Wan2.2-TI2V-5B-Diffusers` `vae/config.json`).
    pub fn wan22() -> Self {
        Self {
            base_dim: 160,
            decoder_base_dim: 256,
            z_dim: 48,
            dim_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            temperal_downsample: vec![false, true, true],
            in_channels: 12,
            out_channels: 12,
            patch_size: 2,
            conv3d: true,
        }
    }

    /// Qwen-Image 2.1's VAE (the defaults of `AutoencoderKLQwenImage21`).
    pub fn qwen_image21() -> Self {
        Self {
            base_dim: 96,
            decoder_base_dim: 144,
            z_dim: 64,
            dim_mult: vec![1, 2, 4, 8, 8],
            num_res_blocks: 2,
            temperal_downsample: vec![false, true, true, true],
            in_channels: 4,
            out_channels: 4,
            patch_size: 1,
            conv3d: false,
        }
    }

    /// The small models of `wan22_keys.txt` (3D convolutions, patched 2x2)
    /// and `qwenimage21_keys.txt` (2D, RGBA): the tests' configs.
    #[cfg(test)]
    pub(crate) fn tiny(conv3d: bool) -> Self {
        let (channels, patch_size) = if conv3d { (12, 2) } else { (4, 1) };
        Self {
            base_dim: 8,
            decoder_base_dim: 6,
            z_dim: 4,
            dim_mult: vec![1, 2, 2],
            num_res_blocks: 1,
            temperal_downsample: vec![false, true],
            in_channels: channels,
            out_channels: channels,
            patch_size,
            conv3d,
        }
    }

    /// Image pixels per latent position along a side: the patch times
    /// 2^(levels - 1) (16 for both).
    pub fn downscale(&self) -> usize {
        self.patch_size.max(1) << self.dim_mult.len().saturating_sub(1)
    }

    /// Channels of the image the encoder reads (3, RGB; 4, RGBA).
    pub fn image_channels(&self) -> usize {
        self.in_channels / (self.patch_size * self.patch_size).max(1)
    }

    /// Channels of the image the decoder writes.
    pub fn output_channels(&self) -> usize {
        self.out_channels / (self.patch_size * self.patch_size).max(1)
    }

    /// Widths of the encoder: `conv_in`'s output, then each level's.
    fn encoder_dims(&self) -> Vec<usize> {
        std::iter::once(1).chain(self.dim_mult.iter().copied()).map(|m| self.base_dim * m).collect()
    }

    /// Widths of the decoder: `conv_in`'s output, then each level's.
    fn decoder_dims(&self) -> Vec<usize> {
        let top = self.dim_mult.last().copied().unwrap_or(1);
        std::iter::once(top).chain(self.dim_mult.iter().rev().copied()).map(|m| self.decoder_base_dim * m).collect()
    }

    /// Whether downsampling `i` (from the image side) also halves time.
    fn temporal(&self, i: usize) -> bool {
        self.temperal_downsample.get(i).copied().unwrap_or(false)
    }

    /// The shortcut of encoder level `i`.
    fn down_shortcut(&self, i: usize) -> Shuffle {
        let dims = self.encoder_dims();
        let down = i + 1 < self.dim_mult.len();
        let factor_t = if down && self.temporal(i) { 2 } else { 1 };
        Shuffle::AvgDown { c_in: dims[i], c_out: dims[i + 1], factor_t, factor_s: if down { 2 } else { 1 } }
    }

    /// The shortcut of decoder level `i` (none at the last).
    fn up_shortcut(&self, i: usize) -> Option<Shuffle> {
        let levels = self.dim_mult.len();
        let dims = self.decoder_dims();
        (i + 1 < levels).then(|| {
            let factor_t = if self.temporal(levels - 2 - i) { 2 } else { 1 };
            Shuffle::DupUp { c_in: dims[i], c_out: dims[i + 1], factor_t, factor_s: 2 }
        })
    }

    fn patch(&self) -> Option<(Shuffle, Shuffle)> {
        (self.patch_size > 1).then(|| {
            let p = self.patch_size;
            (
                Shuffle::Patchify { channels: self.image_channels(), patch: p },
                Shuffle::Unpatchify { channels: self.output_channels(), patch: p },
            )
        })
    }

    /// Rejects configurations the model cannot be built with (the shapes
    /// come from a file, so they can be anything).
    pub fn check(&self) -> Result<(), String> {
        if self.base_dim == 0
            || self.decoder_base_dim == 0
            || self.z_dim == 0
            || self.num_res_blocks == 0
            || self.dim_mult.is_empty()
            || self.patch_size == 0
        {
            return Err(format!("degenerate architecture {self:?}"));
        }
        if self.dim_mult.len() > 8 || self.dim_mult.iter().any(|&m| m == 0 || m > 64) {
            return Err(format!("width multipliers {:?} are out of range", self.dim_mult));
        }
        let p2 = self.patch_size * self.patch_size;
        if !self.in_channels.is_multiple_of(p2) || !self.out_channels.is_multiple_of(p2) {
            return Err(format!(
                "{} input and {} output channels are not images patched {}x{}",
                self.in_channels, self.out_channels, self.patch_size, self.patch_size
            ));
        }
        for (what, c) in [("reads", self.image_channels()), ("writes", self.output_channels())] {
            if !(3..=4).contains(&c) {
                return Err(format!("the VAE {what} images of {c} channels (3, RGB, or 4, RGBA, are supported)"));
            }
        }
        let levels = self.dim_mult.len();
        let shortcuts =
            (0..levels).map(|i| self.down_shortcut(i)).chain((0..levels).filter_map(|i| self.up_shortcut(i)));
        shortcuts.chain(self.patch().into_iter().flat_map(|(a, b)| [a, b])).try_for_each(|s| s.check())
    }
}

/// `WanResidualDownBlock` on one frame: ResNets, the downsampling (none at
/// the last level), plus the `AvgDown3D` of the block's input.
#[derive(Debug, Clone)]
pub struct ResidualDownBlock {
    pub resnets: Vec<ResnetBlock2d>,
    /// `downsampler.resample.1`: zero padding bottom and right, stride 2.
    pub downsampler: Option<Conv2d>,
    pub shortcut: Shuffle,
}

impl ResidualDownBlock {
    pub fn describe<'m>(&'m self, b: &mut Builder<'m>, x: Buffer) -> Buffer {
        let h = resnet::describe_stack(&self.resnets, b, x);
        let h = match &self.downsampler {
            Some(conv) => b.conv(h, ConvOp::new(conv).resampled(Resample::Down2)),
            None => h,
        };
        b.shuffle(x, self.shortcut, Some(h))
    }
}

/// `WanResidualUpBlock` on the first frame: ResNets, the upsampling (none at
/// the last level; it keeps the width), plus the `DupUp3D` of the block's
/// input where it upsamples.
#[derive(Debug, Clone)]
pub struct ResidualUpBlock {
    pub resnets: Vec<ResnetBlock2d>,
    /// `upsampler.resample.1`: nearest x2, then a 3x3 convolution.
    pub upsampler: Option<Conv2d>,
    pub shortcut: Option<Shuffle>,
}

impl ResidualUpBlock {
    pub fn describe<'m>(&'m self, b: &mut Builder<'m>, x: Buffer) -> Buffer {
        let h = resnet::describe_stack(&self.resnets, b, x);
        let h = match &self.upsampler {
            Some(conv) => b.conv(h, ConvOp::new(conv).resampled(Resample::Up2)),
            None => h,
        };
        match self.shortcut {
            Some(shortcut) => b.shuffle(x, shortcut, Some(h)),
            None => h,
        }
    }
}

/// `WanEncoder3d` with residual blocks, after the image's patchify.
#[derive(Debug, Clone)]
pub struct ResidualEncoder {
    pub patchify: Option<Shuffle>,
    pub conv_in: Conv2d,
    pub down_blocks: Vec<ResidualDownBlock>,
    pub mid_block: UNetMidBlock2d,
    pub norm_out: Norm,
    pub conv_out: Conv2d,
}

impl ResidualEncoder {
    pub fn describe<'m>(&'m self, b: &mut Builder<'m>, x: Buffer) -> Buffer {
        let x = match self.patchify {
            Some(patchify) => b.shuffle(x, patchify, None),
            None => x,
        };
        let h = b.conv(x, ConvOp::new(&self.conv_in));
        let h = self.down_blocks.iter().fold(h, |h, block| block.describe(b, h));
        let h = self.mid_block.describe(b, h);
        b.conv(h, ConvOp::new(&self.conv_out).normed(&self.norm_out))
    }
}

/// `WanDecoder3d` with residual blocks, then the image's unpatchify.
#[derive(Debug, Clone)]
pub struct ResidualDecoder {
    pub conv_in: Conv2d,
    pub mid_block: UNetMidBlock2d,
    pub up_blocks: Vec<ResidualUpBlock>,
    pub norm_out: Norm,
    pub conv_out: Conv2d,
    pub unpatchify: Option<Shuffle>,
}

impl ResidualDecoder {
    pub fn describe<'m>(&'m self, b: &mut Builder<'m>, z: Buffer) -> Buffer {
        let h = b.conv(z, ConvOp::new(&self.conv_in));
        let h = self.mid_block.describe(b, h);
        let h = self.up_blocks.iter().fold(h, |h, block| block.describe(b, h));
        let h = b.conv(h, ConvOp::new(&self.conv_out).normed(&self.norm_out));
        match self.unpatchify {
            Some(unpatchify) => b.shuffle(h, unpatchify, None),
            None => h,
        }
    }
}

/// The Wan 2.2 / Qwen-Image 2.1 VAE for images: patchify, encoder,
/// `quant_conv`; `post_quant_conv`, decoder, unpatchify.
#[derive(Debug, Clone)]
pub struct AutoencoderWanResidual {
    pub config: WanResidualConfig,
    pub encoder: ResidualEncoder,
    pub decoder: ResidualDecoder,
    pub quant_conv: Conv2d,
    pub post_quant_conv: Conv2d,
}

impl AutoencoderWanResidual {
    /// Builds the model, pulling every parameter from `p` by its diffusers
    /// name and declaring the unused `time_conv` tensors through [`Params::unused`].
    pub fn load(p: &mut impl Params, config: &WanResidualConfig) -> Self {
        let z = config.z_dim;
        let c3 = config.conv3d;
        Self {
            encoder: load_encoder(p, "encoder", config),
            decoder: load_decoder(p, "decoder", config),
            quant_conv: Conv2d::load_wan(p, "quant_conv", 2 * z, 2 * z, 1, c3),
            post_quant_conv: Conv2d::load_wan(p, "post_quant_conv", z, z, 1, c3),
            config: config.clone(),
        }
    }

    /// Image in [-1, 1] `[B, C, H, W]` (H, W multiples of 16) to the posterior.
    pub fn encode(&self, x: Tensor<4>) -> DiagonalGaussian {
        DiagonalGaussian::from_moments(self.encoder_graph().forward(x))
    }

    /// Unscaled latent `[B, z_dim, h, w]` to image `[B, C, 16h, 16w]`,
    /// clamped to [-1, 1] as diffusers' `_decode` does.
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        self.decoder_graph().forward(z).clamp(-1.0, 1.0)
    }

    /// The steps of the encoder: patchify, encoder, `quant_conv`.
    pub fn encoder_graph(&self) -> Graph<'_> {
        let (mut b, x) = Builder::new();
        let h = self.encoder.describe(&mut b, x);
        let moments = b.conv(h, ConvOp::new(&self.quant_conv));
        b.finish(moments)
    }

    /// The steps of the decoder before its clamp: `post_quant_conv`, decoder, unpatchify.
    pub fn decoder_graph(&self) -> Graph<'_> {
        let (mut b, z) = Builder::new();
        let z = b.conv(z, ConvOp::new(&self.post_quant_conv));
        let image = self.decoder.describe(&mut b, z);
        b.finish(image)
    }
}

fn load_encoder(p: &mut impl Params, name: &str, cfg: &WanResidualConfig) -> ResidualEncoder {
    let dims = cfg.encoder_dims();
    let levels = cfg.dim_mult.len();
    let c3 = cfg.conv3d;
    let down_blocks = (0..levels)
        .map(|i| {
            let block = format!("{name}.down_blocks.{i}");
            let (c_in, c_out) = (dims[i], dims[i + 1]);
            let resnets = resnet::load_stack(&block, c_in, c_out, cfg.num_res_blocks, |n, ci, co| {
                ResnetBlock2d::load_wan(p, n, ci, co, c3)
            });
            let downsampler = (i + 1 < levels).then(|| {
                let down = format!("{block}.downsampler");
                if cfg.temporal(i) {
                    unused_time_conv(p, &down, c_out, c_out, c3);
                }
                Conv2d::load_with(p, &format!("{down}.resample.1"), c_out, c_out, 3, 2, [(0, 1), (0, 1)])
            });
            ResidualDownBlock { resnets, downsampler, shortcut: cfg.down_shortcut(i) }
        })
        .collect();
    let last = dims[levels];
    ResidualEncoder {
        patchify: cfg.patch().map(|(patchify, _)| patchify),
        conv_in: Conv2d::load_wan(p, &format!("{name}.conv_in"), cfg.in_channels, dims[0], 3, c3),
        down_blocks,
        mid_block: UNetMidBlock2d::load_wan(p, &format!("{name}.mid_block"), last, c3),
        norm_out: RmsNorm::load(p, &format!("{name}.norm_out"), last, 4).into(),
        conv_out: Conv2d::load_wan(p, &format!("{name}.conv_out"), last, 2 * cfg.z_dim, 3, c3),
    }
}

fn load_decoder(p: &mut impl Params, name: &str, cfg: &WanResidualConfig) -> ResidualDecoder {
    let dims = cfg.decoder_dims();
    let levels = cfg.dim_mult.len();
    let c3 = cfg.conv3d;
    let conv_in = Conv2d::load_wan(p, &format!("{name}.conv_in"), cfg.z_dim, dims[0], 3, c3);
    let mid_block = UNetMidBlock2d::load_wan(p, &format!("{name}.mid_block"), dims[0], c3);
    let up_blocks = (0..levels)
        .map(|i| {
            let block = format!("{name}.up_blocks.{i}");
            let (c_in, c_out) = (dims[i], dims[i + 1]);
            let resnets = resnet::load_stack(&block, c_in, c_out, cfg.num_res_blocks + 1, |n, ci, co| {
                ResnetBlock2d::load_wan(p, n, ci, co, c3)
            });
            let upsampler = (i + 1 < levels).then(|| {
                let up = format!("{block}.upsampler");
                // The upsamplings are the downsamplings reversed.
                if cfg.temporal(levels - 2 - i) {
                    unused_time_conv(p, &up, c_out, 2 * c_out, c3);
                }
                Conv2d::load(p, &format!("{up}.resample.1"), c_out, c_out, 3)
            });
            ResidualUpBlock { resnets, upsampler, shortcut: cfg.up_shortcut(i) }
        })
        .collect();
    let last = dims[levels];
    ResidualDecoder {
        conv_in,
        mid_block,
        up_blocks,
        norm_out: RmsNorm::load(p, &format!("{name}.norm_out"), last, 4).into(),
        conv_out: Conv2d::load_wan(p, &format!("{name}.conv_out"), last, cfg.out_channels, 3, c3),
        unpatchify: cfg.patch().map(|(_, unpatchify)| unpatchify),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{RandomParams, banded, bits_differ, key_shapes, random_tensor, values};
    use crate::model::{Model, Op};
    use crate::tiling::{Plan, TileOptions};

    #[test]
    fn asks_for_every_tensor_of_the_diffusers_models() {
        for (conv3d, keys) in [(true, include_str!("wan22_keys.txt")), (false, include_str!("qwenimage21_keys.txt"))] {
            let mut p = RandomParams::new(1);
            AutoencoderWanResidual::load(&mut p, &WanResidualConfig::tiny(conv3d));
            let mut asked = p.used.clone();
            asked.extend(p.unused.clone());
            assert_eq!(asked.len(), p.used.len() + p.unused.len(), "a tensor both used and unused");
            assert_eq!(asked, key_shapes(keys), "conv3d {conv3d}");
            let unused: Vec<&str> = p.unused.keys().map(String::as_str).collect();
            assert_eq!(
                unused,
                [
                    "decoder.up_blocks.0.upsampler.time_conv.bias",
                    "decoder.up_blocks.0.upsampler.time_conv.weight",
                    "encoder.down_blocks.1.downsampler.time_conv.bias",
                    "encoder.down_blocks.1.downsampler.time_conv.weight",
                ]
            );
        }
    }

    #[test]
    fn the_full_size_models_ask_for_their_tensors() {
        for (config, latent, image, class) in [
            (WanResidualConfig::wan22(), 48, 3, "AutoencoderKLWan"),
            (WanResidualConfig::qwen_image21(), 64, 4, "AutoencoderKLQwenImage21"),
        ] {
            config.check().unwrap();
            let mut p = RandomParams::stand_ins();
            let model = Model::WanResidual(Box::new(AutoencoderWanResidual::load(&mut p, &config)));
            assert_eq!((model.downscale(), model.upscale(), model.latent_channels()), (16, 16, latent));
            assert_eq!((model.image_channels(), model.class_name()), (image, class));
            assert!(model.clamps_output());
        }
        let mut p = RandomParams::stand_ins();
        AutoencoderWanResidual::load(&mut p, &WanResidualConfig::wan22());
        // diffusers' Wan 2.2 (shapes from its state dict): encoder widths 160..640, decoder
        // 1024..256, 48 channels, 12 in and out; 196 tensors, the 8 of four time_convs unused.
        assert_eq!((p.used.len(), p.unused.len()), (188, 8));
        assert_eq!(p.used["encoder.conv_in.weight"], [160, 12, 3, 3, 3]);
        assert_eq!(p.used["decoder.up_blocks.1.resnets.0.conv1.weight"], [1024, 1024, 3, 3, 3]);
        assert_eq!(p.used["decoder.up_blocks.2.resnets.0.conv1.weight"], [512, 1024, 3, 3, 3]);
        assert_eq!(p.used["decoder.up_blocks.2.upsampler.resample.1.weight"], [512, 512, 3, 3]);
        assert_eq!(p.used["decoder.conv_out.weight"], [12, 256, 3, 3, 3]);
        assert_eq!(p.unused["decoder.up_blocks.0.upsampler.time_conv.weight"], [2048, 1024, 3, 1, 1]);
    }

    #[test]
    fn runs_banded_exactly_as_whole() {
        for conv3d in [true, false] {
            let config = WanResidualConfig::tiny(conv3d);
            let model = AutoencoderWanResidual::load(&mut RandomParams::new(3), &config);
            let (h, w, f, c) = (48, 32, config.downscale(), config.image_channels());
            let image = || random_tensor([1, c, h, w], 4);
            let encoder = model.encoder_graph();
            let moments = values(encoder.forward(image()));
            assert_eq!(moments.len(), 8 * (h / f) * (w / f));
            let latent = || random_tensor([1, 4, h / f, w / f], 5);
            let decoder = model.decoder_graph();
            let decoded = values(decoder.forward(latent()));
            assert_eq!(decoded.len(), c * h * w);
            // Three shortcuts in the encoder (one an identity), two in the
            // decoder, and the patch's two.
            let shuffles = |g: &Graph| g.steps().iter().filter(|s| matches!(s.op, Op::Shuffle(_))).count();
            let patch = usize::from(conv3d);
            assert_eq!((shuffles(&encoder), shuffles(&decoder)), (3 + patch, 2 + patch));
            for (graph, x, whole, what) in [
                (&encoder, &image as &dyn Fn() -> Tensor<4>, &moments, "encoder"),
                (&decoder, &latent, &decoded, "decoder"),
            ] {
                for rows in [8, 12, 64] {
                    let differ = bits_differ(whole, &banded(graph, x(), rows, h));
                    assert_eq!(differ, 0, "{what} (conv3d {conv3d}): {rows}-row bands differ from the whole pass");
                }
                let shape = if what == "encoder" { (c, h, w) } else { (4, h / f, w / f) };
                let tight = TileOptions { max_memory: 1, ..TileOptions::default() };
                assert!(matches!(tight.plan(graph, shape, h, 0), Plan::Banded { .. }));
            }
            let clamped = values(model.decode(latent()));
            assert_eq!(clamped, decoded.iter().map(|v| v.clamp(-1.0, 1.0)).collect::<Vec<_>>());
            assert_eq!(model.encode(image()).mean.dims(), [1, 4, h / f, w / f]);
        }
    }
}
