//! `vae preview`: a latent to RGB without the decoder, by a per-family linear
//! map from latent channels to colours (ComfyUI's `latent_rgb_factors`, from
//! `comfy/latent_formats.py`), for a quick look at a latent file.

use crate::imageio::{OutputImage, to_u8};
use crate::latent::Latent;
use crate::latent_space::{LatentSpace, unpatchify};
use crate::model::Family;
use crate::vae::NotFinite;

/// Why a latent has no preview.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    #[error("{0}")]
    NotFinite(NotFinite),
    #[error("no preview for {} latents: ComfyUI has no latent_rgb_factors for them (decode the latent instead)", .0.name())]
    NoFactors(Family),
}

/// `[channel][rgb]` factors and an RGB bias, applied to latents scaled the
/// way the family's diffusion model sees them: `(z - shift) * scaling`, or
/// normalised per channel (FLUX.2: its 128 normalised channels unpatched
/// into 32 at twice the resolution, as ComfyUI draws them).
/// `None`: ComfyUI has none for the family (Qwen-Image 2.1).
fn factors(family: Family) -> Option<(&'static [[f32; 3]], [f32; 3])> {
    Some(match family {
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
        Family::Flux2 => (
            &[
                [0.0058, 0.0113, 0.0073],
                [0.0495, 0.0443, 0.0836],
                [-0.0099, 0.0096, 0.0644],
                [0.2144, 0.3009, 0.3652],
                [0.0166, -0.0039, -0.0054],
                [0.0157, 0.0103, -0.0160],
                [-0.0398, 0.0902, -0.0235],
                [-0.0052, 0.0095, 0.0109],
                [-0.3527, -0.2712, -0.1666],
                [-0.0301, -0.0356, -0.0180],
                [-0.0107, 0.0078, 0.0013],
                [0.0746, 0.0090, -0.0941],
                [0.0156, 0.0169, 0.0070],
                [-0.0034, -0.0040, -0.0114],
                [0.0032, 0.0181, 0.0080],
                [-0.0939, -0.0008, 0.0186],
                [0.0018, 0.0043, 0.0104],
                [0.0284, 0.0056, -0.0127],
                [-0.0024, -0.0022, -0.0030],
                [0.1207, -0.0026, 0.0065],
                [0.0128, 0.0101, 0.0142],
                [0.0137, -0.0072, -0.0007],
                [0.0095, 0.0092, -0.0059],
                [0.0000, -0.0077, -0.0049],
                [-0.0465, -0.0204, -0.0312],
                [0.0095, 0.0012, -0.0066],
                [0.0290, -0.0034, 0.0025],
                [0.0220, 0.0169, -0.0048],
                [-0.0332, -0.0457, -0.0468],
                [-0.0085, 0.0389, 0.0609],
                [-0.0076, 0.0003, -0.0043],
                [-0.0111, -0.0460, -0.0614],
            ],
            [-0.0329, -0.0718, -0.0851],
        ),
        Family::Wan21 => (
            &[
                [-0.1299, -0.1692, 0.2932],
                [0.0671, 0.0406, 0.0442],
                [0.3568, 0.2548, 0.1747],
                [0.0372, 0.2344, 0.1420],
                [0.0313, 0.0189, -0.0328],
                [0.0296, -0.0956, -0.0665],
                [-0.3477, -0.4059, -0.2925],
                [0.0166, 0.1902, 0.1975],
                [-0.0412, 0.0267, -0.1364],
                [-0.1293, 0.0740, 0.1636],
                [0.0680, 0.3019, 0.1128],
                [0.0032, 0.0581, 0.0639],
                [-0.1251, 0.0927, 0.1699],
                [0.0060, -0.0633, 0.0005],
                [0.3477, 0.2275, 0.2950],
                [0.1984, 0.0913, 0.1861],
            ],
            [-0.1835, -0.0868, -0.3360],
        ),
        Family::Wan22 => (
            &[
                [0.0119, 0.0103, 0.0046],
                [-0.1062, -0.0504, 0.0165],
                [0.0140, 0.0409, 0.0491],
                [-0.0813, -0.0677, 0.0607],
                [0.0656, 0.0851, 0.0808],
                [0.0264, 0.0463, 0.0912],
                [0.0295, 0.0326, 0.0590],
                [-0.0244, -0.0270, 0.0025],
                [0.0443, -0.0102, 0.0288],
                [-0.0465, -0.0090, -0.0205],
                [0.0359, 0.0236, 0.0082],
                [-0.0776, 0.0854, 0.1048],
                [0.0564, 0.0264, 0.0561],
                [0.0006, 0.0594, 0.0418],
                [-0.0319, -0.0542, -0.0637],
                [-0.0268, 0.0024, 0.0260],
                [0.0539, 0.0265, 0.0358],
                [-0.0359, -0.0312, -0.0287],
                [-0.0285, -0.1032, -0.1237],
                [0.1041, 0.0537, 0.0622],
                [-0.0086, -0.0374, -0.0051],
                [0.0390, 0.0670, 0.2863],
                [0.0069, 0.0144, 0.0082],
                [0.0006, -0.0167, 0.0079],
                [0.0313, -0.0574, -0.0232],
                [-0.1454, -0.0902, -0.0481],
                [0.0714, 0.0827, 0.0447],
                [-0.0304, -0.0574, -0.0196],
                [0.0401, 0.0384, 0.0204],
                [-0.0758, -0.0297, -0.0014],
                [0.0568, 0.1307, 0.1372],
                [-0.0055, -0.0310, -0.0380],
                [0.0239, -0.0305, 0.0325],
                [-0.0663, -0.0673, -0.0140],
                [-0.0416, -0.0047, -0.0023],
                [0.0166, 0.0112, -0.0093],
                [-0.0211, 0.0011, 0.0331],
                [0.1833, 0.1466, 0.2250],
                [-0.0368, 0.0370, 0.0295],
                [-0.3441, -0.3543, -0.2008],
                [-0.0479, -0.0489, -0.0420],
                [-0.0660, -0.0153, 0.0800],
                [-0.0101, 0.0068, 0.0156],
                [-0.0690, -0.0452, -0.0927],
                [-0.0145, 0.0041, 0.0015],
                [0.0421, 0.0451, 0.0373],
                [0.0504, -0.0483, -0.0356],
                [-0.0837, 0.0168, 0.0055],
            ],
            [0.0317, -0.0878, -0.1388],
        ),
        // ComfyUI has no factors for Qwen-Image 2.1's 64 channels.
        Family::QwenImage21 => return None,
    })
}

/// Whether `vae preview` can draw latents of `family` (ComfyUI has
/// `latent_rgb_factors` for it).
pub fn has_factors(family: Family) -> bool {
    factors(family).is_some()
}

/// Whether a latent of `channels` stored channels can be of `family`
/// (FLUX.2's are stored as 32, or patched into 128).
fn fits(family: Family, channels: usize) -> bool {
    channels == family.latent_channels() || (family == Family::Flux2 && channels == 4 * family.latent_channels())
}

/// The family a latent belongs to: `family` if given, else its metadata's,
/// else the one its scaling points to, else by channel count (4: sd1, 16:
/// flux, 32 or 128: flux2, 48: wan22).
pub fn family_of(latent: &Latent, family: Option<Family>) -> Option<Family> {
    let m = &latent.meta;
    family
        .or(m.family)
        .or_else(|| Family::of(latent.channels, m.scaling_factor?, m.shift_factor.unwrap_or(0.0)))
        .or(match latent.channels {
            4 => Some(Family::Sd1),
            16 => Some(Family::Flux),
            32 | 128 => Some(Family::Flux2),
            48 => Some(Family::Wan22),
            _ => None,
        })
        .filter(|f| fits(*f, latent.channels))
}

/// An RGB image of `latent`, each latent position drawn as `scale` x `scale`
/// pixels, cropped to the size recorded in the latent when it has one.
/// Refuses latents whose values, rescaled, are not finite f32 (they would
/// draw as black).
pub fn preview(latent: &Latent, family: Family, scale: usize) -> Result<OutputImage, PreviewError> {
    let Some((weights, bias)) = factors(family) else {
        return Err(PreviewError::NoFactors(family));
    };
    let stored = (latent.channels, latent.height, latent.width);
    let file = latent.meta.latent_space().unwrap_or_else(|| LatentSpace::of_family(family));
    // The family's view: its normalised values, one per VAE latent position.
    let ((_, h, w), view) = match family {
        // FLUX.2's normalisation needs its weights' statistics: a file of
        // its 128 normalised channels is drawn as stored (unpatched), a raw
        // one as it is.
        Family::Flux2 if latent.channels == 4 * weights.len() => {
            ((weights.len(), 2 * latent.height, 2 * latent.width), unpatchify(&latent.data, stored, 2))
        }
        Family::Flux2 => (stored, file.from_stored(&latent.data, stored)),
        _ => {
            let z = file.from_stored(&latent.data, stored);
            let shape = file.vae_shape(stored);
            (shape, LatentSpace::of_family(family).to_stored(&z, shape))
        }
    };
    if let Some(err) = NotFinite::of("the preview", &view, file.channel(0)) {
        return Err(PreviewError::NotFinite(err));
    }
    let plane = h * w;
    // One RGB value per latent position, in the family's scaled space.
    let rgb: Vec<[u8; 3]> = (0..plane)
        .map(|p| {
            let mut out = bias;
            for (c, row) in weights.iter().enumerate() {
                let v = view[c * plane + p];
                for (o, f) in out.iter_mut().zip(row) {
                    *o += v * f;
                }
            }
            out.map(to_u8)
        })
        .collect();
    let (full_w, full_h) = (w * scale, h * scale);
    // Image pixels per drawn latent position.
    let down = family.downscale();
    let width = latent.meta.width.map_or(full_w, |v| (v * scale).div_ceil(down).clamp(1, full_w));
    let height = latent.meta.height.map_or(full_h, |v| (v * scale).div_ceil(down).clamp(1, full_h));
    let rgb8 =
        (0..height).flat_map(|y| (0..width).map(move |x| (y / scale) * w + x / scale)).flat_map(|p| rgb[p]).collect();
    Ok(OutputImage { width, height, rgb8 })
}
