//! The bad-input corpus (tests/bad/, written by tools/make_bad_corpus.py plus
//! PngSuite's corrupt x*.png files): each case must fail with exit code 1, one
//! error line naming the file and the problem, no panic, and no output file.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_fails, fixtures, listing, stderr, vae};

fn bad(kind: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad").join(kind).join(name)
}

fn tiny_sd() -> String {
    fixtures().join("weights/tiny_sd").display().to_string()
}

/// Copies `file` into a fresh folder, runs `vae` there with `args` (where
/// `{}` stands for the file's name) and checks the failure.
fn check(file: &Path, args: &[&str], problem: &str) {
    let dir = tempfile::tempdir().unwrap();
    let name = file.file_name().unwrap().to_str().unwrap();
    std::fs::copy(file, dir.path().join(name)).unwrap();
    let args: Vec<String> = args.iter().map(|a| a.replace("{}", name)).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = vae(dir.path(), &args);
    assert_fails(&out, name, problem);
    assert_eq!(stderr(&out).lines().filter(|l| l.starts_with("vae: error:")).count(), 1, "{}", stderr(&out));
    let mut expected = vec![name.to_owned()];
    expected.sort();
    assert_eq!(listing(dir.path()), expected, "an output was left behind");
}

fn bad_image(name: &str, problem: &str) {
    check(&bad("images", name), &["encode", "{}", "-o", "out.safetensors", "--weights", &tiny_sd()], problem);
}

fn bad_weights(name: &str, problem: &str) {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("in.png");
    std::fs::copy(fixtures().join("../pngsuite/basn2c08.png"), &image).unwrap();
    let image = image.display().to_string();
    check(&bad("weights", name), &["encode", &image, "-o", "out.safetensors", "--weights", "{}"], problem);
}

fn bad_latent(name: &str, problem: &str) {
    check(&bad("latents", name), &["decode", "{}", "-o", "out.png", "--weights", &tiny_sd()], problem);
}

fn inspected_latent(name: &str, problem: &str) {
    check(&bad("latents", name), &["inspect", "{}"], problem);
}

fn previewed_latent(name: &str, problem: &str) {
    check(&bad("latents", name), &["preview", "{}", "-o", "out.png"], problem);
}

macro_rules! cases {
    ($check:ident: $($test:ident => $file:literal, $problem:literal;)*) => {
        $(#[test] fn $test() { $check($file, $problem) })*
    };
}

// PngSuite's corrupt files: bad signatures, CRCs, chunk lengths, missing IDAT,
// wrong colour types and bit depths.
cases! { bad_image:
    pngsuite_xc1n0g08 => "xc1n0g08.png", "not a readable image";
    pngsuite_xc9n2c08 => "xc9n2c08.png", "not a readable image";
    pngsuite_xcrn0g04 => "xcrn0g04.png", "not a readable image";
    pngsuite_xcsn0g01 => "xcsn0g01.png", "not a readable image";
    pngsuite_xd0n2c08 => "xd0n2c08.png", "not a readable image";
    pngsuite_xd3n2c08 => "xd3n2c08.png", "not a readable image";
    pngsuite_xd9n2c08 => "xd9n2c08.png", "not a readable image";
    pngsuite_xdtn0g01 => "xdtn0g01.png", "not a readable image";
    pngsuite_xhdn0g08 => "xhdn0g08.png", "not a readable image";
    pngsuite_xlfn0g04 => "xlfn0g04.png", "not a readable image";
    pngsuite_xs1n0g01 => "xs1n0g01.png", "not a readable image";
    pngsuite_xs2n0g01 => "xs2n0g01.png", "not a readable image";
    pngsuite_xs4n0g01 => "xs4n0g01.png", "not a readable image";
    pngsuite_xs7n0g01 => "xs7n0g01.png", "not a readable image";
    empty_image => "empty.png", "not a readable image";
    text_file_as_image => "text.png", "not a readable image";
    truncated_png => "truncated.png", "not a readable image";
    zero_width => "zero_width.png", "not a readable image";
    zero_height => "zero_height.png", "not a readable image";
    decompression_bomb => "bomb.png", "100000x100000, more than --max-pixels 67108864";
    bomb_with_wrong_extension => "bomb_named.jpg", "more than --max-pixels";
}

cases! { bad_weights:
    truncated_weights => "truncated.safetensors", "file is truncated or padded";
    absurd_header_length => "absurd_header.safetensors", "header claims 1152921504606846976 bytes";
    header_not_json => "header_not_json.safetensors", "header is not JSON text";
    two_byte_weights => "tiny.safetensors", "too short for a safetensors header";
    png_as_weights => "not_safetensors.safetensors", "not a safetensors file";
    unknown_layout => "unknown_layout.safetensors", "no Stable Diffusion VAE";
    no_tensors => "empty.safetensors", "no Stable Diffusion VAE";
    huge_declared_shapes => "huge_shapes.safetensors", "tensors do not fit an AutoencoderKL";
    pickle_ckpt => "model.ckpt", "refusing a PyTorch pickle";
    pickle_pt => "model.pt", "refusing a PyTorch pickle";
    pickle_pth => "model.pth", "refusing a PyTorch pickle";
    pickle_bin => "model.bin", "refusing a PyTorch pickle";
    pickle_named_safetensors => "pickle_inside.safetensors", "refusing a PyTorch pickle";
    torch_zip_named_safetensors => "zip_inside.safetensors", "refusing a PyTorch pickle";
}

cases! { bad_latent:
    latent_rank_2 => "wrong_rank.safetensors", "shape [4, 16]";
    latent_rank_5 => "five_dims.safetensors", "shape [1, 1, 4, 4, 4]";
    latent_batch_of_two => "batch_of_two.safetensors", "shape [2, 4, 4, 2]";
    latent_empty_dimension => "empty_dim.safetensors", "shape [1, 4, 0, 4]";
    latent_wrong_channels => "wrong_channels.safetensors", "3 channels but the weights expect 4";
    latent_nan => "nan.safetensors", "1 NaN or infinite values";
    latent_inf => "inf.safetensors", "2 NaN or infinite values";
    latent_several_tensors => "several.safetensors", "several tensors and none named `latent`: logvar, mean";
    latent_int_dtype => "int_dtype.safetensors", "dtype I32";
    latent_no_tensor => "no_tensor.safetensors", "holds no tensor";
    latent_zero_scaling => "bad_scaling.safetensors", "metadata `scaling_factor`";
    latent_garbage => "garbage.safetensors", "not a safetensors latent file: header claims";
    latent_empty_file => "empty.safetensors", "file is 0 bytes, too short";
    npy_shape_overflows => "overflow.npy", "[1, 4, 4611686018427387905, 4], whose number of values overflows 64 bits";
    npy_shape_wraps_to_zero => "wraps_to_zero.npy", "[1, 4, 4611686018427387904, 4], whose number of values overflows";
    npy_short_data => "short_data.npy", "256 bytes of data, but the file holds 16";
    npy_long_data => "long_data.npy", "256 bytes of data, but the file holds 260";
    comfy_shape_overflows => "overflow.latent", "declared size overflows";
    safetensors_shape_overflows => "overflow.safetensors", "declared size overflows";
    latent_huge_scaling => "huge_scaling.safetensors", "metadata `scaling_factor` = \"1e39\"";
    latent_subnormal_scaling => "tiny_scaling.safetensors", "metadata `scaling_factor` = \"1e-40\"";
    latent_huge_shift => "huge_shift.safetensors", "metadata `shift_factor` = \"1e300\"";
    latent_overflows_once_unscaled => "huge_values.safetensors", "the decoded image has";
    latent_overflows_with_its_scaling => "unscaled_overflow.safetensors", "the decoded image has";
}

cases! { inspected_latent:
    inspect_npy_shape_overflows => "overflow.npy", "whose number of values overflows 64 bits";
    inspect_npy_shape_wraps_to_zero => "wraps_to_zero.npy", "whose number of values overflows 64 bits";
    inspect_npy_short_data => "short_data.npy", "but the file holds 16";
    inspect_comfy_shape_overflows => "overflow.latent", "declared size overflows";
}

cases! { previewed_latent:
    preview_npy_shape_overflows => "overflow.npy", "whose number of values overflows 64 bits";
    preview_npy_shape_wraps_to_zero => "wraps_to_zero.npy", "whose number of values overflows 64 bits";
    preview_npy_long_data => "long_data.npy", "but the file holds 260";
    preview_comfy_shape_overflows => "overflow.latent", "declared size overflows";
    preview_overflows_once_unscaled => "unscaled_overflow.safetensors", "the preview has 64 infinite values (the latent unscaled by 1e-30)";
}

/// A latent whose shape overflows, in the middle of a batch: the files
/// after it are still decoded.
#[test]
fn an_overflowing_latent_in_a_batch_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixtures().join("../pngsuite/basn2c08.png"), dir.path().join("in.png")).unwrap();
    std::fs::create_dir(dir.path().join("z")).unwrap();
    let out = vae(dir.path(), &["encode", "in.png", "-o", "z/c.safetensors", "--weights", &tiny_sd()]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::copy(dir.path().join("z/c.safetensors"), dir.path().join("z/a.safetensors")).unwrap();
    std::fs::copy(bad("latents", "overflow.npy"), dir.path().join("z/b.npy")).unwrap();
    let out = vae(dir.path(), &["decode", "z", "-o", "out", "--weights", &tiny_sd()]);
    assert_fails(&out, "b.npy", "overflows 64 bits");
    assert!(stderr(&out).contains("decoded 2 of 3 files; 1 failed"), "{}", stderr(&out));
    assert_eq!(listing(&dir.path().join("out")), ["a.png", "c.png"]);
}

#[test]
fn latent_over_max_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let data = vec![0u8; 4 * 8 * 8 * 4];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1, 4, 8, 8], &data).unwrap();
    let path = dir.path().join("z.safetensors");
    safetensors::serialize_to_file([("latent", view)], None, &path).unwrap();
    check(
        &path,
        &["decode", "{}", "-o", "out.png", "--max-pixels", "1000", "--weights", &tiny_sd()],
        "4096 pixels, more than --max-pixels 1000",
    );
}

/// Rewrites the tiny_sd weights through `edit` into a file in `dir`.
fn edited_weights(
    dir: &Path,
    edit: impl FnOnce(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>),
) -> PathBuf {
    let bytes = std::fs::read(fixtures().join("weights/tiny_sd/diffusion_pytorch_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> =
        st.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
    edit(&mut tensors);
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let path = dir.join("edited.safetensors");
    safetensors::serialize_to_file(views, None, &path).unwrap();
    path
}

#[test]
fn missing_and_misshaped_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    edited_weights(dir.path(), |t| {
        t.retain(|(n, ..)| n != "decoder.conv_in.bias");
        let bias = t.iter_mut().find(|(n, ..)| n == "encoder.conv_out.bias").unwrap();
        bias.2 = vec![4];
        bias.3.truncate(16);
    });
    let image = fixtures().join("../pngsuite/basn2c08.png").display().to_string();
    let out = vae(dir.path(), &["encode", &image, "-o", "out.safetensors", "--weights", "edited.safetensors"]);
    assert_fails(&out, "edited.safetensors", "missing 1: decoder.conv_in.bias");
    assert!(stderr(&out).contains("encoder.conv_out.bias (expected [8], file has [4])"), "{}", stderr(&out));
    assert!(!dir.path().join("out.safetensors").exists());
}

#[test]
fn unexpected_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_weights(dir.path(), |t| {
        t.push(("encoder.extra_block.weight".into(), safetensors::Dtype::F32, vec![1], vec![0; 4]));
    });
    let out = vae(dir.path(), &["encode", "x.png", "--weights", path.to_str().unwrap()]);
    assert_fails(&out, "edited.safetensors", "unexpected 1: encoder.extra_block.weight");
}

#[test]
fn integer_weights_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_weights(dir.path(), |t| {
        let w = t.iter_mut().find(|(n, ..)| n == "decoder.conv_out.bias").unwrap();
        w.1 = safetensors::Dtype::I32;
    });
    let out = vae(dir.path(), &["encode", "x.png", "--weights", path.to_str().unwrap()]);
    assert_fails(&out, "edited.safetensors", "decoder.conv_out.bias has dtype I32");
}

/// Every valid PngSuite file (grey, palette, 16-bit, alpha, interlaced,
/// 1x1 to 40x40) encodes, in one batch run into a folder.
#[test]
fn every_valid_pngsuite_file_encodes() {
    let suite = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pngsuite");
    let dir = tempfile::tempdir().unwrap();
    let out = vae(dir.path(), &["encode", suite.to_str().unwrap(), "-o", "latents", "--weights", &tiny_sd()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pngs: Vec<String> = listing(&suite).into_iter().filter(|n| n.ends_with(".png")).collect();
    let latents = listing(&dir.path().join("latents"));
    assert_eq!(latents.len(), pngs.len());
    assert!(stderr(&out).contains(&format!("encoded {0} of {0} files", pngs.len())), "{}", stderr(&out));
}

/// A batch with a bad file: the rest complete, the bad one is named, a
/// summary follows, and the exit code says something failed.
#[test]
fn a_bad_file_in_a_batch_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let suite = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pngsuite");
    std::fs::copy(suite.join("basn2c08.png"), dir.path().join("a.png")).unwrap();
    std::fs::copy(bad("images", "xcrn0g04.png"), dir.path().join("b.png")).unwrap();
    std::fs::create_dir(dir.path().join("more")).unwrap();
    std::fs::copy(suite.join("s01i3p01.png"), dir.path().join("more/c.png")).unwrap();
    let out = vae(dir.path(), &["encode", "a.png", "b.png", "more", "-o", "out", "--weights", &tiny_sd()]);
    assert_fails(&out, "b.png", "not a readable image");
    assert!(stderr(&out).contains("encoded 2 of 3 files; 1 failed"), "{}", stderr(&out));
    assert_eq!(listing(&dir.path().join("out")), ["a.safetensors", "c.safetensors"]);
}
