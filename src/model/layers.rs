//! The primitive layers of the VAEs, holding plain tensors loaded from a
//! weights file. Each mirrors the PyTorch module diffusers uses, with the same
//! parameter names (`weight`, `bias`, `gamma`).

use burn::tensor::{DType, FloatDType, Tensor};
use std::ops::Range;
use std::sync::Arc;

use crate::kernels::{self, Arithmetic, conv::ConvWeights, conv::Geometry, norm::GroupNormParams};
use burn::tensor::module::{conv2d, interpolate};
use burn::tensor::ops::{ConvOptions, InterpolateMode, InterpolateOptions};

use super::Params;

/// `torch.nn.Conv2d` with square kernels, stride and per-side padding.
#[derive(Debug, Clone)]
pub struct Conv2d {
    params: ConvParams,
    options: ConvOptions<2>,
}

/// A convolution's parameters, held once: as burn tensors, or laid out for
/// the CPU kernel when the model lives on the CPU.
#[derive(Debug, Clone)]
enum ConvParams {
    Burn(Box<(Tensor<4>, Tensor<1>)>),
    Cpu(Arc<ConvWeights>),
}

impl Conv2d {
    /// A `kernel`x`kernel` convolution with stride 1 and "same" padding.
    pub fn load(p: &mut impl Params, name: &str, c_in: usize, c_out: usize, kernel: usize) -> Self {
        let pad = kernel / 2;
        Self::load_with(p, name, c_in, c_out, kernel, 1, [(pad, pad), (pad, pad)])
    }

    /// Any stride, with `(begin, end)` padding per spatial dimension.
    pub fn load_with(
        p: &mut impl Params,
        name: &str,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: [(usize, usize); 2],
    ) -> Self {
        let weight = p.tensor(&format!("{name}.weight"), [c_out, c_in, kernel, kernel]);
        let bias = p.tensor(&format!("{name}.bias"), [c_out]);
        Self::from_tensors(weight, bias, c_in, c_out, kernel, stride, padding)
    }

    /// A diffusers `CausalConv3d` of a Wan / Qwen-Image VAE (weight
    /// `[c_out, c_in, kernel, kernel, kernel]`), applied to one frame: the
    /// frame is padded in front with `kernel - 1` zero frames, so only the
    /// last temporal tap touches it and the layer is the 2D convolution of
    /// that tap ("same" padding, stride 1).
    pub fn load_causal(p: &mut impl Params, name: &str, c_in: usize, c_out: usize, kernel: usize) -> Self {
        let shape = [c_out, c_in, kernel, kernel, kernel];
        let weight = p.tensor(&format!("{name}.weight"), shape);
        let bias = p.tensor(&format!("{name}.bias"), [c_out]);
        // Only a weight that loaded is cut (a loader's stand-in is empty),
        // into a tensor of its own: a view would keep every tap in memory.
        let (device, dtype) = (weight.device(), weight.dtype());
        let weight = if weight.dims() == shape {
            let tap = kernels::values(weight.narrow(2, kernel - 1, 1));
            kernels::tensor(tap, [c_out, c_in, kernel, kernel], &device).cast(dtype)
        } else {
            Tensor::empty([0; 4], (&device, dtype))
        };
        let pad = kernel / 2;
        Self::from_tensors(weight, bias, c_in, c_out, kernel, 1, [(pad, pad), (pad, pad)])
    }

    /// A Wan-family convolution: the causal 3D form ([`Conv2d::load_causal`])
    /// where `conv3d`, else the 2D form Qwen-Image 2.1 stores in its place
    /// (weight `[c_out, c_in, kernel, kernel]`, "same" padding).
    pub fn load_wan(p: &mut impl Params, name: &str, c_in: usize, c_out: usize, kernel: usize, conv3d: bool) -> Self {
        match conv3d {
            true => Self::load_causal(p, name, c_in, c_out, kernel),
            false => Self::load(p, name, c_in, c_out, kernel),
        }
    }

    /// [`Conv2d::load_with`] of a `bias=False` convolution (TAESD's
    /// stride-2 and upsampling convolutions): the file holds no `bias`, and
    /// the layer adds zeros.
    pub fn load_without_bias(
        p: &mut impl Params,
        name: &str,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: [(usize, usize); 2],
    ) -> Self {
        let weight = p.tensor(&format!("{name}.weight"), [c_out, c_in, kernel, kernel]);
        // Zeros only for a weight that loaded: `c_out` comes from a file.
        let loaded = weight.dims() == [c_out, c_in, kernel, kernel];
        let options = (&weight.device(), weight.dtype());
        let bias = if loaded { Tensor::zeros([c_out], options) } else { Tensor::empty([0], options) };
        Self::from_tensors(weight, bias, c_in, c_out, kernel, stride, padding)
    }

    /// From its tensors (`weight` `[c_out, c_in, kernel, kernel]`, `bias` `[c_out]`).
    pub(super) fn from_tensors(
        weight: Tensor<4>,
        bias: Tensor<1>,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: [(usize, usize); 2],
    ) -> Self {
        let loaded = weight.dims() == [c_out, c_in, kernel, kernel] && bias.dims() == [c_out];
        let params = if loaded && kernels::applies_to(&weight.device()) {
            let geometry = Geometry { stride, pad_h: padding[0], pad_w: padding[1] };
            // A model loaded in bf16 (`--precision bf16`) multiplies in bf16;
            // its activations stay f32.
            let arithmetic = match weight.dtype() {
                DType::BF16 => Arithmetic::Bf16,
                _ => Arithmetic::F32,
            };
            let (w, b) = (kernels::values(weight), kernels::values(bias));
            ConvParams::Cpu(Arc::new(ConvWeights::new(&w, &b, (c_out, c_in, kernel), geometry, arithmetic)))
        } else {
            ConvParams::Burn(Box::new((weight, bias)))
        };
        let options = ConvOptions { stride: [stride, stride], padding, dilation: [1, 1], groups: 1 };
        Self { params, options }
    }

    /// `[B, C_in, H, W] -> [B, C_out, H', W']`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match &self.params {
            ConvParams::Burn(params) => {
                let (weight, bias) = params.as_ref();
                conv2d(x, weight.clone(), Some(bias.clone()), self.options.clone())
            }
            ConvParams::Cpu(weights) => self.forward_cpu(x, 1, weights),
        }
    }

    /// The convolution of `x` upsampled `up` times by nearest neighbour:
    /// `[B, C_in, H, W] -> [B, C_out, up*H, up*W]` (stride 1). On the CPU the
    /// upsampling is fused into the kernel and never materialised.
    pub fn forward_upsampled(&self, x: Tensor<4>, up: usize) -> Tensor<4> {
        match &self.params {
            ConvParams::Cpu(weights) => self.forward_cpu(x, up, weights),
            ConvParams::Burn(_) => {
                let [_, _, h, w] = x.dims();
                let options = InterpolateOptions::new(InterpolateMode::Nearest).with_output_size([up * h, up * w]);
                self.forward(interpolate(x, options))
            }
        }
    }

    /// This convolution of inputs upsampled `up` times, ready to run on
    /// bands of them (`ConvBands`).
    pub fn prepare(&self, up: usize) -> ConvBands<'_> {
        let cpu = match &self.params {
            ConvParams::Cpu(weights) => Some(weights.prepare(up)),
            ConvParams::Burn(_) => None,
        };
        ConvBands { conv: self, up, cpu }
    }

    /// The most that [`Conv2d::prepare`]'s result holds after calls of up
    /// to `rows` output rows `w` wide on `threads` threads.
    pub fn prepared_bytes(&self, (rows, w): (usize, usize), threads: usize) -> u64 {
        match &self.params {
            ConvParams::Cpu(weights) => weights.prepared_bytes((rows, w), threads),
            ConvParams::Burn(_) => 0,
        }
    }

    /// Output channels.
    pub fn c_out(&self) -> usize {
        match &self.params {
            ConvParams::Burn(params) => params.0.dims()[0],
            ConvParams::Cpu(weights) => weights.c_out(),
        }
    }

    /// Rows of zero padding above the input (1 for a "same" 3x3, 0 for 1x1
    /// and for the encoder's downsampling convolution).
    pub fn pad_top(&self) -> usize {
        self.options.padding[0].0
    }

    /// `x` by value: when it is not shared, its buffer is handed over without a copy.
    fn forward_cpu(&self, x: Tensor<4>, up: usize, weights: &ConvWeights) -> Tensor<4> {
        let ([b, _, h, w], device) = (x.dims(), x.device());
        let (out, ho, wo) = kernels::conv::conv2d_upsampled(&kernels::values(x), b, (h, w), up, weights);
        kernels::tensor(out, [b, weights.c_out(), ho, wo], &device)
    }
}

/// A [`Conv2d`] ready to run on bands of an input upsampled `up` times
/// ([`Conv2d::prepare`]): on the CPU, its transformed weights, computed once
/// for all bands.
pub struct ConvBands<'a> {
    conv: &'a Conv2d,
    up: usize,
    cpu: Option<kernels::conv::Prepared<'a>>,
}

impl ConvBands<'_> {
    /// Output rows `rows` of the convolution of `x` upsampled: on the CPU
    /// computed from tiles that start on `rows.start` (see
    /// [`kernels::conv::Prepared::run`]).
    pub fn forward_rows(&self, x: Tensor<4>, rows: Range<usize>) -> Tensor<4> {
        match &self.cpu {
            Some(prepared) => {
                let ([b, _, h, w], device) = (x.dims(), x.device());
                let (out, ho, wo) = prepared.run(&kernels::values(x), b, (h, w), Some(rows));
                kernels::tensor(out, [b, self.conv.c_out(), ho, wo], &device)
            }
            None => {
                let y = match self.up {
                    1 => self.conv.forward(x),
                    up => self.conv.forward_upsampled(x, up),
                };
                y.narrow(2, rows.start, rows.len())
            }
        }
    }
}

/// `torch.nn.GroupNorm` with affine parameters.
///
/// The VAE uses epsilon 1e-6 everywhere (burn's `GroupNormConfig` defaults to
/// 1e-5, which would be a silent accuracy bug), so the epsilon is explicit here.
/// Statistics are computed in f32: mean first, then the mean of centred squares,
/// as PyTorch does, rather than the cancellation-prone `E[x^2] - E[x]^2`.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    pub weight: Tensor<1>,
    pub bias: Tensor<1>,
    groups: usize,
    eps: f64,
}

/// The GroupNorm epsilon of every norm layer in diffusers' VAE blocks.
pub const VAE_NORM_EPS: f64 = 1e-6;

impl GroupNorm {
    pub fn load(p: &mut impl Params, name: &str, channels: usize, groups: usize) -> Self {
        Self {
            weight: p.tensor(&format!("{name}.weight"), [channels]),
            bias: p.tensor(&format!("{name}.bias"), [channels]),
            groups,
            eps: VAE_NORM_EPS,
        }
    }

    /// From its affine parameters, for tests that build a network by hand.
    #[cfg(test)]
    pub(super) fn new(weight: Tensor<1>, bias: Tensor<1>, groups: usize, eps: f64) -> Self {
        Self { weight, bias, groups, eps }
    }

    /// `[B, C, H, W] -> [B, C, H, W]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.apply(x, false)
    }

    /// GroupNorm followed by SiLU, the pre-activation used before every conv.
    pub fn forward_silu(&self, x: Tensor<4>) -> Tensor<4> {
        self.apply(x, true)
    }

    /// GroupNorm + SiLU with statistics gathered beforehand: `sums` holds each
    /// channel's `(sum x, sum x^2)` over `count` positions of the whole image,
    /// so that a band of it is normalised exactly as the whole would be.
    pub fn forward_silu_with(&self, x: Tensor<4>, sums: &[[f64; 2]], count: usize) -> Tensor<4> {
        let (a, b) = self.coefficients(sums, count);
        let ([batch, c, h, w], device) = (x.dims(), x.device());
        if kernels::applies_to(&device) {
            let mut x = kernels::values(x);
            kernels::norm::affine(&mut x, h * w, &a, &b, true);
            return kernels::tensor(x, [batch, c, h, w], &device);
        }
        let dtype = x.dtype();
        let a = kernels::tensor(a, [1, c, 1, 1], &device).cast(dtype);
        let b = kernels::tensor(b, [1, c, 1, 1], &device).cast(dtype);
        silu(x * a + b)
    }

    /// Per-channel `(a, b)` of `y = x * a + b`, from per-channel sums (in f64:
    /// E[x^2] - E[x]^2 loses nothing that matters at this precision).
    fn coefficients(&self, sums: &[[f64; 2]], count: usize) -> (Vec<f32>, Vec<f32>) {
        let (gamma, beta) = (kernels::values(self.weight.clone()), kernels::values(self.bias.clone()));
        let per_group = gamma.len() / self.groups;
        let n = (per_group * count) as f64;
        let (mut a, mut b) = (Vec::with_capacity(gamma.len()), Vec::with_capacity(gamma.len()));
        for group in sums.chunks(per_group) {
            let (sum, sum_sq) = group.iter().fold((0.0, 0.0), |(s, q), &[x, x2]| (s + x, q + x2));
            let mean = sum / n;
            let rstd = 1.0 / ((sum_sq / n - mean * mean).max(0.0) + self.eps).sqrt();
            for ch in a.len()..a.len() + per_group {
                let scale = gamma[ch] as f64 * rstd;
                a.push(scale as f32);
                b.push((beta[ch] as f64 - mean * scale) as f32);
            }
        }
        (a, b)
    }

    /// On the CPU, the fused kernel (statistics in f64), given `x` by value so
    /// that an unshared activation is not copied; elsewhere burn's operations.
    fn apply(&self, x: Tensor<4>, with_silu: bool) -> Tensor<4> {
        let ([b, c, h, w], device) = (x.dims(), x.device());
        if kernels::applies_to(&device) {
            let (gamma, beta) = (kernels::values(self.weight.clone()), kernels::values(self.bias.clone()));
            let params = GroupNormParams { groups: self.groups, eps: self.eps, gamma: &gamma, beta: &beta };
            let mut x = kernels::values(x);
            kernels::norm::group_norm(&mut x, c, h * w, params, with_silu);
            return kernels::tensor(x, [b, c, h, w], &device);
        }
        // In f32 whatever the activations' dtype (f16 on a GPU with
        // --precision f16): a group's sum of squares overflows f16's 65504.
        let (dtype, f32) = (x.dtype(), FloatDType::F32);
        let (g, per_group) = (self.groups, c / self.groups);
        let x = x.cast(f32);
        // [B, G, C/G * H, W]: statistics per (batch, group), reduced in two
        // levels (rows, then the row means) so that f32 sums over a whole
        // 512x768 group stay accurate: one flat f32 sum of 393k values is off
        // by ~1e-3 after a few layers.
        let grouped = x.clone().reshape([b, g, per_group * h, w]);
        let mean = grouped.clone().mean_dim(3).mean_dim(2); // [B, G, 1, 1]
        let var = (grouped - mean.clone()).square().mean_dim(3).mean_dim(2);
        // y = x * a + b per (image, channel), from [B, G, C/G] coefficients:
        // two passes over the activations where normalising, scaling and
        // shifting them one by one takes three.
        let gamma = self.weight.clone().cast(f32).reshape([1, g, per_group]);
        let beta = self.bias.clone().cast(f32).reshape([1, g, per_group]);
        let a = (var + self.eps).sqrt().recip().reshape([b, g, 1]) * gamma;
        let shift = beta - mean.reshape([b, g, 1]) * a.clone();
        let y = (x * a.reshape([b, c, 1, 1]) + shift.reshape([b, c, 1, 1])).cast(dtype);
        if with_silu { silu(y) } else { y }
    }
}

/// The norm in front of a convolution or an attention: `AutoencoderKL`'s
/// GroupNorm (statistics over the whole image), or the Wan / Qwen-Image
/// VAE's RMS norm (per pixel, across channels). Boxed: a tensor handle is
/// large (GroupNorm holds two, RmsNorm one), and the enum stays small.
#[derive(Debug, Clone)]
pub enum Norm {
    Group(Box<GroupNorm>),
    Rms(Box<RmsNorm>),
}

impl Norm {
    /// `[B, C, H, W] -> [B, C, H, W]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Norm::Group(norm) => norm.forward(x),
            Norm::Rms(norm) => norm.forward(x),
        }
    }

    /// The norm followed by SiLU.
    pub fn forward_silu(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Norm::Group(norm) => norm.forward_silu(x),
            Norm::Rms(norm) => norm.forward_silu(x),
        }
    }

    /// The norm + SiLU of a band of rows of an image whose channels sum to
    /// `sums` over `count` positions (see [`GroupNorm::forward_silu_with`]).
    /// The RMS norm needs no statistics: it ignores them.
    pub fn forward_silu_with(&self, x: Tensor<4>, sums: &[[f64; 2]], count: usize) -> Tensor<4> {
        match self {
            Norm::Group(norm) => norm.forward_silu_with(x, sums, count),
            Norm::Rms(norm) => norm.forward_silu(x),
        }
    }

    /// Channels that [`Norm::for_bands`] reads at once: a GroupNorm's group
    /// (none for the RMS norm).
    pub fn group_channels(&self, channels: usize) -> usize {
        match self {
            Norm::Group(norm) => channels / norm.groups,
            Norm::Rms(_) => 0,
        }
    }

    /// [`Norm::forward`] on the CPU of an image of `channels` channels, as
    /// a norm for bands of its positions. A GroupNorm gathers its statistics
    /// from `group(first, count)`, channels `[first, first + count)` of the
    /// whole image (one group at a time), by the whole pass's arithmetic, so
    /// that the bands get its values; the RMS norm is per pixel already.
    pub fn for_bands<E>(
        &self,
        channels: usize,
        mut group: impl FnMut(usize, usize) -> Result<Vec<f32>, E>,
    ) -> Result<BandNorm, E> {
        match self {
            Norm::Group(norm) => {
                let (gamma, beta) = (kernels::values(norm.weight.clone()), kernels::values(norm.bias.clone()));
                let params = GroupNormParams { groups: norm.groups, eps: norm.eps, gamma: &gamma, beta: &beta };
                let per_group = channels / norm.groups;
                let mut coefficients = Vec::with_capacity(channels);
                for first in (0..channels).step_by(per_group.max(1)) {
                    let values = group(first, per_group)?;
                    coefficients.extend(kernels::norm::group_coefficients(&values, first, params));
                }
                let (a, b) = coefficients.into_iter().unzip();
                Ok(BandNorm::Affine { a, b })
            }
            Norm::Rms(norm) => Ok(BandNorm::Rms { gamma: kernels::values(norm.gamma.clone()) }),
        }
    }
}

/// A norm of a whole image, for bands of its positions ([`Norm::for_bands`]).
#[derive(Debug, Clone)]
pub enum BandNorm {
    /// Each channel's `y = x * a + b`.
    Affine {
        a: Vec<f32>,
        b: Vec<f32>,
    },
    Rms {
        gamma: Vec<f32>,
    },
}

impl BandNorm {
    /// Normalises `x`, a band `[C, positions]`, in place.
    pub fn apply(&self, x: &mut [f32], positions: usize) {
        match self {
            BandNorm::Affine { a, b } => kernels::norm::affine(x, positions, a, b, false),
            BandNorm::Rms { gamma } => kernels::norm::rms_norm(x, gamma.len(), positions, gamma, false),
        }
    }
}

impl From<GroupNorm> for Norm {
    fn from(norm: GroupNorm) -> Self {
        Norm::Group(Box::new(norm))
    }
}

impl From<RmsNorm> for Norm {
    fn from(norm: RmsNorm) -> Self {
        Norm::Rms(Box::new(norm))
    }
}

/// diffusers' `WanRMS_norm` / `QwenImageRMS_norm` without bias:
/// `F.normalize(x, dim=1) * sqrt(C) * gamma`, each pixel's channels divided
/// by their L2 norm (at least 1e-12). Computed in f32 (f64 sums on the CPU)
/// whatever the activations' dtype, as diffusers does for f16 and bf16.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    /// `[C]`
    pub gamma: Tensor<1>,
}

/// `F.normalize`'s default epsilon: the smallest norm divided by.
const RMS_NORM_EPS: f64 = 1e-12;

impl RmsNorm {
    /// Reads `{name}.gamma` in the shape the file holds it: `[C, 1, 1, 1]`
    /// (`shape_rank` 4, the norms of the residual blocks and the encoder's
    /// and decoder's `norm_out`, made for video) or `[C, 1, 1]` (rank 3, the
    /// attention's, made for images); rank 1 is a plain `[C]`.
    pub fn load(p: &mut impl Params, name: &str, channels: usize, shape_rank: usize) -> Self {
        let name = format!("{name}.gamma");
        let gamma = match shape_rank {
            1 => p.tensor(&name, [channels]),
            3 => Self::flat(p.tensor(&name, [channels, 1, 1])),
            4 => Self::flat(p.tensor(&name, [channels, 1, 1, 1])),
            _ => panic!("an RMS norm's gamma has rank 1, 3 or 4, not {shape_rank}"),
        };
        Self { gamma }
    }

    /// `[C, 1, ...]` as `[C]`; a loader's empty stand-in stays empty.
    fn flat<const D: usize>(gamma: Tensor<D>) -> Tensor<1> {
        let n: usize = gamma.dims().iter().product();
        gamma.reshape([n])
    }

    /// `[B, C, H, W] -> [B, C, H, W]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.apply(x, false)
    }

    /// The RMS norm followed by SiLU.
    pub fn forward_silu(&self, x: Tensor<4>) -> Tensor<4> {
        self.apply(x, true)
    }

    fn apply(&self, x: Tensor<4>, with_silu: bool) -> Tensor<4> {
        let ([b, c, h, w], device) = (x.dims(), x.device());
        if kernels::applies_to(&device) {
            let gamma = kernels::values(self.gamma.clone());
            let mut x = kernels::values(x);
            kernels::norm::rms_norm(&mut x, c, h * w, &gamma, with_silu);
            return kernels::tensor(x, [b, c, h, w], &device);
        }
        self.apply_tensors(x, with_silu)
    }

    /// [`RmsNorm::apply`] through burn's operations (the GPU path).
    fn apply_tensors(&self, x: Tensor<4>, with_silu: bool) -> Tensor<4> {
        let c = x.dims()[1];
        // In f32, as GroupNorm: a sum of squares overflows f16.
        let (dtype, f32) = (x.dtype(), FloatDType::F32);
        let x = x.cast(f32);
        let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(RMS_NORM_EPS); // [B, 1, H, W]
        let gamma = self.gamma.clone().cast(f32).reshape([1, c, 1, 1]) * (c as f64).sqrt();
        let y = (x / norm * gamma).cast(dtype);
        if with_silu { silu(y) } else { y }
    }
}

/// `x * sigmoid(x)` as `x / (1 + e^-x)`: four passes over `x` (negate,
/// exponential, add, divide) on the GPU backends, where burn's `silu` takes
/// seven (its generic sigmoid is `exp(-log(1 + exp(-x)))`, plus the product).
/// Large negative `x` gives `e^-x = inf` and the limit, -0.
fn silu(x: Tensor<4>) -> Tensor<4> {
    x.clone() / ((-x).exp() + 1.0)
}

/// `torch.nn.Linear`: `weight` is `[out, in]`.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor<2>,
    pub bias: Tensor<1>,
}

impl Linear {
    pub fn load(p: &mut impl Params, name: &str, d_in: usize, d_out: usize) -> Self {
        Self {
            weight: p.tensor(&format!("{name}.weight"), [d_out, d_in]),
            bias: p.tensor(&format!("{name}.bias"), [d_out]),
        }
    }

    /// `[N, D_in] -> [N, D_out]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        x.matmul(self.weight.clone().transpose()) + self.bias.clone().unsqueeze()
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, TensorData};
    use rand::{Rng, SeedableRng};

    use super::*;

    #[test]
    fn rms_norm_kernel_and_tensor_paths_agree() {
        let (b, c, h, w) = (2, 24, 5, 7);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut values = |n: usize, lo: f32, hi: f32| (0..n).map(|_| rng.random_range(lo..hi)).collect::<Vec<f32>>();
        let device = Device::flex();
        let x = Tensor::<4>::from_data(TensorData::new(values(b * c * h * w, -3.0, 3.0), [b, c, h, w]), &device);
        let norm = RmsNorm { gamma: Tensor::from_data(TensorData::new(values(c, 0.5, 1.5), [c]), &device) };
        for silu in [false, true] {
            let fused = kernels::values(norm.apply(x.clone(), silu));
            let plain = kernels::values(norm.apply_tensors(x.clone(), silu));
            let worst = fused.iter().zip(&plain).map(|(a, b)| (a - b).abs() / b.abs().max(1.0)).fold(0.0, f32::max);
            assert!(worst < 1e-6, "silu {silu}: {worst:e}");
        }
    }
}
