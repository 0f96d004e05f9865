//! Writing output files safely: into a temporary file in the target folder,
//! renamed into place only when complete, so an interrupted run never leaves a
//! truncated file under the final name, and existing files are replaced only
//! when asked to.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{}: already exists (pass --force to replace it)", path.display())]
    Exists { path: PathBuf },
    #[error("{}: cannot write: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
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
pub fn check_writable(path: &Path, overwrite: Overwrite) -> Result<(), OutputError> {
    if overwrite == Overwrite::Refuse && path.exists() {
        return Err(OutputError::Exists { path: path.to_owned() });
    }
    Ok(())
}

/// Writes `path` through `write`, atomically.
pub fn write_atomic(
    path: &Path,
    overwrite: Overwrite,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<(), OutputError> {
    let io = |source| OutputError::Io { path: path.to_owned(), source };
    check_writable(path, overwrite)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("output");
    let tmp = tempfile::Builder::new().prefix(&format!(".{name}.")).suffix(".tmp").tempfile_in(dir).map_err(io)?;
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

/// One JSON object on its own line on stdout (a closed pipe is an error, not a panic).
pub fn json_line(value: &serde_json::Value) -> anyhow::Result<()> {
    use anyhow::Context as _;
    writeln!(io::stdout(), "{value}").context("writing to stdout")
}

/// True when `a` and `b` name the same existing file (or the same path).
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}
