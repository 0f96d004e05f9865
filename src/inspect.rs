//! `vae inspect`: what a weights or latent file holds, without running the model.

use std::path::Path;

use anyhow::{Context, Result};
use burn::tensor::Device;
use serde_json::{Value, json};

use crate::latent::{Latent, LatentFormat};
use crate::model::{Family, Model};
use crate::weights::{self, Parts, WeightsSource};

/// A report on `path` as JSON: weights (a folder, or a safetensors file with
/// VAE tensors) or a latent (anything else that reads as one).
pub fn inspect(path: &Path) -> Result<Value> {
    if !path.is_dir() {
        crate::output::check_input(path).with_context(|| format!("{}: cannot read", path.display()))?;
    }
    let weights_like = path.is_dir()
        || (LatentFormat::of(path) == LatentFormat::Safetensors && !looks_like_latent(path).unwrap_or(false));
    if weights_like { inspect_weights(path) } else { inspect_latent(path) }
}

/// A safetensors file with a `latent` or `latent_tensor` tensor, or only one
/// tensor, is a latent; weights have hundreds.
fn looks_like_latent(path: &Path) -> Result<bool> {
    let file = std::fs::File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    // SAFETY: the map is only read, and only its header, while this function runs.
    let bytes = unsafe { memmap2::Mmap::map(&file) }?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).ok().context("not safetensors")?;
    Ok(meta.tensors().len() <= 2)
}

fn inspect_weights(path: &Path) -> Result<Value> {
    let source = WeightsSource::from_path(path)?;
    // Every tensor is checked by name, shape and dtype; none is read.
    let (model, info) = weights::load(&source, &Device::flex(), None, Parts::Neither)?;
    let family = match model.family() {
        Some(Family::Sd1) => "sd1/sd2 (or sdxl: same architecture, its config.json says scaling 0.13025)",
        Some(f) => f.name(),
        None => "unknown (scaling and channels fit no preset)",
    };
    let (scaling, shift) = model.latent_scaling();
    let mut report = json!({
        "kind": "weights",
        "model": model.class_name(),
        "file": info.path.display().to_string(),
        "layout": info.layout.to_string(),
        "prefix": info.prefix,
        "dtype": info.dtype,
        "parameters": info.parameters,
        "other_tensors": info.ignored,
        "family": family,
        "scaling_factor": scaling,
        "shift_factor": shift,
        "latent_channels": model.latent_channels(),
    });
    let architecture = match &model {
        Model::Kl(m) => {
            let c = &m.config;
            json!({
                "block_out_channels": c.block_out_channels,
                "layers_per_block": c.layers_per_block,
                "norm_num_groups": c.norm_num_groups,
                "quant_convs": c.use_quant_conv,
                "mid_block_attention": c.mid_block_add_attention,
            })
        }
        Model::Tiny(m) => {
            let c = &m.config;
            let halves = match (c.has_encoder(), c.has_decoder()) {
                (true, true) => "encoder and decoder",
                (true, false) => "encoder only",
                _ => "decoder only",
            };
            json!({
                // TAESD's family is that of the big VAE it was distilled from.
                "family": format!("{} ({})", c.family().map_or("unknown", Family::name), info.notes.join("; ")),
                "halves": halves,
                "encoder_block_out_channels": c.encoder_block_out_channels,
                "num_encoder_blocks": c.num_encoder_blocks,
                "decoder_block_out_channels": c.decoder_block_out_channels,
                "num_decoder_blocks": c.num_decoder_blocks,
                "tiling": "always untiled (--tile applies to AutoencoderKL)",
            })
        }
    };
    if let (Value::Object(report), Value::Object(more)) = (&mut report, architecture) {
        report.extend(more);
        report.insert("sha256".to_owned(), json!(info.sha256));
        report.insert("check".to_owned(), json!("every VAE tensor present, with the expected shape and a float dtype"));
    }
    Ok(report)
}

fn inspect_latent(path: &Path) -> Result<Value> {
    let latent = Latent::read(path)?;
    let plane = latent.height * latent.width;
    let channels: Vec<Value> = latent
        .data
        .chunks(plane)
        .map(|values| {
            let n = values.len() as f64;
            let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
            let var = values.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
            let (min, max) = values.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            json!({ "mean": mean, "std": var.sqrt(), "min": min, "max": max })
        })
        .collect();
    let m = &latent.meta;
    let format = match LatentFormat::of(path) {
        LatentFormat::Safetensors => "safetensors",
        LatentFormat::Comfy => "ComfyUI .latent",
        LatentFormat::Npy => "NumPy .npy",
    };
    Ok(json!({
        "kind": "latent",
        "file": path.display().to_string(),
        "format": format,
        "shape": [1, latent.channels, latent.height, latent.width],
        "decodes_to": format!("{}x{} (at 8x)", m.width.unwrap_or(8 * latent.width), m.height.unwrap_or(8 * latent.height)),
        "family": m.family,
        "scaling_factor": m.scaling_factor,
        "shift_factor": m.shift_factor,
        "weights": m.weights,
        "weights_sha256": m.weights_sha256,
        "channels": channels,
    }))
}

/// The report as `key: value` lines, nulls left out.
pub fn render(report: &Value) -> String {
    let mut out = String::new();
    if let Value::Object(map) = report {
        for (key, value) in map {
            match value {
                Value::Null => {}
                Value::String(s) => out.push_str(&format!("{key}: {s}\n")),
                Value::Array(items) if key == "channels" => {
                    for (i, ch) in items.iter().enumerate() {
                        let f = |k: &str| ch[k].as_f64().unwrap_or(f64::NAN);
                        out.push_str(&format!(
                            "channel {i}: mean {:.4}, std {:.4}, min {:.4}, max {:.4}\n",
                            f("mean"),
                            f("std"),
                            f("min"),
                            f("max")
                        ));
                    }
                }
                other => out.push_str(&format!("{key}: {other}\n")),
            }
        }
    }
    out
}
