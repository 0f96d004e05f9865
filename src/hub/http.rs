//! The Hub's HTTP side, on ureq 3 with every redirect followed here, one hop
//! at a time, so that each request's headers are ours: the token goes only to
//! the endpoint's own scheme, host and port, never to the CDN a download is
//! sent on to. Every request has connect and read timeouts (huggingface_hub's
//! `HF_HUB_ETAG_TIMEOUT` for descriptions and metadata, `HF_HUB_DOWNLOAD_TIMEOUT`
//! for downloads), and a download never writes more than the size the Hub
//! announced for the file.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ureq::http::Response;
use ureq::{Agent, Body};
use url::{Origin, Url};

use super::answer::{self, AnswerError, MAX_INFO_BYTES, RepoInfo};

/// The most redirects followed for one request (huggingface_hub's requests
/// session allows 30; the Hub uses one, to its CDN, and one more for a renamed repo).
pub const MAX_REDIRECTS: usize = 10;

/// A time limit and the variable that sets it, for the error that says how.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeout {
    pub limit: Duration,
    pub var: &'static str,
}

/// What went wrong with a request; each names the URL it was about.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16, from_endpoint: bool },
    #[error("{url}: no answer for {:?} ({var}: set it to wait longer)", .limit)]
    Timeout { url: String, limit: Duration, var: &'static str },
    #[error("{url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("{url} answered a {status} redirect without a Location header")]
    NoLocation { url: String, status: u16 },
    #[error("{url} redirects to {location:?}, which is not an http:// or https:// URL")]
    BadLocation { url: String, location: String },
    #[error("{url}: more than {MAX_REDIRECTS} redirects")]
    Redirects { url: String },
    #[error("{url} answered without a {header} header")]
    MissingHeader { url: String, header: &'static str },
    #[error("{url} answered with an unusable {header} header {value:?}")]
    BadHeader { url: String, header: &'static str, value: String },
    #[error("{url} answered {source}")]
    Answer { url: String, source: AnswerError },
    #[error("{url} sent more than the {size} bytes the Hub announced; stopped reading there")]
    TooLong { url: String, size: u64 },
    #[error("{url} announces {length} bytes from byte {start}, where the Hub announced {size} in all")]
    Length { url: String, start: u64, length: u64, size: u64 },
    #[error("{url}: the download ended after {got} of the {size} bytes the Hub announced")]
    TooShort { url: String, got: u64, size: u64 },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// What the Hub says of a file before it is downloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// The commit the revision points at (`X-Repo-Commit`).
    pub commit: String,
    /// Its blob name: the SHA-256 of an LFS file, the git hash of another.
    pub etag: String,
    /// Its size in bytes.
    pub size: u64,
    /// Where its bytes are: the CDN a resolve URL redirects to, or the resolve URL.
    pub download: Url,
}

/// The kind of a request, which picks its timeouts.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Metadata,
    Download,
}

/// A client for one endpoint.
pub struct Client {
    metadata: (Agent, Timeout),
    download: (Agent, Timeout),
    /// The endpoint's scheme, host and port: the only place the token goes.
    origin: Origin,
    token: Option<String>,
}

impl Client {
    pub fn new(endpoint: &Url, token: Option<String>, metadata: Timeout, download: Timeout) -> Self {
        Self {
            metadata: (agent(metadata.limit), metadata),
            download: (agent(download.limit), download),
            origin: endpoint.origin(),
            token,
        }
    }

    /// The description of a repo (`GET /api/models/ORG/NAME/revision/REV`).
    pub fn repo_info(&self, url: Url) -> Result<RepoInfo, HttpError> {
        let (url, response) = self.follow(Kind::Metadata, url, None, false)?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(self.status(url, status));
        }
        let mut body = response.into_body();
        let bytes = match body.with_config().limit(MAX_INFO_BYTES).read_to_vec() {
            Ok(bytes) => bytes,
            Err(ureq::Error::BodyExceedsLimit(_)) => {
                let reason = format!("a repo description of more than {MAX_INFO_BYTES} bytes");
                return Err(HttpError::Transport { url: url.into(), reason });
            }
            Err(e) => return Err(self.ureq_error(Kind::Metadata, url, e)),
        };
        answer::parse_repo_info(&bytes).map_err(|source| HttpError::Answer { url: url.into(), source })
    }

    /// A file's commit, blob name, size and download URL, from its resolve URL
    /// (`ENDPOINT/ORG/NAME/resolve/REV/PATH`), as huggingface_hub reads them:
    /// relative redirects (a renamed repo) are followed; an absolute one is the
    /// CDN, whose URL is where the bytes are.
    pub fn metadata(&self, url: Url) -> Result<Metadata, HttpError> {
        let (url, response) = self.follow(Kind::Metadata, url, Some("bytes=0-0"), true)?;
        let status = response.status().as_u16();
        let cdn = is_redirect(status);
        if !cdn && !(200..300).contains(&status) {
            return Err(self.status(url, status));
        }
        let header = |name: &str| header(&response, name);
        let commit = header("x-repo-commit")
            .ok_or_else(|| HttpError::MissingHeader { url: url.to_string(), header: "X-Repo-Commit" })?
            .to_owned();
        let etag = header("x-linked-etag")
            .or_else(|| header("etag"))
            .map(answer::normalize_etag)
            .ok_or_else(|| HttpError::MissingHeader { url: url.to_string(), header: "ETag" })?;
        let linked_size = match header("x-linked-size") {
            Some(value) => Some(value.parse::<u64>().map_err(|_| HttpError::BadHeader {
                url: url.to_string(),
                header: "X-Linked-Size",
                value: value.to_owned(),
            })?),
            None => None,
        };
        let download = if cdn { location(&url, &response)?.0 } else { url.clone() };
        let size = match linked_size {
            Some(size) => size,
            None if cdn => {
                // No size with the redirect: ask the CDN for one byte, as hf-hub did.
                let (url, response) = self.follow(Kind::Metadata, download.clone(), Some("bytes=0-0"), false)?;
                let status = response.status().as_u16();
                if !(200..300).contains(&status) {
                    return Err(self.status(url, status));
                }
                size_of(&url, &response)?
            }
            None => size_of(&url, &response)?,
        };
        Ok(Metadata { commit, etag, size, download })
    }

    /// Downloads `url` into `part`, `size` bytes in all, resuming from what
    /// `part` already holds. Never writes more than `size` bytes there: a server
    /// that sends more is cut off at the first byte too many, and `part` is
    /// removed. A download that stops early keeps `part` for the next run.
    pub fn download(&self, url: &Url, part: &Path, size: u64, progress: &mut dyn FnMut(u64)) -> Result<(), HttpError> {
        let io = |source| HttpError::Io { path: part.to_owned(), source };
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(part).map_err(io)?;
        let mut start = file.metadata().map_err(io)?.len();
        if start > size {
            start = 0;
        }
        if start == size {
            return Ok(());
        }
        let range = format!("bytes={start}-");
        let (url, response) = self.follow(Kind::Download, url.clone(), Some(&range), false)?;
        match response.status().as_u16() {
            206 => {
                let value = header(&response, "content-range").unwrap_or_default();
                if answer::parse_content_range(value).is_none_or(|(from, total)| from != start || total != size) {
                    let value = value.to_owned();
                    return Err(HttpError::BadHeader { url: url.into(), header: "Content-Range", value });
                }
            }
            // The whole file, the range ignored: start again.
            200 => start = 0,
            status => return Err(self.status(url, status)),
        }
        if let Some(length) = header(&response, "content-length").and_then(|v| v.parse::<u64>().ok())
            && start.checked_add(length) != Some(size)
        {
            return Err(HttpError::Length { url: url.into(), start, length, size });
        }
        file.set_len(start).map_err(io)?;
        file.seek(SeekFrom::Start(start)).map_err(io)?;
        progress(start);
        // One byte more than is due is enough to know the server sends too much.
        let mut body = response.into_body().into_reader().take(size - start + 1);
        let mut buf = vec![0; 1 << 16];
        let mut written = start;
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.read_error(Kind::Download, url, e)),
            };
            let due = (size - written).min(n as u64) as usize;
            file.write_all(&buf[..due]).map_err(io)?;
            written += due as u64;
            progress(due as u64);
            if due < n {
                drop(file);
                let _ = std::fs::remove_file(part);
                return Err(HttpError::TooLong { url: url.into(), size });
            }
        }
        file.flush().map_err(io)?;
        if written < size {
            return Err(HttpError::TooShort { url: url.into(), got: written, size });
        }
        Ok(())
    }

    /// A GET of `url`, and of where it redirects to, up to `MAX_REDIRECTS`
    /// hops; `relative_only`: the first redirect to an absolute URL is returned
    /// as the answer. Each hop carries the token only to the endpoint's origin.
    fn follow(
        &self,
        kind: Kind,
        mut url: Url,
        range: Option<&str>,
        relative_only: bool,
    ) -> Result<(Url, Response<Body>), HttpError> {
        for _ in 0..=MAX_REDIRECTS {
            let response = self.get(kind, &url, range)?;
            if !is_redirect(response.status().as_u16()) {
                return Ok((url, response));
            }
            let (next, absolute) = location(&url, &response)?;
            if relative_only && absolute {
                return Ok((url, response));
            }
            url = next;
        }
        Err(HttpError::Redirects { url: url.into() })
    }

    /// One GET, no redirect followed.
    fn get(&self, kind: Kind, url: &Url, range: Option<&str>) -> Result<Response<Body>, HttpError> {
        let (agent, _) = self.agent(kind);
        // The bytes as stored: a size and a SHA-256 are checked against them.
        let mut request = agent.get(url.as_str()).header("Accept-Encoding", "identity");
        if let Some(range) = range {
            request = request.header("Range", range);
        }
        if let Some(token) = &self.token
            && url.origin() == self.origin
        {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        request.call().map_err(|e| self.ureq_error(kind, url.clone(), e))
    }

    fn agent(&self, kind: Kind) -> &(Agent, Timeout) {
        match kind {
            Kind::Metadata => &self.metadata,
            Kind::Download => &self.download,
        }
    }

    fn status(&self, url: Url, status: u16) -> HttpError {
        let from_endpoint = url.origin() == self.origin;
        HttpError::Status { url: url.into(), status, from_endpoint }
    }

    fn ureq_error(&self, kind: Kind, url: Url, error: ureq::Error) -> HttpError {
        match error {
            ureq::Error::Timeout(_) => self.timeout(kind, url),
            ureq::Error::Io(e) => self.read_error(kind, url, e),
            other => HttpError::Transport { url: url.into(), reason: other.to_string() },
        }
    }

    fn read_error(&self, kind: Kind, url: Url, error: std::io::Error) -> HttpError {
        let inner = error.get_ref().and_then(|e| e.downcast_ref::<ureq::Error>());
        if error.kind() == std::io::ErrorKind::TimedOut || matches!(inner, Some(ureq::Error::Timeout(_))) {
            return self.timeout(kind, url);
        }
        HttpError::Transport { url: url.into(), reason: error.to_string() }
    }

    fn timeout(&self, kind: Kind, url: Url) -> HttpError {
        let Timeout { limit, var } = self.agent(kind).1;
        HttpError::Timeout { url: url.into(), limit, var }
    }
}

/// An agent that follows no redirect, hands every status back, and waits at
/// most `limit` to connect and for each read (a stalled server, not a slow
/// download, is what it stops).
fn agent(limit: Duration) -> Agent {
    Agent::config_builder()
        .max_redirects(0)
        .http_status_as_error(false)
        .user_agent(concat!("vae/", env!("CARGO_PKG_VERSION")))
        .timeout_resolve(Some(limit))
        .timeout_connect(Some(limit))
        .timeout_send_request(Some(limit))
        .timeout_recv_response(Some(limit))
        .timeout_per_read(Some(limit))
        .timeout_per_write(Some(limit))
        .build()
        .into()
}

fn is_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

fn header<'a>(response: &'a Response<Body>, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// Where a redirect goes, and whether its `Location` was an absolute URL.
fn location(url: &Url, response: &Response<Body>) -> Result<(Url, bool), HttpError> {
    let status = response.status().as_u16();
    let Some(value) = header(response, "location").filter(|v| !v.is_empty()) else {
        return Err(HttpError::NoLocation { url: url.to_string(), status });
    };
    let absolute = Url::parse(value).is_ok();
    match url.join(value) {
        Ok(next) if ["http", "https"].contains(&next.scheme()) && next.has_host() => Ok((next, absolute)),
        _ => Err(HttpError::BadLocation { url: url.to_string(), location: value.to_owned() }),
    }
}

/// A file's size from a ranged answer (`Content-Range: bytes 0-0/SIZE`), or a
/// whole one (`Content-Length`).
fn size_of(url: &Url, response: &Response<Body>) -> Result<u64, HttpError> {
    if let Some(value) = header(response, "content-range") {
        return answer::parse_content_range(value).map(|(_, total)| total).ok_or_else(|| HttpError::BadHeader {
            url: url.to_string(),
            header: "Content-Range",
            value: value.to_owned(),
        });
    }
    match header(response, "content-length") {
        Some(value) if response.status().as_u16() == 200 => value.parse().map_err(|_| HttpError::BadHeader {
            url: url.to_string(),
            header: "Content-Length",
            value: value.to_owned(),
        }),
        _ => Err(HttpError::MissingHeader { url: url.to_string(), header: "Content-Range" }),
    }
}

/// Opens `path` for an exclusive lock, shared with huggingface_hub's own
/// (`filelock`, which also takes `flock` on Unix): one download of a blob at a time.
pub fn lock(path: &Path) -> Result<File, std::io::Error> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    OpenOptions::new().write(true).create(true).truncate(false).open(path)
}
