"""Dataset throughput: `vae dataset encode` against the same job in PyTorch + diffusers.

    python3 bench/dataset.py --weights DIFFUSERS_DIR [--size 256] [--samples 24] [--threads 2]

Builds a WebDataset shard as img2dataset writes it (KEY.jpg, KEY.json, KEY.txt; Kodak photos
centre-cropped and resized to SIZE x SIZE), then encodes it whole-process with both tools:
`vae dataset encode` writes OUTPUT/NAME.tar with KEY.latent.safetensors beside the side files,
and `torch_dataset()` below does the same in Python (tarfile, PIL, diffusers' VaeImageProcessor,
AutoencoderKL fp32 posterior mean, safetensors) the way a user would script it. Reports images/s
of each (whole process: start, load, read, encode, write) and the ratio, and checks that the
two tools' latents agree. Not a test: compare ratios from one run.
"""

import argparse
import io
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import ROOT, run  # noqa: E402

KODAK = ROOT.parent / "shared/testdata/kodak"


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_700_000_000
    tar.addfile(info, io.BytesIO(data))


def make_shard(path: Path, size: int, samples: int, kodak: Path, ext: str) -> None:
    photos = sorted(kodak.glob("*.png"))
    if not photos:
        sys.exit(f"no Kodak photos in {kodak} (--kodak)")
    with tarfile.open(path, "w") as tar:
        for i in range(samples):
            img = Image.open(photos[i % len(photos)]).convert("RGB")
            w, h = img.size
            side = min(w, h)
            img = img.crop(((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2))
            img = img.resize((size, size), Image.LANCZOS)
            encoded = io.BytesIO()
            img.save(encoded, "JPEG", quality=95) if ext == "jpg" else img.save(encoded, "PNG")
            key = f"{i:09d}"
            add(tar, f"{key}.{ext}", encoded.getvalue())
            add(tar, f"{key}.json", f'{{"key": "{key}", "source": "{photos[i % len(photos)].name}"}}'.encode())
            add(tar, f"{key}.txt", f"a photo, sample {key}".encode())


TORCH_JOB = r'''
import io, sys, tarfile
import torch
from diffusers import AutoencoderKL
from diffusers.image_processor import VaeImageProcessor
from PIL import Image
from safetensors.torch import save

weights, src, dst = sys.argv[1:4]
torch.set_grad_enabled(False)
vae = AutoencoderKL.from_pretrained(weights, torch_dtype=torch.float32).eval()
processor = VaeImageProcessor(vae_scale_factor=8)
scale = vae.config.scaling_factor
shift = getattr(vae.config, "shift_factor", None) or 0.0
samples = {}
with tarfile.open(src) as tar:
    for member in tar:
        key, ext = member.name.split(".", 1)
        samples.setdefault(key, []).append((ext, tar.extractfile(member).read()))
with tarfile.open(dst, "w") as out, torch.inference_mode():
    for key, files in samples.items():
        image = next(data for ext, data in files if ext in ("jpg", "png"))
        x = processor.preprocess(Image.open(io.BytesIO(image)).convert("RGB"))
        latent = ((vae.encode(x).latent_dist.mean - shift) * scale).contiguous()
        for name, data in [(f"{key}.latent.safetensors", save({"latent": latent}))] + [
            (f"{key}.{ext}", data) for ext, data in files if ext not in ("jpg", "png")
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
'''


def latents(path: Path) -> dict:
    from safetensors.numpy import load

    with tarfile.open(path) as tar:
        return {m.name: load(tar.extractfile(m).read())["latent"] for m in tar if m.name.endswith(".latent.safetensors")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True, help="diffusers folder (config.json + safetensors)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--samples", type=int, default=24)
    ap.add_argument("--image-format", choices=["jpg", "png"], default="jpg",
                    help="jpg as img2dataset writes by default; png to compare latents without "
                    "the two JPEG decoders' differences (libjpeg-turbo in PIL, zune-jpeg in vae)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--vae", default=str(ROOT / "target/release/vae"))
    ap.add_argument("--kodak", default=str(KODAK))
    args = ap.parse_args()

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), RAYON_NUM_THREADS=str(args.threads))
    tmp = Path(tempfile.mkdtemp(prefix="vae-dataset-bench-"))
    shard = tmp / "in" / "00000.tar"
    shard.parent.mkdir()
    make_shard(shard, args.size, args.samples, Path(args.kodak), args.image_format)
    rs_out, py_out = tmp / "rs", tmp / "py.tar"
    rs_cmd = [args.vae, "dataset", "encode", str(shard), "-o", str(rs_out), "-w", args.weights, "--force"]
    script = tmp / "torch_dataset.py"
    script.write_text(TORCH_JOB)
    py_cmd = [sys.executable, str(script), args.weights, str(shard), str(py_out)]

    rs_wall, rs_rss, err = run(rs_cmd, env)
    py_wall, py_rss, _ = run(py_cmd, env)
    shard_line = next((l for l in err.splitlines() if l.startswith("00000:") and "latents" in l), "")
    a, b = latents(rs_out / "00000.tar"), latents(py_out)
    assert a.keys() == b.keys(), "the two tools wrote different samples"
    diff = max(float(abs(a[k] - b[k]).max()) for k in a)

    n = args.samples
    print(f"{n} samples of {args.size}x{args.size} {args.image_format}, {args.threads} threads, whole process")
    print(f"vae:     {rs_wall:.1f} s, {n / rs_wall:.2f} images/s, peak RSS {rs_rss:.2f} GiB   ({shard_line})")
    print(f"PyTorch: {py_wall:.1f} s, {n / py_wall:.2f} images/s, peak RSS {py_rss:.2f} GiB")
    print(f"ratio vae / PyTorch: time {rs_wall / py_wall:.2f}, memory {rs_rss / py_rss:.2f}; "
          f"max |latent difference| {diff:.2e}")


if __name__ == "__main__":
    main()
