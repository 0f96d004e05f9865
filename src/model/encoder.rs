//! diffusers `Encoder`: image `[B, 3, H, W]` to posterior moments `[B, 2C, H/8, W/8]`.

use burn::tensor::Tensor;

use super::attention::Attention;
use super::config::AutoencoderKlConfig;
use super::layers::{Conv2d, GroupNorm};
use super::resnet::{self, ResnetBlock2d};
use super::sampling::Downsample2d;
use crate::weights::ParamLoader;

#[derive(Debug, Clone)]
pub struct Encoder {
    pub conv_in: Conv2d,
    pub down_blocks: Vec<DownEncoderBlock2d>,
    pub mid_block: UNetMidBlock2d,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

impl Encoder {
    pub fn load(p: &mut ParamLoader, name: &str, cfg: &AutoencoderKlConfig) -> Self {
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
            conv_norm_out: GroupNorm::load(p, &format!("{name}.conv_norm_out"), ch[last], groups),
            // double_z: mean and log-variance.
            conv_out: Conv2d::load(p, &format!("{name}.conv_out"), ch[last], 2 * cfg.latent_channels, 3),
        }
    }

    /// `[B, 3, H, W] -> [B, 2C, H/8, W/8]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut h = self.conv_in.forward(x);
        for block in &self.down_blocks {
            h = block.forward(h);
        }
        let h = self.mid_block.forward(h);
        self.conv_out.forward(self.conv_norm_out.forward_silu(h))
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
        p: &mut ParamLoader,
        name: &str,
        c_in: usize,
        c_out: usize,
        layers: usize,
        groups: usize,
        downsample: bool,
    ) -> Self {
        let resnets = resnet::load_stack(p, name, c_in, c_out, layers, groups);
        let downsamplers = downsample.then(|| Downsample2d::load(p, &format!("{name}.downsamplers.0"), c_out));
        Self { resnets, downsamplers }
    }

    /// `[B, C_in, H, W] -> [B, C_out, H/2, W/2]` (no downsample at the last level).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = resnet::forward_stack(&self.resnets, x);
        match &self.downsamplers {
            Some(down) => down.forward(x),
            None => x,
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
    pub fn load(p: &mut ParamLoader, name: &str, channels: usize, groups: usize, attention: bool) -> Self {
        let resnet = |p: &mut ParamLoader, j: usize| {
            ResnetBlock2d::load(p, &format!("{name}.resnets.{j}"), channels, channels, groups)
        };
        let first = resnet(p, 0);
        let attentions = attention.then(|| Attention::load(p, &format!("{name}.attentions.0"), channels, groups));
        let second = resnet(p, 1);
        Self { resnets: [first, second], attentions }
    }

    /// `[B, C, H, W] -> [B, C, H, W]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut h = self.resnets[0].forward(x);
        if let Some(attention) = &self.attentions {
            h = attention.forward(h);
        }
        self.resnets[1].forward(h)
    }
}
