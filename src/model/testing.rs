//! What the model's unit tests share (and the architecture inference's):
//! seeded parameters of any name, random activations, banded runs of a
//! graph, and the diffusers key lists of `*_keys.txt`.

use std::collections::BTreeMap;

use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::Params;
use super::graph::Graph;
use crate::tiling::{self, Plan, Rows, Storage};

/// Seeded random parameters of any name, recording what was asked.
pub(crate) struct RandomParams {
    rng: ChaCha8Rng,
    /// Name to shape, of every tensor asked for.
    pub used: BTreeMap<String, Vec<usize>>,
    /// The same, of every tensor declared unused.
    pub unused: BTreeMap<String, Vec<usize>>,
    /// Hands out empty stand-ins, as a loader does for a part it skips.
    empty: bool,
}

impl RandomParams {
    pub fn new(seed: u64) -> Self {
        Self { rng: ChaCha8Rng::seed_from_u64(seed), used: BTreeMap::new(), unused: BTreeMap::new(), empty: false }
    }

    /// Empty stand-ins of every tensor: what a loader hands out for a
    /// part it skips (loading them must not panic).
    pub fn stand_ins() -> Self {
        Self { empty: true, ..Self::new(0) }
    }
}

impl Params for RandomParams {
    fn tensor<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> Tensor<D> {
        assert!(self.used.insert(name.to_owned(), shape.to_vec()).is_none(), "{name} asked for twice");
        if self.empty {
            return Tensor::empty([0; D], &Device::flex());
        }
        let n = shape.iter().product();
        let values: Vec<f32> = if name.ends_with(".gamma") {
            (0..n).map(|_| 1.0 + self.rng.random_range(-0.2..0.2)).collect()
        } else if name.ends_with(".bias") {
            (0..n).map(|_| self.rng.random_range(-0.1..0.1)).collect()
        } else {
            // About unit gain over the inputs one frame sees: one temporal
            // tap of a 3D kernel.
            let taps = if D == 5 { shape[2] } else { 1 };
            let fan_in = shape[1..].iter().product::<usize>() / taps;
            let scale = (3.0 / fan_in as f32).sqrt();
            (0..n).map(|_| self.rng.random_range(-scale..scale)).collect()
        };
        Tensor::from_data(TensorData::new(values, shape), &Device::flex())
    }

    fn unused(&mut self, name: &str, shape: &[usize]) {
        assert!(self.unused.insert(name.to_owned(), shape.to_vec()).is_none(), "{name} declared twice");
    }
}

/// Seeded values in [-1, 1) of `shape`.
pub(crate) fn random_tensor(shape: [usize; 4], seed: u64) -> Tensor<4> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let values: Vec<f32> = (0..shape.iter().product()).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_data(TensorData::new(values, shape), &Device::flex())
}

pub(crate) fn values(x: Tensor<4>) -> Vec<f32> {
    x.into_data().try_into_vec::<f32>().expect("f32 activations")
}

/// `graph` on `x` in f32 bands of `rows` image rows (of `image_height`), in memory.
pub(crate) fn banded(graph: &Graph, x: Tensor<4>, rows: usize, image_height: usize) -> Vec<f32> {
    let plan =
        Plan::Banded { storage: Storage::F32, rows: Rows::Image { rows, image_height }, estimate: 0, spill: None };
    values(tiling::run(graph, x, &plan).unwrap())
}

/// How many values of `a` and `b` differ in any bit.
pub(crate) fn bits_differ(a: &[f32], b: &[f32]) -> usize {
    a.iter().zip(b).filter(|(a, b)| a.to_bits() != b.to_bits()).count()
}

/// Name to shape, of a key list (`wan_keys.txt`: `name d0,d1,...` lines,
/// `#` comments).
pub(crate) fn key_shapes(text: &str) -> BTreeMap<String, Vec<usize>> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (name, shape) = l.split_once(' ').expect("name and shape");
            (name.to_owned(), shape.split(',').map(|d| d.parse().expect("a dimension")).collect())
        })
        .collect()
}
