//! diffusers `AutoencoderKL`: encoder + quant_conv, post_quant_conv + decoder.

use burn::tensor::Tensor;

use super::Params;
use super::config::AutoencoderKlConfig;
use super::decoder::Decoder;
use super::encoder::Encoder;
use super::graph::{Builder, ConvOp, Graph};
use super::layers::Conv2d;

#[derive(Debug, Clone)]
pub struct AutoencoderKl {
    pub config: AutoencoderKlConfig,
    pub encoder: Encoder,
    pub decoder: Decoder,
    pub quant_conv: Option<Conv2d>,
    pub post_quant_conv: Option<Conv2d>,
}

impl AutoencoderKl {
    /// Builds the model, pulling every parameter from `p` by its diffusers name.
    pub fn load(p: &mut impl Params, config: &AutoencoderKlConfig) -> Self {
        let moments = 2 * config.latent_channels;
        let latent = config.latent_channels;
        Self {
            encoder: Encoder::load(p, "encoder", config),
            decoder: Decoder::load(p, "decoder", config),
            quant_conv: config.use_quant_conv.then(|| Conv2d::load(p, "quant_conv", moments, moments, 1)),
            post_quant_conv: config.use_post_quant_conv.then(|| Conv2d::load(p, "post_quant_conv", latent, latent, 1)),
            config: config.clone(),
        }
    }

    /// Image in [-1, 1] `[B, 3, H, W]` (H, W multiples of 8) to the posterior.
    pub fn encode(&self, x: Tensor<4>) -> DiagonalGaussian {
        DiagonalGaussian::from_moments(self.moments(x))
    }

    /// `[B, 3, H, W] -> [B, 2C, H/8, W/8]`: the posterior's mean and log-variance, stacked.
    pub fn moments(&self, x: Tensor<4>) -> Tensor<4> {
        self.encoder_graph().forward(x)
    }

    /// Unscaled latent `[B, C, h, w]` to image `[B, 3, 8h, 8w]`, about [-1, 1].
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        self.decoder_graph().forward(z)
    }

    /// The steps of [`AutoencoderKl::moments`]: encoder, then `quant_conv`.
    pub fn encoder_graph(&self) -> Graph<'_> {
        encoder_graph(&self.encoder, self.quant_conv.as_ref())
    }

    /// The steps of [`AutoencoderKl::decode`]: `post_quant_conv`, then decoder.
    pub fn decoder_graph(&self) -> Graph<'_> {
        decoder_graph(&self.decoder, self.post_quant_conv.as_ref())
    }
}

/// An encoder's steps, then those of its `quant_conv` if it has one.
pub(super) fn encoder_graph<'m>(encoder: &'m Encoder, quant_conv: Option<&'m Conv2d>) -> Graph<'m> {
    let (mut b, x) = Builder::new();
    let h = encoder.describe(&mut b, x);
    let moments = match quant_conv {
        Some(conv) => b.conv(h, ConvOp::new(conv)),
        None => h,
    };
    b.finish(moments)
}

/// The steps of a `post_quant_conv` if there is one, then a decoder's.
pub(super) fn decoder_graph<'m>(decoder: &'m Decoder, post_quant_conv: Option<&'m Conv2d>) -> Graph<'m> {
    let (mut b, z) = Builder::new();
    let z = match post_quant_conv {
        Some(conv) => b.conv(z, ConvOp::new(conv)),
        None => z,
    };
    let image = decoder.describe(&mut b, z);
    b.finish(image)
}

/// The encoder's posterior: a diagonal Gaussian per latent element.
#[derive(Debug, Clone)]
pub struct DiagonalGaussian {
    pub mean: Tensor<4>,
    /// Log-variance, clamped to [-30, 20] as diffusers does.
    pub logvar: Tensor<4>,
}

impl DiagonalGaussian {
    /// Splits `[B, 2C, h, w]` moments into mean and log-variance halves.
    pub fn from_moments(moments: Tensor<4>) -> Self {
        let [mean, logvar] = moments.chunk(2, 1).try_into().expect("chunk(2) of an even dim gives two halves");
        Self { mean, logvar: logvar.clamp(-30.0, 20.0) }
    }

    /// `mean + exp(logvar / 2) * noise`, with `noise` drawn from N(0, 1).
    pub fn sample(&self, noise: Tensor<4>) -> Tensor<4> {
        self.mean.clone() + (self.logvar.clone() * 0.5).exp() * noise
    }
}
