//! `ResnetBlock2D` of diffusers, as used by the VAE (no time embedding).

use burn::tensor::Tensor;

use super::layers::{Conv2d, GroupNorm};
use crate::weights::ParamLoader;

#[derive(Debug, Clone)]
pub struct ResnetBlock2d {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    /// 1x1 projection of the input when the channel count changes.
    pub conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2d {
    pub fn load(p: &mut ParamLoader, name: &str, c_in: usize, c_out: usize, groups: usize) -> Self {
        Self {
            norm1: GroupNorm::load(p, &format!("{name}.norm1"), c_in, groups),
            conv1: Conv2d::load(p, &format!("{name}.conv1"), c_in, c_out, 3),
            norm2: GroupNorm::load(p, &format!("{name}.norm2"), c_out, groups),
            conv2: Conv2d::load(p, &format!("{name}.conv2"), c_out, c_out, 3),
            conv_shortcut: (c_in != c_out).then(|| Conv2d::load(p, &format!("{name}.conv_shortcut"), c_in, c_out, 1)),
        }
    }

    /// `[B, C_in, H, W] -> [B, C_out, H, W]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = self.conv1.forward(self.norm1.forward_silu(x.clone()));
        // Dropout is the identity at inference.
        let h = self.conv2.forward(self.norm2.forward_silu(h));
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        // output_scale_factor is 1.0 in every VAE block.
        shortcut + h
    }
}

/// The `layers` ResNets of one encoder or decoder level: the first changes the
/// width from `c_in` to `c_out`, the rest keep it.
pub fn load_stack(
    p: &mut ParamLoader,
    name: &str,
    c_in: usize,
    c_out: usize,
    layers: usize,
    groups: usize,
) -> Vec<ResnetBlock2d> {
    (0..layers)
        .map(|j| {
            let c = if j == 0 { c_in } else { c_out };
            ResnetBlock2d::load(p, &format!("{name}.resnets.{j}"), c, c_out, groups)
        })
        .collect()
}

/// Runs a stack of ResNets in order.
pub fn forward_stack(resnets: &[ResnetBlock2d], x: Tensor<4>) -> Tensor<4> {
    resnets.iter().fold(x, |h, resnet| resnet.forward(h))
}
