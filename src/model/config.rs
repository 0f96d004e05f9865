//! The shape of an `AutoencoderKL`, as diffusers' `config.json` describes it.
//!
//! The architecture part is read from the weights themselves (see
//! [`crate::weights::infer_config`]); the latent scaling belongs here too, so a
//! latent is always scaled with the factor of the model that produced it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoencoderKlConfig {
    /// Image channels (3).
    pub in_channels: usize,
    pub out_channels: usize,
    /// 4 for SD 1.x/2.x/XL, 16 for SD3 and FLUX.
    pub latent_channels: usize,
    /// Width of each resolution level, from the image side down.
    pub block_out_channels: Vec<usize>,
    /// The decoder's widths where they differ from the encoder's
    /// (`AutoencoderKLFlux2`); `None`: `block_out_channels`.
    #[serde(default)]
    pub decoder_block_out_channels: Option<Vec<usize>>,
    /// ResNets per encoder block (the decoder has one more per block).
    pub layers_per_block: usize,
    pub norm_num_groups: usize,
    /// Latents are stored as `(mean - shift_factor) * scaling_factor`.
    pub scaling_factor: f64,
    pub shift_factor: f64,
    /// `quant_conv` / `post_quant_conv` 1x1 convs exist (absent in SD3/FLUX).
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    /// The mid blocks hold a self-attention layer.
    pub mid_block_add_attention: bool,
}

impl AutoencoderKlConfig {
    /// `stabilityai/sd-vae-ft-mse` and the VAEs of SD 1.x/2.x.
    pub fn sd15() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            latent_channels: 4,
            block_out_channels: vec![128, 256, 512, 512],
            decoder_block_out_channels: None,
            layers_per_block: 2,
            norm_num_groups: 32,
            scaling_factor: SD15_SCALING_FACTOR,
            shift_factor: 0.0,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }

    /// `stabilityai/sdxl-vae`: the SD 1.x architecture with another scaling factor.
    pub fn sdxl() -> Self {
        Self { scaling_factor: 0.13025, ..Self::sd15() }
    }

    /// `black-forest-labs/FLUX.1-dev` `vae/config.json`: 16 latent channels, no quant convs.
    pub fn flux() -> Self {
        Self {
            latent_channels: 16,
            scaling_factor: 0.3611,
            shift_factor: 0.1159,
            use_quant_conv: false,
            use_post_quant_conv: false,
            ..Self::sd15()
        }
    }

    /// The family these settings point to, for reports.
    pub fn family(&self) -> Option<Family> {
        Family::of(self.latent_channels, self.scaling_factor, self.shift_factor)
    }

    /// Spatial downsampling between image and latent: 2^(levels - 1), 8 for SD.
    pub fn downscale(&self) -> usize {
        1 << (self.block_out_channels.len().saturating_sub(1))
    }

    /// The decoder's widths, from the image side down.
    pub fn decoder_channels(&self) -> &[usize] {
        self.decoder_block_out_channels.as_deref().unwrap_or(&self.block_out_channels)
    }

    /// Spatial upsampling between latent and image: 2^(decoder levels - 1).
    pub fn upscale(&self) -> usize {
        1 << (self.decoder_channels().len().saturating_sub(1))
    }
}

/// Model families sharing a latent space, with the scaling of their
/// `config.json` (`--family`, and the `family` latent metadata).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Sd1,
    Sd2,
    Sdxl,
    Sd3,
    Flux,
    /// FLUX.2 (dev, klein): `AutoencoderKLFlux2`, 32 channels, normalised by
    /// the batch-norm statistics its weights hold, over 2x2 patches.
    Flux2,
    /// Wan 2.1 and Qwen-Image (`AutoencoderKLWan`, `AutoencoderKLQwenImage`):
    /// 16 channels, each normalised by a fixed mean and standard deviation.
    Wan21,
}

impl Family {
    pub const ALL: [Family; 7] =
        [Family::Sd1, Family::Sd2, Family::Sdxl, Family::Sd3, Family::Flux, Family::Flux2, Family::Wan21];

    pub fn name(self) -> &'static str {
        match self {
            Family::Sd1 => "sd1",
            Family::Sd2 => "sd2",
            Family::Sdxl => "sdxl",
            Family::Sd3 => "sd3",
            Family::Flux => "flux",
            Family::Flux2 => "flux2",
            Family::Wan21 => "wan21",
        }
    }

    /// Other names `--family` and latent metadata accept.
    fn aliases(self) -> &'static [&'static str] {
        match self {
            Family::Flux => &["flux1"],
            Family::Flux2 => &["flux.2"],
            Family::Wan21 => &["wan2.1", "qwen-image", "qwen"],
            _ => &[],
        }
    }

    /// `(scaling_factor, shift_factor)`, from each family's VAE `config.json`
    /// (1 and 0 where latents are normalised per channel instead).
    pub fn scaling(self) -> (f64, f64) {
        match self {
            Family::Sd1 | Family::Sd2 => (SD15_SCALING_FACTOR, 0.0),
            Family::Sdxl => (0.13025, 0.0),
            Family::Sd3 => (1.5305, 0.0609),
            Family::Flux => (0.3611, 0.1159),
            Family::Flux2 | Family::Wan21 => (1.0, 0.0),
        }
    }

    /// The fixed per-channel `(latents_mean, latents_std)` of the family's
    /// `config.json`, where it has them (FLUX.2's come with each weights file).
    pub fn channel_stats(self) -> Option<(&'static [f64], &'static [f64])> {
        match self {
            Family::Wan21 => Some((&WAN21_LATENTS_MEAN, &WAN21_LATENTS_STD)),
            _ => None,
        }
    }

    /// Channels of the VAE's latent (before any patching).
    pub fn latent_channels(self) -> usize {
        match self {
            Family::Sd1 | Family::Sd2 | Family::Sdxl => 4,
            Family::Sd3 | Family::Flux | Family::Wan21 => 16,
            Family::Flux2 => 32,
        }
    }

    /// The family whose channels and scaling these are (SD 1.x and 2.x share
    /// theirs; `sd1` stands for both). Families normalised per channel are
    /// not told by a scale and shift.
    pub fn of(latent_channels: usize, scaling: f64, shift: f64) -> Option<Family> {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-4;
        Family::ALL.into_iter().filter(|f| f.channel_stats().is_none() && *f != Family::Flux2).find(|f| {
            let (s, t) = f.scaling();
            f.latent_channels() == latent_channels && close(s, scaling) && close(t, shift)
        })
    }
}

impl std::str::FromStr for Family {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.to_ascii_lowercase();
        Family::ALL.into_iter().find(|f| f.name() == s || f.aliases().contains(&s.as_str())).ok_or_else(|| {
            let names: Vec<&str> = Family::ALL.iter().map(|f| f.name()).collect();
            format!("unknown family '{s}' (one of {})", names.join(", "))
        })
    }
}

/// Wan 2.1's (and Qwen-Image's) `latents_mean` and `latents_std`, from
/// diffusers' `AutoencoderKLWan` and `AutoencoderKLQwenImage` defaults.
const WAN21_LATENTS_MEAN: [f64; 16] = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517, -0.3632, -0.1922,
    -0.9497, 0.2503, -0.2921,
];
const WAN21_LATENTS_STD: [f64; 16] = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253,
    2.8251, 1.9160,
];

/// The scaling factor of SD 1.x/2.x, used when nothing else says otherwise.
pub const SD15_SCALING_FACTOR: f64 = 0.18215;
