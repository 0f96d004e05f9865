//! `ResnetBlock2D` of diffusers, as used by the VAE (no time embedding); the
//! Wan / Qwen-Image VAE's residual block is the same with RMS norms.

use super::Params;
use super::graph::{Buffer, Builder, ConvOp};
use super::layers::{Conv2d, GroupNorm, Norm, RmsNorm};

#[derive(Debug, Clone)]
pub struct ResnetBlock2d {
    pub norm1: Norm,
    pub conv1: Conv2d,
    pub norm2: Norm,
    pub conv2: Conv2d,
    /// 1x1 projection of the input when the channel count changes.
    pub conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2d {
    pub fn load(p: &mut impl Params, name: &str, c_in: usize, c_out: usize, groups: usize) -> Self {
        Self {
            norm1: GroupNorm::load(p, &format!("{name}.norm1"), c_in, groups).into(),
            conv1: Conv2d::load(p, &format!("{name}.conv1"), c_in, c_out, 3),
            norm2: GroupNorm::load(p, &format!("{name}.norm2"), c_out, groups).into(),
            conv2: Conv2d::load(p, &format!("{name}.conv2"), c_out, c_out, 3),
            conv_shortcut: (c_in != c_out).then(|| Conv2d::load(p, &format!("{name}.conv_shortcut"), c_in, c_out, 1)),
        }
    }

    /// The Wan / Qwen-Image VAE's `ResidualBlock` on one frame: RMS norms
    /// (`gamma` `[C, 1, 1, 1]`) and causal 3D convolutions, or their 2D form
    /// ([`Conv2d::load_wan`]), the same topology.
    pub fn load_wan(p: &mut impl Params, name: &str, c_in: usize, c_out: usize, conv3d: bool) -> Self {
        let conv = |p: &mut _, part: &str, c_in, c_out, kernel| {
            Conv2d::load_wan(p, &format!("{name}.{part}"), c_in, c_out, kernel, conv3d)
        };
        Self {
            norm1: RmsNorm::load(p, &format!("{name}.norm1"), c_in, 4).into(),
            conv1: conv(p, "conv1", c_in, c_out, 3),
            norm2: RmsNorm::load(p, &format!("{name}.norm2"), c_out, 4).into(),
            conv2: conv(p, "conv2", c_out, c_out, 3),
            conv_shortcut: (c_in != c_out).then(|| conv(p, "conv_shortcut", c_in, c_out, 1)),
        }
    }

    /// `[B, C_in, H, W] -> [B, C_out, H, W]`: two steps, the second adding
    /// the input (projected when the width changes). Dropout is the identity
    /// at inference.
    pub fn describe<'m>(&'m self, b: &mut Builder<'m>, x: Buffer) -> Buffer {
        let h = b.conv(x, ConvOp::new(&self.conv1).normed(&self.norm1));
        b.conv(h, ConvOp::new(&self.conv2).normed(&self.norm2).plus(x, self.conv_shortcut.as_ref()))
    }
}

/// The `layers` ResNets of one encoder or decoder level: the first changes the
/// width from `c_in` to `c_out`, the rest keep it.
pub fn load_stack(
    name: &str,
    c_in: usize,
    c_out: usize,
    layers: usize,
    mut load: impl FnMut(&str, usize, usize) -> ResnetBlock2d,
) -> Vec<ResnetBlock2d> {
    (0..layers).map(|j| load(&format!("{name}.resnets.{j}"), if j == 0 { c_in } else { c_out }, c_out)).collect()
}

/// A stack of ResNets, in order.
pub fn describe_stack<'m>(resnets: &'m [ResnetBlock2d], b: &mut Builder<'m>, x: Buffer) -> Buffer {
    resnets.iter().fold(x, |h, resnet| resnet.describe(b, h))
}
