//! The Stable Diffusion VAE, laid out as diffusers lays it out so that a
//! reader who knows `diffusers.AutoencoderKL` knows this code; and TAESD,
//! diffusers' `AutoencoderTiny`, which shares its latent space.
//!
//! Each block of `AutoencoderKL` states its topology once, as steps of a
//! [`Graph`] (see [`graph`]); the plain forward pass and the banded one of
//! [`crate::tiling`] both run that description. TAESD always runs whole and
//! keeps plain `forward` methods.

mod attention;
mod autoencoder;
mod config;
mod decoder;
mod encoder;
pub mod graph;
mod layers;
mod resnet;
mod sampling;
mod tiny;

pub use attention::Attention;
pub use autoencoder::{AutoencoderKl, DiagonalGaussian};
pub use config::{AutoencoderKlConfig, Family, SD15_SCALING_FACTOR};
pub use encoder::UNetMidBlock2d;
pub use graph::{Buffer, Builder, ConvOp, Graph, Op, Resample, Residual, Step};
pub use layers::{Conv2d, GroupNorm, VAE_NORM_EPS};
pub use resnet::ResnetBlock2d;
pub use tiny::{AutoencoderTiny, AutoencoderTinyBlock, AutoencoderTinyConfig, DecoderTiny, EncoderTiny, TinyLayer};

/// Where a model's parameters come from: the tensor of a diffusers name and
/// an expected shape, in the dtype and on the device the model runs on. The
/// weights loader implements it (checking every name, shape and dtype, and
/// that no tensor is left over); a test can give made-up tensors.
pub trait Params {
    fn tensor<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> burn::tensor::Tensor<D>;
}

/// The network a weights file holds: the VAE, or its tiny stand-in.
#[derive(Debug, Clone)]
pub enum Model {
    Kl(Box<AutoencoderKl>),
    Tiny(AutoencoderTiny),
}

impl Model {
    /// diffusers' class name, for reports.
    pub fn class_name(&self) -> &'static str {
        match self {
            Model::Kl(_) => "AutoencoderKL",
            Model::Tiny(_) => "AutoencoderTiny",
        }
    }

    pub fn latent_channels(&self) -> usize {
        match self {
            Model::Kl(m) => m.config.latent_channels,
            Model::Tiny(m) => m.config.latent_channels,
        }
    }

    /// Image pixels per latent position along a side, encoding (8).
    pub fn downscale(&self) -> usize {
        match self {
            Model::Kl(m) => m.config.downscale(),
            Model::Tiny(m) => m.config.downscale(),
        }
    }

    /// The same, decoding (8).
    pub fn upscale(&self) -> usize {
        match self {
            Model::Kl(m) => m.config.downscale(),
            Model::Tiny(m) => m.config.upscale(),
        }
    }
}
