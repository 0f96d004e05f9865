//! A spill folder (`--tmp-dir`) that cannot take a banded run's activations.
//! Too small from the start, the run is refused before it begins, with the
//! figures; a disk that fills during the run (the check passed) ends it the
//! same way. Either way, for encode and decode: exit code 1, one line on
//! stderr naming the folder, no output file, an existing output passed with
//! `--force` left as it was, and nothing left in the folder.
//!
//! A small file system needs a tmpfs, which needs a mount namespace
//! (`unshare`); where the machine allows none, these tests say so on stderr
//! and check what they can without one (a file size limit).

mod common;

use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Output};

use common::{fixtures, listing, stderr, vae};

/// `--max-memory` too small for any activation: every one of them spills.
const ARGS: [&str; 6] = ["--quiet", "--max-memory", "1K", "--tmp-dir", "spill", "--weights"];

/// What an existing output holds before a failed run that may replace it.
const OLD: &[u8] = b"an earlier output";

fn tiny_sd() -> String {
    fixtures().join("weights/tiny_sd").display().to_string()
}

/// One job: `vae JOB INPUT -o OUTPUT`.
struct Job {
    job: &'static str,
    input: &'static str,
    /// The extension of its output.
    ext: &'static str,
}

const JOBS: [Job; 2] = [
    Job { job: "encode", input: "in.png", ext: "safetensors" },
    Job { job: "decode", input: "z.safetensors", ext: "png" },
];

impl Job {
    /// Its arguments: a new output (`fresh`), else `--force` over an existing one.
    fn args(&self, fresh: bool) -> Vec<String> {
        let (output, force) = match fresh {
            true => (format!("new.{}", self.ext), None),
            false => (format!("old.{}", self.ext), Some("--force")),
        };
        let mut args = vec![self.job.to_owned(), self.input.to_owned(), "-o".to_owned(), output];
        args.extend(force.map(str::to_owned));
        args.extend(ARGS.map(str::to_owned));
        args.push(tiny_sd());
        args
    }
}

/// A folder with a 64x48 photo, its latent, an existing output of each job
/// and an empty `spill` folder.
fn folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let img = image::open(fixtures().join("images/kodim03.png")).unwrap().to_rgb8();
    image::imageops::crop_imm(&img, 100, 0, 64, 48).to_image().save(dir.path().join("in.png")).unwrap();
    let out = vae(dir.path(), &["encode", "in.png", "-o", "z.safetensors", "--quiet", "--weights", &tiny_sd()]);
    assert!(out.status.success(), "{}", stderr(&out));
    for job in JOBS {
        std::fs::write(dir.path().join(format!("old.{}", job.ext)), OLD).unwrap();
    }
    std::fs::create_dir(dir.path().join("spill")).unwrap();
    dir
}

/// Asserts that `out`, a run of `job` in `dir`, failed as it should, saying
/// `problem` about the spill folder, and wrote nothing.
fn assert_failed_cleanly(dir: &Path, job: &Job, out: &Output, problem: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{} exit code; stderr: {err}", job.job);
    let line = format!("vae: error: {}: spill: activations spilled to disk", job.input);
    assert!(err.starts_with(&line) && err.lines().count() == 1, "{}: not one error line: {err}", job.job);
    assert!(err.contains(problem), "{}: does not say {problem:?}: {err}", job.job);
    assert_eq!(std::fs::read(dir.join(format!("old.{}", job.ext))).unwrap(), OLD, "{}: output replaced", job.job);
    // No new output, and no temporary one left beside it.
    let want = ["in.png", "old.png", "old.safetensors", "spill", "z.safetensors"];
    assert_eq!(listing(dir), want, "{}: files written", job.job);
}

/// Says `note` on the test binary's stderr even when the harness captures
/// the output of passing tests (it captures `eprintln!`, not the stream).
fn say(note: &str) {
    let _ = writeln!(std::io::stderr(), "{}: {note}", module_path!());
}

/// How this machine lets a test mount a tmpfs: `unshare`'s options (a user
/// and mount namespace, as anyone may where user namespaces are enabled; a
/// mount namespace alone, for root), or why neither works.
fn mount_route(dir: &Path) -> Result<&'static str, String> {
    let mut reasons = Vec::new();
    for route in ["-rm", "-m"] {
        let script = r#"mount -t tmpfs -o size=64k tmpfs "$1""#;
        match Command::new("unshare").args([route, "sh", "-c", script, "sh"]).arg(dir).output() {
            Ok(out) if out.status.success() => return Ok(route),
            Ok(out) => reasons.push(format!("unshare {route}: {}", stderr(&out).trim())),
            Err(e) => return Err(format!("unshare: {e}")),
        }
    }
    Err(reasons.join("; "))
}

/// Runs `vae ARGS` in `dir` with its `spill` folder a tmpfs mounted with
/// `options`, in a mount namespace of its own (gone, with the tmpfs, when
/// the run ends).
fn vae_on_tmpfs(route: &str, dir: &Path, options: &str, args: &[String]) -> Output {
    let script = r#"mount -t tmpfs -o "$1" tmpfs spill && shift && exec "$@""#;
    Command::new("unshare")
        .args([route, "sh", "-c", script, "sh", options, env!("CARGO_BIN_EXE_vae")])
        .args(args)
        .current_dir(dir)
        .env_remove("VAE_WEIGHTS")
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("unshare runs")
}

/// Runs `vae ARGS` in `dir` unable to make any file longer than 64 KiB
/// (`RLIMIT_FSIZE`), as if the disk filled once a few activations were
/// stored: the free space checked beforehand is the disk's, so the check
/// passes, and reserving the space of the first activation over the limit
/// fails. The limit's signal (SIGXFSZ, which would kill the process) is
/// ignored, so the reservation fails with EFBIG instead; an ignored signal
/// stays ignored across exec.
fn vae_with_file_limit(dir: &Path, args: &[String]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vae"));
    command.args(args).current_dir(dir).env_remove("VAE_WEIGHTS").env("RUST_BACKTRACE", "1");
    // SAFETY: between fork and exec, `limit_file_size` calls only setrlimit
    // and signal, which are async-signal-safe, and allocates nothing.
    unsafe { command.pre_exec(limit_file_size) };
    command.output().expect("the vae binary runs")
}

/// Limits this process's files to 64 KiB, with SIGXFSZ ignored.
fn limit_file_size() -> std::io::Result<()> {
    let limit = libc::rlimit { rlim_cur: 64 << 10, rlim_max: 64 << 10 };
    // SAFETY: `limit` is a valid rlimit, and SIG_IGN a valid disposition.
    let set = unsafe {
        libc::setrlimit(libc::RLIMIT_FSIZE, &limit) == 0 && libc::signal(libc::SIGXFSZ, libc::SIG_IGN) != libc::SIG_ERR
    };
    match set {
        true => Ok(()),
        false => Err(std::io::Error::last_os_error()),
    }
}

/// The file size limit's runs: the write fails once the run has begun.
fn fails_mid_run_on_a_file_limit(dir: &Path) {
    for job in JOBS {
        for fresh in [true, false] {
            let out = vae_with_file_limit(dir, &job.args(fresh));
            assert_failed_cleanly(dir, &job, &out, "(--tmp-dir): File too large");
            assert!(listing(&dir.join("spill")).is_empty(), "{}: files left in spill", job.job);
        }
    }
}

#[test]
fn a_spill_folder_too_small_is_refused_before_the_run() {
    let dir = folder();
    let route = match mount_route(&dir.path().join("spill")) {
        Ok(route) => route,
        Err(reason) => {
            say(&format!(
                "NOT TESTED: the refusal before the run (no tmpfs can be mounted here: {reason}); \
                 testing a write that fails during the run instead"
            ));
            fails_mid_run_on_a_file_limit(dir.path());
            return;
        }
    };
    for job in JOBS {
        for fresh in [true, false] {
            let out = vae_on_tmpfs(route, dir.path(), "size=64k", &job.args(fresh));
            assert_failed_cleanly(dir.path(), &job, &out, " free (--tmp-dir, or a larger --max-memory)");
            // The figures: what the plan spills, and the tmpfs's 64 KiB.
            let err = stderr(&out);
            let needed = err.split(" need ").nth(1).and_then(|s| s.split(" there, ").next());
            assert!(err.contains(" there, 64.0 KiB free "), "{err}");
            assert!(needed.is_some_and(|n| n.ends_with(" KiB") || n.ends_with(" MiB")), "{err}");
        }
    }
}

#[test]
fn a_disk_that_fills_during_the_run_ends_it_cleanly() {
    let dir = folder();
    fails_mid_run_on_a_file_limit(dir.path());
    // A tmpfs with room for every byte and a single file (its folder is the
    // other inode): the check passes, and the second activation stored finds
    // the disk full.
    match mount_route(&dir.path().join("spill")) {
        Ok(route) => {
            for job in JOBS {
                for fresh in [true, false] {
                    let out = vae_on_tmpfs(route, dir.path(), "size=64m,nr_inodes=2", &job.args(fresh));
                    assert_failed_cleanly(dir.path(), &job, &out, "(--tmp-dir): No space left on device");
                }
            }
        }
        Err(reason) => say(&format!("NOT TESTED: a full tmpfs (no tmpfs can be mounted here: {reason})")),
    }
}
