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
    /// Wan 2.2 TI2V (`AutoencoderKLWan` with `is_residual`): 48 channels at
    /// 16x, each normalised by a fixed mean and standard deviation.
    Wan22,
    /// Qwen-Image 2.1 (`AutoencoderKLQwenImage21`): 64 channels at 16x, of an
    /// RGBA image, each normalised by a fixed mean and standard deviation.
    QwenImage21,
}

impl Family {
    pub const ALL: [Family; 9] = [
        Family::Sd1,
        Family::Sd2,
        Family::Sdxl,
        Family::Sd3,
        Family::Flux,
        Family::Flux2,
        Family::Wan21,
        Family::Wan22,
        Family::QwenImage21,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Family::Sd1 => "sd1",
            Family::Sd2 => "sd2",
            Family::Sdxl => "sdxl",
            Family::Sd3 => "sd3",
            Family::Flux => "flux",
            Family::Flux2 => "flux2",
            Family::Wan21 => "wan21",
            Family::Wan22 => "wan22",
            Family::QwenImage21 => "qwenimage21",
        }
    }

    /// Other names `--family` and latent metadata accept.
    fn aliases(self) -> &'static [&'static str] {
        match self {
            Family::Flux => &["flux1"],
            Family::Flux2 => &["flux.2"],
            Family::Wan21 => &["wan2.1", "qwen-image", "qwen"],
            Family::Wan22 => &["wan2.2", "wan-2.2"],
            Family::QwenImage21 => &["qwen-image-2.1", "qwen-image-21", "qwen2.1"],
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
            Family::Flux2 | Family::Wan21 | Family::Wan22 | Family::QwenImage21 => (1.0, 0.0),
        }
    }

    /// The fixed per-channel `(latents_mean, latents_std)` of the family's
    /// `config.json`, where it has them (FLUX.2's come with each weights file).
    pub fn channel_stats(self) -> Option<(&'static [f64], &'static [f64])> {
        match self {
            Family::Wan21 => Some((&WAN21_LATENTS_MEAN, &WAN21_LATENTS_STD)),
            Family::Wan22 => Some((&WAN22_LATENTS_MEAN, &WAN22_LATENTS_STD)),
            Family::QwenImage21 => Some((&QWEN_IMAGE21_LATENTS_MEAN, &QWEN_IMAGE21_LATENTS_STD)),
            _ => None,
        }
    }

    /// Channels of the VAE's latent (before any patching).
    pub fn latent_channels(self) -> usize {
        match self {
            Family::Sd1 | Family::Sd2 | Family::Sdxl => 4,
            Family::Sd3 | Family::Flux | Family::Wan21 => 16,
            Family::Flux2 => 32,
            Family::Wan22 => 48,
            Family::QwenImage21 => 64,
        }
    }

    /// Image pixels per position of the VAE's latent along a side (before
    /// any patching): 16 for Wan 2.2 and Qwen-Image 2.1, 8 for the others.
    pub fn downscale(self) -> usize {
        match self {
            Family::Wan22 | Family::QwenImage21 => 16,
            _ => 8,
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

/// Wan 2.2's `latents_mean` and `latents_std`, as ComfyUI's `Wan22` latent
/// format has them (`comfy/latent_formats.py`). diffusers has no defaults
/// for Wan 2.2: its pipelines read them from the VAE's `config.json`, which
/// wins here too when a folder has one.
const WAN22_LATENTS_MEAN: [f64; 48] = [
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891, 0.1570,
    -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502, -0.2055, -0.0322,
    0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520,
    0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
];
const WAN22_LATENTS_STD: [f64; 48] = [
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165,
    0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659, 0.7069, 0.5338, 0.4889, 0.4917,
    0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600,
    0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
];

/// Qwen-Image 2.1's `latents_mean` and `latents_std`, from diffusers'
/// `AutoencoderKLQwenImage21` defaults.
// 0.5236 is a statistic, not pi / 6.
#[allow(clippy::approx_constant)]
const QWEN_IMAGE21_LATENTS_MEAN: [f64; 64] = [
    0.5126, 0.7721, -0.0631, 1.3506, -0.7855, -2.1025, -0.3458, 1.3722, 1.8873, -1.7177, -0.6510, 0.2732, 0.7562,
    -0.6163, -1.0277, 3.8363, 2.0210, 0.0472, 0.9320, 2.0087, 2.4954, -0.1391, -1.4249, 1.8464, -0.5236, 1.2826,
    3.7046, -1.3035, 2.7286, -1.4518, -1.9036, -1.9955, -0.0342, -1.0265, -0.7636, 3.0555, 0.0746, -3.0751, -0.1076,
    1.7376, -1.0914, -1.9435, -0.2784, -1.3680, 0.4809, -0.4433, 0.3764, 0.5729, -2.0595, 1.0960, -1.3260, -2.0211,
    -5.0179, 0.5275, 4.0162, 1.8505, 0.3026, 1.9373, 1.4937, 0.2632, 0.5547, -1.7121, -0.1562, 0.0304,
];
const QWEN_IMAGE21_LATENTS_STD: [f64; 64] = [
    3.2001, 3.2936, 3.4321, 3.0091, 3.1061, 4.0379, 4.0705, 3.7910, 3.0785, 3.6500, 3.9308, 3.0904, 2.8778, 3.7675,
    3.7320, 5.0756, 3.2864, 4.0397, 3.1317, 4.0443, 2.9249, 3.9454, 3.0988, 4.2489, 3.4896, 3.8513, 3.9323, 3.4719,
    3.7498, 4.2830, 3.5694, 4.2467, 3.9037, 3.2947, 5.0770, 3.5075, 3.2700, 3.4767, 2.8063, 5.1125, 3.5327, 4.7833,
    3.1286, 4.1819, 3.8527, 3.8312, 3.5605, 4.3875, 3.9624, 4.0168, 3.5643, 4.0550, 5.5614, 4.2963, 4.4080, 3.4959,
    3.8747, 3.7608, 3.5735, 3.1490, 3.7662, 3.6746, 3.4563, 3.8161,
];

/// The scaling factor of SD 1.x/2.x, used when nothing else says otherwise.
pub const SD15_SCALING_FACTOR: f64 = 0.18215;
