#!/usr/bin/env python3
"""Write the FLUX.2 and Qwen-Image / Wan 2.1 parity fixtures for the Rust `vae` crate.

    python3 tools/make_family_fixtures.py                  # rewrites tests/fixtures/families/ (committed)
    python3 tools/make_family_fixtures.py --full-size [DIR]  # real-size models and their outputs into DIR
                                                            # (default target/fixtures-full; never committed)

The house rules of tools/make_fixtures.py apply (and its helpers are imported from it): seeded,
CPU, two threads, deterministic algorithms; float32 weights, every parameter redrawn so that each
layer visibly changes the output; expected outputs are diffusers' own forward pass in float64
(`make_fixtures.REFERENCE_DTYPE`), stored as float32. A rerun with the versions pinned in
tools/requirements.txt (transformers among them: the diffusers pipeline modules import it) rewrites
byte-identical files. The configs are in tools/family_configs.py (shared with
tools/make_wan22_fixtures.py). tests/fixtures/families/README.md (written by this script) describes
the files.

The models are much narrower than the real ones so that the folder stays small (about 6 MB; at
FLUX.2 widths 32, 32, 64, 64 one f32 copy of the weights alone is 4.3 MB, and a Qwen-Image VAE at
base_dim 16 is 14 MB, and both families store their weights twice, in two layouts):

- flux2: an `AutoencoderKLFlux2` (4 blocks, 8x downscale, 32 latent channels, quant convs,
  mid-block attention, the 128-channel `bn` of FLUX.2) with widths 32, 32, 32, 64 and 32 GroupNorm
  groups (as real FLUX.2 files, which come without a config.json), plus a "small decoder" variant (decoder widths 32, 32, 32, 32)
  that shares the encoder, the quant conv and `bn` with it.
- qwen: an `AutoencoderKLQwenImage` with the real block structure (dim_mult 1, 2, 4, 4,
  num_res_blocks 2, temporal downsampling False, True, True, mid-block attention) at base_dim 4.
  `AutoencoderKLWan` (Wan 2.1) loads the same state dict; only its config.json is stored.

`--full-size DIR` writes (for the opt-in real-size tests and benchmarks, never into tests/) the
real-size models with seeded random weights, drawn the same way as the small ones, as diffusers
folders: DIR/flux2/ (AutoencoderKLFlux2 defaults: widths 128, 256, 512, 512, 2 layers per block,
32 latent channels, 32 groups; about 84M parameters; also as BFL's DIR/flux2_ae.safetensors) and
DIR/qwen/ (AutoencoderKLQwenImage defaults: base_dim 96, z_dim 16, dim_mult 1, 2, 4, 4, 2 res
blocks, the default latents_mean / latents_std; about 127M parameters), and diffusers' float64
outputs for both on a 256x256 crop of kodim03 (DIR/images/, DIR/expected/; see make_full_size).
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import PIL
import safetensors
import safetensors.torch
import torch

import diffusers
from diffusers import AutoencoderKLFlux2, AutoencoderKLQwenImage, AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, convert_wan_vae_to_diffusers
from diffusers.models.autoencoders.autoencoder_kl_qwenimage import QwenImageRMS_norm, QwenImageUpsample
from diffusers.pipelines.flux2.pipeline_flux2 import Flux2Pipeline
from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import QwenImageEditPipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (redraw_parameters, diffusers_to_ldm, pre/postprocess, ...)
from family_configs import FLUX2, FLUX2_FULL, FLUX2_SMALL_DECODER, QWEN_ARCH, QWEN_EXTRA, QWEN_FULL, WAN_EXTRA  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "fixtures" / "families"
KODAK = mf.KODAK
REFERENCE_DTYPE = mf.REFERENCE_DTYPE

# Crops of real photos, (width x height) multiples of 16: name -> (Kodak stem, box (left, top, right, bottom)).
IMAGES = {
    "kodim03_96x64": ("kodim03", (380, 240, 476, 304)),  # orange hat with "Bahama", green hat, wall
    "kodim07_80x112": ("kodim07", (548, 316, 628, 428)),  # red hibiscus and a leaf (portrait)
}

SEED_FLUX2, SEED_FLUX2_SMALL, SEED_QWEN = 0, 1, 2
# This script's folders of OUT: tools/make_wan22_fixtures.py writes wan22/ and qwenimage21/ beside them.
OWN = ("images", "flux2", "qwen", "wan")

# The crop the real-size models run on (--full-size): big enough for every level to see more than its
# borders (16 x 16 at FLUX.2's and Qwen-Image's latent), small enough for a float64 pass on 2 cores.
FULL_IMAGE = ("kodim03_256x256", ("kodim03", (256, 128, 512, 384)))

# Gain on the Qwen decoder's last conv: keeps the decoded image mostly inside diffusers' [-1, 1]
# clamp, with a few percent of the values clamped (see the printed summary).
QWEN_DECODER_OUT_GAIN = 0.8


# --------------------------------------------------------------------------- small helpers


def _randn(shape, g: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=g, dtype=torch.float32)


def _rand(shape, g: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=g, dtype=torch.float32)


def state_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    safetensors.torch.save_file(tensors, path)
    mf.assert_same_state(safetensors.torch.load_file(path), tensors, str(path.relative_to(OUT)))


def make_images(folder: Path) -> dict[str, torch.Tensor]:
    """Crop the Kodak photos into images/ and return diffusers' preprocessing of each ([1, 3, H, W] f32)."""
    folder.mkdir(parents=True)
    inputs = {}
    for name, (stem, box) in IMAGES.items():
        path = folder / f"{name}.png"
        mf.load_rgb(KODAK / f"{stem}.png").crop(box).save(path)
        image = mf.load_rgb(path)
        w, h = image.size
        assert f"{w}x{h}" in name and w % 16 == 0 and h % 16 == 0, name
        inputs[name] = mf.preprocess(image)  # asserts it equals (v / 255) * 2 - 1 in float32
    return inputs


# --------------------------------------------------------------------------- FLUX.2


def build_flux2(config: dict, seed: int) -> AutoencoderKLFlux2:
    """Seeded AutoencoderKLFlux2 with every parameter redrawn and seeded `bn` running statistics."""
    torch.manual_seed(seed)
    model = AutoencoderKLFlux2(**config)
    g = torch.Generator().manual_seed(seed)
    mf.redraw_parameters(model, g)
    with torch.no_grad():
        n = model.bn.num_features
        model.bn.running_mean.copy_(0.5 * _randn((n,), g))
        model.bn.running_var.copy_(0.5 + 1.5 * _rand((n,), g))
    # bn.num_batches_tracked stays diffusers' int64 scalar 0 (the pipeline never reads it).
    return model.float().eval()


def build_flux2_small_decoder(big: AutoencoderKLFlux2) -> AutoencoderKLFlux2:
    """The small-decoder variant: its own seeded decoder and post_quant_conv, and the big model's
    encoder, quant_conv and bn (so it encodes to the same latents, as FLUX.2's small decoder does)."""
    model = build_flux2(FLUX2_SMALL_DECODER, SEED_FLUX2_SMALL)
    shared = {k: v for k, v in state_of(big).items() if k.split(".")[0] in ("encoder", "quant_conv", "bn")}
    missing, unexpected = model.load_state_dict(shared, strict=False)
    assert not unexpected and all(k.split(".")[0] in ("decoder", "post_quant_conv") for k in missing)
    return model.float().eval()


def flux2_to_bfl(state: dict[str, torch.Tensor], num_blocks: int) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKLFlux2 keys -> BFL's original FLUX.2 `ae.safetensors` layout: the
    CompVis / LDM names of make_fixtures.diffusers_to_ldm, with the quant convs nested as
    `encoder.quant_conv.*` / `decoder.post_quant_conv.*`; `bn.*` unchanged."""
    out = {}
    for key, tensor in mf.diffusers_to_ldm(state, num_blocks).items():
        if key.startswith("quant_conv."):
            key = "encoder." + key
        elif key.startswith("post_quant_conv."):
            key = "decoder." + key
        out[key] = tensor
    assert len(out) == len(state)
    return out


def check_bfl_with_diffusers(bfl: dict, state: dict, config: dict) -> None:
    """diffusers' own single-file converter (after lifting the nested quant convs) must give back
    the diffusers state dict; the bn buffers, which it does not know, must be there unchanged."""
    lifted = {}
    for key, tensor in bfl.items():
        if key.startswith("encoder.quant_conv.") or key.startswith("decoder.post_quant_conv."):
            key = key.partition(".")[2]
        lifted[key] = tensor
    back = convert_ldm_vae_checkpoint(lifted, config)
    bn = {k: v for k, v in bfl.items() if k.startswith("bn.")}
    assert not set(bn) & set(back)
    mf.assert_same_state(back | bn, state, "convert_ldm_vae_checkpoint(flux2 ae)")
    model = AutoencoderKLFlux2(**config)
    model.load_state_dict(back | bn, strict=True)


@torch.no_grad()
def run_flux2(model: AutoencoderKLFlux2, x: torch.Tensor, decode_from: torch.Tensor | None = None) -> dict:
    """Posterior mean / clamped logvar, the pipeline's normalised latents, and the decode of the mean
    rounded to float32 (or of `decode_from`), all in the model's dtype."""
    dtype = next(model.parameters()).dtype
    x = x.to(dtype)
    posterior = model.encode(x).latent_dist
    # Flux2Pipeline._encode_vae_image itself: mode() -> _patchify_latents -> (x - bn mean) / sqrt(bn var + eps).
    pipe = SimpleNamespace(vae=model, _patchify_latents=Flux2Pipeline._patchify_latents)
    normalized = Flux2Pipeline._encode_vae_image(pipe, x, generator=None)
    own = (Flux2Pipeline._patchify_latents(posterior.mean) - model.bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(
        model.bn.running_var.view(1, -1, 1, 1) + model.config.batch_norm_eps
    )
    assert torch.allclose(normalized, own, rtol=0, atol=1e-12 if dtype == torch.float64 else 1e-5)
    z = posterior.mean.float() if decode_from is None else decode_from
    decoded = model.decode(z.to(dtype)).sample
    return {"mean": posterior.mean, "logvar": posterior.logvar, "normalized": normalized, "decoded": decoded}


# --------------------------------------------------------------------------- Qwen-Image / Wan 2.1


def latent_stats(seed: int, z_dim: int) -> tuple[list[float], list[float]]:
    """Seeded per-channel latents_mean ~ 0.5 N(0, 1) and latents_std ~ U(0.8, 3), 4 decimals like the real configs."""
    g = torch.Generator().manual_seed(seed)
    mean = [round(float(v), 4) for v in 0.5 * _randn((z_dim,), g)]
    std = [round(float(v), 4) for v in 0.8 + 2.2 * _rand((z_dim,), g)]
    return mean, std


def redraw_qwen(model: torch.nn.Module, g: torch.Generator) -> None:
    """Every parameter of a Qwen-Image / Wan VAE, in `named_modules` order from one generator:

    conv weights (Conv2d and the causal Conv3d, all temporal taps, time_conv included)
    ~ N(0, 1/fan_in) with fan_in = in_channels * kh * kw (the taps one frame sees: a single frame
    only meets the last temporal tap of a 3-tap causal conv); RMS-norm gamma ~ 1 + 0.1 N(0, 1);
    every bias ~ 0.05 N(0, 1). Then the decoder's last conv x QWEN_DECODER_OUT_GAIN."""
    seen = set()
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d)):
                w = module.weight
                fan_in = w.shape[1] * w.shape[-2] * w.shape[-1]
                w.copy_(_randn(w.shape, g) / fan_in**0.5)
                seen.add(f"{name}.weight")
                if module.bias is not None:
                    module.bias.copy_(0.05 * _randn(module.bias.shape, g))
                    seen.add(f"{name}.bias")
            elif isinstance(module, QwenImageRMS_norm) or type(module).__name__ == "WanRMS_norm":
                module.gamma.copy_(1.0 + 0.1 * _randn(module.gamma.shape, g))
                seen.add(f"{name}.gamma")
                assert not isinstance(module.bias, torch.nn.Parameter)
        model.decoder.conv_out.weight.mul_(QWEN_DECODER_OUT_GAIN)
    missed = set(dict(model.named_parameters())) - seen
    assert not missed, f"parameters not redrawn: {sorted(missed)}"


def build_qwen(config: dict, seed: int) -> AutoencoderKLQwenImage:
    torch.manual_seed(seed)
    model = AutoencoderKLQwenImage(**config)
    redraw_qwen(model, torch.Generator().manual_seed(seed))
    return model.float().eval()


_WAN_RESIDUAL = {"norm1.gamma": "residual.0.gamma", "conv1": "residual.2", "norm2.gamma": "residual.3.gamma",
                 "conv2": "residual.6", "conv_shortcut": "shortcut"}  # fmt: skip


def _wan_resnet(rest: str) -> str:
    """`norm1.gamma` -> `residual.0.gamma`, `conv1.weight` -> `residual.2.weight`, ..."""
    for new, old in _WAN_RESIDUAL.items():
        if rest == new or rest.startswith(new + "."):
            return old + rest[len(new) :]
    raise KeyError(rest)


def qwen_key_to_wan21(key: str, num_res_blocks: int) -> str:
    """A diffusers AutoencoderKLQwenImage / AutoencoderKLWan key -> the original Wan 2.1 VAE key
    (the names diffusers' convert_wan_vae_to_diffusers converts from)."""
    top = {"quant_conv": "conv1", "post_quant_conv": "conv2"}
    part, _, rest = key.partition(".")
    if part in top:
        return f"{top[part]}.{rest}"
    assert part in ("encoder", "decoder"), key
    head, _, tail = rest.partition(".")
    if head == "conv_in":
        return f"{part}.conv1.{tail}"
    if head == "norm_out":
        return f"{part}.head.0.{tail}"
    if head == "conv_out":
        return f"{part}.head.2.{tail}"
    if rest.startswith("mid_block.resnets."):
        index, _, tail = rest.removeprefix("mid_block.resnets.").partition(".")
        return f"{part}.middle.{2 * int(index)}.{_wan_resnet(tail)}"
    if rest.startswith("mid_block.attentions.0."):
        return f"{part}.middle.1.{rest.removeprefix('mid_block.attentions.0.')}"
    if part == "encoder" and head == "down_blocks":
        # One flat list in both layouts: resnets, then a resample per level (whose resample.1 and
        # time_conv keep their names).
        index, _, tail = tail.partition(".")
        if tail.startswith("resample.") or tail.startswith("time_conv."):
            return f"encoder.downsamples.{index}.{tail}"
        return f"encoder.downsamples.{index}.{_wan_resnet(tail)}"
    if part == "decoder" and head == "up_blocks":
        # diffusers nests (num_res_blocks + 1 resnets, upsampler) per block; Wan 2.1 has one flat list.
        block, _, tail = tail.partition(".")
        stride = num_res_blocks + 2
        if tail.startswith("upsamplers.0."):
            return f"decoder.upsamples.{stride * int(block) + num_res_blocks + 1}.{tail.removeprefix('upsamplers.0.')}"
        assert tail.startswith("resnets."), key
        index, _, tail = tail.removeprefix("resnets.").partition(".")
        return f"decoder.upsamples.{stride * int(block) + int(index)}.{_wan_resnet(tail)}"
    raise KeyError(key)


def qwen_to_wan21(state: dict[str, torch.Tensor], num_res_blocks: int) -> dict[str, torch.Tensor]:
    out = {qwen_key_to_wan21(k, num_res_blocks): v.contiguous() for k, v in state.items()}
    assert len(out) == len(state), "two diffusers keys mapped onto one Wan 2.1 key"
    return out


@torch.no_grad()
def run_qwen(model: torch.nn.Module, x: torch.Tensor) -> dict:
    """Qwen-Image VAE on one image as one frame ([1, 3, 1, H, W]): posterior mean and clamped logvar,
    the edit pipeline's normalised latents, and decode() of the mean rounded to float32; T squeezed."""
    dtype = next(model.parameters()).dtype
    x5 = x.to(dtype).unsqueeze(2)
    posterior = model.encode(x5).latent_dist
    # QwenImageEditPipeline._encode_vae_image itself: mode(), then (x - latents_mean) / latents_std with
    # the config lists made float32 tensors (torch.tensor) and cast to the latents' dtype.
    pipe = SimpleNamespace(vae=model, latent_channels=model.config.z_dim)
    normalized = QwenImageEditPipeline._encode_vae_image(pipe, x5, generator=None)
    # The img2img / inpaint pipelines write it as (x - mean) * (1 / std): equal to below float32 resolution.
    m = torch.tensor(model.config.latents_mean).view(1, -1, 1, 1, 1).to(dtype)
    s = torch.tensor(model.config.latents_std).view(1, -1, 1, 1, 1).to(dtype)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert torch.allclose(normalized, (posterior.mean - m) * (1.0 / s), rtol=tol, atol=tol)
    decoded = model.decode(posterior.mean.float().to(dtype)).sample
    out = {"mean": posterior.mean, "logvar": posterior.logvar, "normalized": normalized, "decoded": decoded}
    for k, v in out.items():
        assert v.shape[2] == 1, (k, v.shape)
    return {k: v.squeeze(2) for k, v in out.items()}


# --------------------------------------------------------------------------- reference vs torch float32


def reference(run, model: torch.nn.Module, x: torch.Tensor) -> tuple[dict, dict]:
    """`run` in REFERENCE_DTYPE (stored as float32), and how far diffusers' own float32 pass of the
    same weights is from it (max abs): `mean`, `logvar`, `decoded` (the float32 pass decoding its own
    mean, as make_fixtures.py measures) and `decoded_from_stored_mean` (decoding the stored mean)."""
    ref = run(copy.deepcopy(model).to(REFERENCE_DTYPE), x)
    ref = {k: v.float().contiguous() for k, v in ref.items()}
    f32 = run(model, x)
    off = {k: max_abs(f32[k], ref[k]) for k in ("mean", "logvar", "normalized", "decoded")}
    if run is run_flux2:
        from_stored = run_flux2(model, x, decode_from=ref["mean"])["decoded"]
        off["decoded_from_stored_mean"] = max_abs(from_stored, ref["decoded"])
    else:
        mean5 = ref["mean"].unsqueeze(2)
        with torch.no_grad():
            off["decoded_from_stored_mean"] = max_abs(model.decode(mean5).sample.squeeze(2), ref["decoded"])
    return ref, off


# --------------------------------------------------------------------------- families


def make_flux2(root: Path, inputs: dict) -> dict:
    (root / "expected").mkdir(parents=True)
    big = build_flux2(FLUX2, SEED_FLUX2)
    small = build_flux2_small_decoder(big)
    config = dict(big.config)
    state = state_of(big)

    mf.save_pretrained(big, root / "diffusers")
    mf.save_pretrained(small, root / "small_decoder")
    weights = root / "diffusers" / "diffusion_pytorch_model.safetensors"
    mf.assert_same_state(safetensors.torch.load_file(weights), state, "flux2/diffusers")
    small_state = state_of(small)
    mf.assert_same_state(
        safetensors.torch.load_file(root / "small_decoder" / "diffusion_pytorch_model.safetensors"),
        small_state,
        "flux2/small_decoder",
    )
    for k, v in state.items():
        if k.split(".")[0] in ("encoder", "quant_conv", "bn"):
            assert torch.equal(small_state[k], v), k

    bfl = flux2_to_bfl(state, len(config["block_out_channels"]))
    check_bfl_with_diffusers(bfl, state, config)
    save_tensors(bfl, root / "ae.safetensors")

    summary = {}
    for stem, x in inputs.items():
        ref, off = reference(run_flux2, big, x)
        save_tensors(ref, root / "expected" / f"{stem}.safetensors")
        mf.postprocess(ref["decoded"]).save(root / "expected" / f"{stem}.png")
        # The small decoder decodes the big model's stored mean (same encoder, same latent space).
        small64 = copy.deepcopy(small).to(REFERENCE_DTYPE)
        with torch.no_grad():
            assert torch.equal(small64.encode(x.to(REFERENCE_DTYPE)).latent_dist.mean.float(), ref["mean"])
            small_decoded = small64.decode(ref["mean"].to(REFERENCE_DTYPE)).sample.float().contiguous()
            small_off = max_abs(small.decode(ref["mean"]).sample, small_decoded)
        save_tensors({"decoded": small_decoded}, root / "expected" / f"small_decoder_{stem}.safetensors")
        mf.postprocess(small_decoded).save(root / "expected" / f"small_decoder_{stem}.png")
        summary[stem] = {"ref": ref, "off": off, "small_decoded": small_decoded, "small_off": small_off}
    return summary


def make_qwen(root_qwen: Path, root_wan: Path, inputs: dict) -> dict:
    (root_qwen / "expected").mkdir(parents=True)
    latents_mean, latents_std = latent_stats(SEED_QWEN, QWEN_ARCH["z_dim"])
    qwen_config = dict(QWEN_ARCH, **QWEN_EXTRA, latents_mean=latents_mean, latents_std=latents_std)
    wan_config = dict(QWEN_ARCH, **WAN_EXTRA, latents_mean=latents_mean, latents_std=latents_std)
    model = build_qwen(qwen_config, SEED_QWEN)
    state = state_of(model)

    mf.save_pretrained(model, root_qwen / "diffusers")
    weights = root_qwen / "diffusers" / "diffusion_pytorch_model.safetensors"
    mf.assert_same_state(safetensors.torch.load_file(weights), state, "qwen/diffusers")
    wan21 = qwen_to_wan21(state, QWEN_ARCH["num_res_blocks"])
    mf.assert_same_state(convert_wan_vae_to_diffusers(dict(wan21)), state, "convert_wan_vae_to_diffusers(wan21)")
    save_tensors(wan21, root_qwen / "wan21_original.safetensors")

    # Wan 2.1: same architecture, same key names, same numbers.
    wan = AutoencoderKLWan(**wan_config)
    wan.load_state_dict(state, strict=True)
    wan = wan.float().eval()
    mf.assert_same_state(state_of(wan), state, "AutoencoderKLWan state")
    first = next(iter(inputs.values()))
    a, b = run_qwen(model, first), run_qwen(wan, first)
    for k in a:
        assert torch.equal(a[k], b[k]), f"AutoencoderKLWan {k} differs from AutoencoderKLQwenImage"
    wan.save_config(root_wan / "diffusers")

    summary = {}
    for stem, x in inputs.items():
        ref, off = reference(run_qwen, model, x)
        save_tensors(ref, root_qwen / "expected" / f"{stem}.safetensors")
        mf.postprocess(ref["decoded"]).save(root_qwen / "expected" / f"{stem}.png")
        summary[stem] = {"ref": ref, "off": off, "cast_effect": upsample_cast_effect(model, x, ref)}
    return summary


def upsample_cast_effect(model: AutoencoderKLQwenImage, x: torch.Tensor, ref: dict) -> float:
    """How much `QwenImageUpsample`'s float32 round trip moves the float64 `decoded`: the reference
    again with the interpolation left in float64 (a measurement only; the stored tensors keep diffusers' code)."""
    original = QwenImageUpsample.forward
    QwenImageUpsample.forward = lambda self, t: torch.nn.Upsample.forward(self, t)
    try:
        pure = run_qwen(copy.deepcopy(model).to(REFERENCE_DTYPE), x)
    finally:
        QwenImageUpsample.forward = original
    assert torch.equal(pure["mean"].float(), ref["mean"])
    return max_abs(pure["decoded"], ref["decoded"])


# --------------------------------------------------------------------------- report


def sizes(root: Path) -> list[tuple[str, int]]:
    return [(str(p.relative_to(root)), p.stat().st_size) for p in sorted(root.rglob("*")) if p.is_file()]


def describe(ref: dict) -> str:
    lv, dec = ref["logvar"], ref["decoded"]
    clamped = int(((lv <= -30.0) | (lv >= 20.0)).sum())
    return (
        f"mean std {ref['mean'].std():.3f}, logvar [{lv.min():.2f}, {lv.max():.2f}] ({clamped} clamped), "
        f"normalized std {ref['normalized'].std():.3f}, decoded [{dec.min():.3f}, {dec.max():.3f}] std "
        f"{dec.std():.3f}, {100 * float((dec.abs() >= 1).float().mean()):.1f}% at or beyond +-1"
    )


def versions() -> str:
    import transformers

    return (
        f"python {sys.version.split()[0]}, torch {torch.__version__} (CPU, 2 threads), diffusers "
        f"{diffusers.__version__}, transformers {transformers.__version__}, safetensors {safetensors.__version__}, "
        f"numpy {np.__version__}, pillow {PIL.__version__}"
    )


def shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(d) for d in t.shape) + "]"


def write_readme(path: Path, flux2: dict, qwen: dict) -> None:
    stems = list(IMAGES)
    f2 = {s: flux2[s]["ref"] for s in stems}
    qw = {s: qwen[s]["ref"] for s in stems}
    n = lambda v: f"{v:.1e}"  # noqa: E731
    qwen_cfg = json.loads((OUT / "qwen" / "diffusers" / "config.json").read_text())
    lines = [
        "# FLUX.2 and Qwen-Image / Wan 2.1 fixtures",
        "",
        "Written by `tools/make_family_fixtures.py` (do not edit by hand):",
        "",
        "    python3 tools/make_family_fixtures.py     # rewrites tests/fixtures/families/",
        "",
        f"Produced with {versions()}. A rerun with these versions rewrites byte-identical files.",
        "transformers is only imported by the diffusers pipeline modules whose own normalisation code the",
        "script calls.",
        "",
        "Same rules as `../README.md`: seeded random weights (float32), every parameter redrawn so that each",
        "layer matters; expected tensors are diffusers' forward pass in float64, stored as float32; input",
        "images go through diffusers' `VaeImageProcessor.preprocess`: exactly `x = (v / 255) * 2 - 1` in float32,",
        "[1, 3, H, W] (the sizes are multiples of 16, so nothing is resized); every PNG under `expected/` is",
        "`VaeImageProcessor.postprocess` of the stored `decoded` (`clamp(x / 2 + 0.5, 0, 1) * 255`, rounded),",
        "i.e. what `vae decode` should write.",
        "",
        "## images/",
        "",
        "| file | crop of | box (left, top, right, bottom) |",
        "|---|---|---|",
    ]
    lines += [f"| `images/{name}.png` | Kodak `{stem}.png` | {box} |" for name, (stem, box) in IMAGES.items()]
    lines += [
        "",
        "## flux2/ (`AutoencoderKLFlux2`)",
        "",
        "Config: `block_out_channels` [32, 32, 32, 64], `layers_per_block` 1, `latent_channels` 32,",
        "`norm_num_groups` 32, quant convs on, mid-block attention on, `batch_norm_eps` 1e-4,",
        "`patch_size` [2, 2] (so `bn` has 128 channels), SiLU, 4 `DownEncoderBlock2D` / `UpDecoderBlock2D`",
        "(8x downscale). The real FLUX.2 VAE has widths 128, 256, 512, 512, 32 groups, 2 layers per block;",
        "these are narrower only to keep the files small. Seed 0; conv and linear weights ~ N(0, 1/fan_in),",
        "GroupNorm weights 1 + 0.1 N(0, 1), biases 0.05 N(0, 1) (`make_fixtures.redraw_parameters`);",
        "`bn.running_mean` ~ 0.5 N(0, 1), `bn.running_var` ~ U(0.5, 2), `bn.num_batches_tracked` the int64",
        "scalar (shape []) 0 that diffusers initialises (nothing reads it).",
        "",
        "| file | what |",
        "|---|---|",
        "| `flux2/diffusers/` | `config.json` + `diffusion_pytorch_model.safetensors` (`save_pretrained`, f32; bn buffers f32 + the i64 scalar) |",
        "| `flux2/ae.safetensors` | the same tensors in BFL's original FLUX.2 layout (see below) |",
        "| `flux2/small_decoder/` | diffusers folder, `decoder_block_out_channels` [32, 32, 32, 32]: the \"small decoder\" variant. Its `encoder`, `quant_conv` and `bn` are the tensors of `flux2/diffusers` (it encodes to the same latents); `decoder` and `post_quant_conv` are its own (seed 1) |",
        "| `flux2/expected/{image}.safetensors` | `mean`, `logvar`, `normalized`, `decoded` (below) |",
        "| `flux2/expected/{image}.png` | postprocessed `decoded` |",
        "| `flux2/expected/small_decoder_{image}.safetensors` | `decoded`: the small decoder's decode of the stored `mean` |",
        "| `flux2/expected/small_decoder_{image}.png` | postprocessed |",
        "",
        "Tensors (float32; h = H/8, w = W/8):",
        "",
        "- `mean`, `logvar` [1, 32, h, w]: `vae.encode(x).latent_dist` (`quant_conv` applied; `logvar` clamped to",
        "  [-30, 20] by `DiagonalGaussianDistribution`; the first 32 channels of the moments are the mean).",
        "- `normalized` [1, 128, h/2, w/2]: `Flux2Pipeline._encode_vae_image` (called as is): `mode()` (= mean),",
        "  `_patchify_latents`, then `(x - bn.running_mean) / sqrt(bn.running_var + batch_norm_eps)`, eps 1e-4 from",
        "  the config. Patchify: output channel `c * 4 + dy * 2 + dx` at (i, j) is latent channel c at",
        "  (2i + dy, 2j + dx). The VAE's own forward never applies `bn`; only the pipeline does.",
        "- `decoded` [1, 3, H, W]: `vae.decode(mean)`, the stored float32 `mean`, unclamped (`post_quant_conv` applied).",
        "",
    ]
    for s in stems:
        lines.append(f"- `{s}`: mean {shape(f2[s]['mean'])}, normalized {shape(f2[s]['normalized'])}, decoded {shape(f2[s]['decoded'])}")
    lines += [
        "",
        "`ae.safetensors` names: make_fixtures' diffusers -> LDM table (`../README.md`: `down.i.block.j`,",
        "`down.i.downsample.conv`, `up.{3-i}.block.j` / `up.{3-i}.upsample.conv` (reversed), `mid.block_1` /",
        "`mid.attn_1` / `mid.block_2`, attention `q` / `k` / `v` / `proj_out` as [C, C, 1, 1] conv weights,",
        "`norm_out`, `nin_shortcut`), with `quant_conv.*` -> `encoder.quant_conv.*`, `post_quant_conv.*` ->",
        "`decoder.post_quant_conv.*`, and `bn.running_mean`, `bn.running_var`, `bn.num_batches_tracked` as they",
        "are. Checked: lifting the two quant convs back to the top level and running diffusers'",
        "`convert_ldm_vae_checkpoint` gives exactly the diffusers state dict (plus the untouched `bn.*`), and",
        "that loads strictly into `AutoencoderKLFlux2`.",
        "",
        "## qwen/ (`AutoencoderKLQwenImage`) and wan/ (`AutoencoderKLWan`, Wan 2.1)",
        "",
        "Config: `base_dim` 4, `z_dim` 16, `dim_mult` [1, 2, 4, 4], `num_res_blocks` 2, `attn_scales` [],",
        "`temperal_downsample` [False, True, True] (8x spatial downscale; mid-block attention always there).",
        "The real block structure (the real VAEs have base_dim 96), narrow to keep the files small. Seeded",
        "(seed 2) random `latents_mean` ~ 0.5 N(0, 1) and `latents_std` ~ U(0.8, 3), 4 decimals, in config.json:",
        "",
        f"    latents_mean = {qwen_cfg['latents_mean']}",
        f"    latents_std  = {qwen_cfg['latents_std']}",
        "",
        "Weights: causal Conv3d / Conv2d weights ~ N(0, 1/fan_in) with fan_in = in_channels * kh * kw (all",
        "three temporal taps drawn, and the `time_conv`s too, although one frame never reaches them), RMS-norm",
        f"`gamma` 1 + 0.1 N(0, 1), biases 0.05 N(0, 1); then `decoder.conv_out.weight` x {QWEN_DECODER_OUT_GAIN}.",
        "",
        "| file | what |",
        "|---|---|",
        "| `qwen/diffusers/` | `config.json` + `diffusion_pytorch_model.safetensors` (`save_pretrained`, f32) |",
        "| `qwen/wan21_original.safetensors` | the same tensors under the original Wan 2.1 VAE names (below) |",
        "| `wan/diffusers/config.json` | `AutoencoderKLWan` config with the same values (`is_residual` false, `patch_size` null, `decoder_base_dim` null). No weights file: its state dict is key for key and bit for bit the one in `qwen/diffusers/diffusion_pytorch_model.safetensors`; a test copies that file next to this config |",
        "| `qwen/expected/{image}.safetensors` | `mean`, `logvar`, `normalized`, `decoded` (below) |",
        "| `qwen/expected/{image}.png` | postprocessed `decoded` |",
        "",
        "The script checks that `AutoencoderKLWan(**wan config)` loads the Qwen state dict with `strict=True`",
        f"and gives bit-identical mean, logvar and decoded (float32) on `{stems[0]}`: Wan 2.1 and Qwen-Image",
        "share the architecture and the key names; the wan/ expectations are the qwen/ ones.",
        "",
        "The VAE input is 5D: `x.unsqueeze(2)`, [1, 3, 1, H, W]. Tensors (float32; the T = 1 axis squeezed):",
        "",
        "- `mean`, `logvar` [1, 16, h, w]: `vae.encode(x5).latent_dist` (`quant_conv` applied; logvar clamped to",
        "  [-30, 20]; the first 16 channels of the moments are the mean).",
        "- `normalized` [1, 16, h, w]: `QwenImageEditPipeline._encode_vae_image` (called as is): `mode()`, then",
        "  `(x - latents_mean) / latents_std` per channel, the lists made float32 tensors by `torch.tensor`",
        "  (then cast to the latents' dtype). The img2img / inpaint pipelines write `(x - mean) * (1 / std)`",
        "  (same to float32 resolution); `pipeline_qwenimage` decodes with `latents / (1 / std) + mean`.",
        "- `decoded` [1, 3, H, W]: `vae.decode(mean5).sample` for the stored float32 mean as [1, 16, 1, h, w]:",
        "  clamped to [-1, 1] by diffusers' `_decode`.",
        "",
    ]
    for s in stems:
        lines.append(f"- `{s}`: mean {shape(qw[s]['mean'])}, normalized {shape(qw[s]['normalized'])}, decoded {shape(qw[s]['decoded'])}")
    lines += [
        "",
        "Wan 2.1 names (`qwen/wan21_original.safetensors`), as `convert_wan_vae_to_diffusers` reads them",
        "(checked: it turns the file back into exactly the diffusers state dict):",
        "",
        "| diffusers | Wan 2.1 |",
        "|---|---|",
        "| `quant_conv` / `post_quant_conv` | `conv1` / `conv2` |",
        "| `{encoder,decoder}.conv_in` | `{encoder,decoder}.conv1` |",
        "| `{encoder,decoder}.norm_out.gamma` / `.conv_out` | `.head.0.gamma` / `.head.2` |",
        "| `*.mid_block.resnets.0` / `.attentions.0` / `.resnets.1` | `*.middle.0` / `.middle.1` / `.middle.2` |",
        "| resnet `norm1.gamma` / `conv1` / `norm2.gamma` / `conv2` / `conv_shortcut` | `residual.0.gamma` / `residual.2` / `residual.3.gamma` / `residual.6` / `shortcut` |",
        "| `encoder.down_blocks.k` (flat: 2 resnets, then a resample, per level) | `encoder.downsamples.k` (same k; `resample.1`, `time_conv` unchanged) |",
        "| `decoder.up_blocks.i.resnets.j` | `decoder.upsamples.{4i + j}` |",
        "| `decoder.up_blocks.i.upsamplers.0.` (`resample.1`, `time_conv`) | `decoder.upsamples.{4i + 3}.` |",
        "| attention `norm.gamma` [C, 1, 1], `to_qkv` [3C, C, 1, 1], `proj` [C, C, 1, 1] | unchanged |",
        "",
        "## What diffusers does that an implementation must match",
        "",
        "FLUX.2 (`AutoencoderKLFlux2` runs the `Encoder` / `Decoder` of `AutoencoderKL`):",
        "",
        "- GroupNorm eps 1e-6 everywhere (resnets, attention, `norm_out`); SiLU. Downsample: zero pad",
        "  (left 0, right 1, top 0, bottom 1), then a 3x3 stride-2 conv without padding. Upsample: nearest 2x",
        "  (`F.interpolate(mode=\"nearest\")`), then a 3x3 conv. The decoder has `layers_per_block + 1` resnets",
        "  per block and takes its widths from `decoder_block_out_channels` when set (reversed, like",
        "  `block_out_channels`).",
        "- Mid-block attention: one head of width C, scale 1/sqrt(C), residual added, output not rescaled.",
        "  `to_k.bias` cannot change the output (a per-query constant under softmax), so no test here can",
        "  catch a wrong one.",
        "- `logvar` is clamped to [-30, 20]; `decode` does not clamp. `bn` is never applied by the VAE itself;",
        "  the pipeline normalises with the config's `batch_norm_eps` (1e-4, not BatchNorm's 1e-5) and",
        "  `running_var + eps` under the square root.",
        "",
        "Qwen-Image / Wan 2.1 (one frame):",
        "",
        "- Causal 3D convs pad time with 2 * p zero frames in front and none behind (spatial: zeros, p each",
        "  side), so a single frame only meets the last temporal tap: a 3x3x3 conv is the 2D conv",
        "  `weight[:, :, 2]`; 1x1x1 convs (`quant_conv`, `post_quant_conv`, shortcuts) are 1x1 convs.",
        "- The `time_conv`s of the temporal down / upsamplers are never run on the first frame (diffusers",
        "  caches the frame instead, or marks it `Rep`), so for one image they are skipped entirely; their",
        "  weights are still in every file ([C, C, 3, 1, 1] down, [2C, C, 3, 1, 1] up).",
        "- RMS norm: `x / max(||x||_2, 1e-12) * sqrt(C) * gamma` with the norm over the channels of each pixel;",
        "  no mean subtraction, no bias.",
        "- Resnet: `shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))))))` (shortcut a 1x1x1 conv when the",
        "  widths differ, else identity). Downsample: zero pad (0, 1, 0, 1), 3x3 stride-2 conv, no padding.",
        "  Upsample: `nearest-exact` 2x (the same pixels as nearest at 2x), then a 3x3 conv to C/2 channels;",
        "  the next block's first resnet takes C/2 inputs. Decoder blocks have `num_res_blocks + 1` resnets.",
        "- Mid-block attention, per frame: RMS norm, `to_qkv` 1x1 conv whose output channels are q = [0, C),",
        "  k = [C, 2C), v = [2C, 3C); one head, scale 1/sqrt(C); `proj` 1x1 conv; residual added.",
        "- The encoder ends at 2 * z_dim channels; after `quant_conv` the first z_dim are the mean. `decode`",
        "  applies `post_quant_conv`, the decoder, then clamps to [-1, 1].",
        "- `QwenImageUpsample` runs the interpolation in float32 (`x.float()`, then back), so the float64",
        "  reference rounds the upsamplers' inputs to float32. Measured against a pure float64 upsample, that",
        f"  moves `decoded` by at most {n(max(qwen[s]['cast_effect'] for s in stems))} here, far below what a float32 implementation needs (table below).",
        "",
        "## How far torch's float32 pass is from these",
        "",
        "Max abs difference between diffusers' own float32 CPU pass (same float32 weights) and the stored",
        "float64 reference. `decoded (own mean)` decodes the float32 pass's own mean (as `../README.md` measures);",
        "`decoded (stored mean)` decodes the stored `mean`, as a decode test does.",
        "",
        "| family | image | mean | logvar | normalized | decoded (own mean) | decoded (stored mean) |",
        "|---|---|---|---|---|---|---|",
    ]
    for family, summary in (("flux2", flux2), ("qwen", qwen)):
        for s in stems:
            o = summary[s]["off"]
            lines.append(
                f"| {family} | {s} | {n(o['mean'])} | {n(o['logvar'])} | {n(o['normalized'])} | {n(o['decoded'])} | "
                f"{n(o['decoded_from_stored_mean'])} |"
            )
    for s in stems:
        lines.append(f"| flux2 small_decoder | {s} | | | | | {n(flux2[s]['small_off'])} |")
    lines += [
        "",
        "Output statistics (a sanity check that no layer saturates):",
        "",
    ]
    for family, summary in (("flux2", flux2), ("qwen", qwen)):
        for s in stems:
            lines.append(f"- {family} `{s}`: {describe(summary[s]['ref'])}")
    lines += ["", "## Sizes", "", "| file | bytes |", "|---|---|"]
    listing = [(f, b) for f, b in sizes(OUT) if f.split("/")[0] in OWN]
    lines += [f"| `{f}` | {b} |" for f, b in listing]
    lines += [f"| total (without this README) | {sum(b for _, b in listing)} |", ""]
    path.write_text("\n".join(lines))


# --------------------------------------------------------------------------- full size


def make_full_size(root: Path) -> None:
    """Real-size FLUX.2 and Qwen-Image VAEs with seeded random weights under root (not committed:
    about 1.1 GiB in all), and diffusers' outputs on one crop for the opt-in tests of
    tests/families.rs (`full_size_*`): root/flux2/ and root/qwen/ (diffusers folders),
    root/flux2_ae.safetensors (BFL's layout of the same FLUX.2 tensors), root/images/FULL_IMAGE.png,
    root/expected/{flux2,qwen}__FULL_IMAGE.safetensors (`mean`, `logvar`, `normalized`, `decoded`,
    float32 of the float64 reference, as the small fixtures) and .png. Other files under root (those
    of make_fixtures.py --full-size) are left alone."""
    start = time.monotonic()
    for own in ("flux2", "qwen"):
        shutil.rmtree(root / own, ignore_errors=True)
    for folder in ("images", "expected"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    stem, (kodak, box) = FULL_IMAGE
    path = root / "images" / f"{stem}.png"
    mf.load_rgb(KODAK / f"{kodak}.png").crop(box).save(path)
    x = mf.preprocess(mf.load_rgb(path))

    flux2 = build_flux2(FLUX2_FULL, SEED_FLUX2)
    for k, v in FLUX2_FULL.items():
        assert list(flux2.config[k]) == list(v) if isinstance(v, list) else flux2.config[k] == v, k
    mf.save_pretrained(flux2, root / "flux2")
    state = state_of(flux2)
    bfl = flux2_to_bfl(state, len(FLUX2_FULL["block_out_channels"]))
    check_bfl_with_diffusers(bfl, state, dict(flux2.config))
    safetensors.torch.save_file(bfl, root / "flux2_ae.safetensors")
    qwen = build_qwen(QWEN_FULL, SEED_QWEN)
    signature = inspect.signature(AutoencoderKLQwenImage.__init__).parameters
    for k in ("latents_mean", "latents_std"):
        assert list(qwen.config[k]) == list(signature[k].default), k
    mf.save_pretrained(qwen, root / "qwen")

    for name, model, run in (("flux2", flux2, run_flux2), ("qwen", qwen, run_qwen)):
        params = sum(p.numel() for p in model.parameters())
        ref, off = reference(run, model, x)
        safetensors.torch.save_file(ref, root / "expected" / f"{name}__{stem}.safetensors")
        mf.postprocess(ref["decoded"]).save(root / "expected" / f"{name}__{stem}.png")
        print(f"  {name:5s} {params / 1e6:.1f}M parameters; on {stem}: {describe(ref)}")
        print("        torch f32 off by: " + ", ".join(f"{k} {v:.1e}" for k, v in off.items()))
    for name, size in sizes(root):
        if name.split("/")[0] in ("flux2", "qwen", "flux2_ae.safetensors") or stem in name:
            print(f"  {size / 2**20:9.1f} MiB  {name}")
    print(f"  {time.monotonic() - start:.0f} s")


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--full-size",
        metavar="OUTDIR",
        nargs="?",
        const=str(REPO / "target" / "fixtures-full"),
        help="write the real-size FLUX.2 and Qwen-Image models and their expected outputs into OUTDIR "
        "(default target/fixtures-full, beside make_fixtures.py's) instead",
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    diffusers.utils.logging.set_verbosity_error()
    start = time.monotonic()
    print(versions())
    if args.full_size:
        out = Path(args.full_size).resolve()
        tests = (REPO / "tests").resolve()
        if out == tests or tests in out.parents:
            sys.exit(f"--full-size writes about 1.1 GiB; not into {tests}")
        print(f"full-size family models -> {out}")
        make_full_size(out)
        return
    print(f"family fixtures -> {OUT}")
    for own in OWN:
        shutil.rmtree(OUT / own, ignore_errors=True)
    (OUT / "README.md").unlink(missing_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)

    inputs = make_images(OUT / "images")
    flux2 = make_flux2(OUT / "flux2", inputs)
    qwen = make_qwen(OUT / "qwen", OUT / "wan", inputs)
    write_readme(OUT / "README.md", flux2, qwen)

    for family, summary in (("flux2", flux2), ("qwen", qwen)):
        for stem, item in summary.items():
            o = item["off"]
            print(f"  {family:5s} {stem}: {describe(item['ref'])}")
            print(
                f"        torch f32 off by: mean {o['mean']:.1e}, logvar {o['logvar']:.1e}, normalized "
                f"{o['normalized']:.1e}, decoded {o['decoded']:.1e} (own mean) / "
                f"{o['decoded_from_stored_mean']:.1e} (stored mean)"
                + (f", small decoder {item['small_off']:.1e}" if "small_off" in item else "")
            )
    total = 0
    for name, size in sizes(OUT):
        if name.split("/")[0] not in OWN:
            continue
        total += size
        print(f"  {size / 1024:9.1f} KiB  {name}")
    print(f"  {total / 1024:9.1f} KiB  total, {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
