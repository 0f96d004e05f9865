"""Accuracy of `vae --precision P` against `vae`'s own f32 output, on the Kodak photos.

    python3 bench/precision_psnr.py --weights DIFFUSERS_DIR [--precision bf16] [--images DIR] [--vae PATH]
        [--pause-while FILE]

For each image: the f32 round trip (encode, then decode its latent) and the P round trip, and
P decoding the f32 latent; each P PNG against the f32 PNG: PSNR (skimage's, data range 255)
and the max abs error in 8-bit levels; and the max abs error of P's latent against f32's,
relative to the largest |value| of f32's. Prints one row per image, then the worst and the mean
of each column (the mean PSNR is the mean of the images' dB figures).

--pause-while FILE waits before each image while FILE exists (a shared machine's sign that
someone is timing something and needs the cores).
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.numpy import load_file
from skimage.metrics import peak_signal_noise_ratio

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--images", default=str(ROOT.parent / "shared/testdata/kodak"))
    ap.add_argument("--vae", default=str(ROOT / "target/release/vae"))
    ap.add_argument("--pause-while", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vae-psnr-") as tmp:
        table(args, Path(tmp))


def table(args: argparse.Namespace, tmp: Path) -> None:
    def vae(*cmd: str, precision: str) -> None:
        full = [args.vae, *cmd, "--force", "-w", args.weights, "--device", "cpu", "--precision", precision]
        proc = subprocess.run(full, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"failed: {' '.join(full)}\n{proc.stderr}")

    def png(path: Path) -> np.ndarray:
        return np.asarray(Image.open(path).convert("RGB"))

    print(f"# {args.precision} against f32, {args.weights}")
    print("| image | round trip PSNR | max error | decode of the f32 latent PSNR | max error | latent max error / scale |")
    print("|---|---|---|---|---|---|")
    rows = []
    for image in sorted(Path(args.images).glob("*.png")):
        while args.pause_while is not None and args.pause_while.exists():
            time.sleep(30)
        out = {}
        for p in ("f32", args.precision):
            latent = tmp / f"{image.stem}.{p}.safetensors"
            vae("encode", str(image), "-o", str(latent), precision=p)
            vae("decode", str(latent), "-o", str(tmp / f"{image.stem}.{p}.png"), precision=p)
            out[p] = load_file(latent)["latent"]
        f32_latent = tmp / f"{image.stem}.f32.safetensors"
        vae("decode", str(f32_latent), "-o", str(tmp / f"{image.stem}.cross.png"), precision=args.precision)
        ref = png(tmp / f"{image.stem}.f32.png")
        row = []
        for name in (args.precision, "cross"):
            got = png(tmp / f"{image.stem}.{name}.png")
            row += [peak_signal_noise_ratio(ref, got, data_range=255), int(np.abs(ref.astype(int) - got).max())]
        a, b = out["f32"], out[args.precision]
        row.append(float(np.abs(a - b).max() / np.abs(a).max()))
        rows.append(row)
        print(f"| {image.stem} | {row[0]:.2f} dB | {row[1]} | {row[2]:.2f} dB | {row[3]} | {row[4]:.1e} |", flush=True)
    if not rows:
        sys.exit(f"no PNG images in {args.images}")
    cols = np.array(rows).T
    worst = [cols[0].min(), int(cols[1].max()), cols[2].min(), int(cols[3].max()), cols[4].max()]
    mean = cols.mean(axis=1)
    print(f"| worst | {worst[0]:.2f} dB | {worst[1]} | {worst[2]:.2f} dB | {worst[3]} | {worst[4]:.1e} |")
    print(f"| mean | {mean[0]:.2f} dB | {mean[1]:.1f} | {mean[2]:.2f} dB | {mean[3]:.1f} | {mean[4]:.1e} |")


if __name__ == "__main__":
    main()
