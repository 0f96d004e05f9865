//! The Wan 2.1 video VAE on one frame: diffusers' `AutoencoderKLWan` (with
//! `is_residual=False`) and `AutoencoderKLQwenImage`, which share their
//! architecture and their parameter names.
//!
//! On a single frame the causal 3D network is a 2D one, made of the blocks
//! of `AutoencoderKL` (its `Encoder` and `Decoder`, [`ResnetBlock2d`],
//! [`UNetMidBlock2d`], [`Attention`]) with RMS norms ([`RmsNorm`]) in place
//! of GroupNorms:
//!
//! - every `CausalConv3d` pads time with `kernel - 1` zero frames in front,
//!   so only its last temporal tap touches the frame
//!   ([`Conv2d::load_causal`]);
//! - the `time_conv` of a temporal up- or downsampling is skipped for the
//!   first frame: its weights are in the file but unused ([`Params::unused`]);
//! - a spatial downsampling is `ZeroPad2d((0, 1, 0, 1))` + a stride-2 3x3
//!   convolution, as [`Resample::Down2`]; an upsampling is nearest-exact x2
//!   (nearest, at x2) + a 3x3 convolution that halves the channels, as
//!   [`Resample::Up2`].
//!
//! The encoder's `down_blocks` is one flat list (each level's residual
//! blocks, then its resampling); here it is regrouped into the levels of
//! `AutoencoderKL`'s `DownEncoderBlock2D`, so that both VAEs describe their
//! steps with the same code.
//!
//! [`ResnetBlock2d`]: super::ResnetBlock2d
//! [`UNetMidBlock2d`]: super::UNetMidBlock2d
//! [`Attention`]: super::Attention
//! [`Resample::Down2`]: super::Resample::Down2
//! [`Resample::Up2`]: super::Resample::Up2

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::Params;
use super::autoencoder::{self, DiagonalGaussian};
use super::decoder::{Decoder, UpDecoderBlock2d};
use super::encoder::{DownEncoderBlock2d, Encoder, UNetMidBlock2d};
use super::graph::Graph;
use super::layers::{Conv2d, RmsNorm};
use super::resnet::{self, ResnetBlock2d};
use super::sampling::{Downsample2d, Upsample2d};

/// The architecture part of `AutoencoderKLWan`'s / `AutoencoderKLQwenImage`'s
/// `config.json` (their names; `attn_scales` is empty in every released VAE
/// and not supported).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WanConfig {
    /// Width of the first level (96).
    pub base_dim: usize,
    /// Latent channels (16).
    pub z_dim: usize,
    /// Width of each level as a multiple of `base_dim`, from the image side down.
    pub dim_mult: Vec<usize>,
    /// Residual blocks per encoder level (the decoder has one more per level).
    pub num_res_blocks: usize,
    /// Per downsampling (one fewer than the levels): whether it also halves
    /// time, which adds a `time_conv` whose weights one frame does not use.
    /// The decoder's upsamplings are the same, reversed.
    pub temperal_downsample: Vec<bool>,
}

impl WanConfig {
    /// The VAE of Wan 2.1 and of Qwen-Image (the defaults of both diffusers classes).
    pub fn wan21() -> Self {
        Self {
            base_dim: 96,
            z_dim: 16,
            dim_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            temperal_downsample: vec![false, true, true],
        }
    }

    /// Spatial downsampling between image and latent (and upsampling back):
    /// 2^(levels - 1), 8 for Wan 2.1.
    pub fn downscale(&self) -> usize {
        1 << self.dim_mult.len().saturating_sub(1)
    }

    /// Rejects configurations the model cannot be built with (the shapes
    /// come from a file, so they can be anything): empty widths, and levels
    /// whose upsampling cannot halve them.
    pub fn check(&self) -> Result<(), String> {
        if self.base_dim == 0 || self.z_dim == 0 || self.num_res_blocks == 0 || self.dim_mult.is_empty() {
            return Err(format!("degenerate architecture {self:?}"));
        }
        if self.dim_mult.len() > 8 || self.dim_mult.iter().any(|&m| m == 0 || m > 64) {
            return Err(format!("width multipliers {:?} are out of range", self.dim_mult));
        }
        if self.dim_mult.iter().any(|m| !(self.base_dim * m).is_multiple_of(2)) {
            return Err(format!("widths {:?} x {} are not even", self.dim_mult, self.base_dim));
        }
        Ok(())
    }

    /// Whether downsampling `i` (from the image side) also halves time.
    fn temporal(&self, i: usize) -> bool {
        self.temperal_downsample.get(i).copied().unwrap_or(false)
    }
}

/// The Wan 2.1 / Qwen-Image VAE for images: encoder + `quant_conv`,
/// `post_quant_conv` + decoder.
#[derive(Debug, Clone)]
pub struct AutoencoderWan {
    pub config: WanConfig,
    pub encoder: Encoder,
    pub decoder: Decoder,
    pub quant_conv: Conv2d,
    pub post_quant_conv: Conv2d,
}

impl AutoencoderWan {
    /// Builds the model, pulling every parameter from `p` by its diffusers
    /// name (3D convolutions in their 5D shape) and declaring the unused
    /// `time_conv` tensors through [`Params::unused`].
    pub fn load(p: &mut impl Params, config: &WanConfig) -> Self {
        let z = config.z_dim;
        Self {
            encoder: load_encoder(p, "encoder", config),
            decoder: load_decoder(p, "decoder", config),
            quant_conv: Conv2d::load_causal(p, "quant_conv", 2 * z, 2 * z, 1),
            post_quant_conv: Conv2d::load_causal(p, "post_quant_conv", z, z, 1),
            config: config.clone(),
        }
    }

    /// Image in [-1, 1] `[B, 3, H, W]` (H, W multiples of 8) to the posterior.
    pub fn encode(&self, x: Tensor<4>) -> DiagonalGaussian {
        DiagonalGaussian::from_moments(self.moments(x))
    }

    /// `[B, 3, H, W] -> [B, 2 z_dim, H/8, W/8]`: mean and log-variance, stacked.
    pub fn moments(&self, x: Tensor<4>) -> Tensor<4> {
        self.encoder_graph().forward(x)
    }

    /// Unscaled latent `[B, z_dim, h, w]` to image `[B, 3, 8h, 8w]`, clamped
    /// to [-1, 1] as diffusers' `_decode` does (the graph alone does not clamp).
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        self.decoder_graph().forward(z).clamp(-1.0, 1.0)
    }

    /// The steps of [`AutoencoderWan::moments`]: encoder, then `quant_conv`.
    pub fn encoder_graph(&self) -> Graph<'_> {
        autoencoder::encoder_graph(&self.encoder, Some(&self.quant_conv))
    }

    /// The steps of [`AutoencoderWan::decode`] before its clamp:
    /// `post_quant_conv`, then decoder.
    pub fn decoder_graph(&self) -> Graph<'_> {
        autoencoder::decoder_graph(&self.decoder, Some(&self.post_quant_conv))
    }
}

/// The `time_conv` of a temporal resampling of `c` channels to `c_out`,
/// declared unused: `[c_out, c, 3, 1, 1]` (`[c_out, c, 1, 1]` in the 2D form
/// of Qwen-Image 2.1), and its bias.
pub(super) fn unused_time_conv(p: &mut impl Params, name: &str, c: usize, c_out: usize, conv3d: bool) {
    let shape: &[usize] = if conv3d { &[c_out, c, 3, 1, 1] } else { &[c_out, c, 1, 1] };
    p.unused(&format!("{name}.time_conv.weight"), shape);
    p.unused(&format!("{name}.time_conv.bias"), &[c_out]);
}

/// `WanEncoder3d`: `conv_in`, the flat `down_blocks` (regrouped by level),
/// `mid_block`, `norm_out`, SiLU, `conv_out` (to `2 z_dim` moments).
fn load_encoder(p: &mut impl Params, name: &str, cfg: &WanConfig) -> Encoder {
    let dims: Vec<usize> = std::iter::once(1).chain(cfg.dim_mult.iter().copied()).map(|m| cfg.base_dim * m).collect();
    let levels = cfg.dim_mult.len();
    // Index into the flat `down_blocks`.
    let mut k = 0;
    let mut down_blocks = Vec::with_capacity(levels);
    for i in 0..levels {
        let (c_in, c_out) = (dims[i], dims[i + 1]);
        let mut resnets = Vec::with_capacity(cfg.num_res_blocks);
        for j in 0..cfg.num_res_blocks {
            let c = if j == 0 { c_in } else { c_out };
            resnets.push(ResnetBlock2d::load_wan(p, &format!("{name}.down_blocks.{k}"), c, c_out, true));
            k += 1;
        }
        let downsamplers = (i + 1 < levels).then(|| {
            let block = format!("{name}.down_blocks.{k}");
            k += 1;
            if cfg.temporal(i) {
                unused_time_conv(p, &block, c_out, c_out, true);
            }
            let conv = Conv2d::load_with(p, &format!("{block}.resample.1"), c_out, c_out, 3, 2, [(0, 1), (0, 1)]);
            Downsample2d { conv }
        });
        down_blocks.push(DownEncoderBlock2d { resnets, downsamplers });
    }
    let last = dims[levels];
    Encoder {
        conv_in: Conv2d::load_causal(p, &format!("{name}.conv_in"), 3, dims[0], 3),
        down_blocks,
        mid_block: UNetMidBlock2d::load_wan(p, &format!("{name}.mid_block"), last, true),
        conv_norm_out: RmsNorm::load(p, &format!("{name}.norm_out"), last, 4).into(),
        conv_out: Conv2d::load_causal(p, &format!("{name}.conv_out"), last, 2 * cfg.z_dim, 3),
    }
}

/// `WanDecoder3d` (Wan 2.1: not residual): `conv_in`, `mid_block`, the
/// `up_blocks` (`num_res_blocks + 1` residual blocks, then an upsampling
/// that halves the width, so that each block after the first starts at half
/// the previous one's width), `norm_out`, SiLU, `conv_out` (to 3 channels).
fn load_decoder(p: &mut impl Params, name: &str, cfg: &WanConfig) -> Decoder {
    let top = cfg.dim_mult.last().copied().unwrap_or(1);
    let dims: Vec<usize> =
        std::iter::once(top).chain(cfg.dim_mult.iter().rev().copied()).map(|m| cfg.base_dim * m).collect();
    let levels = cfg.dim_mult.len();
    let up_blocks = (0..levels)
        .map(|i| {
            let block = format!("{name}.up_blocks.{i}");
            let (c_in, c_out) = (if i == 0 { dims[0] } else { dims[i] / 2 }, dims[i + 1]);
            let resnets = resnet::load_stack(&block, c_in, c_out, cfg.num_res_blocks + 1, |n, ci, co| {
                ResnetBlock2d::load_wan(p, n, ci, co, true)
            });
            let upsamplers = (i + 1 < levels).then(|| {
                let up = format!("{block}.upsamplers.0");
                // The upsamplings are the downsamplings reversed.
                if cfg.temporal(levels - 2 - i) {
                    unused_time_conv(p, &up, c_out, 2 * c_out, true);
                }
                Upsample2d { conv: Conv2d::load(p, &format!("{up}.resample.1"), c_out, c_out / 2, 3) }
            });
            UpDecoderBlock2d { resnets, upsamplers }
        })
        .collect();
    let last = dims[levels];
    Decoder {
        conv_in: Conv2d::load_causal(p, &format!("{name}.conv_in"), cfg.z_dim, dims[0], 3),
        mid_block: UNetMidBlock2d::load_wan(p, &format!("{name}.mid_block"), dims[0], true),
        up_blocks,
        conv_norm_out: RmsNorm::load(p, &format!("{name}.norm_out"), last, 4).into(),
        conv_out: Conv2d::load_causal(p, &format!("{name}.conv_out"), last, 3, 3),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{RandomParams, banded, bits_differ, key_shapes, random_tensor, values};
    use crate::model::{Model, Op, Resample};
    use crate::tiling::{Plan, TileOptions};

    fn tiny_config() -> WanConfig {
        WanConfig {
            base_dim: 8,
            z_dim: 4,
            dim_mult: vec![1, 2, 2],
            num_res_blocks: 1,
            temperal_downsample: vec![false, true],
        }
    }

    #[test]
    fn asks_for_every_tensor_of_the_diffusers_model() {
        let mut p = RandomParams::new(1);
        AutoencoderWan::load(&mut p, &tiny_config());
        let spec = key_shapes(include_str!("wan_keys.txt"));
        let mut asked = p.used.clone();
        asked.extend(p.unused.clone());
        assert_eq!(asked.len(), p.used.len() + p.unused.len(), "a tensor both used and unused");
        assert_eq!(asked, spec);
        // Unused: the one temporal downsampling's and the one temporal
        // upsampling's `time_conv` (the decoder's first), weight and bias.
        let unused: Vec<&str> = p.unused.keys().map(String::as_str).collect();
        assert_eq!(
            unused,
            [
                "decoder.up_blocks.0.upsamplers.0.time_conv.bias",
                "decoder.up_blocks.0.upsamplers.0.time_conv.weight",
                "encoder.down_blocks.3.time_conv.bias",
                "encoder.down_blocks.3.time_conv.weight",
            ]
        );
    }

    #[test]
    fn the_full_size_model_asks_for_its_tensors() {
        // Wan 2.1 / Qwen-Image (shapes from diffusers): 186 tensors used,
        // the 8 of four time_convs not. Empty stand-ins, as a loader hands
        // out for a skipped part: loading them does not panic.
        let mut p = RandomParams::stand_ins();
        let model = AutoencoderWan::load(&mut p, &WanConfig::wan21());
        assert_eq!((p.used.len(), p.unused.len()), (186, 8));
        assert_eq!(p.used["decoder.up_blocks.1.resnets.0.conv1.weight"], [384, 192, 3, 3, 3]);
        assert_eq!(p.used["decoder.up_blocks.2.upsamplers.0.resample.1.weight"], [96, 192, 3, 3]);
        assert_eq!(p.unused["decoder.up_blocks.0.upsamplers.0.time_conv.weight"], [768, 384, 3, 1, 1]);
        assert_eq!(p.unused["encoder.down_blocks.8.time_conv.weight"], [384, 384, 3, 1, 1]);
        let model = Model::Wan(Box::new(model));
        assert_eq!((model.downscale(), model.upscale(), model.latent_channels()), (8, 8, 16));
        assert!(model.clamps_output());
    }

    #[test]
    fn runs_banded_exactly_as_whole() {
        let model = AutoencoderWan::load(&mut RandomParams::new(3), &tiny_config());
        let (h, w) = (40, 24);
        let image = || random_tensor([1, 3, h, w], 4);
        let encoder = model.encoder_graph();
        let moments = values(encoder.forward(image()));
        assert_eq!(moments.len(), 8 * (h / 4) * (w / 4));
        let latent = || random_tensor([1, 4, h / 4, w / 4], 5);
        let decoder = model.decoder_graph();
        // Two upsamplings, each halving the width (16 -> 8).
        let ups: Vec<usize> = decoder
            .steps()
            .iter()
            .filter_map(|s| match s.op {
                Op::Conv(op) if op.resample == Resample::Up2 => Some(op.conv.c_out()),
                _ => None,
            })
            .collect();
        assert_eq!(ups, [8, 8]);
        let decoded = values(decoder.forward(latent()));
        assert_eq!(decoded.len(), 3 * h * w);
        for (graph, x, whole, what) in [
            (&encoder, &image as &dyn Fn() -> Tensor<4>, &moments, "encoder"),
            (&decoder, &latent, &decoded, "decoder"),
        ] {
            // Bands of 8 image rows (2 at the latent's), of 12 (bands that
            // do not divide the image), and one band for the whole.
            for rows in [8, 12, 64] {
                let differ = bits_differ(whole, &banded(graph, x(), rows, h));
                assert_eq!(differ, 0, "{what}: {rows}-row bands differ from the whole pass");
            }
            let [c, rows, cols] = match what {
                "encoder" => [3, h, w],
                _ => [4, h / 4, w / 4],
            };
            let tight = TileOptions { max_memory: 1, ..TileOptions::default() };
            assert!(matches!(tight.plan(graph, (c, rows, cols), h, 0), Plan::Banded { .. }));
        }
        // The decoded image before the clamp reaches beyond [-1, 1] with
        // these weights; `decode` clamps it.
        let clamped = values(model.decode(latent()));
        assert!(clamped.iter().all(|v| (-1.0..=1.0).contains(v)));
        let expect: Vec<f32> = decoded.iter().map(|v| v.clamp(-1.0, 1.0)).collect();
        assert_eq!(clamped, expect);
        let posterior = model.encode(image());
        assert_eq!(posterior.mean.dims(), [1, 4, h / 4, w / 4]);
    }
}
