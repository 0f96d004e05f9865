//! The VAE as the tool uses it: images in, scaled latents out, and back,
//! with diffusers' `AutoencoderKL` or with TAESD (`AutoencoderTiny`).

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use crate::imageio::{InputImage, OutputImage};
use crate::latent::{Latent, LatentMeta, Posterior};
use crate::model::{AutoencoderTiny, DiagonalGaussian, Family, Model};
use crate::tiling::{self, Plan, Program, TileOptions};
use crate::weights::{self, Parts, WeightsError, WeightsInfo, WeightsSource};

/// Characters of the weights' SHA-256 recorded in latent metadata.
const HASH_PREFIX: usize = 16;

pub struct Vae {
    pub model: Model,
    pub info: WeightsInfo,
    /// When to run in bands to bound memory (`--tile`, `--max-memory`).
    /// `AutoencoderKL` only: TAESD always runs untiled (see [`Vae::encode_plan`]).
    pub tiling: TileOptions,
    /// Resident bytes once the weights were loaded: the base of every estimate.
    resident: u64,
    parts: Parts,
    /// The family named on the command line, recorded in latents (else
    /// the one the model's scaling points to).
    pub family: Option<Family>,
    device: Device,
}

#[derive(Debug, thiserror::Error)]
pub enum VaeError {
    #[error("{}: latent has {found} channels but the weights expect {expected}", path.display())]
    Channels { path: std::path::PathBuf, found: usize, expected: usize },
    #[error("{}: latent {height}x{width} would decode to {pixels} pixels, more than --max-pixels {max_pixels}", path.display())]
    TooLarge { path: std::path::PathBuf, height: usize, width: usize, pixels: u64, max_pixels: u64 },
}

impl Vae {
    pub fn load(source: &WeightsSource, device: &Device, scaling_factor: Option<f64>) -> Result<Self, WeightsError> {
        Self::load_parts(source, device, scaling_factor, Parts::Both)
    }

    /// Loads only the halves of the model in `parts` (the file is checked whole;
    /// a TAESD file without a half in `parts` is an error).
    /// Encoding without the encoder, or decoding without the decoder, panics.
    pub fn load_parts(
        source: &WeightsSource,
        device: &Device,
        scaling_factor: Option<f64>,
        parts: Parts,
    ) -> Result<Self, WeightsError> {
        let (model, info) = weights::load(source, device, scaling_factor, parts)?;
        // Without a reading from the OS, assume the weights in f32 twice over.
        let resident = tiling::resident_memory().unwrap_or(2 << 30);
        Ok(Self { model, info, tiling: TileOptions::default(), resident, parts, family: None, device: device.clone() })
    }

    /// How `image` is encoded: whole or in bands (see [`tiling`]).
    pub fn encode_plan(&self, image: &InputImage) -> Plan {
        let f = self.model.downscale();
        let (height, width) = (image.height.div_ceil(f) * f, image.width.div_ceil(f) * f);
        match &self.model {
            Model::Kl(model) => self.tiling.plan(&Program::encoder(model), (3, height, width), height, self.resident),
            Model::Tiny(model) => self.untiled(model, height, width),
        }
    }

    /// How `latent` is decoded: whole or in bands.
    pub fn decode_plan(&self, latent: &Latent) -> Plan {
        let f = self.model.upscale();
        match &self.model {
            Model::Kl(model) => {
                let shape = (latent.channels, latent.height, latent.width);
                self.tiling.plan(&Program::decoder(model), shape, f * latent.height, self.resident)
            }
            Model::Tiny(model) => self.untiled(model, f * latent.height, f * latent.width),
        }
    }

    /// TAESD runs untiled whatever `--tile` says: banded execution is built
    /// for `AutoencoderKL`'s GroupNorm passes, and TAESD's widest activation
    /// is its 64 channels at full resolution (the big decoder's is 128 to 256).
    /// Its peak is about four such activations (a block's input, kept for the
    /// skip, its convolution's input and output, and the sum).
    fn untiled(&self, model: &AutoencoderTiny, height: usize, width: usize) -> Plan {
        let c = &model.config;
        let widest = c.encoder_block_out_channels.iter().chain(&c.decoder_block_out_channels).max().copied();
        let activation = 4 * (widest.unwrap_or(0).max(3) * height * width) as u64;
        Plan::Whole { estimate: self.resident + 4 * activation }
    }

    /// Encodes an image to a scaled latent: `(z - shift) * scaling_factor`,
    /// where `z` is the posterior mean or a seeded draw from the posterior.
    /// TAESD's encoder outputs that scaled latent directly (it has no
    /// posterior: a sample is its mean, recorded as such).
    pub fn encode(&self, image: &InputImage, posterior: Posterior) -> Latent {
        let x = image.to_tensor(self.model.downscale(), &self.device);
        assert!(self.parts.encoder(), "Vae::encode on a model loaded without its encoder");
        let plan = self.encode_plan(image);
        let (scaling, shift) = self.model.latent_scaling();
        let (scaled, posterior) = match &self.model {
            Model::Kl(model) => {
                let moments = tiling::run(&Program::encoder(model), x, plan, |x| model.moments(x));
                let dist = DiagonalGaussian::from_moments(moments);
                let z = match posterior {
                    Posterior::Mean => dist.mean,
                    Posterior::Sample { seed } => {
                        let noise = gaussian_noise(dist.mean.dims(), seed, &self.device);
                        dist.sample(noise)
                    }
                };
                ((z - shift) * scaling, posterior)
            }
            Model::Tiny(model) => {
                let latents = model.encode(x).expect("Vae::load_parts refuses a TAESD without its encoder");
                // diffusers' pipeline scaling: 1 and 0 for every TAESD.
                let (s, t) = (model.config.scaling_factor, model.config.shift_factor);
                let scaled = if (s, t) == (1.0, 0.0) { latents } else { (latents - t) * s };
                (scaled, Posterior::Mean)
            }
        };
        let [_, channels, height, width] = scaled.dims();
        let data = scaled.into_data().try_into_vec::<f32>().expect("the model computes in f32");
        let file_name = self.info.path.file_name().map(|n| n.to_string_lossy().into_owned());
        let meta = LatentMeta {
            scaling_factor: Some(scaling),
            shift_factor: Some(shift),
            posterior: Some(posterior),
            width: Some(image.width),
            height: Some(image.height),
            weights: file_name,
            weights_sha256: Some(self.info.sha256[..HASH_PREFIX.min(self.info.sha256.len())].to_owned()),
            tool_version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            family: self.family.or(self.model.family()).map(|f| f.name().to_owned()),
        };
        Latent { channels, height, width, data, meta }
    }

    /// Decodes a scaled latent to an 8-bit image, cropped to the size recorded
    /// in its metadata. The latent's own scaling metadata wins over the
    /// model's: it says how that file was scaled.
    ///
    /// Refuses latents whose image would exceed `max_pixels`, before decoding.
    pub fn decode(&self, latent: &Latent, path: &Path, max_pixels: u64) -> Result<OutputImage, VaeError> {
        let factor = self.model.upscale() as u64;
        let pixels = (latent.height as u64 * factor).saturating_mul(latent.width as u64 * factor);
        if pixels > max_pixels {
            let (height, width) = (latent.height, latent.width);
            return Err(VaeError::TooLarge { path: path.to_owned(), height, width, pixels, max_pixels });
        }
        let planar = self.decode_planar(latent, path)?;
        let (full_w, full_h) = (latent.width * self.model.upscale(), latent.height * self.model.upscale());
        let width = latent.meta.width.filter(|&w| w > 0 && w <= full_w).unwrap_or(full_w);
        let height = latent.meta.height.filter(|&h| h > 0 && h <= full_h).unwrap_or(full_h);
        Ok(OutputImage::from_planar(&planar, full_w, full_h, width, height))
    }

    /// The decoder's float output `[3, 8h, 8w]`, before postprocessing.
    pub fn decode_planar(&self, latent: &Latent, path: &Path) -> Result<Vec<f32>, VaeError> {
        let expected = self.model.latent_channels();
        if latent.channels != expected {
            return Err(VaeError::Channels { path: path.to_owned(), found: latent.channels, expected });
        }
        let (scaling, shift) = self.file_scaling(latent);
        let shape = [1, latent.channels, latent.height, latent.width];
        assert!(self.parts.decoder(), "Vae::decode on a model loaded without its decoder");
        let plan = self.decode_plan(latent);
        let image = match &self.model {
            Model::Kl(model) => {
                let z = Tensor::<4>::from_data(TensorData::new(latent.data.clone(), shape), &self.device);
                tiling::run(&Program::decoder(model), z / scaling + shift, plan, |z| model.decode(z))
            }
            Model::Tiny(model) => {
                let p = self.tiny_input(model, &latent.data, (scaling, shift));
                let p = Tensor::<4>::from_data(TensorData::new(p, shape), &self.device);
                model.decode(p).expect("Vae::load_parts refuses a TAESD without its decoder")
            }
        };
        Ok(image.into_data().try_into_vec::<f32>().expect("the model computes in f32"))
    }

    /// TAESD's input for `data` scaled as `(scaling, shift)` says: the big
    /// VAE's latent scaled as this model's latent scaling (the data itself
    /// when it already is, as for latents TAESD or that VAE wrote), then
    /// diffusers' pipeline scaling undone (1 and 0 for every TAESD). In f64.
    fn tiny_input(&self, model: &AutoencoderTiny, data: &[f32], (scaling, shift): (f64, f64)) -> Vec<f32> {
        let (target, target_shift) = self.model.latent_scaling();
        let (s, t) = (model.config.scaling_factor, model.config.shift_factor);
        if (scaling, shift) == (target, target_shift) && (s, t) == (1.0, 0.0) {
            return data.to_vec();
        }
        let rescale = |v: f32| ((f64::from(v) / scaling + shift) - target_shift) * target;
        data.iter().map(|&v| (rescale(v) / s + t) as f32).collect()
    }
}

impl Vae {
    /// How `latent` was scaled: its metadata, else its family's, else the model's.
    fn file_scaling(&self, latent: &Latent) -> (f64, f64) {
        let family = latent.meta.family.as_deref().and_then(|f| f.parse::<Family>().ok()).map(Family::scaling);
        let (scaling, shift) = family.unwrap_or(self.model.latent_scaling());
        (latent.meta.scaling_factor.unwrap_or(scaling), latent.meta.shift_factor.unwrap_or(shift))
    }

    /// Standard deviation of `latent` unscaled as its file says and scaled
    /// again as this model's family would: about 1 when they fit (scaling
    /// factors are chosen to give unit variance).
    pub fn rescaled_std(&self, latent: &Latent) -> f64 {
        let (scaling, shift) = self.file_scaling(latent);
        let (target, target_shift) = self.family.map_or(self.model.latent_scaling(), Family::scaling);
        let values = latent.data.iter().map(|&v| ((v as f64 / scaling + shift) - target_shift) * target);
        let n = latent.data.len().max(1) as f64;
        let (sum, sum_sq) = values.fold((0.0, 0.0), |(s, q), v| (s + v, q + v * v));
        (sum_sq / n - (sum / n).powi(2)).max(0.0).sqrt()
    }
}

/// Standard normal noise from a ChaCha8 stream: the same seed gives the same
/// latent on every machine and backend.
fn gaussian_noise(shape: [usize; 4], seed: u64, device: &Device) -> Tensor<4> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}
