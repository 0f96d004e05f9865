//! `--device` and `--precision` through the binary, in any build: what a
//! build without GPU backends says, and the refusals that hold everywhere.

mod common;

use common::{assert_fails, fixtures, vae};

fn encode(args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let image = fixtures().join("images/kodim03.png");
    let weights = fixtures().join("weights/tiny_sd");
    let out = dir.path().join("x.safetensors");
    let base = ["encode", image.to_str().unwrap(), "-o", out.to_str().unwrap(), "--weights", weights.to_str().unwrap()];
    vae(dir.path(), &[&base[..], args].concat())
}

#[cfg(not(feature = "wgpu"))]
#[test]
fn a_backend_not_built_is_one_line_naming_the_feature() {
    let out = encode(&["--device", "wgpu"]);
    assert_fails(&out, "this build has no wgpu backend", "rebuild with --features wgpu");
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_not_built_is_one_line_naming_the_feature() {
    let out = encode(&["--device", "cuda"]);
    assert_fails(&out, "this build has no cuda backend", "rebuild with --features cuda");
}

#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
#[test]
fn auto_without_gpu_backends_takes_the_cpu_and_says_so() {
    let out = encode(&["--device", "auto"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(common::stderr(&out).contains("device: cpu (--device auto)"), "{}", common::stderr(&out));
}

#[test]
fn reduced_precision_is_refused_on_the_cpu() {
    for precision in ["f16", "bf16"] {
        let out = encode(&["--device", "cpu", "--precision", precision]);
        assert_fails(&out, &format!("--precision {precision} runs on a GPU only"), "--precision f32");
    }
}
