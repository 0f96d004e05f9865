"""The same job as `vae encode` / `vae decode`, in PyTorch + diffusers, as a user would run it.

    python3 bench/torch_vae.py encode WEIGHTS_DIR IMAGE OUT.safetensors
    python3 bench/torch_vae.py decode WEIGHTS_DIR LATENT.safetensors OUT.png

Whole process, like the Rust binary: import, load weights, read, compute (fp32), write.
"""

import sys

import torch
from diffusers import AutoencoderKL
from diffusers.image_processor import VaeImageProcessor
from PIL import Image
from safetensors.torch import load_file, save_file


def main(mode: str, weights: str, src: str, dst: str) -> None:
    torch.set_grad_enabled(False)
    vae = AutoencoderKL.from_pretrained(weights, torch_dtype=torch.float32).eval()
    processor = VaeImageProcessor(vae_scale_factor=8)
    scale = vae.config.scaling_factor
    shift = vae.config.shift_factor or 0.0
    with torch.inference_mode():
        if mode == "encode":
            x = processor.preprocess(Image.open(src).convert("RGB"))
            mean = vae.encode(x).latent_dist.mean
            save_file({"latent": ((mean - shift) * scale).contiguous()}, dst)
        elif mode == "decode":
            z = load_file(src)["latent"] / scale + shift
            image = vae.decode(z).sample
            processor.postprocess(image, output_type="pil")[0].save(dst)
        else:
            raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(*sys.argv[1:])
