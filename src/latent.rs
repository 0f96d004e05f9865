//! Latent files, in three formats chosen by extension:
//!
//! - `.safetensors` (ours): `latent` `[1, C, h, w]` f32, scaled as SD pipelines
//!   consume them, with metadata saying how they were made. Any safetensors file
//!   with one float tensor is read as a scaled latent.
//! - `.latent` (ComfyUI's SaveLatent / LoadLatent): `latent_tensor`, unscaled,
//!   with an empty `latent_format_version_0` tensor as the marker. Files
//!   without the marker are ComfyUI's legacy ones, scaled by 0.18215; both are
//!   read as ComfyUI's LoadLatent reads them.
//! - `.npy` (NumPy): one scaled `[C, h, w]` or `[1, C, h, w]` float array.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use npyz::WriterBuilder;
use safetensors::{Dtype, SafeTensors};

use crate::latent_space::{ChannelStats, LatentSpace};
use crate::model::Family;
use crate::output::{self, OutputError, Overwrite};

/// Name of the tensor in files written by `vae encode`.
pub const LATENT_TENSOR: &str = "latent";
/// ComfyUI's tensor name, and the empty tensor that marks unscaled files.
pub const COMFY_TENSOR: &str = "latent_tensor";
pub const COMFY_MARKER: &str = "latent_format_version_0";
/// What ComfyUI's legacy `.latent` files (without the marker) were scaled by.
const COMFY_LEGACY_SCALING: f64 = 0.18215;
const NPY_MAGIC: &[u8] = b"\x93NUMPY";

/// A latent file format, chosen by the file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatentFormat {
    Safetensors,
    Comfy,
    Npy,
}

impl LatentFormat {
    /// Extensions of latent files, for finding them in folders.
    pub const EXTENSIONS: [&str; 3] = ["safetensors", "latent", "npy"];

    /// `.latent` is ComfyUI's, `.npy` NumPy's, anything else ours.
    pub fn of(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("latent") => LatentFormat::Comfy,
            Some("npy") => LatentFormat::Npy,
            _ => LatentFormat::Safetensors,
        }
    }
}
/// Value of the `format` metadata key.
pub const FORMAT: &str = "vae-latent";
/// The newest version of the format: 2 for latents normalised per channel
/// (`latents_mean`, `latents_std`, `patch_size`), which a version-1 reader
/// would take for scaled ones; files without them are still written as 1.
pub const FORMAT_VERSION: &str = "2";

#[derive(Debug, thiserror::Error)]
pub enum LatentError {
    // `cause`, not `source`: the message already says it, and a source would
    // make `{:#}` print it twice.
    #[error("{}: cannot read: {cause}", path.display())]
    Io { path: PathBuf, cause: std::io::Error },
    #[error("{}: not a safetensors latent file: {reason}", path.display())]
    Format { path: PathBuf, reason: String },
    #[error("{}: not a NumPy .npy latent: {reason}", path.display())]
    Npy { path: PathBuf, reason: String },
    #[error("{}: holds no tensor", path.display())]
    NoTensor { path: PathBuf },
    #[error("{}: several tensors and none named `latent`: {}", path.display(), names.join(", "))]
    Ambiguous { path: PathBuf, names: Vec<String> },
    #[error("{}: tensor `{name}` has shape {shape:?}; a latent is [C, h, w], [1, C, h, w] or one frame [1, C, 1, h, w], with no empty dimension", path.display())]
    Shape { path: PathBuf, name: String, shape: Vec<u64> },
    #[error("{}: tensor `{name}` declares shape {shape:?}, whose number of values overflows 64 bits", path.display())]
    Overflow { path: PathBuf, name: String, shape: Vec<u64> },
    #[error("{}: tensor `{name}` declares shape {shape:?}, {expected} bytes of data, but the file holds {found}", path.display())]
    Size { path: PathBuf, name: String, shape: Vec<u64>, expected: u64, found: usize },
    #[error("{}: tensor `{name}` has dtype {dtype}; a latent is f32, f16, bf16 or f64", path.display())]
    Dtype { path: PathBuf, name: String, dtype: String },
    #[error("{}: tensor `{name}` contains {count} NaN or infinite values", path.display())]
    NotFinite { path: PathBuf, name: String, count: usize },
    #[error("{}: written by a newer vae (latent format version {found}; this vae reads up to {FORMAT_VERSION}): upgrade vae to read it", path.display())]
    NewerVersion { path: PathBuf, found: String },
    #[error("{}: metadata `{key}` = {value:?} is not valid", path.display())]
    Metadata { path: PathBuf, key: String, value: String },
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// Whether the latent is the posterior mean or a draw from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Posterior {
    Mean,
    Sample { seed: u64 },
}

/// What the metadata of a latent file records; every field is optional when
/// reading a file that another tool wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatentMeta {
    pub scaling_factor: Option<f64>,
    pub shift_factor: Option<f64>,
    pub posterior: Option<Posterior>,
    /// Size of the encoded image before padding to a multiple of 8.
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub weights: Option<String>,
    pub weights_sha256: Option<String>,
    pub tool_version: Option<String>,
    /// The model family whose latent space this is (`family`: `sd1`,
    /// `sdxl`, `sd3`, `flux`, ...; a name this version does not know reads
    /// as none).
    pub family: Option<Family>,
    /// Per-channel normalisation (`latents_mean`, `latents_std` as JSON
    /// arrays, `patch_size`): the file holds `(z - mean) / std` per channel,
    /// of the latent patched `patch_size` x `patch_size` first.
    pub channel_stats: Option<ChannelStats>,
}

impl LatentMeta {
    /// How the file says it is stored, when it says: its statistics or
    /// scale (with its family's for what it leaves out), else its family's.
    pub fn latent_space(&self) -> Option<LatentSpace> {
        let family = self.family.map(LatentSpace::of_family);
        if self.channel_stats.is_none() && self.scaling_factor.is_none() {
            return family;
        }
        let (scaling, shift) = family.as_ref().map_or((1.0, 0.0), |f| (f.scaling_factor, f.shift_factor));
        Some(LatentSpace {
            family: self.family,
            scaling_factor: self.scaling_factor.unwrap_or(scaling),
            shift_factor: self.shift_factor.unwrap_or(shift),
            channel_stats: self.channel_stats.clone(),
        })
    }
}

/// A latent `[C, h, w]` (batch of one), as stored: scaled.
#[derive(Debug, Clone, PartialEq)]
pub struct Latent {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
    pub meta: LatentMeta,
}

impl Latent {
    /// Writes the latent in the format of `path`'s extension ([`LatentFormat`]).
    pub fn write(&self, path: &Path, overwrite: Overwrite) -> Result<(), LatentError> {
        let bytes = self
            .to_bytes(LatentFormat::of(path))
            .map_err(|reason| LatentError::Format { path: path.to_owned(), reason })?;
        output::write_atomic(path, overwrite, |out| out.write_all(&bytes))?;
        Ok(())
    }

    /// The file's bytes in `format` (what [`Latent::write`] writes).
    pub fn to_bytes(&self, format: LatentFormat) -> Result<Vec<u8>, String> {
        match format {
            LatentFormat::Safetensors => self.to_safetensors(LATENT_TENSOR, &self.data, &self.meta),
            LatentFormat::Comfy => self.to_comfy(),
            LatentFormat::Npy => self.to_npy(),
        }
    }

    fn to_safetensors(&self, name: &str, values: &[f32], meta: &LatentMeta) -> Result<Vec<u8>, String> {
        check_finite(values)?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let shape = vec![1, self.channels, self.height, self.width];
        let view = safetensors::tensor::TensorView::new(Dtype::F32, shape, &bytes).map_err(|e| e.to_string())?;
        let mut tensors = vec![(name, view)];
        if name == COMFY_TENSOR {
            let marker = safetensors::tensor::TensorView::new(Dtype::F32, vec![0], &[]).map_err(|e| e.to_string())?;
            tensors.push((COMFY_MARKER, marker));
        }
        let file = safetensors::serialize(tensors, Some(meta.to_map())).map_err(|e| e.to_string())?;
        sorted_metadata(file)
    }

    /// ComfyUI stores the unscaled latent, `z / scaling + shift` (per
    /// channel and unpatched where the file is normalised so).
    fn to_comfy(&self) -> Result<Vec<u8>, String> {
        let space = self.meta.latent_space().unwrap_or_else(|| LatentSpace::raw(None));
        let shape = (self.channels, self.height, self.width);
        let raw = space.from_stored(&self.data, shape);
        let (channels, height, width) = space.vae_shape(shape);
        let meta = LatentMeta { scaling_factor: None, shift_factor: None, channel_stats: None, ..self.meta.clone() };
        let unpatched = Latent { channels, height, width, data: Vec::new(), meta: meta.clone() };
        unpatched.to_safetensors(COMFY_TENSOR, &raw, &meta)
    }

    fn to_npy(&self) -> Result<Vec<u8>, String> {
        check_finite(&self.data)?;
        let mut bytes = Vec::new();
        let shape = [1, self.channels as u64, self.height as u64, self.width as u64];
        let mut writer = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(&shape)
            .writer(&mut bytes)
            .begin_nd()
            .map_err(|e| e.to_string())?;
        writer.extend(self.data.iter().copied()).map_err(|e| e.to_string())?;
        writer.finish().map_err(|e| e.to_string())?;
        Ok(bytes)
    }

    pub fn read(path: &Path) -> Result<Self, LatentError> {
        let io = |cause| LatentError::Io { path: path.to_owned(), cause };
        output::check_input(path).map_err(io)?;
        let bytes = std::fs::read(path).map_err(io)?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses a latent file's bytes (any of the formats, told apart by
    /// content); `path` only names the file in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, LatentError> {
        if bytes.starts_with(NPY_MAGIC) {
            return Self::from_npy(bytes, path);
        }
        let err_path = || path.to_owned();
        let format = |e| LatentError::Format { path: err_path(), reason: crate::safetensors_io::describe(&e, bytes) };
        let st = SafeTensors::deserialize(bytes).map_err(format)?;
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(format)?;
        let mut names: Vec<String> = st.names().into_iter().map(str::to_owned).collect();
        names.sort();
        let comfy = names.iter().any(|n| n == COMFY_TENSOR);
        let name = match names.as_slice() {
            [] => return Err(LatentError::NoTensor { path: err_path() }),
            _ if comfy => COMFY_TENSOR.to_owned(),
            [only] => only.clone(),
            _ if names.iter().any(|n| n == LATENT_TENSOR) => LATENT_TENSOR.to_owned(),
            _ => return Err(LatentError::Ambiguous { path: err_path(), names }),
        };
        let view = st.tensor(&name).map_err(|e| LatentError::Format { path: err_path(), reason: format!("{e:?}") })?;
        let shape: Vec<u64> = view.shape().iter().map(|&d| d as u64).collect();
        let [channels, height, width] = latent_dims(&shape, &name, path)?;
        let data = crate::safetensors_io::floats(view.data(), view.dtype()).ok_or_else(|| LatentError::Dtype {
            path: err_path(),
            name: name.clone(),
            dtype: format!("{:?}", view.dtype()),
        })?;
        let mut meta = LatentMeta::from_map(header.metadata().as_ref(), path)?;
        if comfy {
            // As ComfyUI's LoadLatent: unscaled with the marker, else legacy-scaled.
            let marked = names.iter().any(|n| n == COMFY_MARKER);
            meta.scaling_factor = Some(if marked { 1.0 } else { COMFY_LEGACY_SCALING });
            meta.shift_factor = Some(0.0);
        }
        Self::checked(channels, height, width, data, meta, &name, path)
    }

    fn from_npy(bytes: &[u8], path: &Path) -> Result<Self, LatentError> {
        let npy_err = |reason: String| LatentError::Npy { path: path.to_owned(), reason };
        // The shape is checked before npyz sees the header: npyz multiplies
        // the dimensions unchecked (a panic, or a wrapped count).
        let (shape, data_start) = npy_shape(bytes).map_err(npy_err)?;
        let [channels, height, width] = latent_dims(&shape, "the array", path)?;
        let file = npyz::NpyFile::new(bytes).map_err(|e| npy_err(e.to_string()))?;
        if file.shape() != shape.as_slice() {
            return Err(npy_err("the header is ambiguous about its shape".to_owned()));
        }
        if file.order() == npyz::Order::Fortran {
            return Err(npy_err("Fortran-ordered arrays are not supported; save it C-ordered".to_owned()));
        }
        let dtype = file.dtype().descr();
        let item_size = match dtype.trim_matches('\'').get(1..) {
            Some("f4") => 4,
            Some("f8") => 8,
            Some("f2") => 2,
            _ => return Err(LatentError::Dtype { path: path.to_owned(), name: "the array".to_owned(), dtype }),
        };
        let found = bytes.len() - data_start;
        let Some(expected) = ((channels * height * width) as u64).checked_mul(item_size) else {
            return Err(LatentError::Overflow { path: path.to_owned(), name: "the array".to_owned(), shape });
        };
        if expected != found as u64 {
            return Err(LatentError::Size {
                path: path.to_owned(),
                name: "the array".to_owned(),
                shape,
                expected,
                found,
            });
        }
        let read = match item_size {
            4 => file.into_vec::<f32>(),
            8 => file.into_vec::<f64>().map(|v| v.into_iter().map(|x| x as f32).collect()),
            _ => file.into_vec::<half::f16>().map(|v| v.into_iter().map(f32::from).collect()),
        };
        let data = read.map_err(|e| npy_err(e.to_string()))?;
        Self::checked(channels, height, width, data, LatentMeta::default(), "the array", path)
    }

    /// Refuses values that are not finite.
    fn checked(
        channels: usize,
        height: usize,
        width: usize,
        data: Vec<f32>,
        meta: LatentMeta,
        name: &str,
        path: &Path,
    ) -> Result<Self, LatentError> {
        if channels.checked_mul(height).and_then(|n| n.checked_mul(width)) != Some(data.len()) {
            let shape = vec![channels as u64, height as u64, width as u64];
            let expected = [channels, height, width].iter().fold(4u64, |n, &d| n.saturating_mul(d as u64));
            let (path, name, found) = (path.to_owned(), name.to_owned(), 4 * data.len());
            return Err(LatentError::Size { path, name, shape, expected, found });
        }
        let count = data.iter().filter(|v| !v.is_finite()).count();
        if count > 0 {
            return Err(LatentError::NotFinite { path: path.to_owned(), name: name.to_owned(), count });
        }
        Ok(Self { channels, height, width, data, meta })
    }
}

/// `[C, h, w]` of a latent of `shape` (`[C, h, w]` or `[1, C, h, w]`, no
/// dimension empty, `C * h * w` within usize).
fn latent_dims(shape: &[u64], name: &str, path: &Path) -> Result<[usize; 3], LatentError> {
    let dims = match *shape {
        // One frame of a video VAE's latent (Wan, Qwen-Image), `[1, C, 1, h, w]`, is an image's.
        [c, h, w] | [1, c, h, w] | [1, c, 1, h, w] if c > 0 && h > 0 && w > 0 => [c, h, w],
        _ => return Err(LatentError::Shape { path: path.to_owned(), name: name.to_owned(), shape: shape.to_vec() }),
    };
    let total = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d)).and_then(|n| usize::try_from(n).ok());
    match (total, dims.map(usize::try_from)) {
        (Some(_), [Ok(c), Ok(h), Ok(w)]) => Ok([c, h, w]),
        _ => Err(LatentError::Overflow { path: path.to_owned(), name: name.to_owned(), shape: shape.to_vec() }),
    }
}

/// The shape an `.npy` header declares and where its data starts, read
/// without trusting it: every dimension a u64, the key found exactly once.
fn npy_shape(bytes: &[u8]) -> Result<(Vec<u64>, usize), String> {
    let truncated = || "the header is truncated".to_owned();
    let (len_at, width) = match bytes.get(NPY_MAGIC.len()) {
        Some(1) => (8, 2),
        Some(2 | 3) => (8, 4),
        Some(v) => return Err(format!("unknown format version {v}")),
        None => return Err(truncated()),
    };
    let len_bytes = bytes.get(len_at..len_at + width).ok_or_else(truncated)?;
    let header_len = len_bytes.iter().rev().fold(0usize, |n, &b| (n << 8) | usize::from(b));
    let data_start = len_at + width + header_len;
    let header = bytes.get(len_at + width..data_start).ok_or_else(truncated)?;
    let header = std::str::from_utf8(header).map_err(|_| "the header is not text".to_owned())?;
    // A latent's header is one flat dict (`{'descr': '<f4', 'fortran_order':
    // False, 'shape': (1, 4, 64, 64), }`); npyz's parser of Python literals
    // takes exponential time on nested brackets (found by fuzzing), so
    // anything else is refused before it sees it.
    if header.matches('{').count() != 1 || header.matches('}').count() != 1 || header.contains(['[', ']']) {
        return Err("the header is not one flat dict (a structured or nested dtype?)".to_owned());
    }
    let keys: Vec<usize> = header.match_indices("shape").map(|(i, _)| i).collect();
    let [at] = keys.as_slice() else {
        return Err("the header does not say its shape once".to_owned());
    };
    let rest = &header[at + "shape".len()..];
    let tuple = rest
        .trim_start_matches(['\'', '"'])
        .trim_start()
        .strip_prefix(':')
        .map(str::trim_start)
        .and_then(|r| r.strip_prefix('('))
        .and_then(|r| r.split_once(')'))
        .map(|(inside, _)| inside)
        .ok_or_else(|| "the header's shape is not a tuple".to_owned())?;
    let shape = tuple
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.trim_end_matches('L').parse::<u64>().map_err(|_| format!("shape dimension {d:?} is not a size")))
        .collect::<Result<Vec<u64>, String>>()?;
    Ok((shape, data_start))
}

/// Refuses NaN and infinite values in what is about to be written.
fn check_finite(values: &[f32]) -> Result<(), String> {
    match values.iter().filter(|v| !v.is_finite()).count() {
        0 => Ok(()),
        n => Err(format!("the latent holds {n} NaN or infinite values")),
    }
}

/// A safetensors file's bytes with its `__metadata__` keys in sorted order
/// (safetensors writes them in hash order), so that one input always gives
/// the same bytes.
fn sorted_metadata(file: Vec<u8>) -> Result<Vec<u8>, String> {
    let (n, _) = SafeTensors::read_metadata(&file).map_err(|e| e.to_string())?;
    let mut header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&file[8..8 + n]).map_err(|e| e.to_string())?;
    if let Some(serde_json::Value::Object(meta)) = header.get_mut("__metadata__") {
        meta.sort_keys();
    }
    let mut text = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + text.len() + file.len() - 8 - n);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    out.extend_from_slice(&file[8 + n..]);
    Ok(out)
}

pub use crate::latent_space::{check_scaling, check_shift};

/// `latents_mean`, `latents_std` and `patch_size` of a file's metadata: all
/// or none, and usable.
fn channel_stats(map: &HashMap<String, String>, path: &Path) -> Result<Option<ChannelStats>, LatentError> {
    let bad = |key: &str| LatentError::Metadata {
        path: path.to_owned(),
        key: key.to_owned(),
        value: map.get(key).cloned().unwrap_or_default(),
    };
    let list = |key: &str| -> Result<Option<Vec<f64>>, LatentError> {
        map.get(key).map(|v| serde_json::from_str::<Vec<f64>>(v).map_err(|_| bad(key))).transpose()
    };
    let (mean, std) = (list("latents_mean")?, list("latents_std")?);
    let patch = match map.get("patch_size") {
        Some(v) => Some(v.trim().parse::<usize>().map_err(|_| bad("patch_size"))?),
        None => None,
    };
    match (mean, std) {
        (None, None) if patch.is_none() => Ok(None),
        (Some(mean), Some(std)) => {
            let stats = ChannelStats { mean, std, patch: patch.unwrap_or(1) };
            stats.check().map_err(|_| bad("latents_std"))?;
            Ok(Some(stats))
        }
        (None, _) => Err(bad("latents_mean")),
        (Some(_), None) => Err(bad("latents_std")),
    }
}

impl LatentMeta {
    fn to_map(&self) -> HashMap<String, String> {
        let mut m = HashMap::new();
        m.insert("format".to_owned(), FORMAT.to_owned());
        let version = if self.channel_stats.is_some() { FORMAT_VERSION } else { "1" };
        m.insert("format_version".to_owned(), version.to_owned());
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                m.insert(k.to_owned(), v);
            }
        };
        put("scaling_factor", self.scaling_factor.map(|v| v.to_string()));
        put("shift_factor", self.shift_factor.map(|v| v.to_string()));
        put(
            "posterior",
            self.posterior.map(|p| match p {
                Posterior::Mean => "mean".to_owned(),
                Posterior::Sample { .. } => "sample".to_owned(),
            }),
        );
        put(
            "seed",
            match self.posterior {
                Some(Posterior::Sample { seed }) => Some(seed.to_string()),
                _ => None,
            },
        );
        put("width", self.width.map(|v| v.to_string()));
        put("height", self.height.map(|v| v.to_string()));
        put("weights", self.weights.clone());
        put("weights_sha256", self.weights_sha256.clone());
        put("vae_version", self.tool_version.clone());
        put("family", self.family.map(|f| f.name().to_owned()));
        if let Some(stats) = &self.channel_stats {
            let json = |v: &[f64]| serde_json::to_string(v).expect("finite f64s serialise");
            put("latents_mean", Some(json(&stats.mean)));
            put("latents_std", Some(json(&stats.std)));
            put("patch_size", Some(stats.patch.to_string()));
        }
        m
    }

    fn from_map(map: Option<&HashMap<String, String>>, path: &Path) -> Result<Self, LatentError> {
        let Some(map) = map else { return Ok(Self::default()) };
        fn parse<T: std::str::FromStr>(
            map: &HashMap<String, String>,
            key: &str,
            path: &Path,
        ) -> Result<Option<T>, LatentError> {
            map.get(key)
                .map(|v| {
                    v.trim().parse::<T>().map_err(|_| LatentError::Metadata {
                        path: path.to_owned(),
                        key: key.to_owned(),
                        value: v.clone(),
                    })
                })
                .transpose()
        }
        let finite = |key: &str| -> Result<Option<f64>, LatentError> {
            match parse::<f64>(map, key, path)? {
                Some(v)
                    if if key == "scaling_factor" { check_scaling(v).is_err() } else { check_shift(v).is_err() } =>
                {
                    Err(LatentError::Metadata { path: path.to_owned(), key: key.to_owned(), value: map[key].clone() })
                }
                other => Ok(other),
            }
        };
        // Our own files say which version of the format they are; a newer
        // one may mean something this version would misread.
        if map.get("format").map(String::as_str) == Some(FORMAT) {
            let version = map.get("format_version").map_or("1", String::as_str);
            match version.trim().parse::<u64>() {
                Ok(v) if v <= FORMAT_VERSION.parse::<u64>().unwrap_or(1) => {}
                Ok(_) => return Err(LatentError::NewerVersion { path: path.to_owned(), found: version.to_owned() }),
                Err(_) => {
                    let (key, value) = ("format_version".to_owned(), version.to_owned());
                    return Err(LatentError::Metadata { path: path.to_owned(), key, value });
                }
            }
        }
        let posterior = match map.get("posterior").map(String::as_str) {
            None => None,
            Some("mean") => Some(Posterior::Mean),
            Some("sample") => Some(Posterior::Sample { seed: parse(map, "seed", path)?.unwrap_or(0) }),
            Some(other) => {
                return Err(LatentError::Metadata {
                    path: path.to_owned(),
                    key: "posterior".to_owned(),
                    value: other.to_owned(),
                });
            }
        };
        Ok(Self {
            scaling_factor: finite("scaling_factor")?,
            shift_factor: finite("shift_factor")?,
            posterior,
            width: parse(map, "width", path)?,
            height: parse(map, "height", path)?,
            weights: map.get("weights").cloned(),
            weights_sha256: map.get("weights_sha256").cloned(),
            tool_version: map.get("vae_version").cloned(),
            family: map.get("family").and_then(|f| f.parse::<Family>().ok()),
            channel_stats: channel_stats(map, path)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_format_version_is_refused_and_an_unknown_family_reads_as_none() {
        let mut map = sample().meta.to_map();
        assert!(LatentMeta::from_map(Some(&map), Path::new("z")).is_ok());
        map.insert("format_version".into(), "3".into());
        let err = LatentMeta::from_map(Some(&map), Path::new("z")).unwrap_err();
        assert!(err.to_string().contains("newer vae (latent format version 3"), "{err}");
        map.insert("format_version".into(), "x".into());
        assert!(matches!(LatentMeta::from_map(Some(&map), Path::new("z")), Err(LatentError::Metadata { .. })));
        map.insert("format_version".into(), "1".into());
        map.insert("family".into(), "flux3".into());
        assert_eq!(LatentMeta::from_map(Some(&map), Path::new("z")).unwrap().family, None);
    }

    #[test]
    fn one_frame_of_a_video_latent_reads_as_an_image_latent() {
        let bytes: Vec<u8> = (0..24).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let one_frame = safetensors::tensor::TensorView::new(Dtype::F32, vec![1, 4, 1, 2, 3], &bytes).unwrap();
        let file = safetensors::serialize([("latent", one_frame)], None).unwrap();
        let latent = Latent::from_bytes(&file, Path::new("z")).unwrap();
        assert_eq!((latent.channels, latent.height, latent.width), (4, 2, 3));
        let two_frames = safetensors::tensor::TensorView::new(Dtype::F32, vec![1, 2, 2, 2, 3], &bytes).unwrap();
        let file = safetensors::serialize([("latent", two_frames)], None).unwrap();
        assert!(matches!(Latent::from_bytes(&file, Path::new("z")), Err(LatentError::Shape { .. })));
    }

    #[test]
    fn per_channel_statistics_round_trip_as_version_2() {
        let mut latent = sample();
        assert_eq!(latent.meta.to_map()["format_version"], "1");
        let stats = ChannelStats { mean: vec![0.5, -0.25, 1.0, 0.0], std: vec![2.0, 1.5, 0.75, 1.0], patch: 1 };
        latent.meta.channel_stats = Some(stats.clone());
        let map = latent.meta.to_map();
        assert_eq!(map["format_version"], "2");
        let back = LatentMeta::from_map(Some(&map), Path::new("z")).unwrap();
        assert_eq!(back.channel_stats, Some(stats));
        // Half of the statistics, or unusable ones, are refused.
        let mut half = map.clone();
        half.remove("latents_std");
        assert!(LatentMeta::from_map(Some(&half), Path::new("z")).is_err());
        let mut zero = map;
        zero.insert("latents_std".into(), "[2.0, 0.0, 1.0, 1.0]".into());
        assert!(LatentMeta::from_map(Some(&zero), Path::new("z")).is_err());
    }

    fn sample() -> Latent {
        Latent {
            channels: 4,
            height: 2,
            width: 3,
            data: (0..24).map(|i| i as f32 * 0.25 - 3.0).collect(),
            meta: LatentMeta {
                scaling_factor: Some(0.18215),
                shift_factor: Some(0.0),
                posterior: Some(Posterior::Sample { seed: 7 }),
                width: Some(20),
                height: Some(13),
                weights: Some("w.safetensors".into()),
                weights_sha256: Some("0123456789abcdef".into()),
                tool_version: Some("0.1.0".into()),
                family: Some(Family::Sd1),
                channel_stats: None,
            },
        }
    }

    #[test]
    fn roundtrips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("z.safetensors");
        let latent = sample();
        latent.write(&path, Overwrite::Refuse).unwrap();
        assert_eq!(Latent::read(&path).unwrap(), latent);
        // A second write without --force is refused and leaves the file intact.
        assert!(matches!(latent.write(&path, Overwrite::Refuse), Err(LatentError::Output(OutputError::Exists { .. }))));
    }

    #[test]
    fn comfyui_files_hold_the_unscaled_latent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("z.latent");
        let mut latent = sample();
        latent.meta.shift_factor = Some(0.1);
        latent.write(&path, Overwrite::Refuse).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor(COMFY_MARKER).unwrap().shape(), [0]);
        let raw = crate::safetensors_io::floats(st.tensor(COMFY_TENSOR).unwrap().data(), Dtype::F32).unwrap();
        assert!((raw[5] as f64 - (latent.data[5] as f64 / 0.18215 + 0.1)).abs() < 1e-5);
        // Read back as unscaled: decoding divides by 1 and adds 0.
        let back = Latent::read(&path).unwrap();
        assert_eq!((back.meta.scaling_factor, back.meta.shift_factor), (Some(1.0), Some(0.0)));
        assert_eq!(back.data, raw);
        assert_eq!((back.meta.width, back.meta.height), (Some(20), Some(13)));
    }

    #[test]
    fn comfyui_legacy_files_are_scaled_by_0_18215() {
        let data: Vec<u8> = (0..4 * 2 * 2).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(Dtype::F32, vec![1, 4, 2, 2], &data).unwrap();
        let bytes = safetensors::serialize([(COMFY_TENSOR, view)], None).unwrap();
        let latent = Latent::from_bytes(&bytes, Path::new("old.latent")).unwrap();
        assert_eq!((latent.meta.scaling_factor, latent.meta.shift_factor), (Some(0.18215), Some(0.0)));
        assert_eq!(latent.data[3], 3.0);
    }

    #[test]
    fn npy_roundtrip_and_numpy_dtypes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("z.npy");
        let latent = sample();
        latent.write(&path, Overwrite::Refuse).unwrap();
        let back = Latent::read(&path).unwrap();
        assert_eq!((back.channels, back.height, back.width), (4, 2, 3));
        assert_eq!(back.data, latent.data);
        assert_eq!(back.meta, LatentMeta::default());
        // f64 [C, h, w], as np.save writes a float64 array.
        let mut bytes = Vec::new();
        let mut w =
            npyz::WriteOptions::<f64>::new().default_dtype().shape(&[4, 1, 1]).writer(&mut bytes).begin_nd().unwrap();
        w.extend([0.5, 1.5, -2.0, 3.25]).unwrap();
        w.finish().unwrap();
        let z = Latent::from_bytes(&bytes, Path::new("z.npy")).unwrap();
        assert_eq!((z.channels, z.data), (4, vec![0.5, 1.5, -2.0, 3.25]));
        // An integer array is refused by dtype.
        let mut bytes = Vec::new();
        let mut w =
            npyz::WriteOptions::<i32>::new().default_dtype().shape(&[1, 1, 1]).writer(&mut bytes).begin_nd().unwrap();
        w.extend([1]).unwrap();
        w.finish().unwrap();
        let err = Latent::from_bytes(&bytes, Path::new("z.npy")).unwrap_err().to_string();
        assert!(err.contains("dtype '<i4'"), "{err}");
    }

    #[test]
    fn bare_tensor_without_metadata() {
        let data: Vec<u8> = (0..4 * 8 * 8).flat_map(|i| half::f16::from_f32(i as f32).to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(Dtype::F16, vec![4, 8, 8], &data).unwrap();
        let bytes = safetensors::serialize([("samples", view)], None).unwrap();
        let latent = Latent::from_bytes(&bytes, Path::new("x")).unwrap();
        assert_eq!((latent.channels, latent.height, latent.width), (4, 8, 8));
        assert_eq!(latent.data[5], 5.0);
        assert_eq!(latent.meta, LatentMeta::default());
    }

    #[test]
    fn several_tensors_without_latent_are_listed() {
        let data = [0u8; 16];
        let a = safetensors::tensor::TensorView::new(Dtype::F32, vec![1, 4], &data).unwrap();
        let b = safetensors::tensor::TensorView::new(Dtype::F32, vec![1, 4], &data).unwrap();
        let bytes = safetensors::serialize([("a", a), ("b", b)], None).unwrap();
        let err = Latent::from_bytes(&bytes, Path::new("z.safetensors")).unwrap_err().to_string();
        assert_eq!(err, "z.safetensors: several tensors and none named `latent`: a, b");
    }
}
