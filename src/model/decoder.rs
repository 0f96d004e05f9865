//! diffusers `Decoder`: latent `[B, C, h, w]` to image `[B, 3, 8h, 8w]`.

use super::Params;
use super::config::AutoencoderKlConfig;
use super::encoder::UNetMidBlock2d;
use super::graph::{Buffer, Builder, ConvOp};
use super::layers::{Conv2d, GroupNorm, Norm};
use super::resnet::{self, ResnetBlock2d};
use super::sampling::Upsample2d;

#[derive(Debug, Clone)]
pub struct Decoder {
    pub conv_in: Conv2d,
    pub mid_block: UNetMidBlock2d,
    /// From the latent side up: widths are `block_out_channels` reversed.
    pub up_blocks: Vec<UpDecoderBlock2d>,
    pub conv_norm_out: Norm,
    pub conv_out: Conv2d,
}

impl Decoder {
    pub fn load(p: &mut impl Params, name: &str, cfg: &AutoencoderKlConfig) -> Self {
        let reversed: Vec<usize> = cfg.decoder_channels().iter().rev().copied().collect();
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
            conv_norm_out: GroupNorm::load(p, &format!("{name}.conv_norm_out"), reversed[last], groups).into(),
            conv_out: Conv2d::load(p, &format!("{name}.conv_out"), reversed[last], cfg.out_channels, 3),
        }
    }

    /// `[B, C, h, w] -> [B, 3, 8h, 8w]`
    pub fn describe<'m>(&'m self, b: &mut Builder<'m>, z: Buffer) -> Buffer {
        let h = b.conv(z, ConvOp::new(&self.conv_in));
        let h = self.mid_block.describe(b, h);
        let h = self.up_blocks.iter().fold(h, |h, block| block.describe(b, h));
        b.conv(h, ConvOp::new(&self.conv_out).normed(&self.conv_norm_out))
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
        p: &mut impl Params,
        name: &str,
        c_in: usize,
        c_out: usize,
        layers: usize,
        groups: usize,
        upsample: bool,
    ) -> Self {
        let resnets =
            resnet::load_stack(name, c_in, c_out, layers, |n, ci, co| ResnetBlock2d::load(p, n, ci, co, groups));
        let upsamplers = upsample.then(|| Upsample2d::load(p, &format!("{name}.upsamplers.0"), c_out));
        Self { resnets, upsamplers }
    }

    /// `[B, C_in, H, W] -> [B, C_out, 2H, 2W]` (no upsample at the last level).
    pub fn describe<'m>(&'m self, b: &mut Builder<'m>, x: Buffer) -> Buffer {
        let h = resnet::describe_stack(&self.resnets, b, x);
        match &self.upsamplers {
            Some(up) => up.describe(b, h),
            None => h,
        }
    }
}
