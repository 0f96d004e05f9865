//! The latent space: how a family of models scales the latents its diffusion
//! model consumes, which is what a latent file stores, and the one rule that
//! decides it from what the weights and the user say.
//!
//! A latent file holds `(z - shift) * scale` for the VAE's latent `z`: one
//! scale and shift for every channel in the SD era (`scaling_factor`,
//! `shift_factor` of diffusers' `config.json`), or a mean and standard
//! deviation per channel for families that normalise each channel
//! ([`ChannelStats`]).

use std::fmt;

use crate::model::Family;

/// How latents of one model are scaled.
#[derive(Debug, Clone, PartialEq)]
pub struct LatentSpace {
    /// The family whose latent space this is, when it is a known one.
    pub family: Option<Family>,
    /// A file holds `(z - shift) * scaling_factor` (per channel with [`ChannelStats`]).
    pub scaling_factor: f64,
    pub shift_factor: f64,
    /// Per-channel normalisation: channel `c` is stored as
    /// `(z - mean[c]) / std[c] * scaling_factor`, and `shift_factor` is unused.
    pub channel_stats: Option<ChannelStats>,
}

/// Per-channel mean and standard deviation of a latent space.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelStats {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

/// What the weights say about their latent space.
#[derive(Debug, Clone, PartialEq)]
pub enum WeightsScaling {
    /// The model's own `config.json` (`scaling_factor`, `shift_factor`).
    Config { scaling: f64, shift: f64 },
    /// A guess (TAESD: ComfyUI's `vae_scale`/`vae_shift`, madebyollin's file
    /// names, the channel count), and how it was made, for a note.
    Guess { scaling: f64, shift: f64, from: String },
    /// Nothing said: the defaults the architecture was read with (an
    /// `AutoencoderKL` file without `config.json`: SD 1.x's).
    Default { scaling: f64, shift: f64 },
}

/// What the user asked for: `--family` and `--scaling-factor`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LatentSpaceRequest {
    pub family: Option<Family>,
    pub scaling_factor: Option<f64>,
}

/// A latent space that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LatentSpaceError {
    #[error("the weights have {channels} latent channels; --family {} has {family_channels}", family.name())]
    Channels { channels: usize, family: Family, family_channels: usize },
    #[error("{0}")]
    Value(String),
}

/// The latent space, and what a user should be told about how it was chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub space: LatentSpace,
    /// Notes (how a guess was made) and warnings (a config.json that
    /// disagrees with `--family`), one line each.
    pub notes: Vec<String>,
}

impl LatentSpace {
    /// A family's own latent space.
    pub fn of_family(family: Family) -> Self {
        let (scaling_factor, shift_factor) = family.scaling();
        Self { family: Some(family), scaling_factor, shift_factor, channel_stats: None }
    }

    /// A space from its scale and shift, named after the family it is, if any.
    pub fn with_scaling(latent_channels: usize, scaling_factor: f64, shift_factor: f64) -> Self {
        let family = Family::of(latent_channels, scaling_factor, shift_factor);
        Self { family, scaling_factor, shift_factor, channel_stats: None }
    }

    /// `(scale, shift)` of channel `c`: a file holds `(z - shift) * scale`.
    pub fn channel(&self, c: usize) -> (f64, f64) {
        match &self.channel_stats {
            Some(stats) => (self.scaling_factor / stats.std[c], stats.mean[c]),
            None => (self.scaling_factor, self.shift_factor),
        }
    }

    /// The one precedence rule. The scale: `--scaling-factor`, else the
    /// weights' `config.json`, else `--family`'s, else a guess from the
    /// weights, else SD 1.x's. The shift: `config.json`, `--family`, the
    /// guess, else 0. The family: `--family`, else the one these values are.
    /// A `--family` whose channel count is not the weights' is an error; one
    /// that disagrees with `config.json` loses to it, with a warning.
    pub fn resolve(
        weights: &WeightsScaling,
        request: LatentSpaceRequest,
        latent_channels: usize,
    ) -> Result<Resolved, LatentSpaceError> {
        let mut notes = Vec::new();
        let family = match request.family {
            Some(family) if family.latent_channels() != latent_channels => {
                return Err(LatentSpaceError::Channels {
                    channels: latent_channels,
                    family,
                    family_channels: family.latent_channels(),
                });
            }
            family => family,
        };
        let from_family = family.map(Family::scaling);
        let (scaling, shift) = match weights {
            WeightsScaling::Config { scaling, shift } => {
                if let Some(f) = family.filter(|f| f.scaling() != (*scaling, *shift)) {
                    let ((s, t), name) = (f.scaling(), f.name());
                    notes.push(format!(
                        "warning: config.json's scaling {scaling} (shift {shift}) differs from --family {name}'s {s} (shift {t}); using config.json's"
                    ));
                }
                (*scaling, *shift)
            }
            WeightsScaling::Default { scaling, shift } => from_family.unwrap_or((*scaling, *shift)),
            WeightsScaling::Guess { scaling, shift, from } => match from_family {
                Some(scaling_and_shift) => scaling_and_shift,
                None => {
                    notes.push(format!("latent scaling {scaling}, shift {shift}: {from}"));
                    (*scaling, *shift)
                }
            },
        };
        let scaling = request.scaling_factor.unwrap_or(scaling);
        let space = LatentSpace {
            family: family.or_else(|| Family::of(latent_channels, scaling, shift)),
            scaling_factor: scaling,
            shift_factor: shift,
            channel_stats: None,
        };
        space.check()?;
        Ok(Resolved { space, notes })
    }

    /// Refuses a scale or shift that f32 latents cannot hold.
    pub fn check(&self) -> Result<(), LatentSpaceError> {
        check_scaling(self.scaling_factor)
            .and_then(|()| check_shift(self.shift_factor))
            .map_err(LatentSpaceError::Value)
    }
}

/// Why `scaling` cannot scale latents: it must be finite, nonzero, and a
/// normal f32 in size (latents are f32: a smaller or larger factor turns
/// every value into zero or infinity).
pub fn check_scaling(scaling: f64) -> Result<(), String> {
    let size = scaling.abs();
    if scaling.is_finite() && size >= f64::from(f32::MIN_POSITIVE) && size <= f64::from(f32::MAX) {
        Ok(())
    } else {
        Err(format!("scaling factor {} is not a nonzero, finite number within f32's normal range", short(scaling)))
    }
}

/// Why `shift` cannot shift latents: it must be finite as an f32.
pub fn check_shift(shift: f64) -> Result<(), String> {
    if shift.is_finite() && shift.abs() <= f64::from(f32::MAX) {
        Ok(())
    } else {
        Err(format!("shift factor {} is not a finite number within f32's range", short(shift)))
    }
}

impl fmt::Display for LatentSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "scaling {}", self.scaling_factor)?;
        if self.shift_factor != 0.0 {
            write!(f, ", shift {}", self.shift_factor)?;
        }
        match self.family {
            Some(family) => write!(f, " ({})", family.name()),
            None => Ok(()),
        }
    }
}

/// `v` as people write it: `1e39`, not forty digits.
pub(crate) fn short(v: f64) -> String {
    if v != 0.0 && v.is_finite() && !(1e-4..1e6).contains(&v.abs()) { format!("{v:e}") } else { format!("{v}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(weights: WeightsScaling, family: Option<Family>, scaling: Option<f64>, channels: usize) -> Resolved {
        LatentSpace::resolve(&weights, LatentSpaceRequest { family, scaling_factor: scaling }, channels).unwrap()
    }

    #[test]
    fn config_json_wins_over_family_with_a_warning_and_the_flag_wins_over_both() {
        let config = WeightsScaling::Config { scaling: 0.13025, shift: 0.0 };
        let r = resolve(config.clone(), Some(Family::Sd1), None, 4);
        assert_eq!((r.space.scaling_factor, r.space.family), (0.13025, Some(Family::Sd1)));
        assert!(r.notes[0].contains("differs from --family sd1"), "{:?}", r.notes);
        let r = resolve(config, None, Some(0.5), 4);
        assert_eq!((r.space.scaling_factor, r.space.family), (0.5, None));
    }

    #[test]
    fn family_wins_over_a_guess_and_the_default() {
        let guess = WeightsScaling::Guess { scaling: 0.18215, shift: 0.0, from: "by its name".into() };
        let r = resolve(guess.clone(), Some(Family::Sdxl), None, 4);
        assert_eq!(r.space, LatentSpace::of_family(Family::Sdxl));
        assert!(r.notes.is_empty());
        let r = resolve(guess, None, None, 4);
        assert_eq!(r.space, LatentSpace::of_family(Family::Sd1));
        assert!(r.notes[0].contains("by its name"));
        let sd1 = WeightsScaling::Default { scaling: 0.18215, shift: 0.0 };
        let r = resolve(sd1.clone(), Some(Family::Flux), Some(2.0), 16);
        assert_eq!((r.space.scaling_factor, r.space.shift_factor), (2.0, 0.1159));
        assert_eq!(resolve(sd1, None, None, 4).space, LatentSpace::of_family(Family::Sd1));
    }

    #[test]
    fn refuses_a_family_of_other_channels_and_unusable_values() {
        let request = LatentSpaceRequest { family: Some(Family::Flux), scaling_factor: None };
        let sd1 = WeightsScaling::Default { scaling: 0.18215, shift: 0.0 };
        let err = LatentSpace::resolve(&sd1, request, 4).unwrap_err();
        assert_eq!(err.to_string(), "the weights have 4 latent channels; --family flux has 16");
        for bad in [0.0, 1e-310, f64::INFINITY, f64::NAN] {
            let request = LatentSpaceRequest { family: None, scaling_factor: Some(bad) };
            assert!(LatentSpace::resolve(&sd1, request, 4).is_err(), "{bad}");
        }
        let config = WeightsScaling::Config { scaling: 1.0, shift: f64::INFINITY };
        assert!(LatentSpace::resolve(&config, LatentSpaceRequest::default(), 4).is_err());
    }

    #[test]
    fn per_channel_statistics_scale_each_channel() {
        let space = LatentSpace {
            family: None,
            scaling_factor: 1.0,
            shift_factor: 0.0,
            channel_stats: Some(ChannelStats { mean: vec![0.5, -1.0], std: vec![2.0, 4.0] }),
        };
        assert_eq!(space.channel(0), (0.5, 0.5));
        assert_eq!(space.channel(1), (0.25, -1.0));
    }
}
