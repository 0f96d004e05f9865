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

    /// The model family these settings point to, for reports. SD 1.x/2.x and
    /// SDXL share one architecture: only the scaling factor (from
    /// `config.json` or `--scaling-factor`) tells them apart.
    pub fn family(&self) -> &'static str {
        let is = |a: f64, b: f64| (a - b).abs() < 1e-4;
        match (self.latent_channels, self.scaling_factor, self.shift_factor) {
            (4, f, s) if is(f, SD15_SCALING_FACTOR) && is(s, 0.0) => {
                "sd1/sd2 (or sdxl, whose config.json says 0.13025)"
            }
            (4, f, s) if is(f, 0.13025) && is(s, 0.0) => "sdxl",
            (16, f, s) if is(f, 1.5305) && is(s, 0.0609) => "sd3",
            (16, f, s) if is(f, 0.3611) && is(s, 0.1159) => "flux",
            (16, ..) => "16-channel (sd3 or flux; scaling unknown)",
            _ => "unknown",
        }
    }

    /// Spatial downsampling between image and latent: 2^(levels - 1), 8 for SD.
    pub fn downscale(&self) -> usize {
        1 << (self.block_out_channels.len().saturating_sub(1))
    }
}

/// The scaling factor of SD 1.x/2.x, used when nothing else says otherwise.
pub const SD15_SCALING_FACTOR: f64 = 0.18215;
