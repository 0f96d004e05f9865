//! The shape of an `AutoencoderTiny` (TAESD), as diffusers' `config.json`
//! describes it, plus the latent scaling of the big VAE it stands in for.

use serde::{Deserialize, Serialize};

use crate::model::Family;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoencoderTinyConfig {
    /// Image channels (3).
    pub in_channels: usize,
    pub out_channels: usize,
    /// Width of each encoder stage (a convolution, then its blocks); empty
    /// when the weights hold no encoder (an original `*_decoder` file).
    pub encoder_block_out_channels: Vec<usize>,
    /// `AutoencoderTinyBlock`s per encoder stage.
    pub num_encoder_blocks: Vec<usize>,
    /// Width of each decoder stage; empty when the weights hold no decoder.
    pub decoder_block_out_channels: Vec<usize>,
    /// `AutoencoderTinyBlock`s per decoder stage.
    pub num_decoder_blocks: Vec<usize>,
    /// 4 (TAESD, TAESDXL) or 16 (TAESD3, TAEF1).
    pub latent_channels: usize,
    /// Nearest-neighbour upsampling between decoder stages.
    pub upsampling_scaling_factor: usize,
    /// diffusers' pipeline scaling: a pipeline's latent is
    /// `(encoder output - shift_factor) * scaling_factor`. 1 and 0 for every
    /// TAESD: its encoder already outputs the big VAE's *scaled* latent.
    pub scaling_factor: f64,
    pub shift_factor: f64,
    /// The big VAE whose latent space this TAESD was distilled on, as its
    /// `(scaling_factor, shift_factor)`: a pipeline latent `p` is that VAE's
    /// `(z - vae_shift_factor) * vae_scaling_factor` (ComfyUI's `vae_scale`
    /// and `vae_shift`). Latent files record it, so that the big VAE decodes
    /// what TAESD encodes and the other way round. Not in diffusers'
    /// config.json (the weights do not say which VAE they were distilled
    /// from): see `crate::weights` for where it comes from.
    pub vae_scaling_factor: f64,
    pub vae_shift_factor: f64,
}

impl AutoencoderTinyConfig {
    /// `madebyollin/taesd` `config.json`: four stages of 64 channels, 4
    /// latent channels, for SD 1.x/2.x latents.
    pub fn taesd() -> Self {
        Self::for_family(Family::Sd1)
    }

    /// The TAESD of `family`: `madebyollin/taesd`, `taesdxl`, `taesd3` and
    /// `taef1` share one architecture and differ in latent channels (and weights).
    pub fn for_family(family: Family) -> Self {
        let (vae_scaling_factor, vae_shift_factor) = family.scaling();
        Self {
            in_channels: 3,
            out_channels: 3,
            encoder_block_out_channels: vec![64; 4],
            num_encoder_blocks: vec![1, 3, 3, 3],
            decoder_block_out_channels: vec![64; 4],
            num_decoder_blocks: vec![3, 3, 3, 1],
            latent_channels: family.latent_channels(),
            upsampling_scaling_factor: 2,
            scaling_factor: 1.0,
            shift_factor: 0.0,
            vae_scaling_factor,
            vae_shift_factor,
        }
    }

    /// The family whose latents these are, for reports.
    pub fn family(&self) -> Option<Family> {
        Family::of(self.latent_channels, self.vae_scaling_factor, self.vae_shift_factor)
    }

    pub fn has_encoder(&self) -> bool {
        !self.encoder_block_out_channels.is_empty()
    }

    pub fn has_decoder(&self) -> bool {
        !self.decoder_block_out_channels.is_empty()
    }

    /// Image pixels per latent position along a side, encoding: one
    /// stride-2 convolution per stage after the first (8 for TAESD).
    pub fn downscale(&self) -> usize {
        1 << self.encoder_block_out_channels.len().saturating_sub(1)
    }

    /// The same, decoding: one upsampling per stage but the last.
    pub fn upscale(&self) -> usize {
        let stages = self.decoder_block_out_channels.len().saturating_sub(1);
        self.upsampling_scaling_factor.saturating_pow(stages as u32)
    }

    /// Rejects configurations the model cannot be built with (they come
    /// from a file, so they can be anything).
    pub fn check(&self) -> Result<(), String> {
        let stages = |what: &str, widths: &[usize], blocks: &[usize]| {
            if widths.len() != blocks.len() {
                return Err(format!("{what}: {} widths for {} stages", widths.len(), blocks.len()));
            }
            // diffusers' EncoderTiny / DecoderTiny chain their stages with no
            // projection, so every stage has the width of the first.
            if widths.iter().any(|&w| w == 0 || w != widths[0]) {
                return Err(format!("{what}: stage widths {widths:?} differ (diffusers needs them equal)"));
            }
            Ok(())
        };
        // A config.json can say anything; no TAESD has more than 3 blocks a stage.
        if let Some(n) = self.num_encoder_blocks.iter().chain(&self.num_decoder_blocks).find(|&&n| n > 64) {
            return Err(format!("{n} blocks in one stage"));
        }
        stages("encoder", &self.encoder_block_out_channels, &self.num_encoder_blocks)?;
        stages("decoder", &self.decoder_block_out_channels, &self.num_decoder_blocks)?;
        if !self.has_encoder() && !self.has_decoder() {
            return Err("neither an encoder nor a decoder".to_owned());
        }
        if self.latent_channels == 0 || self.in_channels == 0 || self.out_channels == 0 {
            return Err(format!("degenerate architecture {self:?}"));
        }
        if !(1..=8).contains(&self.upsampling_scaling_factor) || self.downscale() > 1 << 10 || self.upscale() > 1 << 10
        {
            return Err(format!("unusable resolution change {self:?}"));
        }
        let finite = [self.scaling_factor, self.vae_scaling_factor].iter().all(|s| s.is_finite() && *s != 0.0)
            && self.shift_factor.is_finite()
            && self.vae_shift_factor.is_finite();
        if !finite {
            return Err(format!(
                "unusable scaling factors {} / {} (shift {} / {})",
                self.scaling_factor, self.vae_scaling_factor, self.shift_factor, self.vae_shift_factor
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_scale_by_8() {
        let c = AutoencoderTinyConfig::taesd();
        assert_eq!((c.downscale(), c.upscale()), (8, 8));
        assert_eq!(c.family(), Some(Family::Sd1));
        assert_eq!(AutoencoderTinyConfig::for_family(Family::Flux).latent_channels, 16);
        assert!(c.check().is_ok());
    }

    #[test]
    fn refuses_unequal_stage_widths() {
        let c = AutoencoderTinyConfig {
            encoder_block_out_channels: vec![64, 64, 32, 64],
            ..AutoencoderTinyConfig::taesd()
        };
        assert!(c.check().unwrap_err().contains("differ"));
    }

    #[test]
    fn half_a_model_is_fine() {
        let c = AutoencoderTinyConfig {
            encoder_block_out_channels: vec![],
            num_encoder_blocks: vec![],
            ..AutoencoderTinyConfig::taesd()
        };
        assert!(c.check().is_ok());
        assert_eq!(c.upscale(), 8);
    }
}
