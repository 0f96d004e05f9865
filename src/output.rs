//! Writing output files safely: into a temporary file in the target folder,
//! renamed into place only when complete, so an interrupted run never leaves a
//! truncated file under the final name, and existing files are replaced only
//! when asked to, and only when they are regular files. Also what inputs
//! and stdout need of the file system: inputs that are regular files (a FIFO
//! would block the open), and a stdout whose reader may have gone.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{}: already exists (pass --force to replace it)", path.display())]
    Exists { path: PathBuf },
    #[error("{}: is {what}, not a regular file; refusing to replace it", path.display())]
    NotRegular { path: PathBuf, what: &'static str },
    // `cause`, not `source`: the message already says it, and a source would
    // make `{:#}` print it twice.
    #[error("{}: cannot write: {cause}", path.display())]
    Io { path: PathBuf, cause: io::Error },
}

/// Whether an existing file at the output path may be replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overwrite {
    #[default]
    Refuse,
    Replace,
}

/// Refuses an existing `path` unless it may be replaced: callers check this
/// before the work that produces the output, [`write_atomic`] again at the end.
/// Whatever overwrite says, only a regular file is replaced: not a symbolic
/// link (the write would land elsewhere), a folder, a device or a FIFO.
pub fn check_writable(path: &Path, overwrite: Overwrite) -> Result<(), OutputError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.is_file() => {
            Err(OutputError::NotRegular { path: path.to_owned(), what: kind(&meta.file_type()) })
        }
        Ok(_) if overwrite == Overwrite::Refuse => Err(OutputError::Exists { path: path.to_owned() }),
        _ => Ok(()),
    }
}

/// What a file that is not a regular file is, for messages.
fn kind(file_type: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    if file_type.is_symlink() {
        "a symbolic link"
    } else if file_type.is_dir() {
        "a folder"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_block_device() || file_type.is_char_device() {
        "a device"
    } else {
        "a special file"
    }
}

/// Refuses an input that is not a regular file (after following links),
/// before anything opens it: opening a FIFO waits for a writer forever, and
/// a device may never end.
pub fn check_input(path: &Path) -> io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if meta.is_file() {
        return Ok(());
    }
    Err(io::Error::new(io::ErrorKind::InvalidInput, format!("is {}, not a regular file", kind(&meta.file_type()))))
}

/// True when `path` is a regular file (following links): an output that
/// counts as done for `--skip-existing`.
pub fn is_regular_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
}

/// Writes `path` through `write`, atomically.
pub fn write_atomic(
    path: &Path,
    overwrite: Overwrite,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<(), OutputError> {
    let io = |cause| OutputError::Io { path: path.to_owned(), cause };
    check_writable(path, overwrite)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("output");
    // Created 0666 less the umask, as any file a program creates, not
    // tempfile's 0600; a replaced file keeps its own mode.
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(io)?;
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.is_file()
    {
        tmp.as_file().set_permissions(meta.permissions()).map_err(io)?;
    }
    {
        let mut out = BufWriter::new(tmp.as_file());
        write(&mut out).map_err(io)?;
        out.flush().map_err(io)?;
    }
    tmp.as_file().sync_all().map_err(io)?;
    match overwrite {
        Overwrite::Replace => tmp.persist(path).map(drop).map_err(|e| io(e.error)),
        // No-clobber rename: a file created meanwhile is not replaced either.
        Overwrite::Refuse => tmp.persist_noclobber(path).map(drop).map_err(|e| {
            if e.error.kind() == io::ErrorKind::AlreadyExists {
                OutputError::Exists { path: path.to_owned() }
            } else {
                io(e.error)
            }
        }),
    }
}

/// Set once stdout's reader has gone (EPIPE): nothing more is written there.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes `text` to stdout. A reader that has gone (`| head`, `| true`) is
/// not an error: it is the end of the output, as for any Unix filter, and
/// later writes are skipped (see [`stdout_closed`]). Other errors (a full
/// disk) are.
pub fn print(text: &str) -> io::Result<()> {
    if stdout_closed() {
        return Ok(());
    }
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
            STDOUT_CLOSED.store(true, Ordering::Relaxed);
            Ok(())
        }
        other => other,
    }
}

/// Whether stdout's reader has gone (a write met EPIPE).
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::Relaxed)
}

/// One JSON object on its own line on stdout (see [`print`]).
pub fn json_line(value: &serde_json::Value) -> anyhow::Result<()> {
    use anyhow::Context as _;
    print(&format!("{value}\n")).context("writing to stdout")
}

/// True when `a` and `b` name the same existing file (or the same path).
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}
