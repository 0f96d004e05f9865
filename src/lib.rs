//! `vae`: the Stable Diffusion VAE (diffusers' `AutoencoderKL`) in Rust, on
//! burn. Images become latents and latents become images, matching diffusers.
//!
//! - [`model`]: the network, laid out as diffusers lays it out.
//! - [`weights`]: safetensors files of every common layout, and their checks;
//!   [`hub`]: weights by repo id, through the Hugging Face cache.
//! - [`imageio`], [`latent`]: the files that go in and out.
//! - [`vae`]: the encode/decode pipeline; [`metrics`]: PSNR and SSIM.
//! - [`device`]: `--device` and `--precision`, among the backends built in.
//! - [`dataset`]: latents for datasets' shards, shared among many workers.
//! - [`cli`]: the command line (the binary is a thin wrapper around it).

pub mod batch;
pub mod cli;
pub mod dataset;
pub mod device;
pub mod hub;
pub mod imageio;
pub mod inspect;
pub mod kernels;
pub mod latent;
pub mod latent_space;
pub mod metrics;
pub mod model;
pub mod output;
pub mod preview;
mod safetensors_io;
pub mod tiling;
pub mod vae;
pub mod weights;

pub use imageio::{InputImage, OutputImage};
pub use latent::{Latent, Posterior};
pub use latent_space::{LatentSpace, LatentSpaceRequest};
pub use vae::{OpenError, Vae, VaeError, VaeOptions};
