//! Weights by repo id from the Hugging Face Hub (`stabilityai/sd-vae-ft-mse`,
//! `stabilityai/stable-diffusion-xl-base-1.0/vae`), through the cache that
//! diffusers and huggingface_hub share: a model either of them downloaded is
//! found here offline, and one downloaded here is theirs too.
//!
//! The cache, as huggingface_hub lays it out (`cache.rs`): `models--ORG--NAME/refs/REVISION`
//! holds a commit hash, and `snapshots/COMMIT/PATH` links to `blobs/ETAG`. A repo
//! resolves to its folder `snapshots/COMMIT[/SUBFOLDER]`, which the weights
//! module then reads as any local diffusers folder.
//!
//! The client is our own, on ureq (`http.rs`, the `hub` feature): timeouts on
//! every request, the token only to the endpoint, downloads bounded by the size
//! the Hub announces. Every file is then checked (`online.rs`: size, SHA-256
//! for LFS files, safetensors header). Without the feature a repo resolves to
//! what the cache already holds, and nothing is downloaded.
//!
//! The library prints nothing: a caller that wants to show downloads gives
//! the [`Hub`] a [`Progress`] (the CLI draws a bar with it).

#[cfg(feature = "hub")]
mod answer;
mod cache;
#[cfg(feature = "hub")]
mod http;
#[cfg(feature = "hub")]
mod online;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[cfg(feature = "hub")]
pub use answer::{AnswerError, RepoInfo, parse_repo_info};
use cache::RepoCache;

/// The weights file of a diffusers model folder, fp32 preferred: what a
/// repo's folder is searched for, here and by [`crate::weights`].
pub const DIFFUSERS_FILES: [&str; 2] =
    ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"];

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// What went wrong with a Hub repo; `repo` is its display form (`org/name[/subfolder]`,
/// and the revision unless `main`).
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("no folder for the Hugging Face cache (no home folder): set HF_HOME or HF_HUB_CACHE")]
    NoCache,
    #[error("HF_ENDPOINT {0:?} is not an http:// or https:// URL")]
    Endpoint(String),
    #[error("{var} {value:?} is not a number of seconds above 0")]
    Setting { var: &'static str, value: String },
    #[error(
        "{repo}: {file} is not in the Hugging Face cache ({}) and HF_HUB_OFFLINE is set; \
         download it once with network access: {command}",
        cache.display()
    )]
    NotCached { repo: String, file: String, cache: PathBuf, command: String },
    #[error(
        "{repo}: no such local file or folder, nor repo or revision on {endpoint} \
         (private and gated repos need HF_TOKEN)"
    )]
    NotFound { repo: String, endpoint: String },
    #[error("{repo}: {endpoint} denies access (a gated repo: accept its conditions on its page, then set HF_TOKEN)")]
    Denied { repo: String, endpoint: String },
    #[error("{repo}: no diffusers safetensors weights ({}) in {folder}{found}", DIFFUSERS_FILES.join(" or "))]
    NoWeights { repo: String, folder: String, found: String },
    /// `reason` names the URL and what went wrong there.
    #[error("{repo}: no such local file or folder; as a Hub repo, downloading from {endpoint} failed: {reason}")]
    Request { repo: String, endpoint: String, reason: String },
    #[error("{repo}: {endpoint} answered with an unusable {what} {value:?}")]
    BadAnswer { repo: String, endpoint: String, what: &'static str, value: String },
    #[error("{repo}: its files come from different commits ({0} and {1}): the repo changed meanwhile; run again", .commits.0, .commits.1)]
    Moved { repo: String, commits: (String, String) },
    #[error("{repo}: downloading {file} failed: {reason}")]
    Download { repo: String, file: String, reason: String },
    #[error("{repo}: another process is downloading {file} (it holds {}); run again when it is done", lock.display())]
    Busy { repo: String, file: String, lock: PathBuf },
    #[error("{repo}: {file} as downloaded: {reason}; removed it from the cache, run again to download it anew")]
    Corrupt { repo: String, file: String, reason: String },
    #[error(
        "{repo}: {file} is not in the Hugging Face cache ({}), and this build of vae has no Hub client \
         (the `hub` feature); download it into the cache with `{command}` or huggingface_hub",
        cache.display()
    )]
    NoClient { repo: String, file: String, cache: PathBuf, command: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// What a [`Hub`] reports while it downloads, for a caller to show: the
/// library itself prints nothing. One download at a time: `start`, any number
/// of `advance`, then `finish`, whether the download succeeded or not.
pub trait Progress: Send + Sync {
    /// `file` of `repo`, `size` bytes, begins to download.
    fn start(&self, repo: &HubRepo, file: &str, size: u64);
    /// `bytes` more arrived.
    fn advance(&self, bytes: u64);
    /// The download ended.
    fn finish(&self);
}

/// A model repo on the Hub, a folder in it, and a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRepo {
    /// `org/name`.
    pub id: String,
    /// A folder in the repo (`vae`), or empty for its root.
    pub subfolder: String,
    /// A branch, tag or commit hash.
    pub revision: String,
}

impl std::fmt::Display for HubRepo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.spec())?;
        if self.revision != "main" {
            write!(f, " (revision {})", self.revision)?;
        }
        Ok(())
    }
}

impl HubRepo {
    /// `org/name` or `org/name/sub/folder` at `revision` (default `main`), or
    /// `None` for a string that cannot be one (a local path, then). A last part
    /// with a weights extension (`x/model.safetensors`) is taken as a path.
    pub fn parse(spec: &str, revision: Option<&str>) -> Option<Self> {
        let parts: Vec<&str> = spec.split('/').collect();
        let [org, name, subfolder @ ..] = parts.as_slice() else { return None };
        let last = parts.last().copied().unwrap_or_default();
        let weights_file = Path::new(last)
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| ["safetensors", "ckpt", "pt", "pth", "bin"].contains(&e.to_ascii_lowercase().as_str()));
        if weights_file || !parts.iter().all(|p| is_name(p)) {
            return None;
        }
        Some(Self {
            id: format!("{org}/{name}"),
            subfolder: subfolder.join("/"),
            revision: revision.unwrap_or("main").to_owned(),
        })
    }

    /// `org/name[/subfolder]`, as given.
    fn spec(&self) -> String {
        join(&[&self.id, &self.subfolder])
    }

    /// `file`'s path in the repo: in the subfolder.
    fn path_in_repo(&self, file: &str) -> String {
        join(&[&self.subfolder, file])
    }
}

/// The non-empty `parts`, joined by `/`.
fn join(parts: &[&str]) -> String {
    parts.iter().filter(|p| !p.is_empty()).copied().collect::<Vec<_>>().join("/")
}

/// A part of a repo id, or a folder in a repo, as the Hub allows them:
/// letters, digits, `-`, `_` and `.`, neither first nor last a `-` or `.`,
/// no `--` or `..`.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 96
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
        && !s.contains("--")
        && !s.contains("..")
}

/// `--revision`: a branch, tag or commit hash. Refuses what could leave the
/// cache folder (`refs/REVISION` is a path) or break the URL.
pub fn parse_revision(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        && s.split('/').all(|p| !p.is_empty() && p != "." && p != "..");
    if ok { Ok(s.to_owned()) } else { Err(format!("{s:?} is not a branch, tag or commit name")) }
}

/// How to reach the Hub and its cache, from the environment as huggingface_hub
/// reads it.
#[derive(Clone)]
pub struct Hub {
    /// `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`
    /// (`$XDG_CACHE_HOME/huggingface/hub` when that is set); `None` without a home.
    cache: Option<PathBuf>,
    /// `$HF_ENDPOINT`, else `https://huggingface.co`.
    endpoint: String,
    /// `$HF_HUB_OFFLINE`: the cache only, no network at all.
    offline: bool,
    /// `$HF_TOKEN`, else the `token` file of `$HF_HOME` (what `hf auth login` writes).
    token: Option<String>,
    /// `$HF_HUB_ETAG_TIMEOUT` (descriptions and metadata) and
    /// `$HF_HUB_DOWNLOAD_TIMEOUT` (downloads): the longest wait to connect and
    /// for each read, 10 s each by default; or the variable that is not a time.
    #[cfg(feature = "hub")]
    timeouts: online::Timeouts,
    /// Told of each download; none by default.
    progress: Option<Arc<dyn Progress>>,
}

/// Everything but the token, which is a secret.
impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("cache", &self.cache)
            .field("endpoint", &self.endpoint)
            .field("offline", &self.offline)
            .field("token", &self.token.as_ref().map(|_| "(set)"))
            .field("progress", &self.progress.is_some())
            .finish_non_exhaustive()
    }
}

impl Hub {
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let home = var("HF_HOME")
            .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("huggingface")))
            .or_else(|| std::env::home_dir().map(|h| h.join(".cache").join("huggingface")));
        let cache = var("HF_HUB_CACHE").or_else(|| home.as_ref().map(|h| h.join("hub")));
        let token = std::env::var("HF_TOKEN")
            .ok()
            .or_else(|| home.and_then(|h| fs::read_to_string(h.join("token")).ok()))
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty());
        let endpoint = std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty());
        let endpoint = endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT).trim_end_matches('/').to_owned();
        let offline = std::env::var("HF_HUB_OFFLINE")
            .is_ok_and(|v| ["1", "ON", "YES", "TRUE"].contains(&v.trim().to_ascii_uppercase().as_str()));
        let cache = cache.map(|c| std::path::absolute(&c).unwrap_or(c));
        Self {
            cache,
            endpoint,
            offline,
            token,
            #[cfg(feature = "hub")]
            timeouts: online::timeouts_from_env(),
            progress: None,
        }
    }

    /// Tells `progress` of each download (the default is to tell no one).
    pub fn progress(self, progress: Arc<dyn Progress>) -> Self {
        Self { progress: Some(progress), ..self }
    }

    /// The local folder of `repo`: its cached snapshot, else (online) a fresh
    /// download of its weights, checked.
    pub fn resolve(&self, repo: &HubRepo) -> Result<PathBuf, HubError> {
        match self.cached(repo)? {
            Some(folder) => Ok(folder),
            None => self.fetch(repo),
        }
    }

    /// Asks the Hub for `repo`'s latest commit at its revision, downloads its
    /// `config.json` and weights into the cache unless they are there, checks
    /// them all, and returns the folder. Offline, or built without the `hub`
    /// feature: the cached folder, or an error that says how to fill the cache.
    pub fn fetch(&self, repo: &HubRepo) -> Result<PathBuf, HubError> {
        #[cfg(feature = "hub")]
        if !self.offline {
            return self.download_snapshot(repo);
        }
        if let Some(folder) = self.cached(repo)? {
            return Ok(folder);
        }
        let (repo, file, command) = (repo.to_string(), repo.path_in_repo(DIFFUSERS_FILES[0]), fetch_command(repo));
        let cache = self.cache.clone().unwrap_or_default();
        Err(if self.offline {
            HubError::NotCached { repo, file, cache, command }
        } else {
            HubError::NoClient { repo, file, cache, command }
        })
    }

    /// The snapshot folder of `repo` when the cache holds its weights; no network.
    pub fn cached(&self, repo: &HubRepo) -> Result<Option<PathBuf>, HubError> {
        let cache = RepoCache::new(self.cache()?, &repo.id);
        let commit = match cache.read_ref(&repo.revision) {
            Some(commit) => commit,
            // A commit hash needs no ref (huggingface_hub writes none for one).
            None if repo.revision.len() == 40 && repo.revision.chars().all(|c| c.is_ascii_hexdigit()) => {
                repo.revision.clone()
            }
            None => return Ok(None),
        };
        if !is_name(&commit) {
            return Ok(None);
        }
        let folder = in_subfolder(cache.snapshot(&commit), &repo.subfolder);
        Ok(DIFFUSERS_FILES.iter().any(|f| folder.join(f).is_file()).then_some(folder))
    }

    fn cache(&self) -> Result<&Path, HubError> {
        self.cache.as_deref().ok_or(HubError::NoCache)
    }
}

fn in_subfolder(dir: PathBuf, subfolder: &str) -> PathBuf {
    if subfolder.is_empty() { dir } else { dir.join(subfolder) }
}

fn fetch_command(repo: &HubRepo) -> String {
    let revision = if repo.revision == "main" { String::new() } else { format!(" --revision {}", repo.revision) };
    format!("vae fetch {}{revision}", repo.spec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_and_paths() {
        let repo = HubRepo::parse("stabilityai/sd-vae-ft-mse", None).unwrap();
        assert_eq!(
            (repo.id.as_str(), repo.subfolder.as_str(), repo.revision.as_str()),
            ("stabilityai/sd-vae-ft-mse", "", "main")
        );
        let repo = HubRepo::parse("stabilityai/stable-diffusion-xl-base-1.0/vae", Some("v1")).unwrap();
        assert_eq!((repo.id.as_str(), repo.subfolder.as_str()), ("stabilityai/stable-diffusion-xl-base-1.0", "vae"));
        assert_eq!(repo.path_in_repo("config.json"), "vae/config.json");
        assert_eq!(repo.to_string(), "stabilityai/stable-diffusion-xl-base-1.0/vae (revision v1)");
        assert_eq!(fetch_command(&repo), "vae fetch stabilityai/stable-diffusion-xl-base-1.0/vae --revision v1");
        for path in [
            "weights",
            "./weights/x",
            "/abs/path",
            "../up/x",
            "a//b",
            "a/b/",
            "C:\\w\\x",
            "~/w/x",
            "weights/vae.safetensors",
            "x/model.ckpt",
            "a--b/c",
            "org/na me",
        ] {
            assert_eq!(HubRepo::parse(path, None), None, "{path}");
        }
    }

    #[test]
    fn debug_output_keeps_the_token_secret() {
        let hub = Hub { token: Some("hf_secret_token".to_owned()), ..Hub::from_env() };
        let text = format!("{hub:?}");
        assert!(!text.contains("hf_secret_token") && text.contains("token: Some(\"(set)\")"), "{text}");
    }

    #[test]
    fn revisions_stay_in_the_cache() {
        assert!(parse_revision("main").is_ok());
        assert!(parse_revision("refs/pr/3").is_ok());
        assert!(parse_revision("0123456789abcdef0123456789abcdef01234567").is_ok());
        for bad in ["", "../x", "a/../../b", "/abs", "a b", "x/"] {
            assert!(parse_revision(bad).is_err(), "{bad}");
        }
    }
}
