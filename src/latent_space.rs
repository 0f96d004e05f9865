//! The latent space: how a family of models scales the latents its diffusion
//! model consumes, which is what a latent file stores, and the one rule that
//! decides it from what the weights and the user say.
//!
//! A latent file holds `(z - shift) * scale` for the VAE's latent `z`: one
//! scale and shift for every channel in the SD era (`scaling_factor`,
//! `shift_factor` of diffusers' `config.json`), or a mean and standard
//! deviation per channel for families that normalise each channel
//! ([`ChannelStats`]: Wan 2.1 and Qwen-Image; FLUX.2 after grouping 2x2
//! positions into channels, `[32, h, w] -> [128, h/2, w/2]`).

use std::fmt;
use std::str::FromStr;

use crate::model::Family;

/// How latents of one model are stored.
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

/// Per-channel mean and standard deviation of a latent space, of the latent
/// patched `patch` x `patch` (FLUX.2: 2, its 32 channels stored as 128).
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelStats {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    pub patch: usize,
}

impl ChannelStats {
    /// Refuses statistics that cannot normalise: unequal lengths, a patch of
    /// 0, a mean that is not finite, a deviation that is not positive and finite.
    pub fn check(&self) -> Result<(), String> {
        if self.mean.len() != self.std.len() || self.mean.is_empty() || self.patch == 0 {
            return Err(format!(
                "{} latent means and {} deviations (patch {}) do not describe one latent",
                self.mean.len(),
                self.std.len(),
                self.patch
            ));
        }
        if let Some(v) = self.mean.iter().find(|v| check_shift(**v).is_err()) {
            return Err(format!("latent mean {} is not a finite number", short(*v)));
        }
        if let Some(v) = self.std.iter().find(|&&v| !v.is_finite() || v <= 0.0 || check_scaling(1.0 / v).is_err()) {
            return Err(format!("latent standard deviation {} is not a positive, finite number", short(*v)));
        }
        Ok(())
    }
}

/// `--latent-form`: which form of the latent a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatentForm {
    /// The VAE's latent `z` as it comes out of the encoder (FLUX.2's default).
    Raw,
    /// As the family's diffusion model consumes it: scaled and shifted, or
    /// normalised per channel (FLUX.2: patched 2x2 into 128 channels first).
    Normalized,
}

impl LatentForm {
    pub fn name(self) -> &'static str {
        match self {
            LatentForm::Raw => "raw",
            LatentForm::Normalized => "normalized",
        }
    }
}

impl FromStr for LatentForm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "raw" => Ok(LatentForm::Raw),
            "normalized" | "normalised" => Ok(LatentForm::Normalized),
            _ => Err(format!("unknown latent form '{s}' (raw or normalized)")),
        }
    }
}

/// What the weights say about their latent scale and shift.
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

/// What the weights say about their latent space.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightsLatent {
    pub scaling: WeightsScaling,
    /// The family the architecture is (FLUX.2 by its batch-norm statistics,
    /// Wan 2.1 by its blocks), when it tells.
    pub family: Option<Family>,
    /// Per-channel statistics the weights carry (FLUX.2's batch norm,
    /// `latents_mean`/`latents_std` of a Wan or Qwen-Image `config.json`).
    pub channel_stats: Option<ChannelStats>,
}

impl WeightsLatent {
    /// Scale and shift alone, as every SD-era VAE has them.
    pub fn scaling(scaling: WeightsScaling) -> Self {
        Self { scaling, family: None, channel_stats: None }
    }
}

/// What the user asked for: `--family`, `--scaling-factor`, `--latent-form`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LatentSpaceRequest {
    pub family: Option<Family>,
    pub scaling_factor: Option<f64>,
    pub form: Option<LatentForm>,
}

/// A latent space that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LatentSpaceError {
    #[error("the weights have {channels} latent channels; --family {} has {family_channels}", family.name())]
    Channels { channels: usize, family: Family, family_channels: usize },
    #[error("--scaling-factor scales the normalized form; --latent-form raw stores the VAE's latent as it is")]
    RawWithScaling,
    #[error("{0}")]
    Value(String),
}

/// The latent space, and what a user should be told about how it was chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub space: LatentSpace,
    /// The other form of the same weights, where it is another layout
    /// (FLUX.2: raw and normalised differ in shape), for reading latents
    /// written in it.
    pub other: Option<LatentSpace>,
    /// Notes (how a guess was made) and warnings (a config.json that
    /// disagrees with `--family`), one line each.
    pub notes: Vec<String>,
}

impl LatentSpace {
    /// A family's own latent space (normalised; FLUX.2's statistics come with
    /// its weights, so its space here is the raw one).
    pub fn of_family(family: Family) -> Self {
        let (scaling_factor, shift_factor) = family.scaling();
        let channel_stats =
            family.channel_stats().map(|(mean, std)| ChannelStats { mean: mean.to_vec(), std: std.to_vec(), patch: 1 });
        Self { family: Some(family), scaling_factor, shift_factor, channel_stats }
    }

    /// A space from its scale and shift, named after the family it is, if any.
    pub fn with_scaling(latent_channels: usize, scaling_factor: f64, shift_factor: f64) -> Self {
        let family = Family::of(latent_channels, scaling_factor, shift_factor);
        Self { family, scaling_factor, shift_factor, channel_stats: None }
    }

    /// The VAE's latent as it is: scale 1, shift 0.
    pub fn raw(family: Option<Family>) -> Self {
        Self { family, scaling_factor: 1.0, shift_factor: 0.0, channel_stats: None }
    }

    /// Which form this is.
    pub fn form(&self) -> LatentForm {
        let identity = self.scaling_factor == 1.0 && self.shift_factor == 0.0 && self.channel_stats.is_none();
        if identity { LatentForm::Raw } else { LatentForm::Normalized }
    }

    /// `(scale, shift)` of stored channel `c`: a file holds `(z - shift) * scale`.
    pub fn channel(&self, c: usize) -> (f64, f64) {
        match &self.channel_stats {
            Some(stats) => (self.scaling_factor / stats.std[c], stats.mean[c]),
            None => (self.scaling_factor, self.shift_factor),
        }
    }

    /// Positions grouped into channels along each side (1, or FLUX.2's 2).
    pub fn patch(&self) -> usize {
        self.channel_stats.as_ref().map_or(1, |s| s.patch)
    }

    /// The stored shape `(C, h, w)` of a VAE latent of `(c, h, w)`.
    pub fn stored_shape(&self, (c, h, w): (usize, usize, usize)) -> (usize, usize, usize) {
        let p = self.patch();
        (c * p * p, h / p, w / p)
    }

    /// The VAE latent's shape for a stored `(C, h, w)`.
    pub fn vae_shape(&self, (c, h, w): (usize, usize, usize)) -> (usize, usize, usize) {
        let p = self.patch();
        (c / (p * p), h * p, w * p)
    }

    /// Stored channels for a VAE of `latent_channels`, when the statistics
    /// fit it (`None`: they describe another channel count).
    pub fn stored_channels(&self, latent_channels: usize) -> Option<usize> {
        let p = self.patch();
        let channels = latent_channels * p * p;
        match &self.channel_stats {
            Some(stats) if stats.mean.len() != channels => None,
            _ => Some(channels),
        }
    }

    /// The VAE's latent `z` (`(c, h, w)`, h and w multiples of the patch) as
    /// a file stores it. In f64, rounded once.
    pub fn to_stored(&self, z: &[f32], shape: (usize, usize, usize)) -> Vec<f32> {
        let patched = patchify(z, shape, self.patch());
        let plane = patched.len() / self.stored_shape(shape).0.max(1);
        let mut out = Vec::with_capacity(patched.len());
        for (c, values) in patched.chunks(plane.max(1)).enumerate() {
            let (scale, shift) = self.channel(c);
            out.extend(values.iter().map(|&v| ((f64::from(v) - shift) * scale) as f32));
        }
        out
    }

    /// The VAE's latent from `stored` values of shape `(C, h, w)`: what
    /// [`LatentSpace::to_stored`] undoes. In f64, rounded once.
    pub fn from_stored(&self, stored: &[f32], (c, h, w): (usize, usize, usize)) -> Vec<f32> {
        let plane = h * w;
        let mut patched = Vec::with_capacity(stored.len());
        for (ch, values) in stored.chunks(plane.max(1)).enumerate().take(c) {
            let (scale, shift) = self.channel(ch);
            patched.extend(values.iter().map(|&v| (f64::from(v) / scale + shift) as f32));
        }
        unpatchify(&patched, (c, h, w), self.patch())
    }

    /// The one precedence rule. The form: `--latent-form`, else the family's
    /// (raw for FLUX.2, normalised for every other). Normalised with
    /// per-channel statistics (from the weights, else the family's): those,
    /// times `--scaling-factor` if given. Else the scale: `--scaling-factor`,
    /// else the weights' `config.json`, else `--family`'s, else a guess from
    /// the weights, else SD 1.x's; the shift: `config.json`, `--family`, the
    /// guess, else 0. The family: `--family`, else the weights', else the
    /// one these values are. A `--family` whose channel count is not the
    /// weights' is an error; one that disagrees with `config.json` loses to
    /// it, with a warning.
    pub fn resolve(
        weights: &WeightsLatent,
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
            family => family.or(weights.family),
        };
        let stats =
            weights.channel_stats.clone().or_else(|| family.and_then(|f| LatentSpace::of_family(f).channel_stats));
        let form = request.form.unwrap_or(if family == Some(Family::Flux2) {
            LatentForm::Raw
        } else {
            LatentForm::Normalized
        });
        let normalized = |stats: ChannelStats| LatentSpace {
            family,
            scaling_factor: request.scaling_factor.unwrap_or(1.0),
            shift_factor: 0.0,
            channel_stats: Some(stats),
        };
        let space = match (form, stats.clone()) {
            (LatentForm::Raw, _) if request.scaling_factor.is_some() => return Err(LatentSpaceError::RawWithScaling),
            (LatentForm::Raw, _) => LatentSpace::raw(family),
            (LatentForm::Normalized, Some(stats)) => normalized(stats),
            (LatentForm::Normalized, None) => scaled(weights, family, request, latent_channels, &mut notes),
        };
        space.check(latent_channels)?;
        // Where the two forms differ in shape, a latent tells which it is.
        let other = match (form, stats) {
            (LatentForm::Raw, Some(stats)) if stats.patch > 1 => {
                Some(LatentSpace { scaling_factor: 1.0, ..normalized(stats) })
            }
            (LatentForm::Normalized, Some(stats)) if stats.patch > 1 => Some(LatentSpace::raw(family)),
            _ => None,
        };
        Ok(Resolved { space, other, notes })
    }

    /// Refuses a scale, shift or statistics that f32 latents cannot hold,
    /// or statistics of another channel count.
    pub fn check(&self, latent_channels: usize) -> Result<(), LatentSpaceError> {
        check_scaling(self.scaling_factor)
            .and_then(|()| check_shift(self.shift_factor))
            .map_err(LatentSpaceError::Value)?;
        if let Some(stats) = &self.channel_stats {
            stats.check().map_err(LatentSpaceError::Value)?;
            if self.stored_channels(latent_channels).is_none() {
                return Err(LatentSpaceError::Value(format!(
                    "{} per-channel latent statistics do not fit {latent_channels} latent channels patched {}x{}",
                    stats.mean.len(),
                    stats.patch,
                    stats.patch
                )));
            }
        }
        Ok(())
    }
}

/// The SD-era space: one scale and shift (see [`LatentSpace::resolve`]).
fn scaled(
    weights: &WeightsLatent,
    family: Option<Family>,
    request: LatentSpaceRequest,
    latent_channels: usize,
    notes: &mut Vec<String>,
) -> LatentSpace {
    let from_family = request.family.map(Family::scaling);
    let (scaling, shift) = match &weights.scaling {
        WeightsScaling::Config { scaling, shift } => {
            if let Some(f) = request.family.filter(|f| f.scaling() != (*scaling, *shift)) {
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
    LatentSpace {
        family: family.or_else(|| Family::of(latent_channels, scaling, shift)),
        scaling_factor: scaling,
        shift_factor: shift,
        channel_stats: None,
    }
}

/// `[c, h, w] -> [c * p * p, h / p, w / p]` as diffusers' FLUX.2 pipeline
/// does it: stored channel `c * p * p + dy * p + dx` holds position
/// `(p * y + dy, p * x + dx)` of channel `c` at `(y, x)`.
pub fn patchify(z: &[f32], (c, h, w): (usize, usize, usize), p: usize) -> Vec<f32> {
    if p == 1 {
        return z.to_vec();
    }
    let (hp, wp) = (h / p, w / p);
    let mut out = Vec::with_capacity(c * h * w);
    for ch in 0..c {
        for dy in 0..p {
            for dx in 0..p {
                for y in 0..hp {
                    out.extend((0..wp).map(|x| z[(ch * h + p * y + dy) * w + p * x + dx]));
                }
            }
        }
    }
    out
}

/// The inverse of [`patchify`], from the stored shape `(C, h, w)`.
pub fn unpatchify(x: &[f32], (c, h, w): (usize, usize, usize), p: usize) -> Vec<f32> {
    if p == 1 {
        return x.to_vec();
    }
    let (ch_out, h_out, w_out) = (c / (p * p), h * p, w * p);
    let mut out = vec![0.0; ch_out * h_out * w_out];
    for (i, &v) in x.iter().enumerate() {
        let (channel, rest) = (i / (h * w), i % (h * w));
        let (y, xx) = (rest / w, rest % w);
        let (ch, dy, dx) = (channel / (p * p), (channel / p) % p, channel % p);
        out[(ch * h_out + p * y + dy) * w_out + p * xx + dx] = v;
    }
    out
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
        match &self.channel_stats {
            Some(stats) if stats.patch > 1 => write!(
                f,
                "normalized per channel ({} channels, {}x{} patches)",
                stats.mean.len(),
                stats.patch,
                stats.patch
            )?,
            Some(stats) => write!(f, "normalized per channel ({} channels)", stats.mean.len())?,
            None if self.form() == LatentForm::Raw => write!(f, "raw")?,
            None => write!(f, "scaling {}", self.scaling_factor)?,
        }
        if self.channel_stats.is_some() && self.scaling_factor != 1.0 {
            write!(f, ", times {}", self.scaling_factor)?;
        }
        if self.channel_stats.is_none() && self.shift_factor != 0.0 {
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

    fn request(family: Option<Family>, scaling: Option<f64>) -> LatentSpaceRequest {
        LatentSpaceRequest { family, scaling_factor: scaling, form: None }
    }

    fn resolve(weights: WeightsScaling, family: Option<Family>, scaling: Option<f64>, channels: usize) -> Resolved {
        LatentSpace::resolve(&WeightsLatent::scaling(weights), request(family, scaling), channels).unwrap()
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
        let sd1 = WeightsLatent::scaling(WeightsScaling::Default { scaling: 0.18215, shift: 0.0 });
        let err = LatentSpace::resolve(&sd1, request(Some(Family::Flux), None), 4).unwrap_err();
        assert_eq!(err.to_string(), "the weights have 4 latent channels; --family flux has 16");
        for bad in [0.0, 1e-310, f64::INFINITY, f64::NAN] {
            assert!(LatentSpace::resolve(&sd1, request(None, Some(bad)), 4).is_err(), "{bad}");
        }
        let config = WeightsLatent::scaling(WeightsScaling::Config { scaling: 1.0, shift: f64::INFINITY });
        assert!(LatentSpace::resolve(&config, LatentSpaceRequest::default(), 4).is_err());
        let raw_scaled = LatentSpaceRequest { form: Some(LatentForm::Raw), ..request(None, Some(2.0)) };
        assert_eq!(LatentSpace::resolve(&sd1, raw_scaled, 4), Err(LatentSpaceError::RawWithScaling));
    }

    #[test]
    fn per_channel_statistics_scale_each_channel() {
        let space = LatentSpace {
            family: None,
            scaling_factor: 1.0,
            shift_factor: 0.0,
            channel_stats: Some(ChannelStats { mean: vec![0.5, -1.0], std: vec![2.0, 4.0], patch: 1 }),
        };
        assert_eq!(space.channel(0), (0.5, 0.5));
        assert_eq!(space.channel(1), (0.25, -1.0));
        let stored = space.to_stored(&[2.5, 0.5, -1.0, 3.0], (2, 1, 2));
        assert_eq!(stored, [1.0, 0.0, 0.0, 1.0]);
        assert_eq!(space.from_stored(&stored, (2, 1, 2)), [2.5, 0.5, -1.0, 3.0]);
    }

    fn flux2_weights() -> WeightsLatent {
        let stats = ChannelStats { mean: vec![0.25; 128], std: vec![2.0; 128], patch: 2 };
        WeightsLatent {
            scaling: WeightsScaling::Default { scaling: 1.0, shift: 0.0 },
            family: Some(Family::Flux2),
            channel_stats: Some(stats),
        }
    }

    #[test]
    fn flux2_is_raw_by_default_and_its_normalized_form_is_patched() {
        let r = LatentSpace::resolve(&flux2_weights(), LatentSpaceRequest::default(), 32).unwrap();
        assert_eq!(r.space, LatentSpace::raw(Some(Family::Flux2)));
        assert_eq!(r.space.form(), LatentForm::Raw);
        let other = r.other.expect("the normalized form");
        assert_eq!(other.stored_shape((32, 6, 4)), (128, 3, 2));
        let asked = LatentSpaceRequest { form: Some(LatentForm::Normalized), ..Default::default() };
        let r = LatentSpace::resolve(&flux2_weights(), asked, 32).unwrap();
        assert_eq!(r.space, other);
        assert_eq!(r.other, Some(LatentSpace::raw(Some(Family::Flux2))));
        // Statistics of another channel count are refused.
        let err = LatentSpace::resolve(&flux2_weights(), asked, 16).unwrap_err();
        assert!(err.to_string().contains("128 per-channel latent statistics do not fit 16"), "{err}");
    }

    #[test]
    fn patching_follows_the_flux2_pipeline_and_round_trips() {
        // [1, 4, 4]: channel 0 of the patched latent is the (even, even) positions.
        let z: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let patched = patchify(&z, (1, 4, 4), 2);
        assert_eq!(&patched[..4], [0.0, 2.0, 8.0, 10.0]);
        assert_eq!(&patched[4..8], [1.0, 3.0, 9.0, 11.0]);
        assert_eq!(&patched[8..12], [4.0, 6.0, 12.0, 14.0]);
        assert_eq!(unpatchify(&patched, (4, 2, 2), 2), z);
    }

    #[test]
    fn wan21_is_normalized_with_its_family_statistics() {
        let weights = WeightsLatent {
            family: Some(Family::Wan21),
            ..WeightsLatent::scaling(WeightsScaling::Default { scaling: 1.0, shift: 0.0 })
        };
        let r = LatentSpace::resolve(&weights, LatentSpaceRequest::default(), 16).unwrap();
        assert_eq!(r.space, LatentSpace::of_family(Family::Wan21));
        assert_eq!(r.space.channel(0), (1.0 / 2.8184, -0.7571));
        assert_eq!(r.other, None);
        assert_eq!("qwen-image".parse::<Family>(), Ok(Family::Wan21));
    }
}
