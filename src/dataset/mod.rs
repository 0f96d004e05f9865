//! Latents for a whole dataset, shard by shard: `vae dataset encode`.
//!
//! A run takes WebDataset tar shards (or folders of samples), local or in
//! object storage, and writes one output shard per input shard into an
//! output folder (or prefix):
//!
//! - `NAME.tar`: for each sample whose image encoded, `KEY.latent.safetensors`
//!   (or `.latent.npy`) followed by the sample's other files (`KEY.json`,
//!   `KEY.txt`, ...) unchanged; the image itself is not copied.
//! - `NAME.json`: the shard's manifest ([`ShardSummary`]): samples, latents,
//!   skipped samples with their reason, time, images/s, weights and worker.
//!
//! Many workers share a run without talking to each other: each takes the
//! shards at its positions ([`Workers`]), skips the shards whose `NAME.tar`
//! exists, and makes each `NAME.tar` appear only when complete: written under
//! a temporary name and renamed (locally), or uploaded as one object (in a
//! store, where it becomes visible only when the upload completes). The
//! manifest is written just before. So a worker killed mid-shard and started
//! again redoes only that shard, and no sample is lost or written twice.
//!
//! Two workers that take the same shard anyway (two processes started with
//! the same index) cannot both write it: the temporary file is locked
//! (`flock`) by its writer from before it is emptied until after it is
//! renamed, and a worker that finds it locked leaves the shard to the holder,
//! with an error. The lock dies with its process, so the temporary file of
//! a killed worker is taken over by the next one.

mod location;
mod manifest;
mod shards;
mod webdataset;

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, IsTerminal, Write as _};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};

pub use location::Location;
pub use manifest::{
    DatasetTotals, MANIFEST_FORMAT, MANIFEST_VERSION, ManifestError, RunLine, ShardSummary, SkipKind, Skipped,
    TotalLine, WorkerTotals,
};
pub use shards::{IndexSource, Shard, Source, Workers, braces, expand};
pub use webdataset::{MAX_FILE, MAX_SAMPLE, Sample, check_key, read_tar};

use crate::Vae;
use crate::imageio::{self, InputImage};
use crate::latent::{Latent, LatentFormat, Posterior};
use crate::output::json_line;

/// What a worker does with its shards.
pub struct Options {
    /// The output folder or prefix.
    pub output: Location,
    pub workers: Workers,
    /// How latents are stored in the output tars.
    pub format: LatentMember,
    pub posterior: Posterior,
    pub max_pixels: u64,
    /// Local room for downloaded input shards and output shards on their way
    /// to a store.
    pub tmp_dir: PathBuf,
    /// Redo shards whose output exists.
    pub force: bool,
    pub quiet: bool,
    /// A JSON line on stdout per shard and for the whole run.
    pub json: bool,
}

/// How latents are stored in the output tars: a choice of the latent file
/// formats, those a sample's member can be (ComfyUI's `.latent` is not one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LatentMember {
    /// `KEY.latent.safetensors`, with our metadata.
    #[default]
    Safetensors,
    /// `KEY.latent.npy`.
    Npy,
}

impl LatentMember {
    /// The member's extension after its key: `latent.safetensors` or `latent.npy`.
    pub fn extension(self) -> &'static str {
        match self {
            LatentMember::Safetensors => "latent.safetensors",
            LatentMember::Npy => "latent.npy",
        }
    }
}

impl From<LatentMember> for LatentFormat {
    fn from(member: LatentMember) -> Self {
        match member {
            LatentMember::Safetensors => LatentFormat::Safetensors,
            LatentMember::Npy => LatentFormat::Npy,
        }
    }
}

impl Options {
    /// The extension of latent members: `latent.safetensors` or `latent.npy`.
    fn latent_extension(&self) -> &'static str {
        self.format.extension()
    }
}

/// A worker's run, for its final report.
#[derive(Default)]
pub struct Report {
    pub assigned: usize,
    pub done_before: usize,
    pub failed: usize,
    pub summaries: Vec<ShardSummary>,
    pub seconds: f64,
}

impl Report {
    /// The run summed, for worker `workers`.
    pub fn totals(&self, workers: Workers) -> WorkerTotals {
        let samples: usize = self.summaries.iter().map(|s| s.samples).sum();
        let encoded: usize = self.summaries.iter().map(|s| s.encoded).sum();
        WorkerTotals {
            worker: workers.index,
            workers: workers.count,
            shards_assigned: self.assigned,
            shards_encoded: self.summaries.len(),
            shards_done_before: self.done_before,
            shards_failed: self.failed,
            samples,
            encoded,
            skipped: samples.saturating_sub(encoded),
            seconds: self.seconds,
            images_per_second: rate(encoded, self.seconds),
        }
    }
}

fn rate(count: usize, seconds: f64) -> f64 {
    if seconds > 0.0 { count as f64 / seconds } else { 0.0 }
}

/// Runs this worker over its share of `shards`. The model is loaded (by
/// `load`) only when some shard is left to do. A shard that fails is reported
/// and the others go on; the report counts it.
pub fn run(shards: &[Shard], options: &Options, load: impl FnOnce() -> Result<Vae>) -> Result<Report> {
    let start = Instant::now();
    let mine: Vec<&Shard> =
        shards.iter().enumerate().filter(|(i, _)| options.workers.owns(*i)).map(|(_, s)| s).collect();
    let mut report = Report { assigned: mine.len(), ..Default::default() };
    let info = |message: String| {
        if !options.quiet {
            eprintln!("{message}");
        }
    };
    check_outputs(shards, &options.output)?;
    let w = options.workers;
    info(format!("worker {} of {}: {} of {} shards -> {}", w.index, w.count, mine.len(), shards.len(), options.output));
    if let Location::Local(dir) = &options.output {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
    }
    let mut todo = Vec::new();
    for shard in mine {
        if !options.force && options.output.join(&format!("{}.tar", shard.name)).exists()? {
            report.done_before += 1;
        } else {
            todo.push(shard);
        }
    }
    if report.done_before > 0 {
        info(format!("{} of them done already (their NAME.tar exists; --force redoes them)", report.done_before));
    }
    if todo.is_empty() {
        report.seconds = start.elapsed().as_secs_f64();
        return Ok(report);
    }
    let mut vae = load()?;
    // A closed stdout stops the JSON lines, not the work.
    let mut printing = options.json;
    for (n, shard) in todo.iter().enumerate() {
        info(format!("{}: encoding ({} of {})", shard.name, n + 1, todo.len()));
        match encode_shard(&mut vae, shard, options) {
            Ok(None) => {
                info(format!("{}: done meanwhile by another worker", shard.name));
                report.done_before += 1;
            }
            Ok(Some(summary)) => {
                info(format!(
                    "{}: {} latents, {} skipped, {:.1} s ({:.2} images/s) -> {}",
                    summary.shard,
                    summary.encoded,
                    summary.skipped.len(),
                    summary.seconds,
                    summary.images_per_second,
                    summary.output
                ));
                if printing && let Err(e) = json_line(&serde_json::to_value(&summary)?) {
                    printing = false;
                    info(format!("vae: warning: {e:#}; no more JSON lines, the shards go on"));
                }
                report.summaries.push(summary);
            }
            Err(err) => {
                eprintln!("vae: error: {}: {err:#}", shard.source.describe());
                report.failed += 1;
            }
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// A sample made ready off the compute thread: its image decoded.
struct Prepared {
    key: String,
    image: Result<InputImage, Skipped>,
    /// The files copied to the output beside the latent.
    others: Vec<(String, Vec<u8>)>,
    /// Its members not copied, for the manifest.
    left_out: Vec<Skipped>,
    mtime: u64,
}

/// Turns a sample into its image (the first image file) and the rest.
/// `latent_ext` is the extension of the latent member it would get.
fn prepare(sample: webdataset::Sample, max_pixels: u64, latent_ext: &str) -> Prepared {
    let webdataset::Sample { key, mut files, problems, left_out, mtime, .. } = sample;
    let repeated = files.iter().enumerate().find(|(i, (ext, _))| files[..*i].iter().any(|(e, _)| e == ext));
    let image = if let Some((kind, problem)) = problems.into_iter().next() {
        Err(Skipped::new(&key, kind, problem))
    } else if let Err(e) = webdataset::check_key(&key) {
        Err(Skipped::new(&key, SkipKind::BadKey, e.to_string()))
    } else if let Some((_, (ext, _))) = repeated {
        Err(Skipped::new(&key, SkipKind::RepeatedFile, format!("{key}.{ext} comes twice in the sample")))
    } else if files.iter().any(|(ext, _)| ext == latent_ext) {
        Err(Skipped::new(&key, SkipKind::HasLatent, format!("{key}.{latent_ext} is in the input already")))
    } else if let Some(i) = files.iter().position(|(ext, _)| webdataset::is_image_extension(ext)) {
        let (ext, bytes) = files.remove(i);
        let name = PathBuf::from(format!("{key}.{ext}"));
        imageio::load_bytes(&bytes, &name, max_pixels).map_err(|e| {
            let kind = match e {
                imageio::ImageError::TooLarge { .. } => SkipKind::ImageTooLarge,
                imageio::ImageError::Empty { .. } => SkipKind::EmptyImage,
                _ => SkipKind::UnreadableImage,
            };
            Skipped::new(&key, kind, e.to_string())
        })
    } else {
        let mut has: Vec<String> = files.iter().map(|(e, _)| e.clone()).collect();
        has.extend(left_out.iter().map(|l| l.reason.clone()));
        let has = if has.is_empty() { "nothing".into() } else { has.join(", ") };
        Err(Skipped::new(&key, SkipKind::NoImage, format!("no image file (has {has})")))
    };
    Prepared { key, image, others: files, left_out, mtime }
}

/// Refuses an output folder (or prefix) that holds input shards, before any
/// work: an output NAME.tar that is an input tar (it would be replaced), or
/// an output folder that is, or is inside, a folder shard.
fn check_outputs(shards: &[Shard], output: &Location) -> Result<()> {
    // The path with symbolic links and `..` resolved, also for a folder not
    // made yet (through its nearest existing parent).
    let canonical = |p: &Path| {
        let absolute = std::path::absolute(p).ok()?;
        let existing = absolute.ancestors().find(|a| a.exists())?;
        let rest = absolute.strip_prefix(existing).ok()?;
        Some(existing.canonicalize().ok()?.join(rest))
    };
    for shard in shards {
        let target = output.join(&format!("{}.tar", shard.name));
        let clash = match (&shard.source, output, &target) {
            (Source::Tar(Location::Local(input)), Location::Local(dir), Location::Local(out)) => {
                let parent = input.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
                let same_folder = canonical(parent).is_some_and(|p| Some(p) == canonical(dir));
                (same_folder && input.file_name() == out.file_name()) || crate::output::same_file(input, out)
            }
            (Source::Tar(input @ Location::Remote(_)), Location::Remote(_), _) => {
                input.to_string() == target.to_string()
            }
            (Source::Folder(folder), Location::Local(dir), _) => {
                canonical(dir).zip(canonical(folder)).is_some_and(|(dir, folder)| dir.starts_with(folder))
            }
            _ => false,
        };
        if clash {
            bail!(
                "{}: the output folder {output} holds this input shard; its output {target} would replace or mix with it (choose another output folder)",
                shard.source.describe()
            );
        }
    }
    Ok(())
}

/// Where a shard's output is assembled before it is committed.
fn partial_path(options: &Options, name: &str) -> PathBuf {
    match &options.output {
        Location::Local(dir) => dir.join(format!(".{name}.tar.partial")),
        Location::Remote(_) => {
            options.tmp_dir.join(format!("vae-{}-{name}.tar.partial", short_hash(&options.output.to_string())))
        }
    }
}

fn short_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// The seed of one sample's posterior draw: the same whichever worker,
/// order or shard count, and different for every sample.
fn sample_seed(seed: u64, key: &str) -> u64 {
    let digest = Sha256::new().chain_update(seed.to_le_bytes()).chain_update(key.as_bytes()).finalize();
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// A shard as read: a tar on local disk, or a folder.
enum Input {
    Tar(PathBuf),
    Folder(PathBuf),
}

/// Deletes a file when dropped (a partial output), unless kept.
struct Scratch(Option<PathBuf>);

impl Scratch {
    /// Leaves the file alone: it was renamed, and the path may be another
    /// worker's file by now.
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Opens the partial output `path` for this worker alone: locked (`flock`,
/// exclusive, without waiting), then emptied. A link there is not followed.
/// A lock held by a live worker is an error (the shard is left to it); the
/// lock of a killed worker died with it, so its file is taken over. The lock
/// lasts as long as the returned file (and its clones) stays open.
fn lock_partial(path: &Path) -> Result<File> {
    loop {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .with_context(|| format!("{}: cannot create", path.display()))?;
        // SAFETY: flock on a file descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                bail!(
                    "{}: another worker is writing this shard (it holds this file's lock); left to it",
                    path.display()
                );
            }
            return Err(err).with_context(|| format!("{}: cannot lock", path.display()));
        }
        let held = file.metadata().with_context(|| format!("{}: cannot read", path.display()))?;
        if !held.is_file() {
            bail!("{}: not a regular file; remove it", path.display());
        }
        // The file locked must still be the one at `path`: between the open
        // and the lock, its writer may have renamed it into place (it is a
        // finished shard now) or removed it. Then open again.
        let now = std::fs::symlink_metadata(path);
        if now.is_ok_and(|m| (m.dev(), m.ino()) == (held.dev(), held.ino())) {
            file.set_len(0).with_context(|| format!("{}: cannot write", path.display()))?;
            return Ok(file);
        }
    }
}

/// Encodes one shard; `None` when another worker finished it meanwhile.
fn encode_shard(vae: &mut Vae, shard: &Shard, options: &Options) -> Result<Option<ShardSummary>> {
    let start = Instant::now();
    let output = options.output.join(&format!("{}.tar", shard.name));
    let manifest = options.output.join(&format!("{}.json", shard.name));
    let remote = matches!(shard.source, Source::Tar(Location::Remote(_))) || matches!(output, Location::Remote(_));
    if remote {
        // --tmp-dir is checked where it is used: not for local shards.
        let tmp = &options.tmp_dir;
        std::fs::create_dir_all(tmp).with_context(|| format!("{}: cannot create folder (--tmp-dir)", tmp.display()))?;
    }
    // This worker's alone from here (the lock) until the rename; dropped in
    // reverse order: the writer, the partial file removed, the lock.
    let partial = partial_path(options, &shard.name);
    let lock = lock_partial(&partial)?;
    let guard = Scratch(Some(partial.clone()));
    if !options.force && output.exists()? {
        return Ok(None);
    }
    let file = lock.try_clone().with_context(|| format!("{}: cannot write", partial.display()))?;
    let mut writer = webdataset::TarWriter::new(file, &partial)?;
    // A remote input is first copied to local disk, then read like a local
    // one. Its name is made of the output's and the shard's, as the partial
    // output's, so that lock covers it too (and a restarted worker reuses the
    // file a killed one left).
    let (input, _download) = match &shard.source {
        Source::Tar(location @ Location::Remote(_)) => {
            let output_hash = short_hash(&options.output.to_string());
            let path = options.tmp_dir.join(format!("vae-{output_hash}-{}.input.tar", shard.name));
            let scratch = Scratch(Some(path.clone()));
            let file = std::fs::File::create(&path).with_context(|| format!("{}: cannot create", path.display()))?;
            let mut out = std::io::BufWriter::new(file);
            location.download(&mut out)?;
            out.flush().with_context(|| format!("{}: cannot write", path.display()))?;
            (Input::Tar(path), Some(scratch))
        }
        Source::Tar(Location::Local(path)) => (Input::Tar(path.clone()), None),
        Source::Folder(dir) => (Input::Folder(dir.clone()), None),
    };
    let latent_ext = options.latent_extension();
    let mut seen = HashSet::new();
    let (mut samples, mut encoded, mut skipped, mut files_left_out) = (0, 0, Vec::new(), Vec::new());
    let progress = progress_bar(options, &shard.name);
    // Samples with an image, waiting to be encoded together (`--batch-size`).
    let mut window = Vec::new();
    std::thread::scope(|s| -> Result<()> {
        let (tx, rx) = sync_channel::<Result<Prepared>>(4);
        let max_pixels = options.max_pixels;
        let input = &input;
        s.spawn(move || {
            let send = |sample| tx.send(Ok(prepare(sample, max_pixels, latent_ext))).map_err(|_| anyhow!("stopped"));
            let read = match input {
                Input::Folder(dir) => webdataset::read_folder(dir, send),
                Input::Tar(path) => std::fs::File::open(path)
                    .with_context(|| format!("{}: cannot read", path.display()))
                    .and_then(|f| webdataset::read_tar(std::io::BufReader::with_capacity(1 << 20, f), send)),
            };
            if let Err(e) = read {
                let _ = tx.send(Err(e));
            }
        });
        for prepared in rx {
            let Prepared { key, image, others, left_out, mtime } = prepared?;
            samples += 1;
            files_left_out.extend(left_out);
            if !seen.insert(key.clone()) {
                skipped.push(Skipped::new(
                    &key,
                    SkipKind::RepeatedKey,
                    "the key comes again, apart from its other files",
                ));
                continue;
            }
            let image = match image {
                Ok(image) => image,
                Err(skip) => {
                    skipped.push(skip);
                    continue;
                }
            };
            let posterior = match options.posterior {
                Posterior::Sample { seed } => Posterior::Sample { seed: sample_seed(seed, &key) },
                mean => mean,
            };
            window.push(Ready { key, image, posterior, others, mtime });
            if window.len() >= vae.read_ahead() {
                encoded += encode_window(vae, std::mem::take(&mut window), &mut writer, &shard.name, options)?;
                if let Some(bar) = &progress {
                    bar.set_position(encoded as u64);
                }
            }
        }
        encoded += encode_window(vae, window, &mut writer, &shard.name, options)?;
        Ok(())
    })?;
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    writer.finish()?;
    let seconds = start.elapsed().as_secs_f64();
    let summary = ShardSummary {
        format: MANIFEST_FORMAT.to_owned(),
        format_version: MANIFEST_VERSION,
        shard: shard.name.clone(),
        input: shard.source.describe(),
        output: output.to_string(),
        samples,
        encoded,
        skipped,
        files_left_out,
        seconds,
        images_per_second: rate(encoded, seconds),
        latent_member: latent_ext.to_owned(),
        weights: vae.info().path.display().to_string(),
        weights_sha256: vae.info().sha256.hex().map(str::to_owned),
        model: vae.model().class_name().to_owned(),
        posterior: match options.posterior {
            Posterior::Mean => "mean".into(),
            Posterior::Sample { seed } => format!("sample (seed {seed}, drawn per key)"),
        },
        worker: options.workers.index,
        workers: options.workers.count,
        vae_version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    // The manifest first, then the shard: a NAME.tar is always complete and
    // has its manifest beside it.
    manifest.put(serde_json::to_vec_pretty(&summary)?)?;
    match &output {
        Location::Local(path) => {
            std::fs::rename(&partial, path).with_context(|| format!("{}: cannot rename into place", path.display()))?
        }
        remote => remote.upload(&partial)?,
    }
    match &output {
        Location::Local(_) => guard.keep(),
        Location::Remote(_) => drop(guard),
    }
    drop(lock);
    Ok(Some(summary))
}

/// A sample whose image is ready to encode.
struct Ready {
    key: String,
    image: InputImage,
    posterior: Posterior,
    others: Vec<(String, Vec<u8>)>,
    mtime: u64,
}

/// Encodes `window`'s images in passes of one size (as `--batch-size`
/// allows) and appends each sample to the output in input order: its latent,
/// then its other files. Returns how many were written.
fn encode_window(
    vae: &mut Vae,
    window: Vec<Ready>,
    writer: &mut webdataset::TarWriter,
    shard: &str,
    options: &Options,
) -> Result<usize> {
    let images: Vec<&InputImage> = window.iter().map(|r| &r.image).collect();
    let mut latents: Vec<Option<Latent>> = window.iter().map(|_| None).collect();
    for pass in vae.encode_passes(&images) {
        let pass_images: Vec<&InputImage> = pass.iter().map(|&i| images[i]).collect();
        let posteriors: Vec<Posterior> = pass.iter().map(|&i| window[i].posterior).collect();
        let before = vae.retried_from();
        let encoded = vae.encode_batch(&pass_images, &posteriors)?;
        if let (None, Some(from), false) = (before, vae.retried_from(), options.quiet) {
            let keys: Vec<&str> = pass.iter().map(|&i| window[i].key.as_str()).collect();
            eprintln!(
                "{shard}: {}: warning: the {from:?} latents held NaN or Inf; encoded again in f32 (and in f32 from here on)",
                keys.join(", ")
            );
        }
        for (&i, latent) in pass.iter().zip(encoded) {
            latents[i] = Some(latent);
        }
    }
    let (latent_ext, written) = (options.latent_extension(), window.len());
    for (Ready { key, others, mtime, .. }, latent) in window.into_iter().zip(latents) {
        let latent = latent.ok_or_else(|| anyhow!("{key}: internal error: not encoded"))?;
        let bytes =
            latent.to_bytes(options.format.into()).map_err(|e| anyhow!("{key}: cannot serialise its latent: {e}"))?;
        writer.append(&format!("{key}.{latent_ext}"), &bytes, mtime)?;
        for (ext, data) in &others {
            writer.append(&format!("{key}.{ext}"), data, mtime)?;
        }
    }
    writer.flush()?;
    Ok(written)
}

/// A bar counting a shard's samples, on a terminal only.
fn progress_bar(options: &Options, name: &str) -> Option<indicatif::ProgressBar> {
    if options.quiet || !std::io::stderr().is_terminal() {
        return None;
    }
    let style = indicatif::ProgressStyle::with_template("{prefix}: {pos} latents, {elapsed} ({per_sec})")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
    Some(indicatif::ProgressBar::new_spinner().with_style(style).with_prefix(name.to_owned()))
}

/// Sums the manifests in `output`: `vae dataset report`. Only manifests
/// are read: a `NAME.json` beside a committed `NAME.tar`, with a manifest's
/// format (or, written before it had one, a manifest's fields); any other
/// JSON file is passed over. A manifest of a newer format version, or whose
/// counts do not add up, is refused, naming it.
pub fn report(output: &Location) -> Result<(Vec<ShardSummary>, DatasetTotals)> {
    let mut summaries = Vec::new();
    for manifest in output.list(".json")? {
        let file = manifest.file_name();
        let stem = file.strip_suffix(".json").unwrap_or(&file);
        // Not a committed shard's (or a worker stopped between the two writes).
        if !output.join(&format!("{stem}.tar")).exists()? {
            continue;
        }
        let bytes = manifest.read()?;
        let path = manifest.to_string();
        let Some(version) = serde_json::from_slice::<manifest::Probe>(&bytes).ok().and_then(|p| p.version()) else {
            continue;
        };
        if version > u64::from(MANIFEST_VERSION) {
            return Err(ManifestError::Newer { path, version }.into());
        }
        let summary: ShardSummary = serde_json::from_slice(&bytes)
            .map_err(|e| ManifestError::Damaged { path: path.clone(), reason: e.to_string() })?;
        if summary.encoded.checked_add(summary.skipped.len()) != Some(summary.samples) {
            let reason = format!(
                "{} latents and {} skipped do not make its {} samples",
                summary.encoded,
                summary.skipped.len(),
                summary.samples
            );
            return Err(ManifestError::Damaged { path, reason }.into());
        }
        summaries.push((path, summary));
    }
    let (mut samples, mut encoded, mut seconds) = (0usize, 0usize, 0.0);
    for (path, summary) in &summaries {
        let sum = samples.checked_add(summary.samples).zip(encoded.checked_add(summary.encoded));
        (samples, encoded) = sum.ok_or_else(|| ManifestError::Overflow { path: path.clone() })?;
        seconds += summary.seconds;
    }
    let summaries: Vec<ShardSummary> = summaries.into_iter().map(|(_, s)| s).collect();
    let mut skipped_by_reason = std::collections::BTreeMap::new();
    for skipped in summaries.iter().flat_map(|s| &s.skipped) {
        *skipped_by_reason.entry(skipped.kind).or_default() += 1;
    }
    let total = DatasetTotals {
        shards: summaries.len(),
        samples,
        encoded,
        skipped: samples - encoded,
        skipped_by_reason,
        shard_seconds: seconds,
        images_per_second_per_worker: rate(encoded, seconds),
    };
    Ok((summaries, total))
}

/// `path` as a [`Location`] folder for outputs.
pub fn output_location(text: &str) -> Result<Location> {
    let location = Location::parse(text)?;
    if let Location::Local(path) = &location
        && path.is_file()
    {
        anyhow::bail!("{}: the output must be a folder (or a bucket prefix), not a file", path.display());
    }
    Ok(location)
}
