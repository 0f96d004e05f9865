//! WebDataset samples: the files of one sample share a key, the path up to
//! the first dot of the file name (`part/000123.jpg`, `part/000123.json` and
//! `part/000123.txt` are the sample `part/000123`). In a tar a sample's files
//! are adjacent, as img2dataset and webdataset write them.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Files bigger than this are not read into memory: their sample is skipped.
pub const MAX_FILE: u64 = 512 << 20;

/// One sample: its key and its files, as (extension, bytes) in the order
/// they came. A file that could not be taken leaves a note in `problems`.
pub struct Sample {
    pub key: String,
    pub files: Vec<(String, Vec<u8>)>,
    pub problems: Vec<String>,
    /// Modification time of its first file (kept on the files copied out).
    pub mtime: u64,
}

/// Splits a member path into (key, extension) at the first dot of its file
/// name; `None` for names that are no sample's (hidden files, no extension).
pub fn split_key(path: &str) -> Option<(&str, &str)> {
    let start = path.rfind('/').map_or(0, |i| i + 1);
    let name = &path[start..];
    if name.starts_with('.') {
        return None;
    }
    let dot = name.find('.')?;
    Some((&path[..start + dot], &name[dot + 1..]))
}

/// Whether a file with this extension (after the key's dot) is an image.
pub fn is_image_extension(ext: &str) -> bool {
    crate::imageio::EXTENSIONS.iter().any(|e| e.eq_ignore_ascii_case(ext))
}

/// Whether the file `name` is an image, by its last extension.
pub fn is_image(name: &str) -> bool {
    name.rsplit_once('.').is_some_and(|(_, ext)| is_image_extension(ext))
}

/// Calls `each` with the samples of a tar, in order. Members that are not
/// regular files or have no extension are passed over; a key that comes back
/// after another key's files is a sample of its own (and `each` sees the key
/// twice: the caller decides). A damaged or truncated tar is an error after
/// the samples before the damage.
pub fn read_tar(reader: impl Read, mut each: impl FnMut(Sample) -> Result<()>) -> Result<()> {
    let mut archive = tar::Archive::new(reader);
    let mut current: Option<Sample> = None;
    for (members, entry) in archive.entries().context("not a readable tar")?.enumerate() {
        let mut entry = entry.with_context(|| format!("damaged tar after {members} members"))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some((key, ext)) = split_key(&path) else { continue };
        if current.as_ref().is_some_and(|s| s.key != key) {
            each(current.take().expect("checked above"))?;
        }
        let sample = current.get_or_insert_with(|| Sample {
            key: key.to_owned(),
            files: Vec::new(),
            problems: Vec::new(),
            mtime: entry.header().mtime().unwrap_or(0),
        });
        let size = entry.size();
        if size > MAX_FILE {
            sample.problems.push(format!("{path} is {size} bytes, over the {MAX_FILE}-byte limit of a sample's file"));
            continue;
        }
        let mut bytes = Vec::with_capacity(size as usize);
        entry.read_to_end(&mut bytes).with_context(|| format!("damaged tar in member {path}"))?;
        sample.files.push((ext.to_owned(), bytes));
    }
    if let Some(sample) = current {
        each(sample)?;
    }
    Ok(())
}

/// Calls `each` with the samples of a folder (its files and those of its
/// subfolders, keys relative to it), in key order.
pub fn read_folder(dir: &Path, mut each: impl FnMut(Sample) -> Result<()>) -> Result<()> {
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    let mut samples: BTreeMap<String, Vec<(String, PathBuf)>> = BTreeMap::new();
    for (relative, path) in files {
        if let Some((key, ext)) = split_key(&relative) {
            samples.entry(key.to_owned()).or_default().push((ext.to_owned(), path));
        }
    }
    for (key, paths) in samples {
        let mut sample = Sample { key, files: Vec::new(), problems: Vec::new(), mtime: 0 };
        for (ext, path) in paths {
            let meta = std::fs::metadata(&path).with_context(|| format!("{}: cannot read", path.display()))?;
            if meta.len() > MAX_FILE {
                sample.problems.push(format!(
                    "{} is {} bytes, over the {MAX_FILE}-byte limit",
                    path.display(),
                    meta.len()
                ));
                continue;
            }
            let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
            sample.mtime = sample.mtime.max(mtime.map_or(0, |d| d.as_secs()));
            let bytes = std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
            sample.files.push((ext, bytes));
        }
        each(sample)?;
    }
    Ok(())
}

/// The files under `dir` as ('/'-separated path relative to `root`, path), sorted.
fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<io::Result<_>>()
        .with_context(|| format!("{}: cannot list", dir.display()))?;
    entries.sort();
    for path in entries {
        let relative = path.strip_prefix(root).unwrap_or(&path);
        let relative: Vec<String> =
            relative.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
        if relative.last().is_some_and(|n| n.starts_with('.')) {
            continue;
        }
        if path.is_dir() {
            walk(root, &path, out)?;
        } else if path.is_file() {
            out.push((relative.join("/"), path));
        }
    }
    Ok(())
}

/// An output shard being written: a tar of samples' files, flushed after
/// each sample so that its size shows progress.
pub struct TarWriter {
    builder: tar::Builder<BufWriter<File>>,
    path: PathBuf,
}

impl TarWriter {
    /// Creates (or truncates) `path`.
    pub fn create(path: &Path) -> Result<Self> {
        let file = File::create(path).with_context(|| format!("{}: cannot create", path.display()))?;
        let mut builder = tar::Builder::new(BufWriter::with_capacity(1 << 20, file));
        builder.mode(tar::HeaderMode::Deterministic);
        Ok(Self { builder, path: path.to_owned() })
    }

    /// Adds the member `name` with `bytes`.
    pub fn append(&mut self, name: &str, bytes: &[u8], mtime: u64) -> Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(mtime);
        header.set_entry_type(tar::EntryType::Regular);
        self.builder
            .append_data(&mut header, name, bytes)
            .with_context(|| format!("{}: cannot write {name}", self.path.display()))
    }

    /// Pushes what was appended to the file.
    pub fn flush(&mut self) -> Result<()> {
        self.builder.get_mut().flush().with_context(|| format!("{}: cannot write", self.path.display()))
    }

    /// Ends the archive and syncs it to disk.
    pub fn finish(self) -> Result<()> {
        let path = self.path;
        let write = |e| anyhow::Error::new(e).context(format!("{}: cannot write", path.display()));
        let file = self.builder.into_inner().map_err(write)?.into_inner().map_err(|e| write(e.into_error()))?;
        file.sync_all().map_err(write)
    }
}

/// Refuses keys that would escape the output tar's root or clash with how
/// the tar is read back.
pub fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.starts_with('/') || key.split('/').any(|c| c == ".." || c.is_empty()) {
        bail!("key {key:?} is not a relative path");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_at_the_first_dot_of_the_file_name() {
        assert_eq!(split_key("000123.jpg"), Some(("000123", "jpg")));
        assert_eq!(split_key("a.b/000123.latent.safetensors"), Some(("a.b/000123", "latent.safetensors")));
        assert_eq!(split_key("dir/.hidden.jpg"), None);
        assert_eq!(split_key("README"), None);
        assert!(is_image("x/y.JPG") && is_image("a.b.webp") && !is_image("a.json"));
        assert!(check_key("a/b").is_ok());
        for bad in ["", "/a", "a/../b", "a//b"] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn adjacent_members_group_into_samples_and_damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.tar");
        let mut w = TarWriter::create(&path).unwrap();
        for (name, data) in [("a.jpg", "1"), ("a.json", "2"), ("b.png", "3"), ("noext", "x"), ("a.txt", "4")] {
            w.append(name, data.as_bytes(), 7).unwrap();
        }
        w.finish().unwrap();
        let mut seen = Vec::new();
        read_tar(File::open(&path).unwrap(), |s| {
            seen.push((
                s.key,
                s.files.iter().map(|(e, b)| format!("{e}={}", String::from_utf8_lossy(b))).collect::<Vec<_>>(),
            ));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                ("a".to_owned(), vec!["jpg=1".to_owned(), "json=2".to_owned()]),
                ("b".to_owned(), vec!["png=3".to_owned()]),
                ("a".to_owned(), vec!["txt=4".to_owned()]),
            ]
        );
        let bytes = std::fs::read(&path).unwrap();
        let mut count = 0;
        let truncated = read_tar(&bytes[..700], |_| {
            count += 1;
            Ok(())
        });
        assert!(truncated.unwrap_err().to_string().contains("damaged tar"));
    }
}
