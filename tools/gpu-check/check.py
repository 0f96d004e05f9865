#!/usr/bin/env python3
"""The Python half of tools/gpu-check/run.sh (see its README).

    check.py make-weights DIR            # an SD 1.x-size AutoencoderKL, random (seeded), as a diffusers folder
    check.py torch-bench --weights DIR --image PNG --latent CPU.safetensors --device cuda --dtypes fp32 fp16 \
        --repeat N --out torch.json      # PyTorch + diffusers: warm-up, then N timed encodes and decodes
    check.py report --out DIR --precisions f32 f16
                                         # parity of vae's device runs with its CPU run, and the timing table

Parity limits: the unscaled latent within 1e-3 (f32) or 2e-2 (f16, bf16) of the CPU f32 one, max abs;
the decoded PNG at least 45 dB PSNR against the CPU's. Times are in-process, after one warm-up, each
including the copy to the device and the read-back of the result to the host, in both tools.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors import safe_open

LATENT_LIMIT = {"f32": 1e-3, "f16": 2e-2, "bf16": 2e-2}
MIN_PSNR_DB = 45.0

# diffusers' AutoencoderKL defaults are SD 1.x's but for the channel widths and depth.
SD15 = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)


def make_weights(folder: Path) -> None:
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(**SD15).save_pretrained(folder, safe_serialization=True)
    print(f"gpu-check: random SD 1.x-size weights in {folder}", file=sys.stderr)


def read_latent(path: Path) -> tuple[np.ndarray, float, float]:
    """The unscaled latent of one of vae's files, `latent / scaling + shift`."""
    with safe_open(str(path), framework="np") as f:
        meta = f.metadata() or {}
        latent = f.get_tensor("latent").astype(np.float64)
    scaling, shift = float(meta.get("scaling_factor", 1.0)), float(meta.get("shift_factor", 0.0))
    return latent / scaling + shift, scaling, shift


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def bench_lines(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line[len("bench: ") :]) for line in log.read_text().splitlines() if line.startswith("bench: ")]


def timed(fn, repeat: int) -> dict:
    start = time.perf_counter()
    fn()
    warmup = time.perf_counter() - start
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return {"warmup_s": warmup, "runs_s": runs}


def torch_bench(args: argparse.Namespace) -> int:
    import torch
    from diffusers import AutoencoderKL
    from diffusers.image_processor import VaeImageProcessor

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu-check: PyTorch sees no CUDA device", file=sys.stderr)
        return 1
    torch.set_grad_enabled(False)
    processor = VaeImageProcessor(vae_scale_factor=8)
    x = processor.preprocess(Image.open(args.image).convert("RGB"))  # on the host, f32
    z, _, _ = read_latent(args.latent)
    z = torch.from_numpy(z.astype(np.float32))
    device = torch.device(args.device)
    results = {"device": args.device, "torch": torch.__version__, "repeat": args.repeat}
    if args.device == "cuda":
        results["gpu"] = torch.cuda.get_device_name(0)
    for name in args.dtypes:
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]
        vae = AutoencoderKL.from_pretrained(args.weights, torch_dtype=dtype).to(device).eval()

        # Host in, host out, as vae's times are: `.cpu()` also waits for the device.
        def encode():
            with torch.inference_mode():
                return vae.encode(x.to(device, dtype)).latent_dist.mean.float().cpu()

        def decode():
            with torch.inference_mode():
                return vae.decode(z.to(device, dtype)).sample.float().cpu()

        results[name] = {"encode": timed(encode, args.repeat), "decode": timed(decode, args.repeat)}
        finite = bool(torch.isfinite(encode()).all() and torch.isfinite(decode()).all())
        results[name]["finite"] = finite
        del vae
        if args.device == "cuda":
            torch.cuda.empty_cache()
    Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


def report(args: argparse.Namespace) -> int:
    out = Path(args.out)
    cpu_latent, _, _ = read_latent(out / "cpu.safetensors")
    cpu_png = np.asarray(Image.open(out / "cpu.png").convert("RGB"))
    summary = {"parity": {}, "timing": {}}
    ok = True
    print("parity against vae --device cpu (f32):")
    for p in args.precisions:
        row = {}
        try:
            latent, _, _ = read_latent(out / f"{p}.safetensors")
            png = np.asarray(Image.open(out / f"{p}.png").convert("RGB"))
        except (FileNotFoundError, OSError) as e:
            print(f"  {p}: no output ({e}); see {out}/encode_{p}.log and decode_{p}.log")
            summary["parity"][p] = {"error": str(e)}
            ok = False
            continue
        row["latent_max_abs"] = float(np.max(np.abs(latent - cpu_latent)))
        row["latent_finite"] = bool(np.isfinite(latent).all())
        row["decoded_psnr_db"] = psnr(png, cpu_png)
        row["decoded_max_levels"] = int(np.max(np.abs(png.astype(int) - cpu_png.astype(int))))
        retried = any("computed again in f32" in (out / f"{op}_{p}.log").read_text() for op in ("encode", "decode"))
        row["retried_in_f32"] = retried
        limit = LATENT_LIMIT[p]
        passed = row["latent_finite"] and row["latent_max_abs"] <= limit and row["decoded_psnr_db"] >= MIN_PSNR_DB
        row["passed"] = passed
        ok &= passed
        print(
            f"  {p}: latent max abs {row['latent_max_abs']:.2e} (limit {limit:g}), decoded PSNR "
            f"{row['decoded_psnr_db']:.1f} dB (limit {MIN_PSNR_DB:g}), max {row['decoded_max_levels']} levels"
            f"{', retried in f32' if retried else ''}: {'PASS' if passed else 'FAIL'}"
        )
        summary["parity"][p] = row

    torch_path = out / "torch.json"
    torch_results = json.loads(torch_path.read_text()) if torch_path.exists() else {}
    print("\ntimes (s, median of the runs after one warm-up; host in, host out):")
    print(f"  {'tool':<24} {'op':<7} {'warm-up':>8} {'median':>8} {'min':>8}")
    for p in args.precisions:
        for op in ("encode", "decode"):
            for line in bench_lines(out / f"{op}_{p}.log"):
                key = f"vae {p} ({line['device'][:40]})"
                runs = line["runs_s"]
                summary["timing"].setdefault(key, {})[op] = line
                print(f"  {key[:24]:<24} {op:<7} {line['warmup_s']:8.3f} {statistics.median(runs):8.3f} {min(runs):8.3f}")
    for name, result in torch_results.items():
        if not isinstance(result, dict):
            continue
        for op in ("encode", "decode"):
            runs = result[op]["runs_s"]
            key = f"torch {name} ({torch_results.get('device')})"
            summary["timing"].setdefault(key, {})[op] = result[op]
            print(f"  {key[:24]:<24} {op:<7} {result[op]['warmup_s']:8.3f} {statistics.median(runs):8.3f} {min(runs):8.3f}")
    summary["torch"] = {k: v for k, v in torch_results.items() if not isinstance(v, dict)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"\n{'all parity checks passed' if ok else 'a parity check FAILED'}; details in {out}/summary.json")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make-weights")
    p.add_argument("folder", type=Path)
    p = sub.add_parser("torch-bench")
    p.add_argument("--weights", required=True)
    p.add_argument("--image", required=True, type=Path)
    p.add_argument("--latent", required=True, type=Path)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "fp16"])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--out", required=True, type=Path)
    p = sub.add_parser("report")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--precisions", nargs="+", default=["f32", "f16"])
    args = parser.parse_args()
    if args.command == "make-weights":
        make_weights(args.folder)
        return 0
    if args.command == "torch-bench":
        return torch_bench(args)
    return report(args)


if __name__ == "__main__":
    sys.exit(main())
