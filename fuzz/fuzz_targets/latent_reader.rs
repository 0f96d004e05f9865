//! Any bytes given to `vae decode` as a latent file: parsed or refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vae::latent::Latent::from_bytes(data, std::path::Path::new("fuzz.safetensors"));
});
