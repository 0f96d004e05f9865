//! `--device` and `--precision` through the binary, in any build: what a
//! build without GPU backends says, and the refusals that hold everywhere.

mod common;

use common::{assert_fails, fixtures};

fn encode(args: &[&str]) -> std::process::Output {
    encode_with(args, &[])
}

/// [`encode`] with more environment variables.
fn encode_with(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let image = fixtures().join("images/kodim03.png");
    let weights = fixtures().join("weights/tiny_sd");
    let out = dir.path().join("x.safetensors");
    let base = ["encode", image.to_str().unwrap(), "-o", out.to_str().unwrap(), "--weights", weights.to_str().unwrap()];
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_vae"));
    command.args([&base[..], args].concat()).current_dir(dir.path()).env_remove("VAE_WEIGHTS");
    command.envs(env.iter().copied()).output().expect("the vae binary runs")
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
fn f16_is_refused_on_the_cpu() {
    let out = encode(&["--device", "cpu", "--precision", "f16"]);
    assert_fails(&out, "--precision f16 runs on a GPU only", "--precision f32");
}

/// On a CPU with AVX512_BF16 the refusal is what `VAE_DISABLE_AVX512_BF16`
/// makes of it; on one without, what the CPU does anyway.
#[test]
fn bf16_on_a_cpu_without_avx512_bf16_is_one_line_naming_it() {
    let out = encode_with(&["--device", "cpu", "--precision", "bf16"], &[("VAE_DISABLE_AVX512_BF16", "1")]);
    assert_fails(&out, "--precision bf16 on the CPU needs AVX512_BF16, which this CPU lacks", "--precision f32");
}
