"""The same job as `vae encode` / `vae decode`, in PyTorch + diffusers, as a user would run it.

    python3 bench/torch_vae.py encode WEIGHTS_DIR IMAGE OUT.safetensors [--precision bf16]
    python3 bench/torch_vae.py decode WEIGHTS_DIR LATENT.safetensors OUT.png [--precision bf16]

Whole process, like the Rust binary: import, load weights, read, compute (fp32, inference mode),
write. `--precision bf16`: weights and activations in bfloat16, channels-last (the layout
oneDNN's bf16 convolutions run fastest in), latents written as float32. WEIGHTS_DIR is a diffusers folder; its config.json's `_class_name` picks the model and the
latent form, which is the `vae` tool's default for that family:

- AutoencoderKL (SD 1.x/2.x, SDXL, SD3, FLUX.1): the posterior mean, `(mean - shift_factor) *
  scaling_factor`.
- AutoencoderTiny (TAESD): its latents (scaling 1, shift 0 in its config).
- AutoencoderKLFlux2 (FLUX.2): the posterior mean, raw (no scaling, no patchify, no batch norm).
- AutoencoderKLQwenImage / AutoencoderKLWan (Qwen-Image, Wan 2.1): the image as one frame,
  `x.unsqueeze(2)` -> [1, 3, 1, H, W]; the posterior mean normalised per channel as diffusers'
  Qwen-Image pipelines do, `(mean - latents_mean) / latents_std` with the config's lists.

The latent file holds one float32 tensor `latent`, [1, C, h, w].
"""

import json
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, AutoencoderKLFlux2, AutoencoderKLQwenImage, AutoencoderKLWan, AutoencoderTiny
from diffusers.image_processor import VaeImageProcessor
from PIL import Image
from safetensors.torch import load_file, save_file

CLASSES = {c.__name__: c for c in (AutoencoderKL, AutoencoderTiny, AutoencoderKLFlux2, AutoencoderKLQwenImage, AutoencoderKLWan)}
VIDEO = ("AutoencoderKLQwenImage", "AutoencoderKLWan")  # 5D [B, C, T, H, W] in and out


def scale_factor(name: str, config) -> int:
    """The image side per latent pixel, as the family's diffusers pipelines compute it."""
    if name == "AutoencoderKLWan":
        return config.scale_factor_spatial
    if name == "AutoencoderKLQwenImage":
        return 2 ** len(config.temperal_downsample)
    if name == "AutoencoderTiny":
        return 8
    return 2 ** (len(config.block_out_channels) - 1)


def main(mode: str, weights: str, src: str, dst: str, *rest: str) -> None:
    if rest not in ((), ("--precision", "f32"), ("--precision", "bf16")):
        raise SystemExit(f"unknown options {' '.join(rest)} (only --precision f32|bf16)")
    bf16 = rest == ("--precision", "bf16")
    dtype = torch.bfloat16 if bf16 else torch.float32
    torch.set_grad_enabled(False)
    name = json.loads((Path(weights) / "config.json").read_text()).get("_class_name", "AutoencoderKL")
    if name not in CLASSES:
        raise SystemExit(f"{weights}: unsupported _class_name {name!r} (one of {', '.join(CLASSES)})")
    vae = CLASSES[name].from_pretrained(weights, torch_dtype=dtype).eval()
    if bf16:
        vae = vae.to(memory_format=torch.channels_last)

    def prepare(x: torch.Tensor) -> torch.Tensor:
        """The model's input in its dtype (and layout: channels-last for a 4D bf16 input)."""
        x = x.to(dtype)
        return x.contiguous(memory_format=torch.channels_last) if bf16 and x.dim() == 4 else x

    config = vae.config
    processor = VaeImageProcessor(vae_scale_factor=scale_factor(name, config))
    video = name in VIDEO
    if video:
        # Per-channel statistics, shaped like the pipelines' (float32 tensors from the config lists).
        stats_mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1)
        stats_std = torch.tensor(config.latents_std).view(1, -1, 1, 1)
    elif name in ("AutoencoderKL", "AutoencoderTiny"):
        scale = config.scaling_factor
        shift = getattr(config, "shift_factor", None) or 0.0
    else:  # AutoencoderKLFlux2: raw
        scale, shift = 1.0, 0.0
    with torch.inference_mode():
        if mode == "encode":
            x = prepare(processor.preprocess(Image.open(src).convert("RGB")))
            if video:
                mean = vae.encode(x.unsqueeze(2)).latent_dist.mean[:, :, 0]
                latent = (mean - stats_mean) / stats_std
            else:
                # TAESD has no posterior: its latents.
                mean = vae.encode(x).latents if name == "AutoencoderTiny" else vae.encode(x).latent_dist.mean
                latent = (mean - shift) * scale
            save_file({"latent": latent.float().contiguous()}, dst)
        elif mode == "decode":
            z = prepare(load_file(src)["latent"])
            if video:
                image = vae.decode((z * stats_std + stats_mean).unsqueeze(2)).sample[:, :, 0]
            else:
                image = vae.decode(z / scale + shift).sample
            processor.postprocess(image.float(), output_type="pil")[0].save(dst)
        else:
            raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(*sys.argv[1:])
