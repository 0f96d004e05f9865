//! `vae dataset`: shards in, latent shards out, shared among worker
//! processes; a worker killed mid-shard and started again leaves every sample
//! exactly once, locally and on an S3-compatible server on 127.0.0.1.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{fixtures, stderr, stdout, vae};
use vae::latent::Latent;

const SHARDS: usize = 6;
const PER_SHARD: usize = 12;

fn tiny_sd() -> String {
    fixtures().join("weights/tiny_sd").display().to_string()
}

/// The keys of shard `s`: `s` then the sample number, as img2dataset names them.
fn key(s: usize, i: usize) -> String {
    format!("{s:05}{i:04}")
}

/// A `width` x `height` crop of a Kodak photo, as PNG or JPEG bytes.
fn image_bytes(seed: usize, width: u32, height: u32, jpeg: bool) -> Vec<u8> {
    let img = image::open(fixtures().join("images/kodim03.png")).unwrap().to_rgb8();
    let crop =
        image::imageops::crop_imm(&img, (seed * 13 % 300) as u32, (seed * 7 % 200) as u32, width, height).to_image();
    let mut bytes = std::io::Cursor::new(Vec::new());
    let format = if jpeg { image::ImageFormat::Jpeg } else { image::ImageFormat::Png };
    crop.write_to(&mut bytes, format).unwrap();
    bytes.into_inner()
}

fn append(builder: &mut tar::Builder<std::fs::File>, name: &str, data: &[u8]) {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(1_700_000_000);
    builder.append_data(&mut header, name, data).unwrap();
}

/// `SHARDS` WebDataset shards of `PER_SHARD` samples (image, .json, .txt) in
/// `dir`; shard 0 also has a sample with a corrupt image and one without
/// an image. Returns the samples expected to encode, by key, with their image.
fn make_shards(dir: &Path) -> BTreeMap<String, (String, Vec<u8>)> {
    std::fs::create_dir_all(dir).unwrap();
    let mut expected = BTreeMap::new();
    for s in 0..SHARDS {
        let mut builder = tar::Builder::new(std::fs::File::create(dir.join(format!("{s:05}.tar"))).unwrap());
        for i in 0..PER_SHARD {
            let k = key(s, i);
            let jpeg = i % 3 == 0;
            let (w, h) = (48 + 8 * (i as u32 % 3), 40 + 8 * (s as u32 % 2));
            let image = image_bytes(s * PER_SHARD + i, w, h, jpeg);
            let ext = if jpeg { "jpg" } else { "png" };
            append(&mut builder, &format!("{k}.{ext}"), &image);
            append(&mut builder, &format!("{k}.json"), format!("{{\"key\": \"{k}\", \"width\": {w}}}").as_bytes());
            append(&mut builder, &format!("{k}.txt"), format!("caption {k}").as_bytes());
            expected.insert(k, (ext.to_owned(), image));
        }
        if s == 0 {
            append(&mut builder, "0000099990.jpg", b"not a jpeg at all");
            append(&mut builder, "0000099990.txt", b"broken");
            append(&mut builder, "0000099991.json", b"{}");
        }
        builder.finish().unwrap();
    }
    expected
}

/// The members of a tar, in order: (name, bytes).
fn members(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut archive =
        tar::Archive::new(std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (name, data)
        })
        .collect()
}

/// Every `.tar` in `dir` with its members, by file name.
fn output_shards(dir: &Path) -> Shards {
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!name.contains("partial"), "a partial shard was left: {name}");
        if name.ends_with(".tar") {
            found.insert(name, members(&path));
        }
    }
    found
}

/// Output shards by name: their members as (name, bytes).
type Shards = BTreeMap<String, Vec<(String, Vec<u8>)>>;
/// The same with latents parsed, other files as bytes.
type Parsed = BTreeMap<String, Vec<(String, Result<Latent, Vec<u8>>)>>;

/// A shard's members with latents parsed (their metadata's order in the
/// file is not fixed), to compare runs.
fn parsed(shards: &Shards) -> Parsed {
    shards
        .iter()
        .map(|(name, members)| {
            let members = members
                .iter()
                .map(|(member, bytes)| {
                    let value = match member.contains(".latent.") {
                        true => Ok(Latent::from_bytes(bytes, Path::new(member)).unwrap()),
                        false => Err(bytes.clone()),
                    };
                    (member.clone(), value)
                })
                .collect();
            (name.clone(), members)
        })
        .collect()
}

/// Asserts that two runs wrote the same shards, members and latents.
fn assert_same_output(a: &Shards, b: &Shards) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    let (a, b) = (parsed(a), parsed(b));
    for (name, members) in &a {
        let names = |m: &Vec<(String, Result<Latent, Vec<u8>>)>| m.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(members), names(&b[name]), "{name}");
        for ((member, x), (_, y)) in members.iter().zip(&b[name]) {
            assert!(x == y, "{name}: {member} differs");
        }
    }
}

/// Checks that every expected sample appears exactly once across `shards`,
/// as its latent followed by its .json and .txt, and nothing else.
fn assert_each_sample_once(
    shards: &BTreeMap<String, Vec<(String, Vec<u8>)>>,
    expected: &BTreeMap<String, (String, Vec<u8>)>,
) {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for members in shards.values() {
        for chunk in members.chunks(3) {
            let k = chunk[0].0.strip_suffix(".latent.safetensors").unwrap_or_else(|| panic!("{}", chunk[0].0));
            assert_eq!(chunk[1].0, format!("{k}.json"));
            assert_eq!(chunk[2].0, format!("{k}.txt"));
            assert_eq!(chunk[2].1, format!("caption {k}").as_bytes());
            *counts.entry(k.to_owned()).or_default() += 1;
        }
    }
    let once: Vec<&String> = counts.iter().filter(|(_, n)| **n == 1).map(|(k, _)| k).collect();
    assert_eq!(counts.len(), once.len(), "samples written more than once: {counts:?}");
    assert_eq!(once, expected.keys().collect::<Vec<_>>(), "samples lost or added");
}

#[test]
fn shards_give_latents_beside_their_files_and_a_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let expected = make_shards(&dir.path().join("in"));
    let out = vae(dir.path(), &["dataset", "encode", "in", "-o", "out", "-w", &tiny_sd(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let shards = output_shards(&dir.path().join("out"));
    assert_eq!(shards.len(), SHARDS);
    assert_each_sample_once(&shards, &expected);

    // Each latent is the one `vae encode` gives for the sample's image.
    for k in [key(0, 0), key(0, 1), key(3, 7)] {
        let (ext, image) = &expected[&k];
        let file = dir.path().join(format!("{k}.{ext}"));
        std::fs::write(&file, image).unwrap();
        let single =
            vae(dir.path(), &["encode", file.to_str().unwrap(), "-o", &format!("{k}.safetensors"), "-w", &tiny_sd()]);
        assert!(single.status.success(), "{}", stderr(&single));
        let alone = Latent::read(&dir.path().join(format!("{k}.safetensors"))).unwrap();
        let shard = &shards[&format!("{}.tar", &k[..5])];
        let (_, bytes) = shard.iter().find(|(n, _)| *n == format!("{k}.latent.safetensors")).unwrap();
        let from_shard = Latent::from_bytes(bytes, Path::new(&k)).unwrap();
        assert_eq!(
            (from_shard.channels, from_shard.height, from_shard.width),
            (alone.channels, alone.height, alone.width)
        );
        assert_eq!(from_shard.data, alone.data, "{k}");
        assert_eq!(from_shard.meta.width, alone.meta.width);
    }

    // The manifest of shard 0 names the two skipped samples and why.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("out/00000.json")).unwrap()).unwrap();
    assert_eq!(manifest["samples"], PER_SHARD + 2);
    assert_eq!(manifest["encoded"], PER_SHARD);
    let skipped = manifest["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 2, "{manifest}");
    assert_eq!(skipped[0]["key"], "0000099990");
    assert!(skipped[0]["reason"].as_str().unwrap().contains("0000099990.jpg: not a readable image"), "{manifest}");
    assert_eq!(skipped[0]["kind"], "unreadable image");
    assert_eq!(skipped[1]["key"], "0000099991");
    assert_eq!(skipped[1]["kind"], "no image");
    assert_eq!(skipped[1]["reason"], "no image file (has json)");

    // --json: a line per shard, then the run's report.
    let lines: Vec<serde_json::Value> = stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), SHARDS + 1);
    assert_eq!(lines[SHARDS]["report"]["encoded"], SHARDS * PER_SHARD);
    assert_eq!(lines[SHARDS]["report"]["skipped"], 2);

    // `dataset report` sums the manifests.
    let report = vae(dir.path(), &["dataset", "report", "out", "--json"]);
    assert!(report.status.success(), "{}", stderr(&report));
    let last: serde_json::Value = serde_json::from_str(stdout(&report).lines().last().unwrap()).unwrap();
    assert_eq!(last["total"]["shards"], SHARDS);
    assert_eq!(last["total"]["encoded"], SHARDS * PER_SHARD);
    assert_eq!(last["total"]["skipped"], 2);
    assert_eq!(last["total"]["skipped_by_reason"], serde_json::json!({"no image": 1, "unreadable image": 1}));

    // In batches (sizes mixed within a shard: grouped into passes), the same
    // shards: members in the same order, and the same latents.
    let batched = vae(dir.path(), &["dataset", "encode", "in", "-o", "batched", "-w", &tiny_sd(), "--batch-size", "5"]);
    assert!(batched.status.success(), "{}", stderr(&batched));
    assert_same_output(&shards, &output_shards(&dir.path().join("batched")));

    // Run again: every shard is done, so the weights are not even loaded.
    let again = vae(dir.path(), &["dataset", "encode", "in", "-o", "out", "-w", "missing.safetensors"]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(stderr(&again).contains("6 of them done already"), "{}", stderr(&again));
}

#[test]
fn folders_braces_npy_and_bad_shards() {
    let dir = tempfile::tempdir().unwrap();
    make_shards(&dir.path().join("in"));
    // A folder of samples (img2dataset's "files" layout: one folder per shard).
    let folder = dir.path().join("files/00042");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("a.png"), image_bytes(1, 40, 32, false)).unwrap();
    std::fs::write(folder.join("a.txt"), "first").unwrap();
    std::fs::write(folder.join("b.jpg"), image_bytes(2, 32, 32, true)).unwrap();
    std::fs::write(dir.path().join("files/00042_stats.json"), "{}").unwrap();
    // A truncated shard fails alone: named, no output, the others done.
    let whole = std::fs::read(dir.path().join("in/00001.tar")).unwrap();
    std::fs::write(dir.path().join("in/00009.tar"), &whole[..whole.len() / 2 + 100]).unwrap();

    let out = vae(
        dir.path(),
        &[
            "dataset",
            "encode",
            "in/{00001..00002}.tar",
            "in/00009.tar",
            "files",
            "-o",
            "out",
            "-w",
            &tiny_sd(),
            "--format",
            "npy",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    let line = err.lines().find(|l| l.starts_with("vae: error:")).unwrap();
    assert!(line.contains("00009.tar") && line.contains("damaged tar"), "{line}");
    let shards = output_shards(&dir.path().join("out"));
    assert_eq!(shards.keys().collect::<Vec<_>>(), ["00001.tar", "00002.tar", "00042.tar"]);
    let names: Vec<&str> = shards["00042.tar"].iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a.latent.npy", "a.txt", "b.latent.npy"]);
    assert!(!dir.path().join("out/00009.json").exists());

    // Usage errors: two shards of one name, an index without a count.
    let clash =
        vae(dir.path(), &["dataset", "encode", "in/00001.tar", "files/00042", "in", "-o", "o2", "-w", &tiny_sd()]);
    assert_eq!(clash.status.code(), Some(1));
    assert!(stderr(&clash).contains("two shards named 00001"), "{}", stderr(&clash));
    let index = vae(dir.path(), &["dataset", "encode", "in", "-o", "o3", "--worker-index", "1"]);
    assert!(stderr(&index).contains("--worker-index needs --num-workers"), "{}", stderr(&index));
}

/// Starts `vae dataset encode` as worker `index` of `count`.
fn worker(dir: &Path, input: &str, output: &str, index: usize, count: usize, env: &[(String, String)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_vae"))
        .args(["dataset", "encode", input, "-o", output, "-w", &tiny_sd(), "--tmp-dir", "tmp"])
        .env("JOB_COMPLETION_INDEX", index.to_string())
        .env("VAE_NUM_WORKERS", count.to_string())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: kill has no memory preconditions; the pid is our own child's.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
}

/// Waits until `partial` (a shard being written) holds some samples, then
/// freezes the worker there; true when it froze mid-shard (the shard still
/// partial and not committed), false when the worker got past it first.
fn freeze_mid_shard(child: &mut Child, partial: &dyn Fn() -> PathBuf, committed: &dyn Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        if std::fs::metadata(partial()).is_ok_and(|m| m.len() > 0) {
            signal(child, libc::SIGSTOP);
            if std::fs::metadata(partial()).is_ok_and(|m| m.len() > 0) && !committed() {
                return true;
            }
            signal(child, libc::SIGCONT);
            return false;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("worker never started {}", partial().display());
}

/// Three workers over the shards; worker 1 is killed in the middle of one
/// of its shards, then started again. `partial(name)` is where a shard is
/// assembled, `committed(name)` whether its output exists.
fn kill_and_restart(
    dir: &Path,
    input: &str,
    output: &str,
    env: &[(String, String)],
    partial: &dyn Fn(&str) -> PathBuf,
    committed: &dyn Fn(&str) -> bool,
) {
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let mut others: Vec<Child> = [0, 2].iter().map(|&i| worker(dir, input, output, i, 3, env)).collect();
    // Worker 1 of 3 owns shards 1 and 4; freeze it inside one of them, then kill it.
    let mut victim = worker(dir, input, output, 1, 3, env);
    let caught = ["00001", "00004"]
        .into_iter()
        .find(|shard| freeze_mid_shard(&mut victim, &|| partial(shard), &|| committed(shard)));
    victim.kill().unwrap();
    let (_, victim_err) = victim.wait_with_output_ref();
    let shard = caught.unwrap_or_else(|| panic!("the worker was not caught in the middle of a shard: {victim_err}"));
    assert!(!committed(shard), "the killed shard was committed");
    for child in &mut others {
        let (status, err) = child.wait_with_output_ref();
        assert!(status.success(), "{err}");
    }
    let finished: Vec<&str> = ["00001", "00004"].into_iter().filter(|s| committed(s)).collect();
    // Started again, the worker redoes only the unfinished shard.
    let restarted = worker(dir, input, output, 1, 3, env).wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&restarted.stderr).into_owned();
    assert!(restarted.status.success(), "{err}");
    let redone: Vec<String> =
        err.lines().filter_map(|l| l.split_once(": encoding (").map(|(name, _)| name.to_owned())).collect();
    assert!(redone.contains(&shard.to_owned()), "{err}");
    assert!(finished.iter().all(|f| !redone.contains(&f.to_string())), "a finished shard was redone: {err}");
    assert_eq!(redone.len() + finished.len(), 2, "{err}");
}

trait WaitRef {
    fn wait_with_output_ref(&mut self) -> (std::process::ExitStatus, String);
}

impl WaitRef for Child {
    fn wait_with_output_ref(&mut self) -> (std::process::ExitStatus, String) {
        let mut err = String::new();
        self.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        (self.wait().unwrap(), err)
    }
}

#[test]
fn a_worker_killed_mid_shard_and_restarted_leaves_each_sample_once() {
    let dir = tempfile::tempdir().unwrap();
    let expected = make_shards(&dir.path().join("in"));
    let reference = vae(dir.path(), &["dataset", "encode", "in", "-o", "ref", "-w", &tiny_sd(), "-q"]);
    assert!(reference.status.success(), "{}", stderr(&reference));

    let out = dir.path().join("out");
    kill_and_restart(dir.path(), "in", "out", &[], &|shard| out.join(format!(".{shard}.tar.partial")), &|shard| {
        out.join(format!("{shard}.tar")).exists()
    });
    let shards = output_shards(&out);
    assert_each_sample_once(&shards, &expected);
    // The same latents, bit for bit, as one process gave.
    assert_same_output(&shards, &output_shards(&dir.path().join("ref")));
    for s in 0..SHARDS {
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(format!("{s:05}.json"))).unwrap()).unwrap();
        assert_eq!(manifest["worker"], s % 3, "shard {s} was done by its own worker");
    }
}

/// An S3-compatible server (s3s-fs) over `root` on 127.0.0.1, for as long as
/// the returned runtime lives; its endpoint URL.
fn s3_server(root: &Path) -> (tokio::runtime::Runtime, String) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder as ConnBuilder;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let fs = s3s_fs::FileSystem::new(root).unwrap();
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single("test-key", "test-secret"));
    let service = builder.build();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    runtime.spawn(async move {
        let http = ConnBuilder::new(TokioExecutor::new());
        loop {
            let Ok((socket, _)) = listener.accept().await else { continue };
            let conn = http.serve_connection(TokioIo::new(socket), service.clone()).into_owned();
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    });
    (runtime, endpoint)
}

#[test]
fn the_same_over_an_s3_compatible_server() {
    let dir = tempfile::tempdir().unwrap();
    let expected = make_shards(&dir.path().join("in"));
    let reference = vae(dir.path(), &["dataset", "encode", "in", "-o", "ref", "-w", &tiny_sd(), "-q"]);
    assert!(reference.status.success(), "{}", stderr(&reference));

    // The bucket `data` holds the shards under in/.
    let root = dir.path().join("s3");
    std::fs::create_dir_all(root.join("data/in")).unwrap();
    for s in 0..SHARDS {
        std::fs::copy(dir.path().join(format!("in/{s:05}.tar")), root.join(format!("data/in/{s:05}.tar"))).unwrap();
    }
    let (_server, endpoint) = s3_server(&root);
    let env: Vec<(String, String)> = [
        ("AWS_ACCESS_KEY_ID", "test-key"),
        ("AWS_SECRET_ACCESS_KEY", "test-secret"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT", &endpoint),
        ("AWS_ALLOW_HTTP", "true"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();

    let bucket_out = root.join("data/out");
    let tmp = dir.path().join("tmp");
    kill_and_restart(
        dir.path(),
        "s3://data/in/",
        "s3://data/out/",
        &env,
        &|shard| {
            // The worker assembles a shard in --tmp-dir before its upload.
            std::fs::read_dir(&tmp)
                .into_iter()
                .flatten()
                .map(|e| e.unwrap().path())
                .find(|p| p.to_string_lossy().ends_with(&format!("-{shard}.tar.partial")))
                .unwrap_or_else(|| tmp.join("none"))
        },
        &|shard| bucket_out.join(format!("{shard}.tar")).exists(),
    );
    let shards = output_shards(&bucket_out);
    assert_each_sample_once(&shards, &expected);
    assert_same_output(&shards, &output_shards(&dir.path().join("ref")));
    let leftovers: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // `dataset report` reads the manifests from the bucket.
    let mut report = Command::new(env!("CARGO_BIN_EXE_vae"));
    let report = report.args(["dataset", "report", "s3://data/out/", "--json"]).envs(env.iter().map(|(k, v)| (k, v)));
    let report = report.output().unwrap();
    assert!(report.status.success(), "{}", String::from_utf8_lossy(&report.stderr));
    let last: serde_json::Value = serde_json::from_str(stdout(&report).lines().last().unwrap()).unwrap();
    assert_eq!(last["total"]["encoded"], SHARDS * PER_SHARD);
}

// Hostile and careless inputs (issue 18): each case fails alone, with a
// record or one clear error, and nothing is lost, leaked or corrupted.

/// A tar at `path` holding `members` as (name bytes, data) regular files.
fn tar_of(path: &Path, members: &[(&[u8], &[u8])]) {
    use std::os::unix::ffi::OsStrExt;
    let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, data) in members {
        append(&mut builder, std::ffi::OsStr::from_bytes(name).to_str().unwrap_or("?"), data);
    }
    builder.finish().unwrap();
}

/// `vae dataset encode ARGS -w tiny_sd` in `dir`.
fn dataset_encode(dir: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["dataset", "encode"];
    all.extend(args);
    let weights = tiny_sd();
    all.extend(["-w", &weights]);
    vae(dir, &all)
}

fn manifest(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// The (key, kind) of a manifest's skipped samples.
fn skipped_kinds(manifest: &serde_json::Value) -> Vec<(String, String)> {
    let skipped = manifest["skipped"].as_array().unwrap();
    skipped.iter().map(|s| (s["key"].as_str().unwrap().to_owned(), s["kind"].as_str().unwrap().to_owned())).collect()
}

fn member_names(path: &Path) -> Vec<String> {
    members(path).into_iter().map(|(n, _)| n).collect()
}

/// Two small shards `in/00000.tar` and `in/00001.tar` of two samples each.
fn small_shards(dir: &Path) {
    std::fs::create_dir_all(dir.join("in")).unwrap();
    for s in 0..2 {
        let (a, b) = (image_bytes(s, 32, 32, false), image_bytes(s + 5, 32, 24, true));
        let path = dir.join(format!("in/{s:05}.tar"));
        tar_of(&path, &[(b"a.png", &a), (b"a.txt", b"first"), (b"b.jpg", &b), (b"b.txt", b"second")]);
    }
}

#[test]
fn a_second_writer_of_a_shard_leaves_it_to_the_first() {
    let dir = tempfile::tempdir().unwrap();
    small_shards(dir.path());
    // Another worker is writing shard 00000: it holds its partial file's lock.
    std::fs::create_dir_all(dir.path().join("out")).unwrap();
    let partial = dir.path().join("out/.00000.tar.partial");
    std::fs::write(&partial, b"the first worker's samples").unwrap();
    let held = std::fs::OpenOptions::new().write(true).open(&partial).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor `held` owns for the whole test.
    assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);

    let second = dataset_encode(dir.path(), &["in", "-o", "out"]);
    common::assert_fails(&second, ".00000.tar.partial", "another worker is writing this shard");
    assert_eq!(std::fs::read(&partial).unwrap(), b"the first worker's samples", "the holder's file was touched");
    assert!(!dir.path().join("out/00000.tar").exists(), "the held shard was committed");
    assert!(dir.path().join("out/00001.tar").exists(), "the other shard was not done");

    // The holder gone (a killed worker's lock dies with it), a rerun does it.
    drop(held);
    let again = dataset_encode(dir.path(), &["in", "-o", "out"]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        member_names(&dir.path().join("out/00000.tar")),
        ["a.latent.safetensors", "a.txt", "b.latent.safetensors", "b.txt"]
    );
    assert!(!partial.exists());
}

#[test]
fn an_output_folder_holding_the_inputs_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    small_shards(dir.path());
    let before = std::fs::read(dir.path().join("in/00000.tar")).unwrap();
    for args in [&["in", "-o", "in", "--force"][..], &["in", "-o", "in"], &["in/00001.tar", "-o", "./in/../in"]] {
        let out = dataset_encode(dir.path(), args);
        common::assert_fails(&out, "in/0000", "the output folder");
        assert!(stderr(&out).contains("holds this input shard"), "{}", stderr(&out));
        assert_eq!(common::listing(&dir.path().join("in")), ["00000.tar", "00001.tar"], "{args:?}");
    }
    assert_eq!(std::fs::read(dir.path().join("in/00000.tar")).unwrap(), before);
    // A folder shard: the output folder is the shard, or inside it.
    let folder = dir.path().join("files/00042");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("a.png"), image_bytes(1, 32, 32, false)).unwrap();
    for output in ["files/00042", "files/00042/latents"] {
        let out = dataset_encode(dir.path(), &["files/00042", "-o", output, "--force"]);
        common::assert_fails(&out, "files/00042", "holds this input shard");
        assert_eq!(common::listing(&folder), ["a.png"], "{output}");
    }
}

#[test]
fn memory_is_bounded_per_sample_and_per_header() {
    let dir = tempfile::tempdir().unwrap();
    let half_gib: u64 = 512 << 20;
    // A tar: sample a has an image and two side files of 512 MiB (each at
    // the per-file limit, together past the 1 GiB per sample); the data is
    // a hole in a sparse file.
    let path = dir.path().join("big.tar");
    let mut builder = tar::Builder::new(std::fs::File::create(&path).unwrap());
    append(&mut builder, "a.png", &image_bytes(1, 32, 32, false));
    for name in ["a.side1", "a.side2"] {
        let mut header = tar::Header::new_gnu();
        header.set_path(name).unwrap();
        header.set_size(half_gib);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append(&header, std::io::empty()).unwrap();
        use std::io::{Seek, SeekFrom};
        builder.get_mut().seek(SeekFrom::Current(half_gib as i64)).unwrap();
    }
    append(&mut builder, "b.png", &image_bytes(2, 32, 32, false));
    // A GNU long name and a PAX header of 2 MiB (the limit is 1 MiB), each
    // before a sample's image; then a sample after them.
    for (kind, name) in [(tar::EntryType::GNULongName, "././@LongLink"), (tar::EntryType::XHeader, "PaxHeader/c")] {
        let mut header = tar::Header::new_gnu();
        header.set_path(name).unwrap();
        header.set_size(2 << 20);
        header.set_entry_type(kind);
        header.set_cksum();
        builder.append(&header, &vec![b'x'; 2 << 20][..]).unwrap();
        let image = image_bytes(3, 32, 32, false);
        append(&mut builder, if kind == tar::EntryType::XHeader { "d.png" } else { "c.png" }, &image);
    }
    // A PAX header of the usual size names its member.
    let mut header = tar::Header::new_ustar();
    let record = b"19 path=long/e.png\n";
    header.set_path("PaxHeader/e").unwrap();
    header.set_size(record.len() as u64);
    header.set_entry_type(tar::EntryType::XHeader);
    header.set_cksum();
    builder.append(&header, &record[..]).unwrap();
    append(&mut builder, "short-e.png", &image_bytes(4, 32, 32, false));
    append(&mut builder, "f.png", &image_bytes(5, 32, 32, false));
    builder.finish().unwrap();

    let out = dataset_encode(dir.path(), &["big.tar", "-o", "out"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let m = manifest(&dir.path().join("out/big.json"));
    let kinds = skipped_kinds(&m);
    assert_eq!(
        kinds,
        [
            ("a".into(), "sample too large".into()),
            ("c.png".into(), "bad header".into()),
            ("d.png".into(), "bad header".into())
        ]
    );
    assert!(m["skipped"][1]["reason"].as_str().unwrap().contains("GNU long name is 2097152 bytes"), "{m}");
    assert_eq!((m["samples"].as_u64(), m["encoded"].as_u64()), (Some(6), Some(3)), "{m}");
    assert_eq!(
        member_names(&dir.path().join("out/big.tar")),
        ["b.latent.safetensors", "long/e.latent.safetensors", "f.latent.safetensors"]
    );

    // A folder: the same sample, refused from the files' sizes, unread.
    let folder = dir.path().join("files/00007");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("a.png"), image_bytes(1, 32, 32, false)).unwrap();
    for name in ["a.side1", "a.side2"] {
        std::fs::File::create(folder.join(name)).unwrap().set_len(half_gib).unwrap();
    }
    std::fs::write(folder.join("b.png"), image_bytes(2, 32, 32, false)).unwrap();
    let out = dataset_encode(dir.path(), &["files", "-o", "out"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let m = manifest(&dir.path().join("out/00007.json"));
    assert_eq!(skipped_kinds(&m), [("a".into(), "sample too large".into())]);
    assert_eq!(member_names(&dir.path().join("out/00007.tar")), ["b.latent.safetensors"]);
}

#[test]
fn folder_shards_do_not_follow_links() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "SECRET-PASSWD-LINE").unwrap();
    let folder = dir.path().join("files/00042");
    std::fs::create_dir_all(folder.join("sub")).unwrap();
    std::fs::write(folder.join("a.png"), image_bytes(1, 32, 32, false)).unwrap();
    std::fs::write(folder.join("sub/b.png"), image_bytes(2, 32, 32, false)).unwrap();
    std::os::unix::fs::symlink("../../secret", folder.join("a.txt")).unwrap();
    std::os::unix::fs::symlink("../../secret", folder.join("c.png")).unwrap();
    // Loops: to the folder itself, twice, and to its parent.
    std::os::unix::fs::symlink(".", folder.join("loop")).unwrap();
    std::os::unix::fs::symlink(".", folder.join("sub/loop")).unwrap();
    std::os::unix::fs::symlink("..", folder.join("sub/up")).unwrap();

    let out = dataset_encode(dir.path(), &["files", "-o", "out"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let tar = dir.path().join("out/00042.tar");
    assert_eq!(member_names(&tar), ["a.latent.safetensors", "sub/b.latent.safetensors"]);
    assert!(!std::fs::read(&tar).unwrap().windows(6).any(|w| w == b"SECRET"), "the link's target was copied");
    let m = manifest(&dir.path().join("out/00042.json"));
    assert_eq!((m["samples"].as_u64(), m["encoded"].as_u64()), (Some(3), Some(2)), "{m}");
    assert_eq!(skipped_kinds(&m), [("c".into(), "no image".into())]);
    assert!(m["skipped"][0]["reason"].as_str().unwrap().contains("symbolic link"), "{m}");
    let left_out: Vec<&str> =
        m["files_left_out"].as_array().unwrap().iter().map(|l| l["key"].as_str().unwrap()).collect();
    assert_eq!(left_out, ["a", "c"], "{m}");
}

#[test]
fn odd_members_each_get_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let image = image_bytes(1, 32, 32, false);
    let path = dir.path().join("odd.tar");
    let mut builder = tar::Builder::new(std::fs::File::create(&path).unwrap());
    // Two names that differ only in bytes that are not UTF-8.
    use std::os::unix::ffi::OsStrExt;
    for name in [&b"x\xff.png"[..], b"x\xfe.png"] {
        let mut header = tar::Header::new_gnu();
        header.set_size(image.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, std::ffi::OsStr::from_bytes(name), &image[..]).unwrap();
    }
    // A repeated member, a latent already there, a sample of a link only.
    append(&mut builder, "r.png", &image);
    append(&mut builder, "r.txt", b"one");
    append(&mut builder, "r.txt", b"two");
    append(&mut builder, "l.png", &image);
    append(&mut builder, "l.latent.safetensors", b"old latent");
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    builder.append_link(&mut header, "s.png", "/etc/passwd").unwrap();
    append(&mut builder, "ok.png", &image);
    builder.finish().unwrap();

    let out = dataset_encode(dir.path(), &["odd.tar", "-o", "out"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let m = manifest(&dir.path().join("out/odd.json"));
    assert_eq!(
        skipped_kinds(&m),
        [
            (r"x\xff".into(), "bad key".into()),
            (r"x\xfe".into(), "bad key".into()),
            ("r".into(), "repeated file".into()),
            ("l".into(), "has a latent".into()),
            ("s".into(), "no image".into()),
        ]
    );
    assert_eq!((m["samples"].as_u64(), m["encoded"].as_u64()), (Some(6), Some(1)), "{m}");
    assert_eq!(member_names(&dir.path().join("out/odd.tar")), ["ok.latent.safetensors"]);
}

#[test]
fn json_lines_go_on_a_closed_stdout_and_braces_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    small_shards(dir.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_vae"))
        .args(["dataset", "encode", "in", "-o", "out", "--json", "-w", &tiny_sd()])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // `| head -0`
    let (_, err) = child.wait_with_output_ref();
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        common::listing(&dir.path().join("out")),
        ["00000.json", "00000.tar", "00001.json", "00001.tar"],
        "{err}"
    );

    let out = vae(dir.path(), &["dataset", "encode", "x{0..9999}{0..9999}.tar", "-o", "o"]);
    common::assert_fails(&out, "x{0..9999}{0..9999}.tar", "more than 1000000 names");
}

#[test]
fn report_reads_only_manifests_and_refuses_inconsistent_ones() {
    let dir = tempfile::tempdir().unwrap();
    small_shards(dir.path());
    let out = dataset_encode(dir.path(), &["in", "-o", "out"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Unrelated JSON files, one beside a tar of its name.
    std::fs::write(dir.path().join("out/notes.json"), "[1, 2]").unwrap();
    std::fs::write(dir.path().join("out/other.json"), "not even json").unwrap();
    std::fs::write(dir.path().join("out/other.tar"), "").unwrap();
    let report = vae(dir.path(), &["dataset", "report", "out", "--json"]);
    assert!(report.status.success(), "{}", stderr(&report));
    let last: serde_json::Value = serde_json::from_str(stdout(&report).lines().last().unwrap()).unwrap();
    assert_eq!((last["total"]["shards"].as_u64(), last["total"]["encoded"].as_u64()), (Some(2), Some(4)));

    // A manifest whose counts do not add up (the sums would wrap).
    let path = dir.path().join("out/00001.json");
    let mut m = manifest(&path);
    m["encoded"] = serde_json::json!(u64::MAX);
    std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
    let report = vae(dir.path(), &["dataset", "report", "out"]);
    common::assert_fails(&report, "00001.json", "do not make its 2 samples");
}

#[test]
fn file_urls_a_tmp_dir_not_used_and_the_usual_file_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    small_shards(dir.path());
    std::fs::write(dir.path().join("a-file"), "").unwrap();
    let root = dir.path().canonicalize().unwrap();
    let (input, output) = (format!("file://{}/in/00000.tar", root.display()), format!("file://{}/out", root.display()));
    // file:// URLs are local paths; --tmp-dir, a file, is not used by local
    // shards; the files made get the usual mode (0666 less the umask).
    let out = Command::new(env!("CARGO_BIN_EXE_vae"))
        .args(["dataset", "encode", &input, "-o", &output, "--tmp-dir", "a-file", "-w", &tiny_sd()])
        .current_dir(dir.path())
        .output_with_umask(0o002);
    assert!(out.status.success(), "{}", stderr(&out));
    for name in ["00000.tar", "00000.json"] {
        let mode = std::fs::metadata(dir.path().join("out").join(name)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o664, "{name}");
    }
}

/// README: two runs of the same shard give byte-identical output tars.
#[test]
fn two_runs_of_a_shard_give_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    small_shards(dir.path());
    for output in ["one", "two"] {
        let out = dataset_encode(dir.path(), &["in/00000.tar", "-o", output]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let (a, b) = (dir.path().join("one/00000.tar"), dir.path().join("two/00000.tar"));
    for ((name, x), (_, y)) in members(&a).iter().zip(&members(&b)) {
        assert!(x == y, "two runs of one shard differ in {name}");
    }
    assert!(std::fs::read(a).unwrap() == std::fs::read(b).unwrap(), "two runs of one shard differ");
}

trait WithUmask {
    fn output_with_umask(&mut self, mask: libc::mode_t) -> std::process::Output;
}

impl WithUmask for Command {
    /// Runs the command with `mask` as its umask.
    fn output_with_umask(&mut self, mask: libc::mode_t) -> std::process::Output {
        use std::os::unix::process::CommandExt;
        // SAFETY: umask is async-signal-safe and touches only the child.
        unsafe {
            self.pre_exec(move || {
                libc::umask(mask);
                Ok(())
            })
        };
        self.output().unwrap()
    }
}

// Typed manifests (issue 19): a format and version of their own, checked
// on read; the shard expansion follows no link to a folder.

#[test]
fn manifests_carry_their_format_version_and_a_newer_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    small_shards(dir.path());
    let out = dataset_encode(dir.path(), &["in", "-o", "out", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let path = dir.path().join("out/00001.json");
    let mut m = manifest(&path);
    assert_eq!(
        (&m["format"], &m["format_version"]),
        (&serde_json::json!("vae-dataset-manifest"), &serde_json::json!(1))
    );
    // The --json line of a shard is its manifest.
    let first: serde_json::Value = serde_json::from_str(stdout(&out).lines().next().unwrap()).unwrap();
    assert_eq!(first["format_version"], 1, "{first}");

    // A manifest written before the field existed still reads (as version 1).
    let fields = m.as_object_mut().unwrap();
    fields.remove("format");
    fields.remove("format_version");
    std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
    let report = vae(dir.path(), &["dataset", "report", "out", "--json"]);
    assert!(report.status.success(), "{}", stderr(&report));
    let last: serde_json::Value = serde_json::from_str(stdout(&report).lines().last().unwrap()).unwrap();
    assert_eq!((last["total"]["shards"].as_u64(), last["total"]["encoded"].as_u64()), (Some(2), Some(4)));

    // A newer one is refused, naming it, whatever else it holds.
    std::fs::write(&path, r#"{"format": "vae-dataset-manifest", "format_version": 2, "shards": {"new": "layout"}}"#)
        .unwrap();
    let report = vae(dir.path(), &["dataset", "report", "out"]);
    common::assert_fails(&report, "00001.json", "format version 2, newer than this vae reads");
    assert!(stdout(&report).is_empty(), "{}", stdout(&report));
    // And one of our format that is not a manifest's shape is damaged.
    std::fs::write(&path, r#"{"format": "vae-dataset-manifest", "format_version": 1, "shard": 3}"#).unwrap();
    let report = vae(dir.path(), &["dataset", "report", "out"]);
    common::assert_fails(&report, "00001.json", "a damaged shard manifest");

    // --format is a choice of the latent members' formats.
    let bad = vae(dir.path(), &["dataset", "encode", "in", "-o", "o2", "--format", "latent"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("[possible values: safetensors, npy]"), "{}", stderr(&bad));
}

#[test]
fn shard_expansion_follows_no_link_to_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    small_shards(dir.path());
    let input = dir.path().join("in");
    std::fs::create_dir_all(input.join("sub")).unwrap();
    std::fs::copy(input.join("00000.tar"), input.join("sub/00002.tar")).unwrap();
    // Loops (to the folder itself and from below to its parent) and an alias.
    std::os::unix::fs::symlink(".", input.join("loop")).unwrap();
    std::os::unix::fs::symlink("..", input.join("sub/up")).unwrap();
    std::os::unix::fs::symlink("sub", input.join("alias")).unwrap();
    // A folder of sample folders, with a loop and an alias too.
    let files = dir.path().join("files");
    std::fs::create_dir_all(files.join("00042")).unwrap();
    std::fs::write(files.join("00042/a.png"), image_bytes(1, 32, 32, false)).unwrap();
    std::os::unix::fs::symlink(".", files.join("loop")).unwrap();
    std::os::unix::fs::symlink("00042", files.join("alias")).unwrap();

    let out = dataset_encode(dir.path(), &["in/**/*.tar", "files", "-o", "out"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let tars: Vec<String> =
        common::listing(&dir.path().join("out")).into_iter().filter(|n| n.ends_with(".tar")).collect();
    assert_eq!(tars, ["00000.tar", "00001.tar", "00002.tar", "00042.tar"]);
    assert!(stderr(&out).contains("4 of 4 shards"), "{}", stderr(&out));

    // `*` matches no link to a folder either; a link to a tar is a tar.
    std::os::unix::fs::symlink("sub/00002.tar", input.join("00003.tar")).unwrap();
    let out = dataset_encode(dir.path(), &["in/*", "-o", "out2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let tars: Vec<String> =
        common::listing(&dir.path().join("out2")).into_iter().filter(|n| n.ends_with(".tar")).collect();
    assert_eq!(tars, ["00000.tar", "00001.tar", "00002.tar", "00003.tar"]);
}
