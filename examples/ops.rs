//! Op-level timing of the decoder's convolution shapes and GroupNorm+SiLU:
//! burn-flex against this crate's CPU kernels, same process, same inputs.
//!
//!     cargo run --release --example ops
use std::time::Instant;

use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor, TensorData};
use vae::kernels::conv::{self, ConvWeights, Geometry};

fn time<T>(f: impl Fn() -> T) -> f64 {
    f(); // warm-up
    let runs = 3;
    let start = Instant::now();
    for _ in 0..runs {
        std::hint::black_box(f());
    }
    start.elapsed().as_secs_f64() / runs as f64
}

fn main() {
    let device = Device::flex();
    // (c_in, c_out, size): the 3x3 convolutions of the SD decoder at 512x512.
    let shapes = [
        (512, 512, 64),
        (512, 512, 128),
        (512, 512, 256),
        (512, 256, 256),
        (256, 256, 256),
        (256, 256, 512),
        (256, 128, 512),
        (128, 128, 512),
        (128, 3, 512),
    ];
    println!("| conv ci->co @ HxW | flex ms | kernel ms | flex GFLOP/s | kernel GFLOP/s | speed-up |");
    println!("|---|---|---|---|---|---|");
    for (ci, co, n) in shapes {
        let x: Vec<f32> = (0..ci * n * n).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let w: Vec<f32> = (0..co * ci * 9).map(|i| ((i * 104729) % 1000) as f32 / 30000.0 - 0.016).collect();
        let b = vec![0.01f32; co];
        let xt = Tensor::<4>::from_data(TensorData::new(x.clone(), [1, ci, n, n]), &device);
        let wt = Tensor::<4>::from_data(TensorData::new(w.clone(), [co, ci, 3, 3]), &device);
        let bt = Tensor::<1>::from_data(TensorData::new(b.clone(), [co]), &device);
        let opts = ConvOptions { stride: [1, 1], padding: [(1, 1), (1, 1)], dilation: [1, 1], groups: 1 };
        let flex = time(|| conv2d(xt.clone(), wt.clone(), Some(bt.clone()), opts.clone()).into_data());
        let weights = ConvWeights::new(&w, &b, co, ci, 3);
        let g = Geometry { stride: 1, pad_h: (1, 1), pad_w: (1, 1) };
        let ours = time(|| conv::conv2d(&x, 1, n, n, &weights, g));
        let gflop = 2.0 * (ci * co * 9 * n * n) as f64 / 1e9;
        println!(
            "| {ci}->{co} @ {n} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2}x |",
            flex * 1e3,
            ours * 1e3,
            gflop / flex,
            gflop / ours,
            flex / ours
        );
    }
}
