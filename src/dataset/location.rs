//! Where shards are read from and written to: a local path, or an object in
//! S3-compatible storage, Google Cloud Storage or Azure (through
//! `object_store`, with credentials and endpoints from the environment as
//! each cloud's own tools read them: `AWS_*`, `GOOGLE_*`, `AZURE_*`).
//!
//! Every operation is blocking; remote ones run on one small tokio runtime
//! shared by the process.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

/// Uploads of at most this many bytes are one PUT; larger ones go in parts.
const SINGLE_PUT: usize = 16 << 20;
/// The part size of a multipart upload, and how many parts are in flight.
const PART: usize = 16 << 20;
const PARTS_IN_FLIGHT: usize = 4;

/// A file or folder, local or in an object store.
#[derive(Clone)]
pub enum Location {
    Local(PathBuf),
    Remote(Remote),
}

/// An object (or a prefix, for a folder) in a store.
#[derive(Clone)]
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    /// `scheme://bucket`, to print locations as users wrote them.
    base: String,
    path: ObjectPath,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(path) => write!(f, "{}", path.display()),
            Location::Remote(r) => write!(f, "{}/{}", r.base, r.path),
        }
    }
}

/// Whether `text` names an object store (`s3://`, `gs://`, `az://`, ...)
/// rather than a local path.
pub fn is_url(text: &str) -> bool {
    text.split_once("://").is_some_and(|(scheme, _)| scheme.chars().all(|c| c.is_ascii_alphanumeric()))
}

impl Location {
    /// A local path, or a URL of a store this build knows: `s3://bucket/key`
    /// (also S3-compatible servers through `AWS_ENDPOINT`), `gs://bucket/key`,
    /// `az://container/key` (or `azure://`, `abfs[s]://`).
    pub fn parse(text: &str) -> Result<Self> {
        if !is_url(text) {
            return Ok(Location::Local(PathBuf::from(text)));
        }
        let url = url::Url::parse(text).with_context(|| format!("{text}: not a valid URL"))?;
        if url.scheme() == "file" {
            return Ok(Location::Local(local_path(text)?));
        }
        runtime();
        let bucket = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| anyhow!("{text}: no bucket in the URL"))?;
        let base = format!("{}://{bucket}", url.scheme());
        // One client per bucket, however many shards name it.
        static STORES: Mutex<BTreeMap<String, Arc<dyn ObjectStore>>> = Mutex::new(BTreeMap::new());
        let mut stores = STORES.lock().unwrap_or_else(|e| e.into_inner());
        let store = match stores.get(&base) {
            Some(store) => store.clone(),
            None => {
                let store: Arc<dyn ObjectStore> = match url.scheme() {
                    "s3" | "s3a" => Arc::new(object_store::aws::AmazonS3Builder::from_env().with_url(text).build()?),
                    "gs" => Arc::new(object_store::gcp::GoogleCloudStorageBuilder::from_env().with_url(text).build()?),
                    "az" | "azure" | "abfs" | "abfss" => {
                        Arc::new(object_store::azure::MicrosoftAzureBuilder::from_env().with_url(text).build()?)
                    }
                    other => bail!("{text}: unknown storage scheme {other}:// (s3, gs, az or a local path)"),
                };
                stores.insert(base.clone(), store.clone());
                store
            }
        };
        let path = ObjectPath::from_url_path(url.path()).with_context(|| format!("{text}: not a valid object path"))?;
        Ok(Location::Remote(Remote { store, base, path }))
    }

    /// "LOCATION: cannot WHAT: ERROR", with a hint when the store's client
    /// fell back to a cloud VM's metadata service for credentials: then
    /// none were found in the environment.
    fn failed(&self, what: &str, e: &dyn fmt::Display) -> anyhow::Error {
        let message = e.to_string();
        let vm_fallback = message.contains("169.254.169.254") || message.contains("metadata.google.internal");
        let hint = match self {
            Location::Remote(r) if vm_fallback => match r.base.split("://").next() {
                Some("gs") => " (no credentials found: set GOOGLE_SERVICE_ACCOUNT or GOOGLE_APPLICATION_CREDENTIALS)",
                Some("s3" | "s3a") => " (no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
                _ => " (no credentials found: set AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY)",
            },
            _ => "",
        };
        anyhow!("{self}: cannot {what}: {message}{hint}")
    }

    /// The location `name` inside this folder.
    pub fn join(&self, name: &str) -> Location {
        match self {
            Location::Local(dir) => Location::Local(dir.join(name)),
            Location::Remote(r) => Location::Remote(Remote { path: r.path.clone().join(name), ..r.clone() }),
        }
    }

    /// The last component of the path (a file's name).
    pub fn file_name(&self) -> String {
        match self {
            Location::Local(path) => path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            Location::Remote(r) => r.path.filename().unwrap_or_default().to_owned(),
        }
    }

    /// Whether a file (an object) exists here.
    pub fn exists(&self) -> Result<bool> {
        match self {
            Location::Local(path) => Ok(path.is_file()),
            Location::Remote(r) => match block_on(r.store.head(&r.path)) {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(self.failed("look up", &e)),
            },
        }
    }

    /// The files directly in this folder (a prefix, for a store) whose names
    /// end with `suffix`, in name order.
    pub fn list(&self, suffix: &str) -> Result<Vec<Location>> {
        let mut found = match self {
            Location::Local(dir) => {
                let entries = std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?;
                let mut files = Vec::new();
                for entry in entries {
                    let path = entry.with_context(|| format!("{}: cannot list", dir.display()))?.path();
                    if path.is_file() && path.to_string_lossy().ends_with(suffix) {
                        files.push(Location::Local(path));
                    }
                }
                files
            }
            Location::Remote(r) => {
                let prefix = (!r.path.as_ref().is_empty()).then_some(&r.path);
                let listing = block_on(r.store.list_with_delimiter(prefix)).map_err(|e| self.failed("list", &e))?;
                listing
                    .objects
                    .into_iter()
                    .filter(|o| o.location.as_ref().ends_with(suffix))
                    .map(|o| Location::Remote(Remote { path: o.location, ..r.clone() }))
                    .collect()
            }
        };
        found.sort_by_key(|l| l.to_string());
        Ok(found)
    }

    /// The whole file, into memory (manifests, not shards).
    pub fn read(&self) -> Result<Vec<u8>> {
        match self {
            Location::Local(path) => std::fs::read(path).with_context(|| format!("{}: cannot read", path.display())),
            Location::Remote(r) => block_on(async { r.store.get(&r.path).await?.bytes().await })
                .map(|b| b.to_vec())
                .map_err(|e| self.failed("read", &e)),
        }
    }

    /// Copies the object into `out` as it streams in.
    pub fn download(&self, out: &mut impl Write) -> Result<u64> {
        let Location::Remote(r) = self else { bail!("{self}: internal error: download of a local file") };
        let err = |e: &dyn fmt::Display| self.failed("read", e);
        block_on(async {
            let mut stream = r.store.get(&r.path).await.map_err(|e| err(&e))?.into_stream();
            let mut total = 0;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| err(&e))?;
                out.write_all(&chunk).with_context(|| format!("{self}: cannot store a local copy"))?;
                total += chunk.len() as u64;
            }
            Ok(total)
        })
    }

    /// Writes `bytes` here whole: a local file through a temporary file and
    /// a rename, an object in one PUT (which S3, GCS and Azure make visible
    /// only once complete).
    pub fn put(&self, bytes: Vec<u8>) -> Result<()> {
        match self {
            Location::Local(path) => write_local(path, &bytes),
            Location::Remote(r) => {
                block_on(r.store.put(&r.path, PutPayload::from(bytes))).map(drop).map_err(|e| self.failed("write", &e))
            }
        }
    }

    /// Uploads the local file `from` here (see [`Location::put`]); large
    /// files go in parts, and the object appears only when the last one is in.
    pub fn upload(&self, from: &Path) -> Result<()> {
        let Location::Remote(r) = self else { bail!("{self}: internal error: upload to a local path") };
        let mut file = std::fs::File::open(from).with_context(|| format!("{}: cannot read", from.display()))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        if size <= SINGLE_PUT as u64 {
            let mut bytes = Vec::with_capacity(size as usize);
            file.read_to_end(&mut bytes).with_context(|| format!("{}: cannot read", from.display()))?;
            return self.put(bytes);
        }
        let err = |e: &dyn fmt::Display| self.failed("write", e);
        block_on(async {
            let upload = r.store.put_multipart(&r.path).await.map_err(|e| err(&e))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
            let mut buffer = vec![0; PART];
            loop {
                let n = file.read(&mut buffer).with_context(|| format!("{}: cannot read", from.display()))?;
                if n == 0 {
                    break;
                }
                writer.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(|e| err(&e))?;
                writer.write(&buffer[..n]);
            }
            writer.finish().await.map(drop).map_err(|e| err(&e))
        })
    }
}

/// The local path a `file://` URL names (`file:///data/shards`, or with
/// `localhost` as its host).
pub fn local_path(text: &str) -> Result<PathBuf> {
    let url = url::Url::parse(text).with_context(|| format!("{text}: not a valid URL"))?;
    if url.scheme() != "file" {
        bail!("{text}: not a file:// URL");
    }
    url.to_file_path().map_err(|()| anyhow!("{text}: not a local path (file:///path/to/it)"))
}

/// Writes `bytes` to `path` whole: into a temporary file beside it, synced,
/// then renamed over it. The file gets the usual mode (0666 less the umask),
/// as any file this program creates for the user.
fn write_local(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let err = |e| anyhow::Error::new(e).context(format!("{}: cannot write", path.display()));
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(err)?;
    tmp.write_all(bytes).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map(drop).map_err(|e| err(e.error))
}

/// The process's I/O runtime, started on first use.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        // reqwest's TLS (rustls without a built-in provider): ring, as hf-hub
        // uses. Installed before any store builds its client.
        let _ = rustls::crypto::ring::default_provider().install_default();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("vae-io")
            .enable_all()
            .build()
            .expect("a tokio runtime starts")
    })
}

/// Runs `future` to completion on the process's I/O runtime.
fn block_on<F: Future>(future: F) -> F::Output {
    runtime().block_on(future)
}
