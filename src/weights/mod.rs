//! Stable Diffusion VAE weights from safetensors files, in the layouts people
//! have them: diffusers folders and files, original CompVis/LDM files, and full
//! checkpoints that contain a VAE; and TAESD (`AutoencoderTiny`), in diffusers'
//! layout or madebyollin's (see [`tiny`]). Pickles are refused, never opened.

mod file;
mod infer;
mod layout;
mod params;
pub mod tiny;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, FloatDType};

pub use file::{FileHash, TensorFile};
pub use infer::{DiffusersConfig, PatchSize, infer_config, infer_wan_config, infer_wan_residual_config};
pub use layout::{Layout, VaeKeys, detect};
pub use params::{Mismatch, ParamLoader};

use crate::hub::{DIFFUSERS_FILES, Hub, HubError, HubRepo};
use crate::latent_space::{ChannelStats, WeightsLatent, WeightsScaling};
use crate::model::{
    AutoencoderKl, AutoencoderKlConfig, AutoencoderTinyConfig, AutoencoderWan, AutoencoderWanResidual, Family, Model,
    SD15_SCALING_FACTOR, WanConfig, WanResidualConfig,
};

/// Environment variable naming the weights when `--weights` is not given.
pub const WEIGHTS_ENV: &str = "VAE_WEIGHTS";
/// Folder searched last, relative to the working directory.
pub const WEIGHTS_DIR: &str = "weights";

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error(
        "no VAE weights found (looked at --weights, ${WEIGHTS_ENV}, and {searched}): download one, e.g. \
         diffusion_pytorch_model.safetensors and config.json of stabilityai/sd-vae-ft-mse into ./weights/sd-vae-ft-mse/, \
         and pass --weights or set ${WEIGHTS_ENV} (weights/README.md lists the known files), or name a Hub repo: \
         --weights stabilityai/sd-vae-ft-mse"
    )]
    NotFound { searched: String },
    #[error("{}: several weights files, choose one with --weights: {}", dir.display(), candidates.join(", "))]
    Ambiguous { dir: PathBuf, candidates: Vec<String> },
    // `cause`, not `source`: the message already says it, and a source would
    // make `{:#}` print it twice.
    #[error("{}: {cause}", path.display())]
    Io { path: PathBuf, cause: std::io::Error },
    #[error(
        "{}: refusing a PyTorch pickle file: unpickling can run arbitrary code. Convert it once to safetensors \
         (python -c \"import torch, safetensors.torch as s; sd = torch.load('IN', weights_only=True); \
         s.save_file(sd.get('state_dict', sd), 'OUT.safetensors')\") and pass that file",
        path.display()
    )]
    Pickle { path: PathBuf },
    #[error("{}: not a safetensors file: {reason}", path.display())]
    NotSafetensors { path: PathBuf, reason: String },
    #[error(
        "{}: no Stable Diffusion VAE (AutoencoderKL) or TAESD (AutoencoderTiny) in this file (unknown layout; first keys: {keys})",
        path.display()
    )]
    NoVae { path: PathBuf, keys: String },
    #[error("{}: tensor {tensor} has dtype {dtype}; only f32, f16, bf16 and f64 weights are supported", path.display())]
    Dtype { path: PathBuf, tensor: String, dtype: String },
    #[error("{}: cannot read the architecture: tensor {tensor} is missing", path.display())]
    Architecture { path: PathBuf, tensor: String },
    #[error("{}: {reason}", path.display())]
    Config { path: PathBuf, reason: String },
    #[error("{}: tensors do not fit an {class}: {}", path.display(), describe(mismatch))]
    Mismatch { path: PathBuf, class: &'static str, mismatch: Mismatch },
    #[error(
        "{}: holds only the {have} of a TAESD, and {needs} needs its {missing}: pass the {missing} file \
         (madebyollin's *_{missing}.safetensors), or a folder holding both halves",
        path.display()
    )]
    MissingHalf { path: PathBuf, have: &'static str, missing: &'static str, needs: &'static str },
    #[error("{}: --revision is for Hub repos (org/name), not for local files and folders", path.display())]
    RevisionOfLocal { path: PathBuf },
    #[error(transparent)]
    Hub(#[from] HubError),
}

/// A weights file, plus the diffusers `config.json` beside it when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightsSource {
    pub file: PathBuf,
    pub config_json: Option<PathBuf>,
    /// The other half of a TAESD kept in two files (`file` is the
    /// `*_encoder.safetensors`, this its `*_decoder.safetensors`).
    pub companion: Option<PathBuf>,
}

impl WeightsSource {
    /// A `.safetensors` file or a diffusers folder.
    pub fn from_path(path: &Path) -> Result<Self, WeightsError> {
        if path.is_dir() {
            let file = DIFFUSERS_FILES.iter().map(|f| path.join(f)).find(|f| f.is_file());
            if let Some(file) = file {
                return Ok(Self::from_file(file));
            }
            if let Some((encoder, decoder)) = tiny::split_pair(&safetensors_in(path)?) {
                return Ok(Self { file: encoder, config_json: None, companion: Some(decoder) });
            }
            let file = single_safetensors(path)?
                .ok_or_else(|| WeightsError::NotFound { searched: path.display().to_string() })?;
            return Ok(Self::from_file(file));
        }
        if !path.exists() {
            let cause = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory");
            return Err(WeightsError::Io { path: path.to_owned(), cause });
        }
        Ok(Self::from_file(path.to_owned()))
    }

    /// A `config.json` is taken from beside a diffusers-named weights file only,
    /// so a loose `vae-ft-mse-840000-ema-pruned.safetensors` never picks up an
    /// unrelated config that happens to share its folder.
    fn from_file(file: PathBuf) -> Self {
        let is_diffusers =
            file.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("diffusion_pytorch_model"));
        let config_json = file.parent().map(|d| d.join("config.json")).filter(|c| is_diffusers && c.is_file());
        Self { file, config_json, companion: None }
    }
}

/// `--weights`, else `$VAE_WEIGHTS`, else `./weights/`. The first two may
/// name a Hub repo (`org/name[/subfolder]`, at `revision`), taken from the
/// Hugging Face cache or downloaded into it by `hub`.
pub fn resolve(explicit: Option<&Path>, revision: Option<&str>, hub: &Hub) -> Result<WeightsSource, WeightsError> {
    if let Some(spec) = explicit {
        return from_spec(spec, revision, hub);
    }
    if let Some(spec) = std::env::var_os(WEIGHTS_ENV).filter(|p| !p.is_empty()) {
        return from_spec(Path::new(&spec), revision, hub);
    }
    if revision.is_some() {
        return Err(WeightsError::RevisionOfLocal { path: PathBuf::from(WEIGHTS_DIR) });
    }
    let dir = Path::new(WEIGHTS_DIR);
    let not_found = || WeightsError::NotFound { searched: format!("./{WEIGHTS_DIR}/") };
    if !dir.is_dir() {
        return Err(not_found());
    }
    // ./weights/ holds one file, or one diffusers folder per model.
    let mut candidates: Vec<PathBuf> = safetensors_in(dir)?;
    for entry in read_dir(dir)? {
        if let Some(file) = DIFFUSERS_FILES.iter().map(|f| entry.join(f)).find(|f| f.is_file()) {
            candidates.push(file);
        }
    }
    match candidates.len() {
        0 => Err(not_found()),
        1 => Ok(WeightsSource::from_file(candidates.remove(0))),
        _ => Err(WeightsError::Ambiguous {
            dir: dir.to_owned(),
            candidates: candidates.iter().map(|c| c.display().to_string()).collect(),
        }),
    }
}

/// A local file or folder when one exists; else a Hub repo id when `spec`
/// can be one; else the local path's error.
fn from_spec(spec: &Path, revision: Option<&str>, hub: &Hub) -> Result<WeightsSource, WeightsError> {
    let repo = spec.to_str().filter(|_| !spec.exists()).and_then(|s| HubRepo::parse(s, revision));
    match repo {
        Some(repo) => WeightsSource::from_path(&hub.resolve(&repo)?),
        None if revision.is_some() => Err(WeightsError::RevisionOfLocal { path: spec.to_owned() }),
        None => WeightsSource::from_path(spec),
    }
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, WeightsError> {
    let io = |cause| WeightsError::Io { path: dir.to_owned(), cause };
    let mut entries: Vec<PathBuf> = fs::read_dir(dir).map_err(io)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    Ok(entries)
}

fn safetensors_in(dir: &Path) -> Result<Vec<PathBuf>, WeightsError> {
    Ok(read_dir(dir)?
        .into_iter()
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "safetensors"))
        .collect())
}

fn single_safetensors(dir: &Path) -> Result<Option<PathBuf>, WeightsError> {
    let mut files = safetensors_in(dir)?;
    match files.len() {
        0 => Ok(None),
        1 => Ok(files.pop()),
        _ => Err(WeightsError::Ambiguous {
            dir: dir.to_owned(),
            candidates: files.iter().map(|c| c.display().to_string()).collect(),
        }),
    }
}

/// What was loaded, for reports and latent metadata.
#[derive(Debug, Clone)]
pub struct WeightsInfo {
    pub path: PathBuf,
    pub layout: Layout,
    pub prefix: Option<&'static str>,
    /// The dtypes of the VAE tensors in the file, e.g. `f16`.
    pub dtype: String,
    /// SHA-256 of the weights file.
    pub sha256: file::FileHash,
    /// Tensors of the file that are not part of the VAE (other checkpoint parts).
    pub ignored: usize,
    /// Parameters of the VAE (elements of its tensors).
    pub parameters: u64,
    /// What the weights say of their latent space.
    pub latent: WeightsLatent,
    /// What a user may want to know about how the weights were read.
    pub notes: Vec<String>,
}

/// Which halves of the model a run needs. The other half is checked like the
/// rest of the file but not read into memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parts {
    Both,
    Encoder,
    Decoder,
    /// Nothing: every tensor is checked (name, shape, dtype), none is read.
    Neither,
}

impl Parts {
    fn unused_prefixes(self) -> &'static [&'static str] {
        match self {
            Parts::Both => &[],
            Parts::Encoder => &["decoder.", "post_quant_conv."],
            Parts::Decoder => &["encoder.", "quant_conv."],
            Parts::Neither => &[""],
        }
    }

    pub fn encoder(self) -> bool {
        matches!(self, Parts::Both | Parts::Encoder)
    }

    pub fn decoder(self) -> bool {
        matches!(self, Parts::Both | Parts::Decoder)
    }
}

/// Loads the VAE of `source` (the halves in `parts`) onto `device`, its
/// parameters cast to `dtype` (f32; f16 or bf16 on a GPU). What the weights
/// say of their latent space is in [`WeightsInfo::latent`]:
/// [`crate::latent_space::LatentSpace::resolve`] settles it.
pub fn load(
    source: &WeightsSource,
    device: &Device,
    dtype: FloatDType,
    parts: Parts,
) -> Result<(Model, WeightsInfo), WeightsError> {
    let json = source.config_json.as_deref().map(ConfigJson::read).transpose()?;
    let file = TensorFile::open(&source.file)?;
    if let Some(companion) = &source.companion {
        return tiny::load_pair(&file, &TensorFile::open(companion)?, (device, dtype), parts);
    }
    let (keys, architecture) = read_architecture(&file.tensors, &source.file, json.as_ref())?;
    let config = match architecture {
        Architecture::Tiny(config) => return tiny::load(&file, &keys, config, (device, dtype), parts),
        Architecture::Wan(config) => return load_wan(&file, &keys, &config, json.as_ref(), (device, dtype), parts),
        Architecture::WanResidual(config) => {
            return load_wan_residual(&file, &keys, &config, json.as_ref(), (device, dtype), parts);
        }
        Architecture::Kl(config) => config,
    };
    let mut loader = ParamLoader::new(&file, &keys.names, device).casting_to(dtype).skipping(parts.unused_prefixes());
    let model = AutoencoderKl::load(&mut loader, &config);
    let bn = batch_norm(&mut loader, &config, json.as_ref());
    loader.finish()?;
    // Only an AutoencoderKL's config.json says how its latents are scaled.
    let (scaling, shift) = (config.scaling_factor, config.shift_factor);
    let scaling = match source.config_json {
        Some(_) => WeightsScaling::Config { scaling, shift },
        None => WeightsScaling::Default { scaling, shift },
    };
    let latent = match bn {
        Some(stats) => WeightsLatent { scaling, family: Some(Family::Flux2), channel_stats: Some(stats) },
        None => WeightsLatent::scaling(scaling),
    };
    Ok((Model::Kl(Box::new(model)), WeightsInfo::of(&file, &keys, None, latent)))
}

/// FLUX.2's batch-norm statistics (`bn.running_mean`, `bn.running_var`, no
/// affine), as the per-channel statistics of its 2x2-patched latent:
/// `std = sqrt(var + eps)`, eps from `config.json` (`batch_norm_eps`, 1e-4).
fn batch_norm(
    loader: &mut ParamLoader,
    config: &AutoencoderKlConfig,
    json: Option<&ConfigJson>,
) -> Option<ChannelStats> {
    if !loader.has("bn.running_mean") && !loader.has("bn.running_var") {
        return None;
    }
    let json = json.and_then(|j| j.kl().ok()).unwrap_or_default();
    let patch = json.patch_size.as_ref().and_then(infer::PatchSize::side).unwrap_or(2);
    let eps = json.batch_norm_eps.unwrap_or(1e-4);
    let channels = config.latent_channels * patch * patch;
    let mean = loader.statistics("bn.running_mean", channels)?;
    let var = loader.statistics("bn.running_var", channels)?;
    if loader.has("bn.num_batches_tracked") {
        loader.unused("bn.num_batches_tracked", &[]);
    }
    let std = var.iter().map(|&v| (f64::from(v) + eps).sqrt()).collect();
    Some(ChannelStats { mean: mean.iter().map(|&v| f64::from(v)).collect(), std, patch })
}

/// Builds a Wan 2.1 / Qwen-Image VAE; its latent statistics are those of its
/// `config.json`, else Wan 2.1's.
fn load_wan(
    file: &TensorFile,
    keys: &VaeKeys,
    config: &WanConfig,
    json: Option<&ConfigJson>,
    (device, dtype): (&Device, FloatDType),
    parts: Parts,
) -> Result<(Model, WeightsInfo), WeightsError> {
    let mut loader = ParamLoader::new(file, &keys.names, device)
        .casting_to(dtype)
        .skipping(parts.unused_prefixes())
        .building("AutoencoderKLWan");
    let model = AutoencoderWan::load(&mut loader, config);
    loader.finish()?;
    let json = json.map(ConfigJson::kl).transpose()?.unwrap_or_default();
    let channel_stats = match (json.latents_mean, json.latents_std) {
        (Some(mean), Some(std)) => Some(ChannelStats { mean, std, patch: 1 }),
        _ => None,
    };
    let latent = WeightsLatent {
        scaling: WeightsScaling::Default { scaling: 1.0, shift: 0.0 },
        family: (config.z_dim == Family::Wan21.latent_channels()).then_some(Family::Wan21),
        channel_stats,
    };
    Ok((Model::Wan(Box::new(model)), WeightsInfo::of(file, keys, None, latent)))
}

/// Builds a Wan 2.2 / Qwen-Image 2.1 VAE; its latent statistics are those
/// of its `config.json`, else its family's (by its latent channels: 48, Wan
/// 2.2; 64, Qwen-Image 2.1).
fn load_wan_residual(
    file: &TensorFile,
    keys: &VaeKeys,
    config: &WanResidualConfig,
    json: Option<&ConfigJson>,
    (device, dtype): (&Device, FloatDType),
    parts: Parts,
) -> Result<(Model, WeightsInfo), WeightsError> {
    let class = if config.conv3d { "AutoencoderKLWan" } else { "AutoencoderKLQwenImage21" };
    let mut loader =
        ParamLoader::new(file, &keys.names, device).casting_to(dtype).skipping(parts.unused_prefixes()).building(class);
    let model = AutoencoderWanResidual::load(&mut loader, config);
    loader.finish()?;
    let json = json.map(ConfigJson::kl).transpose()?.unwrap_or_default();
    let channel_stats = match (json.latents_mean, json.latents_std) {
        (Some(mean), Some(std)) => Some(ChannelStats { mean, std, patch: 1 }),
        _ => None,
    };
    let family = [Family::Wan22, Family::QwenImage21].into_iter().find(|f| f.latent_channels() == config.z_dim);
    let latent = WeightsLatent { scaling: WeightsScaling::Default { scaling: 1.0, shift: 0.0 }, family, channel_stats };
    let mut info = WeightsInfo::of(file, keys, None, latent);
    if config.image_channels() == 4 {
        info.notes.push(
            "the VAE reads and writes RGBA: images are encoded with an opaque alpha, and the decoded alpha is not written"
                .to_owned(),
        );
    }
    Ok((Model::WanResidual(Box::new(model)), info))
}

impl WeightsInfo {
    /// The report on the VAE tensors `keys` of `file`, plus those of `other`
    /// for a TAESD whose halves are in two files (`file` being the one whose
    /// hash latents record).
    fn of(file: &TensorFile, keys: &VaeKeys, other: Option<(&TensorFile, &VaeKeys)>, latent: WeightsLatent) -> Self {
        let tensors: Vec<&file::RawTensor> = std::iter::once((file, keys))
            .chain(other)
            .flat_map(|(f, k)| k.names.values().map(move |key| &f.tensors[key]))
            .collect();
        let mut dtypes: Vec<String> = tensors.iter().map(|t| format!("{:?}", t.dtype).to_lowercase()).collect();
        dtypes.sort();
        dtypes.dedup();
        Self {
            path: file.path.clone(),
            layout: keys.layout,
            prefix: keys.prefix,
            dtype: dtypes.join("+"),
            sha256: file.hash.clone(),
            ignored: keys.ignored + other.map_or(0, |(_, k)| k.ignored),
            parameters: tensors.iter().map(|t| t.shape.iter().product::<usize>() as u64).sum(),
            latent,
            notes: Vec::new(),
        }
    }
}

/// What a weights file holds, read off its key set and tensor shapes.
#[derive(Debug, Clone, PartialEq)]
pub enum Architecture {
    Kl(AutoencoderKlConfig),
    Tiny(AutoencoderTinyConfig),
    Wan(WanConfig),
    /// Wan 2.2 / Qwen-Image 2.1: residual down and up blocks.
    WanResidual(WanResidualConfig),
}

/// Finds the VAE among `tensors` and reads its architecture off their shapes
/// (or `config.json`, for TAESD), without building anything: what `load`
/// checks before allocating a byte.
pub fn read_architecture(
    tensors: &BTreeMap<String, file::RawTensor>,
    path: &Path,
    json: Option<&ConfigJson>,
) -> Result<(VaeKeys, Architecture), WeightsError> {
    let config_error = |reason: String| WeightsError::Config { path: path.to_owned(), reason };
    let keys = tensors.keys().map(String::as_str);
    if let Some(keys) = detect(keys.clone())
        .filter(|k| matches!(k.layout, Layout::WanDiffusers | Layout::WanOriginal | Layout::Wan22Original))
    {
        let json = json.map(ConfigJson::kl).transpose()?;
        let shape_of = |name: &str| keys.names.get(name).map(|key| tensors[key].shape.as_slice());
        let residual = shape_of("encoder.down_blocks.0.resnets.0.conv1.weight").is_some();
        let said_residual = json.as_ref().and_then(|j| j.is_residual);
        if said_residual == Some(true) && !residual {
            return Err(config_error(
                "config.json says is_residual (Wan 2.2), but the weights have Wan 2.1's blocks".to_owned(),
            ));
        }
        if residual {
            let patch = json.as_ref().and_then(|j| j.patch_size.as_ref()).and_then(PatchSize::side);
            let config = infer_wan_residual_config(shape_of, patch).map_err(config_error)?;
            config.check().map_err(config_error)?;
            return Ok((keys, Architecture::WanResidual(config)));
        }
        let config = infer_wan_config(shape_of).map_err(config_error)?;
        config.check().map_err(config_error)?;
        return Ok((keys, Architecture::Wan(config)));
    }
    if let Some(keys) = detect(keys.clone()) {
        let json = match json {
            Some(json) => json.kl()?,
            None => DiffusersConfig::default(),
        };
        let shape_of = |name: &str| keys.names.get(name).map(|key| tensors[key].shape.as_slice());
        let config = infer_config(shape_of, &json, SD15_SCALING_FACTOR)
            .map_err(|tensor| WeightsError::Architecture { path: path.to_owned(), tensor })?;
        check_config(&config).map_err(config_error)?;
        return Ok((keys, Architecture::Kl(config)));
    }
    if let Some(keys) = tiny::detect(keys) {
        let shape_of = |name: &str| keys.names.get(name).map(|key| tensors[key].shape.as_slice());
        let config = match json {
            Some(json) => json.tiny()?.to_config().map_err(config_error)?,
            None => tiny::infer_config(shape_of)
                .map_err(|tensor| WeightsError::Architecture { path: path.to_owned(), tensor })?,
        };
        config.check().map_err(config_error)?;
        return Ok((keys, Architecture::Tiny(config)));
    }
    Err(WeightsError::NoVae {
        path: path.to_owned(),
        keys: tensors.keys().take(5).cloned().collect::<Vec<_>>().join(", "),
    })
}

/// [`read_architecture`] of safetensors bytes (for inspection and fuzzing).
pub fn inspect_bytes(bytes: &[u8], path: &Path) -> Result<(VaeKeys, Architecture), WeightsError> {
    let tensors = file::list_tensors(bytes, path)?;
    read_architecture(&tensors, path, None)
}

/// diffusers classes whose `config.json` reads as [`DiffusersConfig`].
const KL_CLASSES: [&str; 5] =
    ["AutoencoderKL", "AutoencoderKLFlux2", "AutoencoderKLWan", "AutoencoderKLQwenImage", "AutoencoderKLQwenImage21"];

/// A diffusers `config.json`, read once and taken as the model the weights
/// turn out to hold.
#[derive(Debug, Clone)]
pub struct ConfigJson {
    path: PathBuf,
    class_name: Option<String>,
    value: serde_json::Value,
}

impl ConfigJson {
    pub fn read(path: &Path) -> Result<Self, WeightsError> {
        let error = |reason: String| WeightsError::Config { path: path.to_owned(), reason };
        let io = |cause| WeightsError::Io { path: path.to_owned(), cause };
        crate::output::check_input(path).map_err(io)?;
        let text = fs::read_to_string(path).map_err(io)?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| error(format!("invalid config.json: {e}")))?;
        let class_name = match value.get("_class_name") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(name)) => Some(name.clone()),
            Some(other) => return Err(error(format!("invalid config.json: _class_name is {other}"))),
        };
        match class_name.as_deref() {
            None | Some("AutoencoderTiny") => Ok(Self { path: path.to_owned(), class_name, value }),
            Some(class) if KL_CLASSES.contains(&class) => Ok(Self { path: path.to_owned(), class_name, value }),
            Some(other) => Err(error(format!(
                "describes a {other}, not one of the VAEs vae runs ({}, AutoencoderTiny)",
                KL_CLASSES.join(", ")
            ))),
        }
    }

    /// As the config of an `AutoencoderKL` (or FLUX.2's, Wan's, Qwen-Image's).
    fn kl(&self) -> Result<DiffusersConfig, WeightsError> {
        self.expect("AutoencoderKL", "AutoencoderTiny")?;
        self.parse()
    }

    /// As the config of an `AutoencoderTiny`.
    fn tiny(&self) -> Result<tiny::TinyConfigJson, WeightsError> {
        self.expect("AutoencoderTiny", "AutoencoderKL")?;
        self.parse()
    }

    fn expect(&self, weights: &str, other: &str) -> Result<(), WeightsError> {
        match self.class_name.as_deref() {
            Some(class) if class == other => Err(WeightsError::Config {
                path: self.path.clone(),
                reason: format!("describes an {other}, but the weights beside it hold an {weights}"),
            }),
            _ => Ok(()),
        }
    }

    fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, WeightsError> {
        T::deserialize(&self.value)
            .map_err(|e| WeightsError::Config { path: self.path.clone(), reason: format!("invalid config.json: {e}") })
    }
}

/// Rejects configurations the model cannot be built with (the shapes come
/// from the file, so they can be anything).
fn check_config(c: &AutoencoderKlConfig) -> Result<(), String> {
    if c.norm_num_groups == 0 {
        return Err("norm_num_groups is 0".to_owned());
    }
    if let Some(bad) = c.block_out_channels.iter().find(|&&ch| ch == 0 || ch % c.norm_num_groups != 0) {
        return Err(format!("block width {bad} is not a multiple of the {} norm groups", c.norm_num_groups));
    }
    if c.layers_per_block == 0 || c.latent_channels == 0 || c.in_channels == 0 || c.out_channels == 0 {
        return Err(format!("degenerate architecture {c:?}"));
    }
    if !c.scaling_factor.is_finite() || c.scaling_factor == 0.0 || !c.shift_factor.is_finite() {
        return Err(format!("unusable scaling factor {} / shift {}", c.scaling_factor, c.shift_factor));
    }
    Ok(())
}

/// One line listing what did not fit, eight names per kind at most.
fn describe(m: &Mismatch) -> String {
    fn list(out: &mut String, what: &str, items: &[String]) {
        if items.is_empty() {
            return;
        }
        let shown = items.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
        let more = items.len().saturating_sub(8);
        let _ = write!(out, "{}{what} {}: {shown}", if out.is_empty() { "" } else { "; " }, items.len());
        if more > 0 {
            let _ = write!(out, " and {more} more");
        }
    }
    let mut out = String::new();
    list(&mut out, "missing", &m.missing);
    let shapes: Vec<String> =
        m.misshaped.iter().map(|(n, want, got)| format!("{n} (expected {want:?}, file has {got:?})")).collect();
    list(&mut out, "mis-shaped", &shapes);
    list(&mut out, "unexpected", &m.unexpected);
    out
}
