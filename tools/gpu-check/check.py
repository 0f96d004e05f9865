#!/usr/bin/env python3
"""The Python half of tools/gpu-check/run.sh (see its README).

    check.py make-weights DIR            # an SD 1.x-size AutoencoderKL, random (seeded), as a diffusers folder
    check.py make-image SRC.png OUT.png  # the central 512x512 crop of SRC
    check.py torch-bench --weights DIR --image PNG --latent CPU.safetensors --device cuda --dtypes fp32 fp16 \
        --repeat N --batch B [--profile] --out torch.json
                                         # PyTorch + diffusers: warm-up, then N timed encodes and decodes,
                                         # of one image and of a batch of B
    check.py report --out DIR --devices cuda wgpu --precisions f32 f16 --batch B [--profile cuda]
                                         # parity of vae's device runs with its CPU run, times and ratios,
                                         # and the kernel profiles of both tools

Parity limits: the unscaled latent within 1e-3 (f32) or 2e-2 (f16, bf16) of the CPU f32 one, max abs;
the decoded PNG at least 45 dB PSNR against the CPU's; each image of a batch likewise. Times are
in-process, after one warm-up, each including the copy to the device and the read-back of the result
to the host, in both tools. The goal (issue #4): vae within 2x of PyTorch fp16 on the same GPU.
"""

from __future__ import annotations

import argparse
import functools
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


def make_image(src: Path, out: Path) -> None:
    image = Image.open(src).convert("RGB")
    left, top = (image.width - 512) // 2, (image.height - 512) // 2
    image.crop((left, top, left + 512, top + 512)).save(out)


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


def autotune_winners(log: Path) -> dict[str, int]:
    """CubeCL's autotune decisions in a log (cubecl.toml, run.sh): the winning kernels, counted."""
    if not log.exists():
        return {}
    winners: dict[str, int] = {}
    for line in log.read_text().splitlines():
        if "Fastest result " in line:
            name = line.split("Fastest result ", 1)[1].split("-", 1)[0]
            winners[name] = winners.get(name, 0) + 1
    return winners


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
    results = {"device": args.device, "torch": torch.__version__, "repeat": args.repeat, "batch": args.batch}
    if args.device == "cuda":
        results["gpu"] = torch.cuda.get_device_name(0)
    for name in args.dtypes:
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]
        vae = AutoencoderKL.from_pretrained(args.weights, torch_dtype=dtype).to(device).eval()

        # Host in, host out, as vae's times are: `.cpu()` also waits for the device.
        def encode(images):
            with torch.inference_mode():
                return vae.encode(images.to(device, dtype)).latent_dist.mean.float().cpu()

        def decode(latents):
            with torch.inference_mode():
                return vae.decode(latents.to(device, dtype)).sample.float().cpu()

        results[name] = {
            "encode": timed(functools.partial(encode, x), args.repeat),
            "decode": timed(functools.partial(decode, z), args.repeat),
        }
        results[name]["finite"] = bool(torch.isfinite(encode(x)).all() and torch.isfinite(decode(z)).all())
        if args.profile:
            results[name]["profile"] = {
                "encode": kernel_profile(functools.partial(encode, x), args.device),
                "decode": kernel_profile(functools.partial(decode, z), args.device),
            }
        if args.batch > 0:
            xs, zs = x.repeat(args.batch, 1, 1, 1), z.repeat(args.batch, 1, 1, 1)
            results[name]["encode_batch"] = timed(functools.partial(encode, xs), args.repeat)
            results[name]["decode_batch"] = timed(functools.partial(decode, zs), args.repeat)
        del vae
        if args.device == "cuda":
            torch.cuda.empty_cache()
    Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


def kernel_profile(fn, device: str) -> list[dict]:
    """One pass of `fn` (already warm) under torch.profiler: device time per kernel, summed by name."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activity = ProfilerActivity.CUDA if device == "cuda" else ProfilerActivity.CPU
    with profile(activities=[activity]) as prof:
        fn()
    rows = []
    for event in prof.key_averages():
        if device == "cuda":
            us = getattr(event, "self_device_time_total", None)
            us = event.self_cuda_time_total if us is None else us
        else:
            us = event.self_cpu_time_total
        if us > 0:
            rows.append({"name": event.key, "count": event.count, "s": us * 1e-6})
    return sorted(rows, key=lambda r: -r["s"])


DURATION_UNITS = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}


def cubecl_profile(log: Path) -> list[dict]:
    """CubeCL's profiling log (`| 1.234ms | kernel name` per launch): device time per kernel, summed by name."""
    if not log.exists():
        return []
    kernels: dict[str, dict] = {}
    for line in log.read_text().splitlines():
        parts = [part.strip() for part in line.split("|")]
        if len(parts) < 3 or parts[0] or not parts[1]:
            continue
        number = parts[1].rstrip("nµusm")
        unit = parts[1][len(number) :]
        if unit not in DURATION_UNITS:
            continue
        try:
            seconds = float(number) * DURATION_UNITS[unit]
        except ValueError:
            continue
        kernel = kernels.setdefault(parts[2], {"name": parts[2], "count": 0, "s": 0.0})
        kernel["count"] += 1
        kernel["s"] += seconds
    return sorted(kernels.values(), key=lambda r: -r["s"])


def print_profile(title: str, rows: list[dict], top: int = 12) -> None:
    if not rows:
        print(f"  {title}: no kernel logged (the CPU device runs no CubeCL kernels)")
        return
    total = sum(r["s"] for r in rows)
    print(f"  {title}: {1e3 * total:.2f} ms of kernels, {sum(r['count'] for r in rows)} launches")
    for r in rows[:top]:
        name = r["name"] if len(r["name"]) <= 90 else r["name"][:87] + "..."
        print(f"    {1e3 * r['s']:8.3f} ms {100 * r['s'] / total:5.1f}% {r['count']:5d}x  {name}")


def parity(latent_path: Path, png_path: Path, cpu_latent: np.ndarray, cpu_png: np.ndarray, p: str) -> dict:
    """One output of vae against the CPU's: raises when a file is missing."""
    latent, _, _ = read_latent(latent_path)
    png = np.asarray(Image.open(png_path).convert("RGB"))
    row = {
        "latent_max_abs": float(np.max(np.abs(latent - cpu_latent))),
        "latent_finite": bool(np.isfinite(latent).all()),
        "decoded_psnr_db": psnr(png, cpu_png),
        "decoded_max_levels": int(np.max(np.abs(png.astype(int) - cpu_png.astype(int)))),
    }
    row["passed"] = (
        row["latent_finite"] and row["latent_max_abs"] <= LATENT_LIMIT[p] and row["decoded_psnr_db"] >= MIN_PSNR_DB
    )
    return row


TORCH_DTYPE = {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}


def report(args: argparse.Namespace) -> int:
    out = Path(args.out)
    cpu_latent, _, _ = read_latent(out / "cpu.safetensors")
    cpu_png = np.asarray(Image.open(out / "cpu.png").convert("RGB"))
    summary = {"parity": {}, "timing": {}, "ratios": {}}
    ok = True
    print("parity against vae --device cpu (f32):")
    for d in args.devices:
        for p in args.precisions:
            run = f"{d}_{p}"
            outputs = [(out / f"{run}.safetensors", out / f"{run}.png")]
            batch_dir = out / f"batch-{run}"
            outputs += [
                (batch_dir / f"image-{i}.safetensors", batch_dir / f"latent-{i}.png") for i in range(1, args.batch + 1)
            ]
            rows = []
            for latent_path, png_path in outputs:
                try:
                    rows.append(parity(latent_path, png_path, cpu_latent, cpu_png, p))
                except (FileNotFoundError, OSError) as e:
                    rows.append({"error": str(e), "passed": False})
            logs = [out / f"{op}{kind}_{run}.log" for op in ("encode", "decode") for kind in ("", "_batch")]
            retried = any(log.exists() and "computed again in f32" in log.read_text() for log in logs)
            passed = all(r["passed"] for r in rows)
            ok &= passed
            summary["parity"][run] = {"single": rows[0], "batch": rows[1:], "retried_in_f32": retried, "passed": passed}
            first = rows[0]
            if "error" in first:
                print(f"  {run}: no output ({first['error']}); see {out}/encode_{run}.log and decode_{run}.log")
                continue
            worst = lambda key, pick: pick(r.get(key, math.nan) for r in rows)  # noqa: E731
            print(
                f"  {run}: latent max abs {worst('latent_max_abs', max):.2e} (limit {LATENT_LIMIT[p]:g}), decoded PSNR "
                f"{worst('decoded_psnr_db', min):.1f} dB (limit {MIN_PSNR_DB:g}), over {len(rows)} outputs"
                f"{', retried in f32' if retried else ''}: {'PASS' if passed else 'FAIL'}"
            )

    # Times: (tool, op, batch) -> median seconds per pass.
    medians = {}
    print("\ntimes (ms per pass, median of the runs after one warm-up; host in, host out):")
    print(f"  {'tool':<34} {'op':<7} {'batch':>5} {'warm-up':>9} {'median':>9} {'min':>9} {'per image':>9}")

    def row(key: str, op: str, batch: int, result: dict) -> None:
        runs = result["runs_s"]
        median = statistics.median(runs)
        medians[(key, op, batch)] = median
        summary["timing"].setdefault(key, {})[f"{op}@{batch}"] = result
        print(
            f"  {key[:34]:<34} {op:<7} {batch:>5} {1e3 * result['warmup_s']:9.1f} {1e3 * median:9.1f}"
            f" {1e3 * min(runs):9.1f} {1e3 * median / batch:9.1f}"
        )

    for d in args.devices:
        for p in args.precisions:
            for op in ("encode", "decode"):
                for kind in ("", "_batch"):
                    for line in bench_lines(out / f"{op}{kind}_{d}_{p}.log"):
                        row(f"vae {d} {p}", op, int(line.get("batch", 1)), line)
    torch_path = out / "torch.json"
    torch_results = json.loads(torch_path.read_text()) if torch_path.exists() else {}
    for name, result in torch_results.items():
        if not isinstance(result, dict):
            continue
        for op in ("encode", "decode"):
            row(f"torch {name}", op, 1, result[op])
            if f"{op}_batch" in result:
                row(f"torch {name}", op, int(torch_results.get("batch", 1)), result[f"{op}_batch"])
    summary["torch"] = {k: v for k, v in torch_results.items() if not isinstance(v, dict)}

    print("\nvae / PyTorch, same precision, same GPU (below 1: vae is faster):")
    for (key, op, batch), median in sorted(medians.items()):
        if not key.startswith("vae "):
            continue
        torch_key = f"torch {TORCH_DTYPE[key.split()[-1]]}"
        if (torch_key, op, batch) in medians:
            ratio = median / medians[(torch_key, op, batch)]
            summary["ratios"][f"{key} {op}@{batch}"] = ratio
            print(f"  {key:<20} {op:<7} batch {batch:<3} {ratio:6.2f}x {torch_key}")

    print("\nautotune winners (kernel: decisions), from the logs:")
    for d in args.devices:
        for p in args.precisions:
            for op in ("encode", "decode"):
                for kind in ("", "_batch"):
                    winners = autotune_winners(out / f"{op}{kind}_{d}_{p}.log")
                    summary.setdefault("autotune", {})[f"{d} {p} {op}{kind}"] = winners
                    text = ", ".join(f"{k}: {v}" for k, v in sorted(winners.items(), key=lambda kv: -kv[1]))
                    print(f"  {d} {p} {op}{kind}: {text or 'none logged'}")

    print("\nfirst image of a process (warm-up, ms): autotune in the first process, its results read from")
    print("disk in the second (the user cache directory keeps them between runs of vae):")
    for d in args.devices:
        for p in args.precisions:
            for op in ("encode", "decode"):
                first, again = (bench_lines(out / f"{op}{kind}_{d}_{p}.log") for kind in ("", "_again"))
                if first and again:
                    cold, warm = first[0]["warmup_s"], again[0]["warmup_s"]
                    summary.setdefault("first_image", {})[f"{d} {p} {op}"] = {"first_process_s": cold, "second_process_s": warm}
                    print(f"  {d} {p} {op}: {1e3 * cold:.1f} then {1e3 * warm:.1f}")

    if args.profile:
        print("\nop by op, one pass of the image (device time per kernel, each launch timed alone):")
        for d in args.profile:
            for p in args.precisions:
                for op in ("encode", "decode"):
                    rows = cubecl_profile(out / "profile" / f"{op}_{d}_{p}.log")
                    summary.setdefault("profile", {})[f"vae {d} {p} {op}"] = rows
                    print_profile(f"vae {d} {p} {op}", rows)
                    torch_rows = torch_results.get(TORCH_DTYPE[p], {}).get("profile", {}).get(op, [])
                    if torch_rows:
                        print_profile(f"torch {TORCH_DTYPE[p]} {op}", torch_rows)

    fp16 = {op: medians.get(("torch fp16", op, 1)) for op in ("encode", "decode")}
    if all(fp16.values()):
        print("\nissue #4's goal, one 512x512 image: within 2x of PyTorch fp16")
        for op, reference in fp16.items():
            best = [(m, k) for (k, o, b), m in medians.items() if k.startswith("vae ") and o == op and b == 1]
            if best:
                m, k = min(best)
                met = m <= 2 * reference
                summary.setdefault("goal", {})[op] = {"vae": m, "torch_fp16": reference, "met": met, "by": k}
                print(
                    f"  {op}: {1e3 * m:.1f} ms ({k}) against {2e3 * reference:.1f} ms"
                    f" (2 x {1e3 * reference:.1f}): {'met' if met else 'NOT met'}"
                )
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
    p.add_argument("--batch", type=int, default=0)
    p.add_argument("--profile", action="store_true", help="also one pass of each op under torch.profiler")
    p.add_argument("--out", required=True, type=Path)
    p = sub.add_parser("make-image")
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    p = sub.add_parser("report")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--devices", nargs="+", default=["cuda", "wgpu"])
    p.add_argument("--precisions", nargs="+", default=["f32", "f16"])
    p.add_argument("--batch", type=int, default=0)
    p.add_argument("--profile", nargs="*", default=[], help="devices whose kernel profiles to report")
    args = parser.parse_args()
    if args.command == "make-weights":
        make_weights(args.folder)
        return 0
    if args.command == "make-image":
        make_image(args.src, args.out)
        return 0
    if args.command == "torch-bench":
        return torch_bench(args)
    return report(args)


if __name__ == "__main__":
    sys.exit(main())
