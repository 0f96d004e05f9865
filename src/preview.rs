//! `vae preview`: a latent to RGB without the decoder, by a per-family linear
//! map from latent channels to colours (ComfyUI's `latent_rgb_factors`, from
//! `comfy/latent_formats.py`), for a quick look at a latent file.

use crate::imageio::{OutputImage, to_u8};
use crate::latent::Latent;
use crate::model::Family;
use crate::vae::NotFinite;

/// `[channel][rgb]` factors and an RGB bias, applied to latents scaled the
/// way the family's diffusion model sees them: `(z - shift) * scaling`.
fn factors(family: Family) -> (&'static [[f32; 3]], [f32; 3]) {
    match family {
        Family::Sd1 | Family::Sd2 => (
            &[
                [0.3512, 0.2297, 0.3227],
                [0.3250, 0.4974, 0.2350],
                [-0.2829, 0.1762, 0.2721],
                [-0.2120, -0.2616, -0.7177],
            ],
            [0.0; 3],
        ),
        Family::Sdxl => (
            &[
                [0.3651, 0.4232, 0.4341],
                [-0.2533, -0.0042, 0.1068],
                [0.1076, 0.1111, -0.0362],
                [-0.3165, -0.2492, -0.2188],
            ],
            [0.1084, -0.0175, -0.0011],
        ),
        Family::Sd3 => (
            &[
                [-0.0922, -0.0175, 0.0749],
                [0.0311, 0.0633, 0.0954],
                [0.1994, 0.0927, 0.0458],
                [0.0856, 0.0339, 0.0902],
                [0.0587, 0.0272, -0.0496],
                [-0.0006, 0.1104, 0.0309],
                [0.0978, 0.0306, 0.0427],
                [-0.0042, 0.1038, 0.1358],
                [-0.0194, 0.0020, 0.0669],
                [-0.0488, 0.0130, -0.0268],
                [0.0922, 0.0988, 0.0951],
                [-0.0278, 0.0524, -0.0542],
                [0.0332, 0.0456, 0.0895],
                [-0.0069, -0.0030, -0.0810],
                [-0.0596, -0.0465, -0.0293],
                [-0.1448, -0.1463, -0.1189],
            ],
            [0.2394, 0.2135, 0.1925],
        ),
        Family::Flux => (
            &[
                [-0.0346, 0.0244, 0.0681],
                [0.0034, 0.0210, 0.0687],
                [0.0275, -0.0668, -0.0433],
                [-0.0174, 0.0160, 0.0617],
                [0.0859, 0.0721, 0.0329],
                [0.0004, 0.0383, 0.0115],
                [0.0405, 0.0861, 0.0915],
                [-0.0236, -0.0185, -0.0259],
                [-0.0245, 0.0250, 0.1180],
                [0.1008, 0.0755, -0.0421],
                [-0.0515, 0.0201, 0.0011],
                [0.0428, -0.0012, -0.0036],
                [0.0817, 0.0765, 0.0749],
                [-0.1264, -0.0522, -0.1103],
                [-0.0280, -0.0881, -0.0499],
                [-0.1262, -0.0982, -0.0778],
            ],
            [-0.0329, -0.0718, -0.0851],
        ),
    }
}

/// The family a latent belongs to: `family` if given, else its metadata's,
/// else the one its scaling points to, else by channel count (4: sd1, 16: flux).
pub fn family_of(latent: &Latent, family: Option<Family>) -> Option<Family> {
    let m = &latent.meta;
    family
        .or_else(|| m.family.as_deref().and_then(|f| f.parse().ok()))
        .or_else(|| Family::of(latent.channels, m.scaling_factor?, m.shift_factor.unwrap_or(0.0)))
        .or(match latent.channels {
            4 => Some(Family::Sd1),
            16 => Some(Family::Flux),
            _ => None,
        })
        .filter(|f| f.latent_channels() == latent.channels)
}

/// An RGB image of `latent`, each latent position drawn as `scale` x `scale`
/// pixels, cropped to the size recorded in the latent when it has one.
/// Refuses latents whose values, rescaled, are not finite f32 (they would
/// draw as black).
pub fn preview(latent: &Latent, family: Family, scale: usize) -> Result<OutputImage, NotFinite> {
    let (weights, bias) = factors(family);
    let (fam_scaling, fam_shift) = family.scaling();
    let (file_scaling, file_shift) =
        (latent.meta.scaling_factor.unwrap_or(fam_scaling), latent.meta.shift_factor.unwrap_or(fam_shift));
    let (h, w) = (latent.height, latent.width);
    let plane = h * w;
    let rescaled: Vec<f32> = latent
        .data
        .iter()
        .map(|&z| (((z as f64 / file_scaling + file_shift) - fam_shift) * fam_scaling) as f32)
        .collect();
    if let Some(err) = NotFinite::of("the preview", &rescaled, (file_scaling, file_shift)) {
        return Err(err);
    }
    // One RGB value per latent position, in the family's scaled space.
    let rgb: Vec<[u8; 3]> = (0..plane)
        .map(|p| {
            let mut out = bias;
            for (c, row) in weights.iter().enumerate() {
                let v = rescaled[c * plane + p];
                for (o, f) in out.iter_mut().zip(row) {
                    *o += v * f;
                }
            }
            out.map(to_u8)
        })
        .collect();
    let (full_w, full_h) = (w * scale, h * scale);
    let width = latent.meta.width.map_or(full_w, |v| (v * scale).div_ceil(8).clamp(1, full_w));
    let height = latent.meta.height.map_or(full_h, |v| (v * scale).div_ceil(8).clamp(1, full_h));
    let rgb8 =
        (0..height).flat_map(|y| (0..width).map(move |x| (y / scale) * w + x / scale)).flat_map(|p| rgb[p]).collect();
    Ok(OutputImage { width, height, rgb8 })
}
