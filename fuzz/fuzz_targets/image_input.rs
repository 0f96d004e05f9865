//! Any bytes given to `vae encode` as an image: decoded into model input or
//! refused, never a panic; the pixel limit is small so the fuzzer stays fast.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(image) = vae::imageio::load_bytes(data, std::path::Path::new("fuzz.png"), 1 << 16) {
        assert_eq!(image.pixels.len(), 3 * image.width * image.height);
    }
});
