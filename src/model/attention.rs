//! The single-head self-attention of the VAE mid block (diffusers `Attention`
//! with `heads = 1`, `dim_head = C`, a GroupNorm in front and a residual; the
//! Wan / Qwen-Image VAE's `AttentionBlock` is the same with an RMS norm).

use burn::tensor::{FloatDType, Tensor};

use super::Params;
use super::layers::{GroupNorm, Linear, Norm, RmsNorm};
use crate::kernels;

/// Upper bound on the elements of one block of attention scores. Queries are
/// processed in row chunks so that a 1024x1024 image (16384 tokens) needs a
/// 64 MiB score block instead of a 1 GiB one; the result is identical.
const MAX_SCORE_ELEMENTS: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Attention {
    /// `group_norm` in diffusers' `Attention`, `norm` in the Wan VAE's.
    pub norm: Norm,
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    /// `to_out.0` in diffusers (`to_out.1` is a dropout).
    pub to_out: Linear,
}

impl Attention {
    pub fn load<P: Params>(p: &mut P, name: &str, channels: usize, groups: usize) -> Self {
        let linear = |p: &mut P, part: &str| Linear::load(p, &format!("{name}.{part}"), channels, channels);
        Self {
            norm: GroupNorm::load(p, &format!("{name}.group_norm"), channels, groups).into(),
            to_q: linear(p, "to_q"),
            to_k: linear(p, "to_k"),
            to_v: linear(p, "to_v"),
            to_out: linear(p, "to_out.0"),
        }
    }

    /// The Wan / Qwen-Image VAE's `AttentionBlock`: `norm` an RMS norm
    /// (`gamma` `[C, 1, 1]`), `to_qkv` one 1x1 convolution (`[3C, C, 1, 1]`)
    /// whose output channels are q, k and v in that order, `proj` a 1x1
    /// convolution (`[C, C, 1, 1]`). One head of dimension C, as here.
    pub fn load_wan(p: &mut impl Params, name: &str, channels: usize) -> Self {
        let c = channels;
        let qkv_weight = p.tensor(&format!("{name}.to_qkv.weight"), [3 * c, c, 1, 1]);
        let qkv_bias = p.tensor(&format!("{name}.to_qkv.bias"), [3 * c]);
        let proj_weight = p.tensor(&format!("{name}.proj.weight"), [c, c, 1, 1]);
        let proj_bias = p.tensor(&format!("{name}.proj.bias"), [c]);
        // A loader's stand-in for a missing or mis-shaped tensor is empty:
        // only tensors that loaded are cut (the loader fails anyway).
        let options = (&qkv_weight.device(), qkv_weight.dtype());
        let empty = || Linear { weight: Tensor::empty([0, 0], options), bias: Tensor::empty([0], options) };
        let qkv_loaded = qkv_weight.dims() == [3 * c, c, 1, 1] && qkv_bias.dims() == [3 * c];
        let qkv = qkv_loaded.then(|| (qkv_weight.reshape([3 * c, c]), qkv_bias));
        let part = |k: usize| match &qkv {
            Some((weight, bias)) => {
                Linear { weight: weight.clone().narrow(0, k * c, c), bias: bias.clone().narrow(0, k * c, c) }
            }
            None => empty(),
        };
        let to_out = match proj_weight.dims() == [c, c, 1, 1] {
            true => Linear { weight: proj_weight.reshape([c, c]), bias: proj_bias },
            false => empty(),
        };
        Self {
            norm: RmsNorm::load(p, &format!("{name}.norm"), c, 3).into(),
            to_q: part(0),
            to_k: part(1),
            to_v: part(2),
            to_out,
        }
    }

    /// `[B, C, H, W] -> [B, C, H, W]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        if kernels::applies_to(&x.device()) {
            return self.forward_cpu(x);
        }
        let [b, c, h, w] = x.dims();
        let n = h * w;
        // [B, C, H, W] -> [B, N, C]: one token per pixel.
        let tokens = self.norm.forward(x.clone()).reshape([b, c, n]).swap_dims(1, 2);
        let outputs = (0..b)
            .map(|i| {
                let t = tokens.clone().narrow(0, i, 1).reshape([n, c]);
                let attended = self.attend(t, h, w);
                self.to_out.forward(attended).reshape([1, n, c])
            })
            .collect();
        // [B, N, C] -> [B, C, H, W], plus the residual (rescale factor 1.0).
        let out = Tensor::cat(outputs, 0).swap_dims(1, 2).reshape([b, c, h, w]);
        out + x
    }

    /// [`Attention::forward`] through the CPU kernels, which add the
    /// attention into the input's own memory, streaming over keys a block of
    /// queries at a time: the step holds the input, its normalised copy, `k`
    /// and `v`.
    fn forward_cpu(&self, x: Tensor<4>) -> Tensor<4> {
        let ([b, c, h, w], device) = (x.dims(), x.device());
        let n = h * w;
        let tokens = kernels::values(self.norm.forward(x.clone())); // [B, C, N]
        let mut out = kernels::values(x);
        let weights = self.kernel_weights();
        for (x, t) in out.chunks_exact_mut(n * c).zip(tokens.chunks_exact(n * c)) {
            kernels::attention::self_attention(x, t, n, c, weights.projections());
        }
        kernels::tensor(out, [b, c, h, w], &device)
    }

    /// The projections' parameters as the CPU kernels take them.
    pub fn kernel_weights(&self) -> KernelWeights {
        let params = |l: &Linear| [kernels::values(l.weight.clone()), kernels::values(l.bias.clone())];
        KernelWeights([&self.to_q, &self.to_k, &self.to_v, &self.to_out].map(params))
    }

    /// `softmax(q k^T / sqrt(C)) v` for one image's tokens: `[H*W, C] -> [H*W, C]`.
    ///
    /// The softmax is written out so that its normaliser is summed in two
    /// levels (per image row, then over rows) and applied after the product
    /// with `v`: burn's f32 softmax sums 4096+ terms in one run, which costs
    /// ~2e-4 at the decoder output against an exact reference.
    ///
    /// With reduced-precision activations the projections run in their dtype
    /// and the scores, softmax and product with `v` in f32 (scores of trained
    /// weights reach the thousands, beyond what f16's exp can hold).
    fn attend(&self, tokens: Tensor<2>, h: usize, w: usize) -> Tensor<2> {
        let [n, c] = tokens.dims();
        let (dtype, f32) = (tokens.dtype(), FloatDType::F32);
        let scale = (c as f64).sqrt().recip();
        let q = self.to_q.forward(tokens.clone()).cast(f32);
        let k_t = self.to_k.forward(tokens.clone()).cast(f32).transpose(); // [C, N]
        let v = self.to_v.forward(tokens).cast(f32);
        let rows = (MAX_SCORE_ELEMENTS / n).max(1);
        let chunks = (0..n)
            .step_by(rows)
            .map(|start| {
                let len = rows.min(n - start);
                let scores = q.clone().narrow(0, start, len).matmul(k_t.clone()) * scale; // [len, N]
                let weights = (scores.clone() - scores.max_dim(1)).exp();
                let total = weights.clone().reshape([len, h, w]).sum_dim(2).sum_dim(1).reshape([len, 1]);
                weights.matmul(v.clone()) / total
            })
            .collect();
        Tensor::cat(chunks, 0).cast(dtype)
    }
}

/// `[weight, bias]` of `to_q`, `to_k`, `to_v` and `to_out`, as f32 values.
pub struct KernelWeights([[Vec<f32>; 2]; 4]);

impl KernelWeights {
    pub fn projections(&self) -> kernels::attention::Projections<'_> {
        let linear = |i: usize| {
            let [weight, bias] = &self.0[i];
            kernels::attention::Linear { weight, bias }
        };
        kernels::attention::Projections { q: linear(0), k: linear(1), v: linear(2), out: linear(3) }
    }
}
