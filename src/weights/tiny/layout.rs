//! TAESD weights (diffusers `AutoencoderTiny`): the key sets it comes in, the
//! renames of madebyollin's original layout onto diffusers' names, and its
//! architecture read off tensor shapes (or diffusers' `config.json`).
//!
//! Layouts:
//! - diffusers: `encoder.layers.N.*` and `decoder.layers.N.*`
//!   (`diffusion_pytorch_model.safetensors` of madebyollin/taesd and kin).
//! - original split files (`taesd_encoder.safetensors`,
//!   `taesd_decoder.safetensors`): each half's `nn.Sequential` alone, keys
//!   `N.*`. An encoder has a `0.*` (its first convolution); a decoder never
//!   does, its module 0 being the parameterless `Clamp`.
//! - original combined files: the halves under `encoder.` / `decoder.`
//!   (a `TAESD` module's state dict) or `taesd_encoder.` / `taesd_decoder.`
//!   (ComfyUI's `taesd*_combined`, which adds the scalars `vae_scale` and
//!   `vae_shift`).

use std::path::Path;
use std::sync::LazyLock;

use regex::Regex;
use serde::Deserialize;

use crate::model::{AutoencoderTinyConfig, Family};
use crate::weights::{Layout, VaeKeys};

/// ComfyUI's scalars in combined TAESD files: the big VAE's latent scaling
/// (TAESD reads `(z - vae_shift) * vae_scale`).
pub const VAE_SCALE: &str = "vae_scale";
pub const VAE_SHIFT: &str = "vae_shift";

/// Original name (with its half spelled out) -> diffusers name, in order.
const ORIGINAL_RULES: &[(&str, &str)] = &[
    // ComfyUI's combined files name the halves taesd_encoder / taesd_decoder.
    (r"^taesd_(encoder|decoder)\.", "$1."),
    // The same `nn.Sequential` on both sides: module N is `layers.N`
    // (the decoder's index is shifted by [`shift_decoder_index`] first).
    (r"^(encoder|decoder)\.(\d+)\.", "$1.layers.$2."),
];

static ORIGINAL: LazyLock<Vec<(Regex, &str)>> = LazyLock::new(|| {
    ORIGINAL_RULES.iter().map(|&(p, to)| (Regex::new(p).expect("rule patterns are valid regexes"), to)).collect()
});

/// The original decoder starts with a `Clamp()` module (no parameters) that
/// diffusers moved into `DecoderTiny.forward`: its module N is diffusers'
/// `layers.{N-1}`. Applied to `decoder.N.*` names only.
fn shift_decoder_index(key: &str) -> String {
    static DECODER: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^decoder\.(\d+)\.").expect("valid regex"));
    DECODER
        .replace(key, |c: &regex::Captures| {
            let n: usize = c[1].parse().unwrap_or(0);
            // A decoder file has no module 0; a stray one keeps a name that
            // no layer asks for, and is reported as unexpected.
            match n.checked_sub(1) {
                Some(m) => format!("decoder.{m}."),
                None => "decoder.clamp.".to_owned(),
            }
        })
        .into_owned()
}

/// An original-layout key (`3.conv.0.weight` of a decoder file,
/// `taesd_decoder.3.conv.0.weight`, `encoder.1.conv.4.bias`) as diffusers
/// names it. `half` is the half of a split file's bare keys.
fn original_to_diffusers(key: &str, half: Option<&str>) -> String {
    let key = match half {
        Some(half) => format!("{half}.{key}"),
        None => key.to_owned(),
    };
    // The table's first row, the decoder's index shift, the second row.
    let apply = |(re, to): &(Regex, &str), k: String| re.replace(&k, *to).into_owned();
    let key = apply(&ORIGINAL[0], key);
    apply(&ORIGINAL[1], shift_decoder_index(&key))
}

/// Finds a TAESD among `keys`; `None` when no key set of a TAESD layout is there.
pub fn detect<'a>(keys: impl IntoIterator<Item = &'a str> + Clone) -> Option<VaeKeys> {
    static BARE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^\d+\.").expect("valid regex"));
    static ORIGINAL_HALF: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^(taesd_)?(encoder|decoder)\.\d+\.").expect("valid regex"));
    let all: Vec<&str> = keys.into_iter().collect();
    let total = all.len();
    let is_diffusers = |k: &str| k.starts_with("encoder.layers.") || k.starts_with("decoder.layers.");
    let (layout, names): (Layout, Vec<(String, &str)>) = if all.iter().any(|k| is_diffusers(k)) {
        // Other keys under encoder./decoder. are the model's too (and unexpected).
        let names = all
            .iter()
            .filter(|k| k.starts_with("encoder.") || k.starts_with("decoder."))
            .map(|&k| (k.to_owned(), k))
            .collect();
        (Layout::Diffusers, names)
    } else if all.iter().any(|k| ORIGINAL_HALF.is_match(k)) {
        let names = all
            .iter()
            .filter(|k| ORIGINAL_HALF.is_match(k) || [VAE_SCALE, VAE_SHIFT].contains(k))
            .map(|&k| (original_to_diffusers(k, None), k))
            .collect();
        (Layout::Taesd, names)
    } else if !all.is_empty() && all.iter().all(|k| BARE.is_match(k)) {
        let half = if all.iter().any(|k| k.starts_with("0.")) { "encoder" } else { "decoder" };
        let names = all.iter().map(|&k| (original_to_diffusers(k, Some(half)), k)).collect();
        (Layout::Taesd, names)
    } else {
        return None;
    };
    let ignored = total - names.len();
    let names = names.into_iter().map(|(name, key)| (name, key.to_owned())).collect();
    Some(VaeKeys { layout, prefix: None, names, ignored })
}

/// The fields of an `AutoencoderTiny` `config.json` (`_class_name`
/// `AutoencoderTiny`); absent ones take diffusers' defaults, as
/// `from_pretrained` does. The rest (`latent_magnitude`, `latent_shift`,
/// `force_upcast`) play no part in encoding and decoding.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TinyConfigJson {
    pub in_channels: Option<usize>,
    pub out_channels: Option<usize>,
    pub encoder_block_out_channels: Option<Vec<usize>>,
    pub decoder_block_out_channels: Option<Vec<usize>>,
    pub num_encoder_blocks: Option<Vec<usize>>,
    pub num_decoder_blocks: Option<Vec<usize>>,
    pub latent_channels: Option<usize>,
    pub upsampling_scaling_factor: Option<usize>,
    pub act_fn: Option<String>,
    pub upsample_fn: Option<String>,
    pub scaling_factor: Option<f64>,
    pub shift_factor: Option<f64>,
}

impl TinyConfigJson {
    /// The architecture it describes (the big VAE's latent scaling is set
    /// by the caller: config.json does not say).
    pub fn to_config(&self) -> Result<AutoencoderTinyConfig, String> {
        if let Some(act) = self.act_fn.as_deref().filter(|a| !a.eq_ignore_ascii_case("relu")) {
            return Err(format!("act_fn \"{act}\" is not supported (TAESD uses relu)"));
        }
        if let Some(up) = self.upsample_fn.as_deref().filter(|u| *u != "nearest") {
            return Err(format!("upsample_fn \"{up}\" is not supported (TAESD uses nearest)"));
        }
        let d = AutoencoderTinyConfig::taesd();
        Ok(AutoencoderTinyConfig {
            in_channels: self.in_channels.unwrap_or(d.in_channels),
            out_channels: self.out_channels.unwrap_or(d.out_channels),
            encoder_block_out_channels: self.encoder_block_out_channels.clone().unwrap_or(d.encoder_block_out_channels),
            num_encoder_blocks: self.num_encoder_blocks.clone().unwrap_or(d.num_encoder_blocks),
            decoder_block_out_channels: self.decoder_block_out_channels.clone().unwrap_or(d.decoder_block_out_channels),
            num_decoder_blocks: self.num_decoder_blocks.clone().unwrap_or(d.num_decoder_blocks),
            latent_channels: self.latent_channels.unwrap_or(4),
            upsampling_scaling_factor: self.upsampling_scaling_factor.unwrap_or(d.upsampling_scaling_factor),
            scaling_factor: self.scaling_factor.unwrap_or(1.0),
            shift_factor: self.shift_factor.unwrap_or(0.0),
            ..d
        })
    }
}

/// Reads the architecture off `shape_of(diffusers name)`, for the halves
/// there are (the big VAE's latent scaling is set by the caller). `Err`
/// names the tensor whose absence makes it unknowable.
pub fn infer_config<'a>(shape_of: impl Fn(&str) -> Option<&'a [usize]>) -> Result<AutoencoderTinyConfig, String> {
    // A dimension of a shape, 0 (refused by the config check) when the
    // file's tensor has fewer dimensions.
    let dim = |shape: &[usize], i: usize| shape.get(i).copied().unwrap_or(0);
    let is_conv = |half: &str, i: usize| shape_of(&format!("{half}.layers.{i}.weight"));
    let is_block = |half: &str, i: usize| shape_of(&format!("{half}.layers.{i}.conv.0.weight"));
    let blocks_from = |half: &str, mut i: usize| {
        let start = i;
        while is_block(half, i).is_some() {
            i += 1;
        }
        (i - start, i)
    };
    let mut config = AutoencoderTinyConfig {
        encoder_block_out_channels: Vec::new(),
        num_encoder_blocks: Vec::new(),
        decoder_block_out_channels: Vec::new(),
        num_decoder_blocks: Vec::new(),
        ..AutoencoderTinyConfig::taesd()
    };

    // Encoder: stages of a convolution then blocks; the last convolution,
    // with no blocks after it, maps to the latent.
    if let Some(conv_in) = is_conv("encoder", 0) {
        config.in_channels = dim(conv_in, 1);
        let mut i = 0;
        while let Some(conv) = is_conv("encoder", i) {
            let (blocks, next) = blocks_from("encoder", i + 1);
            if blocks == 0 && is_conv("encoder", next).is_none() {
                config.latent_channels = dim(conv, 0);
                break;
            }
            config.encoder_block_out_channels.push(dim(conv, 0));
            config.num_encoder_blocks.push(blocks);
            i = next;
        }
        if config.encoder_block_out_channels.is_empty() {
            return Err("encoder.layers.1.conv.0.weight".to_owned());
        }
    }

    // Decoder: a convolution and a ReLU, then stages of blocks ending in an
    // upsampling (no tensors) and a convolution, the last in the RGB convolution.
    if let Some(conv_in) = is_conv("decoder", 0) {
        config.latent_channels = dim(conv_in, 1);
        let mut i = 2;
        loop {
            let (blocks, next) = blocks_from("decoder", i);
            if let Some(conv_out) = is_conv("decoder", next) {
                config.out_channels = dim(conv_out, 0);
                config.decoder_block_out_channels.push(dim(conv_out, 1));
                config.num_decoder_blocks.push(blocks);
                break;
            }
            // Neither the RGB convolution at `next` nor, after the
            // upsampling, a stage's last convolution at `next + 1`.
            let Some(conv) = is_conv("decoder", next + 1) else {
                return Err(format!("decoder.layers.{}.weight", next + 1));
            };
            config.decoder_block_out_channels.push(dim(conv, 1));
            config.num_decoder_blocks.push(blocks);
            i = next + 2;
        }
    }
    if !config.has_encoder() && !config.has_decoder() {
        return Err("encoder.layers.0.weight".to_owned());
    }
    Ok(config)
}

/// The family a TAESD's file or folder name points to: madebyollin names
/// them `taesd` (SD 1.x/2.x), `taesdxl`, `taesd3` and `taef1` (FLUX.1), in
/// file names (`taesdxl_decoder.safetensors`) and repository names
/// (`madebyollin/taesdxl`, a Hub cache's `models--madebyollin--taesdxl`).
/// The file name first, then its folders, nearest first.
pub fn family_from_name(path: &Path) -> Option<Family> {
    const NAMES: [(&str, Family); 4] =
        [("taesdxl", Family::Sdxl), ("taesd3", Family::Sd3), ("taef1", Family::Flux), ("taesd", Family::Sd1)];
    path.ancestors().filter_map(|p| p.file_name()).find_map(|name| {
        let name = name.to_string_lossy().to_ascii_lowercase();
        NAMES.iter().find(|(n, _)| name.contains(n)).map(|&(_, family)| family)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    // One test per rule, on key names as madebyollin's files have them.
    #[test]
    fn split_encoder_keys_keep_their_index() {
        assert_eq!(original_to_diffusers("0.weight", Some("encoder")), "encoder.layers.0.weight");
        assert_eq!(original_to_diffusers("13.conv.4.bias", Some("encoder")), "encoder.layers.13.conv.4.bias");
    }

    #[test]
    fn split_decoder_keys_lose_the_clamp() {
        assert_eq!(original_to_diffusers("1.weight", Some("decoder")), "decoder.layers.0.weight");
        assert_eq!(original_to_diffusers("3.conv.0.weight", Some("decoder")), "decoder.layers.2.conv.0.weight");
        assert_eq!(original_to_diffusers("19.bias", Some("decoder")), "decoder.layers.18.bias");
        assert_eq!(original_to_diffusers("0.weight", Some("decoder")), "decoder.clamp.weight");
    }

    #[test]
    fn comfyui_combined_prefixes() {
        assert_eq!(original_to_diffusers("taesd_encoder.2.weight", None), "encoder.layers.2.weight");
        assert_eq!(original_to_diffusers("taesd_decoder.7.weight", None), "decoder.layers.6.weight");
        assert_eq!(original_to_diffusers("vae_scale", None), "vae_scale");
    }

    #[test]
    fn taesd_module_state_dict() {
        assert_eq!(original_to_diffusers("encoder.1.conv.2.weight", None), "encoder.layers.1.conv.2.weight");
        assert_eq!(original_to_diffusers("decoder.18.conv.0.bias", None), "decoder.layers.17.conv.0.bias");
    }

    #[test]
    fn detects_each_layout() {
        let split_decoder = detect(["1.weight", "1.bias", "3.conv.0.weight"].iter().copied()).unwrap();
        assert_eq!(split_decoder.layout, Layout::Taesd);
        assert_eq!(split_decoder.names["decoder.layers.2.conv.0.weight"], "3.conv.0.weight");
        let split_encoder = detect(["0.weight", "1.conv.0.weight"].iter().copied()).unwrap();
        assert!(split_encoder.names.contains_key("encoder.layers.0.weight"));
        let comfy =
            detect(["taesd_encoder.0.weight", "taesd_decoder.1.weight", "vae_scale", "other"].iter().copied()).unwrap();
        assert_eq!((comfy.layout, comfy.ignored), (Layout::Taesd, 1));
        assert_eq!(comfy.names["vae_scale"], "vae_scale");
        let diffusers = detect(["encoder.layers.0.weight", "decoder.layers.0.bias"].iter().copied()).unwrap();
        assert_eq!(diffusers.layout, Layout::Diffusers);
        assert!(detect(["encoder.down_blocks.0.resnets.0.conv1.weight"].iter().copied()).is_none());
        assert!(detect(["model.layers.0.weight"].iter().copied()).is_none());
        assert!(detect(std::iter::empty()).is_none());
    }

    /// The tensor shapes of a TAESD of `width` channels with these blocks per stage.
    fn shapes(width: usize, latent: usize, enc: &[usize], dec: &[usize]) -> BTreeMap<String, Vec<usize>> {
        let mut s = BTreeMap::new();
        let mut conv = |name: String, o: usize, i: usize| s.insert(format!("{name}.weight"), vec![o, i, 3, 3]);
        let mut i = 0;
        for (stage, &blocks) in enc.iter().enumerate() {
            conv(format!("encoder.layers.{i}"), width, if stage == 0 { 3 } else { width });
            for b in 1..=blocks {
                conv(format!("encoder.layers.{}.conv.0", i + b), width, width);
            }
            i += blocks + 1;
        }
        conv(format!("encoder.layers.{i}"), latent, width);
        conv("decoder.layers.0".to_owned(), width, latent);
        let mut i = 2;
        for (stage, &blocks) in dec.iter().enumerate() {
            for b in 0..blocks {
                conv(format!("decoder.layers.{}.conv.0", i + b), width, width);
            }
            i += blocks;
            if stage + 1 == dec.len() {
                conv(format!("decoder.layers.{i}"), 3, width);
            } else {
                conv(format!("decoder.layers.{}", i + 1), width, width);
                i += 2;
            }
        }
        s
    }

    #[test]
    fn infers_taesd() {
        let s = shapes(64, 4, &[1, 3, 3, 3], &[3, 3, 3, 1]);
        let cfg = infer_config(|n| s.get(n).map(Vec::as_slice)).unwrap();
        assert_eq!(cfg, AutoencoderTinyConfig::taesd());
    }

    #[test]
    fn infers_other_block_counts_and_halves() {
        let s = shapes(8, 16, &[2, 0, 1], &[1, 0, 2]);
        let cfg = infer_config(|n| s.get(n).map(Vec::as_slice)).unwrap();
        assert_eq!(cfg.num_encoder_blocks, [2, 0, 1]);
        assert_eq!(cfg.num_decoder_blocks, [1, 0, 2]);
        assert_eq!((cfg.latent_channels, cfg.encoder_block_out_channels[0], cfg.downscale()), (16, 8, 4));
        let decoder_only: BTreeMap<_, _> = s.into_iter().filter(|(k, _)| k.starts_with("decoder.")).collect();
        let cfg = infer_config(|n| decoder_only.get(n).map(Vec::as_slice)).unwrap();
        assert!(!cfg.has_encoder() && cfg.has_decoder());
        assert_eq!(cfg.upscale(), 4);
    }

    #[test]
    fn names_what_is_missing() {
        let mut s = shapes(8, 4, &[1, 1], &[1, 1]);
        s.remove("decoder.layers.4.weight");
        let err = infer_config(|n| s.get(n).map(Vec::as_slice)).unwrap_err();
        assert_eq!(err, "decoder.layers.4.weight");
    }

    #[test]
    fn families_from_names() {
        let f = |p: &str| family_from_name(Path::new(p));
        assert_eq!(f("w/taesd_decoder.safetensors"), Some(Family::Sd1));
        assert_eq!(f("w/taesdxl_encoder.safetensors"), Some(Family::Sdxl));
        assert_eq!(
            f("hub/models--madebyollin--taesd3/snapshots/abc/diffusion_pytorch_model.safetensors"),
            Some(Family::Sd3)
        );
        assert_eq!(f("weights/taef1/diffusion_pytorch_model.safetensors"), Some(Family::Flux));
        assert_eq!(f("weights/tiny/diffusion_pytorch_model.safetensors"), None);
    }

    #[test]
    fn config_json_defaults_and_refusals() {
        let json: TinyConfigJson = serde_json::from_str(r#"{"latent_channels": 16, "shift_factor": null}"#).unwrap();
        let cfg = json.to_config().unwrap();
        assert_eq!(cfg, AutoencoderTinyConfig { latent_channels: 16, ..AutoencoderTinyConfig::taesd() });
        let json: TinyConfigJson = serde_json::from_str(r#"{"act_fn": "silu"}"#).unwrap();
        assert!(json.to_config().unwrap_err().contains("relu"));
    }
}
