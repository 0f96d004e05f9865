//! One repo's folder in the Hugging Face cache, laid out as huggingface_hub
//! lays it out, so that its caches and ours are one:
//!
//! - `models--ORG--NAME/refs/REVISION`: the commit a branch or tag points at;
//! - `models--ORG--NAME/blobs/ETAG`: each file's bytes, named by its etag
//!   (`ETAG.incomplete` while it downloads, resumed from there by either tool);
//! - `models--ORG--NAME/snapshots/COMMIT/PATH`: a relative link to its blob;
//! - `.locks/models--ORG--NAME/ETAG.lock`: held while a blob downloads.
//!
//! Without the `hub` feature only the reading half is built: a repo resolves
//! to what the cache holds, and nothing writes there.

use std::fs;
#[cfg(feature = "hub")]
use std::io;
use std::path::{Path, PathBuf};

pub struct RepoCache {
    dir: PathBuf,
    #[cfg(feature = "hub")]
    locks: PathBuf,
}

impl RepoCache {
    /// The folder of model repo `id` (`org/name`) in `cache`.
    pub fn new(cache: &Path, id: &str) -> Self {
        let name = folder_name(id);
        Self {
            #[cfg(feature = "hub")]
            locks: cache.join(".locks").join(&name),
            dir: cache.join(name),
        }
    }

    #[cfg(feature = "hub")]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn snapshot(&self, commit: &str) -> PathBuf {
        self.dir.join("snapshots").join(commit)
    }

    #[cfg(feature = "hub")]
    pub fn blob(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(etag)
    }

    #[cfg(feature = "hub")]
    /// Where a blob downloads to before it is complete and checked.
    pub fn incomplete(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(format!("{etag}.incomplete"))
    }

    #[cfg(feature = "hub")]
    pub fn lock(&self, etag: &str) -> PathBuf {
        self.locks.join(format!("{etag}.lock"))
    }

    /// The commit `revision` points at, as the cache last saw it.
    pub fn read_ref(&self, revision: &str) -> Option<String> {
        fs::read_to_string(self.dir.join("refs").join(revision)).ok().map(|c| c.trim().to_owned())
    }

    #[cfg(feature = "hub")]
    /// Records that `revision` points at `commit`.
    pub fn write_ref(&self, revision: &str, commit: &str) -> io::Result<()> {
        let path = self.dir.join("refs").join(revision);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(path, commit)
    }

    #[cfg(feature = "hub")]
    /// Links `snapshots/COMMIT/FILE` to `blobs/ETAG` (relative, as
    /// huggingface_hub does; a copy where links cannot be made), replacing
    /// whatever was there.
    pub fn link(&self, commit: &str, file: &str, etag: &str) -> io::Result<PathBuf> {
        let path = self.snapshot(commit).join(file);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        if fs::symlink_metadata(&path).is_ok() {
            fs::remove_file(&path)?;
        }
        // From snapshots/COMMIT/a/b/FILE up to the repo folder: one `..` per part, plus two.
        let up = "../".repeat(file.split('/').count() + 1);
        let target = format!("{up}blobs/{etag}");
        #[cfg(unix)]
        std::os::unix::fs::symlink(&target, &path)?;
        #[cfg(windows)]
        if std::os::windows::fs::symlink_file(&target, &path).is_err() {
            fs::copy(self.blob(etag), &path)?;
        }
        #[cfg(not(any(unix, windows)))]
        fs::copy(self.blob(etag), &path)?;
        Ok(path)
    }
}

/// `models--ORG--NAME`, the folder name huggingface_hub gives a model repo.
pub fn folder_name(id: &str) -> String {
    format!("models--{}", id.replace('/', "--"))
}

// The writing half is the download client's (the `hub` feature).
#[cfg(all(test, feature = "hub"))]
mod tests {
    use super::*;

    #[test]
    fn the_layout_of_huggingface_hub() {
        let cache = RepoCache::new(Path::new("/c"), "org/name");
        assert_eq!(cache.dir(), Path::new("/c/models--org--name"));
        assert_eq!(cache.blob("e"), Path::new("/c/models--org--name/blobs/e"));
        assert_eq!(cache.incomplete("e"), Path::new("/c/models--org--name/blobs/e.incomplete"));
        assert_eq!(cache.lock("e"), Path::new("/c/.locks/models--org--name/e.lock"));
        assert_eq!(cache.snapshot("c1"), Path::new("/c/models--org--name/snapshots/c1"));
    }

    #[cfg(unix)]
    #[test]
    fn snapshot_links_are_relative_and_resolve_to_the_blob() {
        let dir = tempfile::tempdir().unwrap();
        let cache = RepoCache::new(dir.path(), "org/name");
        fs::create_dir_all(cache.blob("e").parent().unwrap()).unwrap();
        fs::write(cache.blob("e"), b"bytes").unwrap();
        for file in ["config.json", "vae/config.json", "a/b/c.json"] {
            let link = cache.link("c1", file, "e").unwrap();
            assert!(fs::read_link(&link).unwrap().is_relative());
            assert_eq!(fs::read(&link).unwrap(), b"bytes", "{file}");
        }
        assert_eq!(fs::read_link(cache.snapshot("c1").join("vae/config.json")).unwrap(), Path::new("../../../blobs/e"));
        cache.write_ref("refs/pr/1", "c1").unwrap();
        assert_eq!(cache.read_ref("refs/pr/1").as_deref(), Some("c1"));
    }
}
