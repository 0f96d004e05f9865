//! Any bytes as a dataset's tar shard (`vae dataset encode shard.tar`):
//! `dataset::read_tar` with its real bounds (per file, per sample, per
//! extension header) hands out samples or reports damage, never a panic, and
//! never holds more than the shard's own bytes.
#![no_main]

use std::io::{BufReader, Cursor};

use libfuzzer_sys::fuzz_target;
use vae::dataset::{MAX_FILE, MAX_SAMPLE, check_key, read_tar};

fuzz_target!(|data: &[u8]| {
    let mut held = 0usize;
    // A small buffer, so that seeks across and within it both happen (the
    // runner reads through a 1 MiB one).
    let reader = BufReader::with_capacity(1024, Cursor::new(data));
    let _ = read_tar(reader, |sample| {
        assert!(!sample.key.is_empty());
        // A sample with a problem holds nothing.
        assert!(sample.problems.is_empty() || sample.files.is_empty());
        let bytes: u64 = sample.files.iter().map(|(_, b)| b.len() as u64 + 512).sum();
        assert!(bytes <= MAX_SAMPLE);
        for (ext, b) in &sample.files {
            assert!(b.len() as u64 <= MAX_FILE);
            // The output names `{key}.{ext}`: an extension never adds a folder.
            assert!(!ext.contains('/'));
            held += b.len();
        }
        // Every byte handed out is a member's own byte of the input, read once.
        assert!(held <= data.len());
        // The runner writes `{key}.*` into the output tar only when the key
        // passes this check: such a key cannot leave the tar's root.
        if check_key(&sample.key).is_ok() {
            let path = std::path::Path::new(&sample.key);
            assert!(path.is_relative());
            assert!(
                path.components().all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir))
            );
        }
        Ok(())
    });
});
