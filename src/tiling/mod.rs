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
//! The mid-block attention runs over all positions at once, at the lowest
//! resolution, as untiled.

mod program;
mod store;

use std::fmt;
use std::str::FromStr;

use burn::tensor::{Device, Tensor};

use crate::kernels;
pub use program::{Peak, Program};
pub use store::{Activation, Storage};

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
#[derive(Debug, Clone, Copy)]
pub struct TileOptions {
    pub tile: Tile,
    /// Peak resident memory to stay under, in bytes (the whole process).
    pub max_memory: u64,
}

impl Default for TileOptions {
    fn default() -> Self {
        Self { tile: Tile::Auto, max_memory: default_max_memory() }
    }
}

const GIB: u64 = 1 << 30;

/// Bytes in GiB, for messages.
pub fn gib(bytes: u64) -> f64 {
    bytes as f64 / GIB as f64
}
const MIB: u64 = 1 << 20;

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
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Plan {
    /// The plain forward pass.
    Whole { estimate: u64 },
    /// Passes over whole activations, in bands.
    Banded { storage: Storage, rows: Rows, estimate: u64 },
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
        // Even, so that every band starts on an even row: the 3x3
        // convolutions compute 2-row tiles (Winograd F(2x2, 3x3)), and a band
        // whose tiles line up with the whole image's gives identical values.
        rows.max(1).next_multiple_of(2).min(h_out.max(1))
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Plan::Whole { estimate } => write!(f, "untiled, estimated peak {:.2} GiB", gib(estimate)),
            Plan::Banded { storage, rows, estimate } => {
                let storage = match storage {
                    Storage::F32 => "f32",
                    Storage::F16 => "f16",
                };
                match rows {
                    Rows::Image { rows, .. } => write!(f, "bands of {rows} image rows")?,
                    Rows::Budget(bytes) => write!(f, "bands of {} MiB", bytes / MIB)?,
                }
                write!(f, ", activations stored in {storage}, estimated peak {:.2} GiB", gib(estimate))
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
    /// Chooses how to run `program` on an input of `shape` (`[C, H, W]`) whose
    /// image has `image_height` rows, given `resident` bytes already in use
    /// (weights and the process itself).
    pub fn plan(&self, program: &Program, shape: (usize, usize, usize), image_height: usize, resident: u64) -> Plan {
        // Untiled, everything lives on the heap, which reuses freed blocks.
        let whole = resident + program.peak(shape, Storage::F32, Rows::Budget(u64::MAX)).together;
        let banded = |storage: Storage, rows: Rows| Plan::Banded {
            storage,
            rows,
            estimate: resident + program.peak(shape, storage, rows).banded(),
        };
        let budget = self.max_memory;
        let fits = |storage| {
            let stored = resident + program.peak(shape, storage, Rows::Budget(0)).stored;
            (stored + MIN_BAND_BYTES <= budget)
                .then(|| Rows::Budget((budget - stored).clamp(MIN_BAND_BYTES, MAX_BAND_BYTES)))
        };
        match self.tile {
            Tile::Off => Plan::Whole { estimate: whole },
            Tile::Auto if whole <= budget => Plan::Whole { estimate: whole },
            Tile::Auto => match (fits(Storage::F32), fits(Storage::F16)) {
                (Some(rows), _) => banded(Storage::F32, rows),
                (None, Some(rows)) => banded(Storage::F16, rows),
                (None, None) => banded(Storage::F16, Rows::Budget(MIN_BAND_BYTES)),
            },
            Tile::Rows(rows) => {
                let rows = Rows::Image { rows, image_height };
                let storage = if fits(Storage::F32).is_some() { Storage::F32 } else { Storage::F16 };
                banded(storage, rows)
            }
        }
    }
}

/// Runs `program` on `x` (`[1, C, H, W]`) as `plan` says; `whole` is the
/// plain forward pass.
pub fn run(program: &Program, x: Tensor<4>, plan: Plan, whole: impl FnOnce(Tensor<4>) -> Tensor<4>) -> Tensor<4> {
    match plan {
        Plan::Whole { .. } => whole(x),
        Plan::Banded { storage, rows, .. } => {
            let device: Device = x.device();
            let out = program.run(program::activation(x), storage, rows, &device);
            let shape = [1, out.channels, out.height, out.width];
            kernels::tensor(out.into_values(), shape, &device)
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
