//! Opening a weights file: refusing pickles, memory-mapping safetensors and
//! listing its tensors without copying their data.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use sha2::{Digest, Sha256};

use super::WeightsError;

/// Extensions of PyTorch pickle files, refused by name before anything is read.
const PICKLE_EXTENSIONS: [&str; 4] = ["ckpt", "pt", "pth", "bin"];

/// One tensor of a safetensors file: where its bytes are and how to read them.
#[derive(Debug, Clone)]
pub struct RawTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    range: Range<usize>,
}

/// A memory-mapped, validated safetensors file.
pub struct TensorFile {
    pub path: PathBuf,
    mmap: Mmap,
    pub tensors: BTreeMap<String, RawTensor>,
}

impl TensorFile {
    pub fn open(path: &Path) -> Result<Self, WeightsError> {
        if has_pickle_extension(path) {
            return Err(WeightsError::Pickle { path: path.to_owned() });
        }
        let io = |cause| WeightsError::Io { path: path.to_owned(), cause };
        crate::output::check_input(path).map_err(io)?;
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; a file truncated by another process while
        // we run is the one case mmap cannot protect against, as for every tool
        // that maps model weights (safetensors' own loaders included).
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        let tensors = list_tensors(&mmap, path)?;
        Ok(Self { path: path.to_owned(), mmap, tensors })
    }

    /// The tensor's values as f32, whatever float type the file stores.
    pub fn to_f32(&self, name: &str, raw: &RawTensor) -> Result<Vec<f32>, WeightsError> {
        self.check_float(name, raw)?;
        let bytes = &self.mmap[raw.range.clone()];
        Ok(crate::safetensors_io::floats(bytes, raw.dtype).unwrap_or_default())
    }

    /// Refuses a tensor whose dtype is not a float type.
    pub fn check_float(&self, name: &str, raw: &RawTensor) -> Result<(), WeightsError> {
        match crate::safetensors_io::is_float(raw.dtype) {
            true => Ok(()),
            false => Err(WeightsError::Dtype {
                path: self.path.clone(),
                tensor: name.to_owned(),
                dtype: format!("{:?}", raw.dtype),
            }),
        }
    }

    /// SHA-256 of the whole file, as `sha256sum` and the Hugging Face Hub show it.
    pub fn sha256_hex(&self) -> String {
        Sha256::digest(&self.mmap[..]).iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Lists the tensors of safetensors `bytes` (header and offsets validated),
/// refusing pickles by content first. `path` only names the file in errors.
pub fn list_tensors(bytes: &[u8], path: &Path) -> Result<BTreeMap<String, RawTensor>, WeightsError> {
    if looks_like_pickle(bytes) {
        return Err(WeightsError::Pickle { path: path.to_owned() });
    }
    let (header_len, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| WeightsError::NotSafetensors {
        path: path.to_owned(),
        reason: crate::safetensors_io::describe(&e, bytes),
    })?;
    let data_start = 8 + header_len;
    let tensors = metadata
        .tensors()
        .into_iter()
        .map(|(name, info)| {
            let (begin, end) = info.data_offsets;
            let raw =
                RawTensor { dtype: info.dtype, shape: info.shape.clone(), range: data_start + begin..data_start + end };
            (name, raw)
        })
        .collect();
    Ok(tensors)
}

fn has_pickle_extension(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    ext.as_deref().is_some_and(|e| PICKLE_EXTENSIONS.contains(&e))
}

/// A safetensors file has its JSON header at byte 8; a pickle starts with
/// PROTO (0x80, version 2..=5), a `torch.save` zip with "PK\x03\x04".
fn looks_like_pickle(bytes: &[u8]) -> bool {
    if bytes.get(8) == Some(&b'{') {
        return false;
    }
    matches!(bytes, [0x80, 2..=5, ..]) || bytes.starts_with(b"PK\x03\x04")
}
