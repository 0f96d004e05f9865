//! Batching: inputs of one size computed together, in one pass of the model.
//!
//! A GPU runs a batch of eight 512x512 images in much less than eight times
//! one image's time (its kernels fill the device only with enough work); a
//! CPU does not (each convolution already uses every core), and a batch only
//! multiplies its memory. So `--batch-size auto` batches on GPUs only.

use std::str::FromStr;

/// `--batch-size`: how many inputs one pass of the model may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSize {
    /// On a GPU up to [`AUTO_GPU_IMAGES`] images, and at most
    /// [`AUTO_GPU_PIXELS`] pixels in all; on the CPU one.
    Auto,
    /// Up to this many (at least 1).
    Images(usize),
}

/// Images per pass with `--batch-size auto` on a GPU (PyTorch's own
/// benchmarks of the SD VAE use batches of 8).
pub const AUTO_GPU_IMAGES: usize = 8;
/// Pixels per pass with `--batch-size auto` on a GPU: sixteen 512x512
/// images, four 1024x1024. The decoder's activations take about 2.5 KiB per
/// pixel in f32, so a pass stays near 10 GiB of GPU memory.
pub const AUTO_GPU_PIXELS: u64 = 1 << 22;

impl FromStr for BatchSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(BatchSize::Auto),
            _ => match s.parse::<usize>() {
                Ok(n) if n >= 1 => Ok(BatchSize::Images(n)),
                _ => Err(format!("expected auto or a number of images (at least 1), got '{s}'")),
            },
        }
    }
}

impl BatchSize {
    /// How many inputs to read ahead and group by size.
    pub fn chunk(self, gpu: bool) -> usize {
        match self {
            BatchSize::Auto if gpu => AUTO_GPU_IMAGES,
            BatchSize::Auto => 1,
            BatchSize::Images(n) => n.max(1),
        }
    }

    /// How many inputs of `pixels` output pixels each one pass may take.
    pub fn per_pass(self, gpu: bool, pixels: u64) -> usize {
        match self {
            BatchSize::Auto if gpu => {
                let fit = usize::try_from(AUTO_GPU_PIXELS / pixels.max(1)).unwrap_or(usize::MAX);
                fit.clamp(1, AUTO_GPU_IMAGES)
            }
            other => other.chunk(gpu),
        }
    }
}

/// Splits `items` into passes: items of equal `key` (their size) together,
/// at most `limit(item)` per pass, each pass in input order and the passes
/// in the order of their first item. Returns indices into `items`.
pub fn passes<T, K: PartialEq>(items: &[T], key: impl Fn(&T) -> K, limit: impl Fn(&T) -> usize) -> Vec<Vec<usize>> {
    let mut groups: Vec<(K, Vec<usize>)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let k = key(item);
        match groups.iter_mut().find(|(g, _)| *g == k) {
            Some((_, members)) => members.push(i),
            None => groups.push((k, vec![i])),
        }
    }
    let mut passes = Vec::new();
    for (_, members) in groups {
        let limit = limit(&items[members[0]]).max(1);
        passes.extend(members.chunks(limit).map(<[usize]>::to_vec));
    }
    passes.sort_by_key(|pass| pass[0]);
    passes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_auto_and_counts() {
        assert_eq!("auto".parse(), Ok(BatchSize::Auto));
        assert_eq!("4".parse(), Ok(BatchSize::Images(4)));
        assert!("0".parse::<BatchSize>().is_err());
        assert!("x".parse::<BatchSize>().is_err());
    }

    #[test]
    fn auto_batches_on_gpus_only_and_within_the_pixel_budget() {
        assert_eq!(BatchSize::Auto.chunk(false), 1);
        assert_eq!(BatchSize::Auto.per_pass(false, 512 * 512), 1);
        assert_eq!(BatchSize::Auto.per_pass(true, 512 * 512), 8);
        assert_eq!(BatchSize::Auto.per_pass(true, 1024 * 1024), 4);
        assert_eq!(BatchSize::Auto.per_pass(true, 4096 * 4096), 1);
        assert_eq!(BatchSize::Images(3).per_pass(false, 4096 * 4096), 3);
    }

    #[test]
    fn passes_group_by_size_in_order_and_split_at_the_limit() {
        let sizes = [64, 32, 64, 64, 32, 16, 64];
        let passes = passes(&sizes, |s| *s, |s| if *s == 64 { 2 } else { 8 });
        assert_eq!(passes, vec![vec![0, 2], vec![1, 4], vec![3, 6], vec![5]]);
        let all: usize = passes.iter().map(Vec::len).sum();
        assert_eq!(all, sizes.len());
    }
}
