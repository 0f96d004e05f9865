//! Which shards a run covers, and which of them this worker takes.
//!
//! Every worker lists the same inputs the same way and sorts the shards by
//! name, so shard `i` (in that order) belongs to worker `i % count` without
//! any coordination between workers.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::location::{self, Location, is_url};

/// The most names a pattern's braces may expand to (all braces together).
pub const MAX_BRACE_NAMES: usize = 1_000_000;

/// One input shard: a WebDataset tar, or a folder of samples.
pub struct Shard {
    /// Its name without `.tar`: the output is `NAME.tar` with `NAME.json`.
    pub name: String,
    pub source: Source,
}

pub enum Source {
    Tar(Location),
    Folder(PathBuf),
}

impl Source {
    pub fn describe(&self) -> String {
        match self {
            Source::Tar(location) => location.to_string(),
            Source::Folder(path) => path.display().to_string(),
        }
    }
}

/// The shards that `inputs` name, sorted by name. An input is a `.tar`
/// (local or `s3://`, `gs://`, `az://`), a folder or prefix ending in `/`
/// (its `.tar` files), a folder of samples, a folder of such folders (one
/// shard each, as img2dataset's "files" output), a pattern (`shards/*.tar`),
/// or any of these with WebDataset's braces: `shards/{00000..00099}.tar`.
pub fn expand(inputs: &[String]) -> Result<Vec<Shard>> {
    let mut shards = Vec::new();
    for input in inputs {
        for text in braces(input)? {
            expand_one(&text, &mut shards)?;
        }
    }
    shards.sort_by(|a, b| a.name.cmp(&b.name));
    for pair in shards.windows(2) {
        if pair[0].name == pair[1].name {
            bail!(
                "{} and {}: two shards named {}; their outputs would collide (give shards distinct names)",
                pair[0].source.describe(),
                pair[1].source.describe(),
                pair[0].name
            );
        }
    }
    Ok(shards)
}

fn expand_one(text: &str, shards: &mut Vec<Shard>) -> Result<()> {
    if text.starts_with("file://") {
        return local(&location::local_path(text)?, shards);
    }
    if is_url(text) {
        let location = Location::parse(text)?;
        let found = if text.ends_with('/') { location.list(".tar")? } else { vec![location] };
        if found.is_empty() {
            bail!("{text}: no .tar shard under this prefix");
        }
        shards.extend(found.into_iter().map(tar_shard));
        return Ok(());
    }
    let path = Path::new(text);
    if !path.exists() && text.contains(['*', '?', '[']) {
        let matches = pattern_matches(text.strip_suffix('/').unwrap_or(text))?;
        if matches.is_empty() {
            bail!("{text}: no file matches this pattern");
        }
        for path in matches {
            local(&path, shards)?;
        }
        return Ok(());
    }
    local(path, shards)
}

/// The paths matching the pattern `text` (`*`, `?`, `[...]` within a name,
/// `**` across folders; hidden names only when the pattern spells their
/// dot), sorted. The walk follows no symbolic link to a folder (a link is
/// neither entered nor matched) and enters no folder twice (by device and
/// inode), so a link `loop -> .` or a bind-mount loop neither multiplies
/// the shards nor runs forever; a link to a file matches as the file.
fn pattern_matches(text: &str) -> Result<Vec<PathBuf>> {
    let pattern = glob::Pattern::new(text).with_context(|| format!("{text}: not a valid pattern"))?;
    let options =
        glob::MatchOptions { require_literal_separator: true, require_literal_leading_dot: true, ..Default::default() };
    // The walk starts at the pattern's folder without wildcards, and goes
    // as deep as the pattern's names (any depth with `**`).
    let components: Vec<&str> = text.split('/').collect();
    let literal = components.iter().take_while(|c| !c.contains(['*', '?', '['])).count();
    let base = components[..literal].join("/");
    let rest = &components[literal..];
    let depth = if rest.contains(&"**") { usize::MAX } else { rest.len() };
    let hidden = rest.iter().any(|c| c.starts_with('.'));
    let root = match base.as_str() {
        "" if text.starts_with('/') => PathBuf::from("/"),
        "" => PathBuf::new(),
        _ => PathBuf::from(&base),
    };
    let mut found = Vec::new();
    let mut visited = HashSet::new();
    let walk = Walk { pattern: &pattern, options, depth, hidden, text };
    walk.dir(&root, 1, &mut visited, &mut found)?;
    found.sort();
    Ok(found)
}

/// A pattern's walk: see [`pattern_matches`].
struct Walk<'a> {
    pattern: &'a glob::Pattern,
    options: glob::MatchOptions,
    /// How many names deep the pattern reaches below its folder.
    depth: usize,
    /// Whether hidden folders may hold matches.
    hidden: bool,
    text: &'a str,
}

impl Walk<'_> {
    fn dir(&self, dir: &Path, level: usize, visited: &mut HashSet<(u64, u64)>, found: &mut Vec<PathBuf>) -> Result<()> {
        let shown = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        let cannot = || format!("{}: cannot list (for {})", shown.display(), self.text);
        let meta = match std::fs::metadata(shown) {
            Ok(meta) if meta.is_dir() => meta,
            // The folder the pattern starts from is not there: no match.
            _ if level == 1 => return Ok(()),
            Ok(_) => return Ok(()),
            Err(e) => return Err(e).with_context(cannot),
        };
        if !visited.insert((meta.dev(), meta.ino())) {
            return Ok(());
        }
        let mut entries: Vec<std::fs::DirEntry> =
            std::fs::read_dir(shown).with_context(cannot)?.collect::<std::io::Result<_>>().with_context(cannot)?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = if dir.as_os_str().is_empty() { PathBuf::from(entry.file_name()) } else { entry.path() };
            // The entry itself: a link is not followed here.
            let kind = entry.file_type().with_context(cannot)?;
            let is_link_to_dir = kind.is_symlink() && path.is_dir();
            if !is_link_to_dir && self.pattern.matches_path_with(&path, self.options) {
                found.push(path.clone());
            }
            let name_hidden = entry.file_name().as_encoded_bytes().first() == Some(&b'.');
            if kind.is_dir() && level < self.depth && (self.hidden || !name_hidden) {
                self.dir(&path, level + 1, visited, found)?;
            }
        }
        Ok(())
    }
}

fn local(path: &Path, shards: &mut Vec<Shard>) -> Result<()> {
    if path.is_file() {
        if !path.to_string_lossy().ends_with(".tar") {
            bail!("{}: not a .tar shard or a folder", path.display());
        }
        shards.push(tar_shard(Location::Local(path.to_owned())));
        return Ok(());
    }
    if !path.is_dir() {
        bail!("{}: no such file or folder", path.display());
    }
    let tars = Location::Local(path.to_owned()).list(".tar")?;
    if !tars.is_empty() {
        shards.extend(tars.into_iter().map(tar_shard));
        return Ok(());
    }
    if holds_images(path)? {
        shards.push(Shard { name: dir_name(path), source: Source::Folder(path.to_owned()) });
        return Ok(());
    }
    // Its folders of samples; a link to a folder is not followed (`loop ->
    // .` would be this folder again, `alias -> 00000` a shard twice).
    let mut subdirs = Vec::new();
    for entry in std::fs::read_dir(path).with_context(|| format!("{}: cannot list", path.display()))? {
        let entry = entry.with_context(|| format!("{}: cannot list", path.display()))?;
        let is_dir = entry.file_type().with_context(|| format!("{}: cannot list", path.display()))?.is_dir();
        let sub = entry.path();
        if is_dir && holds_images(&sub)? {
            subdirs.push(Shard { name: dir_name(&sub), source: Source::Folder(sub) });
        }
    }
    if subdirs.is_empty() {
        bail!("{}: no .tar shard, image or folder of images in this folder", path.display());
    }
    shards.append(&mut subdirs);
    Ok(())
}

fn tar_shard(location: Location) -> Shard {
    let file = location.file_name();
    let name = file.strip_suffix(".tar").unwrap_or(&file).to_owned();
    Shard { name, source: Source::Tar(location) }
}

fn dir_name(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "root".into())
}

/// Whether `dir` directly holds an image file.
fn holds_images(dir: &Path) -> Result<bool> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))? {
        let path = entry.with_context(|| format!("{}: cannot list", dir.display()))?.path();
        if path.is_file() && super::webdataset::is_image(&path.to_string_lossy()) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// WebDataset's brace notation, expanded: `{000..011}` is a zero-padded
/// range, `{a,b}` a list; several braces give every combination, at most
/// `MAX_BRACE_NAMES` of them (counted before any is made).
pub fn braces(text: &str) -> Result<Vec<String>> {
    let mut count = 1usize;
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').map(|i| open + i).with_context(|| format!("{text}: unclosed {{"))?;
        let inner = &rest[open + 1..close];
        let choices = match inner.split_once("..") {
            Some((a, b)) => match (a.parse::<u64>(), b.parse::<u64>()) {
                (Ok(first), Ok(last)) if first <= last => {
                    usize::try_from(last - first).ok().and_then(|n| n.checked_add(1))
                }
                _ => Some(1), // refused with its reason below
            },
            None => Some(inner.split(',').count()),
        };
        count = choices.and_then(|n| count.checked_mul(n)).filter(|&n| n <= MAX_BRACE_NAMES).with_context(|| {
            format!("{text}: the braces expand to more than {MAX_BRACE_NAMES} names (split the run, or name a folder)")
        })?;
        rest = &rest[close + 1..];
    }
    expand_braces(text)
}

fn expand_braces(text: &str) -> Result<Vec<String>> {
    let Some(open) = text.find('{') else {
        return Ok(vec![text.to_owned()]);
    };
    let close = text[open..].find('}').map(|i| open + i).with_context(|| format!("{text}: unclosed {{"))?;
    let (head, inner, tail) = (&text[..open], &text[open + 1..close], &text[close + 1..]);
    let choices: Vec<String> = if let Some((a, b)) = inner.split_once("..") {
        let parse =
            |s: &str| s.parse::<u64>().with_context(|| format!("{text}: {{{inner}}} is not a range of numbers"));
        let (first, last) = (parse(a)?, parse(b)?);
        if last < first {
            bail!("{text}: the range {{{inner}}} runs backwards");
        }
        let width = if a.starts_with('0') { a.len() } else { 0 };
        (first..=last).map(|n| format!("{n:0width$}")).collect()
    } else {
        inner.split(',').map(str::to_owned).collect()
    };
    let tails = expand_braces(tail)?;
    let mut expanded = Vec::new();
    for choice in &choices {
        for rest in &tails {
            expanded.push(format!("{head}{choice}{rest}"));
        }
    }
    Ok(expanded)
}

/// Where a worker's index came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexSource {
    /// `--worker-index` (or `$VAE_WORKER_INDEX`).
    Flag,
    /// A Kubernetes Indexed Job's `$JOB_COMPLETION_INDEX`.
    Kubernetes,
    /// A Slurm job array's `$SLURM_ARRAY_TASK_ID`.
    Slurm,
    /// None given: the only worker.
    Default,
}

impl IndexSource {
    /// The environment variable of a job engine the index was read from.
    pub fn job_variable(self) -> Option<&'static str> {
        match self {
            IndexSource::Kubernetes => Some("JOB_COMPLETION_INDEX"),
            IndexSource::Slurm => Some("SLURM_ARRAY_TASK_ID"),
            IndexSource::Flag | IndexSource::Default => None,
        }
    }
}

impl std::fmt::Display for IndexSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IndexSource::Flag => "--worker-index",
            IndexSource::Kubernetes => "JOB_COMPLETION_INDEX",
            IndexSource::Slurm => "SLURM_ARRAY_TASK_ID",
            IndexSource::Default => "default",
        })
    }
}

/// This worker's place among the workers of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workers {
    pub index: usize,
    pub count: usize,
}

impl Workers {
    /// From `--worker-index`/`--num-workers` when given, else from the job
    /// engine's environment: a Kubernetes Indexed Job's `JOB_COMPLETION_INDEX`
    /// (its count must be given: Kubernetes does not export it), or a Slurm job
    /// array's `SLURM_ARRAY_TASK_ID` and `SLURM_ARRAY_TASK_COUNT` (with
    /// `_MIN` and `_STEP`, so `--array=1-64:1` gives indexes 0 to 63); else
    /// the only worker. Returns also where the index came from.
    pub fn resolve(
        index: Option<usize>,
        count: Option<usize>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(Self, IndexSource)> {
        let number = |name: &str| -> Result<Option<usize>> {
            env(name)
                .map(|v| v.trim().parse::<usize>().with_context(|| format!("${name} = {v:?} is not a number")))
                .transpose()
        };
        let (index, source) = if let Some(i) = index {
            (i, IndexSource::Flag)
        } else if let Some(i) = number("JOB_COMPLETION_INDEX")? {
            if count.is_none() {
                bail!(
                    "JOB_COMPLETION_INDEX is set but not the number of workers: pass --num-workers (the Job's completions) or set VAE_NUM_WORKERS"
                );
            }
            (i, IndexSource::Kubernetes)
        } else if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
            let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let step = number("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
            if id < min {
                bail!("SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}");
            }
            ((id - min) / step, IndexSource::Slurm)
        } else {
            (0, IndexSource::Default)
        };
        let count = match count {
            Some(n) => n,
            None if source == IndexSource::Slurm => number("SLURM_ARRAY_TASK_COUNT")?
                .context("SLURM_ARRAY_TASK_ID is set but not SLURM_ARRAY_TASK_COUNT: pass --num-workers")?,
            None if source == IndexSource::Flag => bail!("--worker-index needs --num-workers"),
            None => 1,
        };
        if count == 0 {
            bail!("the number of workers must be at least 1");
        }
        if index >= count {
            bail!("worker index {index} (from {source}) is not below the number of workers {count}");
        }
        Ok((Self { index, count }, source))
    }

    /// Whether the shard at `position` (in name order) is this worker's.
    pub fn owns(&self, position: usize) -> bool {
        position % self.count == self.index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn braces_expand_ranges_lists_and_products() {
        assert_eq!(braces("a/{008..011}.tar").unwrap(), ["a/008.tar", "a/009.tar", "a/010.tar", "a/011.tar"]);
        assert_eq!(braces("{1..3}").unwrap(), ["1", "2", "3"]);
        assert_eq!(
            braces("s3://b/{x,y}/{0..1}.tar").unwrap(),
            ["s3://b/x/0.tar", "s3://b/x/1.tar", "s3://b/y/0.tar", "s3://b/y/1.tar"]
        );
        assert_eq!(braces("plain.tar").unwrap(), ["plain.tar"]);
        let big = braces("x{0..9999}{0..9999}.tar").unwrap_err().to_string();
        assert!(big.contains("more than 1000000 names"), "{big}");
        assert_eq!(braces("{0..999}{0..999}").unwrap().len(), MAX_BRACE_NAMES);
        assert!(braces("{0..18446744073709551615}").is_err(), "a range past usize");
        for bad in ["{3..1}", "{a..b}", "x{1..2"] {
            assert!(braces(bad).is_err(), "{bad}");
        }
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn workers_from_flags_kubernetes_and_slurm() {
        let w = |index, count, vars: &[(&str, &str)]| Workers::resolve(index, count, env(vars)).map(|(w, _)| w);
        assert_eq!(w(None, None, &[]).unwrap(), Workers { index: 0, count: 1 });
        assert_eq!(w(Some(2), Some(4), &[("JOB_COMPLETION_INDEX", "1")]).unwrap(), Workers { index: 2, count: 4 });
        assert_eq!(w(None, Some(4), &[("JOB_COMPLETION_INDEX", "3")]).unwrap(), Workers { index: 3, count: 4 });
        assert!(w(None, None, &[("JOB_COMPLETION_INDEX", "3")]).is_err(), "Kubernetes gives no count");
        let slurm = [("SLURM_ARRAY_TASK_ID", "5"), ("SLURM_ARRAY_TASK_COUNT", "8"), ("SLURM_ARRAY_TASK_MIN", "1")];
        assert_eq!(w(None, None, &slurm).unwrap(), Workers { index: 4, count: 8 });
        let stepped = [("SLURM_ARRAY_TASK_ID", "6"), ("SLURM_ARRAY_TASK_COUNT", "4"), ("SLURM_ARRAY_TASK_STEP", "2")];
        assert_eq!(w(None, None, &stepped).unwrap(), Workers { index: 3, count: 4 });
        assert!(w(Some(4), Some(4), &[]).is_err(), "index out of range");
        assert!(w(Some(0), Some(0), &[]).is_err(), "no workers");
        assert!(w(Some(1), None, &[]).is_err(), "index without count");
        assert!(w(None, Some(2), &[("JOB_COMPLETION_INDEX", "x")]).is_err(), "not a number");
        let owned: Vec<usize> = (0..10).filter(|&i| Workers { index: 1, count: 3 }.owns(i)).collect();
        assert_eq!(owned, [1, 4, 7]);
    }
}
