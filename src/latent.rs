//! Latent files: safetensors holding `latent` `[1, C, h, w]` f32, scaled as SD
//! pipelines consume them, with metadata saying how they were made.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::output::{self, OutputError, Overwrite};

/// Name of the tensor in files written by `vae encode`.
pub const LATENT_TENSOR: &str = "latent";
/// Value of the `format` metadata key.
pub const FORMAT: &str = "vae-latent";
pub const FORMAT_VERSION: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum LatentError {
    #[error("{}: cannot read: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: not a safetensors latent file: {reason}", path.display())]
    Format { path: PathBuf, reason: String },
    #[error("{}: holds no tensor", path.display())]
    NoTensor { path: PathBuf },
    #[error("{}: several tensors and none named `latent`: {}", path.display(), names.join(", "))]
    Ambiguous { path: PathBuf, names: Vec<String> },
    #[error("{}: tensor `{name}` has shape {shape:?}; a latent is [C, h, w] or [1, C, h, w] with no empty dimension", path.display())]
    Shape { path: PathBuf, name: String, shape: Vec<usize> },
    #[error("{}: tensor `{name}` has dtype {dtype}; a latent is f32, f16, bf16 or f64", path.display())]
    Dtype { path: PathBuf, name: String, dtype: String },
    #[error("{}: tensor `{name}` contains {count} NaN or infinite values", path.display())]
    NotFinite { path: PathBuf, name: String, count: usize },
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
    pub fn write(&self, path: &Path, overwrite: Overwrite) -> Result<(), LatentError> {
        let bytes: Vec<u8> = self.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        let shape = vec![1, self.channels, self.height, self.width];
        let view = safetensors::tensor::TensorView::new(Dtype::F32, shape, &bytes)
            .map_err(|e| LatentError::Format { path: path.to_owned(), reason: e.to_string() })?;
        let serialized = safetensors::serialize([(LATENT_TENSOR, view)], Some(self.meta.to_map()))
            .map_err(|e| LatentError::Format { path: path.to_owned(), reason: e.to_string() })?;
        output::write_atomic(path, overwrite, |out| out.write_all(&serialized))?;
        Ok(())
    }

    pub fn read(path: &Path) -> Result<Self, LatentError> {
        let bytes = std::fs::read(path).map_err(|source| LatentError::Io { path: path.to_owned(), source })?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses a latent file's bytes; `path` only names the file in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, LatentError> {
        let err_path = || path.to_owned();
        let format = |e| LatentError::Format { path: err_path(), reason: crate::safetensors_io::describe(&e, bytes) };
        let st = SafeTensors::deserialize(bytes).map_err(format)?;
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(format)?;
        let mut names: Vec<String> = st.names().into_iter().map(str::to_owned).collect();
        names.sort();
        let name = match names.as_slice() {
            [] => return Err(LatentError::NoTensor { path: err_path() }),
            [only] => only.clone(),
            _ if names.iter().any(|n| n == LATENT_TENSOR) => LATENT_TENSOR.to_owned(),
            _ => return Err(LatentError::Ambiguous { path: err_path(), names }),
        };
        let view = st.tensor(&name).map_err(|e| LatentError::Format { path: err_path(), reason: format!("{e:?}") })?;
        let shape = view.shape().to_vec();
        let [channels, height, width] = match shape.as_slice() {
            &[c, h, w] | &[1, c, h, w] if c > 0 && h > 0 && w > 0 => [c, h, w],
            _ => return Err(LatentError::Shape { path: err_path(), name, shape }),
        };
        let data = crate::safetensors_io::floats(view.data(), view.dtype()).ok_or_else(|| LatentError::Dtype {
            path: err_path(),
            name: name.clone(),
            dtype: format!("{:?}", view.dtype()),
        })?;
        let count = data.iter().filter(|v| !v.is_finite()).count();
        if count > 0 {
            return Err(LatentError::NotFinite { path: err_path(), name, count });
        }
        let meta = LatentMeta::from_map(header.metadata().as_ref(), path)?;
        Ok(Self { channels, height, width, data, meta })
    }
}

impl LatentMeta {
    fn to_map(&self) -> HashMap<String, String> {
        let mut m = HashMap::new();
        m.insert("format".to_owned(), FORMAT.to_owned());
        m.insert("format_version".to_owned(), FORMAT_VERSION.to_owned());
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
                Some(v) if !v.is_finite() || (key == "scaling_factor" && v == 0.0) => {
                    Err(LatentError::Metadata { path: path.to_owned(), key: key.to_owned(), value: map[key].clone() })
                }
                other => Ok(other),
            }
        };
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
