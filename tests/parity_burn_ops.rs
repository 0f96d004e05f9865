//! The same parity checks through burn's own operations instead of the CPU
//! kernels: the path that GPU devices take, checked here on the CPU.

mod common;

use common::parity::{check_decoder, check_encoder, check_tiny, load};

#[test]
fn burn_ops_sd_layout() {
    vae::kernels::set_enabled(false);
    let mut vae = load("tiny_sd");
    check_encoder(&vae, "tiny_sd");
    check_decoder(&mut vae, "tiny_sd");
}

#[test]
fn burn_ops_sixteen_channels() {
    vae::kernels::set_enabled(false);
    let mut vae = load("tiny_flux");
    check_encoder(&vae, "tiny_flux");
    check_decoder(&mut vae, "tiny_flux");
}

#[test]
fn burn_ops_taesd() {
    vae::kernels::set_enabled(false);
    // Stride-2 convolutions padded on all sides, convolutions without bias,
    // and nearest upsampling as burn's interpolate.
    check_tiny(&mut load("tiny_taesd"), "tiny_taesd");
}
