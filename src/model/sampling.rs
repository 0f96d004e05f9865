//! Resolution changes: the encoder's `Downsample2D` and the decoder's `Upsample2D`.

use super::Params;
use super::graph::{Buffer, Builder, ConvOp, Resample};
use super::layers::Conv2d;

/// Stride-2 3x3 convolution. diffusers pads only right and bottom by one
/// pixel (`F.pad(x, (0, 1, 0, 1))`) and then convolves with no padding; the
/// asymmetric padding is expressed directly in the convolution options.
#[derive(Debug, Clone)]
pub struct Downsample2d {
    pub conv: Conv2d,
}

impl Downsample2d {
    pub fn load(p: &mut impl Params, name: &str, channels: usize) -> Self {
        let conv = Conv2d::load_with(p, &format!("{name}.conv"), channels, channels, 3, 2, [(0, 1), (0, 1)]);
        Self { conv }
    }

    /// `[B, C, H, W] -> [B, C, H/2, W/2]`
    pub fn describe<'m>(&'m self, b: &mut Builder<'m>, x: Buffer) -> Buffer {
        b.conv(x, ConvOp::new(&self.conv).resampled(Resample::Down2))
    }
}

/// Nearest-neighbour x2 upsampling followed by a 3x3 convolution.
#[derive(Debug, Clone)]
pub struct Upsample2d {
    pub conv: Conv2d,
}

impl Upsample2d {
    pub fn load(p: &mut impl Params, name: &str, channels: usize) -> Self {
        Self { conv: Conv2d::load(p, &format!("{name}.conv"), channels, channels, 3) }
    }

    /// `[B, C, H, W] -> [B, C, 2H, 2W]`
    pub fn describe<'m>(&'m self, b: &mut Builder<'m>, x: Buffer) -> Buffer {
        b.conv(x, ConvOp::new(&self.conv).resampled(Resample::Up2))
    }
}
