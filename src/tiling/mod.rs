//! Encoding and decoding in bounded memory.
//!
//! Untiled, a 1024x1024 decode holds several full-resolution activations of
//! 128 to 256 channels at once (about 3 GiB). The banded run keeps one copy of
//! each live activation (in f16 when memory is short) and computes every
//! convolution in bands of rows, so the working set is a few bands.
//!
//! Tools that tile a VAE cut the image into tiles that each run the whole
//! network, which changes the result: each tile normalises with its own
//! GroupNorm statistics (tone shifts between tiles) and sees a truncated
//! receptive field (seams, hidden by feathered overlaps). Here each pass runs
//! over the whole image before the next starts, so each GroupNorm uses the
//! statistics of the whole image and each band reads the halo rows its
//! convolution needs from the stored input: the result is the untiled one,
//! up to f16 rounding of stored activations when that storage is chosen.
//! The mid-block attention attends over all positions, its keys and values
//! stored like activations, a band of queries at a time.
//!
//! Stored activations grow with the image (a 4096x4096 decode holds 12 GiB
//! of them at once even in f16): those that do not fit the budget spill to
//! unnamed files in a temporary folder ([`Spill`]), so the memory a run
//! needs no longer grows with the image, only the disk.

mod attention;
mod program;
mod store;

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use burn::tensor::{Device, Tensor};

use crate::kernels;
use crate::model::Graph;
pub use program::Peak;
pub use store::{Activation, Place, Storage};

/// `--tile`: when to run in bands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tile {
    /// In bands only when the estimated peak memory exceeds the budget.
    Auto,
    /// Never.
    Off,
    /// Always, in bands of this many image rows.
    Rows(usize),
}

impl FromStr for Tile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Tile::Auto),
            "off" => Ok(Tile::Off),
            _ => match s.parse::<usize>() {
                Ok(rows) if rows >= 8 => Ok(Tile::Rows(rows)),
                _ => Err(format!("expected auto, off or a number of pixels (at least 8), got '{s}'")),
            },
        }
    }
}

/// Bounded-memory settings of a run.
#[derive(Debug, Clone)]
pub struct TileOptions {
    pub tile: Tile,
    /// Peak resident memory to stay under, in bytes (the whole process).
    pub max_memory: u64,
    /// Where activations that do not fit `max_memory` go (`--tmp-dir`).
    pub tmp_dir: PathBuf,
}

impl Default for TileOptions {
    fn default() -> Self {
        Self { tile: Tile::Auto, max_memory: default_max_memory(), tmp_dir: std::env::temp_dir() }
    }
}

/// Why a banded run failed: the disk it spills to, or the memory it maps.
#[derive(Debug, thiserror::Error)]
pub enum TilingError {
    #[error(
        "{}: activations spilled to disk need {} there, {} free (--tmp-dir, or a larger --max-memory)",
        dir.display(), size(*needed), size(*free)
    )]
    NoSpace { dir: PathBuf, needed: u64, free: u64 },
    #[error("{}: activations spilled to disk (--tmp-dir): {cause}", dir.display())]
    Disk { dir: PathBuf, cause: io::Error },
    #[error("cannot map memory for an activation: {0}")]
    Memory(io::Error),
}

/// Activations a banded run keeps on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct Spill {
    /// The folder of their files, which have no name there (nothing is left
    /// behind, whatever ends the run).
    pub dir: PathBuf,
    /// Activations of more bytes than this are spilled.
    pub above: u64,
    /// Bytes on disk at the peak.
    pub disk: u64,
}

impl Spill {
    /// Refuses a run whose activations would not fit the folder's free space.
    fn check_space(&self) -> Result<(), TilingError> {
        let disk = |cause| TilingError::Disk { dir: self.dir.clone(), cause };
        let free = free_space(&self.dir).map_err(disk)?;
        match free >= self.disk {
            true => Ok(()),
            false => Err(TilingError::NoSpace { dir: self.dir.clone(), needed: self.disk, free }),
        }
    }
}

/// Bytes that an unprivileged process may still write under `dir`.
fn free_space(dir: &Path) -> io::Result<u64> {
    let path = CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: statvfs is plain data, for which zero bytes are a value.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string and `stat` a writable statvfs.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)] // u32 or u64 by platform
    Ok(u64::from(stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

const GIB: u64 = 1 << 30;

/// Bytes in GiB, for messages.
pub fn gib(bytes: u64) -> f64 {
    bytes as f64 / GIB as f64
}

/// Bytes for messages, in the largest unit they fill: a small `--tmp-dir`
/// says "64.0 KiB free", not "0.1 MiB" (which could be the figure it needs).
fn size(bytes: u64) -> String {
    match bytes {
        GIB.. => format!("{:.2} GiB", gib(bytes)),
        MIB.. => format!("{:.1} MiB", bytes as f64 / MIB as f64),
        KIB.. => format!("{:.1} KiB", bytes as f64 / KIB as f64),
        _ => format!("{bytes} bytes"),
    }
}
const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;

/// The default `--max-memory`: half of the memory available now, at most
/// 1.5 GiB. Running in bands costs a few percent of time, so a low default
/// keeps `vae` a good neighbour (and able to run beside a training job).
pub fn default_max_memory() -> u64 {
    let cap = 3 * GIB / 2;
    available_memory().map_or(cap, |available| (available / 2).min(cap))
}

/// `MemAvailable` of `/proc/meminfo`, where there is one.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Resident memory of this process now, where the OS says.
pub fn resident_memory() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// Parses `--max-memory`: bytes, or a number with K, M, G or T (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().trim_end_matches(['B', 'b']).trim_end_matches(['i']);
    let (number, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c.to_ascii_uppercase()),
        _ => (t, ' '),
    };
    let shift = match unit {
        ' ' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        'T' => 40,
        _ => return Err(format!("unknown unit in '{s}' (use K, M, G or T)")),
    };
    // At least one byte (0.5 would truncate to 0), at most what a u64 holds.
    match number.trim().parse::<f64>().map(|n| n * (1u64 << shift) as f64) {
        Ok(bytes) if bytes >= 1.0 && bytes < u64::MAX as f64 => Ok(bytes as u64),
        Ok(bytes) if (0.0..1.0).contains(&bytes) => Err(format!("'{s}' is less than one byte")),
        _ => Err(format!("expected a size such as 1.5G or 800M, got '{s}'")),
    }
}

/// How one encode or decode runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// The plain forward pass.
    Whole { estimate: u64 },
    /// Passes over whole activations, in bands; `estimate` is the memory.
    Banded { storage: Storage, rows: Rows, estimate: u64, spill: Option<Spill> },
}

/// Rows per band.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rows {
    /// Fixed bands of this many image rows (scaled to each pass's resolution).
    Image { rows: usize, image_height: usize },
    /// As many rows as fit this many bytes of temporaries.
    Budget(u64),
}

impl Rows {
    fn for_pass(self, bytes_per_row: u64, h_out: usize) -> usize {
        let rows = match self {
            Rows::Image { rows, image_height } => (rows * h_out).div_ceil(image_height.max(1)),
            // Below MIN_BAND_ROWS the halo rows cost more than the memory saved.
            Rows::Budget(bytes) => ((bytes / bytes_per_row.max(1)) as usize).max(MIN_BAND_ROWS),
        };
        // A multiple of the 3x3 convolutions' tile rows (Winograd's), so
        // that every band starts on a tile boundary: a band whose tiles
        // line up with the whole image's gives identical values, and it
        // reads one halo row above instead of a whole tile.
        rows.max(1).next_multiple_of(kernels::winograd::TILE).min(h_out.max(1))
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Plan::Whole { estimate } => write!(f, "untiled, estimated peak {:.2} GiB", gib(*estimate)),
            Plan::Banded { storage, rows, estimate, spill } => {
                let storage = match storage {
                    Storage::F32 => "f32",
                    Storage::F16 => "f16",
                };
                match rows {
                    Rows::Image { rows, .. } => write!(f, "bands of {rows} image rows")?,
                    Rows::Budget(bytes) => write!(f, "bands of {} MiB", bytes / MIB)?,
                }
                write!(f, ", activations stored in {storage}")?;
                if let Some(Spill { dir, above, disk }) = spill {
                    let (above, disk) = (size(*above), size(*disk));
                    write!(f, ", those over {above} on disk in {} ({disk})", dir.display())?;
                }
                write!(f, ", estimated peak {:.2} GiB", gib(*estimate))
            }
        }
    }
}

/// Fewest rows in a band when the budget decides: each band of a 3x3
/// convolution reads two halo rows, 12% more work at 16 rows.
const MIN_BAND_ROWS: usize = 16;

/// Smallest and largest working set given to bands when the budget decides.
const MIN_BAND_BYTES: u64 = 32 * MIB;
const MAX_BAND_BYTES: u64 = 256 * MIB;

impl TileOptions {
    /// Chooses how to run `graph` (a model's encoder or decoder) on an input
    /// of `shape` (`[C, H, W]`) whose image has `image_height` rows, given
    /// `resident` bytes already in use (weights and the process itself).
    ///
    /// Stored activations stay in memory, in f32 when they fit, else in
    /// f16; when even f16 does not fit, the largest spill to disk (in f16),
    /// as many as it takes to leave the in-memory ones and a band's
    /// temporaries within the budget.
    pub fn plan(&self, graph: &Graph, shape: (usize, usize, usize), image_height: usize, resident: u64) -> Plan {
        let peak = |storage, rows, above| program::peak(graph, shape, storage, rows, above);
        // Untiled, everything lives on the heap, which reuses freed blocks.
        let whole = resident + peak(Storage::F32, Rows::Budget(u64::MAX), u64::MAX).together;
        let banded = |storage: Storage, rows: Rows, above: u64| {
            let peak = peak(storage, rows, above);
            let spill = (peak.disk > 0).then(|| Spill { dir: self.tmp_dir.clone(), above, disk: peak.disk });
            Plan::Banded { storage, rows, estimate: resident + peak.banded(), spill }
        };
        let budget = self.max_memory;
        // The widest bands (MIN_BAND_BYTES to MAX_BAND_BYTES of temporaries,
        // to the MiB) whose estimate fits the budget when activations over
        // `above` bytes spill; none when even the narrowest do not fit.
        let fits = |storage, above| {
            let fit = |band_mib: u64| resident + peak(storage, Rows::Budget(band_mib * MIB), above).banded() <= budget;
            let (mut lo, mut hi) = (MIN_BAND_BYTES / MIB, MAX_BAND_BYTES / MIB);
            if !fit(lo) {
                return None;
            }
            // The estimate only grows with the bands.
            while lo < hi {
                let mid = (lo + hi).div_ceil(2);
                if fit(mid) { lo = mid } else { hi = mid - 1 }
            }
            Some(Rows::Budget(lo * MIB))
        };
        // The fewest spilled: every size of activation, largest first, is
        // tried as the line above which they spill, until the estimate with
        // the smallest bands (and the attention's whole arrays) fits; when
        // none does, all of them spill.
        let spilled = || {
            let mut sizes = program::stored_bytes(graph, shape, Storage::F16);
            sizes.push(0);
            sizes.sort_unstable_by(|a, b| b.cmp(a));
            sizes.dedup();
            let fitting = sizes.into_iter().find_map(|above| Some((above, fits(Storage::F16, above)?)));
            fitting.unwrap_or((0, Rows::Budget(MIN_BAND_BYTES)))
        };
        let all = u64::MAX;
        match self.tile {
            Tile::Off => Plan::Whole { estimate: whole },
            Tile::Auto if whole <= budget => Plan::Whole { estimate: whole },
            Tile::Auto => match (fits(Storage::F32, all), fits(Storage::F16, all)) {
                (Some(rows), _) => banded(Storage::F32, rows, all),
                (None, Some(rows)) => banded(Storage::F16, rows, all),
                (None, None) => {
                    let (above, rows) = spilled();
                    banded(Storage::F16, rows, above)
                }
            },
            Tile::Rows(rows) => {
                let rows = Rows::Image { rows, image_height };
                match (fits(Storage::F32, all), fits(Storage::F16, all)) {
                    (Some(_), _) => banded(Storage::F32, rows, all),
                    (None, Some(_)) => banded(Storage::F16, rows, all),
                    (None, None) => banded(Storage::F16, rows, spilled().0),
                }
            }
        }
    }
}

/// Runs `graph` on `x` (`[B, C, H, W]`) as `plan` says: the plain forward
/// pass ([`Graph::forward`]) or, for one input (`B = 1`), in bands. A plan
/// that spills is refused before it starts when its folder has too little
/// free space.
pub fn run(graph: &Graph, x: Tensor<4>, plan: &Plan) -> Result<Tensor<4>, TilingError> {
    match plan {
        Plan::Whole { .. } => Ok(graph.forward(x)),
        Plan::Banded { storage, rows, spill, .. } => {
            if let Some(spill) = spill {
                spill.check_space()?;
            }
            let device: Device = x.device();
            let out = program::run(graph, x, *storage, *rows, spill.as_ref(), &device)?;
            let shape = [1, out.channels, out.height, out.width];
            let values = out.into_values().map_err(|cause| match spill {
                Some(spill) => TilingError::Disk { dir: spill.dir.clone(), cause },
                None => TilingError::Memory(cause),
            })?;
            Ok(kernels::tensor(values, shape, &device))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tile_and_sizes() {
        assert_eq!("auto".parse::<Tile>(), Ok(Tile::Auto));
        assert_eq!("off".parse::<Tile>(), Ok(Tile::Off));
        assert_eq!("256".parse::<Tile>(), Ok(Tile::Rows(256)));
        assert!("4".parse::<Tile>().is_err());
        assert!("big".parse::<Tile>().is_err());
        assert_eq!(parse_size("1.5G"), Ok(3 * GIB / 2));
        assert_eq!(parse_size("800M"), Ok(800 * MIB));
        assert_eq!(parse_size("800MiB"), Ok(800 * MIB));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("1X").is_err());
        assert!(parse_size("").is_err());
        // Less than a byte is refused like 0, not truncated to it.
        assert!(parse_size("0.5").unwrap_err().contains("less than one byte"));
        assert!(parse_size("0").is_err());
        assert_eq!(parse_size("0.5K"), Ok(512));
    }

    #[test]
    fn sizes_in_the_unit_they_fill() {
        assert_eq!(size(0), "0 bytes");
        assert_eq!(size(1023), "1023 bytes");
        assert_eq!(size(64 * KIB), "64.0 KiB");
        assert_eq!(size(5 * MIB / 2), "2.5 MiB");
        assert_eq!(size(3 * GIB / 2), "1.50 GiB");
    }

    #[test]
    fn band_rows_scale_with_resolution() {
        let rows = Rows::Image { rows: 256, image_height: 1000 };
        // 1000 image rows in bands of 256: 32 rows at the 125-row latent scale.
        assert_eq!(rows.for_pass(1, 125), 32);
        assert_eq!(rows.for_pass(1, 1000), 256);
        assert_eq!(Rows::Budget(3000).for_pass(30, 1000), 100);
        assert_eq!(Rows::Budget(0).for_pass(30, 1000), MIN_BAND_ROWS);
        assert_eq!(Rows::Budget(0).for_pass(30, 10), 10);
    }
}
