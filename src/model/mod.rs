//! The Stable Diffusion VAE, laid out as diffusers lays it out so that a
//! reader who knows `diffusers.AutoencoderKL` knows this code.

mod attention;
mod autoencoder;
mod config;
mod decoder;
mod encoder;
mod layers;
mod resnet;
mod sampling;

pub use attention::Attention;
pub use autoencoder::{AutoencoderKl, DiagonalGaussian};
pub use config::{AutoencoderKlConfig, Family, SD15_SCALING_FACTOR};
pub use encoder::UNetMidBlock2d;
pub use layers::{Conv2d, GroupNorm, VAE_NORM_EPS};
pub use resnet::ResnetBlock2d;
