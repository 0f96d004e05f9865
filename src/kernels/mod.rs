//! CPU kernels for the two operations that dominate the VAE: 2D convolution
//! (about 98% of the FLOPs) and GroupNorm + SiLU (most of the rest of the
//! time). The model calls them through [`crate::model`]'s layers when its
//! tensors live on the CPU device; other devices use burn's own operations.
//! A model loaded in bf16 multiplies in bf16 ([`bf16`], [`Arithmetic`]).

pub mod attention;
pub mod bf16;
pub mod conv;
pub mod f16;
pub mod isa;
pub mod norm;
pub mod winograd;

use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::{Device, FloatDType, Tensor, TensorData};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// What the kernels' matrix products multiply: f32, or bf16 with f32 sums
/// ([`bf16`]: `--precision bf16`). Everything else (norm statistics, the
/// softmax, Winograd's transforms, activations between layers) stays f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arithmetic {
    F32,
    Bf16,
}

/// Turns the kernels off (or on again) for the whole process, so that burn's
/// own operations (the GPU path) can be checked on the CPU. Takes effect for
/// models loaded afterwards.
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Whether tensors on `device` use these kernels (the burn-flex CPU device).
pub fn applies_to(device: &Device) -> bool {
    ENABLED.load(Ordering::Relaxed) && *device == Device::flex()
}

/// `dst = alpha * dst + beta * lhs rhs`, `[m, k] x [k, n]`, on this thread
/// (the kernels parallelise over blocks themselves): `gemm::gemm` without
/// conjugation. Each operand is `(pointer, column stride, row stride)`, in
/// elements; `read_dst` false ignores `dst`'s values (and `alpha`).
///
/// # Safety
/// As `gemm::gemm`: every element the shapes and strides reach is in bounds,
/// and `dst` overlaps neither operand.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    (dst, dst_cs, dst_rs): (*mut f32, isize, isize),
    read_dst: bool,
    (lhs, lhs_cs, lhs_rs): (*const f32, isize, isize),
    (rhs, rhs_cs, rhs_rs): (*const f32, isize, isize),
    alpha: f32,
    beta: f32,
) {
    // SAFETY: the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs,
            dst_rs,
            read_dst,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            alpha,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// A CPU tensor's values, without a copy when the tensor is not shared.
pub fn values<const D: usize>(x: Tensor<D>) -> Vec<f32> {
    // A no-op for f32; reduced-precision GPU parameters read back as f32.
    let x = x.cast(FloatDType::F32);
    x.into_data().try_into_vec::<f32>().expect("cast to f32 above")
}

/// Values back into a tensor on `device`.
pub fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Seeded values in `[-0.5, 0.5)` (xorshift), for the kernels' tests.
#[cfg(test)]
pub(crate) fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}
