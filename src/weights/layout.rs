//! Weight layouts: which naming scheme a file uses, and the table that maps
//! each scheme onto diffusers' names (the names the model asks for).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::LazyLock;

use regex::Regex;

/// The naming schemes a Stable Diffusion VAE file comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `diffusion_pytorch_model.safetensors` of diffusers.
    Diffusers,
    /// diffusers before 0.14: attention as `query/key/value/proj_attn`.
    DiffusersLegacyAttention,
    /// The original CompVis/LDM names (`vae-ft-mse-840000-ema-pruned.safetensors`,
    /// and the VAE inside full SD checkpoints).
    Ldm,
    /// TAESD as madebyollin/taesd ships it: `taesd_encoder.safetensors` and
    /// `taesd_decoder.safetensors`, or both halves in one file (see
    /// [`crate::weights`]'s TAESD layouts).
    Taesd,
    /// diffusers' `AutoencoderKLWan` / `AutoencoderKLQwenImage` (Qwen/Qwen-Image
    /// `vae/`, the Wan 2.1 Diffusers repos).
    WanDiffusers,
    /// The original Wan 2.1 VAE (`Wan2.1_VAE`, ComfyUI's
    /// `wan_2.1_vae.safetensors` and `qwen_image_vae.safetensors`).
    WanOriginal,
    /// The original Wan 2.2 VAE (`Wan2.2_VAE.pth` converted, ComfyUI's
    /// `wan2.2_vae.safetensors`): residual blocks nested as
    /// `downsamples.{i}.downsamples.{j}` and `upsamples.{i}.upsamples.{j}`.
    Wan22Original,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::Diffusers => "diffusers",
            Layout::DiffusersLegacyAttention => "diffusers (legacy attention names)",
            Layout::Ldm => "CompVis/LDM",
            Layout::Taesd => "TAESD original (madebyollin)",
            Layout::WanDiffusers => "diffusers (Wan/Qwen-Image)",
            Layout::WanOriginal => "Wan 2.1 original",
            Layout::Wan22Original => "Wan 2.2 original",
        })
    }
}

/// Prefixes under which full checkpoints keep their VAE.
pub const CHECKPOINT_PREFIXES: [&str; 2] = ["first_stage_model.", "vae."];

/// The top-level modules of an `AutoencoderKL`; other top-level keys of a VAE
/// file (LDM's `loss.*` discriminator, `model_ema.*` counters) are not the model.
const VAE_ROOTS: [&str; 5] = ["encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "bn."];
/// The original Wan VAE's: its quant convs are `conv1` and `conv2`.
const WAN_ROOTS: [&str; 4] = ["encoder.", "decoder.", "conv1.", "conv2."];

/// LDM name -> diffusers name. Applied in order, each to the result of the
/// previous rows; run after [`reverse_ldm_up_index`].
const LDM_RULES: &[(&str, &str)] = &[
    // Encoder levels: `down.i.block.j` are the ResNets of down block i.
    (r"^encoder\.down\.(\d+)\.block\.(\d+)\.", "encoder.down_blocks.$1.resnets.$2."),
    // ...and `down.i.downsample` its stride-2 conv.
    (r"^encoder\.down\.(\d+)\.downsample\.", "encoder.down_blocks.$1.downsamplers.0."),
    // Decoder levels (index already reversed): ResNets of up block i.
    (r"^decoder\.up\.(\d+)\.block\.(\d+)\.", "decoder.up_blocks.$1.resnets.$2."),
    // ...and its upsample conv.
    (r"^decoder\.up\.(\d+)\.upsample\.", "decoder.up_blocks.$1.upsamplers.0."),
    // Mid block: block_1, attn_1, block_2.
    (r"^(encoder|decoder)\.mid\.block_1\.", "$1.mid_block.resnets.0."),
    (r"^(encoder|decoder)\.mid\.block_2\.", "$1.mid_block.resnets.1."),
    (r"^(encoder|decoder)\.mid\.attn_1\.", "$1.mid_block.attentions.0."),
    // Attention parts: 1x1 convs q/k/v/proj_out (their [C, C, 1, 1] weights are
    // accepted for diffusers' [C, C] linears by the loader) and the norm.
    (r"\.attentions\.0\.norm\.", ".attentions.0.group_norm."),
    (r"\.attentions\.0\.q\.", ".attentions.0.to_q."),
    (r"\.attentions\.0\.k\.", ".attentions.0.to_k."),
    (r"\.attentions\.0\.v\.", ".attentions.0.to_v."),
    (r"\.attentions\.0\.proj_out\.", ".attentions.0.to_out.0."),
    // The final norm before conv_out.
    (r"^(encoder|decoder)\.norm_out\.", "$1.conv_norm_out."),
    // ResNet 1x1 projection when the width changes.
    (r"\.nin_shortcut\.", ".conv_shortcut."),
    // FLUX.2's original file (BFL's `ae.safetensors`) nests the quant convs.
    (r"^encoder\.quant_conv\.", "quant_conv."),
    (r"^decoder\.post_quant_conv\.", "post_quant_conv."),
];

/// Original Wan 2.1 name -> diffusers name, after [`wan_decoder_blocks`]
/// regrouped the decoder's flat list (diffusers' `convert_wan_vae_to_diffusers`).
const WAN_RULES: &[(&str, &str)] = &[
    (r"^(encoder|decoder)\.conv1\.", "$1.conv_in."),
    (r"^conv1\.", "quant_conv."),
    (r"^conv2\.", "post_quant_conv."),
    (r"^encoder\.downsamples\.", "encoder.down_blocks."),
    (r"^(encoder|decoder)\.middle\.0\.", "$1.mid_block.resnets.0."),
    (r"^(encoder|decoder)\.middle\.1\.", "$1.mid_block.attentions.0."),
    (r"^(encoder|decoder)\.middle\.2\.", "$1.mid_block.resnets.1."),
    (r"^(encoder|decoder)\.head\.0\.", "$1.norm_out."),
    (r"^(encoder|decoder)\.head\.2\.", "$1.conv_out."),
    (r"\.residual\.0\.", ".norm1."),
    (r"\.residual\.2\.", ".conv1."),
    (r"\.residual\.3\.", ".norm2."),
    (r"\.residual\.6\.", ".conv2."),
    (r"\.shortcut\.", ".conv_shortcut."),
];

/// Original Wan 2.2 name -> the Wan 2.1 original's diffusers-bound names,
/// before [`WAN_RULES`]: each level's nested list of residual blocks (and
/// its resampling, last) becomes diffusers' `resnets` and `downsampler` /
/// `upsampler` (diffusers' `convert_wan_vae_to_diffusers` handles Wan 2.1 only).
const WAN22_RULES: &[(&str, &str)] = &[
    (
        r"^encoder\.downsamples\.(\d+)\.downsamples\.(\d+)\.(resample|time_conv)\.",
        "encoder.down_blocks.$1.downsampler.$3.",
    ),
    (r"^encoder\.downsamples\.(\d+)\.downsamples\.(\d+)\.", "encoder.down_blocks.$1.resnets.$2."),
    (r"^decoder\.upsamples\.(\d+)\.upsamples\.(\d+)\.(resample|time_conv)\.", "decoder.up_blocks.$1.upsampler.$3."),
    (r"^decoder\.upsamples\.(\d+)\.upsamples\.(\d+)\.", "decoder.up_blocks.$1.resnets.$2."),
];

/// Legacy diffusers attention name -> current diffusers name.
const LEGACY_ATTENTION_RULES: &[(&str, &str)] = &[
    (r"\.attentions\.0\.query\.", ".attentions.0.to_q."),
    (r"\.attentions\.0\.key\.", ".attentions.0.to_k."),
    (r"\.attentions\.0\.value\.", ".attentions.0.to_v."),
    (r"\.attentions\.0\.proj_attn\.", ".attentions.0.to_out.0."),
];

static LDM: LazyLock<Vec<(Regex, &str)>> = LazyLock::new(|| compile(LDM_RULES));
static LEGACY: LazyLock<Vec<(Regex, &str)>> = LazyLock::new(|| compile(LEGACY_ATTENTION_RULES));
static WAN: LazyLock<Vec<(Regex, &str)>> = LazyLock::new(|| compile(WAN_RULES));
static WAN22: LazyLock<Vec<(Regex, &str)>> = LazyLock::new(|| compile(WAN22_RULES));

fn compile(rules: &[(&str, &'static str)]) -> Vec<(Regex, &'static str)> {
    rules.iter().map(|&(pattern, to)| (Regex::new(pattern).expect("rule patterns are valid regexes"), to)).collect()
}

fn apply(rules: &[(Regex, &str)], key: &str) -> String {
    rules.iter().fold(key.to_owned(), |k, (re, to)| re.replace(&k, *to).into_owned())
}

/// LDM numbers decoder levels from the latent side *up* in reverse: its
/// `decoder.up.{n-1-i}` is diffusers' `decoder.up_blocks.{i}`.
fn reverse_ldm_up_index(key: &str, levels: usize) -> String {
    static UP: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^decoder\.up\.(\d+)\.").expect("valid regex"));
    UP.replace(key, |c: &regex::Captures| {
        let k: usize = c[1].parse().unwrap_or(0);
        format!("decoder.up.{}.", levels.saturating_sub(k + 1))
    })
    .into_owned()
}

/// The original Wan decoder keeps its up blocks as one flat list: each level's
/// `resnets + 1` ResNets, then its upsampler (none at the last level).
/// `decoder.upsamples.{k}` becomes `decoder.up_blocks.{i}.resnets.{j}` or
/// `.upsamplers.0`, where `per_level` is the list's entries per level.
fn wan_decoder_blocks(key: &str, per_level: usize) -> String {
    static UP: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^decoder\.upsamples\.(\d+)\.").expect("valid regex"));
    UP.replace(key, |c: &regex::Captures| {
        let k: usize = c[1].parse().unwrap_or(0);
        let (level, j) = (k / per_level.max(1), k % per_level.max(1));
        if j + 1 == per_level {
            format!("decoder.up_blocks.{level}.upsamplers.0.")
        } else {
            format!("decoder.up_blocks.{level}.resnets.{j}.")
        }
    })
    .into_owned()
}

/// Entries per level of the original Wan decoder's flat list: the index of
/// its first upsampler, plus one (4 for Wan 2.1: three ResNets and it).
fn wan_decoder_per_level<'a>(keys: impl IntoIterator<Item = &'a str>) -> usize {
    keys.into_iter()
        .filter(|k| k.contains(".resample.") || k.contains(".time_conv."))
        .filter_map(|k| k.strip_prefix("decoder.upsamples.")?.split('.').next()?.parse::<usize>().ok())
        .min()
        .map_or(usize::MAX, |first| first + 1)
}

/// The VAE found in a file's keys.
#[derive(Debug, Clone)]
pub struct VaeKeys {
    pub layout: Layout,
    /// `first_stage_model.` or `vae.` for full checkpoints.
    pub prefix: Option<&'static str>,
    /// diffusers name -> key in the file.
    pub names: BTreeMap<String, String>,
    /// Keys of the file that are not part of the VAE.
    pub ignored: usize,
}

/// `key` without the checkpoint `prefix` (`None`: it is outside it).
fn strip_prefix<'a>(key: &'a str, prefix: Option<&str>) -> Option<&'a str> {
    match prefix {
        Some(p) => key.strip_prefix(p),
        None => Some(key),
    }
}

/// Finds the VAE among `keys` and names its tensors as diffusers does.
/// `None` when no key set of a known layout is there.
pub fn detect<'a>(keys: impl IntoIterator<Item = &'a str> + Clone) -> Option<VaeKeys> {
    let prefix = CHECKPOINT_PREFIXES
        .into_iter()
        .find(|p| keys.clone().into_iter().any(|k| k.strip_prefix(p).is_some_and(|rest| rest.starts_with("encoder."))));
    let strip = |k: &'a str| -> Option<&'a str> { strip_prefix(k, prefix) };
    let wan_original = keys
        .clone()
        .into_iter()
        .any(|k| strip_prefix(k, prefix).is_some_and(|k| k.starts_with("encoder.downsamples.")));
    let wan22_original = wan_original
        && keys
            .clone()
            .into_iter()
            .any(|k| strip_prefix(k, prefix).is_some_and(|k| WAN22[0].0.is_match(k) || WAN22[1].0.is_match(k)));
    let roots: &[&str] = if wan_original { &WAN_ROOTS } else { &VAE_ROOTS };
    let vae: Vec<(&str, &str)> = keys
        .clone()
        .into_iter()
        .filter_map(|k| strip(k).filter(|s| roots.iter().any(|r| s.starts_with(r))).map(|s| (s, k)))
        .collect();
    let total = keys.into_iter().count();
    let has = |needle: &str| vae.iter().any(|(k, _)| k.contains(needle));

    let levels = vae
        .iter()
        .filter_map(|(k, _)| k.strip_prefix("decoder.up.")?.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |m| m + 1);
    let per_level = wan_decoder_per_level(vae.iter().map(|(k, _)| *k));
    let (layout, rename): (Layout, &dyn Fn(&str) -> String) = if wan22_original {
        (Layout::Wan22Original, &|k| apply(&WAN, &apply(&WAN22, k)))
    } else if wan_original {
        (Layout::WanOriginal, &|k| apply(&WAN, &wan_decoder_blocks(k, per_level)))
    } else if has(".attentions.0.to_qkv.") || has(".norm1.gamma") {
        (Layout::WanDiffusers, &|k| k.to_owned())
    } else if has("encoder.down_blocks.") || has("decoder.up_blocks.") {
        if has(".attentions.0.query.") {
            (Layout::DiffusersLegacyAttention, &|k| apply(&LEGACY, k))
        } else {
            (Layout::Diffusers, &|k| k.to_owned())
        }
    } else if has("encoder.down.") || has("decoder.up.") {
        (Layout::Ldm, &|k| apply(&LDM, &reverse_ldm_up_index(k, levels)))
    } else {
        return None;
    };
    let names = vae.iter().map(|&(k, original)| (rename(k), original.to_owned())).collect();
    Some(VaeKeys { layout, prefix, names, ignored: total - vae.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ldm(key: &str, levels: usize) -> String {
        apply(&LDM, &reverse_ldm_up_index(key, levels))
    }

    // One test per LDM rule, on key names as vae-ft-mse-840000-ema-pruned has them.
    #[test]
    fn ldm_encoder_resnets() {
        assert_eq!(ldm("encoder.down.2.block.1.norm2.weight", 4), "encoder.down_blocks.2.resnets.1.norm2.weight");
    }

    #[test]
    fn ldm_downsample() {
        assert_eq!(ldm("encoder.down.0.downsample.conv.bias", 4), "encoder.down_blocks.0.downsamplers.0.conv.bias");
    }

    #[test]
    fn ldm_decoder_up_is_reversed() {
        assert_eq!(ldm("decoder.up.3.block.0.conv1.weight", 4), "decoder.up_blocks.0.resnets.0.conv1.weight");
        assert_eq!(ldm("decoder.up.0.block.2.conv2.bias", 4), "decoder.up_blocks.3.resnets.2.conv2.bias");
    }

    #[test]
    fn ldm_upsample() {
        assert_eq!(ldm("decoder.up.1.upsample.conv.weight", 4), "decoder.up_blocks.2.upsamplers.0.conv.weight");
    }

    #[test]
    fn ldm_mid_resnets() {
        assert_eq!(ldm("encoder.mid.block_1.conv1.weight", 4), "encoder.mid_block.resnets.0.conv1.weight");
        assert_eq!(ldm("decoder.mid.block_2.norm1.bias", 4), "decoder.mid_block.resnets.1.norm1.bias");
    }

    #[test]
    fn ldm_attention() {
        assert_eq!(ldm("encoder.mid.attn_1.norm.weight", 4), "encoder.mid_block.attentions.0.group_norm.weight");
        assert_eq!(ldm("decoder.mid.attn_1.q.weight", 4), "decoder.mid_block.attentions.0.to_q.weight");
        assert_eq!(ldm("decoder.mid.attn_1.k.bias", 4), "decoder.mid_block.attentions.0.to_k.bias");
        assert_eq!(ldm("encoder.mid.attn_1.v.weight", 4), "encoder.mid_block.attentions.0.to_v.weight");
        assert_eq!(ldm("encoder.mid.attn_1.proj_out.bias", 4), "encoder.mid_block.attentions.0.to_out.0.bias");
    }

    #[test]
    fn ldm_norm_out() {
        assert_eq!(ldm("decoder.norm_out.weight", 4), "decoder.conv_norm_out.weight");
    }

    #[test]
    fn ldm_shortcut() {
        assert_eq!(
            ldm("encoder.down.1.block.0.nin_shortcut.weight", 4),
            "encoder.down_blocks.1.resnets.0.conv_shortcut.weight"
        );
    }

    #[test]
    fn ldm_unchanged_names() {
        for key in ["encoder.conv_in.weight", "decoder.conv_out.bias", "quant_conv.weight", "post_quant_conv.bias"] {
            assert_eq!(ldm(key, 4), key);
        }
    }

    #[test]
    fn legacy_attention() {
        let key = |k: &str| apply(&LEGACY, k);
        assert_eq!(key("encoder.mid_block.attentions.0.query.weight"), "encoder.mid_block.attentions.0.to_q.weight");
        assert_eq!(key("encoder.mid_block.attentions.0.key.bias"), "encoder.mid_block.attentions.0.to_k.bias");
        assert_eq!(key("decoder.mid_block.attentions.0.value.weight"), "decoder.mid_block.attentions.0.to_v.weight");
        assert_eq!(
            key("decoder.mid_block.attentions.0.proj_attn.bias"),
            "decoder.mid_block.attentions.0.to_out.0.bias"
        );
    }

    #[test]
    fn detects_checkpoint_prefix_and_ignores_the_rest() {
        let keys = [
            "first_stage_model.encoder.down.0.block.0.conv1.weight",
            "first_stage_model.decoder.up.1.block.0.conv1.weight",
            "model.diffusion_model.input_blocks.0.0.weight",
            "alphas_cumprod",
        ];
        let found = detect(keys.iter().copied()).expect("an LDM VAE");
        assert_eq!(found.layout, Layout::Ldm);
        assert_eq!(found.prefix, Some("first_stage_model."));
        assert_eq!(found.ignored, 2);
        assert_eq!(
            found.names["decoder.up_blocks.0.resnets.0.conv1.weight"],
            "first_stage_model.decoder.up.1.block.0.conv1.weight"
        );
    }

    #[test]
    fn wan22_original_names() {
        let keys = [
            "encoder.conv1.weight",
            "encoder.downsamples.0.downsamples.0.residual.0.gamma",
            "encoder.downsamples.0.downsamples.1.shortcut.weight",
            "encoder.downsamples.1.downsamples.2.resample.1.weight",
            "encoder.downsamples.1.downsamples.2.time_conv.bias",
            "encoder.middle.1.to_qkv.weight",
            "encoder.head.2.weight",
            "conv1.weight",
            "conv2.bias",
            "decoder.upsamples.2.upsamples.3.resample.1.bias",
            "decoder.upsamples.0.upsamples.3.time_conv.weight",
            "decoder.upsamples.1.upsamples.0.residual.6.weight",
            "decoder.head.0.gamma",
        ];
        let found = detect(keys.iter().copied()).expect("a Wan 2.2 VAE");
        assert_eq!(found.layout, Layout::Wan22Original);
        let names: Vec<&str> =
            keys.iter().map(|k| found.names.iter().find(|(_, v)| v.as_str() == *k).unwrap().0.as_str()).collect();
        assert_eq!(
            names,
            [
                "encoder.conv_in.weight",
                "encoder.down_blocks.0.resnets.0.norm1.gamma",
                "encoder.down_blocks.0.resnets.1.conv_shortcut.weight",
                "encoder.down_blocks.1.downsampler.resample.1.weight",
                "encoder.down_blocks.1.downsampler.time_conv.bias",
                "encoder.mid_block.attentions.0.to_qkv.weight",
                "encoder.conv_out.weight",
                "quant_conv.weight",
                "post_quant_conv.bias",
                "decoder.up_blocks.2.upsampler.resample.1.bias",
                "decoder.up_blocks.0.upsampler.time_conv.weight",
                "decoder.up_blocks.1.resnets.0.conv2.weight",
                "decoder.norm_out.gamma",
            ]
        );
    }

    #[test]
    fn unknown_layout_is_none() {
        assert!(detect(["model.layers.0.weight", "lm_head.weight"].iter().copied()).is_none());
    }
}
