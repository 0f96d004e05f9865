//! Reading the architecture of an `AutoencoderKL` off its tensor shapes, so
//! that SD 1.x/2.x/XL (4 latent channels) and SD3/FLUX (16, no quant convs)
//! VAEs load with no configuration at all.

use serde::Deserialize;

use crate::model::AutoencoderKlConfig;

/// The fields of a diffusers `config.json` that the weights cannot tell.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DiffusersConfig {
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    pub scaling_factor: Option<f64>,
    pub shift_factor: Option<f64>,
    pub norm_num_groups: Option<usize>,
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
    Ok(AutoencoderKlConfig {
        in_channels: conv_in.get(1).copied().unwrap_or(3),
        out_channels: decoder_out[0],
        latent_channels: decoder_in.get(1).copied().unwrap_or(4),
        block_out_channels,
        decoder_block_out_channels: None,
        layers_per_block,
        norm_num_groups: json.norm_num_groups.unwrap_or(defaults.norm_num_groups),
        scaling_factor: json.scaling_factor.unwrap_or(default_scaling),
        shift_factor: json.shift_factor.unwrap_or(0.0),
        use_quant_conv: shape_of("quant_conv.weight").is_some(),
        use_post_quant_conv: shape_of("post_quant_conv.weight").is_some(),
        mid_block_add_attention: shape_of("encoder.mid_block.attentions.0.to_q.weight").is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
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
    fn names_the_missing_tensor() {
        let mut shapes = sd15_shapes(4, true);
        shapes.remove("decoder.conv_in.weight");
        let err = infer_config(|n| shapes.get(n).map(Vec::as_slice), &DiffusersConfig::default(), 0.18215).unwrap_err();
        assert_eq!(err, "decoder.conv_in.weight");
    }
}
