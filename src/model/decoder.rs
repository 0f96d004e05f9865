//! diffusers `Decoder`: latent `[B, C, h, w]` to image `[B, 3, 8h, 8w]`.

use burn::tensor::Tensor;

use super::config::AutoencoderKlConfig;
use super::encoder::UNetMidBlock2d;
use super::layers::{Conv2d, GroupNorm};
use super::resnet::{self, ResnetBlock2d};
use super::sampling::Upsample2d;
use crate::weights::ParamLoader;

#[derive(Debug, Clone)]
pub struct Decoder {
    pub conv_in: Conv2d,
    pub mid_block: UNetMidBlock2d,
    /// From the latent side up: widths are `block_out_channels` reversed.
    pub up_blocks: Vec<UpDecoderBlock2d>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

impl Decoder {
    pub fn load(p: &mut ParamLoader, name: &str, cfg: &AutoencoderKlConfig) -> Self {
        let reversed: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let groups = cfg.norm_num_groups;
        let last = reversed.len() - 1;
        let up_blocks = (0..reversed.len())
            .map(|i| {
                let c_in = if i == 0 { reversed[0] } else { reversed[i - 1] };
                let block = format!("{name}.up_blocks.{i}");
                UpDecoderBlock2d::load(p, &block, c_in, reversed[i], cfg.layers_per_block + 1, groups, i != last)
            })
            .collect();
        Self {
            conv_in: Conv2d::load(p, &format!("{name}.conv_in"), cfg.latent_channels, reversed[0], 3),
            mid_block: UNetMidBlock2d::load(
                p,
                &format!("{name}.mid_block"),
                reversed[0],
                groups,
                cfg.mid_block_add_attention,
            ),
            up_blocks,
            conv_norm_out: GroupNorm::load(p, &format!("{name}.conv_norm_out"), reversed[last], groups),
            conv_out: Conv2d::load(p, &format!("{name}.conv_out"), reversed[last], cfg.out_channels, 3),
        }
    }

    /// `[B, C, h, w] -> [B, 3, 8h, 8w]`
    pub fn forward(&self, z: Tensor<4>) -> Tensor<4> {
        let h = self.conv_in.forward(z);
        let mut h = self.mid_block.forward(h);
        for block in &self.up_blocks {
            h = block.forward(h);
        }
        self.conv_out.forward(self.conv_norm_out.forward_silu(h))
    }
}

/// ResNets at one resolution, then (except at the last level) an upsample.
#[derive(Debug, Clone)]
pub struct UpDecoderBlock2d {
    pub resnets: Vec<ResnetBlock2d>,
    pub upsamplers: Option<Upsample2d>,
}

impl UpDecoderBlock2d {
    fn load(
        p: &mut ParamLoader,
        name: &str,
        c_in: usize,
        c_out: usize,
        layers: usize,
        groups: usize,
        upsample: bool,
    ) -> Self {
        let resnets = resnet::load_stack(p, name, c_in, c_out, layers, groups);
        let upsamplers = upsample.then(|| Upsample2d::load(p, &format!("{name}.upsamplers.0"), c_out));
        Self { resnets, upsamplers }
    }

    /// `[B, C_in, H, W] -> [B, C_out, 2H, 2W]` (no upsample at the last level).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = resnet::forward_stack(&self.resnets, x);
        match &self.upsamplers {
            Some(up) => up.forward(x),
            None => x,
        }
    }
}
