//! The VAE as the tool uses it: images in, scaled latents out, and back,
//! with diffusers' `AutoencoderKL` or with TAESD (`AutoencoderTiny`).

use std::path::Path;

use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use crate::batch::{self, BatchSize};
use crate::imageio::{InputImage, OutputImage};
use crate::latent::{Latent, LatentMeta, Posterior};
use crate::model::{AutoencoderTiny, DiagonalGaussian, Family, Model};
use crate::tiling::{self, Plan, Program, Tile, TileOptions};
use crate::weights::{self, Parts, WeightsError, WeightsInfo, WeightsSource};

/// Characters of the weights' SHA-256 recorded in latent metadata.
const HASH_PREFIX: usize = 16;

pub struct Vae {
    pub model: Model,
    pub info: WeightsInfo,
    /// When to run in bands to bound memory (`--tile`, `--max-memory`).
    /// `AutoencoderKL` only: TAESD always runs untiled (see [`Vae::encode_plan`]).
    pub tiling: TileOptions,
    /// How many inputs of one size a pass may take (`--batch-size`).
    pub batch: BatchSize,
    /// Whether the device is a GPU, where batches pay (see [`crate::batch`]).
    pub gpu: bool,
    /// Resident bytes once the weights were loaded: the base of every estimate.
    resident: u64,
    parts: Parts,
    /// The family named on the command line, recorded in latents (else
    /// the one the model's scaling points to).
    pub family: Option<Family>,
    device: Device,
    /// The float type of weights and activations (`--precision`).
    dtype: FloatDType,
    /// Where the weights came from, to load them again in f32 when a
    /// reduced-precision result is not finite.
    source: WeightsSource,
    scaling_factor: Option<f64>,
}

/// Whether a result had to be computed again in f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retried {
    No,
    /// The reduced-precision output held NaN or Inf; it was redone in f32,
    /// and the model stays in f32 from then on.
    InF32 {
        from: FloatDType,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum VaeError {
    #[error("{}: latent has {found} channels but the weights expect {expected}", path.display())]
    Channels { path: std::path::PathBuf, found: usize, expected: usize },
    #[error("{}: latent {height}x{width} would decode to {pixels} pixels, more than --max-pixels {max_pixels}", path.display())]
    TooLarge { path: std::path::PathBuf, height: usize, width: usize, pixels: u64, max_pixels: u64 },
    // Not `#[from]`, which would make the cause a source as well, printed
    // twice by `{:#}`.
    #[error("loading the weights again in f32 after a result with NaN or Inf: {0}")]
    Reload(WeightsError),
    #[error("{0}")]
    NotFinite(NotFinite),
}

impl From<WeightsError> for VaeError {
    fn from(err: WeightsError) -> Self {
        VaeError::Reload(err)
    }
}

/// A result that held NaN or Inf even in f32 (the retry cannot help): the
/// latent scaling does not fit the values, or the input is extreme.
#[derive(Debug, Clone, PartialEq)]
pub struct NotFinite {
    /// What held them: "the latent" or "the decoded image".
    pub what: &'static str,
    pub nan: usize,
    pub infinite: usize,
    /// The scaling and shift applied (to the encoder's output, or undone on the decoder's input).
    pub scaling: f64,
    pub shift: f64,
}

impl std::fmt::Display for NotFinite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let counts = match (self.nan, self.infinite) {
            (0, n) => format!("{n} infinite values"),
            (n, 0) => format!("{n} NaN values"),
            (n, m) => format!("{n} NaN and {m} infinite values"),
        };
        let number = crate::latent::short;
        let shift = if self.shift == 0.0 { String::new() } else { format!(" and shift {}", number(self.shift)) };
        let scaling = number(self.scaling);
        match self.what {
            "the latent" => write!(f, "{} has {counts} after scaling by {scaling}{shift}", self.what),
            _ => write!(f, "{} has {counts} (the latent unscaled by {scaling}{shift})", self.what),
        }
    }
}

impl std::error::Error for NotFinite {}

impl NotFinite {
    /// `None` when every value is finite.
    pub(crate) fn of(what: &'static str, values: &[f32], (scaling, shift): (f64, f64)) -> Option<Self> {
        let nan = values.iter().filter(|v| v.is_nan()).count();
        let infinite = values.iter().filter(|v| v.is_infinite()).count();
        (nan + infinite > 0).then_some(Self { what, nan, infinite, scaling, shift })
    }
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
        Self::load_in(source, device, FloatDType::F32, scaling_factor, parts)
    }

    /// [`Vae::load_parts`] computing in `dtype`: f16 and bf16 are for GPUs
    /// (the CPU kernels compute in f32; elsewhere burn's operations run in
    /// `dtype`, with GroupNorm statistics and the attention softmax in f32).
    pub fn load_in(
        source: &WeightsSource,
        device: &Device,
        dtype: FloatDType,
        scaling_factor: Option<f64>,
        parts: Parts,
    ) -> Result<Self, WeightsError> {
        let (model, info) = weights::load_in(source, device, dtype, scaling_factor, parts)?;
        // From config.json or `scaling_factor`: latents are f32, and a factor
        // out of its range makes every value zero or infinite.
        let (scaling, shift) = model.latent_scaling();
        if let Err(reason) = crate::latent::check_scaling(scaling).and_then(|()| crate::latent::check_shift(shift)) {
            let path = source.config_json.clone().unwrap_or_else(|| source.file.clone());
            return Err(WeightsError::Config { path, reason });
        }
        // Without a reading from the OS, assume the weights in f32 twice over.
        let resident = tiling::resident_memory().unwrap_or(2 << 30);
        Ok(Self {
            model,
            info,
            tiling: TileOptions::default(),
            batch: BatchSize::Auto,
            gpu: false,
            resident,
            parts,
            family: None,
            device: device.clone(),
            dtype,
            source: source.clone(),
            scaling_factor,
        })
    }

    /// The float type the model computes in.
    pub fn dtype(&self) -> FloatDType {
        self.dtype
    }

    /// [`Vae::encode`], checked: when the output holds NaN or Inf in a
    /// reduced precision, the weights are loaded again in f32 and the image
    /// encoded again (the latent scaling set on the model is kept).
    pub fn encode_checked(&mut self, image: &InputImage, posterior: Posterior) -> Result<(Latent, Retried), VaeError> {
        let (mut latents, retried) = self.encode_batch_checked(&[image], &[posterior])?;
        Ok((latents.pop().expect("one latent per image"), retried))
    }

    /// [`Vae::encode_batch`], checked as [`Vae::encode_checked`] is (the
    /// whole batch again in f32 when one latent is not finite). A latent
    /// that is still not finite in f32 is an error: nothing can fix it.
    pub fn encode_batch_checked(
        &mut self,
        images: &[&InputImage],
        posteriors: &[Posterior],
    ) -> Result<(Vec<Latent>, Retried), VaeError> {
        let (latents, retried) = self.with_f32_retry(
            |vae| vae.encode_batch(images, posteriors),
            |latents| latents.iter().all(|l| all_finite(&l.data)),
        )?;
        for latent in &latents {
            let scaling = (latent.meta.scaling_factor.unwrap_or(1.0), latent.meta.shift_factor.unwrap_or(0.0));
            if let Some(err) = NotFinite::of("the latent", &latent.data, scaling) {
                return Err(VaeError::NotFinite(err));
            }
        }
        Ok((latents, retried))
    }

    /// [`Vae::decode`], checked as [`Vae::encode_checked`] is.
    pub fn decode_checked(
        &mut self,
        latent: &Latent,
        path: &Path,
        max_pixels: u64,
    ) -> Result<(OutputImage, Retried), VaeError> {
        self.check_latent(latent, path, max_pixels)?;
        let (mut images, retried) = self.decode_batch_checked(&[latent])?;
        Ok((images.pop().expect("one image per latent"), retried))
    }

    /// [`Vae::decode_planar_batch`] made images, checked as [`Vae::encode_checked`] is.
    pub fn decode_batch_checked(&mut self, latents: &[&Latent]) -> Result<(Vec<OutputImage>, Retried), VaeError> {
        let (planar, retried) =
            self.with_f32_retry(|vae| vae.decode_planar_batch(latents), |planar| planar.iter().all(|p| all_finite(p)))?;
        self.check_finite(latents, &planar)?;
        let images = latents.iter().zip(&planar).map(|(latent, planar)| self.postprocess(latent, planar));
        Ok((images.collect(), retried))
    }

    /// `run(self)`, and once more in f32 when `finite` says its result is not.
    fn with_f32_retry<T>(
        &mut self,
        run: impl Fn(&Self) -> T,
        finite: impl Fn(&T) -> bool,
    ) -> Result<(T, Retried), WeightsError> {
        let out = run(self);
        if finite(&out) || self.dtype == FloatDType::F32 {
            return Ok((out, Retried::No));
        }
        let from = self.dtype;
        self.reload_in_f32()?;
        Ok((run(self), Retried::InF32 { from }))
    }

    /// Loads the weights again in f32, keeping the latent scaling and tiling.
    fn reload_in_f32(&mut self) -> Result<(), WeightsError> {
        let (model, _) =
            weights::load_in(&self.source, &self.device, FloatDType::F32, self.scaling_factor, self.parts)?;
        let scaling = self.model.latent_scaling();
        self.model = model;
        self.model.set_latent_scaling(scaling.0, scaling.1);
        self.dtype = FloatDType::F32;
        Ok(())
    }

    /// How `image` is encoded: whole or in bands (see [`tiling`]).
    /// Reduced precision always runs whole: bands store f32 activations on
    /// the host, for the CPU's memory budget.
    pub fn encode_plan(&self, image: &InputImage) -> Plan {
        let f = self.model.downscale();
        if self.dtype != FloatDType::F32 {
            return Plan::Whole { estimate: self.resident };
        }
        let (height, width) = (image.height.div_ceil(f) * f, image.width.div_ceil(f) * f);
        match &self.model {
            Model::Kl(model) => self.tiling.plan(&Program::encoder(model), (3, height, width), height, self.resident),
            Model::Tiny(model) => self.untiled(model, height, width),
        }
    }

    /// How `latent` is decoded: whole or in bands.
    pub fn decode_plan(&self, latent: &Latent) -> Plan {
        let f = self.model.upscale();
        if self.dtype != FloatDType::F32 {
            return Plan::Whole { estimate: self.resident };
        }
        match &self.model {
            Model::Kl(model) => {
                let shape = (latent.channels, latent.height, latent.width);
                self.tiling.plan(&Program::decoder(model), shape, f * latent.height, self.resident)
            }
            Model::Tiny(model) => self.untiled(model, f * latent.height, f * latent.width),
        }
    }

    /// How many inputs to read ahead and group into passes.
    pub fn read_ahead(&self) -> usize {
        self.batch.chunk(self.gpu)
    }

    /// `images` grouped into passes of [`Vae::encode_batch`]: one size in
    /// each, as many as `--batch-size` and memory allow (indices into `images`).
    pub fn encode_passes(&self, images: &[&InputImage]) -> Vec<Vec<usize>> {
        batch::passes(
            images,
            |image| (image.width, image.height),
            |image| self.pass_limit(self.encode_plan(image), image.width * image.height),
        )
    }

    /// `latents` grouped into passes of [`Vae::decode_planar_batch`], as
    /// [`Vae::encode_passes`] groups images.
    pub fn decode_passes(&self, latents: &[&Latent]) -> Vec<Vec<usize>> {
        let f = self.model.upscale();
        batch::passes(
            latents,
            |latent| (latent.channels, latent.height, latent.width),
            |latent| self.pass_limit(self.decode_plan(latent), latent.height * f * latent.width * f),
        )
    }

    /// How many inputs of `pixels` image pixels that `plan` runs one at a
    /// time may go through the model together: what `--batch-size` says,
    /// but one when a single input runs in bands, and with `--tile auto` in
    /// f32 (the CPU's default) only as many as the memory budget holds
    /// untiled, each input adding its activations to the weights. On a GPU
    /// tiling is off: its memory is not the host's.
    fn pass_limit(&self, plan: Plan, pixels: usize) -> usize {
        let wanted = self.batch.per_pass(self.gpu, pixels as u64);
        match plan {
            Plan::Banded { .. } => 1,
            Plan::Whole { estimate } if self.tiling.tile == Tile::Auto && self.dtype == FloatDType::F32 => {
                let each = estimate.saturating_sub(self.resident).max(1);
                let room = self.tiling.max_memory.saturating_sub(self.resident);
                usize::try_from(room / each).unwrap_or(usize::MAX).clamp(1, wanted)
            }
            Plan::Whole { .. } => wanted,
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
        self.encode_batch(&[image], &[posterior]).pop().expect("one latent per image")
    }

    /// [`Vae::encode`] for images of one size in one pass of the model
    /// (a batch: what a GPU runs fastest), each with its own posterior; the
    /// latents are those of encoding each alone. When one image would run in
    /// bands, they are encoded one by one (see [`Vae::encode_passes`]).
    pub fn encode_batch(&self, images: &[&InputImage], posteriors: &[Posterior]) -> Vec<Latent> {
        assert!(self.parts.encoder(), "Vae::encode on a model loaded without its encoder");
        assert_eq!(images.len(), posteriors.len(), "Vae::encode_batch takes a posterior per image");
        let Some(first) = images.first() else { return Vec::new() };
        let size = |image: &InputImage| (image.width, image.height);
        assert!(images.iter().all(|i| size(i) == size(first)), "Vae::encode_batch takes images of one size");
        let plan = self.encode_plan(first);
        if images.len() > 1 && matches!(plan, Plan::Banded { .. }) {
            return images.iter().zip(posteriors).map(|(image, p)| self.encode(image, *p)).collect();
        }
        let x = images.iter().map(|image| image.to_tensor(self.model.downscale(), &self.device)).collect();
        let x = Tensor::cat(x, 0).cast(self.dtype);
        let (scaling, shift) = self.model.latent_scaling();
        let (scaled, posteriors) = match &self.model {
            Model::Kl(model) => {
                let moments = tiling::run(&Program::encoder(model), x, plan, |x| model.moments(x));
                let dist = DiagonalGaussian::from_moments(moments.cast(FloatDType::F32));
                let z = if posteriors.iter().all(|p| *p == Posterior::Mean) {
                    dist.mean
                } else {
                    // The mean's draw is the mean: zero noise.
                    let [_, c, h, w] = dist.mean.dims();
                    let noise = posteriors.iter().map(|p| match p {
                        Posterior::Sample { seed } => gaussian_noise([1, c, h, w], *seed, &self.device),
                        Posterior::Mean => Tensor::zeros([1, c, h, w], &self.device),
                    });
                    dist.sample(Tensor::cat(noise.collect(), 0))
                };
                ((z - shift) * scaling, posteriors.to_vec())
            }
            Model::Tiny(model) => {
                let latents = model.encode(x).expect("Vae::load_parts refuses a TAESD without its encoder");
                let latents = latents.cast(FloatDType::F32);
                // diffusers' pipeline scaling: 1 and 0 for every TAESD.
                let (s, t) = (model.config.scaling_factor, model.config.shift_factor);
                let scaled = if (s, t) == (1.0, 0.0) { latents } else { (latents - t) * s };
                (scaled, vec![Posterior::Mean; images.len()])
            }
        };
        let [_, channels, height, width] = scaled.dims();
        let data = scaled.into_data().try_into_vec::<f32>().expect("the model computes in f32");
        let file_name = self.info.path.file_name().map(|n| n.to_string_lossy().into_owned());
        let each = data.chunks_exact(channels * height * width);
        let latents = images.iter().zip(posteriors).zip(each).map(|((image, posterior), data)| {
            let meta = LatentMeta {
                scaling_factor: Some(scaling),
                shift_factor: Some(shift),
                posterior: Some(posterior),
                width: Some(image.width),
                height: Some(image.height),
                weights: file_name.clone(),
                weights_sha256: Some(self.info.sha256[..HASH_PREFIX.min(self.info.sha256.len())].to_owned()),
                tool_version: Some(env!("CARGO_PKG_VERSION").to_owned()),
                family: self.family.or(self.model.family()).map(|f| f.name().to_owned()),
            };
            Latent { channels, height, width, data: data.to_vec(), meta }
        });
        latents.collect()
    }

    /// Decodes a scaled latent to an 8-bit image, cropped to the size recorded
    /// in its metadata. The latent's own scaling metadata wins over the
    /// model's: it says how that file was scaled.
    ///
    /// Refuses latents whose image would exceed `max_pixels`, before decoding.
    pub fn decode(&self, latent: &Latent, path: &Path, max_pixels: u64) -> Result<OutputImage, VaeError> {
        self.check_latent(latent, path, max_pixels)?;
        let planar = self.decode_planar_batch(&[latent]).pop().expect("one image per latent");
        self.check_finite(&[latent], std::slice::from_ref(&planar))?;
        Ok(self.postprocess(latent, &planar))
    }

    /// Refuses decoded images holding NaN or Inf (they would be written black).
    fn check_finite(&self, latents: &[&Latent], planar: &[Vec<f32>]) -> Result<(), VaeError> {
        for (latent, planar) in latents.iter().zip(planar) {
            if let Some(err) = NotFinite::of("the decoded image", planar, self.file_scaling(latent)) {
                return Err(VaeError::NotFinite(err));
            }
        }
        Ok(())
    }

    /// Whether this model decodes `latent` (read from `path`): its channels,
    /// and an image of at most `max_pixels`.
    pub fn check_latent(&self, latent: &Latent, path: &Path, max_pixels: u64) -> Result<(), VaeError> {
        let expected = self.model.latent_channels();
        if latent.channels != expected {
            return Err(VaeError::Channels { path: path.to_owned(), found: latent.channels, expected });
        }
        let factor = self.model.upscale() as u64;
        let pixels = (latent.height as u64 * factor).saturating_mul(latent.width as u64 * factor);
        if pixels > max_pixels {
            let (height, width) = (latent.height, latent.width);
            return Err(VaeError::TooLarge { path: path.to_owned(), height, width, pixels, max_pixels });
        }
        Ok(())
    }

    /// The decoder's output as an 8-bit image, cropped to the recorded size.
    fn postprocess(&self, latent: &Latent, planar: &[f32]) -> OutputImage {
        let (full_w, full_h) = (latent.width * self.model.upscale(), latent.height * self.model.upscale());
        let width = latent.meta.width.filter(|&w| w > 0 && w <= full_w).unwrap_or(full_w);
        let height = latent.meta.height.filter(|&h| h > 0 && h <= full_h).unwrap_or(full_h);
        OutputImage::from_planar(planar, full_w, full_h, width, height)
    }

    /// The decoder's float output `[3, 8h, 8w]`, before postprocessing.
    pub fn decode_planar(&self, latent: &Latent, path: &Path) -> Result<Vec<f32>, VaeError> {
        self.check_latent(latent, path, u64::MAX)?;
        Ok(self.decode_planar_batch(&[latent]).pop().expect("one image per latent"))
    }

    /// [`Vae::decode_planar`] for latents of one shape, each scaled as its
    /// own file says, in one pass of the model (one by one when one would
    /// run in bands). Each must have passed [`Vae::check_latent`].
    pub fn decode_planar_batch(&self, latents: &[&Latent]) -> Vec<Vec<f32>> {
        assert!(self.parts.decoder(), "Vae::decode on a model loaded without its decoder");
        let Some(first) = latents.first() else { return Vec::new() };
        let shape = |l: &Latent| [1, l.channels, l.height, l.width];
        assert!(
            latents.iter().all(|l| shape(l) == shape(first)),
            "Vae::decode_planar_batch takes latents of one shape"
        );
        assert_eq!(first.channels, self.model.latent_channels(), "Vae::check_latent first");
        let plan = self.decode_plan(first);
        if latents.len() > 1 && matches!(plan, Plan::Banded { .. }) {
            return latents.iter().flat_map(|latent| self.decode_planar_batch(&[latent])).collect();
        }
        let image = match &self.model {
            Model::Kl(model) => {
                let z = latents.iter().map(|latent| {
                    let (scaling, shift) = self.file_scaling(latent);
                    let z = Tensor::<4>::from_data(TensorData::new(latent.data.clone(), shape(latent)), &self.device);
                    z / scaling + shift
                });
                let z = Tensor::cat(z.collect(), 0).cast(self.dtype);
                tiling::run(&Program::decoder(model), z, plan, |z| model.decode(z))
            }
            Model::Tiny(model) => {
                let p = latents.iter().map(|latent| {
                    let p = self.tiny_input(model, &latent.data, self.file_scaling(latent));
                    Tensor::<4>::from_data(TensorData::new(p, shape(latent)), (&self.device, DType::from(self.dtype)))
                });
                model.decode(Tensor::cat(p.collect(), 0)).expect("Vae::load_parts refuses a TAESD without its decoder")
            }
        };
        let [_, c, h, w] = image.dims();
        let image = image.cast(FloatDType::F32).into_data().try_into_vec::<f32>().expect("cast to f32 above");
        image.chunks_exact(c * h * w).map(<[f32]>::to_vec).collect()
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

fn all_finite(values: &[f32]) -> bool {
    values.iter().all(|v| v.is_finite())
}

/// Standard normal noise from a ChaCha8 stream: the same seed gives the same
/// latent on every machine and backend.
fn gaussian_noise(shape: [usize; 4], seed: u64, device: &Device) -> Tensor<4> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}
