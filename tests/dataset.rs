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
