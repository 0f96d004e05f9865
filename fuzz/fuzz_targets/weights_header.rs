//! Any bytes given as weights: pickle sniffing, safetensors header parsing,
//! layout detection and architecture inference, never a panic or a large allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vae::weights::inspect_bytes(data, std::path::Path::new("fuzz.safetensors"));
});
