//! `vae`: the Stable Diffusion VAE (diffusers' `AutoencoderKL`) in Rust, on
//! burn. Images become latents and latents become images, matching diffusers.
//!
//! - [`model`]: the network, laid out as diffusers lays it out.
//! - [`weights`]: safetensors files of every common layout, and their checks;
//!   [`hub`]: weights by repo id, through the Hugging Face cache.
//! - [`imageio`], [`latent`]: the files that go in and out.
//! - [`vae`]: the encode/decode pipeline; [`metrics`]: PSNR and SSIM.
//! - [`device`]: `--device` and `--precision`, among the backends built in.
//!
//! With the `cli` feature (the default), what only the `vae` tool uses, and
//! the crates it needs (clap, anyhow, indicatif, tokio, object_store, ...):
//! - `cli`: the command line (the binary is a thin wrapper around it);
//! - `dataset`: latents for datasets' shards, shared among many workers;
//! - `inspect`: what a weights or latent file holds.
//!
//! The `hub` feature (implied by `cli`) downloads weights by repo id; without
//! it [`hub`] finds them only in the Hugging Face cache. A program that embeds
//! the library depends on it with `default-features = false` and, for
//! downloads, `features = ["hub"]`.

pub mod batch;
#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "cli")]
pub mod dataset;
pub mod device;
pub mod hub;
pub mod imageio;
#[cfg(feature = "cli")]
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
