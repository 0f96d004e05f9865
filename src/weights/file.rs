//! Opening a weights file: refusing pickles, memory-mapping safetensors and
//! listing its tensors without copying their data.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

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
    /// SHA-256 of the whole file, computed on its own thread from the open on.
    pub hash: FileHash,
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
        Ok(Self { path: path.to_owned(), mmap, tensors, hash: FileHash::start(file) })
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
}

/// SHA-256 of a whole weights file, as `sha256sum` and the Hugging Face Hub
/// show it, computed on a thread of its own while the model loads and runs.
/// The file is read through a small buffer: hashed through the memory map,
/// every page of a multi-gigabyte checkpoint (of which the VAE is a few
/// percent) would count in the process's resident memory.
#[derive(Clone)]
pub struct FileHash(Arc<HashState>);

struct HashState {
    /// The file, until the hashing thread takes it (or `hex` does, where no
    /// thread could be started).
    file: Arc<Mutex<Option<File>>>,
    thread: Mutex<Option<JoinHandle<Option<String>>>>,
    hex: OnceLock<Option<String>>,
}

impl FileHash {
    /// Starts hashing `file` (from its start) on a thread of its own.
    fn start(file: File) -> Self {
        let file = Arc::new(Mutex::new(Some(file)));
        let taken = Arc::clone(&file);
        let thread = std::thread::Builder::new()
            .name("vae-sha256".to_owned())
            .spawn(move || {
                // Taken out first: the lock is not held while the file is read.
                let file = taken.lock().ok()?.take();
                file.and_then(sha256)
            })
            .ok();
        Self(Arc::new(HashState { file, thread: Mutex::new(thread), hex: OnceLock::new() }))
    }

    /// The digest in hex, waiting for it if need be; `None` when the file
    /// could no longer be read (the map that was loaded stays valid).
    pub fn hex(&self) -> Option<&str> {
        let join = || {
            let thread = self.0.thread.lock().map_or(None, |mut t| t.take());
            match thread {
                Some(thread) => thread.join().ok().flatten(),
                // No thread could be started: hash here.
                None => self.0.file.lock().map_or(None, |mut f| f.take()).and_then(sha256),
            }
        };
        self.0.hex.get_or_init(join).as_deref()
    }
}

/// SHA-256 of `file` from its start, in hex, read 1 MiB at a time.
fn sha256(mut file: File) -> Option<String> {
    file.seek(SeekFrom::Start(0)).ok()?;
    let (mut hasher, mut buffer) = (Sha256::new(), vec![0u8; 1 << 20]);
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    Some(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

impl std::fmt::Debug for FileHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.hex.get() {
            Some(hex) => write!(f, "FileHash({hex:?})"),
            None => f.write_str("FileHash(pending)"),
        }
    }
}

/// Lists the tensors of safetensors `bytes` (header and offsets validated),
/// refusing pickles by content first. `path` only names the file in errors.
pub fn list_tensors(bytes: &[u8], path: &Path) -> Result<BTreeMap<String, RawTensor>, WeightsError> {
    if looks_like_pickle(bytes) {
        return Err(WeightsError::Pickle { path: path.to_owned() });
    }
    if let Some(kind) = image_kind(bytes) {
        let reason = format!("this is a {kind} image, not weights");
        return Err(WeightsError::NotSafetensors { path: path.to_owned(), reason });
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

/// The image format `bytes` start like, if any: an image given as weights
/// would otherwise read as a header claiming absurd sizes.
fn image_kind(bytes: &[u8]) -> Option<&'static str> {
    let riff_webp = bytes.len() >= 12 && bytes.starts_with(b"RIFF") && &bytes[8..12] == b"WEBP";
    match bytes {
        [0x89, b'P', b'N', b'G', ..] => Some("PNG"),
        [0xFF, 0xD8, 0xFF, ..] => Some("JPEG"),
        [b'G', b'I', b'F', b'8', ..] => Some("GIF"),
        // A safetensors header length could start "BM" or "II*\0": a BMP has
        // its file size next, a TIFF its first directory's offset.
        [b'B', b'M', a, b, c, d, ..] if [*a, *b, *c, *d] != [0; 4] => Some("BMP"),
        [b'I', b'I', 42, 0, a, b, c, d, ..] | [b'M', b'M', 0, 42, a, b, c, d, ..] if [*a, *b, *c, *d] != [0; 4] => {
            Some("TIFF")
        }
        _ if riff_webp => Some("WebP"),
        _ => None,
    }
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
