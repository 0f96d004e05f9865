//! The front door: [`Vae::open`] a VAE as [`VaeOptions`] say, then encode
//! images to scaled latents and decode latents to images, with diffusers'
//! `AutoencoderKL` (and FLUX.2's `AutoencoderKLFlux2`), Wan 2.1's and
//! Qwen-Image's `AutoencoderKLWan`, Wan 2.2's (`is_residual`) and Qwen-Image
//! 2.1's `AutoencoderKLQwenImage21`, or TAESD (`AutoencoderTiny`).
//!
//! ```no_run
//! use vae::{Posterior, Vae, VaeOptions, imageio};
//!
//! let mut vae = Vae::open(&VaeOptions::new("stabilityai/sd-vae-ft-mse"))?;
//! let image = imageio::load("photo.png".as_ref(), imageio::DEFAULT_MAX_PIXELS)?;
//! let latent = vae.encode(&image, Posterior::Mean)?;
//! let decoded = vae.decode(&latent)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::PathBuf;

use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use crate::batch::{self, BatchSize};
use crate::device::{self, DeviceError, DeviceRequest, Precision};
use crate::hub::Hub;
use crate::imageio::{DEFAULT_MAX_PIXELS, InputImage, OutputImage};
use crate::latent::{Latent, LatentMeta, Posterior};
use crate::latent_space::{LatentForm, LatentSpace, LatentSpaceError, LatentSpaceRequest};
use crate::model::{AutoencoderTiny, DiagonalGaussian, Model};
use crate::tiling::{self, Plan, Tile, TileOptions, TilingError, default_max_memory};
use crate::weights::{self, Parts, WeightsError, WeightsInfo, WeightsSource};

/// Characters of the weights' SHA-256 recorded in latent metadata.
const HASH_PREFIX: usize = 16;

/// How to open a VAE: what `vae`'s model flags say, for a library user.
#[derive(Debug, Clone)]
pub struct VaeOptions {
    /// A `.safetensors` file, a diffusers folder, or a Hugging Face Hub repo
    /// id (`org/name`, `org/name/subfolder`). `None`: `$VAE_WEIGHTS`, then
    /// `./weights/`.
    pub weights: Option<PathBuf>,
    /// The Hub revision (branch, tag or commit) of a repo id.
    pub revision: Option<String>,
    pub device: DeviceRequest,
    pub precision: Precision,
    /// `--family`, `--scaling-factor` and `--latent-form`: see [`LatentSpace::resolve`].
    pub latent_space: LatentSpaceRequest,
    /// When to run in bands (`AutoencoderKL` in f32 only).
    pub tile: Tile,
    /// Peak memory to stay under; `None`: [`default_max_memory`].
    pub max_memory: Option<u64>,
    /// Where activations that do not fit `max_memory` spill, in files that
    /// have no name there; `None`: [`std::env::temp_dir`].
    pub tmp_dir: Option<PathBuf>,
    pub batch: BatchSize,
    /// The halves to load (decoding needs no encoder).
    pub parts: Parts,
    /// The largest image a latent may decode to, in pixels.
    pub max_pixels: u64,
    /// The Hub client for repo ids (`None`: from the environment, silent).
    pub hub: Option<Hub>,
}

impl VaeOptions {
    /// Defaults for `weights`: the CPU or a GPU (`--device auto`), f32, the
    /// weights' own latent space, bands when memory is short, both halves.
    pub fn new(weights: impl Into<PathBuf>) -> Self {
        Self { weights: Some(weights.into()), ..Self::default() }
    }
}

impl Default for VaeOptions {
    fn default() -> Self {
        Self {
            weights: None,
            revision: None,
            device: DeviceRequest::Auto,
            precision: Precision::F32,
            latent_space: LatentSpaceRequest::default(),
            tile: Tile::Auto,
            max_memory: None,
            tmp_dir: None,
            batch: BatchSize::Auto,
            parts: Parts::Both,
            max_pixels: DEFAULT_MAX_PIXELS,
            hub: None,
        }
    }
}

/// Why a VAE could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("{}: {cause}", path.display())]
    LatentSpace { path: PathBuf, cause: LatentSpaceError },
    #[error("--tile {0}: bands run in f32 only on a GPU; drop --tile or use --precision f32")]
    TileNeedsF32(usize),
    #[error("{}: TAESD writes the latent its big VAE's pipeline consumes; --latent-form raw is for the big VAE", path.display())]
    TinyRaw { path: PathBuf },
}

/// A VAE loaded on a device, ready to encode and decode.
pub struct Vae {
    model: Model,
    info: WeightsInfo,
    latent_space: LatentSpace,
    /// The weights' other form of latent, where it differs in shape
    /// (FLUX.2's raw and normalised forms), for decoding latents in it.
    other_space: Option<LatentSpace>,
    /// Lines worth telling a user about how the latent space was chosen.
    notes: Vec<String>,
    tiling: TileOptions,
    batch: BatchSize,
    max_pixels: u64,
    device: device::Chosen,
    /// The float type of weights and activations now (`--precision`, until
    /// a result that was not finite made it f32).
    dtype: FloatDType,
    /// The precision asked for, when a retry moved the model to f32.
    retried_from: Option<FloatDType>,
    /// Resident bytes once the weights were loaded: the base of every estimate.
    resident: u64,
    parts: Parts,
    /// Where the weights came from, to load them again in f32.
    source: WeightsSource,
}

/// A result that could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum VaeError {
    #[error("latent has {found} channels but the weights expect {expected}{}", also.map_or(String::new(), |c| format!(" (or {c} in their other form)")))]
    Channels { found: usize, expected: usize, also: Option<usize> },
    #[error("latent {height}x{width} would decode to {pixels} pixels, more than --max-pixels {max_pixels}")]
    TooLarge { height: usize, width: usize, pixels: u64, max_pixels: u64 },
    #[error("TAESD's encoder is deterministic (no posterior to sample from); drop --sample")]
    NoPosterior,
    #[error("these weights were loaded without their {0}")]
    NotLoaded(&'static str),
    #[error("a batch takes inputs of one size (and one posterior each)")]
    MixedBatch,
    // Not `#[from]`, which would make the cause a source as well, printed
    // twice by `{:#}`.
    #[error("loading the weights again in f32 after a result with NaN or Inf: {0}")]
    Reload(WeightsError),
    #[error("{0}")]
    NotFinite(NotFinite),
    #[error(transparent)]
    Tiling(#[from] TilingError),
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
        let number = crate::latent_space::short;
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
    /// Opens the VAE `options` name: chooses the device, finds the weights
    /// (downloading a Hub repo the cache lacks), loads them, and settles the
    /// latent space ([`LatentSpace::resolve`]). Every option the model cannot
    /// honour is an error here.
    pub fn open(options: &VaeOptions) -> Result<Self, OpenError> {
        let chosen = device::choose(options.device)?;
        device::check_precision(&chosen, options.precision)?;
        if let (Tile::Rows(rows), true) = (options.tile, chosen.gpu && options.precision != Precision::F32) {
            return Err(OpenError::TileNeedsF32(rows));
        }
        let source = resolve_weights(options)?;
        let dtype = options.precision.dtype();
        let (model, info) = weights::load(&source, &chosen.device, dtype, options.parts)?;
        if matches!(model, Model::Tiny(_)) && options.latent_space.form == Some(LatentForm::Raw) {
            return Err(OpenError::TinyRaw { path: source.file.clone() });
        }
        let resolved =
            LatentSpace::resolve(&info.latent, options.latent_space, model.latent_channels()).map_err(|cause| {
                let path = source.config_json.clone().unwrap_or_else(|| source.file.clone());
                OpenError::LatentSpace { path, cause }
            })?;
        // Bands bound the host's memory and move every band through it: on a
        // GPU the default is the plain pass.
        let tile = if chosen.gpu && options.tile == Tile::Auto { Tile::Off } else { options.tile };
        let max_memory = options.max_memory.unwrap_or_else(default_max_memory);
        // Without a reading from the OS, assume the weights in f32 twice over.
        let resident = tiling::resident_memory().unwrap_or(2 << 30);
        let mut notes = resolved.notes;
        notes.extend(info.notes.iter().cloned());
        Ok(Self {
            model,
            info,
            latent_space: resolved.space,
            other_space: resolved.other,
            notes,
            tiling: TileOptions {
                tile,
                max_memory,
                tmp_dir: options.tmp_dir.clone().unwrap_or_else(std::env::temp_dir),
            },
            batch: options.batch,
            max_pixels: options.max_pixels,
            device: chosen,
            dtype,
            retried_from: None,
            resident,
            parts: options.parts,
            source,
        })
    }

    /// The network, for reports and for checks of its layers.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The weights file and what was read from it.
    pub fn info(&self) -> &WeightsInfo {
        &self.info
    }

    /// How latents are scaled: what [`Vae::encode`] writes and, for latents
    /// without scaling metadata, what [`Vae::decode`] assumes.
    pub fn latent_space(&self) -> &LatentSpace {
        &self.latent_space
    }

    /// How the latent space was chosen, and how the weights were read: one
    /// line each, for a user.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Whether [`Vae::encode`] can draw from a posterior (TAESD has none).
    pub fn has_posterior(&self) -> bool {
        !matches!(self.model, Model::Tiny(_))
    }

    /// The device, as `--device` resolved it.
    pub fn device(&self) -> &device::Chosen {
        &self.device
    }

    /// The float type the model computes in now.
    pub fn dtype(&self) -> FloatDType {
        self.dtype
    }

    /// The precision first asked for, once a result in it held NaN or Inf
    /// and was computed again in f32 (the model stays in f32 from then on).
    pub fn retried_from(&self) -> Option<FloatDType> {
        self.retried_from
    }

    /// When runs go in bands, the memory they budget for, and where they spill.
    pub fn tiling(&self) -> &TileOptions {
        &self.tiling
    }

    /// Encodes an image to a scaled latent: `(z - shift) * scaling_factor`,
    /// where `z` is the posterior mean or a seeded draw from the posterior.
    /// TAESD's encoder outputs that scaled latent directly and has no
    /// posterior (`Posterior::Sample` is refused). A result with NaN or Inf
    /// in f16/bf16 is computed again in f32; one that is not finite even
    /// then is an error.
    pub fn encode(&mut self, image: &InputImage, posterior: Posterior) -> Result<Latent, VaeError> {
        let mut latents = self.encode_batch(&[image], &[posterior])?;
        Ok(latents.pop().expect("one latent per image"))
    }

    /// [`Vae::encode`] for images of one size in one pass of the model (a
    /// batch: what a GPU runs fastest), each with its own posterior; the
    /// latents are those of encoding each alone. When one image would run in
    /// bands, they are encoded one by one (see [`Vae::encode_passes`]).
    pub fn encode_batch(&mut self, images: &[&InputImage], posteriors: &[Posterior]) -> Result<Vec<Latent>, VaeError> {
        if !self.parts.encoder() {
            return Err(VaeError::NotLoaded("encoder"));
        }
        let size = |image: &InputImage| (image.width, image.height);
        if images.len() != posteriors.len() || images.iter().any(|i| size(i) != size(images[0])) {
            return Err(VaeError::MixedBatch);
        }
        if !self.has_posterior() && posteriors.iter().any(|p| *p != Posterior::Mean) {
            return Err(VaeError::NoPosterior);
        }
        let latents = self.with_f32_retry(
            |vae| vae.run_encoder(images, posteriors),
            |latents| latents.as_ref().map_or(true, |latents| latents.iter().all(|l| all_finite(&l.data))),
        )??;
        for latent in &latents {
            let (scaling, shift) = self.latent_space.channel(0);
            if let Some(err) = NotFinite::of("the latent", &latent.data, (scaling, shift)) {
                return Err(VaeError::NotFinite(err));
            }
        }
        Ok(latents)
    }

    /// Decodes a scaled latent to an 8-bit image, cropped to the size recorded
    /// in its metadata. The latent's own scaling metadata wins over the
    /// model's: it says how that file was scaled. Refuses a latent of other
    /// channels, or one that would decode to more than `max_pixels`, before
    /// decoding.
    pub fn decode(&mut self, latent: &Latent) -> Result<OutputImage, VaeError> {
        let mut images = self.decode_batch(&[latent])?;
        Ok(images.pop().expect("one image per latent"))
    }

    /// [`Vae::decode`] for latents of one shape in one pass of the model
    /// (one by one when one would run in bands).
    pub fn decode_batch(&mut self, latents: &[&Latent]) -> Result<Vec<OutputImage>, VaeError> {
        let planar = self.decode_float_batch(latents)?;
        let images = latents.iter().zip(&planar).map(|(latent, planar)| self.postprocess(latent, planar));
        Ok(images.collect())
    }

    /// The decoder's float output `[C, 8h, 8w]` (about [-1, 1]; C is 3, or 4
    /// for Qwen-Image 2.1's RGBA), before postprocessing: for checks of exactness.
    pub fn decode_float(&mut self, latent: &Latent) -> Result<Vec<f32>, VaeError> {
        Ok(self.decode_float_batch(&[latent])?.pop().expect("one image per latent"))
    }

    /// [`Vae::decode_float`] for latents of one shape, as [`Vae::decode_batch`].
    pub fn decode_float_batch(&mut self, latents: &[&Latent]) -> Result<Vec<Vec<f32>>, VaeError> {
        if !self.parts.decoder() {
            return Err(VaeError::NotLoaded("decoder"));
        }
        let shape = |l: &Latent| (l.channels, l.height, l.width);
        if latents.iter().any(|l| shape(l) != shape(latents[0])) {
            return Err(VaeError::MixedBatch);
        }
        for latent in latents {
            self.check_latent(latent)?;
        }
        let planar = self.with_f32_retry(
            |vae| vae.run_decoder(latents),
            |planar| planar.as_ref().map_or(true, |planar| planar.iter().all(|p| all_finite(p))),
        )??;
        for (latent, planar) in latents.iter().zip(&planar) {
            if let Some(err) = NotFinite::of("the decoded image", planar, self.file_scaling(latent)) {
                return Err(VaeError::NotFinite(err));
            }
        }
        Ok(planar)
    }

    /// Whether this model decodes `latent`: its channels (in the form its
    /// metadata says, or either of the weights' forms), and an image of at
    /// most `max_pixels`.
    pub fn check_latent(&self, latent: &Latent) -> Result<(), VaeError> {
        let channels = self.model.latent_channels();
        let space = self.file_space(latent);
        if space.stored_channels(channels) != Some(latent.channels) {
            let expected = self.latent_space.stored_channels(channels).unwrap_or(channels);
            let also = self.other_space.as_ref().and_then(|s| s.stored_channels(channels));
            return Err(VaeError::Channels { found: latent.channels, expected, also });
        }
        let factor = (self.model.upscale() * space.patch()) as u64;
        let pixels = (latent.height as u64 * factor).saturating_mul(latent.width as u64 * factor);
        if pixels > self.max_pixels {
            let (height, width, max_pixels) = (latent.height, latent.width, self.max_pixels);
            return Err(VaeError::TooLarge { height, width, pixels, max_pixels });
        }
        Ok(())
    }

    /// `run(self)`, and once more in f32 when `finite` says its result is not.
    fn with_f32_retry<T>(&mut self, run: impl Fn(&Self) -> T, finite: impl Fn(&T) -> bool) -> Result<T, VaeError> {
        let out = run(self);
        if finite(&out) || self.dtype == FloatDType::F32 {
            return Ok(out);
        }
        let (model, _) =
            weights::load(&self.source, &self.device.device, FloatDType::F32, self.parts).map_err(VaeError::Reload)?;
        self.model = model;
        self.retried_from = Some(self.dtype);
        self.dtype = FloatDType::F32;
        Ok(run(self))
    }

    /// The float type of activations: the model's on a GPU, f32 on the CPU
    /// (where bf16 is the kernels' products only, see [`crate::kernels::Arithmetic`]).
    fn activations(&self) -> FloatDType {
        if self.device.gpu { self.dtype } else { FloatDType::F32 }
    }

    /// How `image` is encoded: whole or in bands (see [`tiling`]).
    /// Reduced-precision activations (a GPU's) always run whole: bands store
    /// f32 activations on the host, for the CPU's memory budget.
    pub fn encode_plan(&self, image: &InputImage) -> Plan {
        let f = self.input_multiple();
        if self.activations() != FloatDType::F32 {
            return Plan::Whole { estimate: self.resident };
        }
        let (height, width) = (image.height.div_ceil(f) * f, image.width.div_ceil(f) * f);
        match (&self.model, self.model.encoder_graph()) {
            (_, Some(graph)) => {
                self.tiling.plan(&graph, (self.model.image_channels(), height, width), height, self.resident)
            }
            (Model::Tiny(model), None) => self.untiled(model, height, width),
            (_, None) => Plan::Whole { estimate: self.resident },
        }
    }

    /// Image sides are padded to a multiple of this: the encoder's
    /// downscaling, times the patch of the latent form (FLUX.2 normalised: 16).
    fn input_multiple(&self) -> usize {
        self.model.downscale() * self.latent_space.patch()
    }

    /// How `latent` is decoded: whole or in bands.
    pub fn decode_plan(&self, latent: &Latent) -> Plan {
        let f = self.model.upscale();
        if self.activations() != FloatDType::F32 {
            return Plan::Whole { estimate: self.resident };
        }
        let (c, h, w) = self.file_space(latent).vae_shape((latent.channels, latent.height, latent.width));
        match (&self.model, self.model.decoder_graph()) {
            (_, Some(graph)) => self.tiling.plan(&graph, (c, h, w), f * h, self.resident),
            (Model::Tiny(model), None) => self.untiled(model, f * h, f * w),
            (_, None) => Plan::Whole { estimate: self.resident },
        }
    }

    /// The form `latent` is in, as [`Vae::decode`] reads it (its metadata's,
    /// else the weights' form that its channel count fits).
    pub fn latent_form_of(&self, latent: &Latent) -> LatentForm {
        self.file_space(latent).form()
    }

    /// How many inputs to read ahead and group into passes.
    pub fn read_ahead(&self) -> usize {
        self.batch.chunk(self.device.gpu)
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

    /// `latents` grouped into passes of [`Vae::decode_batch`], as
    /// [`Vae::encode_passes`] groups images.
    pub fn decode_passes(&self, latents: &[&Latent]) -> Vec<Vec<usize>> {
        let f = self.model.upscale();
        batch::passes(
            latents,
            |latent| (latent.channels, latent.height, latent.width),
            |latent| {
                let (_, h, w) = self.file_space(latent).vae_shape((latent.channels, latent.height, latent.width));
                self.pass_limit(self.decode_plan(latent), h * f * w * f)
            },
        )
    }

    /// How many inputs of `pixels` image pixels that `plan` runs one at a
    /// time may go through the model together: what `--batch-size` says,
    /// but one when a single input runs in bands, and with `--tile auto` in
    /// f32 (the CPU's default) only as many as the memory budget holds
    /// untiled, each input adding its activations to the weights. On a GPU
    /// tiling is off: its memory is not the host's.
    fn pass_limit(&self, plan: Plan, pixels: usize) -> usize {
        let wanted = self.batch.per_pass(self.device.gpu, pixels as u64);
        match plan {
            Plan::Banded { .. } => 1,
            Plan::Whole { estimate } if self.tiling.tile == Tile::Auto && self.activations() == FloatDType::F32 => {
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

    /// The encoder on `images` (of one size), unchecked.
    fn run_encoder(&self, images: &[&InputImage], posteriors: &[Posterior]) -> Result<Vec<Latent>, TilingError> {
        let Some(first) = images.first() else { return Ok(Vec::new()) };
        let plan = self.encode_plan(first);
        if images.len() > 1 && matches!(plan, Plan::Banded { .. }) {
            let each = images.iter().zip(posteriors).map(|(image, p)| self.run_encoder(&[image], &[*p]));
            return Ok(each.collect::<Result<Vec<_>, _>>()?.into_iter().flatten().collect());
        }
        let x = images.iter().map(|image| self.image_tensor(image)).collect();
        let x = Tensor::cat(x, 0).cast(self.activations());
        let space = &self.latent_space;
        let (z, posteriors, stored) = match (&self.model, self.model.encoder_graph()) {
            (Model::Tiny(model), _) => {
                let latents = model.encode(x).expect("Vae::encode_batch checks that the encoder is loaded");
                let latents = latents.cast(FloatDType::F32);
                // diffusers' pipeline scaling: 1 and 0 for every TAESD; its
                // output is already in the big VAE's scaled space.
                let (s, t) = (model.config.scaling_factor, model.config.shift_factor);
                let scaled = if (s, t) == (1.0, 0.0) { latents } else { (latents - t) * s };
                (scaled, vec![Posterior::Mean; images.len()], true)
            }
            (_, Some(graph)) => {
                let moments = tiling::run(&graph, x, &plan)?;
                let dist = DiagonalGaussian::from_moments(moments.cast(FloatDType::F32));
                let z = if posteriors.iter().all(|p| *p == Posterior::Mean) {
                    dist.mean
                } else {
                    // The mean's draw is the mean: zero noise.
                    let [_, c, h, w] = dist.mean.dims();
                    let noise = posteriors.iter().map(|p| match p {
                        Posterior::Sample { seed } => gaussian_noise([1, c, h, w], *seed, &self.device.device),
                        Posterior::Mean => Tensor::zeros([1, c, h, w], &self.device.device),
                    });
                    dist.sample(Tensor::cat(noise.collect(), 0))
                };
                (z, posteriors.to_vec(), false)
            }
            (_, None) => unreachable!("every model but TAESD is described as a graph"),
        };
        let [_, channels, height, width] = z.dims();
        let data = z.into_data().try_into_vec::<f32>().expect("the model computes in f32");
        let file_name = self.info.path.file_name().map(|n| n.to_string_lossy().into_owned());
        let each = data.chunks_exact(channels * height * width);
        let latents = images.iter().zip(posteriors).zip(each).map(|((image, posterior), z)| {
            let vae_shape = (channels, height, width);
            let (data, (channels, height, width)) = match stored {
                true => (z.to_vec(), vae_shape),
                false => (space.to_stored(z, vae_shape), space.stored_shape(vae_shape)),
            };
            let meta = LatentMeta {
                scaling_factor: Some(space.scaling_factor),
                shift_factor: Some(space.shift_factor),
                posterior: Some(posterior),
                width: Some(image.width),
                height: Some(image.height),
                weights: file_name.clone(),
                weights_sha256: self.info.sha256.hex().map(|hex| hex[..HASH_PREFIX.min(hex.len())].to_owned()),
                tool_version: Some(env!("CARGO_PKG_VERSION").to_owned()),
                family: space.family,
                channel_stats: space.channel_stats.clone(),
            };
            Latent { channels, height, width, data, meta }
        });
        Ok(latents.collect())
    }

    /// `image` as the encoder reads it, padded to [`Vae::input_multiple`]: RGB,
    /// or RGBA with an opaque alpha (1) for a VAE of RGBA images (Qwen-Image
    /// 2.1), as diffusers' pipeline makes of an RGB image.
    fn image_tensor(&self, image: &InputImage) -> Tensor<4> {
        let rgb = image.to_tensor(self.input_multiple(), &self.device.device);
        match self.model.image_channels() {
            4 => {
                let [b, _, h, w] = rgb.dims();
                let alpha = Tensor::ones([b, 1, h, w], &self.device.device);
                Tensor::cat(vec![rgb, alpha], 1)
            }
            _ => rgb,
        }
    }

    /// The decoder's output as an 8-bit image, cropped to the recorded size
    /// (RGB: the alpha plane of an RGBA VAE's output is not written).
    fn postprocess(&self, latent: &Latent, planar: &[f32]) -> OutputImage {
        let (_, h, w) = self.file_space(latent).vae_shape((latent.channels, latent.height, latent.width));
        let (full_w, full_h) = (w * self.model.upscale(), h * self.model.upscale());
        let width = latent.meta.width.filter(|&w| w > 0 && w <= full_w).unwrap_or(full_w);
        let height = latent.meta.height.filter(|&h| h > 0 && h <= full_h).unwrap_or(full_h);
        OutputImage::from_planar(planar, full_w, full_h, width, height)
    }

    /// The decoder on `latents` (of one shape, each checked), unchecked
    /// results: each read in its own form and scaling. Wan's decoder output
    /// is clamped to [-1, 1], as diffusers' `_decode` does.
    fn run_decoder(&self, latents: &[&Latent]) -> Result<Vec<Vec<f32>>, TilingError> {
        let Some(first) = latents.first() else { return Ok(Vec::new()) };
        let plan = self.decode_plan(first);
        if latents.len() > 1 && matches!(plan, Plan::Banded { .. }) {
            let each = latents.iter().map(|latent| self.run_decoder(&[latent]));
            return Ok(each.collect::<Result<Vec<_>, _>>()?.into_iter().flatten().collect());
        }
        let device = &self.device.device;
        let image = match (&self.model, self.model.decoder_graph()) {
            (Model::Tiny(model), _) => {
                let p = latents.iter().map(|latent| {
                    let p = self.tiny_input(model, latent);
                    let shape = [1, latent.channels, latent.height, latent.width];
                    Tensor::<4>::from_data(TensorData::new(p, shape), (device, DType::from(self.activations())))
                });
                model.decode(Tensor::cat(p.collect(), 0)).expect("Vae::decode_batch checks that the decoder is loaded")
            }
            (_, Some(graph)) => {
                let z = latents.iter().map(|latent| {
                    let space = self.file_space(latent);
                    let stored = (latent.channels, latent.height, latent.width);
                    let (c, h, w) = space.vae_shape(stored);
                    let z = space.from_stored(&latent.data, stored);
                    Tensor::<4>::from_data(TensorData::new(z, [1, c, h, w]), device)
                });
                let z = Tensor::cat(z.collect(), 0).cast(self.activations());
                let image = tiling::run(&graph, z, &plan)?;
                if self.model.clamps_output() { image.clamp(-1.0, 1.0) } else { image }
            }
            (_, None) => unreachable!("every model but TAESD is described as a graph"),
        };
        let [_, c, h, w] = image.dims();
        let image = image.cast(FloatDType::F32).into_data().try_into_vec::<f32>().expect("cast to f32 above");
        Ok(image.chunks_exact(c * h * w).map(<[f32]>::to_vec).collect())
    }

    /// TAESD's input for `latent`: the big VAE's latent scaled as this
    /// model's latent space (the data itself when it already is, as for
    /// latents TAESD or that VAE wrote), then diffusers' pipeline scaling
    /// undone (1 and 0 for every TAESD). In f64.
    fn tiny_input(&self, model: &AutoencoderTiny, latent: &Latent) -> Vec<f32> {
        let file = self.file_space(latent);
        let (s, t) = (model.config.scaling_factor, model.config.shift_factor);
        let shape = (latent.channels, latent.height, latent.width);
        let scaled = if file == self.latent_space {
            latent.data.clone()
        } else {
            self.latent_space.to_stored(&file.from_stored(&latent.data, shape), file.vae_shape(shape))
        };
        if (s, t) == (1.0, 0.0) {
            return scaled;
        }
        scaled.iter().map(|&v| (f64::from(v) / s + t) as f32).collect()
    }
}

impl Vae {
    /// How `latent` is stored: as its metadata says (statistics, scaling,
    /// else its family's), else as this model's latent space, else as the
    /// weights' other form, whichever fits its channel count first (the
    /// metadata's, or this model's, when none fits: [`Vae::check_latent`]
    /// refuses it then).
    fn file_space(&self, latent: &Latent) -> LatentSpace {
        let channels = self.model.latent_channels();
        let own = latent.meta.latent_space();
        let candidates = own.iter().chain([&self.latent_space]).chain(self.other_space.iter());
        let fitting = candidates.clone().find(|s| s.stored_channels(channels) == Some(latent.channels));
        fitting.or(own.as_ref()).unwrap_or(&self.latent_space).clone()
    }

    /// `(scale, shift)` of `latent`'s first channel, for messages.
    fn file_scaling(&self, latent: &Latent) -> (f64, f64) {
        self.file_space(latent).channel(0)
    }

    /// Standard deviation of `latent` read as its file says and stored
    /// again as this model's latent space would store it: about 1 when they
    /// fit (scaling factors and statistics are chosen to give unit variance).
    pub fn rescaled_std(&self, latent: &Latent) -> f64 {
        let file = self.file_space(latent);
        let shape = (latent.channels, latent.height, latent.width);
        let z = file.from_stored(&latent.data, shape);
        let vae_shape = file.vae_shape(shape);
        let ours =
            if self.latent_space.patch() > 1 && (!vae_shape.1.is_multiple_of(2) || !vae_shape.2.is_multiple_of(2)) {
                LatentSpace::raw(None)
            } else {
                self.latent_space.clone()
            };
        let values = ours.to_stored(&z, vae_shape);
        let n = values.len().max(1) as f64;
        let (sum, sum_sq) = values.iter().map(|&v| f64::from(v)).fold((0.0, 0.0), |(s, q), v| (s + v, q + v * v));
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

/// The weights `options` name: a path or a Hub repo.
fn resolve_weights(options: &VaeOptions) -> Result<WeightsSource, WeightsError> {
    let (explicit, revision) = (options.weights.as_deref(), options.revision.as_deref());
    match &options.hub {
        Some(hub) => weights::resolve(explicit, revision, hub),
        None => weights::resolve(explicit, revision, &Hub::from_env()),
    }
}
