//! What a run writes and reports, as types: a shard's manifest
//! ([`ShardSummary`], `NAME.json`), its skipped samples ([`Skipped`], with
//! a [`SkipKind`]), a worker's totals ([`WorkerTotals`]) and the sums of
//! `dataset report` ([`DatasetTotals`]). The JSON users see is these types
//! serialised: field names and order are the keys.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The `format` of a shard manifest.
pub const MANIFEST_FORMAT: &str = "vae-dataset-manifest";
/// The `format_version` this build writes, and the newest it reads.
/// Manifests written before the field existed read as version 1.
pub const MANIFEST_VERSION: u32 = 1;

/// What became of one shard: its manifest, `NAME.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardSummary {
    /// Always [`MANIFEST_FORMAT`].
    #[serde(default = "manifest_format")]
    pub format: String,
    /// [`MANIFEST_VERSION`] when written by this build.
    #[serde(default = "manifest_version")]
    pub format_version: u32,
    pub shard: String,
    pub input: String,
    pub output: String,
    /// Samples in the input (keys seen).
    pub samples: usize,
    /// Samples written with their latent.
    pub encoded: usize,
    pub skipped: Vec<Skipped>,
    /// Members of the input not copied to the output although their sample
    /// was (links, devices, FIFOs), or that made no sample of their own.
    #[serde(default)]
    pub files_left_out: Vec<Skipped>,
    pub seconds: f64,
    pub images_per_second: f64,
    pub latent_member: String,
    pub weights: String,
    pub weights_sha256: Option<String>,
    pub model: String,
    pub posterior: String,
    pub worker: usize,
    pub workers: usize,
    pub vae_version: String,
}

fn manifest_format() -> String {
    MANIFEST_FORMAT.to_owned()
}

fn manifest_version() -> u32 {
    MANIFEST_VERSION
}

/// A sample left out of the output (or a member of one), and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub key: String,
    /// What kind of problem, to count alike ones.
    pub kind: SkipKind,
    /// The problem in full, naming the file: for a person to read.
    pub reason: String,
}

impl Skipped {
    pub fn new(key: &str, kind: SkipKind, reason: impl Into<String>) -> Self {
        Self { key: key.to_owned(), kind, reason: reason.into() }
    }
}

/// Why a sample was skipped, to count alike ones (`dataset report` sums
/// them). Written as the words manifests have always used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SkipKind {
    /// The sample has no image file.
    #[serde(rename = "no image")]
    NoImage,
    /// Its image does not decode.
    #[serde(rename = "unreadable image")]
    UnreadableImage,
    /// Its image has more pixels than `--max-pixels`.
    #[serde(rename = "image too large")]
    ImageTooLarge,
    /// Its image has no pixels.
    #[serde(rename = "empty image")]
    EmptyImage,
    /// One of its files is over the per-file limit.
    #[serde(rename = "file too large")]
    FileTooLarge,
    /// Its files together are over the per-sample limit.
    #[serde(rename = "sample too large")]
    SampleTooLarge,
    /// A tar extension header too large to read.
    #[serde(rename = "bad header")]
    BadHeader,
    /// A key (or member name) that is not UTF-8 or not a relative path.
    #[serde(rename = "bad key")]
    BadKey,
    /// The key comes again, apart from its other files.
    #[serde(rename = "repeated key")]
    RepeatedKey,
    /// One extension comes twice in the sample.
    #[serde(rename = "repeated file")]
    RepeatedFile,
    /// The sample has the latent member it would get already.
    #[serde(rename = "has a latent")]
    HasLatent,
    /// A file that could not be read.
    #[serde(rename = "unreadable file")]
    UnreadableFile,
    /// A member left out of its sample (in [`ShardSummary::files_left_out`]):
    /// a link, device or FIFO.
    #[serde(rename = "not a regular file")]
    NotRegularFile,
}

impl SkipKind {
    /// The kind as manifests write it.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipKind::NoImage => "no image",
            SkipKind::UnreadableImage => "unreadable image",
            SkipKind::ImageTooLarge => "image too large",
            SkipKind::EmptyImage => "empty image",
            SkipKind::FileTooLarge => "file too large",
            SkipKind::SampleTooLarge => "sample too large",
            SkipKind::BadHeader => "bad header",
            SkipKind::BadKey => "bad key",
            SkipKind::RepeatedKey => "repeated key",
            SkipKind::RepeatedFile => "repeated file",
            SkipKind::HasLatent => "has a latent",
            SkipKind::UnreadableFile => "unreadable file",
            SkipKind::NotRegularFile => "not a regular file",
        }
    }
}

impl fmt::Display for SkipKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// Ordered by their words, so that counts by kind list alphabetically.
impl Ord for SkipKind {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl PartialOrd for SkipKind {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// A worker's run, summed: the last `--json` line of `dataset encode`
/// (as [`RunLine`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerTotals {
    pub worker: usize,
    pub workers: usize,
    pub shards_assigned: usize,
    pub shards_encoded: usize,
    pub shards_done_before: usize,
    pub shards_failed: usize,
    pub samples: usize,
    pub encoded: usize,
    pub skipped: usize,
    pub seconds: f64,
    pub images_per_second: f64,
}

/// `{"report": WorkerTotals}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunLine {
    pub report: WorkerTotals,
}

/// The manifests of an output folder, summed: `dataset report`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetTotals {
    pub shards: usize,
    pub samples: usize,
    pub encoded: usize,
    pub skipped: usize,
    /// Skipped samples by kind, in alphabetical order.
    pub skipped_by_reason: BTreeMap<SkipKind, usize>,
    pub shard_seconds: f64,
    pub images_per_second_per_worker: f64,
}

/// `{"total": DatasetTotals}`: the last line of `dataset report --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TotalLine {
    pub total: DatasetTotals,
}

/// A manifest `dataset report` cannot take.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "{path}: a dataset manifest of format version {version}, newer than this vae reads (version {MANIFEST_VERSION}, vae {}); update vae",
        env!("CARGO_PKG_VERSION")
    )]
    Newer { path: String, version: u64 },
    #[error("{path}: a damaged shard manifest: {reason}")]
    Damaged { path: String, reason: String },
    #[error("{path}: its counts overflow the totals")]
    Overflow { path: String },
}

/// What tells a manifest apart from any other JSON file, read before the
/// whole of it: its format and version, or (written before those existed)
/// the fields every manifest has.
#[derive(Deserialize)]
pub(super) struct Probe {
    format: Option<String>,
    format_version: Option<u64>,
    shard: Option<serde::de::IgnoredAny>,
    samples: Option<serde::de::IgnoredAny>,
    encoded: Option<serde::de::IgnoredAny>,
    skipped: Option<serde::de::IgnoredAny>,
    vae_version: Option<serde::de::IgnoredAny>,
}

impl Probe {
    /// The manifest's version, `None` when the file is not a manifest.
    pub(super) fn version(&self) -> Option<u64> {
        if let Some(format) = &self.format {
            return (format == MANIFEST_FORMAT).then_some(self.format_version.unwrap_or(1));
        }
        let fields = [&self.shard, &self.samples, &self.encoded, &self.skipped, &self.vae_version];
        fields.iter().all(|f| f.is_some()).then_some(self.format_version.unwrap_or(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_read_and_write_as_the_words_of_manifests() {
        let all = [
            SkipKind::NoImage,
            SkipKind::UnreadableImage,
            SkipKind::ImageTooLarge,
            SkipKind::EmptyImage,
            SkipKind::FileTooLarge,
            SkipKind::SampleTooLarge,
            SkipKind::BadHeader,
            SkipKind::BadKey,
            SkipKind::RepeatedKey,
            SkipKind::RepeatedFile,
            SkipKind::HasLatent,
            SkipKind::UnreadableFile,
            SkipKind::NotRegularFile,
        ];
        for kind in all {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<SkipKind>(&json).unwrap(), kind);
        }
        assert!(serde_json::from_str::<SkipKind>("\"no_image\"").is_err());
        let counts: BTreeMap<SkipKind, usize> = [(SkipKind::UnreadableImage, 1), (SkipKind::NoImage, 2)].into();
        assert_eq!(serde_json::to_string(&counts).unwrap(), r#"{"no image":2,"unreadable image":1}"#);
    }

    #[test]
    fn a_manifest_is_told_by_its_format_or_its_fields() {
        let probe = |text: &str| serde_json::from_str::<Probe>(text).ok().and_then(|p| p.version());
        assert_eq!(probe(r#"{"format":"vae-dataset-manifest","format_version":3}"#), Some(3));
        assert_eq!(probe(r#"{"format":"other","format_version":1}"#), None);
        assert_eq!(probe(r#"{"shard":"a","samples":1,"encoded":1,"skipped":[],"vae_version":"0.1.0","x":1}"#), Some(1));
        assert_eq!(probe(r#"{"shard":"a"}"#), None);
        assert_eq!(probe("[1, 2]"), None);
    }
}
