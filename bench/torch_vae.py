"""The same job as `vae encode` / `vae decode`, in PyTorch + diffusers, as a user would run it.

    python3 bench/torch_vae.py encode WEIGHTS_DIR IMAGE OUT.safetensors
    python3 bench/torch_vae.py decode WEIGHTS_DIR LATENT.safetensors OUT.png

Whole process, like the Rust binary: import, load weights, read, compute (fp32), write.
WEIGHTS_DIR holds an AutoencoderKL or an AutoencoderTiny (TAESD), as its config.json says.
"""

import json
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, AutoencoderTiny
from diffusers.image_processor import VaeImageProcessor
from PIL import Image
from safetensors.torch import load_file, save_file


def main(mode: str, weights: str, src: str, dst: str) -> None:
    torch.set_grad_enabled(False)
    tiny = json.loads((Path(weights) / "config.json").read_text()).get("_class_name") == "AutoencoderTiny"
    vae = (AutoencoderTiny if tiny else AutoencoderKL).from_pretrained(weights, torch_dtype=torch.float32).eval()
    processor = VaeImageProcessor(vae_scale_factor=8)
    scale = vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    with torch.inference_mode():
        if mode == "encode":
            x = processor.preprocess(Image.open(src).convert("RGB"))
            # TAESD has no posterior: its latents (scaling 1, shift 0 in its config).
            mean = vae.encode(x).latents if tiny else vae.encode(x).latent_dist.mean
            save_file({"latent": ((mean - shift) * scale).contiguous()}, dst)
        elif mode == "decode":
            z = load_file(src)["latent"] / scale + shift
            image = vae.decode(z).sample
            processor.postprocess(image, output_type="pil")[0].save(dst)
        else:
            raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(*sys.argv[1:])
