//! Op-level timing of the decoder's 3x3 convolution shapes: this crate's
//! Winograd kernel (F(4x4, 3x3) in f32) against its direct one-GEMM-per-tap kernel
//! (and burn-flex's conv2d with `--flex`, and Winograd with bf16 products
//! with `--bf16`), same process, same inputs. `--gemm`: the bf16 product
//! (`kernels::bf16`) against gemm's f32 one on the shapes the model gives them.
//! `--rates`: how many `vdpbf16ps` and `vfmadd231ps` one core issues per second.
//! `--winograd`: only the f32 Winograd kernel, on the encoder's and decoder's
//! shapes, fastest of 5 calls each (for before/after comparisons).
//! With `--attention`, the mid block's attention kernel (`c = 512`) at growing
//! numbers of positions instead: time, GFLOP/s and the heap it allocates.
//!
//!     cargo run --release --example ops [-- --flex] [-- --bf16] [-- --size 1024] [-- --gemm] [-- --rates]
//!     cargo run --release --example ops -- --winograd [--size 1024]
//!     cargo run --release --example ops -- --attention [4096 16384 65536]
#![allow(clippy::print_stdout, reason = "the table on stdout is the program's output")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor, TensorData};
use vae::kernels::Arithmetic;
use vae::kernels::attention;
use vae::kernels::bf16::{self, Matrix, PackedA};
use vae::kernels::conv::{self, ConvWeights, Geometry};

/// The system allocator, counting the bytes live and their high-water mark.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// This process's user + system CPU seconds (Linux; 0 elsewhere), so that
/// a benchmark on a shared machine can report its rate per CPU-second.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which may hold spaces) in parentheses.
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0 // utime, stime in clock ticks (USER_HZ = 100)
}

fn time<T>(f: impl FnMut() -> T) -> f64 {
    time_runs(f, 3)
}

/// Mean seconds of `runs` calls after one warm-up call (none when `runs` is 1).
fn time_runs<T>(mut f: impl FnMut() -> T, runs: usize) -> f64 {
    if runs > 1 {
        f();
    }
    let start = Instant::now();
    for _ in 0..runs {
        std::hint::black_box(f());
    }
    start.elapsed().as_secs_f64() / runs as f64
}

/// `attention::attention` on random `[n, 512]` inputs for each `n`: time,
/// GFLOP/s (the two products, `4 n^2 c`), and the heap allocated during the
/// call beyond its inputs (the output included).
fn bench_attention(sizes: &[usize]) {
    let c = 512;
    println!(
        "| positions n | ms | GFLOP/s | CPU s per call | GFLOP per CPU-s | heap during the call (MiB) | output (MiB) |"
    );
    println!("|---|---|---|---|---|---|---|");
    // The rate to compare with: one GEMM of the scores' shape, [4096, c] x [c, 4096].
    let m = 4096;
    let a: Vec<f32> = (0..m * c).map(|i| (i % 97) as f32 / 97.0).collect();
    let mut dst = vec![0.0f32; m * m];
    let cpu = cpu_seconds();
    let t = time(|| {
        // SAFETY: a is [m, c], read as [m, c] and transposed as [c, m]; dst is [m, m].
        unsafe {
            gemm::gemm(
                m,
                m,
                c,
                dst.as_mut_ptr(),
                1,
                m as isize,
                false,
                a.as_ptr(),
                1,
                c as isize,
                a.as_ptr(),
                c as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(rayon::current_num_threads()),
            )
        }
    });
    let cpu = (cpu_seconds() - cpu) / 4.0;
    let gflop = 2.0 * (m * m * c) as f64 / 1e9;
    println!(
        "| GEMM [{m}, {c}] x [{c}, {m}] | {:.0} | {:.0} | {cpu:.2} | {:.0} | - | - |",
        t * 1e3,
        gflop / t,
        gflop / cpu
    );
    for &n in sizes {
        let val = |i: usize, salt: usize| ((i * 7919 + salt * 104_729) % 1000) as f32 / 500.0 - 1.0;
        let [q, k, v] = [1, 2, 3].map(|salt| (0..n * c).map(|i| val(i, salt)).collect::<Vec<f32>>());
        let scale = 1.0 / (c as f32).sqrt();
        let runs = if n <= 4096 { 3 } else { 1 };
        let before = LIVE.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        let cpu = cpu_seconds();
        let t = time_runs(|| attention::attention(&q, &k, &v, n, c, scale), runs);
        let cpu = (cpu_seconds() - cpu) / (runs + usize::from(runs > 1)) as f64;
        let heap = (PEAK.load(Ordering::Relaxed) - before) as f64 / (1 << 20) as f64;
        let gflop = 4.0 * (n * n * c) as f64 / 1e9;
        let output = (n * c * 4) as f64 / (1 << 20) as f64;
        println!(
            "| {n} | {:.0} | {:.0} | {cpu:.2} | {:.0} | {heap:.1} | {output:.1} |",
            t * 1e3,
            gflop / t,
            gflop / cpu
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--attention") {
        let sizes: Vec<usize> = args[i + 1..].iter().map_while(|a| a.parse().ok()).collect();
        bench_attention(if sizes.is_empty() { &[4096, 16384, 65536] } else { &sizes });
        return;
    }
    let with_flex = args.iter().any(|a| a == "--flex");
    let with_bf16 = args.iter().any(|a| a == "--bf16");
    if args.iter().any(|a| a == "--gemm") {
        return gemms();
    }
    #[cfg(target_arch = "x86_64")]
    if args.iter().any(|a| a == "--rates") {
        return rates::print();
    }
    let size: usize =
        args.iter().position(|a| a == "--size").and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(512);
    if args.iter().any(|a| a == "--winograd") {
        return winograd(size);
    }
    let device = Device::flex();
    // (c_in, c_out, input side, upsampled): the 3x3 convolutions of the SD
    // decoder for a `size` x `size` image, then the encoder's first and last.
    let s = size / 8;
    let shapes = [
        (4, 512, s, false),
        (512, 512, s, false),
        (512, 512, s, true),
        (512, 512, 2 * s, false),
        (512, 512, 2 * s, true),
        (512, 512, 4 * s, false),
        (512, 256, 4 * s, false),
        (256, 256, 4 * s, false),
        (256, 256, 4 * s, true),
        (256, 256, 8 * s, false),
        (256, 128, 8 * s, false),
        (128, 128, 8 * s, false),
        (128, 3, 8 * s, false),
        (3, 128, 8 * s, false),
        (512, 8, s, false),
    ];
    println!(
        "| conv ci->co @ HxW | direct ms | winograd ms | direct GFLOP/s | winograd (direct-equivalent) GFLOP/s | speed-up | max rel. diff | flex ms | winograd bf16 ms | bf16 speed-up | bf16 max rel. diff |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (ci, co, n, upsampled) in shapes {
        let (x, w, b) = conv_inputs(ci, co, n);
        let g = Geometry::SAME_3X3;
        let up = if upsampled { 2 } else { 1 };
        let direct = ConvWeights::direct(&w, &b, (co, ci, 3), g);
        let fast = ConvWeights::new(&w, &b, (co, ci, 3), g, Arithmetic::F32);
        let t_direct = time(|| conv::conv2d_upsampled(&x, 1, (n, n), up, &direct));
        let t_fast = time(|| conv::conv2d_upsampled(&x, 1, (n, n), up, &fast));
        let (a, ..) = conv::conv2d_upsampled(&x, 1, (n, n), up, &direct);
        let (f, ..) = conv::conv2d_upsampled(&x, 1, (n, n), up, &fast);
        let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let diff = a.iter().zip(&f).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max) / scale;
        let flex = if with_flex && !upsampled {
            let xt = Tensor::<4>::from_data(TensorData::new(x.clone(), [1, ci, n, n]), &device);
            let wt = Tensor::<4>::from_data(TensorData::new(w.clone(), [co, ci, 3, 3]), &device);
            let bt = Tensor::<1>::from_data(TensorData::new(b.clone(), [co]), &device);
            let opts = ConvOptions { stride: [1, 1], padding: [(1, 1), (1, 1)], dilation: [1, 1], groups: 1 };
            format!("{:.0}", 1e3 * time(|| conv2d(xt.clone(), wt.clone(), Some(bt.clone()), opts.clone()).into_data()))
        } else {
            "-".to_string()
        };
        let bf16 = if with_bf16 {
            let wts = ConvWeights::new(&w, &b, (co, ci, 3), g, Arithmetic::Bf16);
            let t = time(|| conv::conv2d_upsampled(&x, 1, (n, n), up, &wts));
            let (r, ..) = conv::conv2d_upsampled(&x, 1, (n, n), up, &wts);
            let diff = a.iter().zip(&r).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max) / scale;
            format!("{:.0} | {:.2}x | {diff:.1e}", t * 1e3, t_fast / t)
        } else {
            "- | - | -".to_string()
        };
        let out = n * up;
        let gflop = 2.0 * (ci * co * 9 * out * out) as f64 / 1e9;
        let name = conv_name(ci, co, n, upsampled);
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2}x | {diff:.1e} | {flex} | {bf16} |",
            t_direct * 1e3,
            t_fast * 1e3,
            gflop / t_direct,
            gflop / t_fast,
            t_direct / t_fast
        );
    }
}

/// A 3x3 convolution's input `[ci, n, n]`, weight `[co, ci, 3, 3]` and bias:
/// fixed values in the ranges of a trained model's.
fn conv_inputs(ci: usize, co: usize, n: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let x = (0..ci * n * n).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    let w = (0..co * ci * 9).map(|i| ((i * 104729) % 1000) as f32 / 30000.0 - 0.016).collect();
    (x, w, vec![0.01f32; co])
}

/// A table row's name for a convolution on an `n` x `n` input.
fn conv_name(ci: usize, co: usize, n: usize, upsampled: bool) -> String {
    if upsampled { format!("{ci}->{co} @ {n}->{} (up x2)", 2 * n) } else { format!("{ci}->{co} @ {n}") }
}

/// The f32 Winograd kernel alone on the 3x3 shapes of SD's encoder and
/// decoder for a `size` x `size` image: fastest of 5 calls, and its rate in
/// direct-convolution FLOPs.
fn winograd(size: usize) {
    let s = size / 8;
    // (c_in, c_out, input side, upsampled)
    let shapes = [
        (128, 128, 8 * s, false),
        (256, 256, 4 * s, false),
        (512, 512, 2 * s, false),
        (512, 512, s, false),
        (512, 512, s, true),
        (512, 512, 2 * s, true),
        (256, 256, 4 * s, true),
        (256, 128, 8 * s, false),
    ];
    println!("| conv ci->co @ HxW | winograd ms (min of 5) | direct-equivalent GFLOP/s |");
    println!("|---|---|---|");
    for (ci, co, n, upsampled) in shapes {
        let (x, w, b) = conv_inputs(ci, co, n);
        let up = if upsampled { 2 } else { 1 };
        let fast = ConvWeights::new(&w, &b, (co, ci, 3), Geometry::SAME_3X3, Arithmetic::F32);
        let t =
            (0..5).map(|_| time_runs(|| conv::conv2d_upsampled(&x, 1, (n, n), up, &fast), 1)).fold(f64::MAX, f64::min);
        let out = n * up;
        let gflop = 2.0 * (ci * co * 9 * out * out) as f64 / 1e9;
        let name = conv_name(ci, co, n, upsampled);
        println!("| {name} | {:.0} | {:.0} |", t * 1e3, gflop / t);
    }
}

/// `C = A B` on one thread (Winograd's per-chunk products, `m = co`, `k = ci`,
/// `n` = tiles per chunk) and on all (a 1x1 convolution's, an attention's),
/// bf16 against gemm's f32, packing of `B` included for bf16 (gemm packs too).
fn gemms() {
    let threads = rayon::current_num_threads();
    println!("| m x k x n | threads | f32 (gemm) GFLOP/s | bf16 GFLOP/s | speed-up |");
    println!("|---|---|---|---|---|");
    let shapes = [
        (512, 512, 256, false),
        (256, 256, 512, false),
        (128, 128, 1024, false),
        (512, 512, 4096, true),
        (128, 256, 65536, true),
        (1024, 512, 4096, true),
    ];
    for (m, k, n, parallel) in shapes {
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5).collect();
        let mut c = vec![0.0f32; m * n];
        let par = if parallel { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
        let t32 = time(|| {
            // SAFETY: row-major a [m, k], b [k, n], c [m, n].
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    1,
                    k as isize,
                    b.as_ptr(),
                    1,
                    n as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    par,
                );
            }
        });
        let packed = PackedA::from_rows(&a, m, k);
        let mut c16 = vec![0.0f32; m * n];
        let t16 = time(|| bf16::matmul(&mut c16, n, &packed, Matrix::rows(&b, (k, n), n), false, parallel));
        let flop = 2.0 * (m * k * n) as f64 / 1e9;
        let used = if parallel { threads } else { 1 };
        println!("| {m} x {k} x {n} | {used} | {:.0} | {:.0} | {:.2}x |", flop / t32, flop / t16, t32 / t16);
    }
}

/// Instruction rates on one core: `ACC` independent accumulators, so that
/// latency does not limit them.
#[cfg(target_arch = "x86_64")]
mod rates {
    use std::arch::x86_64::*;
    use std::time::Instant;

    const ACC: usize = 24;

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn dpbf16(iters: usize) -> f32 {
        let mut acc = [_mm512_setzero_ps(); ACC];
        // SAFETY: 16 equal u32 are 32 bf16 (1.0 and 0.5).
        let (a, b) = unsafe {
            (
                std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(0x3F80_3F80)),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(0x3F00_3F00)),
            )
        };
        // Opaque once, before the loop: a `black_box` per instruction would
        // store and reload the operand each time and time that instead.
        let (a, b) = std::hint::black_box((a, b));
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm512_dpbf16_ps(*x, a, b);
            }
        }
        acc.iter().map(|&x| _mm512_reduce_add_ps(x)).sum()
    }

    #[target_feature(enable = "avx512f")]
    fn fma(iters: usize) -> f32 {
        let mut acc = [_mm512_setzero_ps(); ACC];
        let (a, b) = (_mm512_set1_ps(1.0), _mm512_set1_ps(0.5));
        let (a, b) = std::hint::black_box((a, b));
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(a, b, *x);
            }
        }
        acc.iter().map(|&x| _mm512_reduce_add_ps(x)).sum()
    }

    pub fn print() {
        if !(is_x86_feature_detected!("avx512bf16") && is_x86_feature_detected!("avx512bw")) {
            println!("this CPU lacks AVX512_BF16");
            return;
        }
        let iters = 20_000_000;
        for _ in 0..3 {
            let start = Instant::now();
            // SAFETY: the features were detected above.
            std::hint::black_box(unsafe { dpbf16(iters) });
            let dp = (iters * ACC) as f64 / start.elapsed().as_secs_f64() / 1e9;
            let start = Instant::now();
            // SAFETY: as above (AVX512F comes with AVX512_BF16).
            std::hint::black_box(unsafe { fma(iters) });
            let fma = (iters * ACC) as f64 / start.elapsed().as_secs_f64() / 1e9;
            println!(
                "vdpbf16ps {dp:.2} G/s ({:.0} GFLOP/s), vfmadd231ps {fma:.2} G/s ({:.0} GFLOP/s)",
                dp * 64.0,
                fma * 32.0
            );
        }
    }
}
