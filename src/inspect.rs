//! `vae inspect`: what a weights or latent file holds, without running the model.

use std::path::Path;

use std::fmt::{self, Write as _};

use anyhow::{Context, Result};
use burn::tensor::{Device, FloatDType};
use serde::Serialize;

use crate::latent::{Latent, LatentFormat};
use crate::latent_space::{LatentSpace, LatentSpaceRequest};
use crate::model::{Family, Model, WanResidualConfig};
use crate::weights::{self, Parts, WeightsSource};

/// What `vae inspect` says about one file. Serialised, it is the JSON line
/// of `--json` (`kind` first: `weights` or `latent`); [`render`] gives the
/// `key: value` lines.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Report {
    Weights(WeightsReport),
    Latent(LatentReport),
}

/// A weights file or folder, checked without running the model.
#[derive(Debug, Clone, Serialize)]
pub struct WeightsReport {
    /// The diffusers class (`AutoencoderKL`, `AutoencoderKLFlux2`,
    /// `AutoencoderKLWan`, `AutoencoderKLQwenImage21`, `AutoencoderTiny`).
    pub model: String,
    pub file: String,
    pub layout: String,
    /// The key prefix of a full checkpoint (`first_stage_model.`).
    pub prefix: Option<String>,
    pub dtype: String,
    pub parameters: u64,
    /// Tensors of the file that are not the VAE's.
    pub other_tensors: usize,
    /// The family its latents fit, in words (for TAESD, the big VAE's).
    pub family: String,
    pub scaling_factor: f64,
    pub shift_factor: f64,
    /// How latents are stored by default, in words (raw, scaled, or
    /// normalised per channel).
    pub latent_space: String,
    /// The other form the weights read, where it has another shape
    /// (FLUX.2's normalised latent: 128 channels of 2x2 patches).
    pub other_latent_form: Option<String>,
    pub latent_channels: usize,
    /// Image pixels per latent position along a side (8; 16 for Wan 2.2 and
    /// Qwen-Image 2.1).
    pub downscale: usize,
    #[serde(flatten)]
    pub architecture: Box<Architecture>,
    /// `None` when the file could not be read again to hash it.
    pub sha256: Option<String>,
    /// What was checked.
    pub check: String,
}

/// The configuration of the network, by model class.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Architecture {
    Kl(KlArchitecture),
    Tiny(TinyArchitecture),
    Wan(WanArchitecture),
    WanResidual(WanResidualArchitecture),
}

/// A Wan 2.1 / Qwen-Image VAE's configuration (`AutoencoderKLWan`).
#[derive(Debug, Clone, Serialize)]
pub struct WanArchitecture {
    pub base_dim: usize,
    pub dim_mult: Vec<usize>,
    pub num_res_blocks: usize,
    /// Levels that also downsample in time (unused for images).
    pub temperal_downsample: Vec<bool>,
}

/// A Wan 2.2 / Qwen-Image 2.1 VAE's configuration (`AutoencoderKLWan` with
/// `is_residual`, `AutoencoderKLQwenImage21`).
#[derive(Debug, Clone, Serialize)]
pub struct WanResidualArchitecture {
    pub base_dim: usize,
    /// The decoder's own base width.
    pub decoder_base_dim: usize,
    pub dim_mult: Vec<usize>,
    /// Per encoder level (the decoder has one more).
    pub num_res_blocks: usize,
    pub temperal_downsample: Vec<bool>,
    /// Down and up blocks with shortcuts (`AvgDown3D`, `DupUp3D`): always
    /// true here, as in these families' `config.json`.
    pub is_residual: bool,
    /// Channels of the image the VAE reads and writes, in words.
    pub image: String,
    /// The image is cut into `patch_size` x `patch_size` patches before the
    /// encoder (1: none).
    pub patch_size: usize,
    /// Channels of the encoder's `conv_in` and the decoder's `conv_out`.
    pub in_channels: usize,
    pub out_channels: usize,
    /// Causal 3D convolutions (one frame uses their last tap) or 2D ones.
    pub convolutions: String,
}

impl WanResidualArchitecture {
    fn of(c: &WanResidualConfig) -> Self {
        let image = match c.image_channels() {
            4 => "RGBA (an opaque alpha is added to RGB images; the decoded alpha is not written)".to_owned(),
            3 => "RGB".to_owned(),
            n => format!("{n} channels"),
        };
        let convolutions = if c.conv3d { "causal 3D (one frame: their last temporal tap)" } else { "2D" };
        Self {
            base_dim: c.base_dim,
            decoder_base_dim: c.decoder_base_dim,
            dim_mult: c.dim_mult.clone(),
            num_res_blocks: c.num_res_blocks,
            temperal_downsample: c.temperal_downsample.clone(),
            is_residual: true,
            image,
            patch_size: c.patch_size,
            in_channels: c.in_channels,
            out_channels: c.out_channels,
            convolutions: convolutions.to_owned(),
        }
    }
}

/// An `AutoencoderKL`'s configuration.
#[derive(Debug, Clone, Serialize)]
pub struct KlArchitecture {
    pub block_out_channels: Vec<usize>,
    /// The decoder's, where they differ (FLUX.2's small decoder).
    pub decoder_block_out_channels: Option<Vec<usize>>,
    pub layers_per_block: usize,
    pub norm_num_groups: usize,
    pub quant_convs: bool,
    pub mid_block_attention: bool,
}

/// An `AutoencoderTiny`'s (TAESD's) configuration.
#[derive(Debug, Clone, Serialize)]
pub struct TinyArchitecture {
    /// `encoder and decoder`, `encoder only` or `decoder only`.
    pub halves: String,
    pub encoder_block_out_channels: Vec<usize>,
    pub num_encoder_blocks: Vec<usize>,
    pub decoder_block_out_channels: Vec<usize>,
    pub num_decoder_blocks: Vec<usize>,
    pub tiling: String,
}

/// A latent file: its shape, metadata and per-channel statistics.
#[derive(Debug, Clone, Serialize)]
pub struct LatentReport {
    pub file: String,
    /// The file format, in words.
    pub format: String,
    /// `[1, channels, height, width]`.
    pub shape: [usize; 4],
    pub decodes_to: String,
    pub family: Option<String>,
    pub scaling_factor: Option<f64>,
    pub shift_factor: Option<f64>,
    pub weights: Option<String>,
    pub weights_sha256: Option<String>,
    pub channels: Vec<ChannelStats>,
}

/// One latent channel's values, summed up (in f64, the f32 extremes too).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ChannelStats {
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
}

/// A report on `path`: weights (a folder, or a safetensors file with VAE
/// tensors) or a latent (anything else that reads as one).
pub fn inspect(path: &Path) -> Result<Report> {
    if !path.is_dir() {
        crate::output::check_input(path).with_context(|| format!("{}: cannot read", path.display()))?;
    }
    let weights_like = path.is_dir()
        || (LatentFormat::of(path) == LatentFormat::Safetensors && !looks_like_latent(path).unwrap_or(false));
    if weights_like { inspect_weights(path) } else { inspect_latent(path) }
}

/// A safetensors file with a `latent` or `latent_tensor` tensor, or only one
/// tensor, is a latent; weights have hundreds.
fn looks_like_latent(path: &Path) -> Result<bool> {
    let file = std::fs::File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    // SAFETY: the map is only read, and only its header, while this function runs.
    let bytes = unsafe { memmap2::Mmap::map(&file) }?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).ok().context("not safetensors")?;
    Ok(meta.tensors().len() <= 2)
}

fn inspect_weights(path: &Path) -> Result<Report> {
    let source = WeightsSource::from_path(path)?;
    // Every tensor is checked by name, shape and dtype; none is read.
    let (model, info) = weights::load(&source, &Device::flex(), FloatDType::F32, Parts::Neither)?;
    // The latent space the weights give, with no --family or --scaling-factor.
    let resolved = LatentSpace::resolve(&info.latent, LatentSpaceRequest::default(), model.latent_channels())
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let family = match resolved.space.family {
        Some(Family::Sd1) => "sd1/sd2 (or sdxl: same architecture, its config.json says scaling 0.13025)",
        Some(f) => f.name(),
        None => "unknown (scaling and channels fit no preset)",
    };
    let (scaling_factor, shift_factor) = (resolved.space.scaling_factor, resolved.space.shift_factor);
    let (family, architecture) = match &model {
        Model::Kl(m) => {
            let c = &m.config;
            let architecture = KlArchitecture {
                block_out_channels: c.block_out_channels.clone(),
                decoder_block_out_channels: c.decoder_block_out_channels.clone(),
                layers_per_block: c.layers_per_block,
                norm_num_groups: c.norm_num_groups,
                quant_convs: c.use_quant_conv,
                mid_block_attention: c.mid_block_add_attention,
            };
            (family.to_owned(), Architecture::Kl(architecture))
        }
        Model::Wan(m) => {
            let c = &m.config;
            let architecture = WanArchitecture {
                base_dim: c.base_dim,
                dim_mult: c.dim_mult.clone(),
                num_res_blocks: c.num_res_blocks,
                temperal_downsample: c.temperal_downsample.clone(),
            };
            (family.to_owned(), Architecture::Wan(architecture))
        }
        Model::WanResidual(m) => (family.to_owned(), Architecture::WanResidual(WanResidualArchitecture::of(&m.config))),
        Model::Tiny(m) => {
            let c = &m.config;
            let halves = match (c.has_encoder(), c.has_decoder()) {
                (true, true) => "encoder and decoder",
                (true, false) => "encoder only",
                _ => "decoder only",
            };
            // TAESD's family is that of the big VAE it was distilled from.
            let notes: Vec<&str> = resolved.notes.iter().chain(&info.notes).map(String::as_str).collect();
            let family = format!("{} ({})", resolved.space.family.map_or("unknown", Family::name), notes.join("; "));
            let architecture = TinyArchitecture {
                halves: halves.to_owned(),
                encoder_block_out_channels: c.encoder_block_out_channels.clone(),
                num_encoder_blocks: c.num_encoder_blocks.clone(),
                decoder_block_out_channels: c.decoder_block_out_channels.clone(),
                num_decoder_blocks: c.num_decoder_blocks.clone(),
                tiling: "always untiled (--tile applies to AutoencoderKL)".to_owned(),
            };
            (family, Architecture::Tiny(architecture))
        }
    };
    // FLUX.2's VAE is an `AutoencoderKL` with a batch norm of its latent.
    let class = match (&model, info.latent.family) {
        (Model::Kl(_), Some(Family::Flux2)) => "AutoencoderKLFlux2",
        _ => model.class_name(),
    };
    Ok(Report::Weights(WeightsReport {
        model: class.to_owned(),
        file: info.path.display().to_string(),
        layout: info.layout.to_string(),
        prefix: info.prefix.map(str::to_owned),
        dtype: info.dtype,
        parameters: info.parameters,
        other_tensors: info.ignored,
        family,
        scaling_factor,
        shift_factor,
        latent_space: resolved.space.to_string(),
        other_latent_form: resolved.other.as_ref().map(LatentSpace::to_string),
        latent_channels: model.latent_channels(),
        downscale: model.downscale(),
        architecture: Box::new(architecture),
        sha256: info.sha256.hex().map(str::to_owned),
        check: "every VAE tensor present, with the expected shape and a float dtype".to_owned(),
    }))
}

fn inspect_latent(path: &Path) -> Result<Report> {
    let latent = Latent::read(path)?;
    let plane = latent.height * latent.width;
    let channels = latent
        .data
        .chunks(plane.max(1))
        .map(|values| {
            let n = values.len() as f64;
            let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
            let var = values.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
            let (min, max) = values.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            ChannelStats { mean, std: var.sqrt(), min: f64::from(min), max: f64::from(max) }
        })
        .collect();
    let m = latent.meta;
    let format = match LatentFormat::of(path) {
        LatentFormat::Safetensors => "safetensors",
        LatentFormat::Comfy => "ComfyUI .latent",
        LatentFormat::Npy => "NumPy .npy",
    };
    // Pixels per stored position along a side: the family's (8 unless it
    // says 16), times FLUX.2's patch in its normalised form. Without a
    // family (a .npy), the families of its channel count, where they agree.
    let by_channels: Vec<usize> =
        Family::ALL.iter().filter(|f| f.latent_channels() == latent.channels).map(|f| f.downscale()).collect();
    let (down, guessed) = match (m.family, by_channels.first()) {
        (Some(family), _) => (family.downscale(), false),
        (None, Some(&d)) if by_channels.iter().all(|&o| o == d) => (d, d != 8),
        _ => (8, false),
    };
    let f = down * m.channel_stats.as_ref().map_or(1, |s| s.patch);
    let (width, height) = (m.width.unwrap_or(f * latent.width), m.height.unwrap_or(f * latent.height));
    let how = if guessed { format!(", by its {} channels", latent.channels) } else { String::new() };
    Ok(Report::Latent(LatentReport {
        file: path.display().to_string(),
        format: format.to_owned(),
        shape: [1, latent.channels, latent.height, latent.width],
        decodes_to: format!("{width}x{height} (at {f}x{how})"),
        family: m.family.map(|f| f.name().to_owned()),
        scaling_factor: m.scaling_factor,
        shift_factor: m.shift_factor,
        weights: m.weights,
        weights_sha256: m.weights_sha256,
        channels,
    }))
}

/// The report as `key: value` lines, in the order of its JSON, with what is
/// unknown left out.
pub fn render(report: &Report) -> String {
    report.to_string()
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Lines(String::new());
        match self {
            Report::Weights(w) => {
                out.text("kind", Some("weights"));
                out.text("model", Some(&w.model));
                out.text("file", Some(&w.file));
                out.text("layout", Some(&w.layout));
                out.text("prefix", w.prefix.as_deref());
                out.text("dtype", Some(&w.dtype));
                out.text("parameters", Some(&w.parameters.to_string()));
                out.text("other_tensors", Some(&w.other_tensors.to_string()));
                out.text("family", Some(&w.family));
                out.number("scaling_factor", Some(w.scaling_factor));
                out.number("shift_factor", Some(w.shift_factor));
                out.text("latent_space", Some(&w.latent_space));
                out.text("other_latent_form", w.other_latent_form.as_deref());
                out.text("latent_channels", Some(&w.latent_channels.to_string()));
                out.text("downscale", Some(&w.downscale.to_string()));
                match w.architecture.as_ref() {
                    Architecture::Kl(a) => {
                        out.list("block_out_channels", &a.block_out_channels);
                        if let Some(widths) = &a.decoder_block_out_channels {
                            out.list("decoder_block_out_channels", widths);
                        }
                        out.text("layers_per_block", Some(&a.layers_per_block.to_string()));
                        out.text("norm_num_groups", Some(&a.norm_num_groups.to_string()));
                        out.text("quant_convs", Some(&a.quant_convs.to_string()));
                        out.text("mid_block_attention", Some(&a.mid_block_attention.to_string()));
                    }
                    Architecture::Tiny(a) => {
                        out.text("halves", Some(&a.halves));
                        out.list("encoder_block_out_channels", &a.encoder_block_out_channels);
                        out.list("num_encoder_blocks", &a.num_encoder_blocks);
                        out.list("decoder_block_out_channels", &a.decoder_block_out_channels);
                        out.list("num_decoder_blocks", &a.num_decoder_blocks);
                        out.text("tiling", Some(&a.tiling));
                    }
                    Architecture::Wan(a) => {
                        out.text("base_dim", Some(&a.base_dim.to_string()));
                        out.list("dim_mult", &a.dim_mult);
                        out.text("num_res_blocks", Some(&a.num_res_blocks.to_string()));
                        out.flags("temperal_downsample", &a.temperal_downsample);
                    }
                    Architecture::WanResidual(a) => {
                        out.text("base_dim", Some(&a.base_dim.to_string()));
                        out.text("decoder_base_dim", Some(&a.decoder_base_dim.to_string()));
                        out.list("dim_mult", &a.dim_mult);
                        out.text("num_res_blocks", Some(&a.num_res_blocks.to_string()));
                        out.flags("temperal_downsample", &a.temperal_downsample);
                        out.text("is_residual", Some(&a.is_residual.to_string()));
                        out.text("image", Some(&a.image));
                        out.text("patch_size", Some(&a.patch_size.to_string()));
                        out.text("in_channels", Some(&a.in_channels.to_string()));
                        out.text("out_channels", Some(&a.out_channels.to_string()));
                        out.text("convolutions", Some(&a.convolutions));
                    }
                }
                out.text("sha256", w.sha256.as_deref());
                out.text("check", Some(&w.check));
            }
            Report::Latent(l) => {
                out.text("kind", Some("latent"));
                out.text("file", Some(&l.file));
                out.text("format", Some(&l.format));
                out.list("shape", &l.shape);
                out.text("decodes_to", Some(&l.decodes_to));
                out.text("family", l.family.as_deref());
                out.number("scaling_factor", l.scaling_factor);
                out.number("shift_factor", l.shift_factor);
                out.text("weights", l.weights.as_deref());
                out.text("weights_sha256", l.weights_sha256.as_deref());
                for (i, c) in l.channels.iter().enumerate() {
                    let line = format!(
                        "channel {i}: mean {:.4}, std {:.4}, min {:.4}, max {:.4}",
                        c.mean, c.std, c.min, c.max
                    );
                    out.0.push_str(&line);
                    out.0.push('\n');
                }
            }
        }
        f.write_str(&out.0)
    }
}

/// `key: value` lines; a value that is unknown (or not a number) is left out.
struct Lines(String);

impl Lines {
    fn text(&mut self, key: &str, value: Option<&str>) {
        if let Some(value) = value {
            let _ = writeln!(self.0, "{key}: {value}");
        }
    }

    /// A number as JSON writes it (`1.0`, `0.18215`).
    fn number(&mut self, key: &str, value: Option<f64>) {
        let shown = value.filter(|v| v.is_finite()).and_then(|v| serde_json::to_string(&v).ok());
        self.text(key, shown.as_deref());
    }

    /// Booleans as JSON writes them: `[false,true]`.
    fn flags(&mut self, key: &str, values: &[bool]) {
        let items: Vec<String> = values.iter().map(bool::to_string).collect();
        self.text(key, Some(&format!("[{}]", items.join(","))));
    }

    /// A list as JSON writes it: `[128,256]`.
    fn list(&mut self, key: &str, values: &[usize]) {
        let items: Vec<String> = values.iter().map(usize::to_string).collect();
        self.text(key, Some(&format!("[{}]", items.join(","))));
    }
}
