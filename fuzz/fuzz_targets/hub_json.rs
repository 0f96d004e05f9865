//! Any bytes as the Hub's description of a repo (`GET /api/models/ORG/NAME/revision/REV`):
//! parsed or refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = vae::hub::parse_repo_info(data) {
        // Every name kept is a relative path in the repo, safe to join to the cache.
        for f in &info.files {
            assert!(!f.starts_with('/') && !f.contains('\\') && !f.chars().any(char::is_control), "{f:?}");
            assert!(f.split('/').all(|p| !p.is_empty() && p != "." && p != ".."), "{f:?}");
        }
    }
});
