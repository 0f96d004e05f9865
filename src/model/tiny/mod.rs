//! diffusers `AutoencoderTiny`: TAESD, the tiny distilled autoencoder of
//! madebyollin/taesd. Plain 3x3 convolutions and ReLUs, no normalisation and
//! no attention: about 1.2M parameters per half against the big VAE's 34M
//! (encoder) and 49M (decoder). It reads and writes the big VAE's *scaled*
//! latents (see [`AutoencoderTinyConfig`]).
//!
//! diffusers keeps both halves as an `nn.Sequential` called `layers`; the
//! index of each module in it is its name in the weights, parameterless
//! modules (ReLU, Upsample) included, so loading counts them too.

mod config;

use burn::tensor::Tensor;
use burn::tensor::activation::relu;

pub use config::AutoencoderTinyConfig;

use super::layers::Conv2d;
use crate::model::Params;

/// Padding of TAESD's 3x3 convolutions, the stride-2 ones included (which,
/// unlike `Downsample2D`, pad all four sides).
const SAME: [(usize, usize); 2] = [(1, 1), (1, 1)];

#[derive(Debug, Clone)]
pub struct AutoencoderTiny {
    pub config: AutoencoderTinyConfig,
    /// `None` when the weights hold only the decoder.
    pub encoder: Option<EncoderTiny>,
    /// `None` when the weights hold only the encoder.
    pub decoder: Option<DecoderTiny>,
}

impl AutoencoderTiny {
    /// Builds the halves the config has, pulling every parameter from `p`
    /// by its diffusers name.
    pub fn load(p: &mut impl Params, config: &AutoencoderTinyConfig) -> Self {
        Self {
            encoder: config.has_encoder().then(|| EncoderTiny::load(p, "encoder", config)),
            decoder: config.has_decoder().then(|| DecoderTiny::load(p, "decoder", config)),
            config: config.clone(),
        }
    }

    /// Image in [-1, 1] `[B, 3, H, W]` (H, W multiples of 8) to TAESD latents
    /// `[B, C, H/8, W/8]`; `None` without an encoder.
    pub fn encode(&self, x: Tensor<4>) -> Option<Tensor<4>> {
        Some(self.encoder.as_ref()?.forward(x))
    }

    /// TAESD latents `[B, C, h, w]` to an image `[B, 3, 8h, 8w]`, about
    /// [-1, 1]; `None` without a decoder.
    pub fn decode(&self, z: Tensor<4>) -> Option<Tensor<4>> {
        Some(self.decoder.as_ref()?.forward(z))
    }
}

/// diffusers `EncoderTiny`: per stage a convolution (stride 2, no bias,
/// after the first) and its blocks, then a convolution to the latent.
#[derive(Debug, Clone)]
pub struct EncoderTiny {
    pub layers: Vec<TinyLayer>,
}

impl EncoderTiny {
    pub fn load(p: &mut impl Params, name: &str, cfg: &AutoencoderTinyConfig) -> Self {
        let mut layers = Sequential::new(name);
        let mut width = cfg.in_channels;
        for (stage, (&c, &blocks)) in cfg.encoder_block_out_channels.iter().zip(&cfg.num_encoder_blocks).enumerate() {
            let conv = match stage {
                0 => Conv2d::load(p, &layers.next_name(), width, c, 3),
                _ => Conv2d::load_without_bias(p, &layers.next_name(), width, c, 3, 2, SAME),
            };
            layers.push(TinyLayer::Conv(conv));
            for _ in 0..blocks {
                layers.push(TinyLayer::Block(Box::new(AutoencoderTinyBlock::load(p, &layers.next_name(), c, c))));
            }
            width = c;
        }
        layers.push(TinyLayer::Conv(Conv2d::load(p, &layers.next_name(), width, cfg.latent_channels, 3)));
        Self { layers: layers.layers }
    }

    /// `[B, 3, H, W]` in [-1, 1] -> `[B, C, H/8, W/8]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        // TAESD takes images in [0, 1].
        let x = (x + 1.0) / 2.0;
        forward_all(&self.layers, x)
    }
}

/// diffusers `DecoderTiny`: a soft clamp, a convolution and a ReLU, then per
/// stage its blocks and (but for the last) a nearest upsampling and a
/// convolution with no bias; the last stage ends in a convolution to RGB.
#[derive(Debug, Clone)]
pub struct DecoderTiny {
    pub layers: Vec<TinyLayer>,
}

impl DecoderTiny {
    pub fn load(p: &mut impl Params, name: &str, cfg: &AutoencoderTinyConfig) -> Self {
        let widths = &cfg.decoder_block_out_channels;
        let mut layers = Sequential::new(name);
        let conv_in = Conv2d::load(p, &layers.next_name(), cfg.latent_channels, widths[0], 3);
        layers.push(TinyLayer::Conv(conv_in));
        layers.push(TinyLayer::Relu);
        let last = widths.len() - 1;
        for (stage, (&c, &blocks)) in widths.iter().zip(&cfg.num_decoder_blocks).enumerate() {
            for _ in 0..blocks {
                layers.push(TinyLayer::Block(Box::new(AutoencoderTinyBlock::load(p, &layers.next_name(), c, c))));
            }
            if stage == last {
                layers.push(TinyLayer::Conv(Conv2d::load(p, &layers.next_name(), c, cfg.out_channels, 3)));
            } else {
                // `nn.Upsample` (no parameters) takes one index, its convolution the next.
                layers.skip();
                let conv = Conv2d::load_without_bias(p, &layers.next_name(), c, c, 3, 1, SAME);
                layers.push(TinyLayer::UpsampledConv { scale: cfg.upsampling_scaling_factor, conv });
            }
        }
        Self { layers: layers.layers }
    }

    /// `[B, C, h, w]` -> `[B, 3, 8h, 8w]` in about [-1, 1]
    pub fn forward(&self, z: Tensor<4>) -> Tensor<4> {
        // A soft clamp of the latent to (-3, 3).
        let z = (z / 3.0).tanh() * 3.0;
        let x = forward_all(&self.layers, z);
        // TAESD outputs [0, 1]; diffusers maps that to [-1, 1].
        x * 2.0 - 1.0
    }
}

/// One module of the `layers` sequence.
#[derive(Debug, Clone)]
pub enum TinyLayer {
    Conv(Conv2d),
    Relu,
    Block(Box<AutoencoderTinyBlock>),
    /// `nn.Upsample(scale_factor, mode="nearest")` and the convolution after
    /// it (two modules in diffusers): fused on the CPU, where the upsampled
    /// activation is never materialised.
    UpsampledConv {
        scale: usize,
        conv: Conv2d,
    },
}

impl TinyLayer {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            TinyLayer::Conv(conv) => conv.forward(x),
            TinyLayer::Relu => relu(x),
            TinyLayer::Block(block) => block.forward(x),
            TinyLayer::UpsampledConv { scale, conv } => conv.forward_upsampled(x, *scale),
        }
    }
}

fn forward_all(layers: &[TinyLayer], x: Tensor<4>) -> Tensor<4> {
    layers.iter().fold(x, |h, layer| layer.forward(h))
}

/// diffusers `AutoencoderTinyBlock`: `relu(conv(x) + skip(x))`, where `conv`
/// is conv-ReLU-conv-ReLU-conv (`conv.0`, `conv.2`, `conv.4`) and `skip` a
/// 1x1 convolution without bias when the width changes (never in TAESD).
#[derive(Debug, Clone)]
pub struct AutoencoderTinyBlock {
    pub conv: [Conv2d; 3],
    pub skip: Option<Conv2d>,
}

impl AutoencoderTinyBlock {
    pub fn load(p: &mut impl Params, name: &str, c_in: usize, c_out: usize) -> Self {
        let conv = [
            Conv2d::load(p, &format!("{name}.conv.0"), c_in, c_out, 3),
            Conv2d::load(p, &format!("{name}.conv.2"), c_out, c_out, 3),
            Conv2d::load(p, &format!("{name}.conv.4"), c_out, c_out, 3),
        ];
        let skip = (c_in != c_out)
            .then(|| Conv2d::load_without_bias(p, &format!("{name}.skip"), c_in, c_out, 1, 1, [(0, 0), (0, 0)]));
        Self { conv, skip }
    }

    /// `[B, C_in, H, W] -> [B, C_out, H, W]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [conv0, conv2, conv4] = &self.conv;
        let h = relu(conv0.forward(x.clone()));
        let h = relu(conv2.forward(h));
        let h = conv4.forward(h);
        let skip = match &self.skip {
            Some(conv) => conv.forward(x),
            None => x,
        };
        relu(h + skip)
    }
}

/// Builds a `layers` sequence, numbering its modules as `nn.Sequential` does.
struct Sequential {
    prefix: String,
    index: usize,
    layers: Vec<TinyLayer>,
}

impl Sequential {
    fn new(name: &str) -> Self {
        Self { prefix: format!("{name}.layers"), index: 0, layers: Vec::new() }
    }

    /// The name of the next module (`encoder.layers.7`).
    fn next_name(&self) -> String {
        format!("{}.{}", self.prefix, self.index)
    }

    fn push(&mut self, layer: TinyLayer) {
        self.layers.push(layer);
        self.index += 1;
    }

    /// Counts a parameterless module that [`TinyLayer`] folds into the next.
    fn skip(&mut self) {
        self.index += 1;
    }
}
