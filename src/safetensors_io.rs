//! What weights and latent files share: reading float tensors of any width as
//! f32, and one wording for what is wrong with a file that should be
//! safetensors (safetensors' own errors are terse).

use safetensors::{Dtype, SafeTensorError};

/// Whether [`floats`] reads `dtype`.
pub fn is_float(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64)
}

/// Little-endian float values of `dtype` as f32; `None` for non-float dtypes.
pub fn floats(bytes: &[u8], dtype: Dtype) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::F64 => {
            bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap_or_default()) as f32).collect()
        }
        _ => return None,
    })
}

/// Describes why `bytes` did not parse, from the error and the bytes themselves.
pub fn describe(err: &SafeTensorError, bytes: &[u8]) -> String {
    if bytes.len() < 8 {
        return format!("file is {} bytes, too short for a safetensors header", bytes.len());
    }
    let declared = u64::from_le_bytes(bytes[..8].try_into().unwrap_or_default());
    if declared > (bytes.len() - 8) as u64 {
        return format!(
            "header claims {declared} bytes but the file has {} (truncated or not safetensors)",
            bytes.len()
        );
    }
    match err {
        SafeTensorError::MetadataIncompleteBuffer => {
            "file is truncated or padded: its size does not match the tensor data its header describes".to_owned()
        }
        SafeTensorError::HeaderTooLarge => format!("header length {declared} is over safetensors' 100 MB limit"),
        SafeTensorError::InvalidHeader(_) | SafeTensorError::InvalidHeaderStart => "header is not JSON text".to_owned(),
        SafeTensorError::InvalidHeaderDeserialization(e) => format!("header is not a valid tensor table: {e}"),
        SafeTensorError::InvalidOffset(name) => format!("tensor {name} has data offsets outside the file"),
        SafeTensorError::ValidationOverflow => "a tensor's declared size overflows".to_owned(),
        SafeTensorError::TensorInvalidInfo => "a tensor's shape does not match its byte size".to_owned(),
        other => format!("{other:?}"),
    }
}
