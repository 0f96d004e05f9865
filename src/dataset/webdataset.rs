//! WebDataset samples: the files of one sample share a key, the path up to
//! the first dot of the file name (`part/000123.jpg`, `part/000123.json` and
//! `part/000123.txt` are the sample `part/000123`). In a tar a sample's files
//! are adjacent, as img2dataset and webdataset write them.
//!
//! Memory is bounded whatever the input: a file over [`MAX_FILE`], a sample
//! whose files together pass [`MAX_SAMPLE`] and a tar extension header (GNU
//! long name, PAX records) over [`MAX_HEADER`] are not read, and each leaves
//! a record instead.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

use super::{SkipKind, Skipped};

/// Files bigger than this are not read into memory: their sample is skipped.
pub const MAX_FILE: u64 = 512 << 20;
/// A sample's files together (counting 512 bytes a file for its name and
/// bookkeeping) are held up to this many bytes; past it the sample is skipped
/// and what it held is let go. With [`MAX_FILE`], what one sample can cost.
pub const MAX_SAMPLE: u64 = 1 << 30;
/// A GNU long name or PAX extension header is read up to this many bytes
/// (a path is at most a few KiB); a larger one is passed over and the member
/// it describes is recorded as skipped.
pub const MAX_HEADER: u64 = 1 << 20;
/// What a file costs in a sample's budget beyond its bytes.
const PER_FILE: u64 = 512;

/// One sample: its key and its files, as (extension, bytes) in the order
/// they came.
pub struct Sample {
    pub key: String,
    pub files: Vec<(String, Vec<u8>)>,
    /// Why the sample cannot be taken, as (kind, reason) (kinds as in
    /// [`Skipped`]); once there is one, its files are let go.
    pub problems: Vec<(SkipKind, String)>,
    /// Its members that are not copied (links, devices, FIFOs): the sample
    /// is taken without them.
    pub left_out: Vec<Skipped>,
    /// Modification time of its first file (kept on the files copied out).
    pub mtime: u64,
    /// Bytes held, against [`MAX_SAMPLE`].
    held: u64,
}

impl Sample {
    fn new(key: String, mtime: u64) -> Self {
        Self { key, files: Vec::new(), problems: Vec::new(), left_out: Vec::new(), mtime, held: 0 }
    }

    /// Notes why the sample cannot be taken, and lets its files go.
    fn problem(&mut self, kind: SkipKind, reason: String) {
        self.problems.push((kind, reason));
        self.files = Vec::new();
    }

    /// Whether the file `name` of `size` bytes may be read into the sample:
    /// not when the sample is already refused, or the file or the sample's
    /// total would pass its limit (then the sample is refused, saying why).
    fn admit(&mut self, name: &str, size: u64) -> bool {
        if !self.problems.is_empty() {
            return false;
        }
        if size > MAX_FILE {
            self.problem(
                SkipKind::FileTooLarge,
                format!("{name} is {size} bytes, over the {MAX_FILE}-byte limit of a file"),
            );
            return false;
        }
        let held = self.held.saturating_add(size).saturating_add(PER_FILE);
        if held > MAX_SAMPLE {
            self.problem(
                SkipKind::SampleTooLarge,
                format!("with {name} ({size} bytes) the sample's files pass the {MAX_SAMPLE}-byte limit of a sample"),
            );
            return false;
        }
        self.held = held;
        true
    }

    /// Notes a member that is not copied.
    fn leave_out(&mut self, name: &str, why: &str) {
        self.left_out.push(Skipped::new(&self.key, SkipKind::NotRegularFile, format!("{name}: {why}, not copied")));
    }
}

/// Splits a member path into (key, extension) at the first dot of its file
/// name; `None` for names that are no sample's (hidden files, no extension).
/// Names are bytes: they need not be UTF-8.
fn split_key(path: &[u8]) -> Option<(&[u8], &[u8])> {
    let start = path.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
    let name = &path[start..];
    if name.first() == Some(&b'.') {
        return None;
    }
    let dot = name.iter().position(|&b| b == b'.')?;
    Some((&path[..start + dot], &name[dot + 1..]))
}

/// A name's bytes as text: itself when UTF-8, else spelled with `\xNN`
/// escapes (so two different names stay apart) and `false`.
fn text(bytes: &[u8]) -> (String, bool) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_owned(), true),
        Err(_) => (bytes.escape_ascii().to_string(), false),
    }
}

/// Whether a file with this extension (after the key's dot) is an image.
pub fn is_image_extension(ext: &str) -> bool {
    crate::imageio::EXTENSIONS.iter().any(|e| e.eq_ignore_ascii_case(ext))
}

/// Whether the file `name` is an image, by its last extension.
pub fn is_image(name: &str) -> bool {
    name.rsplit_once('.').is_some_and(|(_, ext)| is_image_extension(ext))
}

/// Groups members into samples by key (their raw bytes), handing each
/// sample to `each` when the next key starts.
struct Grouper<F> {
    current: Option<(Vec<u8>, Sample)>,
    each: F,
}

impl<F: FnMut(Sample) -> Result<()>> Grouper<F> {
    /// The sample of the member `path` (a new one when its key changes), and
    /// the member's extension; `None` for names that are no sample's.
    fn sample(&mut self, path: &[u8], mtime: u64) -> Result<Option<(&mut Sample, String)>> {
        let Some((key, ext)) = split_key(path) else { return Ok(None) };
        if self.current.as_ref().is_some_and(|(k, _)| k != key) {
            self.flush()?;
        }
        let (_, sample) = self.current.get_or_insert_with(|| {
            let (text_key, utf8) = text(key);
            let mut sample = Sample::new(text_key, mtime);
            if !utf8 {
                sample.problem(SkipKind::BadKey, format!("the key {} is not UTF-8", sample.key));
            }
            (key.to_owned(), sample)
        });
        let (ext, utf8) = text(ext);
        if !utf8 {
            sample.problem(SkipKind::BadKey, format!("the member name {} is not UTF-8", text(path).0));
        }
        Ok(Some((sample, ext)))
    }

    fn flush(&mut self) -> Result<()> {
        match self.current.take() {
            Some((_, sample)) => (self.each)(sample),
            None => Ok(()),
        }
    }
}

/// What extension headers said about the next member.
#[derive(Default)]
struct Pending {
    /// Its name (GNU long name, PAX `path`).
    name: Option<Vec<u8>>,
    /// Its size (PAX `size`), which overrides the header's.
    size: Option<u64>,
    /// An extension header too large to read: the member is skipped.
    oversized: Option<String>,
}

/// A tar read block by block, counting its position so that a member
/// running past the end of the file is damage, not a clean end.
struct Blocks<R> {
    reader: R,
    pos: u64,
    len: u64,
}

impl<R: Read + Seek> Blocks<R> {
    /// The next 512-byte header; `None` at the end of the file.
    fn header(&mut self, block: &mut [u8; 512]) -> Result<bool> {
        if self.pos >= self.len {
            return Ok(false);
        }
        self.reader.read_exact(block).context("the file ends inside a header")?;
        self.pos += 512;
        Ok(true)
    }

    /// The next `size` bytes, and the padding after them passed over.
    fn read(&mut self, size: u64) -> Result<Vec<u8>> {
        if size > self.len.saturating_sub(self.pos) {
            bail!("the file ends inside it");
        }
        let mut bytes = vec![0; size as usize];
        self.reader.read_exact(&mut bytes)?;
        self.pos += size;
        self.skip(padding(size))?;
        Ok(bytes)
    }

    /// Passes over `size` bytes (and their padding) without reading them.
    fn skip_data(&mut self, size: u64) -> Result<()> {
        self.skip(size.checked_add(padding(size)).context("size overflow")?)
    }

    fn skip(&mut self, n: u64) -> Result<()> {
        let pos = self.pos.checked_add(n).filter(|&p| p <= self.len).context("the file ends inside it")?;
        // Relative, so that a buffered reader keeps its buffer.
        self.reader.seek_relative(i64::try_from(n)?)?;
        self.pos = pos;
        Ok(())
    }
}

fn padding(size: u64) -> u64 {
    (512 - size % 512) % 512
}

/// Checks a header's checksum (the sum of its bytes with the checksum field
/// as spaces).
fn checksum_ok(block: &[u8; 512], header: &tar::Header) -> bool {
    let sum: u32 = block.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { b as u32 }).sum();
    header.cksum().is_ok_and(|c| c == sum)
}

/// The `path` and `size` of PAX extended header records (`LEN KEY=VALUE\n`).
fn pax_records(data: &[u8], pending: &mut Pending) -> Result<()> {
    let mut rest = data;
    while !rest.is_empty() && rest[0] != 0 {
        let space = rest.iter().position(|&b| b == b' ').context("a PAX record without its length")?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|n| n.parse().ok())
            .filter(|&n| n > space + 1 && n <= rest.len())
            .context("a PAX record with a bad length")?;
        let record = &rest[space + 1..len];
        let record = record.strip_suffix(b"\n").context("a PAX record without its newline")?;
        let eq = record.iter().position(|&b| b == b'=').context("a PAX record without '='")?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        match key {
            b"path" => pending.name = Some(value.to_owned()),
            b"size" => {
                let size = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
                pending.size = Some(size.context("a PAX size that is not a number")?);
            }
            _ => {}
        }
        rest = &rest[len..];
    }
    Ok(())
}

/// What a member that is neither a regular file nor a folder is, in words.
fn describe(kind: tar::EntryType) -> &'static str {
    use tar::EntryType::*;
    match kind {
        Symlink => "a symbolic link",
        Link => "a hard link",
        Char | Block => "a device",
        Fifo => "a FIFO",
        GNUSparse => "a GNU sparse file",
        _ => "not a regular file",
    }
}

/// Calls `each` with the samples of a tar, in order. Folders and members
/// with no extension are passed over; links, devices and FIFOs are left out
/// of their sample with a note; a key that comes back after another key's
/// files is a sample of its own (and `each` sees the key twice: the caller
/// decides). Extension headers (GNU long names, PAX) are read here, each up
/// to `MAX_HEADER`. A damaged or truncated tar is an error after the
/// samples before the damage.
pub fn read_tar(mut reader: impl Read + Seek, each: impl FnMut(Sample) -> Result<()>) -> Result<()> {
    let len = reader.seek(SeekFrom::End(0)).context("not a readable tar")?;
    reader.seek(SeekFrom::Start(0)).context("not a readable tar")?;
    let mut blocks = Blocks { reader, pos: 0, len };
    let mut samples = Grouper { current: None, each };
    let mut pending = Pending::default();
    let mut block = [0u8; 512];
    let mut members = 0usize;
    loop {
        let done = members;
        let damaged = move || format!("damaged tar after {done} members");
        if !blocks.header(&mut block).with_context(damaged)? || block.iter().all(|&b| b == 0) {
            break;
        }
        let first = block;
        let header = tar::Header::from_byte_slice(&first);
        if !checksum_ok(&first, header) {
            return Err(anyhow!("header checksum mismatch")).with_context(damaged);
        }
        use tar::EntryType::*;
        let kind = header.entry_type();
        let mut size = header.entry_size().with_context(damaged)?;
        if matches!(kind, GNULongName | XHeader) {
            if size > MAX_HEADER {
                let what = if kind == GNULongName { "GNU long name" } else { "PAX extension header" };
                pending.oversized = Some(format!("its {what} is {size} bytes, over the {MAX_HEADER}-byte limit"));
                blocks.skip_data(size).with_context(damaged)?;
                continue;
            }
            let data = blocks.read(size).with_context(damaged)?;
            if kind == GNULongName {
                let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                pending.name = Some(data[..end].to_owned());
            } else {
                pax_records(&data, &mut pending).with_context(damaged)?;
            }
            continue;
        }
        if matches!(kind, GNULongLink | XGlobalHeader) {
            // A link's target and archive-wide records: not needed.
            blocks.skip_data(size).with_context(damaged)?;
            continue;
        }
        if let Some(pax_size) = pending.size.take() {
            size = pax_size;
        }
        if kind == GNUSparse {
            // Further sparse maps follow in blocks of their own while the
            // "is extended" byte is set.
            let mut extended = first[482] != 0;
            while extended {
                if !blocks.header(&mut block).with_context(damaged)? {
                    return Err(anyhow!("the file ends inside a sparse map")).with_context(damaged);
                }
                extended = block[504] != 0;
            }
        }
        members += 1;
        let name = pending.name.take().unwrap_or_else(|| header.path_bytes().into_owned());
        let mtime = header.mtime().unwrap_or(0);
        if let Some(oversized) = pending.oversized.take() {
            // The member's real name is in the header not read: it is a
            // sample of its own, under the name its plain header gives.
            samples.flush()?;
            let mut sample = Sample::new(text(&name).0, mtime);
            sample.problem(SkipKind::BadHeader, format!("member {}: {oversized}; the member is skipped", sample.key));
            (samples.each)(sample)?;
            blocks.skip_data(size).with_context(damaged)?;
            continue;
        }
        let is_file = matches!(kind, Regular | Continuous);
        if kind == Directory {
            blocks.skip_data(size).with_context(damaged)?;
            continue;
        }
        let Some((sample, ext)) = samples.sample(&name, mtime)? else {
            blocks.skip_data(size).with_context(damaged)?;
            continue;
        };
        let path = text(&name).0;
        if !is_file {
            sample.leave_out(&path, describe(kind));
            blocks.skip_data(size).with_context(damaged)?;
        } else if sample.admit(&path, size) {
            let bytes = blocks.read(size).with_context(|| format!("damaged tar in member {path}"))?;
            sample.files.push((ext, bytes));
        } else {
            blocks.skip_data(size).with_context(|| format!("damaged tar in member {path}"))?;
        }
    }
    samples.flush()
}

/// A file found in a folder shard: its path, and its size when it is a
/// regular file (else what it is, in words).
type Found = (PathBuf, Result<u64, &'static str>);

/// Calls `each` with the samples of a folder (its files and those of its
/// subfolders, keys relative to it), in key order. Symbolic links are not
/// followed (a link is left out of its sample with a note, wherever it
/// points), nor is a folder walked twice (a loop through a bind mount).
pub fn read_folder(dir: &Path, each: impl FnMut(Sample) -> Result<()>) -> Result<()> {
    let mut files = Vec::new();
    let mut visited = HashSet::new();
    walk(dir, dir, &mut visited, &mut files)?;
    let mut keys: BTreeMap<Vec<u8>, Vec<(Vec<u8>, Found)>> = BTreeMap::new();
    for (relative, found) in files {
        if let Some((key, _)) = split_key(&relative) {
            keys.entry(key.to_owned()).or_default().push((relative, found));
        }
    }
    let mut samples = Grouper { current: None, each };
    for group in keys.into_values() {
        // The sizes are known before any file is read: a sample over the
        // limit is refused without reading it.
        let sizes = group.iter().filter_map(|(_, (_, found))| found.as_ref().ok());
        let too_large = sizes.clone().any(|&size| size > MAX_FILE);
        let total = sizes.fold(0u64, |total, size| total.saturating_add(*size).saturating_add(PER_FILE));
        for (i, (relative, (path, found))) in group.into_iter().enumerate() {
            let Some((sample, ext)) = samples.sample(&relative, 0)? else { continue };
            if i == 0 && total > MAX_SAMPLE && !too_large {
                let limit = format!("over the {MAX_SAMPLE}-byte limit of a sample");
                sample.problem(SkipKind::SampleTooLarge, format!("its files come to {total} bytes, {limit}"));
            }
            take(sample, ext, &path, found);
        }
    }
    samples.flush()
}

/// Reads the file at `path` into `sample` if it admits it.
fn take(sample: &mut Sample, ext: String, path: &Path, found: Result<u64, &'static str>) {
    let shown = path.display().to_string();
    let size = match found {
        Ok(size) => size,
        Err(what) => return sample.leave_out(&shown, what),
    };
    if !sample.admit(&shown, size) {
        return;
    }
    match read_regular(path, size) {
        Ok((bytes, mtime)) => {
            sample.mtime = sample.mtime.max(mtime);
            sample.files.push((ext, bytes));
        }
        Err(e) => sample.problem(SkipKind::UnreadableFile, format!("{shown}: {e}")),
    }
}

/// The bytes of the regular file `path` (`size` bytes when listed) and its
/// modification time, opened without following a link nor blocking on a
/// FIFO put there since the listing.
fn read_regular(path: &Path, size: u64) -> io::Result<(Vec<u8>, u64)> {
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() != size {
        return Err(io::Error::other("changed while being read"));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(size + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 != size {
        return Err(io::Error::other("changed while being read"));
    }
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    Ok((bytes, mtime.map_or(0, |d| d.as_secs())))
}

/// The entries under `dir` as ('/'-separated path relative to `root`, what
/// was found), sorted; hidden ones passed over. Links are not followed and a
/// folder met again (by device and inode) is not walked again.
fn walk(root: &Path, dir: &Path, visited: &mut HashSet<(u64, u64)>, out: &mut Vec<(Vec<u8>, Found)>) -> Result<()> {
    let meta = std::fs::symlink_metadata(dir).with_context(|| format!("{}: cannot list", dir.display()))?;
    if !visited.insert((meta.dev(), meta.ino())) {
        return Ok(());
    }
    let mut entries: Vec<std::fs::DirEntry> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .collect::<io::Result<_>>()
        .with_context(|| format!("{}: cannot list", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if entry.file_name().as_bytes().first() == Some(&b'.') {
            continue;
        }
        let path = entry.path();
        let relative = path.strip_prefix(root).unwrap_or(&path);
        let relative: Vec<&[u8]> = relative.components().map(|c| c.as_os_str().as_bytes()).collect();
        let relative = relative.join(&b'/');
        // The entry itself, not what a link points to.
        let meta = entry.metadata().with_context(|| format!("{}: cannot read", path.display()))?;
        let kind = meta.file_type();
        let found = if kind.is_dir() {
            walk(root, &path, visited, out)?;
            continue;
        } else if kind.is_file() {
            Ok(meta.len())
        } else if kind.is_symlink() {
            Err("a symbolic link (not followed)")
        } else {
            use std::os::unix::fs::FileTypeExt;
            Err(if kind.is_fifo() {
                "a FIFO"
            } else if kind.is_block_device() || kind.is_char_device() {
                "a device"
            } else {
                "not a regular file"
            })
        };
        out.push((relative, (path, found)));
    }
    Ok(())
}

/// An output shard being written: a tar of samples' files, flushed after
/// each sample so that its size shows progress.
pub struct TarWriter {
    builder: tar::Builder<BufWriter<File>>,
    path: PathBuf,
}

impl TarWriter {
    /// Writes into `file` (at `path`, for messages), from its start.
    pub fn new(file: File, path: &Path) -> Result<Self> {
        let mut builder = tar::Builder::new(BufWriter::with_capacity(1 << 20, file));
        builder.mode(tar::HeaderMode::Deterministic);
        Ok(Self { builder, path: path.to_owned() })
    }

    /// Adds the member `name` with `bytes`.
    pub fn append(&mut self, name: &str, bytes: &[u8], mtime: u64) -> Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(mtime);
        header.set_entry_type(tar::EntryType::Regular);
        self.builder
            .append_data(&mut header, name, bytes)
            .with_context(|| format!("{}: cannot write {name}", self.path.display()))
    }

    /// Pushes what was appended to the file.
    pub fn flush(&mut self) -> Result<()> {
        self.builder.get_mut().flush().with_context(|| format!("{}: cannot write", self.path.display()))
    }

    /// Ends the archive and syncs it to disk.
    pub fn finish(self) -> Result<()> {
        let path = self.path;
        let write = |e| anyhow::Error::new(e).context(format!("{}: cannot write", path.display()));
        let file = self.builder.into_inner().map_err(write)?.into_inner().map_err(|e| write(e.into_error()))?;
        file.sync_all().map_err(write)
    }
}

/// Refuses keys that would escape the output tar's root or clash with how
/// the tar is read back.
pub fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.starts_with('/') || key.split('/').any(|c| c == ".." || c.is_empty()) {
        bail!("key {key:?} is not a relative path");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_at_the_first_dot_of_the_file_name() {
        assert_eq!(split_key(b"000123.jpg"), Some((&b"000123"[..], &b"jpg"[..])));
        assert_eq!(split_key(b"a.b/000123.latent.safetensors"), Some((&b"a.b/000123"[..], &b"latent.safetensors"[..])));
        assert_eq!(split_key(b"dir/.hidden.jpg"), None);
        assert_eq!(split_key(b"README"), None);
        assert_eq!(text(b"a\xff"), ("a\\xff".to_owned(), false));
        assert_eq!(text("é".as_bytes()), ("é".to_owned(), true));
        assert!(is_image("x/y.JPG") && is_image("a.b.webp") && !is_image("a.json"));
        assert!(check_key("a/b").is_ok());
        for bad in ["", "/a", "a/../b", "a//b"] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn adjacent_members_group_into_samples_and_damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.tar");
        let mut w = TarWriter::new(File::create(&path).unwrap(), &path).unwrap();
        for (name, data) in [("a.jpg", "1"), ("a.json", "2"), ("b.png", "3"), ("noext", "x"), ("a.txt", "4")] {
            w.append(name, data.as_bytes(), 7).unwrap();
        }
        w.finish().unwrap();
        let mut seen = Vec::new();
        read_tar(File::open(&path).unwrap(), |s| {
            seen.push((
                s.key,
                s.files.iter().map(|(e, b)| format!("{e}={}", String::from_utf8_lossy(b))).collect::<Vec<_>>(),
            ));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                ("a".to_owned(), vec!["jpg=1".to_owned(), "json=2".to_owned()]),
                ("b".to_owned(), vec!["png=3".to_owned()]),
                ("a".to_owned(), vec!["txt=4".to_owned()]),
            ]
        );
        let bytes = std::fs::read(&path).unwrap();
        let mut count = 0;
        let truncated = read_tar(io::Cursor::new(&bytes[..700]), |_| {
            count += 1;
            Ok(())
        });
        assert!(truncated.unwrap_err().to_string().contains("damaged tar"));
    }
}
