//! diffusers `Encoder`: image `[B, 3, H, W]` to posterior moments `[B, 2C, H/8, W/8]`.

use super::Params;
use super::attention::Attention;
use super::config::AutoencoderKlConfig;
use super::graph::{Buffer, Builder, ConvOp};
use super::layers::{Conv2d, GroupNorm, Norm};
use super::resnet::{self, ResnetBlock2d};
use super::sampling::Downsample2d;

#[derive(Debug, Clone)]
pub struct Encoder {
    pub conv_in: Conv2d,
    pub down_blocks: Vec<DownEncoderBlock2d>,
    pub mid_block: UNetMidBlock2d,
    pub conv_norm_out: Norm,
    pub conv_out: Conv2d,
}

impl Encoder {
    pub fn load(p: &mut impl Params, name: &str, cfg: &AutoencoderKlConfig) -> Self {
        let ch = &cfg.block_out_channels;
        let groups = cfg.norm_num_groups;
        let last = ch.len() - 1;
        let down_blocks = (0..ch.len())
            .map(|i| {
                let c_in = if i == 0 { ch[0] } else { ch[i - 1] };
                let block = format!("{name}.down_blocks.{i}");
                DownEncoderBlock2d::load(p, &block, c_in, ch[i], cfg.layers_per_block, groups, i != last)
            })
            .collect();
        Self {
            conv_in: Conv2d::load(p, &format!("{name}.conv_in"), cfg.in_channels, ch[0], 3),
            down_blocks,
            mid_block: UNetMidBlock2d::load(
                p,
                &format!("{name}.mid_block"),
                ch[last],
                groups,
                cfg.mid_block_add_attention,
            ),
            conv_norm_out: GroupNorm::load(p, &format!("{name}.conv_norm_out"), ch[last], groups).into(),
            // double_z: mean and log-variance.
            conv_out: Conv2d::load(p, &format!("{name}.conv_out"), ch[last], 2 * cfg.latent_channels, 3),
        }
    }

    /// `[B, 3, H, W] -> [B, 2C, H/8, W/8]`
    pub fn describe<'m>(&'m self, b: &mut Builder<'m>, x: Buffer) -> Buffer {
        let h = b.conv(x, ConvOp::new(&self.conv_in));
        let h = self.down_blocks.iter().fold(h, |h, block| block.describe(b, h));
        let h = self.mid_block.describe(b, h);
        b.conv(h, ConvOp::new(&self.conv_out).normed(&self.conv_norm_out))
    }
}

/// ResNets at one resolution, then (except at the last level) a downsample.
#[derive(Debug, Clone)]
pub struct DownEncoderBlock2d {
    pub resnets: Vec<ResnetBlock2d>,
    pub downsamplers: Option<Downsample2d>,
}

impl DownEncoderBlock2d {
    fn load(
        p: &mut impl Params,
        name: &str,
        c_in: usize,
        c_out: usize,
        layers: usize,
        groups: usize,
        downsample: bool,
    ) -> Self {
        let resnets =
            resnet::load_stack(name, c_in, c_out, layers, |n, ci, co| ResnetBlock2d::load(p, n, ci, co, groups));
        let downsamplers = downsample.then(|| Downsample2d::load(p, &format!("{name}.downsamplers.0"), c_out));
        Self { resnets, downsamplers }
    }

    /// `[B, C_in, H, W] -> [B, C_out, H/2, W/2]` (no downsample at the last level).
    pub fn describe<'m>(&'m self, b: &mut Builder<'m>, x: Buffer) -> Buffer {
        let h = resnet::describe_stack(&self.resnets, b, x);
        match &self.downsamplers {
            Some(down) => down.describe(b, h),
            None => h,
        }
    }
}

/// The mid block shared by encoder and decoder: resnet, attention, resnet.
#[derive(Debug, Clone)]
pub struct UNetMidBlock2d {
    pub resnets: [ResnetBlock2d; 2],
    pub attentions: Option<Attention>,
}

impl UNetMidBlock2d {
    pub fn load<P: Params>(p: &mut P, name: &str, channels: usize, groups: usize, attention: bool) -> Self {
        let resnet =
            |p: &mut P, j: usize| ResnetBlock2d::load(p, &format!("{name}.resnets.{j}"), channels, channels, groups);
        let first = resnet(p, 0);
        let attentions = attention.then(|| Attention::load(p, &format!("{name}.attentions.0"), channels, groups));
        let second = resnet(p, 1);
        Self { resnets: [first, second], attentions }
    }

    /// The Wan / Qwen-Image VAE's `MidBlock`: the same blocks, with RMS
    /// norms and the Wan attention (always present); causal 3D convolutions,
    /// or their 2D form (`conv3d` false: Qwen-Image 2.1).
    pub fn load_wan(p: &mut impl Params, name: &str, channels: usize, conv3d: bool) -> Self {
        let first = ResnetBlock2d::load_wan(p, &format!("{name}.resnets.0"), channels, channels, conv3d);
        let attention = Attention::load_wan(p, &format!("{name}.attentions.0"), channels);
        let second = ResnetBlock2d::load_wan(p, &format!("{name}.resnets.1"), channels, channels, conv3d);
        Self { resnets: [first, second], attentions: Some(attention) }
    }

    /// `[B, C, H, W] -> [B, C, H, W]`
    pub fn describe<'m>(&'m self, b: &mut Builder<'m>, x: Buffer) -> Buffer {
        let mut h = self.resnets[0].describe(b, x);
        if let Some(attention) = &self.attentions {
            h = b.attention(h, attention);
        }
        self.resnets[1].describe(b, h)
    }
}
