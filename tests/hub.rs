//! Weights from the Hugging Face Hub without the internet: a stand-in for the
//! Hub on 127.0.0.1 (tiny_http) answers the requests `vae`'s Hub client sends,
//! as huggingface.co answers them:
//!
//! - `GET /api/models/ORG/NAME/revision/REV`: JSON with the commit (`sha`) and
//!   the file list (`siblings[].rfilename`);
//! - `GET /ORG/NAME/resolve/REV/PATH` with `Range: bytes=0-0` (metadata) and
//!   `bytes=0-` (download): a small file is served there with its `ETag` (a git
//!   hash) and `X-Repo-Commit`; an LFS file is a 302 to a CDN URL with
//!   `X-Linked-Etag` (its SHA-256), `X-Linked-Size` and `X-Repo-Commit`;
//! - the CDN URL answers ranges with 206 and `Content-Range: bytes A-B/SIZE`,
//!   from which a client without `X-Linked-Size` reads the size.
//!
//! It can also misbehave (`Trick`): a redirect without `Location`, a redirect
//! loop, a body longer than announced, a download that stalls; and its CDN can
//! be a second server on another port, to see which headers reach it.
//!
//! `HF_HOME` is a temporary folder, so the files land in a fresh standard cache.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{fixtures, stderr, stdout};
use sha2::{Digest, Sha256};
use vae::latent::Latent;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A file of a repo: its bytes, whether the Hub keeps it in LFS, and, to play a
/// broken CDN, bytes served in place of the right ones and a misbehaviour.
#[derive(Clone)]
struct File {
    bytes: Vec<u8>,
    lfs: bool,
    served: Option<Vec<u8>>,
    trick: Trick,
}

/// How the stand-in misbehaves for a file.
#[derive(Clone, Default)]
enum Trick {
    #[default]
    None,
    /// Its resolve URL answers 302 with the LFS headers but no `Location`.
    NoLocation,
    /// Its resolve URL redirects to itself.
    Loop,
    /// The CDN's downloads send `served` without announcing a length (chunked).
    Unannounced,
    /// The CDN's next N downloads send half the bytes, then nothing, without closing.
    Stall(Arc<AtomicUsize>),
    /// A gated repo's file: its resolve URL answers 401 to a request without a token.
    Gated,
}

/// A request as the stand-in saw it.
#[derive(Clone, Debug)]
struct Seen {
    url: String,
    range: Option<String>,
    authorization: Option<String>,
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// tiny_sd's config.json and weights, under `folder` of the repo.
fn tiny_sd_repo(folder: &str, weights_name: &str, weights_fixture: &str) -> BTreeMap<String, File> {
    let path = |f: &str| if folder.is_empty() { f.to_owned() } else { format!("{folder}/{f}") };
    let config = std::fs::read(fixtures().join("weights/tiny_sd/config.json")).unwrap();
    let weights = std::fs::read(fixtures().join("weights").join(weights_fixture)).unwrap();
    BTreeMap::from([
        (path("config.json"), File { bytes: config, lfs: false, served: None, trick: Trick::None }),
        (path(weights_name), File { bytes: weights, lfs: true, served: None, trick: Trick::None }),
        // Listed, and never to be asked for: pickles are refused.
        (
            path("diffusion_pytorch_model.bin"),
            File { bytes: b"pickle".to_vec(), lfs: true, served: None, trick: Trick::None },
        ),
    ])
}

/// The stand-in Hub: repos by id, and every request it answered.
struct FakeHub {
    url: String,
    /// Dropped on stop, which closes the port.
    server: Mutex<Option<Arc<tiny_http::Server>>>,
    requests: Arc<Mutex<Vec<Seen>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Set on stop: stalled answers end.
    stopped: Arc<AtomicBool>,
}

type Repos = BTreeMap<&'static str, BTreeMap<String, File>>;

impl FakeHub {
    fn start(repos: Repos) -> Self {
        Self::start_with_cdn(repos, None)
    }

    /// A Hub whose LFS redirects go to `cdn` (another server's URL), or to itself.
    fn start_with_cdn(repos: Repos, cdn: Option<&str>) -> Self {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let url = format!("http://{}", server.server_addr().to_ip().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stopped = Arc::new(AtomicBool::new(false));
        let repos = Arc::new(repos);
        let (srv, log, cdn, stop) =
            (server.clone(), requests.clone(), cdn.unwrap_or(url.as_str()).to_owned(), stopped.clone());
        let thread = std::thread::spawn(move || {
            for request in srv.incoming_requests() {
                let get = |name: &'static str| {
                    request.headers().iter().find(|h| h.field.equiv(name)).map(|h| h.value.to_string())
                };
                let seen =
                    Seen { url: request.url().to_owned(), range: get("Range"), authorization: get("Authorization") };
                log.lock().unwrap().push(seen);
                // One thread per answer: a stalled one holds up no other.
                let (repos, cdn, stop) = (repos.clone(), cdn.clone(), stop.clone());
                std::thread::spawn(move || {
                    let response = answer(&repos, &cdn, &request, &stop);
                    let _ = request.respond(response);
                });
            }
        });
        Self { url, server: Mutex::new(Some(server)), requests, thread: Mutex::new(Some(thread)), stopped }
    }

    fn requests(&self) -> Vec<String> {
        self.seen().into_iter().map(|s| s.url).collect()
    }

    fn seen(&self) -> Vec<Seen> {
        self.requests.lock().unwrap().clone()
    }

    /// Stops answering: the port is closed.
    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        if let Some(server) = self.server.lock().unwrap().take() {
            server.unblock();
        }
        if let Some(thread) = self.thread.lock().unwrap().take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop();
    }
}

type Response = tiny_http::ResponseBox;

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).unwrap()
}

/// Half of `bytes`, then nothing until `stopped`.
struct Stall {
    head: std::io::Cursor<Vec<u8>>,
    stopped: Arc<AtomicBool>,
}

impl Read for Stall {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.head.read(buf)?;
        while n == 0 && !self.stopped.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(n)
    }
}

fn answer(repos: &Repos, base: &str, request: &tiny_http::Request, stopped: &Arc<AtomicBool>) -> Response {
    let path = request.url().split('?').next().unwrap_or_default().to_owned();
    let not_found = || tiny_http::Response::from_string("Repository not found").with_status_code(404).boxed();
    let range = request.headers().iter().find(|h| h.field.equiv("Range")).map(|h| h.value.to_string());

    // The CDN: /cdn/SHA256, by content.
    if let Some(sha) = path.strip_prefix("/cdn/") {
        let Some(file) = repos.values().flat_map(|r| r.values()).find(|f| sha256(&f.bytes) == sha) else {
            return not_found();
        };
        let served = file.served.clone().unwrap_or_else(|| file.bytes.clone());
        match &file.trick {
            Trick::Unannounced if range.as_deref() != Some("bytes=0-0") => {
                let body = std::io::Cursor::new(served);
                return tiny_http::Response::new(200.into(), Vec::new(), body, None, None).boxed();
            }
            Trick::Stall(left) if range.as_deref() != Some("bytes=0-0") && left.load(Ordering::SeqCst) > 0 => {
                left.fetch_sub(1, Ordering::SeqCst);
                let len = served.len();
                let head = std::io::Cursor::new(served[..len / 2].to_vec());
                let body = Stall { head, stopped: stopped.clone() };
                return tiny_http::Response::new(200.into(), Vec::new(), body, Some(len), None).boxed();
            }
            _ => return ranged(served, range.as_deref()),
        }
    }
    // The API: /api/models/ORG/NAME/revision/REV.
    if let Some(rest) = path.strip_prefix("/api/models/") {
        let parts: Vec<&str> = rest.splitn(4, '/').collect();
        let (id, revision) = match parts.as_slice() {
            [org, name, "revision", rev] => (format!("{org}/{name}"), *rev),
            _ => return not_found(),
        };
        return match repos.get(id.as_str()) {
            Some(files) if revision == "main" || revision == COMMIT => {
                let siblings: Vec<_> = files.keys().map(|f| serde_json::json!({ "rfilename": f })).collect();
                let body = serde_json::json!({ "id": id, "sha": COMMIT, "siblings": siblings }).to_string();
                tiny_http::Response::from_string(body).with_header(header("Content-Type", "application/json")).boxed()
            }
            Some(_) => tiny_http::Response::from_string("Revision not found").with_status_code(404).boxed(),
            None => not_found(),
        };
    }
    // Files: /ORG/NAME/resolve/REV/PATH.
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    let [org, name, "resolve", revision, file_path] = parts.as_slice() else { return not_found() };
    let Some(file) = repos.get(format!("{org}/{name}").as_str()).and_then(|r| r.get(*file_path)) else {
        return not_found();
    };
    if *revision != "main" && *revision != COMMIT {
        return not_found();
    }
    let authorized = request.headers().iter().any(|h| h.field.equiv("Authorization"));
    if matches!(file.trick, Trick::Gated) && !authorized {
        return tiny_http::Response::from_string("Access to this model is restricted").with_status_code(401).boxed();
    }
    if let Trick::Loop = file.trick {
        let to_itself = format!("/{}", parts.join("/"));
        return tiny_http::Response::from_data(Vec::new())
            .with_status_code(302)
            .with_header(header("Location", &to_itself))
            .boxed();
    }
    if file.lfs {
        let sha = sha256(&file.bytes);
        let mut response = tiny_http::Response::from_data(Vec::new())
            .with_status_code(302)
            .with_header(header("X-Repo-Commit", COMMIT))
            .with_header(header("X-Linked-Etag", &format!("\"{sha}\"")))
            .with_header(header("X-Linked-Size", &file.bytes.len().to_string()));
        if !matches!(file.trick, Trick::NoLocation) {
            response = response.with_header(header("Location", &format!("{base}/cdn/{sha}")));
        }
        return response.boxed();
    }
    // A git hash for small files; a client only needs it as a blob name.
    let etag = &sha256(&file.bytes)[..40];
    ranged(file.bytes.clone(), range.as_deref())
        .with_header(header("ETag", &format!("\"{etag}\"")))
        .with_header(header("X-Repo-Commit", COMMIT))
}

/// `bytes` whole (200), or the part a `bytes=A-` / `bytes=A-B` range asks for (206).
fn ranged(bytes: Vec<u8>, range: Option<&str>) -> Response {
    let Some((start, end)) = range.and_then(|r| r.strip_prefix("bytes=")).and_then(|r| r.split_once('-')) else {
        return tiny_http::Response::from_data(bytes).boxed();
    };
    let len = bytes.len();
    let start: usize = start.parse().unwrap();
    let end: usize = if end.is_empty() { len - 1 } else { end.parse::<usize>().unwrap().min(len - 1) };
    tiny_http::Response::from_data(bytes[start..=end].to_vec())
        .with_status_code(206)
        .with_header(header("Content-Range", &format!("bytes {start}-{end}/{len}")))
        .boxed()
}

/// Runs `vae` in `dir` with a Hugging Face environment of its own: `env` set,
/// and nothing of the caller's (cache, endpoint, token, timeouts, proxies).
fn vae(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    command(dir, env, args).output().expect("the vae binary runs")
}

/// `vae` as above, killed and failed if it still runs after a minute: a hang
/// fails the test instead of stalling the suite.
fn vae_bounded(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = command(dir, env, args);
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("the vae binary runs");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("vae {args:?} still runs after 60 s: it hangs");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn command(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vae"));
    command.args(args).current_dir(dir).env_remove("VAE_WEIGHTS");
    for var in [
        "HF_HOME",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_ENDPOINT",
        "HF_HUB_OFFLINE",
        "HF_TOKEN",
        "HF_HUB_ETAG_TIMEOUT",
        "HF_HUB_DOWNLOAD_TIMEOUT",
    ] {
        command.env_remove(var);
    }
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    command
}

/// One error line that names `what` and says `problem`; exit code 1, no panic.
fn assert_fails(out: &Output, what: &str, problem: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "exit code; stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("vae: error:")).collect();
    assert_eq!(lines.len(), 1, "one error line: {err}");
    assert!(lines[0].contains(what) && lines[0].contains(problem), "{what:?}, {problem:?}: {}", lines[0]);
}

fn photo(dir: &Path) {
    let img = image::open(fixtures().join("images/kodim03.png")).unwrap().to_rgb8();
    image::imageops::crop_imm(&img, 200, 100, 32, 24).to_image().save(dir.join("in.png")).unwrap();
}

/// Encodes in.png with `weights` into `out` and returns the latent.
fn encode(dir: &Path, env: &[(&str, &str)], weights: &str, out: &str) -> Latent {
    let output = vae(dir, env, &["encode", "in.png", "-o", out, "--weights", weights]);
    assert!(output.status.success(), "{weights}: {}", stderr(&output));
    Latent::read(&dir.join(out)).unwrap()
}

fn snapshot(hf_home: &Path, repo: &str) -> PathBuf {
    hf_home.join("hub").join(format!("models--{}", repo.replace('/', "--"))).join("snapshots").join(COMMIT)
}

#[test]
fn fetch_fills_the_standard_cache_and_encode_uses_it_offline() {
    let dir = tempfile::tempdir().unwrap();
    photo(dir.path());
    let hf_home = dir.path().join("hf");
    let hub = FakeHub::start(BTreeMap::from([(
        "test-org/tiny-vae",
        tiny_sd_repo("", "diffusion_pytorch_model.safetensors", "tiny_sd/diffusion_pytorch_model.safetensors"),
    )]));
    let home = hf_home.to_str().unwrap();
    let online = [("HF_HOME", home), ("HF_ENDPOINT", hub.url.as_str())];

    let out = vae(dir.path(), &online, &["fetch", "test-org/tiny-vae"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let folder = snapshot(&hf_home, "test-org/tiny-vae");
    assert_eq!(stdout(&out).trim(), folder.to_str().unwrap());
    assert!(stderr(&out).contains("downloading test-org/tiny-vae/diffusion_pytorch_model.safetensors"));
    assert!(hub.requests().iter().all(|r| !r.ends_with(".bin")), "asked for a pickle: {:?}", hub.requests());

    // The layout huggingface_hub reads: refs/main, snapshot links into blobs/.
    let repo_dir = hf_home.join("hub/models--test-org--tiny-vae");
    assert_eq!(std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(), COMMIT);
    let weights = std::fs::read(fixtures().join("weights/tiny_sd/diffusion_pytorch_model.safetensors")).unwrap();
    let blob = repo_dir.join("blobs").join(sha256(&weights));
    assert_eq!(std::fs::read(&blob).unwrap(), weights);
    let link = folder.join("diffusion_pytorch_model.safetensors");
    assert_eq!(std::fs::canonicalize(&link).unwrap(), std::fs::canonicalize(&blob).unwrap());
    assert!(folder.join("config.json").is_file());

    // By repo id: the latent of the local folder, from the cache, with no request.
    let asked = hub.requests().len();
    let by_id = encode(dir.path(), &online, "test-org/tiny-vae", "id.safetensors");
    assert_eq!(hub.requests().len(), asked, "a cached repo needs no network");
    let local = encode(dir.path(), &[], fixtures().join("weights/tiny_sd").to_str().unwrap(), "local.safetensors");
    assert_eq!(by_id.data, local.data);
    assert_eq!(by_id.meta, local.meta);

    // Offline with the Hub gone: the cached repo still works, fetch just says where it is.
    hub.stop();
    let offline = [("HF_HOME", home), ("HF_ENDPOINT", online[1].1), ("HF_HUB_OFFLINE", "1")];
    let again = encode(dir.path(), &offline, "test-org/tiny-vae", "offline.safetensors");
    assert_eq!(again.data, local.data);
    let out = vae(dir.path(), &offline, &["fetch", "test-org/tiny-vae"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), folder.to_str().unwrap());

    // Offline, a repo that is not cached: one clear line naming the repo and file.
    let out = vae(dir.path(), &offline, &["encode", "in.png", "--weights", "test-org/elsewhere"]);
    assert_fails(&out, "test-org/elsewhere", "diffusion_pytorch_model.safetensors is not in the Hugging Face cache");
    assert!(stderr(&out).contains("HF_HUB_OFFLINE"), "{}", stderr(&out));
    assert!(!dir.path().join("in.safetensors").exists());
}

#[test]
fn a_subfolder_with_only_fp16_weights_downloads_on_first_use() {
    let dir = tempfile::tempdir().unwrap();
    photo(dir.path());
    let hf_home = dir.path().join("hf");
    let hub = FakeHub::start(BTreeMap::from([(
        "test-org/pipeline",
        tiny_sd_repo("vae", "diffusion_pytorch_model.fp16.safetensors", "tiny_sd_f16.safetensors"),
    )]));
    let env = [("HF_HOME", hf_home.to_str().unwrap()), ("HF_ENDPOINT", hub.url.as_str())];
    let by_id = encode(dir.path(), &env, "test-org/pipeline/vae", "id.safetensors");
    let local =
        encode(dir.path(), &[], fixtures().join("weights/tiny_sd_f16.safetensors").to_str().unwrap(), "l.safetensors");
    assert_eq!(by_id.data, local.data);
    let folder = snapshot(&hf_home, "test-org/pipeline").join("vae");
    assert!(folder.join("diffusion_pytorch_model.fp16.safetensors").is_file());
    assert!(folder.join("config.json").is_file());
    // A commit hash as --revision; a revision the repo lacks.
    let out = vae(dir.path(), &env, &["fetch", "test-org/pipeline/vae", "--revision", COMMIT, "-q"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!((stdout(&out).trim(), stderr(&out).as_str()), (folder.to_str().unwrap(), ""));
    let out = vae(dir.path(), &env, &["fetch", "test-org/pipeline/vae", "--revision", "v9"]);
    assert_fails(&out, "test-org/pipeline/vae (revision v9)", "nor repo or revision on http://127.0.0.1");
    hub.stop();
}

#[test]
fn a_corrupt_download_fails_its_check_and_leaves_nothing_usable() {
    let dir = tempfile::tempdir().unwrap();
    photo(dir.path());
    let hf_home = dir.path().join("hf");
    let mut files =
        tiny_sd_repo("", "diffusion_pytorch_model.safetensors", "tiny_sd/diffusion_pytorch_model.safetensors");
    let weights = files.get_mut("diffusion_pytorch_model.safetensors").unwrap();
    // One byte of tensor data flipped: same size, valid header, wrong SHA-256.
    let mut bad = weights.bytes.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    weights.served = Some(bad);
    let sha = sha256(&weights.bytes);
    let hub = FakeHub::start(BTreeMap::from([("test-org/corrupt", files)]));
    let env = [("HF_HOME", hf_home.to_str().unwrap()), ("HF_ENDPOINT", hub.url.as_str())];

    let out = vae(dir.path(), &env, &["fetch", "test-org/corrupt"]);
    assert_fails(&out, "diffusion_pytorch_model.safetensors", &format!("does not match the Hub's {sha}"));
    assert!(stderr(&out).contains("removed it from the cache"), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
    let repo_dir = hf_home.join("hub/models--test-org--corrupt");
    assert!(!repo_dir.join("blobs").join(&sha).exists());
    assert!(!snapshot(&hf_home, "test-org/corrupt").join("diffusion_pytorch_model.safetensors").exists());
    // Nothing for an offline run to pick up either.
    let offline = [env[0], env[1], ("HF_HUB_OFFLINE", "1")];
    let out = vae(dir.path(), &offline, &["encode", "in.png", "--weights", "test-org/corrupt"]);
    assert_fails(&out, "test-org/corrupt", "is not in the Hugging Face cache");
    hub.stop();
}

#[test]
fn unknown_repos_and_non_repos_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    photo(dir.path());
    let hub = FakeHub::start(BTreeMap::new());
    let hf_home = dir.path().join("hf");
    let env = [("HF_HOME", hf_home.to_str().unwrap()), ("HF_ENDPOINT", hub.url.as_str())];
    let out = vae(dir.path(), &env, &["fetch", "test-org/missing"]);
    assert_fails(&out, "test-org/missing", "nor repo or revision on http://127.0.0.1");
    let out = vae(dir.path(), &env, &["encode", "in.png", "--weights", "test-org/missing"]);
    assert_fails(&out, "test-org/missing", "no such local file or folder, nor repo");
    // Not a repo id: the local path's error, and no request.
    let asked = hub.requests().len();
    let out = vae(dir.path(), &env, &["encode", "in.png", "--weights", "weights/vae.safetensors"]);
    assert_fails(&out, "weights/vae.safetensors", "no such file or directory");
    let out = vae(dir.path(), &env, &["fetch", "./here"]);
    assert_fails(&out, "./here", "not a Hugging Face Hub repo id");
    assert_eq!(hub.requests().len(), asked);
    // --revision is for repos; a revision that could leave the cache is a usage error.
    let tiny_sd = fixtures().join("weights/tiny_sd");
    let out = vae(dir.path(), &env, &["encode", "in.png", "-w", tiny_sd.to_str().unwrap(), "--revision", "v1"]);
    assert_fails(&out, "tiny_sd", "--revision is for Hub repos");
    let out = vae(dir.path(), &env, &["fetch", "test-org/x", "--revision", "../../etc"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    hub.stop();
    // The Hub unreachable: the error says so.
    let out = vae(dir.path(), &env, &["fetch", "test-org/missing"]);
    assert_fails(&out, "test-org/missing", "http://127.0.0.1");
}

/// A cache written by Python's huggingface_hub (diffusers' from_pretrained):
/// blobs named by etag, snapshot entries as relative symlinks, refs/main
/// holding the commit without a newline. Found offline, through HF_HUB_CACHE.
#[cfg(unix)]
#[test]
fn a_cache_written_by_huggingface_hub_is_found_offline() {
    let dir = tempfile::tempdir().unwrap();
    photo(dir.path());
    let cache = dir.path().join("elsewhere/hub-cache");
    let repo_dir = cache.join("models--stabilityai--stable-diffusion-xl-base-1.0");
    let snapshot = repo_dir.join("snapshots").join(COMMIT).join("vae");
    std::fs::create_dir_all(repo_dir.join("blobs")).unwrap();
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::write(repo_dir.join("refs/main"), COMMIT).unwrap();
    for (name, fixture) in
        [("config.json", "config.json"), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors")]
    {
        let bytes = std::fs::read(fixtures().join("weights/tiny_sd").join(fixture)).unwrap();
        let etag = if name.ends_with(".json") { sha256(&bytes)[..40].to_owned() } else { sha256(&bytes) };
        std::fs::write(repo_dir.join("blobs").join(&etag), bytes).unwrap();
        std::os::unix::fs::symlink(format!("../../../blobs/{etag}"), snapshot.join(name)).unwrap();
    }
    let cache = cache.to_str().unwrap();
    let env = [("HF_HUB_CACHE", cache), ("HF_HUB_OFFLINE", "1"), ("HF_ENDPOINT", "http://127.0.0.1:9")];
    let by_id = encode(dir.path(), &env, "stabilityai/stable-diffusion-xl-base-1.0/vae", "id.safetensors");
    let local = encode(dir.path(), &[], fixtures().join("weights/tiny_sd").to_str().unwrap(), "local.safetensors");
    assert_eq!(by_id.data, local.data);
    assert_eq!(by_id.meta, local.meta);
    // A commit hash needs no ref.
    let out = vae(
        dir.path(),
        &env,
        &[
            "encode",
            "in.png",
            "-o",
            "c.safetensors",
            "-w",
            "stabilityai/stable-diffusion-xl-base-1.0/vae",
            "--revision",
            COMMIT,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // Another folder of the same repo is not there.
    let out = vae(dir.path(), &env, &["encode", "in.png", "-w", "stabilityai/stable-diffusion-xl-base-1.0/vae_1_0"]);
    assert_fails(&out, "stable-diffusion-xl-base-1.0/vae_1_0", "vae_1_0/diffusion_pytorch_model.safetensors is not in");
}

/// A repo with tiny_sd's config and weights whose weights misbehave as `trick`.
fn tricky_repo(trick: Trick) -> BTreeMap<String, File> {
    let mut files =
        tiny_sd_repo("", "diffusion_pytorch_model.safetensors", "tiny_sd/diffusion_pytorch_model.safetensors");
    files.get_mut("diffusion_pytorch_model.safetensors").unwrap().trick = trick;
    files
}

/// Every file under `dir` with its size (links not followed).
fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for entry in entries {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push((path, meta.len()));
        }
    }
    found
}

#[test]
fn a_hub_that_never_answers_times_out() {
    let dir = tempfile::tempdir().unwrap();
    // Connections are accepted (by the kernel, into the backlog) and never answered.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let hf_home = dir.path().join("hf");
    let env =
        [("HF_HOME", hf_home.to_str().unwrap()), ("HF_ENDPOINT", endpoint.as_str()), ("HF_HUB_ETAG_TIMEOUT", "1")];
    let out = vae_bounded(dir.path(), &env, &["fetch", "test-org/silent"]);
    assert_fails(
        &out,
        "test-org/silent",
        &format!("{endpoint}/api/models/test-org/silent/revision/main: no answer for 1s"),
    );
    assert!(stderr(&out).contains("HF_HUB_ETAG_TIMEOUT"), "{}", stderr(&out));
    // A timeout that is not one: the variable named, before any request.
    let env = [env[0], env[1], ("HF_HUB_ETAG_TIMEOUT", "soon")];
    let out = vae_bounded(dir.path(), &env, &["fetch", "test-org/silent"]);
    assert_fails(&out, "HF_HUB_ETAG_TIMEOUT \"soon\"", "is not a number of seconds");
    drop(listener);
}

#[test]
fn a_stalled_download_times_out_keeps_its_part_out_of_the_cache_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let hf_home = dir.path().join("hf");
    let stalls = Arc::new(AtomicUsize::new(1));
    let hub = FakeHub::start(BTreeMap::from([("test-org/slow", tricky_repo(Trick::Stall(stalls.clone())))]));
    let env =
        [("HF_HOME", hf_home.to_str().unwrap()), ("HF_ENDPOINT", hub.url.as_str()), ("HF_HUB_DOWNLOAD_TIMEOUT", "1")];
    let out = vae_bounded(dir.path(), &env, &["fetch", "test-org/slow"]);
    assert_fails(&out, "downloading diffusion_pytorch_model.safetensors failed", "no answer for 1s");
    assert!(stderr(&out).contains("HF_HUB_DOWNLOAD_TIMEOUT"), "{}", stderr(&out));
    assert_eq!(stalls.load(Ordering::SeqCst), 0, "the download was asked for");
    let weights = hub_weights();
    let repo_dir = hf_home.join("hub/models--test-org--slow");
    let sha = sha256(&weights);
    // Nothing in the blob's or the snapshot's place; what arrived waits as .incomplete.
    assert!(!repo_dir.join("blobs").join(&sha).exists());
    assert!(!snapshot(&hf_home, "test-org/slow").join("diffusion_pytorch_model.safetensors").exists());
    let part = repo_dir.join("blobs").join(format!("{sha}.incomplete"));
    let kept = std::fs::metadata(&part).unwrap().len();
    assert!(kept <= weights.len() as u64 / 2, "{kept}");
    let offline = [env[0], env[1], ("HF_HUB_OFFLINE", "1")];
    let out = vae(dir.path(), &offline, &["fetch", "test-org/slow"]);
    assert_fails(&out, "test-org/slow", "is not in the Hugging Face cache");

    // The next run asks for the rest only, and the whole checks out.
    let out = vae_bounded(dir.path(), &env, &["fetch", "test-org/slow"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cdn: Vec<Seen> = hub.seen().into_iter().filter(|s| s.url.starts_with("/cdn/")).collect();
    assert_eq!(cdn.last().unwrap().range.as_deref(), Some(format!("bytes={kept}-").as_str()), "{cdn:?}");
    assert_eq!(std::fs::read(repo_dir.join("blobs").join(&sha)).unwrap(), weights);
    assert!(!part.exists());
    hub.stop();
}

#[test]
fn a_file_longer_than_announced_is_cut_off_and_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let hf_home = dir.path().join("hf");
    let mut files = tricky_repo(Trick::Unannounced);
    let weights = files.get_mut("diffusion_pytorch_model.safetensors").unwrap();
    let announced = weights.bytes.len() as u64;
    let sha = sha256(&weights.bytes);
    // The right bytes, then 32 MiB more, with no length announced.
    let mut long = weights.bytes.clone();
    long.resize(long.len() + (32 << 20), 0xAB);
    weights.served = Some(long);
    let hub = FakeHub::start(BTreeMap::from([("test-org/long", files)]));
    let env = [("HF_HOME", hf_home.to_str().unwrap()), ("HF_ENDPOINT", hub.url.as_str())];
    let out = vae_bounded(dir.path(), &env, &["fetch", "test-org/long"]);
    assert_fails(
        &out,
        "downloading diffusion_pytorch_model.safetensors failed",
        &format!("sent more than the {announced} bytes the Hub announced"),
    );
    // Nothing of it in the cache: no blob, no part, no link; no file ever over the announced size.
    let files = files_under(&hf_home);
    assert!(files.iter().all(|(_, size)| *size <= announced), "{files:?}");
    let weights_files: Vec<_> = files
        .iter()
        .filter(|(p, _)| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            [sha.clone(), format!("{sha}.incomplete"), "diffusion_pytorch_model.safetensors".into()].contains(&name)
        })
        .collect();
    assert!(weights_files.is_empty(), "{weights_files:?}");
    hub.stop();
}

fn hub_weights() -> Vec<u8> {
    std::fs::read(fixtures().join("weights/tiny_sd/diffusion_pytorch_model.safetensors")).unwrap()
}

#[test]
fn a_redirect_without_location_or_in_a_loop_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let hf_home = dir.path().join("hf");
    let hub = FakeHub::start(BTreeMap::from([
        ("test-org/nowhere", tricky_repo(Trick::NoLocation)),
        ("test-org/loop", tricky_repo(Trick::Loop)),
    ]));
    let env = [("HF_HOME", hf_home.to_str().unwrap()), ("HF_ENDPOINT", hub.url.as_str())];
    let out = vae_bounded(dir.path(), &env, &["fetch", "test-org/nowhere"]);
    assert_fails(&out, "test-org/nowhere", "answered a 302 redirect without a Location header");
    assert!(stderr(&out).contains("/test-org/nowhere/resolve/main/diffusion_pytorch_model.safetensors"));

    let out = vae_bounded(dir.path(), &env, &["fetch", "test-org/loop"]);
    assert_fails(&out, "test-org/loop", "more than 10 redirects");
    let hops = hub.requests().iter().filter(|r| r.starts_with("/test-org/loop/resolve/main/diffusion")).count();
    assert_eq!(hops, 11, "the first request and ten redirects");
    hub.stop();
}

#[test]
fn the_token_goes_to_the_endpoint_and_never_to_the_cdn() {
    let dir = tempfile::tempdir().unwrap();
    let hf_home = dir.path().join("hf");
    let repo =
        || tiny_sd_repo("", "diffusion_pytorch_model.safetensors", "tiny_sd/diffusion_pytorch_model.safetensors");
    // The CDN: another server, on another port, that knows the same files.
    let cdn = FakeHub::start(BTreeMap::from([("test-org/gated", repo())]));
    let hub = FakeHub::start_with_cdn(BTreeMap::from([("test-org/gated", repo())]), Some(&cdn.url));
    let env = [("HF_HOME", hf_home.to_str().unwrap()), ("HF_ENDPOINT", hub.url.as_str()), ("HF_TOKEN", "hf_secret")];
    let out = vae_bounded(dir.path(), &env, &["fetch", "test-org/gated"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (to_hub, to_cdn) = (hub.seen(), cdn.seen());
    assert!(!to_hub.is_empty() && !to_cdn.is_empty(), "{to_hub:?} {to_cdn:?}");
    assert!(to_hub.iter().all(|s| s.authorization.as_deref() == Some("Bearer hf_secret")), "{to_hub:?}");
    assert!(to_cdn.iter().all(|s| s.authorization.is_none()), "the token went to the CDN: {to_cdn:?}");
    let blob = hf_home.join("hub/models--test-org--gated/blobs").join(sha256(&hub_weights()));
    assert_eq!(std::fs::read(blob).unwrap(), hub_weights());
    hub.stop();
    cdn.stop();
}

/// A repo's file: `bytes`, kept in LFS when `lfs`, as `trick` says.
fn file(bytes: Vec<u8>, lfs: bool, trick: Trick) -> File {
    File { bytes, lfs, served: None, trick }
}

/// A pipeline repo laid out as the Hub has it: its VAE, a family fixture
/// (`families/{fixture}`: config.json and weights), in `vae/`, beside
/// `others` (other models' files, which must never be asked for), all gated
/// where `gated`.
fn pipeline_repo(fixture: &str, weights: &str, others: &[&str], gated: bool) -> BTreeMap<String, File> {
    let trick = || if gated { Trick::Gated } else { Trick::None };
    let families = fixtures().join("families");
    let read = |path: &str| std::fs::read(families.join(path)).unwrap();
    let mut files = BTreeMap::from([
        ("model_index.json".to_owned(), file(b"{}".to_vec(), false, trick())),
        ("vae/config.json".to_owned(), file(read(&format!("{fixture}/config.json")), false, trick())),
        ("vae/diffusion_pytorch_model.safetensors".to_owned(), file(read(weights), true, trick())),
    ]);
    for other in others {
        files.insert((*other).to_owned(), file(format!("not the VAE: {other}").into_bytes(), true, trick()));
    }
    files
}

/// The repos issue 20 names, as huggingface.co lays them out (checked
/// against their file listings): Qwen-Image's pipeline, FLUX.2-dev (gated:
/// a token), a Wan 2.1 and the Wan 2.2 Diffusers repo.
#[test]
fn the_families_hub_repos_load_their_vae_folders() {
    let dir = tempfile::tempdir().unwrap();
    let hf_home = dir.path().join("hf");
    let img = image::open(fixtures().join("images/kodim03.png")).unwrap().to_rgb8();
    image::imageops::crop_imm(&img, 200, 100, 32, 32).to_image().save(dir.path().join("in.png")).unwrap();
    let flux2_others =
        ["ae.safetensors", "flux2-dev.safetensors", "transformer/diffusion_pytorch_model-00001-of-00007.safetensors"];
    let qwen_others = [
        "transformer/diffusion_pytorch_model-00001-of-00009.safetensors",
        "text_encoder/model-00001-of-00004.safetensors",
    ];
    let wan_others =
        ["transformer/diffusion_pytorch_model.safetensors", "text_encoder/model-00001-of-00005.safetensors"];
    let mut flux2 =
        pipeline_repo("flux2/diffusers", "flux2/diffusers/diffusion_pytorch_model.safetensors", &flux2_others, true);
    // BFL's own file at the root is the same VAE, in their layout.
    flux2.get_mut("ae.safetensors").unwrap().bytes =
        std::fs::read(fixtures().join("families/flux2/ae.safetensors")).unwrap();
    let qwen_weights = "qwen/diffusers/diffusion_pytorch_model.safetensors";
    let repos = BTreeMap::from([
        ("Qwen/Qwen-Image", pipeline_repo("qwen/diffusers", qwen_weights, &qwen_others, false)),
        ("black-forest-labs/FLUX.2-dev", flux2),
        ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", pipeline_repo("wan/diffusers", qwen_weights, &wan_others, false)),
        (
            "Wan-AI/Wan2.2-TI2V-5B-Diffusers",
            pipeline_repo("wan22/diffusers", "wan22/diffusers/diffusion_pytorch_model.safetensors", &wan_others, false),
        ),
    ]);
    let hub = FakeHub::start(repos);
    let home = hf_home.to_str().unwrap();
    let env = [("HF_HOME", home), ("HF_ENDPOINT", hub.url.as_str())];
    let with_token = [env[0], env[1], ("HF_TOKEN", "hf_secret")];

    // Gated: without a token, one line that says what to do, and nothing kept.
    let out = vae(dir.path(), &env, &["fetch", "black-forest-labs/FLUX.2-dev/vae"]);
    assert_fails(&out, "black-forest-labs/FLUX.2-dev/vae", "denies access (a gated repo: accept its conditions");
    assert!(stderr(&out).contains("HF_TOKEN"), "{}", stderr(&out));
    // The pipeline's root is not a VAE folder: the error points to vae/.
    let out = vae(dir.path(), &with_token, &["fetch", "black-forest-labs/FLUX.2-dev"]);
    assert_fails(&out, "black-forest-labs/FLUX.2-dev", "its VAE is in vae/: use black-forest-labs/FLUX.2-dev/vae");

    let cases = [
        ("black-forest-labs/FLUX.2-dev", &with_token[..], "flux2/diffusers", "flux2"),
        ("Qwen/Qwen-Image", &env[..], "qwen/diffusers", "wan21"),
        ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", &env[..], "qwen/diffusers", "wan21"),
        ("Wan-AI/Wan2.2-TI2V-5B-Diffusers", &env[..], "wan22/diffusers", "wan22"),
    ];
    for (i, (repo, env, local, family)) in cases.into_iter().enumerate() {
        let by_id = encode(dir.path(), env, &format!("{repo}/vae"), &format!("id{i}.safetensors"));
        let local = fixtures().join("families").join(local);
        let local = encode(dir.path(), &[], local.to_str().unwrap(), &format!("local{i}.safetensors"));
        assert_eq!(by_id.data, local.data, "{repo}");
        assert_eq!(by_id.meta.family.map(|f| f.name()), Some(family), "{repo}");
        let folder = snapshot(&hf_home, repo).join("vae");
        assert!(folder.join("config.json").is_file() && folder.join("diffusion_pytorch_model.safetensors").is_file());
    }
    // Only the VAEs' files were asked for: no other model's weights.
    let asked = hub.requests();
    assert!(
        asked.iter().all(|r| !r.contains("transformer/")
            && !r.contains("text_encoder/")
            && !r.contains("ae.safetensors")
            && !r.contains("flux2-dev")),
        "{asked:?}"
    );
    hub.stop();
}
