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
//! The client is our own, on ureq (`http.rs`): timeouts on every request, the
//! token only to the endpoint, downloads bounded by the size the Hub announces.
//! Every file is then checked here (size, SHA-256 for LFS files, safetensors header).

mod answer;
mod cache;
mod http;

use std::fs::{self, File};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use url::Url;

use self::http::{Client, HttpError, Metadata, Timeout};
pub use answer::{AnswerError, RepoInfo, parse_repo_info};
use cache::RepoCache;

use crate::weights::{DIFFUSERS_FILES, TensorFile};

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
const CONFIG_FILE: &str = "config.json";
/// huggingface_hub's variables for its timeouts, in seconds, and their default.
const ETAG_TIMEOUT: &str = "HF_HUB_ETAG_TIMEOUT";
const DOWNLOAD_TIMEOUT: &str = "HF_HUB_DOWNLOAD_TIMEOUT";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for another process downloading the same file.
const LOCK_WAIT: Duration = Duration::from_secs(10);

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
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
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
#[derive(Debug, Clone)]
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
    timeouts: Result<(Timeout, Timeout), (&'static str, String)>,
    /// Say on stderr what is downloaded, with a progress bar on a terminal.
    verbose: bool,
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
        let timeouts = timeout_from_env(ETAG_TIMEOUT).and_then(|e| Ok((e, timeout_from_env(DOWNLOAD_TIMEOUT)?)));
        let cache = cache.map(|c| std::path::absolute(&c).unwrap_or(c));
        Self { cache, endpoint, offline, token, timeouts, verbose: true }
    }

    /// Whether to say on stderr what is downloaded, with a progress bar on a
    /// terminal (the default), or to stay silent.
    pub fn verbose(self, verbose: bool) -> Self {
        Self { verbose, ..self }
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
    /// them all, and returns the folder. Offline: the cached folder, or an error.
    pub fn fetch(&self, repo: &HubRepo) -> Result<PathBuf, HubError> {
        if self.offline {
            return self.cached(repo)?.ok_or_else(|| HubError::NotCached {
                repo: repo.to_string(),
                file: repo.path_in_repo(DIFFUSERS_FILES[0]),
                cache: self.cache.clone().unwrap_or_default(),
                command: fetch_command(repo),
            });
        }
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
            let meta = client.metadata(url(format!("{}/resolve/{revision}/{file}", repo.id))?).map_err(request)?;
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
        if self.verbose {
            eprintln!("downloading {}/{file} ({})", repo.id, indicatif::HumanBytes(meta.size));
        }
        let part = cache.incomplete(&meta.etag);
        let bar = Bar::new(self.verbose, meta.size, file);
        let result = client.download(&meta.download, &part, meta.size, &mut |n| bar.inc(n));
        bar.finish();
        result.map_err(|e| match e {
            HttpError::Io { path, source } => HubError::Io { path, source },
            other => HubError::Download { repo: repo.to_string(), file: file.to_owned(), reason: other.to_string() },
        })?;
        fs::rename(&part, &blob).map_err(io(&blob))
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

fn in_subfolder(dir: PathBuf, subfolder: &str) -> PathBuf {
    if subfolder.is_empty() { dir } else { dir.join(subfolder) }
}

fn fetch_command(repo: &HubRepo) -> String {
    let revision = if repo.revision == "main" { String::new() } else { format!(" --revision {}", repo.revision) };
    format!("vae fetch {}{revision}", repo.spec())
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
        let found = if here.is_empty() {
            String::new()
        } else {
            format!(
                "; weights files there: {} (pickles such as .bin are refused; a single .safetensors file \
                 can be downloaded and passed as --weights FILE)",
                here.join(", ")
            )
        };
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
        TensorFile::open(path).map_err(|e| format!("not loadable ({e})"))?;
    }
    Ok(())
}

/// A download's progress as an indicatif bar on stderr, drawn only on a terminal.
struct Bar(Option<indicatif::ProgressBar>);

impl Bar {
    fn new(verbose: bool, size: u64, file: &str) -> Self {
        let draw = verbose && std::io::stderr().is_terminal();
        Self(draw.then(|| {
            let style = indicatif::ProgressStyle::with_template(
                "{msg} {bar:30} {bytes}/{total_bytes}, {bytes_per_sec} (eta {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            indicatif::ProgressBar::new(size).with_style(style).with_message(file.to_owned())
        }))
    }

    fn inc(&self, bytes: u64) {
        if let Some(bar) = &self.0 {
            bar.inc(bytes);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
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
    fn revisions_stay_in_the_cache() {
        assert!(parse_revision("main").is_ok());
        assert!(parse_revision("refs/pr/3").is_ok());
        assert!(parse_revision("0123456789abcdef0123456789abcdef01234567").is_ok());
        for bad in ["", "../x", "a/../../b", "/abs", "a b", "x/"] {
            assert!(parse_revision(bad).is_err(), "{bad}");
        }
    }

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
}
