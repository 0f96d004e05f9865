//! Fetching a repo from the Hub into the cache (the `hub` feature): the
//! repo's description, each file's metadata, downloads under the blob's lock,
//! and the checks every file passes before it is used.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use url::Url;

use super::cache::RepoCache;
use super::http::{self, Client, HttpError, Metadata, Timeout};
use super::{DIFFUSERS_FILES, Hub, HubError, HubRepo, in_subfolder};

const CONFIG_FILE: &str = "config.json";
/// huggingface_hub's variables for its timeouts, in seconds, and their default.
const ETAG_TIMEOUT: &str = "HF_HUB_ETAG_TIMEOUT";
const DOWNLOAD_TIMEOUT: &str = "HF_HUB_DOWNLOAD_TIMEOUT";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for another process downloading the same file.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// The timeouts for descriptions and metadata and for downloads, or the
/// variable that is not a time, and its value.
pub(super) type Timeouts = Result<(Timeout, Timeout), (&'static str, String)>;

/// `$HF_HUB_ETAG_TIMEOUT` and `$HF_HUB_DOWNLOAD_TIMEOUT`, 10 s each by default.
pub(super) fn timeouts_from_env() -> Timeouts {
    Ok((timeout_from_env(ETAG_TIMEOUT)?, timeout_from_env(DOWNLOAD_TIMEOUT)?))
}

impl Hub {
    /// [`Hub::fetch`] online: asks the Hub for `repo`'s latest commit at its
    /// revision, downloads what the cache lacks, checks every file, and
    /// returns the folder.
    pub(super) fn download_snapshot(&self, repo: &HubRepo) -> Result<PathBuf, HubError> {
        let cache = RepoCache::new(self.cache()?, &repo.id);
        let (etag_timeout, download_timeout) =
            self.timeouts.clone().map_err(|(var, value)| HubError::Setting { var, value })?;
        let endpoint = Url::parse(&self.endpoint)
            .ok()
            .filter(|u| ["http", "https"].contains(&u.scheme()) && u.has_host())
            .ok_or_else(|| HubError::Endpoint(self.endpoint.clone()))?;
        let client = Client::new(&endpoint, self.token.clone(), etag_timeout, download_timeout);
        let url = |path: String| {
            Url::parse(&format!("{}/{path}", self.endpoint)).map_err(|_| HubError::Endpoint(self.endpoint.clone()))
        };
        let revision = repo.revision.replace('/', "%2F");
        let request = |e| self.request_error(repo, e);

        let info = client.repo_info(url(format!("api/models/{}/revision/{revision}", repo.id))?).map_err(request)?;
        let files = choose_files(repo, &info.files)?;
        let mut commit: Option<String> = None;
        for file in &files {
            let meta =
                client.metadata(url(format!("{}/resolve/{revision}/{file}", repo.id))?).map_err(|e| match e {
                    // The Hub described the repo, so it is there: its files need a
                    // token (a gated repo, such as black-forest-labs/FLUX.2-dev).
                    HttpError::Status { status: 401, from_endpoint: true, .. } => {
                        HubError::Denied { repo: repo.to_string(), endpoint: self.endpoint.clone() }
                    }
                    other => request(other),
                })?;
            // Both name paths in the cache (snapshots/COMMIT, blobs/ETAG): hex only.
            for (what, value) in [("commit", &meta.commit), ("etag", &meta.etag)] {
                if value.is_empty() || value.len() > 128 || !value.chars().all(|c| c.is_ascii_alphanumeric()) {
                    let (repo, endpoint, value) = (repo.to_string(), self.endpoint.clone(), value.clone());
                    return Err(HubError::BadAnswer { repo, endpoint, what, value });
                }
            }
            match &commit {
                Some(c) if *c != meta.commit => {
                    return Err(HubError::Moved { repo: repo.to_string(), commits: (c.clone(), meta.commit.clone()) });
                }
                _ => commit = Some(meta.commit.clone()),
            }
            let local = cache.snapshot(&meta.commit).join(file);
            if !local.is_file() {
                if !cache.blob(&meta.etag).is_file() {
                    self.download(&client, &cache, repo, file, &meta)?;
                }
                let io = |source| HubError::Io { path: local.clone(), source };
                cache.link(&meta.commit, file, &meta.etag).map_err(io)?;
            }
            if let Err(reason) = check(&local, &meta) {
                // Nothing that failed its check stays usable: the link and its blob go.
                let _ = fs::remove_file(&local);
                let _ = fs::remove_file(cache.blob(&meta.etag));
                return Err(HubError::Corrupt { repo: repo.to_string(), file: file.clone(), reason });
            }
        }
        let commit = commit.unwrap_or_default();
        if commit != repo.revision {
            let io = |source| HubError::Io { path: cache.dir().join("refs").join(&repo.revision), source };
            cache.write_ref(&repo.revision, &commit).map_err(io)?;
        }
        Ok(in_subfolder(cache.snapshot(&commit), &repo.subfolder))
    }

    /// Downloads `file` into its blob, holding the blob's lock: into
    /// `blobs/ETAG.incomplete`, bounded by the announced size, then renamed.
    fn download(
        &self,
        client: &Client,
        cache: &RepoCache,
        repo: &HubRepo,
        file: &str,
        meta: &Metadata,
    ) -> Result<(), HubError> {
        let lock_path = cache.lock(&meta.etag);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| HubError::Io { path, source }
        };
        let lock = http::lock(&lock_path).map_err(io(&lock_path))?;
        let waiting = Instant::now();
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) if waiting.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(HubError::Busy { repo: repo.to_string(), file: file.to_owned(), lock: lock_path });
                }
                Err(fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
            }
        }
        let blob = cache.blob(&meta.etag);
        if blob.is_file() {
            // Another process downloaded it while this one waited.
            return Ok(());
        }
        if let Some(blobs) = blob.parent() {
            fs::create_dir_all(blobs).map_err(io(blobs))?;
        }
        let part = cache.incomplete(&meta.etag);
        let result = match &self.progress {
            Some(progress) => {
                progress.start(repo, file, meta.size);
                let result = client.download(&meta.download, &part, meta.size, &mut |n| progress.advance(n));
                progress.finish();
                result
            }
            None => client.download(&meta.download, &part, meta.size, &mut |_| {}),
        };
        result.map_err(|e| match e {
            HttpError::Io { path, source } => HubError::Io { path, source },
            other => HubError::Download { repo: repo.to_string(), file: file.to_owned(), reason: other.to_string() },
        })?;
        fs::rename(&part, &blob).map_err(io(&blob))
    }

    fn request_error(&self, repo: &HubRepo, error: HttpError) -> HubError {
        let (repo, endpoint) = (repo.to_string(), self.endpoint.clone());
        match error {
            // The Hub answers 401 for a repo that does not exist, as for a private one.
            HttpError::Status { status: 401 | 404, from_endpoint: true, .. } => HubError::NotFound { repo, endpoint },
            HttpError::Status { status: 403, from_endpoint: true, .. } => HubError::Denied { repo, endpoint },
            HttpError::Io { path, source } => HubError::Io { path, source },
            other => HubError::Request { repo, endpoint, reason: other.to_string() },
        }
    }
}

/// A timeout from huggingface_hub's variable `var` (seconds), 10 s when unset.
fn timeout_from_env(var: &'static str) -> Result<Timeout, (&'static str, String)> {
    let Some(value) = std::env::var_os(var).filter(|v| !v.is_empty()) else {
        return Ok(Timeout { limit: DEFAULT_TIMEOUT, var });
    };
    let text = value.to_string_lossy().into_owned();
    match text.trim().parse::<f64>().ok().filter(|s| *s > 0.0).and_then(|s| Duration::try_from_secs_f64(s).ok()) {
        Some(limit) => Ok(Timeout { limit, var }),
        None => Err((var, text)),
    }
}

/// What to download from a repo listing: `config.json` when there is one and
/// the weights, fp32 preferred to fp16. Never a pickle.
fn choose_files(repo: &HubRepo, listing: &[String]) -> Result<Vec<String>, HubError> {
    let has = |path: &str| listing.iter().any(|f| f == path);
    let Some(weights) = DIFFUSERS_FILES.iter().map(|f| repo.path_in_repo(f)).find(|p| has(p)) else {
        let prefix = if repo.subfolder.is_empty() { String::new() } else { format!("{}/", repo.subfolder) };
        let here: Vec<&str> = listing
            .iter()
            .filter_map(|f| f.strip_prefix(prefix.as_str()))
            .filter(|f| {
                !f.contains('/') && [".safetensors", ".bin", ".ckpt", ".pt", ".pth"].iter().any(|e| f.ends_with(e))
            })
            .collect();
        let mut found = if here.is_empty() {
            String::new()
        } else {
            format!(
                "; weights files there: {} (pickles such as .bin are refused; a single .safetensors file \
                 can be downloaded and passed as --weights FILE)",
                here.join(", ")
            )
        };
        // A pipeline repo (Qwen/Qwen-Image, black-forest-labs/FLUX.2-dev)
        // named without its VAE's folder.
        if repo.subfolder.is_empty() && DIFFUSERS_FILES.iter().any(|f| has(&format!("vae/{f}"))) {
            found.push_str(&format!("; its VAE is in vae/: use {}/vae", repo.id));
        }
        let folder =
            if repo.subfolder.is_empty() { "the repo's root".to_owned() } else { format!("{}/", repo.subfolder) };
        return Err(HubError::NoWeights { repo: repo.to_string(), folder, found });
    };
    let config = repo.path_in_repo(CONFIG_FILE);
    Ok(if has(&config) { vec![config, weights] } else { vec![weights] })
}

/// Checks a downloaded file against the Hub's metadata: its size; for LFS files
/// (whose etag is their SHA-256), its SHA-256; for safetensors, its header.
fn check(path: &Path, meta: &Metadata) -> Result<(), String> {
    let size = fs::metadata(path).map_err(|e| e.to_string())?.len();
    if size != meta.size {
        return Err(format!("{size} bytes, where the Hub has {}", meta.size));
    }
    let etag = meta.etag.as_str();
    if etag.len() == 64 && etag.chars().all(|c| c.is_ascii_hexdigit()) {
        let mut hasher = Sha256::new();
        let mut file = File::open(path).map_err(|e| e.to_string())?;
        std::io::copy(&mut file, &mut hasher).map_err(|e| e.to_string())?;
        let sha256: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
        if !sha256.eq_ignore_ascii_case(etag) {
            return Err(format!("SHA-256 {sha256} does not match the Hub's {etag}"));
        }
    }
    if path.extension().is_some_and(|e| e == "safetensors") {
        check_safetensors(path).map_err(|e| format!("not loadable ({e})"))?;
    }
    Ok(())
}

/// A readable safetensors header whose tensors lie within the file (the
/// weights loader checks the rest when the file is used).
fn check_safetensors(path: &Path) -> Result<(), String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    // SAFETY: the map is only read, while this function runs, of a file in
    // the cache that this process just wrote and checked.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| e.to_string())?;
    safetensors::SafeTensors::read_metadata(&map).map(|_| ()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp32_weights_preferred_and_pickles_never_taken() {
        let repo = HubRepo::parse("org/name/vae", None).unwrap();
        let listing: Vec<String> = [
            "vae/config.json",
            "vae/diffusion_pytorch_model.bin",
            "vae/diffusion_pytorch_model.fp16.safetensors",
            "vae/diffusion_pytorch_model.safetensors",
        ]
        .map(String::from)
        .into();
        assert_eq!(
            choose_files(&repo, &listing).unwrap(),
            ["vae/config.json", "vae/diffusion_pytorch_model.safetensors"]
        );
        assert_eq!(
            choose_files(&repo, &listing[..3]).unwrap(),
            ["vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors"]
        );
        let err = choose_files(&repo, &listing[..2]).unwrap_err().to_string();
        assert!(err.contains("in vae/; weights files there: diffusion_pytorch_model.bin (pickles"), "{err}");
    }

    #[test]
    fn a_pipeline_repo_named_without_its_vae_folder_is_pointed_to_it() {
        // black-forest-labs/FLUX.2-dev: BFL's ae.safetensors at the root, the diffusers VAE in vae/.
        let listing: Vec<String> = [
            "ae.safetensors",
            "flux2-dev.safetensors",
            "model_index.json",
            "vae/config.json",
            "vae/diffusion_pytorch_model.safetensors",
        ]
        .map(String::from)
        .into();
        let root = HubRepo::parse("black-forest-labs/FLUX.2-dev", None).unwrap();
        let err = choose_files(&root, &listing).unwrap_err().to_string();
        assert!(err.contains("weights files there: ae.safetensors, flux2-dev.safetensors"), "{err}");
        assert!(err.ends_with("; its VAE is in vae/: use black-forest-labs/FLUX.2-dev/vae"), "{err}");
        let vae = HubRepo::parse("black-forest-labs/FLUX.2-dev/vae", None).unwrap();
        assert_eq!(
            choose_files(&vae, &listing).unwrap(),
            ["vae/config.json", "vae/diffusion_pytorch_model.safetensors"]
        );
    }
}
