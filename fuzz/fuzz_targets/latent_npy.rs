//! Any bytes after NumPy's magic, given to `vae decode` as a `.npy` latent:
//! parsed or refused, never a panic. `latent_reader` reaches this reader
//! too, but only once it has found the magic; this target spends all its
//! time on the header (shape, dtype, lengths) and the data behind it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let bytes = [b"\x93NUMPY".as_slice(), data].concat();
    let _ = vae::latent::Latent::from_bytes(&bytes, std::path::Path::new("fuzz.npy"));
});
