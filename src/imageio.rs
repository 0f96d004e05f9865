//! Images in and out: decoding any common format into the model's [-1, 1]
//! input, and the model's output into an 8-bit RGB PNG, both exactly as
//! diffusers' `VaeImageProcessor` does.
//!
//! Colour handling, as PIL's `Image.convert("RGB")` in diffusers pipelines:
//! grey is replicated to RGB, palettes are expanded, and alpha is dropped (the
//! colour under transparent pixels is kept, not composited). 16-bit images
//! keep their full precision: `v / 65535 * 2 - 1`.

use std::io::{BufRead, Seek};
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use image::{DynamicImage, ImageDecoder, ImageReader, Limits};

use crate::output::{self, OutputError, Overwrite};

/// Default for `--max-pixels`: 8192 x 8192. A 4K image is 8.3 Mpx.
pub const DEFAULT_MAX_PIXELS: u64 = 8192 * 8192;

/// Extensions of the image files read (folders given as inputs are
/// expanded to these; dataset samples' images are found by them).
pub const EXTENSIONS: [&str; 7] = ["png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff"];

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    // `cause`, not `source`: the message already says it, and a source would
    // make `{:#}` print it twice.
    #[error("{}: cannot read: {cause}", path.display())]
    Io { path: PathBuf, cause: std::io::Error },
    #[error("{}: not a readable image: {reason}", path.display())]
    Decode { path: PathBuf, reason: String },
    #[error("{}: image is {width}x{height}, more than --max-pixels {max_pixels}", path.display())]
    TooLarge { path: PathBuf, width: u32, height: u32, max_pixels: u64 },
    #[error("{}: image has no pixels ({width}x{height})", path.display())]
    Empty { path: PathBuf, width: u32, height: u32 },
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// An RGB image as the model sees it: planar `[3, H, W]` values in [-1, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct InputImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<f32>,
    /// The original 8-bit RGB (HWC), kept for quality metrics.
    pub rgb8: Vec<u8>,
}

/// Reads `path`, refusing images above `max_pixels` before decoding them.
pub fn load(path: &Path, max_pixels: u64) -> Result<InputImage, ImageError> {
    let io = |cause| ImageError::Io { path: path.to_owned(), cause };
    crate::output::check_input(path).map_err(io)?;
    let reader = ImageReader::open(path).map_err(io)?;
    let image = decode(reader, max_pixels).map_err(|e| e.at(path))?;
    Ok(from_dynamic(&image))
}

/// Decodes an image held in memory; `path` only names it in errors.
pub fn load_bytes(bytes: &[u8], path: &Path, max_pixels: u64) -> Result<InputImage, ImageError> {
    let reader = ImageReader::new(std::io::Cursor::new(bytes));
    let image = decode(reader, max_pixels).map_err(|e| e.at(path))?;
    Ok(from_dynamic(&image))
}

/// Decoding errors before the path is known.
enum Failure {
    Decode(String),
    TooLarge(u32, u32, u64),
    Empty(u32, u32),
}

impl Failure {
    fn at(self, path: &Path) -> ImageError {
        let path = path.to_owned();
        match self {
            Failure::Decode(reason) => ImageError::Decode { path, reason },
            Failure::TooLarge(width, height, max_pixels) => ImageError::TooLarge { path, width, height, max_pixels },
            Failure::Empty(width, height) => ImageError::Empty { path, width, height },
        }
    }
}

fn decode<R: BufRead + Seek>(reader: ImageReader<R>, max_pixels: u64) -> Result<DynamicImage, Failure> {
    let reader = reader.with_guessed_format().map_err(|e| Failure::Decode(e.to_string()))?;
    if reader.format().is_none() {
        return Err(Failure::Decode("unknown image format".to_owned()));
    }
    // The header alone gives the size: refuse bombs before allocating.
    let mut decoder = reader.into_decoder().map_err(|e| Failure::Decode(e.to_string()))?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(Failure::Empty(width, height));
    }
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(Failure::TooLarge(width, height, max_pixels));
    }
    let mut limits = Limits::default();
    // Room for the decoded image at 16 bits x 4 channels, plus decoder state.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(64 << 20));
    decoder.set_limits(limits).map_err(|e| Failure::Decode(e.to_string()))?;
    DynamicImage::from_decoder(decoder).map_err(|e| Failure::Decode(e.to_string()))
}

fn from_dynamic(image: &DynamicImage) -> InputImage {
    let (width, height) = (image.width() as usize, image.height() as usize);
    let rgb8 = image.to_rgb8().into_raw();
    let plane = width * height;
    let mut pixels = vec![0.0f32; 3 * plane];
    let sixteen_bit = matches!(image.color().bytes_per_pixel() / image.color().channel_count(), 2);
    if sixteen_bit {
        let rgb16 = image.to_rgb16();
        for (i, px) in rgb16.pixels().enumerate() {
            for c in 0..3 {
                pixels[c * plane + i] = px[c] as f32 / 65535.0 * 2.0 - 1.0;
            }
        }
    } else {
        for (i, px) in rgb8.chunks_exact(3).enumerate() {
            for c in 0..3 {
                // diffusers: np.float32(v) / 255.0, then 2.0 * x - 1.0.
                pixels[c * plane + i] = px[c] as f32 / 255.0 * 2.0 - 1.0;
            }
        }
    }
    InputImage { width, height, pixels, rgb8 }
}

impl InputImage {
    /// `[1, 3, H', W']` with H', W' rounded up to multiples of `multiple` by
    /// repeating the last row and column (the decoder crops them off again).
    pub fn to_tensor(&self, multiple: usize, device: &Device) -> Tensor<4> {
        let (w, h) = (self.width, self.height);
        let (pw, ph) = (w.div_ceil(multiple) * multiple, h.div_ceil(multiple) * multiple);
        let mut data = Vec::with_capacity(3 * pw * ph);
        for c in 0..3 {
            let plane = &self.pixels[c * w * h..(c + 1) * w * h];
            for y in 0..ph {
                let row = &plane[y.min(h - 1) * w..][..w];
                data.extend_from_slice(row);
                data.extend(std::iter::repeat_n(row[w - 1], pw - w));
            }
        }
        Tensor::from_data(TensorData::new(data, [1, 3, ph, pw]), device)
    }
}

/// An 8-bit RGB image (HWC), as written to PNG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputImage {
    pub width: usize,
    pub height: usize,
    pub rgb8: Vec<u8>,
}

impl OutputImage {
    /// diffusers' postprocessing of a `[3, H, W]` planar output, cropped to
    /// `width` x `height`: `round(clamp(x / 2 + 0.5, 0, 1) * 255)`, rounding
    /// half to even as NumPy does.
    pub fn from_planar(planar: &[f32], full_width: usize, full_height: usize, width: usize, height: usize) -> Self {
        let plane = full_width * full_height;
        let mut rgb8 = Vec::with_capacity(width * height * 3);
        for y in 0..height {
            for x in 0..width {
                for c in 0..3 {
                    let v = planar[c * plane + y * full_width + x];
                    rgb8.push(to_u8(v));
                }
            }
        }
        Self { width, height, rgb8 }
    }

    pub fn save_png(&self, path: &Path, overwrite: Overwrite) -> Result<(), ImageError> {
        output::write_atomic(path, overwrite, |out| {
            let encoder = image::codecs::png::PngEncoder::new(out);
            image::ImageEncoder::write_image(
                encoder,
                &self.rgb8,
                self.width as u32,
                self.height as u32,
                image::ExtendedColorType::Rgb8,
            )
            .map_err(std::io::Error::other)
        })?;
        Ok(())
    }
}

/// One decoder output value to an 8-bit level; NaN becomes 0.
pub fn to_u8(v: f32) -> u8 {
    ((v / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0).round_ties_even() as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postprocess_matches_diffusers() {
        assert_eq!(to_u8(-1.0), 0);
        assert_eq!(to_u8(1.0), 255);
        assert_eq!(to_u8(5.0), 255);
        assert_eq!(to_u8(-7.0), 0);
        assert_eq!(to_u8(0.0), 128); // 127.5 rounds half to even
        assert_eq!(to_u8(f32::NAN), 0);
    }

    #[test]
    fn pads_by_repeating_edges() {
        let image = InputImage { width: 2, height: 1, pixels: vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6], rgb8: vec![0; 6] };
        let t = image.to_tensor(4, &Device::flex());
        assert_eq!(t.dims(), [1, 3, 4, 4]);
        let v = t.into_data().try_into_vec::<f32>().unwrap();
        assert_eq!(&v[..8], &[0.1, 0.2, 0.2, 0.2, 0.1, 0.2, 0.2, 0.2]);
        assert_eq!(&v[32..36], &[0.5, 0.6, 0.6, 0.6]);
    }
}
