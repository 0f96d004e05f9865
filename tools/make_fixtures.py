#!/usr/bin/env python3
"""Write the parity fixtures for the Rust `vae` crate, using diffusers as the reference.

    python3 tools/make_fixtures.py                 # regenerate tests/fixtures/ (committed)
    python3 tools/make_fixtures.py --full-size     # real SD 1.x size, into target/fixtures-full
    python3 tools/make_fixtures.py --full-size DIR # ... or into DIR (never committed)

Everything is seeded and runs on the CPU with two threads, so a rerun with the versions
pinned in tools/requirements.txt rewrites byte-identical files. The models are diffusers
`AutoencoderKL`s and `AutoencoderTiny`s (TAESD) with float32 weights, all redrawn (see
`redraw_parameters`, `redraw_tiny`) so that every layer visibly changes the output. The expected outputs run the same diffusers modules in
float64 (see `REFERENCE_DTYPE`) and are stored as float32. tests/fixtures/README.md
describes the files.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import PIL
import PIL.Image
import safetensors
import safetensors.torch
import skimage
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import diffusers
from diffusers import AutoencoderKL, AutoencoderTiny
from diffusers.image_processor import VaeImageProcessor
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
KODAK = Path("/work/shared/testdata/kodak")
IMAGES = ("kodim03", "kodim04")  # 768x512 landscape, 512x768 portrait
SEED = 0

# The expected outputs are diffusers' forward pass in float64, stored as float32. torch's own
# float32 CPU pass is not accurate enough to be a 1e-4 reference: its GroupNorm statistics over
# the 393,216-value groups of a full-resolution 32-channel layer are off by ~5e-4 already, and
# that grows to ~1e-3 in the latents and 5e-3 to 2e-2 in the decoded image (the script measures
# and prints this as "torch f32 off by"). A float32 implementation with two-pass GroupNorm (mean,
# then mean of centred squares) stays within ~4e-5 of these latents, and within ~2e-5 of
# `decoded` when it decodes the stored mean.
REFERENCE_DTYPE = torch.float64

# Settings shared by every config below.
_COMMON = dict(in_channels=3, out_channels=3, norm_num_groups=32, sample_size=512)

# SD 1.x layout shrunk to 32/64 channels (4 blocks: 8x downscale, quant convs).
TINY_SD = dict(
    _COMMON,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[32, 32, 64, 64],
    layers_per_block=2,
    latent_channels=4,
    scaling_factor=0.18215,
)

# SD3 / FLUX-style: 16 latent channels, no quant convs, a shift factor. Four blocks (8x
# downscale, like the real SD3/FLUX VAEs): with only two blocks the latent of a 768x512
# image is 384x256 and the mid-block attention runs over 98,304 tokens (a 38 GB f32
# score matrix), far too slow for a parity test.
TINY_FLUX = dict(
    _COMMON,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[32, 64, 64, 64],
    layers_per_block=1,
    latent_channels=16,
    use_quant_conv=False,
    use_post_quant_conv=False,
    scaling_factor=0.3611,
    shift_factor=0.1159,
)

# The real SD 1.x VAE shape (runwayml/stable-diffusion-v1-5 vae/config.json), random weights.
SD15_RANDOM = dict(TINY_SD, block_out_channels=[128, 256, 512, 512])

# TAESD (madebyollin/taesd config.json: 64 channels, blocks (1, 3, 3, 3) / (3, 3, 3, 1)) shrunk to
# 16 channels; every other setting is diffusers' default (relu, nearest, upsampling 2, scaling 1).
TINY_TAESD = dict(encoder_block_out_channels=[16] * 4, decoder_block_out_channels=[16] * 4, latent_channels=4)

# TAEF1-style: 16 latent channels, and other block counts than TAESD's (read from config.json).
TINY_TAEF1 = dict(
    encoder_block_out_channels=[16] * 4,
    decoder_block_out_channels=[16] * 4,
    latent_channels=16,
    num_encoder_blocks=[1, 2, 2, 2],
    num_decoder_blocks=[2, 2, 2, 1],
)

# TAESD runs on crops, to keep the fixtures small: (image, crop box (left, top, right, bottom)).
# Sizes are multiples of 8; kodim04's latent is 12 x 17 (an odd height).
TAESD_IMAGES = {
    "kodim03_160x128": ("kodim03", (300, 200, 460, 328)),
    "kodim04_96x136": ("kodim04", (100, 300, 196, 436)),
}

# ComfyUI's latent scaling scalars for the combined TAESD fixture: SDXL's, so that a test can tell
# them from the "taesd" (SD 1.x) of the file name.
COMFY_VAE_SCALE, COMFY_VAE_SHIFT = 0.13025, 0.0


# --------------------------------------------------------------------------- models


def redraw_parameters(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Replace every parameter so that no layer is an identity or a zero.

    conv / linear weight ~ N(0, 1/fan_in), fan_in = in_channels * kh * kw (in_features);
    GroupNorm weight ~ 1 + 0.1 N(0, 1); every bias ~ 0.05 N(0, 1).
    Parameters are drawn in `named_modules` order from one seeded generator.
    """
    seen = set()
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                weight = module.weight
                fan_in = weight[0].numel()
                weight.copy_(_randn(weight.shape, generator) / fan_in**0.5)
            elif isinstance(module, torch.nn.GroupNorm):
                weight = module.weight
                weight.copy_(1.0 + 0.1 * _randn(weight.shape, generator))
            else:
                continue
            seen.add(f"{name}.weight")
            if module.bias is not None:
                module.bias.copy_(0.05 * _randn(module.bias.shape, generator))
                seen.add(f"{name}.bias")
    missed = set(dict(model.named_parameters())) - seen
    assert not missed, f"parameters not redrawn: {sorted(missed)}"


def redraw_tiny(model: AutoencoderTiny, generator: torch.Generator) -> None:
    """`redraw_parameters` for a TAESD (conv weights ~ N(0, 1/fan_in), biases 0.05 N(0, 1)), then
    three gains that keep a ReLU network of that depth in range:

    - the encoder's last conv x 8: latents of std ~1.5 to 2, so the decoder's soft clamp
      tanh(x / 3) * 3 bends some of them;
    - the decoder's first conv x 0.5 and its last conv's bias + 0.5 (TAESD decodes to [0, 1]):
      decoded images of std ~0.5 around 0 after diffusers' map to [-1, 1], few values clipped.
    """
    redraw_parameters(model, generator)
    with torch.no_grad():
        model.encoder.layers[-1].weight.mul_(8.0)
        model.decoder.layers[0].weight.mul_(0.5)
        model.decoder.layers[-1].bias.add_(0.5)


def build_tiny(config: dict, seed: int) -> AutoencoderTiny:
    """A seeded AutoencoderTiny with redrawn parameters, float32, CPU, eval mode."""
    torch.manual_seed(seed)
    model = AutoencoderTiny(**config)
    redraw_tiny(model, torch.Generator().manual_seed(seed))
    return model.float().eval()


def _randn(shape, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def build_vae(config: dict, seed: int = SEED) -> AutoencoderKL:
    """A seeded AutoencoderKL with redrawn parameters, float32, CPU, eval mode."""
    torch.manual_seed(seed)
    model = AutoencoderKL(**config)
    redraw_parameters(model, torch.Generator().manual_seed(seed))
    return model.float().eval()


def vae_from_state_dict(config: dict, state: dict[str, torch.Tensor]) -> AutoencoderKL:
    """A float32 AutoencoderKL holding `state` upcast to float32 (strict load)."""
    model = AutoencoderKL(**config)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.float().eval()


def cast_state(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype).contiguous() for k, v in state.items()}


# --------------------------------------------------------------------------- key layouts

# diffusers -> original CompVis/LDM names, applied in order to a key without its
# `encoder.` / `decoder.` part. `{rev}` is filled with the reversed decoder block index.
_LDM_RENAMES = [
    (r"^down_blocks\.(\d+)\.resnets\.(\d+)\.", r"down.\1.block.\2."),
    (r"^down_blocks\.(\d+)\.downsamplers\.0\.conv\.", r"down.\1.downsample.conv."),
    (r"^up_blocks\.(\d+)\.resnets\.(\d+)\.", "up.{rev}.block.\\2."),
    (r"^up_blocks\.(\d+)\.upsamplers\.0\.conv\.", "up.{rev}.upsample.conv."),
    (r"^mid_block\.resnets\.0\.", "mid.block_1."),
    (r"^mid_block\.resnets\.1\.", "mid.block_2."),
    (r"^mid_block\.attentions\.0\.group_norm\.", "mid.attn_1.norm."),
    (r"^mid_block\.attentions\.0\.to_q\.", "mid.attn_1.q."),
    (r"^mid_block\.attentions\.0\.to_k\.", "mid.attn_1.k."),
    (r"^mid_block\.attentions\.0\.to_v\.", "mid.attn_1.v."),
    (r"^mid_block\.attentions\.0\.to_out\.0\.", "mid.attn_1.proj_out."),
    (r"^conv_norm_out\.", "norm_out."),
    (r"\.conv_shortcut\.", ".nin_shortcut."),
]


def diffusers_key_to_ldm(key: str, num_blocks: int) -> str:
    """`decoder.up_blocks.0.resnets.1.conv1.weight` -> `decoder.up.3.block.1.conv1.weight`."""
    part, _, rest = key.partition(".")
    if part not in ("encoder", "decoder"):
        return key  # quant_conv / post_quant_conv keep their names
    for pattern, replacement in _LDM_RENAMES:
        match = re.search(pattern, rest)
        if match:
            if "{rev}" in replacement:
                replacement = replacement.replace("{rev}", str(num_blocks - 1 - int(match.group(1))))
            rest = re.sub(pattern, replacement, rest)
    return f"{part}.{rest}"


def diffusers_to_ldm(state: dict[str, torch.Tensor], num_blocks: int) -> dict[str, torch.Tensor]:
    """Rename to the LDM layout; the attention q/k/v/proj_out weights become 1x1 convs [C, C, 1, 1]."""
    out = {}
    for key, tensor in state.items():
        ldm_key = diffusers_key_to_ldm(key, num_blocks)
        if ".attn_1." in ldm_key and ldm_key.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]
        out[ldm_key] = tensor.contiguous()
    assert len(out) == len(state), "two diffusers keys mapped onto one LDM key"
    return out


def to_old_attention_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The pre-0.14 diffusers AttentionBlock names: to_q/to_k/to_v/to_out.0 -> query/key/value/proj_attn."""
    renames = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    out = {}
    for key, tensor in state.items():
        for new, old in renames.items():
            key = key.replace(new, old)
        out[key] = tensor
    return out


def assert_same_state(actual: dict, expected: dict, what: str) -> None:
    """Same key set, and every tensor equal in dtype, shape and value."""
    assert set(actual) == set(expected), (
        f"{what}: key sets differ: missing {sorted(set(expected) - set(actual))}, "
        f"extra {sorted(set(actual) - set(expected))}"
    )
    for key, tensor in expected.items():
        other = actual[key]
        assert other.dtype == tensor.dtype and other.shape == tensor.shape, f"{what}: {key} differs"
        assert torch.equal(other, tensor), f"{what}: {key} values differ"


def check_ldm_with_diffusers(checkpoint: dict, diffusers_state: dict, config: dict, what: str) -> None:
    """Prove an LDM-layout file: diffusers' own single-file converter must give back the diffusers state."""
    back = convert_ldm_vae_checkpoint(checkpoint, config)
    assert_same_state(back, diffusers_state, f"convert_ldm_vae_checkpoint({what})")


def taesd_original_halves(state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """diffusers TAESD keys -> madebyollin's split files (`taesd_encoder` / `taesd_decoder`).

    The encoder is the same nn.Sequential: `encoder.layers.N.` -> `N.`. The original decoder starts
    with a parameterless Clamp() module that diffusers moved into DecoderTiny.forward, so its
    indices are one higher: `decoder.layers.N.` -> `{N+1}.`."""
    encoder, decoder = {}, {}
    for key, tensor in state.items():
        half, _, rest = key.partition(".layers.")
        index, _, param = rest.partition(".")
        if half == "encoder":
            encoder[f"{index}.{param}"] = tensor.contiguous()
        else:
            assert half == "decoder", key
            decoder[f"{int(index) + 1}.{param}"] = tensor.contiguous()
    assert len(encoder) + len(decoder) == len(state)
    return encoder, decoder


class _Clamp(torch.nn.Module):
    """madebyollin/taesd's Clamp: the first module of its decoder."""

    def forward(self, x):
        return torch.tanh(x / 3) * 3


@torch.no_grad()
def check_taesd_original_halves(model: AutoencoderTiny, encoder: dict, decoder: dict, x: torch.Tensor) -> None:
    """Prove the split files: madebyollin's architecture (the diffusers layers as one nn.Sequential
    each, a Clamp in front of the decoder) loads them strictly and computes what diffusers does,
    with its own conventions (images in [0, 1])."""
    enc = torch.nn.Sequential(*copy.deepcopy(model.encoder.layers))
    dec = torch.nn.Sequential(_Clamp(), *copy.deepcopy(model.decoder.layers))
    enc.load_state_dict(encoder, strict=True)
    dec.load_state_dict(decoder, strict=True)
    latents = model.encode(x).latents
    assert torch.equal(enc(x.add(1).div(2)), latents), "original encoder differs"
    assert torch.equal(dec(latents).mul(2).sub(1), model.decode(latents).sample), "original decoder differs"


def check_old_attention_with_diffusers(old: dict, diffusers_state: dict, config: dict) -> None:
    """diffusers' loader rewrites the deprecated attention names on load; it must give back the state."""
    model = AutoencoderKL(**config)
    back = model._fix_state_dict_keys_on_load(dict(old))
    assert_same_state(back, diffusers_state, "old attention names")


# --------------------------------------------------------------------------- images


def load_rgb(path: Path) -> PIL.Image.Image:
    return PIL.Image.open(path).convert("RGB")


def preprocess(image: PIL.Image.Image) -> torch.Tensor:
    """diffusers' own preprocessing: [1, 3, H, W] float32, x = 2 * (v / 255) - 1."""
    x = VaeImageProcessor(vae_scale_factor=8).preprocess(image)
    # Sizes that are multiples of 8 are not resized, so this is exactly the arithmetic.
    rgb = np.asarray(image)
    direct = (rgb.astype(np.float32) / 255.0) * 2.0 - 1.0
    assert torch.equal(x, torch.from_numpy(direct.transpose(2, 0, 1)[None].copy()))
    return x


def postprocess(decoded: torch.Tensor) -> PIL.Image.Image:
    """diffusers' own postprocessing: clamp(x/2 + 0.5, 0, 1) * 255, rounded (numpy, half to even)."""
    (image,) = VaeImageProcessor(vae_scale_factor=8).postprocess(decoded, output_type="pil")
    return image.convert("RGB")


# --------------------------------------------------------------------------- reference outputs


@torch.no_grad()
def run_vae(model: AutoencoderKL, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Posterior mean and (clamped) logvar, and the decode of the unscaled mean, in the model's dtype.

    The decoder gets the mean rounded to float32, i.e. exactly the stored `mean` tensor, so a
    decode test can start from the stored mean (its own latent error would be amplified ~8x)."""
    dtype = next(model.parameters()).dtype
    posterior = model.encode(x.to(dtype)).latent_dist
    decoded = model.decode(posterior.mean.float().to(dtype)).sample
    return {"mean": posterior.mean, "logvar": posterior.logvar, "decoded": decoded}


def reference_outputs(model: AutoencoderKL, x: torch.Tensor) -> tuple[dict, dict]:
    """The expected outputs (REFERENCE_DTYPE, rounded to float32) and how far torch's own
    float32 pass of the same float32 weights is from them: max abs error of the latents
    (mean and logvar) and of the decoded image."""
    reference = run_vae(copy.deepcopy(model).to(REFERENCE_DTYPE), x)
    reference = {k: v.float().contiguous() for k, v in reference.items()}
    f32 = run_vae(model, x)
    err = {k: float((f32[k].double() - reference[k].double()).abs().max()) for k in reference}
    return reference, {"latent": max(err["mean"], err["logvar"]), "decoded": err["decoded"]}


def write_expected(out_dir: Path, variant: str, stem: str, result: dict, with_decoded: bool) -> None:
    """`{variant}__{stem}.safetensors` (mean, logvar[, decoded]) and `{variant}__{stem}.png`.

    `result` holds float32 tensors; the PNG is the postprocessing of exactly the stored `decoded`."""
    names = ["mean", "logvar"] + (["decoded"] if with_decoded else [])
    safetensors.torch.save_file({n: result[n] for n in names}, out_dir / f"{variant}__{stem}.safetensors")
    postprocess(result["decoded"]).save(out_dir / f"{variant}__{stem}.png")


def plus_one_every_seventh(a: np.ndarray) -> np.ndarray:
    """b = a with +1 (saturating at 255) on every 7th value of the row-major HWC byte array."""
    b = a.copy()
    flat = b.reshape(-1)
    flat[::7] = np.minimum(flat[::7].astype(np.int16) + 1, 255).astype(np.uint8)
    return b


def image_metrics(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """PSNR, SSIM (skimage, Wang et al. Gaussian settings) and max abs error of two uint8 HWC images."""
    psnr = peak_signal_noise_ratio(a, b, data_range=255)
    ssim = structural_similarity(
        a, b, channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    max_abs = int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())
    return {"psnr": float(psnr), "ssim": float(ssim), "max_abs_error": max_abs}


# --------------------------------------------------------------------------- tiny fixtures


def save_pretrained(model: AutoencoderKL, folder: Path) -> None:
    model.save_pretrained(folder, safe_serialization=True)


def write_weights(weights: Path, sd: AutoencoderKL, flux: AutoencoderKL) -> dict[str, dict]:
    """All the weight files; returns the state dict that each expected-output variant runs."""
    config = dict(sd.config)
    num_blocks = len(config["block_out_channels"])
    state = {k: v.detach().clone().contiguous() for k, v in sd.state_dict().items()}
    f16 = cast_state(state, torch.float16)
    bf16 = cast_state(state, torch.bfloat16)

    save_pretrained(sd, weights / "tiny_sd")
    save_pretrained(flux, weights / "tiny_flux")
    safetensors.torch.save_file(f16, weights / "tiny_sd_f16.safetensors")
    safetensors.torch.save_file(bf16, weights / "tiny_sd_bf16.safetensors")

    ldm = diffusers_to_ldm(state, num_blocks)
    check_ldm_with_diffusers(ldm, state, config, "tiny_sd_ldm")
    safetensors.torch.save_file(ldm, weights / "tiny_sd_ldm.safetensors")

    ckpt = {f"first_stage_model.{k}": v for k, v in diffusers_to_ldm(f16, num_blocks).items()}
    ckpt.update(unrelated_checkpoint_tensors())
    check_ldm_with_diffusers(ckpt, f16, config, "tiny_sd_ckpt")
    safetensors.torch.save_file(ckpt, weights / "tiny_sd_ckpt.safetensors")

    prefixed = {f"vae.{k}": v for k, v in f16.items()}
    prefixed["text_encoder.dummy.weight"] = _randn((4, 4), torch.Generator().manual_seed(1)).half()
    safetensors.torch.save_file(prefixed, weights / "tiny_sd_vae_prefix.safetensors")

    old = to_old_attention_names(state)
    check_old_attention_with_diffusers(old, state, config)
    safetensors.torch.save_file(old, weights / "tiny_sd_old_attn.safetensors")

    check_weight_files(weights, state, f16, bf16, num_blocks)
    return {"tiny_sd": state, "tiny_sd_f16": f16, "tiny_sd_bf16": bf16}


def unrelated_checkpoint_tensors() -> dict[str, torch.Tensor]:
    """A few non-VAE tensors that a full SD 1.x checkpoint carries next to first_stage_model."""
    g = torch.Generator().manual_seed(2)
    return {
        "model.diffusion_model.input_blocks.0.0.weight": _randn((8, 4, 3, 3), g).half(),
        "model.diffusion_model.input_blocks.0.0.bias": _randn((8,), g).half(),
        "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(77, dtype=torch.int64)[None],
        "alphas_cumprod": torch.cumprod(1.0 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2, 0),
    }


def check_weight_files(weights: Path, state: dict, f16: dict, bf16: dict, num_blocks: int) -> None:
    """Reload every file and check it holds exactly the intended tensors (same f16 values everywhere)."""
    load = lambda name: safetensors.torch.load_file(weights / name)  # noqa: E731
    assert_same_state(load("tiny_sd/diffusion_pytorch_model.safetensors"), state, "tiny_sd")
    assert_same_state(load("tiny_sd_f16.safetensors"), f16, "tiny_sd_f16")
    assert_same_state(load("tiny_sd_bf16.safetensors"), bf16, "tiny_sd_bf16")
    assert_same_state(load("tiny_sd_ldm.safetensors"), diffusers_to_ldm(state, num_blocks), "tiny_sd_ldm")
    assert_same_state(load("tiny_sd_old_attn.safetensors"), to_old_attention_names(state), "tiny_sd_old_attn")
    ckpt = load("tiny_sd_ckpt.safetensors")
    vae_part = {k.removeprefix("first_stage_model."): v for k, v in ckpt.items() if k.startswith("first_stage_model.")}
    assert_same_state(vae_part, diffusers_to_ldm(f16, num_blocks), "tiny_sd_ckpt (VAE part)")
    prefixed = load("tiny_sd_vae_prefix.safetensors")
    vae_part = {k.removeprefix("vae."): v for k, v in prefixed.items() if k.startswith("vae.")}
    assert_same_state(vae_part, f16, "tiny_sd_vae_prefix (VAE part)")
    # diffusers' own loader must accept the LDM file as a single-file checkpoint.
    config_dir = str(weights / "tiny_sd")
    model = AutoencoderKL.from_single_file(str(weights / "tiny_sd_ldm.safetensors"), config=config_dir)
    assert_same_state({k: v for k, v in model.state_dict().items()}, state, "from_single_file(tiny_sd_ldm)")


def copy_images(out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for stem in IMAGES:
        paths[stem] = out / f"{stem}.png"
        shutil.copyfile(KODAK / f"{stem}.png", paths[stem])
    return paths


def make_tiny_fixtures(root: Path) -> None:
    for sub in ("weights", "images", "expected"):
        shutil.rmtree(root / sub, ignore_errors=True)
        (root / sub).mkdir(parents=True)
    expected = root / "expected"

    sd, flux = build_vae(TINY_SD), build_vae(TINY_FLUX)
    states = write_weights(root / "weights", sd, flux)
    models = {name: vae_from_state_dict(dict(sd.config), s) for name, s in states.items()}
    models["tiny_flux"] = flux
    images = copy_images(root / "images")

    torch_f32_off = {}
    for stem, path in images.items():
        x = preprocess(load_rgb(path))
        for variant, model in models.items():
            result, torch_f32_off[(variant, stem)] = reference_outputs(model, x)
            with_decoded = variant in ("tiny_sd", "tiny_flux") and stem == "kodim03"
            write_expected(expected, variant, stem, result, with_decoded)
            print(f"  {variant:13s} {stem}: {describe(result, torch_f32_off[(variant, stem)])}")

    write_metrics(expected / "metrics.json", images)
    taesd_off = make_taesd_fixtures(root, models["tiny_sd"])
    write_expected_readme(expected / "README.md", torch_f32_off, taesd_off)
    print_sizes(root)


# --------------------------------------------------------------------------- TAESD fixtures


def write_taesd_weights(weights: Path, taesd: AutoencoderTiny, taef1: AutoencoderTiny, x: torch.Tensor) -> dict:
    """The TAESD weight files; returns the state dict each expected-output variant runs."""
    state = {k: v.detach().clone().contiguous() for k, v in taesd.state_dict().items()}
    f16 = cast_state(state, torch.float16)
    save_pretrained(taesd, weights / "tiny_taesd")
    save_pretrained(taef1, weights / "tiny_taef1")

    encoder, decoder = taesd_original_halves(state)
    check_taesd_original_halves(taesd, encoder, decoder, x)
    (weights / "tiny_taesd_split").mkdir()
    safetensors.torch.save_file(encoder, weights / "tiny_taesd_split" / "taesd_encoder.safetensors")
    safetensors.torch.save_file(decoder, weights / "tiny_taesd_split" / "taesd_decoder.safetensors")

    # ComfyUI's combined layout: both original halves under taesd_encoder. / taesd_decoder., plus
    # its latent scaling scalars (f32, shape []), here in f16.
    enc16, dec16 = taesd_original_halves(f16)
    comfy = {f"taesd_encoder.{k}": v for k, v in enc16.items()} | {f"taesd_decoder.{k}": v for k, v in dec16.items()}
    comfy["vae_scale"] = torch.tensor(COMFY_VAE_SCALE, dtype=torch.float32)
    comfy["vae_shift"] = torch.tensor(COMFY_VAE_SHIFT, dtype=torch.float32)
    safetensors.torch.save_file(comfy, weights / "tiny_taesd_comfy_f16.safetensors")

    load = lambda name: safetensors.torch.load_file(weights / name)  # noqa: E731
    assert_same_state(load("tiny_taesd/diffusion_pytorch_model.safetensors"), state, "tiny_taesd")
    assert_same_state(load("tiny_taesd_split/taesd_encoder.safetensors"), encoder, "taesd_encoder")
    assert_same_state(load("tiny_taesd_split/taesd_decoder.safetensors"), decoder, "taesd_decoder")
    assert_same_state(load("tiny_taesd_comfy_f16.safetensors"), comfy, "tiny_taesd_comfy_f16")
    return {"tiny_taesd": state, "tiny_taesd_f16": f16}


def tiny_from_state_dict(config: dict, state: dict[str, torch.Tensor]) -> AutoencoderTiny:
    model = AutoencoderTiny(**config)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.float().eval()


@torch.no_grad()
def run_tiny(model: AutoencoderTiny, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """TAESD's latents and the decode of those latents rounded to float32 (the stored tensor)."""
    dtype = next(model.parameters()).dtype
    latents = model.encode(x.to(dtype)).latents
    decoded = model.decode(latents.float().to(dtype)).sample
    return {"latents": latents, "decoded": decoded}


def tiny_reference(model: AutoencoderTiny, x: torch.Tensor) -> tuple[dict, dict]:
    """As `reference_outputs`, for a TAESD."""
    reference = run_tiny(copy.deepcopy(model).to(REFERENCE_DTYPE), x)
    reference = {k: v.float().contiguous() for k, v in reference.items()}
    f32 = run_tiny(model, x)
    err = {k: float((f32[k].double() - reference[k].double()).abs().max()) for k in reference}
    return reference, {"latent": err["latents"], "decoded": err["decoded"]}


@torch.no_grad()
def cross_decodes(taesd: AutoencoderTiny, sd: AutoencoderKL, taesd_latents: torch.Tensor, sd_mean: torch.Tensor):
    """What a diffusers pipeline gets when one model encodes and the other decodes (float64):
    pipelines hand the VAE `latents / vae.config.scaling_factor` (1 for TAESD) and get back
    `vae.encode(x) * scaling_factor`, so TAESD latents are the big VAE's scaled ones."""
    sd64, taesd64 = copy.deepcopy(sd).to(REFERENCE_DTYPE), copy.deepcopy(taesd).to(REFERENCE_DTYPE)
    scaling = sd.config.scaling_factor
    by_sd = sd64.decode(taesd_latents.to(REFERENCE_DTYPE) / scaling).sample
    by_taesd = taesd64.decode(sd_mean.to(REFERENCE_DTYPE) * scaling).sample
    return by_sd.float(), by_taesd.float()


def make_taesd_fixtures(root: Path, sd: AutoencoderKL) -> dict:
    """TAESD weights in each layout, crops of the Kodak images, and diffusers' outputs."""
    images = {}
    for name, (stem, box) in TAESD_IMAGES.items():
        images[name] = root / "images" / f"{name}.png"
        load_rgb(KODAK / f"{stem}.png").crop(box).save(images[name])
    inputs = {name: preprocess(load_rgb(path)) for name, path in images.items()}

    taesd, taef1 = build_tiny(TINY_TAESD, seed=0), build_tiny(TINY_TAEF1, seed=1)
    states = write_taesd_weights(root / "weights", taesd, taef1, inputs["kodim03_160x128"])
    models = {name: tiny_from_state_dict(TINY_TAESD, state) for name, state in states.items()}
    models["tiny_taef1"] = taef1

    off = {}
    for stem, x in inputs.items():
        for variant, model in models.items():
            result, off[(variant, stem)] = tiny_reference(model, x)
            safetensors.torch.save_file(result, root / "expected" / f"{variant}__{stem}.safetensors")
            postprocess(result["decoded"]).save(root / "expected" / f"{variant}__{stem}.png")
            lat, dec = result["latents"], result["decoded"]
            print(
                f"  {variant:13s} {stem}: latents {tuple(lat.shape)}, std {lat.std():.3f}, "
                f"{100 * float((lat.abs() > 3).float().mean()):.1f}% beyond the clamp's +-3; decoded "
                f"[{dec.min():.2f}, {dec.max():.2f}], std {dec.std():.3f}; torch f32 off by "
                f"{off[(variant, stem)]['latent']:.1e} (latents), {off[(variant, stem)]['decoded']:.1e} (decoded)"
            )

    # One model encodes, the other decodes: tiny_taesd and tiny_sd share SD 1.x's latent space.
    stem = "kodim03_160x128"
    taesd_latents = safetensors.torch.load_file(root / "expected" / f"tiny_taesd__{stem}.safetensors")["latents"]
    sd_mean = reference_outputs(sd, inputs[stem])[0]["mean"]
    by_sd, by_taesd = cross_decodes(models["tiny_taesd"], sd, taesd_latents, sd_mean)
    postprocess(by_sd).save(root / "expected" / f"tiny_taesd_to_tiny_sd__{stem}.png")
    postprocess(by_taesd).save(root / "expected" / f"tiny_sd_to_tiny_taesd__{stem}.png")
    return off


def describe(result: dict, torch_f32_off: dict) -> str:
    lv = result["logvar"]
    dec = result["decoded"]
    clamped = int(((lv <= -30.0) | (lv >= 20.0)).sum())
    return (
        f"latent {tuple(result['mean'].shape)}, mean std {result['mean'].std():.3f}, "
        f"logvar [{lv.min():.2f}, {lv.max():.2f}] ({clamped} clamped), decoded [{dec.min():.2f}, {dec.max():.2f}] "
        f"({100 * float(((dec < -1) | (dec > 1)).float().mean()):.1f}% clipped); torch f32 off by "
        f"{torch_f32_off['latent']:.1e} (latent), {torch_f32_off['decoded']:.1e} (decoded)"
    )


def write_metrics(path: Path, images: dict[str, Path]) -> None:
    """PSNR / SSIM / max abs error between pairs the Rust metrics code must reproduce."""
    metrics = {}
    for stem, image_path in images.items():
        a = np.asarray(load_rgb(image_path))
        b = np.asarray(load_rgb(path.parent / f"tiny_sd__{stem}.png"))
        metrics[stem] = {
            "a": f"images/{stem}.png",
            "b": f"expected/tiny_sd__{stem}.png",
            "pair": f"original 8-bit RGB {stem} vs tiny_sd's decoded PNG (random weights: a poor reconstruction)",
            **image_metrics(a, b),
        }
    for stem, image_path in images.items():
        a = np.asarray(load_rgb(image_path))
        metrics[f"{stem}_plus1_every7"] = {
            "a": f"images/{stem}.png",
            "b": "synthetic, built from a",
            "pair": (
                "a = original 8-bit RGB image as a uint8 array of shape [H, W, 3]; b = copy of a; viewing b as one "
                "flat row-major (H, W, C) byte array, every value at flat index 0, 7, 14, ... becomes min(v + 1, 255)"
            ),
            **image_metrics(a, plus_one_every_seventh(a)),
        }
    path.write_text(json.dumps(metrics, indent=2) + "\n")


def write_expected_readme(path: Path, torch_f32_off: dict, taesd_off: dict) -> None:
    rows = [
        ("weights/tiny_sd/", "tiny_sd", "f32 diffusers folder"),
        ("weights/tiny_sd_ldm.safetensors", "tiny_sd", "same f32 values, LDM names"),
        ("weights/tiny_sd_old_attn.safetensors", "tiny_sd", "same f32 values, old attention names"),
        ("weights/tiny_sd_f16.safetensors", "tiny_sd_f16", "f16"),
        ("weights/tiny_sd_ckpt.safetensors", "tiny_sd_f16", "identical f16 values, LDM names, `first_stage_model.`"),
        ("weights/tiny_sd_vae_prefix.safetensors", "tiny_sd_f16", "identical f16 values, `vae.` prefix"),
        ("weights/tiny_sd_bf16.safetensors", "tiny_sd_bf16", "bf16"),
        ("weights/tiny_flux/", "tiny_flux", "f32 diffusers folder, 16 latent channels"),
    ]
    taesd_rows = [
        ("weights/tiny_taesd/", "tiny_taesd", "f32 diffusers folder (AutoencoderTiny)"),
        ("weights/tiny_taesd_split/", "tiny_taesd", "same f32 values, madebyollin's two files"),
        ("weights/tiny_taesd_comfy_f16.safetensors", "tiny_taesd_f16", "f16, ComfyUI's combined layout"),
        ("weights/tiny_taef1/", "tiny_taef1", "f32 diffusers folder, 16 latent channels"),
    ]
    lines = [
        "# Expected outputs",
        "",
        "Written by `tools/make_fixtures.py`; see `../README.md`. `{variant}__{image}.safetensors` holds",
        "`mean` and `logvar` `[1, C, H/8, W/8]` (plus `decoded` `[1, 3, H, W]` for `tiny_sd` and",
        "`tiny_flux` on kodim03); `{variant}__{image}.png` is diffusers' postprocessing of the decode of",
        "the unscaled mean. Several weight files share one variant's expectations:",
        "",
        "| weights file | expected files | holds |",
        "|---|---|---|",
    ]
    lines += [f"| `{w}` | `{v}__kodim03.*`, `{v}__kodim04.*` | {h} |" for w, v, h in rows]
    crops = ", ".join(f"`{{v}}__{name}.*`" for name in TAESD_IMAGES)
    lines += [f"| `{w}` | {crops.format(v=v)} | {h} |" for w, v, h in taesd_rows]
    lines += [
        "",
        "The f16 and bf16 expectations run the rounded weights upcast to f32 (then f64, as all of them).",
        "`metrics.json`: PSNR / SSIM / max abs error of image pairs (see `../README.md`).",
        "",
        "All tensors are diffusers' forward pass in float64, rounded to float32. For scale, torch's own",
        "float32 CPU pass (same weights) differs from them by (max abs error):",
        "",
        "| variant | image | torch f32: mean, logvar | torch f32: decoded |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {v} | {s} | {off['latent']:.1e} | {off['decoded']:.1e} |" for (v, s), off in sorted(torch_f32_off.items())
    ]
    lines += [
        "",
        "TAESD variants (`latents`, and `decoded`: the decode of the stored `latents`):",
        "",
        "| variant | image | torch f32: latents | torch f32: decoded |",
        "|---|---|---|---|",
    ]
    lines += [f"| {v} | {s} | {off['latent']:.1e} | {off['decoded']:.1e} |" for (v, s), off in sorted(taesd_off.items())]
    lines += [
        "",
        "`tiny_taesd_to_tiny_sd__kodim03_160x128.png`: tiny_sd decoding tiny_taesd's latents divided by",
        "0.18215; `tiny_sd_to_tiny_taesd__kodim03_160x128.png`: tiny_taesd decoding tiny_sd's mean times",
        "0.18215 (what a diffusers pipeline does with one model encoding and the other decoding).",
        "",
    ]
    path.write_text("\n".join(lines))


# --------------------------------------------------------------------------- full size


def make_full_size(root: Path) -> None:
    """The real SD 1.x VAE shape with redrawn weights, for one image (not committed: ~330 MB), and
    the real TAESD shape (madebyollin/taesd's config: 64 channels) likewise (~10 MB)."""
    shutil.rmtree(root, ignore_errors=True)
    (root / "expected").mkdir(parents=True)
    model = build_vae(SD15_RANDOM)
    save_pretrained(model, root / "sd15_random")
    images = copy_images(root / "images")
    x = preprocess(load_rgb(images["kodim03"]))
    result, torch_f32_off = reference_outputs(model, x)
    write_expected(root / "expected", "sd15_random", "kodim03", result, with_decoded=True)
    print(f"  sd15_random   kodim03: {describe(result, torch_f32_off)}")
    taesd = build_tiny({}, seed=0)
    save_pretrained(taesd, root / "taesd_random")
    result, off = tiny_reference(taesd, x)
    safetensors.torch.save_file(result, root / "expected" / "taesd_random__kodim03.safetensors")
    print(
        f"  taesd_random  kodim03: latents std {result['latents'].std():.3f}, decoded std "
        f"{result['decoded'].std():.3f}; torch f32 off by {off['latent']:.1e} (latents), {off['decoded']:.1e} (decoded)"
    )
    print_sizes(root)


# --------------------------------------------------------------------------- main


def print_sizes(root: Path) -> None:
    total = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        size = path.stat().st_size
        total += size
        print(f"  {size / 1024:9.1f} KiB  {path.relative_to(root)}")
    print(f"  {total / 1024:9.1f} KiB  total")


def print_versions() -> None:
    print(
        f"torch {torch.__version__}, diffusers {diffusers.__version__}, safetensors {safetensors.__version__}, "
        f"numpy {np.__version__}, pillow {PIL.__version__}, scikit-image {skimage.__version__}, "
        f"python {sys.version.split()[0]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--full-size",
        nargs="?",
        const=str(REPO / "target" / "fixtures-full"),
        metavar="OUTDIR",
        help="write the real-size SD 1.x fixture into OUTDIR (default target/fixtures-full) instead",
    )
    args = parser.parse_args()

    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    # Silences ModelMixin.to()'s note on casting (no module of AutoencoderKL is kept in float32).
    diffusers.utils.logging.set_verbosity_error()
    print_versions()
    if args.full_size:
        out = Path(args.full_size)
        print(f"full-size fixture -> {out}")
        make_full_size(out)
    else:
        print(f"tiny fixtures -> {FIXTURES}")
        make_tiny_fixtures(FIXTURES)


if __name__ == "__main__":
    main()
