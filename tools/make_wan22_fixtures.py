#!/usr/bin/env python3
"""Write the Wan 2.2 and Qwen-Image 2.1 parity fixtures for the Rust `vae` crate.

    python3 tools/make_wan22_fixtures.py    # rewrites tests/fixtures/families/{wan22,qwenimage21}/ (committed)
    python3 tools/make_wan22_fixtures.py --full-size [DIR]  # the real sizes into DIR (default
                                                            # target/fixtures-full; never committed)

The house rules of tools/make_family_fixtures.py apply (its helpers and its images, already in
tests/fixtures/families/images/, are reused): seeded, CPU, two threads, deterministic algorithms;
float32 weights, every parameter redrawn; expected outputs are diffusers' own forward pass in
float64, stored as float32. Each family folder gets a README.md (written here) describing it.

- wan22: an `AutoencoderKLWan` with `is_residual=True` and Wan 2.2 TI2V's block structure
  (dim_mult 1, 2, 4, 4, num_res_blocks 2, temporal downsampling False, True, True, the 2x2 image
  patch: `in_channels` = `out_channels` = 12, `patch_size` 2, 48 latent channels), narrowed to
  base_dim 4 and decoder_base_dim 5 (the real ones: 160 and 256). Stored as a diffusers folder and
  as the original Wan 2.2 single file (`wan22_original.safetensors`, the names of Wan's
  `vae2_2.py`; diffusers' `convert_wan_vae_to_diffusers` covers Wan 2.1 only).
- qwenimage21: an `AutoencoderKLQwenImage21` with its default block structure (dim_mult
  1, 2, 4, 8, 8, 2 res blocks, temporal downsampling False, True, True, True, 2D convolutions,
  RGBA in and out, 64 latent channels), narrowed to base_dim 4 and decoder_base_dim 5 (the real
  ones: 96 and 144). A diffusers folder. The RGB test images are given an opaque alpha (1), as
  the pipeline's `convert("RGBA")` does; the expected PNG is the RGB of the decoded RGBA.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import safetensors.torch
import torch

import diffusers
from diffusers import AutoencoderKLQwenImage21, AutoencoderKLWan
from diffusers.pipelines.qwenimage21.pipeline_qwenimage21 import QwenImage21Pipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_family_fixtures as mff  # noqa: E402
import make_fixtures as mf  # noqa: E402
from family_configs import QWEN21, WAN22  # noqa: E402

FAMILIES = mff.OUT
IMAGES = list(mff.IMAGES)
SEED_WAN22, SEED_QWEN21 = 3, 4

# The real sizes (--full-size): Wan 2.2 TI2V's VAE (diffusers' Wan2.2-TI2V-5B-Diffusers config) and
# AutoencoderKLQwenImage21's defaults.
WAN22_FULL = dict(WAN22, base_dim=160, decoder_base_dim=256)
QWEN21_FULL = dict(QWEN21, base_dim=96, decoder_base_dim=144)

# Gain on the decoder's last conv: keeps the decoded image mostly inside diffusers' [-1, 1] clamp
# (a few percent of the values clamped; see the READMEs).
DECODER_OUT_GAIN = {"wan22": 0.6, "qwenimage21": 0.6}


def redraw(model: torch.nn.Module, g: torch.Generator, gain: float) -> None:
    """Every parameter, in `named_modules` order from one generator, as make_family_fixtures.redraw_qwen:
    conv weights (all temporal taps, time_conv included) ~ N(0, 1/fan_in) with fan_in = in * kh * kw;
    RMS-norm gamma ~ 1 + 0.1 N(0, 1); biases ~ 0.05 N(0, 1); the decoder's conv_out x `gain`."""
    seen = set()
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d)):
                w = module.weight
                fan_in = w.shape[1] * w.shape[-2] * w.shape[-1]
                w.copy_(mff._randn(w.shape, g) / fan_in**0.5)
                seen.add(f"{name}.weight")
                if module.bias is not None:
                    module.bias.copy_(0.05 * mff._randn(module.bias.shape, g))
                    seen.add(f"{name}.bias")
            elif type(module).__name__.endswith("RMS_norm"):
                module.gamma.copy_(1.0 + 0.1 * mff._randn(module.gamma.shape, g))
                seen.add(f"{name}.gamma")
                assert not isinstance(module.bias, torch.nn.Parameter)
        model.decoder.conv_out.weight.mul_(gain)
    missed = set(dict(model.named_parameters())) - seen
    assert not missed, f"parameters not redrawn: {sorted(missed)}"


def build(cls, config: dict, seed: int, gain: float) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = cls(**config)
    redraw(model, torch.Generator().manual_seed(seed), gain)
    return model.float().eval()


def wan22_key_to_original(key: str, num_res_blocks: int) -> str:
    """A diffusers AutoencoderKLWan (is_residual) key -> the original Wan 2.2 VAE key (`vae2_2.py`:
    `encoder.downsamples.{i}` are `Down_ResidualBlock`s whose `downsamples` list holds the residual
    blocks, then the resample; `decoder.upsamples.{i}` are `Up_ResidualBlock`s, `upsamples` likewise)."""
    top = {"quant_conv": "conv1", "post_quant_conv": "conv2"}
    part, _, rest = key.partition(".")
    if part in top:
        return f"{top[part]}.{rest}"
    head, _, tail = rest.partition(".")
    if head in ("conv_in", "norm_out", "conv_out") or rest.startswith("mid_block."):
        # The same names as Wan 2.1's.
        return mff.qwen_key_to_wan21(key, num_res_blocks)
    block, _, tail = tail.partition(".")
    inner, resampler = ("downsamples", "downsampler") if part == "encoder" else ("upsamples", "upsampler")
    assert head == ("down_blocks" if part == "encoder" else "up_blocks"), key
    outer = f"{part}.{inner}.{block}.{inner}"
    if tail.startswith(resampler + "."):
        last = num_res_blocks if part == "encoder" else num_res_blocks + 1
        return f"{outer}.{last}.{tail.removeprefix(resampler + '.')}"
    index, _, tail = tail.removeprefix("resnets.").partition(".")
    return f"{outer}.{index}.{mff._wan_resnet(tail)}"


@torch.no_grad()
def run(model: torch.nn.Module, x: torch.Tensor) -> dict:
    """The VAE on one image as one frame: posterior mean and clamped logvar, the pipeline's normalised
    latent, and decode() of the mean rounded to float32 (clamped, unpatched); T squeezed.
    Qwen-Image 2.1 reads RGBA: the RGB image gets an opaque alpha."""
    dtype = next(model.parameters()).dtype
    if model.config.in_channels == 4 and x.shape[1] == 3:
        x = torch.cat([x, torch.ones_like(x[:, :1])], 1)
    x5 = x.to(dtype).unsqueeze(2)
    posterior = model.encode(x5).latent_dist
    m = torch.tensor(model.config.latents_mean).view(1, -1, 1, 1, 1).to(dtype)
    s = torch.tensor(model.config.latents_std).view(1, -1, 1, 1, 1).to(dtype)
    if isinstance(model, AutoencoderKLQwenImage21):
        # QwenImage21Pipeline._encode_vae_image itself: mode(), then (x - mean) / std.
        pipe = SimpleNamespace(vae=model, latent_channels=model.config.z_dim)
        normalized = QwenImage21Pipeline._encode_vae_image(pipe, x5, generator=None)
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        assert torch.allclose(normalized, (posterior.mean - m) / s, rtol=tol, atol=tol)
    else:
        # The Wan pipelines (WanImageToVideoPipeline.prepare_latents, for Wan 2.2 TI2V too):
        # (x - latents_mean) * (1 / latents_std).
        normalized = (posterior.mean - m) * (1.0 / s)
    decoded = model.decode(posterior.mean.float().to(dtype)).sample
    out = {"mean": posterior.mean, "logvar": posterior.logvar, "normalized": normalized, "decoded": decoded}
    for k, v in out.items():
        assert v.shape[2] == 1, (k, v.shape)
    return {k: v.squeeze(2) for k, v in out.items()}


def reference(model: torch.nn.Module, x: torch.Tensor) -> tuple[dict, dict]:
    ref = run(copy.deepcopy(model).to(mf.REFERENCE_DTYPE), x)
    ref = {k: v.float().contiguous() for k, v in ref.items()}
    f32 = run(model, x)
    off = {k: mff.max_abs(f32[k], ref[k]) for k in ("mean", "logvar", "normalized", "decoded")}
    with torch.no_grad():
        off["decoded_from_stored_mean"] = mff.max_abs(model.decode(ref["mean"].unsqueeze(2)).sample.squeeze(2), ref["decoded"])
    return ref, off


def postprocess(decoded: torch.Tensor):
    """diffusers' postprocessing of the RGB channels (the alpha of an RGBA output is not drawn)."""
    return mf.postprocess(decoded[:, :3])


def make(name: str, cls, config: dict, seed: int, inputs: dict, original: bool) -> dict:
    root = FAMILIES / name
    shutil.rmtree(root, ignore_errors=True)
    (root / "expected").mkdir(parents=True)
    latents_mean, latents_std = mff.latent_stats(seed, config["z_dim"])
    model = build(cls, dict(config, latents_mean=latents_mean, latents_std=latents_std), seed, DECODER_OUT_GAIN[name])
    state = mff.state_of(model)
    mf.save_pretrained(model, root / "diffusers")
    weights = root / "diffusers" / "diffusion_pytorch_model.safetensors"
    mf.assert_same_state(safetensors.torch.load_file(weights), state, f"{name}/diffusers")
    if original:
        converted = {wan22_key_to_original(k, config["num_res_blocks"]): v.contiguous() for k, v in state.items()}
        assert len(converted) == len(state)
        safetensors.torch.save_file(converted, root / "wan22_original.safetensors")
    summary = {}
    for stem, x in inputs.items():
        ref, off = reference(model, x)
        mff.save_tensors(ref, root / "expected" / f"{stem}.safetensors")
        postprocess(ref["decoded"]).save(root / "expected" / f"{stem}.png")
        summary[stem] = {"ref": ref, "off": off}
    return summary


def make_full_size(root: Path) -> None:
    """Real-size Wan 2.2 and Qwen-Image 2.1 VAEs with seeded random weights under root, beside the
    real-size models of make_family_fixtures.py --full-size (whose crop they share), and diffusers'
    outputs on that crop for tests/families.rs `full_size_wan22_and_qwen_image21`: root/wan22/ and
    root/qwenimage21/ (diffusers folders), root/wan22_original.safetensors (the same Wan 2.2
    tensors under `vae2_2.py`'s names), root/expected/{wan22,qwenimage21}__FULL_IMAGE.safetensors
    (`mean`, `logvar`, `normalized`, `decoded`: float32 of the float64 reference) and .png."""
    start = time.monotonic()
    stem, (kodak, box) = mff.FULL_IMAGE
    for folder in ("images", "expected"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    path = root / "images" / f"{stem}.png"
    mf.load_rgb(mff.KODAK / f"{kodak}.png").crop(box).save(path)
    x = mf.preprocess(mf.load_rgb(path))
    for name, cls, config, seed, original in (
        ("wan22", AutoencoderKLWan, WAN22_FULL, SEED_WAN22, True),
        ("qwenimage21", AutoencoderKLQwenImage21, QWEN21_FULL, SEED_QWEN21, False),
    ):
        shutil.rmtree(root / name, ignore_errors=True)
        latents_mean, latents_std = mff.latent_stats(seed, config["z_dim"])
        model = build(cls, dict(config, latents_mean=latents_mean, latents_std=latents_std), seed, DECODER_OUT_GAIN[name])
        mf.save_pretrained(model, root / name)
        if original:
            state = mff.state_of(model)
            converted = {wan22_key_to_original(k, config["num_res_blocks"]): v.contiguous() for k, v in state.items()}
            assert len(converted) == len(state)
            safetensors.torch.save_file(converted, root / "wan22_original.safetensors")
        ref, off = reference(model, x)
        safetensors.torch.save_file(ref, root / "expected" / f"{name}__{stem}.safetensors")
        postprocess(ref["decoded"]).save(root / "expected" / f"{name}__{stem}.png")
        params = sum(p.numel() for p in model.parameters())
        print(f"  {name} {params / 1e6:.1f}M parameters; on {stem}: {mff.describe(ref)}")
        print("        torch f32 off by: " + ", ".join(f"{k} {v:.1e}" for k, v in off.items()))
    print(f"  {time.monotonic() - start:.0f} s")


def write_readme(name: str, what: str, summary: dict, config: dict) -> None:
    root = FAMILIES / name
    n = lambda v: f"{v:.1e}"  # noqa: E731
    lines = [
        f"# {name} fixtures",
        "",
        f"Written by `tools/make_wan22_fixtures.py` ({mff.versions()}); do not edit.",
        "",
        what,
        "",
        "Config (`diffusers/config.json` has it, with seeded `latents_mean` / `latents_std`):",
        "",
        "```",
        ", ".join(f"{k}={v}" for k, v in config.items()),
        "```",
        "",
        "`expected/{image}.safetensors`: `mean`, `logvar` (clamped to [-30, 20]), `normalized` (the pipeline's",
        "per-channel normalisation of the mean) and `decoded` (diffusers' `decode` of the stored mean, clamped),",
        "each `[1, C, h, w]` float32 from the float64 reference; `expected/{image}.png` the decoded RGB.",
        "",
        "On one frame: causal convs meet the last temporal tap only, `time_conv`s are skipped, `AvgDown3D`",
        "pads time to two frames with a zero frame in front (which takes part in the mean), `DupUp3D` keeps",
        "the last of its two frames (`first_chunk`).",
        "",
        "| image | torch f32 off by: mean | logvar | normalized | decoded (own mean) | decoded (stored mean) |",
        "|---|---|---|---|---|---|",
    ]
    for s, item in summary.items():
        o = item["off"]
        lines.append(
            f"| {s} | {n(o['mean'])} | {n(o['logvar'])} | {n(o['normalized'])} | {n(o['decoded'])} | "
            f"{n(o['decoded_from_stored_mean'])} |"
        )
    lines += [""] + [f"- `{s}`: {mff.describe(item['ref'])}" for s, item in summary.items()]
    lines += ["", "| file | bytes |", "|---|---|"]
    lines += [f"| `{f}` | {b} |" for f, b in mff.sizes(root) if f != "README.md"]
    (root / "README.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    diffusers.utils.logging.set_verbosity_error()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--full-size",
        metavar="OUTDIR",
        nargs="?",
        const=str(mff.REPO / "target" / "fixtures-full"),
        help="write the real-size Wan 2.2 and Qwen-Image 2.1 models and their expected outputs into OUTDIR "
        "(default target/fixtures-full) instead",
    )
    args = parser.parse_args()
    start = time.monotonic()
    print(mff.versions())
    if args.full_size:
        out = Path(args.full_size).resolve()
        tests = (mff.REPO / "tests").resolve()
        if out == tests or tests in out.parents:
            sys.exit(f"--full-size writes gigabytes; not into {tests}")
        print(f"full-size Wan 2.2 / Qwen-Image 2.1 models -> {out}")
        make_full_size(out)
        return
    inputs = {stem: mf.preprocess(mf.load_rgb(FAMILIES / "images" / f"{stem}.png")) for stem in IMAGES}
    wan22 = make("wan22", AutoencoderKLWan, WAN22, SEED_WAN22, inputs, original=True)
    write_readme(
        "wan22",
        "Wan 2.2 TI2V's VAE structure (`AutoencoderKLWan`, `is_residual=True`), narrowed: `diffusers/` and the "
        "original single file `wan22_original.safetensors` (same tensors, `vae2_2.py` names).",
        wan22,
        WAN22,
    )
    qwen21 = make("qwenimage21", AutoencoderKLQwenImage21, QWEN21, SEED_QWEN21, inputs, original=False)
    write_readme(
        "qwenimage21",
        "Qwen-Image 2.1's VAE structure (`AutoencoderKLQwenImage21`), narrowed; RGBA: the RGB images get alpha 1.",
        qwen21,
        QWEN21,
    )
    for family, summary in (("wan22", wan22), ("qwenimage21", qwen21)):
        for stem, item in summary.items():
            o = item["off"]
            print(f"  {family} {stem}: {mff.describe(item['ref'])}")
            print("        torch f32 off by: " + ", ".join(f"{k} {v:.1e}" for k, v in o.items()))
        total = 0
        for name, size in mff.sizes(FAMILIES / family):
            total += size
            print(f"  {size / 1024:9.1f} KiB  {family}/{name}")
        print(f"  {total / 1024:9.1f} KiB  {family} total")
    print(f"  {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
