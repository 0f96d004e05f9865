//! Loading TAESD (`AutoencoderTiny`): from one file, or from madebyollin's
//! two (`taesd_encoder.safetensors`, `taesd_decoder.safetensors`); checking
//! that the halves a run needs are there; and settling the latent scaling of
//! the big VAE it stands in for.
//!
//! TAESD reads and writes the big VAE's *scaled* latents, `(z - shift) *
//! scaling`, so its own `config.json` says scaling 1. Latent files record the
//! big VAE's scaling instead, so that the big VAE decodes what TAESD encodes,
//! and the other way round. The weights do not say which VAE that is; they
//! suggest it, in order: ComfyUI's `vae_scale` / `vae_shift` scalars in the
//! file, madebyollin's name for it in the file or folder name (`taesd`,
//! `taesdxl`, `taesd3`, `taef1`), else the channel count (4: SD 1.x, 16:
//! FLUX, as `vae preview` assumes). That is a [`WeightsScaling::Guess`]:
//! `--family` and `--scaling-factor` win over it
//! ([`crate::latent_space::LatentSpace::resolve`]).

mod layout;

use std::path::{Path, PathBuf};

use burn::tensor::{Device, FloatDType};

pub use layout::{TinyConfigJson, VAE_SCALE, VAE_SHIFT, detect, family_from_name, infer_config};

use super::{Parts, TensorFile, VaeKeys, WeightsError, WeightsInfo};
use crate::latent_space::{WeightsLatent, WeightsScaling};
use crate::model::{AutoencoderTiny, AutoencoderTinyConfig, DecoderTiny, EncoderTiny, Family, Model};
use crate::weights::ParamLoader;

const CLASS: &str = "AutoencoderTiny";

/// Builds the TAESD of `file` (VAE tensors `keys`, architecture `config`).
pub(super) fn load(
    file: &TensorFile,
    keys: &VaeKeys,
    mut config: AutoencoderTinyConfig,
    (device, dtype): (&Device, FloatDType),
    parts: Parts,
) -> Result<(Model, WeightsInfo), WeightsError> {
    check_halves(&file.path, &config, parts)?;
    let mut loader =
        ParamLoader::new(file, &keys.names, device).casting_to(dtype).skipping(parts.unused_prefixes()).building(CLASS);
    let scalars = (loader.scalar(VAE_SCALE), loader.scalar(VAE_SHIFT));
    let scaling = latent_space(&mut config, &file.path, scalars)?;
    let model = AutoencoderTiny::load(&mut loader, &config);
    loader.finish()?;
    Ok((Model::Tiny(model), WeightsInfo::of(file, keys, None, WeightsLatent::scaling(scaling))))
}

/// Builds the TAESD whose halves are `encoder` and `decoder` (madebyollin's
/// two files, found side by side by [`split_pair`]).
pub(super) fn load_pair(
    encoder: &TensorFile,
    decoder: &TensorFile,
    (device, dtype): (&Device, FloatDType),
    parts: Parts,
) -> Result<(Model, WeightsInfo), WeightsError> {
    let enc = half_of(encoder, "encoder")?;
    let dec = half_of(decoder, "decoder")?;
    let shape_of = |name: &str| match enc.names.get(name) {
        Some(key) => Some(encoder.tensors[key].shape.as_slice()),
        None => dec.names.get(name).map(|key| decoder.tensors[key].shape.as_slice()),
    };
    let mut config =
        infer_config(shape_of).map_err(|tensor| WeightsError::Architecture { path: encoder.path.clone(), tensor })?;
    config.check().map_err(|reason| WeightsError::Config { path: encoder.path.clone(), reason })?;
    let scaling = latent_space(&mut config, &encoder.path, (None, None))?;
    let notes = vec![format!("encoder from {}, decoder from {}", encoder.path.display(), decoder.path.display())];

    let mut enc_loader = ParamLoader::new(encoder, &enc.names, device)
        .casting_to(dtype)
        .skipping(parts.unused_prefixes())
        .building(CLASS);
    let mut dec_loader = ParamLoader::new(decoder, &dec.names, device)
        .casting_to(dtype)
        .skipping(parts.unused_prefixes())
        .building(CLASS);
    let model = AutoencoderTiny {
        encoder: Some(EncoderTiny::load(&mut enc_loader, "encoder", &config)),
        decoder: Some(DecoderTiny::load(&mut dec_loader, "decoder", &config)),
        config,
    };
    enc_loader.finish()?;
    dec_loader.finish()?;
    // Latents record the hash of the half that ran.
    let mut info = match parts {
        Parts::Decoder => WeightsInfo::of(decoder, &dec, Some((encoder, &enc)), WeightsLatent::scaling(scaling)),
        _ => WeightsInfo::of(encoder, &enc, Some((decoder, &dec)), WeightsLatent::scaling(scaling)),
    };
    info.notes = notes;
    Ok((Model::Tiny(model), info))
}

/// The TAESD keys of `file`, which must hold its `half` and nothing else.
fn half_of(file: &TensorFile, half: &'static str) -> Result<VaeKeys, WeightsError> {
    let keys = detect(file.tensors.keys().map(String::as_str));
    let only_half = keys.as_ref().is_some_and(|k| {
        !k.names.is_empty() && k.names.keys().all(|n| n.starts_with(half) || n == VAE_SCALE || n == VAE_SHIFT)
    });
    match keys {
        Some(keys) if only_half => Ok(keys),
        _ => Err(WeightsError::Config {
            path: file.path.clone(),
            reason: format!("named as a TAESD {half}, but it does not hold one"),
        }),
    }
}

/// Refuses, before reading anything, a run that needs a half the weights lack.
fn check_halves(path: &Path, config: &AutoencoderTinyConfig, parts: Parts) -> Result<(), WeightsError> {
    let needs = match parts {
        Parts::Both => "a roundtrip",
        Parts::Encoder => "encoding",
        Parts::Decoder => "decoding",
        Parts::Neither => return Ok(()),
    };
    let missing = |have, missing| WeightsError::MissingHalf { path: path.to_owned(), have, missing, needs };
    if parts.encoder() && !config.has_encoder() {
        return Err(missing("decoder", "encoder"));
    }
    if parts.decoder() && !config.has_decoder() {
        return Err(missing("encoder", "decoder"));
    }
    Ok(())
}

/// Sets the big VAE's latent scaling in `config` as the weights suggest it
/// (see the module documentation), and says how it was guessed.
fn latent_space(
    config: &mut AutoencoderTinyConfig,
    path: &Path,
    (vae_scale, vae_shift): (Option<f32>, Option<f32>),
) -> Result<WeightsScaling, WeightsError> {
    let channels = config.latent_channels;
    let by_channels = match channels {
        4 => Some(Family::Sd1),
        16 => Some(Family::Flux),
        _ => None,
    };
    let (scaling, shift, from) = if let Some(scale) = vae_scale {
        let (scale, shift) = (f64::from(scale), vae_shift.map_or(0.0, f64::from));
        // f32 scalars: the family's exact values when they are the family's.
        let (scale, shift) = Family::of(channels, scale, shift).map_or((scale, shift), Family::scaling);
        (scale, shift, "from the file's vae_scale and vae_shift".to_owned())
    } else if let Some(family) = family_from_name(path) {
        let (scale, shift) = family.scaling();
        (scale, shift, format!("{} by its name", family.name()))
    } else if let Some(family) = by_channels {
        let (scale, shift) = family.scaling();
        let guess = format!("{}, assumed from its {channels} latent channels (pass --family if not)", family.name());
        (scale, shift, guess)
    } else {
        (1.0, 0.0, format!("unknown for {channels} latent channels: unscaled (pass --family or --scaling-factor)"))
    };
    (config.vae_scaling_factor, config.vae_shift_factor) = (scaling, shift);
    config.check().map_err(|reason| WeightsError::Config { path: path.to_owned(), reason })?;
    Ok(WeightsScaling::Guess { scaling, shift, from })
}

/// madebyollin's two files of one TAESD among `files` (a folder's
/// safetensors files): exactly `NAME_encoder.safetensors` and
/// `NAME_decoder.safetensors`, as `(encoder, decoder)`.
pub fn split_pair(files: &[PathBuf]) -> Option<(PathBuf, PathBuf)> {
    let [a, b] = files else { return None };
    let stem = |p: &Path| p.file_stem()?.to_str().map(str::to_owned);
    let (sa, sb) = (stem(a)?, stem(b)?);
    let pair = |enc: &str, dec: &str| {
        enc.strip_suffix("_encoder").filter(|s| dec.strip_suffix("_decoder") == Some(*s)).is_some()
    };
    if pair(&sa, &sb) {
        Some((a.clone(), b.clone()))
    } else if pair(&sb, &sa) {
        Some((b.clone(), a.clone()))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_only_matching_halves() {
        let p = |names: &[&str]| split_pair(&names.iter().map(PathBuf::from).collect::<Vec<_>>());
        let pair = p(&["w/taesd_decoder.safetensors", "w/taesd_encoder.safetensors"]);
        assert_eq!(pair, Some(("w/taesd_encoder.safetensors".into(), "w/taesd_decoder.safetensors".into())));
        assert_eq!(p(&["w/taesd_encoder.safetensors", "w/taesdxl_decoder.safetensors"]), None);
        assert_eq!(p(&["w/taesd_encoder.safetensors"]), None);
        assert_eq!(p(&["w/a.safetensors", "w/b.safetensors"]), None);
    }

    #[test]
    fn latent_space_sources_in_order() {
        let mut c = AutoencoderTinyConfig::taesd();
        let path = Path::new("w/taesdxl_decoder.safetensors");
        let from = |guess: WeightsScaling| match guess {
            WeightsScaling::Guess { scaling, shift, from } => ((scaling, shift), from),
            other => panic!("a TAESD's scaling is a guess, got {other:?}"),
        };
        // ComfyUI's f32 scalars, snapped to the family's values.
        let (scaling, _) = from(latent_space(&mut c, path, (Some(0.18215), None)).unwrap());
        assert_eq!(scaling, (0.18215, 0.0));
        assert_eq!((c.vae_scaling_factor, c.vae_shift_factor), (0.18215, 0.0));
        let (scaling, note) = from(latent_space(&mut c, path, (None, None)).unwrap());
        assert_eq!(scaling, (0.13025, 0.0));
        assert!(note.contains("sdxl by its name"), "{note}");
        let (scaling, note) = from(latent_space(&mut c, Path::new("w/vae.safetensors"), (None, None)).unwrap());
        assert_eq!(scaling, (0.18215, 0.0));
        assert!(note.contains("assumed"), "{note}");
        assert!(latent_space(&mut c, path, (Some(0.0), None)).is_err());
    }
}
