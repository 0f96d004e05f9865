//! Reading the architecture of an `AutoencoderKL` off its tensor shapes, so
//! that SD 1.x/2.x/XL (4 latent channels) and SD3/FLUX (16, no quant convs)
//! VAEs load with no configuration at all.

use serde::Deserialize;

use crate::model::{AutoencoderKlConfig, WanConfig, WanResidualConfig};

/// The fields of a diffusers `config.json` that the weights cannot tell.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DiffusersConfig {
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    pub scaling_factor: Option<f64>,
    pub shift_factor: Option<f64>,
    pub norm_num_groups: Option<usize>,
    /// FLUX.2's batch norm (`AutoencoderKLFlux2`): its epsilon and patch
    /// (`[2, 2]`); Wan 2.2's image patch (`2`).
    pub batch_norm_eps: Option<f64>,
    pub patch_size: Option<PatchSize>,
    /// Wan and Qwen-Image: per-channel latent statistics.
    pub latents_mean: Option<Vec<f64>>,
    pub latents_std: Option<Vec<f64>>,
    /// Wan 2.2's residual blocks (Qwen-Image 2.1 has them by default).
    pub is_residual: Option<bool>,
}

/// `patch_size` as FLUX.2 (`[2, 2]`) or Wan 2.2 (`2`) writes it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PatchSize {
    Square(usize),
    Sides(Vec<usize>),
}

impl PatchSize {
    /// The patch's side (the first, for a list).
    pub fn side(&self) -> Option<usize> {
        match self {
            PatchSize::Square(p) => Some(*p),
            PatchSize::Sides(sides) => sides.first().copied(),
        }
    }
}

/// Infers the config from `shape_of(diffusers name)`.
///
/// `Err` names the tensor whose absence makes the architecture unknowable.
pub fn infer_config<'a>(
    shape_of: impl Fn(&str) -> Option<&'a [usize]>,
    json: &DiffusersConfig,
    default_scaling: f64,
) -> Result<AutoencoderKlConfig, String> {
    let need = |name: &str| shape_of(name).ok_or_else(|| name.to_owned());
    let conv_in = need("encoder.conv_in.weight")?;
    let block_out_channels: Vec<usize> = (0..)
        .map_while(|i| shape_of(&format!("encoder.down_blocks.{i}.resnets.0.conv1.weight")).map(|s| s[0]))
        .collect();
    if block_out_channels.is_empty() {
        return Err("encoder.down_blocks.0.resnets.0.conv1.weight".to_owned());
    }
    let layers_per_block =
        (0..).take_while(|j| shape_of(&format!("encoder.down_blocks.0.resnets.{j}.conv1.weight")).is_some()).count();
    let decoder_in = need("decoder.conv_in.weight")?;
    let decoder_out = need("decoder.conv_out.weight")?;
    let defaults = AutoencoderKlConfig::sd15();
    // FLUX.2's small decoder has its own widths, read off its up blocks.
    let mut decoder_widths: Vec<usize> =
        (0..).map_while(|i| shape_of(&format!("decoder.up_blocks.{i}.resnets.0.conv1.weight")).map(|s| s[0])).collect();
    decoder_widths.reverse();
    let decoder_block_out_channels = (decoder_widths.len() == block_out_channels.len()
        && decoder_widths != block_out_channels)
        .then_some(decoder_widths);
    Ok(AutoencoderKlConfig {
        in_channels: conv_in.get(1).copied().unwrap_or(3),
        out_channels: decoder_out[0],
        latent_channels: decoder_in.get(1).copied().unwrap_or(4),
        block_out_channels,
        decoder_block_out_channels,
        layers_per_block,
        norm_num_groups: json.norm_num_groups.unwrap_or(defaults.norm_num_groups),
        scaling_factor: json.scaling_factor.unwrap_or(default_scaling),
        shift_factor: json.shift_factor.unwrap_or(0.0),
        use_quant_conv: shape_of("quant_conv.weight").is_some(),
        use_post_quant_conv: shape_of("post_quant_conv.weight").is_some(),
        mid_block_add_attention: shape_of("encoder.mid_block.attentions.0.to_q.weight").is_some(),
    })
}

/// Infers a Wan 2.1 / Qwen-Image VAE's config from `shape_of(diffusers
/// name)`: the encoder's flat list of blocks gives the ResNets per level
/// (those before the first resampler), the levels and their widths, and
/// which levels also resample in time (`time_conv`, unused for images).
///
/// `Err` names the tensor whose absence makes the architecture unknowable,
/// or says what is not supported.
pub fn infer_wan_config<'a>(shape_of: impl Fn(&str) -> Option<&'a [usize]>) -> Result<WanConfig, String> {
    let need = |name: &str| shape_of(name).ok_or_else(|| format!("tensor {name} is missing"));
    if shape_of("encoder.down_blocks.0.resnets.0.conv1.weight").is_some() {
        return Err("residual down blocks: a Wan 2.2 / Qwen-Image 2.1 VAE (see infer_wan_residual_config)".to_owned());
    }
    let base_dim = need("encoder.conv_in.weight")?[0];
    let z_dim = need("decoder.conv_in.weight")?.get(1).copied().unwrap_or(0);
    let block = |k: usize, part: &str| shape_of(&format!("encoder.down_blocks.{k}.{part}"));
    let blocks =
        (0..).take_while(|&k| block(k, "conv1.weight").is_some() || block(k, "resample.1.weight").is_some()).count();
    let num_res_blocks = (0..blocks).take_while(|&k| block(k, "resample.1.weight").is_none()).count();
    if num_res_blocks == 0 || base_dim == 0 {
        return Err("tensor encoder.down_blocks.0.conv1.weight is missing".to_owned());
    }
    let per_level = num_res_blocks + 1;
    let levels = blocks.div_ceil(per_level);
    let mut dim_mult = Vec::with_capacity(levels);
    let mut temperal_downsample = Vec::new();
    for level in 0..levels {
        let first = level * per_level;
        let width = block(first, "conv1.weight")
            .ok_or_else(|| format!("tensor encoder.down_blocks.{first}.conv1.weight is missing"))?[0];
        if width % base_dim != 0 {
            return Err(format!("level {level} is {width} wide, not a multiple of {base_dim}"));
        }
        dim_mult.push(width / base_dim);
        if level + 1 < levels {
            temperal_downsample.push(block(first + num_res_blocks, "time_conv.weight").is_some());
        }
    }
    Ok(WanConfig { base_dim, z_dim, dim_mult, num_res_blocks, temperal_downsample })
}

/// Infers a Wan 2.2 / Qwen-Image 2.1 VAE's config (residual down and up
/// blocks) from `shape_of(diffusers name)`: levels, widths and ResNets from
/// the encoder's blocks, the decoder's base width from its `conv_out`, the
/// temporal resamplings from their (unused) `time_conv`s, 3D or 2D
/// convolutions from `conv_in`'s rank. The image patch is `patch` (the
/// `config.json`'s), else 2 where `conv_in` reads 3 x 4 channels (Wan 2.2),
/// else none.
///
/// `Err` names the tensor whose absence makes the architecture unknowable.
pub fn infer_wan_residual_config<'a>(
    shape_of: impl Fn(&str) -> Option<&'a [usize]>,
    patch: Option<usize>,
) -> Result<WanResidualConfig, String> {
    let need = |name: &str| shape_of(name).ok_or_else(|| format!("tensor {name} is missing"));
    let conv_in = need("encoder.conv_in.weight")?;
    let (base_dim, in_channels) = (conv_in.first().copied().unwrap_or(0), conv_in.get(1).copied().unwrap_or(0));
    let conv3d = conv_in.len() == 5;
    let z_dim = need("decoder.conv_in.weight")?.get(1).copied().unwrap_or(0);
    let conv_out = need("decoder.conv_out.weight")?;
    let (out_channels, decoder_last) = (conv_out.first().copied().unwrap_or(0), conv_out.get(1).copied().unwrap_or(0));
    let resnet = |i: usize, j: usize| shape_of(&format!("encoder.down_blocks.{i}.resnets.{j}.conv1.weight"));
    let levels = (0..).take_while(|&i| resnet(i, 0).is_some()).count();
    let num_res_blocks = (0..).take_while(|&j| resnet(0, j).is_some()).count();
    if levels == 0 || base_dim == 0 {
        return Err("tensor encoder.down_blocks.0.resnets.0.conv1.weight is missing".to_owned());
    }
    let mut dim_mult = Vec::with_capacity(levels);
    for i in 0..levels {
        let width = resnet(i, 0).and_then(|s| s.first().copied()).unwrap_or(0);
        if width % base_dim != 0 {
            return Err(format!("level {i} is {width} wide, not a multiple of {base_dim}"));
        }
        dim_mult.push(width / base_dim);
    }
    let temperal_downsample = (0..levels.saturating_sub(1))
        .map(|i| shape_of(&format!("encoder.down_blocks.{i}.downsampler.time_conv.weight")).is_some())
        .collect();
    let first = dim_mult[0].max(1);
    if decoder_last % first != 0 {
        return Err(format!("the decoder's last level is {decoder_last} wide, not a multiple of {first}"));
    }
    let patch_size = patch.unwrap_or(if conv3d && in_channels == 12 { 2 } else { 1 });
    Ok(WanResidualConfig {
        base_dim,
        decoder_base_dim: decoder_last / first,
        z_dim,
        dim_mult,
        num_res_blocks,
        temperal_downsample,
        in_channels,
        out_channels,
        patch_size,
        conv3d,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::key_shapes;
    use std::collections::BTreeMap;

    /// The shapes of every "first resnet" conv of an SD 1.x VAE, plus the ends.
    fn sd15_shapes(latent: usize, quant: bool) -> BTreeMap<String, Vec<usize>> {
        let mut shapes = BTreeMap::new();
        shapes.insert("encoder.conv_in.weight".to_owned(), vec![128, 3, 3, 3]);
        for (i, c) in [128, 256, 512, 512].into_iter().enumerate() {
            for j in 0..2 {
                shapes.insert(format!("encoder.down_blocks.{i}.resnets.{j}.conv1.weight"), vec![c, c, 3, 3]);
            }
        }
        shapes.insert("encoder.mid_block.attentions.0.to_q.weight".to_owned(), vec![512, 512]);
        shapes.insert("decoder.conv_in.weight".to_owned(), vec![512, latent, 3, 3]);
        shapes.insert("decoder.conv_out.weight".to_owned(), vec![3, 128, 3, 3]);
        if quant {
            shapes.insert("quant_conv.weight".to_owned(), vec![8, 8, 1, 1]);
            shapes.insert("post_quant_conv.weight".to_owned(), vec![4, 4, 1, 1]);
        }
        shapes
    }

    #[test]
    fn infers_sd15() {
        let shapes = sd15_shapes(4, true);
        let cfg = infer_config(|n| shapes.get(n).map(Vec::as_slice), &DiffusersConfig::default(), 0.18215).unwrap();
        assert_eq!(cfg, AutoencoderKlConfig::sd15());
    }

    #[test]
    fn infers_flux_with_its_config_json() {
        let shapes = sd15_shapes(16, false);
        let json = DiffusersConfig { scaling_factor: Some(0.3611), shift_factor: Some(0.1159), ..Default::default() };
        let cfg = infer_config(|n| shapes.get(n).map(Vec::as_slice), &json, 0.18215).unwrap();
        assert_eq!(cfg, AutoencoderKlConfig::flux());
    }

    #[test]
    fn infers_wan22_and_qwen_image21_from_their_shapes() {
        for (keys, conv3d) in
            [(include_str!("../model/wan22_keys.txt"), true), (include_str!("../model/qwenimage21_keys.txt"), false)]
        {
            let shapes = key_shapes(keys);
            let cfg = infer_wan_residual_config(|n| shapes.get(n).map(Vec::as_slice), None).unwrap();
            // The configs the key lists were made from (Wan 2.2's 12 input
            // channels are RGB patched 2x2; Qwen-Image 2.1's 4 are RGBA).
            assert_eq!(cfg, WanResidualConfig::tiny(conv3d));
            cfg.check().unwrap();
            // The Wan 2.1 inference points to this one.
            assert!(infer_wan_config(|n| shapes.get(n).map(Vec::as_slice)).unwrap_err().contains("residual"));
        }
    }

    #[test]
    fn names_the_missing_tensor() {
        let mut shapes = sd15_shapes(4, true);
        shapes.remove("decoder.conv_in.weight");
        let err = infer_config(|n| shapes.get(n).map(Vec::as_slice), &DiffusersConfig::default(), 0.18215).unwrap_err();
        assert_eq!(err, "decoder.conv_in.weight");
    }
}
