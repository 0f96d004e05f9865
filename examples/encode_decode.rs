//! The library's front door: open a VAE, encode an image, decode it back.
//!
//!     cargo run --release --example encode_decode -- photo.png out.png [WEIGHTS]
//!
//! WEIGHTS: a .safetensors file, a diffusers folder or a Hub repo id
//! (default: stabilityai/sd-vae-ft-mse, from the Hugging Face cache).
use std::error::Error;
use std::path::PathBuf;

use vae::imageio::{self, DEFAULT_MAX_PIXELS};
use vae::output::Overwrite;
use vae::{Posterior, Vae, VaeOptions};

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [input, output, rest @ ..] = args.as_slice() else {
        return Err("usage: encode_decode IMAGE OUT.png [WEIGHTS]".into());
    };
    let weights = rest.first().cloned().unwrap_or_else(|| "stabilityai/sd-vae-ft-mse".into());
    let mut vae = Vae::open(&VaeOptions::new(weights))?;
    let image = imageio::load(input, DEFAULT_MAX_PIXELS)?;
    let latent = vae.encode(&image, Posterior::Mean)?;
    eprintln!("latent [1, {}, {}, {}], {}", latent.channels, latent.height, latent.width, vae.latent_space());
    vae.decode(&latent)?.save_png(output, Overwrite::Refuse)?;
    Ok(())
}
