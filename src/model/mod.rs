//! The Stable Diffusion VAE, laid out as diffusers lays it out so that a
//! reader who knows `diffusers.AutoencoderKL` knows this code; TAESD,
//! diffusers' `AutoencoderTiny`, which shares its latent space; and the Wan
//! 2.1 / Qwen-Image VAE on one frame ([`wan`]), made of `AutoencoderKL`'s
//! blocks with RMS norms; and the Wan 2.2 / Qwen-Image 2.1 VAE on one frame
//! ([`wan22`]), whose residual blocks add parameter-free shortcuts
//! ([`Shuffle`]).
//!
//! Each block of `AutoencoderKL` states its topology once, as steps of a
//! [`Graph`] (see [`graph`]); the plain forward pass and the banded one of
//! [`crate::tiling`] both run that description, for either VAE. TAESD
//! always runs whole and keeps plain `forward` methods.

mod attention;
mod autoencoder;
mod config;
mod decoder;
mod encoder;
pub mod graph;
mod layers;
mod resnet;
mod sampling;
mod shuffle;
#[cfg(test)]
pub(crate) mod testing;
mod tiny;
pub mod wan;
pub mod wan22;

pub use attention::Attention;
pub use autoencoder::{AutoencoderKl, DiagonalGaussian};
pub use config::{AutoencoderKlConfig, Family, SD15_SCALING_FACTOR};
pub use encoder::UNetMidBlock2d;
pub use graph::{Buffer, Builder, ConvOp, Graph, Op, Resample, Residual, ShuffleOp, Step};
pub use layers::{BandNorm, Conv2d, GroupNorm, Norm, RmsNorm, VAE_NORM_EPS};
pub use resnet::ResnetBlock2d;
pub use shuffle::Shuffle;
pub use tiny::{AutoencoderTiny, AutoencoderTinyBlock, AutoencoderTinyConfig, DecoderTiny, EncoderTiny, TinyLayer};
pub use wan::{AutoencoderWan, WanConfig};
pub use wan22::{AutoencoderWanResidual, WanResidualConfig};

/// Where a model's parameters come from: the tensor of a diffusers name and
/// an expected shape, in the dtype and on the device the model runs on. The
/// weights loader implements it (checking every name, shape and dtype, and
/// that no tensor is left over); a test can give made-up tensors.
pub trait Params {
    fn tensor<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> burn::tensor::Tensor<D>;

    /// A tensor the file holds that the model does not use (the `time_conv`
    /// of a video VAE's temporal resampling, which one frame skips), of
    /// diffusers name `name` and expected shape `shape`. A weights loader
    /// checks that it is there with that shape, without reading it; by
    /// default, nothing.
    fn unused(&mut self, _name: &str, _shape: &[usize]) {}
}

/// The network a weights file holds: the VAE, its tiny stand-in, the
/// Wan 2.1 / Qwen-Image VAE, or the Wan 2.2 / Qwen-Image 2.1 VAE.
#[derive(Debug, Clone)]
pub enum Model {
    Kl(Box<AutoencoderKl>),
    Tiny(AutoencoderTiny),
    Wan(Box<AutoencoderWan>),
    WanResidual(Box<AutoencoderWanResidual>),
}

impl Model {
    /// diffusers' class name, for reports (`AutoencoderKLQwenImage` is the
    /// same network as `AutoencoderKLWan`, under the Wan name here).
    pub fn class_name(&self) -> &'static str {
        match self {
            Model::Kl(_) => "AutoencoderKL",
            Model::Tiny(_) => "AutoencoderTiny",
            Model::Wan(_) => "AutoencoderKLWan",
            Model::WanResidual(m) if !m.config.conv3d => "AutoencoderKLQwenImage21",
            Model::WanResidual(_) => "AutoencoderKLWan",
        }
    }

    pub fn latent_channels(&self) -> usize {
        match self {
            Model::Kl(m) => m.config.latent_channels,
            Model::Tiny(m) => m.config.latent_channels,
            Model::Wan(m) => m.config.z_dim,
            Model::WanResidual(m) => m.config.z_dim,
        }
    }

    /// Channels of the images the encoder reads and the decoder writes: 3
    /// (RGB), or 4 (RGBA: Qwen-Image 2.1).
    pub fn image_channels(&self) -> usize {
        match self {
            Model::WanResidual(m) => m.config.image_channels(),
            _ => 3,
        }
    }

    /// Image pixels per latent position along a side, encoding (8).
    pub fn downscale(&self) -> usize {
        match self {
            Model::Kl(m) => m.config.downscale(),
            Model::Tiny(m) => m.config.downscale(),
            Model::Wan(m) => m.config.downscale(),
            Model::WanResidual(m) => m.config.downscale(),
        }
    }

    /// The same, decoding (8).
    pub fn upscale(&self) -> usize {
        match self {
            Model::Kl(m) => m.config.upscale(),
            Model::Tiny(m) => m.config.upscale(),
            Model::Wan(m) => m.config.downscale(),
            Model::WanResidual(m) => m.config.downscale(),
        }
    }

    /// Whether the decoded image is clamped to [-1, 1] (diffusers' Wan and
    /// Qwen-Image `_decode` do it; [`AutoencoderWan::decoder_graph`] does not).
    pub fn clamps_output(&self) -> bool {
        matches!(self, Model::Wan(_) | Model::WanResidual(_))
    }

    /// The steps of the encoder (and `quant_conv`), for the VAEs described
    /// as a [`Graph`] (not TAESD).
    pub fn encoder_graph(&self) -> Option<Graph<'_>> {
        match self {
            Model::Kl(m) => Some(m.encoder_graph()),
            Model::Wan(m) => Some(m.encoder_graph()),
            Model::WanResidual(m) => Some(m.encoder_graph()),
            Model::Tiny(_) => None,
        }
    }

    /// The steps of `post_quant_conv` and the decoder, for the VAEs
    /// described as a [`Graph`] (not TAESD).
    pub fn decoder_graph(&self) -> Option<Graph<'_>> {
        match self {
            Model::Kl(m) => Some(m.decoder_graph()),
            Model::Wan(m) => Some(m.decoder_graph()),
            Model::WanResidual(m) => Some(m.decoder_graph()),
            Model::Tiny(_) => None,
        }
    }
}
