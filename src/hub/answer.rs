//! The Hub's answers, parsed: pure functions from what the server sent to a
//! typed result, so that every byte a server controls goes through code that
//! is fuzzed (`fuzz/fuzz_targets/hub_json.rs`) and unit-tested without a network.

use serde::Deserialize;

/// The most bytes of a repo description read from the Hub (`GET /api/models/…`):
/// diffusers repos answer a few KiB; the largest repos on the Hub list tens of
/// thousands of files, well under this.
pub const MAX_INFO_BYTES: u64 = 32 << 20;

/// A repo at a revision, as `GET /api/models/ORG/NAME/revision/REV` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoInfo {
    /// The commit the revision points at (`sha`), when the answer says.
    pub commit: Option<String>,
    /// Every file of the repo, by its path in the repo (`siblings[].rfilename`).
    pub files: Vec<String>,
}

/// Why an answer of the Hub is unusable.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("a repo description that is not the JSON the Hub sends ({0})")]
    Json(#[from] serde_json::Error),
    #[error("a repo description listing a file named {0:?}")]
    FileName(String),
}

#[derive(Deserialize)]
struct RawInfo {
    sha: Option<String>,
    siblings: Vec<RawSibling>,
}

#[derive(Deserialize)]
struct RawSibling {
    rfilename: String,
}

/// Parses the Hub's description of a repo. File names that could not be paths
/// in a repo (empty, absolute, with `..`, `\` or control characters) are refused,
/// since a chosen file name becomes a path in the cache.
pub fn parse_repo_info(bytes: &[u8]) -> Result<RepoInfo, AnswerError> {
    let raw: RawInfo = serde_json::from_slice(bytes)?;
    let mut files = Vec::with_capacity(raw.siblings.len());
    for sibling in raw.siblings {
        let name = sibling.rfilename;
        let bad = name.is_empty()
            || name.starts_with('/')
            || name.contains('\\')
            || name.chars().any(char::is_control)
            || name.split('/').any(|p| p.is_empty() || p == "." || p == "..");
        if bad {
            return Err(AnswerError::FileName(name));
        }
        files.push(name);
    }
    Ok(RepoInfo { commit: raw.sha, files })
}

/// An `ETag` or `X-Linked-Etag` value as a cache name: without the weak
/// marker and the quotes (huggingface_hub normalises it the same way).
pub fn normalize_etag(value: &str) -> String {
    let value = value.trim();
    value.strip_prefix("W/").unwrap_or(value).replace('"', "")
}

/// The total size in a `Content-Range: bytes A-B/TOTAL` header, and its start `A`.
pub fn parse_content_range(value: &str) -> Option<(u64, u64)> {
    let (range, total) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let start = range.split_once('-')?.0.trim().parse().ok()?;
    Some((start, total.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repo_description_as_the_hub_sends_it() {
        let json = br#"{"id":"o/n","sha":"abc","private":false,"siblings":[{"rfilename":"config.json"},
            {"rfilename":"vae/diffusion_pytorch_model.safetensors","size":3}]}"#;
        let info = parse_repo_info(json).unwrap();
        assert_eq!(info.commit.as_deref(), Some("abc"));
        assert_eq!(info.files, ["config.json", "vae/diffusion_pytorch_model.safetensors"]);
    }

    #[test]
    fn unusable_descriptions_are_errors() {
        for bad in [
            &br#"{"sha":"abc"}"#[..],
            br#"{"siblings":[{"rfilename":"../../x"}]}"#,
            br#"{"siblings":[{"rfilename":"/etc/passwd"}]}"#,
            br#"{"siblings":[{"rfilename":"a//b"}]}"#,
            br#"{"siblings":[{"rfilename":""}]}"#,
            br#"{"siblings":[{"rfilename":7}]}"#,
            b"<html>",
            b"",
        ] {
            assert!(parse_repo_info(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn etags_and_ranges() {
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
        assert_eq!(normalize_etag("\"abc\""), "abc");
        assert_eq!(parse_content_range("bytes 0-0/1234"), Some((0, 1234)));
        assert_eq!(parse_content_range("bytes 10-99/100"), Some((10, 100)));
        for bad in ["bytes 0-0/*", "0-0/12", "bytes x-0/1", "bytes 0-0/-1"] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }
}
