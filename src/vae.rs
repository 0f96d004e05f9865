//! The VAE as the tool uses it: images in, scaled latents out, and back.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use crate::imageio::{InputImage, OutputImage};
use crate::latent::{Latent, LatentMeta, Posterior};
use crate::model::{AutoencoderKl, DiagonalGaussian, Family};
use crate::tiling::{self, Plan, Program, TileOptions};
use crate::weights::{self, Parts, WeightsError, WeightsInfo, WeightsSource};

/// Characters of the weights' SHA-256 recorded in latent metadata.
const HASH_PREFIX: usize = 16;

pub struct Vae {
    pub model: AutoencoderKl,
    pub info: WeightsInfo,
    /// When to run in bands to bound memory (`--tile`, `--max-memory`).
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

    /// Loads only the halves of the model in `parts` (the file is checked whole).
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
        let f = self.model.config.downscale();
        let (height, width) = (image.height.div_ceil(f) * f, image.width.div_ceil(f) * f);
        self.tiling.plan(&Program::encoder(&self.model), (3, height, width), height, self.resident)
    }

    /// How `latent` is decoded: whole or in bands.
    pub fn decode_plan(&self, latent: &Latent) -> Plan {
        let f = self.model.config.downscale();
        let shape = (latent.channels, latent.height, latent.width);
        self.tiling.plan(&Program::decoder(&self.model), shape, f * latent.height, self.resident)
    }

    /// Encodes an image to a scaled latent: `(z - shift) * scaling_factor`,
    /// where `z` is the posterior mean or a seeded draw from the posterior.
    pub fn encode(&self, image: &InputImage, posterior: Posterior) -> Latent {
        let cfg = &self.model.config;
        let x = image.to_tensor(cfg.downscale(), &self.device);
        assert!(self.parts.encoder(), "Vae::encode on a model loaded without its encoder");
        let plan = self.encode_plan(image);
        let moments = tiling::run(&Program::encoder(&self.model), x, plan, |x| self.model.moments(x));
        let dist = DiagonalGaussian::from_moments(moments);
        let z = match posterior {
            Posterior::Mean => dist.mean,
            Posterior::Sample { seed } => {
                let noise = gaussian_noise(dist.mean.dims(), seed, &self.device);
                dist.sample(noise)
            }
        };
        let [_, channels, height, width] = z.dims();
        let scaled = (z - cfg.shift_factor) * cfg.scaling_factor;
        let data = scaled.into_data().try_into_vec::<f32>().expect("the model computes in f32");
        let file_name = self.info.path.file_name().map(|n| n.to_string_lossy().into_owned());
        let meta = LatentMeta {
            scaling_factor: Some(cfg.scaling_factor),
            shift_factor: Some(cfg.shift_factor),
            posterior: Some(posterior),
            width: Some(image.width),
            height: Some(image.height),
            weights: file_name,
            weights_sha256: Some(self.info.sha256[..HASH_PREFIX.min(self.info.sha256.len())].to_owned()),
            tool_version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            family: self.family.or(cfg.family()).map(|f| f.name().to_owned()),
        };
        Latent { channels, height, width, data, meta }
    }

    /// Decodes a scaled latent to an 8-bit image, cropped to the size recorded
    /// in its metadata. The latent's own scaling metadata wins over the
    /// model's: it says how that file was scaled.
    ///
    /// Refuses latents whose image would exceed `max_pixels`, before decoding.
    pub fn decode(&self, latent: &Latent, path: &Path, max_pixels: u64) -> Result<OutputImage, VaeError> {
        let factor = self.model.config.downscale() as u64;
        let pixels = (latent.height as u64 * factor).saturating_mul(latent.width as u64 * factor);
        if pixels > max_pixels {
            let (height, width) = (latent.height, latent.width);
            return Err(VaeError::TooLarge { path: path.to_owned(), height, width, pixels, max_pixels });
        }
        let planar = self.decode_planar(latent, path)?;
        let (full_w, full_h) =
            (latent.width * self.model.config.downscale(), latent.height * self.model.config.downscale());
        let width = latent.meta.width.filter(|&w| w > 0 && w <= full_w).unwrap_or(full_w);
        let height = latent.meta.height.filter(|&h| h > 0 && h <= full_h).unwrap_or(full_h);
        Ok(OutputImage::from_planar(&planar, full_w, full_h, width, height))
    }

    /// The decoder's float output `[3, 8h, 8w]`, before postprocessing.
    pub fn decode_planar(&self, latent: &Latent, path: &Path) -> Result<Vec<f32>, VaeError> {
        let cfg = &self.model.config;
        if latent.channels != cfg.latent_channels {
            return Err(VaeError::Channels {
                path: path.to_owned(),
                found: latent.channels,
                expected: cfg.latent_channels,
            });
        }
        let (scaling, shift) = self.latent_scaling(latent);
        let shape = [1, latent.channels, latent.height, latent.width];
        let z = Tensor::<4>::from_data(TensorData::new(latent.data.clone(), shape), &self.device);
        assert!(self.parts.decoder(), "Vae::decode on a model loaded without its decoder");
        let plan = self.decode_plan(latent);
        let image = tiling::run(&Program::decoder(&self.model), z / scaling + shift, plan, |z| self.model.decode(z));
        Ok(image.into_data().try_into_vec::<f32>().expect("the model computes in f32"))
    }
}

impl Vae {
    /// How `latent` was scaled: its metadata, else its family's, else the model's.
    fn latent_scaling(&self, latent: &Latent) -> (f64, f64) {
        let cfg = &self.model.config;
        let family = latent.meta.family.as_deref().and_then(|f| f.parse::<Family>().ok()).map(Family::scaling);
        let (scaling, shift) = family.unwrap_or((cfg.scaling_factor, cfg.shift_factor));
        (latent.meta.scaling_factor.unwrap_or(scaling), latent.meta.shift_factor.unwrap_or(shift))
    }

    /// Standard deviation of `latent` unscaled as its file says and scaled
    /// again as this model's family would: about 1 when they fit (scaling
    /// factors are chosen to give unit variance).
    pub fn rescaled_std(&self, latent: &Latent) -> f64 {
        let cfg = &self.model.config;
        let (scaling, shift) = self.latent_scaling(latent);
        let (target, target_shift) = self.family.map_or((cfg.scaling_factor, cfg.shift_factor), Family::scaling);
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
