"""Whole-process benchmark: `vae` against PyTorch + diffusers on the same machine, same run.

    python3 bench/bench.py --weights DIFFUSERS_DIR [--sizes 512 1024] [--runs 3] [--threads 2] [--label NAME]
                           [--precision f32|bf16]

DIFFUSERS_DIR is any VAE folder both tools load: AutoencoderKL (SD, SDXL, SD3, FLUX.1),
AutoencoderTiny, AutoencoderKLFlux2 (FLUX.2), AutoencoderKLQwenImage / AutoencoderKLWan
(Qwen-Image, Wan 2.1); each tool writes its default latent for that family (see torch_vae.py).
For each size, a Kodak photo resized to SIZE x SIZE is encoded, and its latent decoded, by
both tools, alternating runs so that machine noise hits both alike. The header and every table
row name the model (--label, default the config's `_class_name`); the latent shapes the two
tools wrote are printed and compared. Reported per job: median wall time, peak RSS (from
wait4, i.e. the kernel's own high-water mark of that process), and the ratio vae / PyTorch
(below 1 means vae is faster or lighter). `vae`'s own stage times (--timings) are printed too.
--precision bf16 runs both in bf16: `vae --precision bf16` (on the CPU: bf16 products, f32
activations) and PyTorch with bfloat16 weights and activations, channels-last.
Not a test: timings on a shared machine are noisy; compare ratios from one run.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def run(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """Runs cmd; returns (wall seconds, peak RSS GiB, stderr)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err}")
    return wall, usage.ru_maxrss / 2**20, err


def model_class(weights: str) -> str:
    """config.json's `_class_name` (AutoencoderKL when absent, as diffusers' SD folders may be)."""
    config = Path(weights) / "config.json"
    if not config.is_file():
        return "?"
    return json.loads(config.read_text()).get("_class_name", "AutoencoderKL")


def latent_factor(weights: str) -> int:
    """Image pixels per latent pixel (each side), from config.json as diffusers' pipelines compute it."""
    config = Path(weights) / "config.json"
    if not config.is_file():
        return 8
    c = json.loads(config.read_text())
    name = c.get("_class_name", "AutoencoderKL")
    if name == "AutoencoderKLWan":
        return c.get("scale_factor_spatial") or 8
    if name == "AutoencoderKLQwenImage":
        return 2 ** len(c.get("temperal_downsample", [False, True, True]))
    if name == "AutoencoderTiny":
        return 8
    return 2 ** (len(c.get("block_out_channels", [0] * 4)) - 1)


def latent_shape(path: Path) -> list[int] | None:
    """Shape of a .safetensors file's `latent` tensor, from its header (no torch in this process)."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        return header["latent"]["shape"]
    except (OSError, ValueError, KeyError):
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True, help="diffusers folder (config.json + safetensors)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--vae", default=str(ROOT / "target/release/vae"))
    ap.add_argument("--image", default=str(ROOT / "tests/fixtures/images/kodim03.png"))
    ap.add_argument("--label", help="model name for the header and the table (default: config.json's _class_name)")
    ap.add_argument("--precision", choices=["f32", "bf16"], default="f32", help="both tools' precision")
    args = ap.parse_args()

    cls = model_class(args.weights)
    label = args.label or cls
    factor = latent_factor(args.weights)
    for size in args.sizes:
        if size % factor:
            # diffusers' preprocess would crop it down to a multiple, so the tools would not do the same job.
            sys.exit(f"--sizes: {size} is not a multiple of {factor} ({cls}: {factor}x per latent pixel)")
    print(f"# {label}: {cls} from {args.weights}, {factor}x downscale; sizes {args.sizes}, "
          f"median of {args.runs} runs, {args.threads} threads, {args.precision}", flush=True)

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), RAYON_NUM_THREADS=str(args.threads))
    tmp = Path(tempfile.mkdtemp(prefix="vae-bench-"))
    rows = []
    for size in args.sizes:
        image = tmp / f"in{size}.png"
        Image.open(args.image).convert("RGB").resize((size, size), Image.LANCZOS).save(image)
        latent_rs, latent_py = tmp / f"rs{size}.safetensors", tmp / f"py{size}.safetensors"
        precision = ["--precision", args.precision]
        jobs = {
            "encode": (
                [args.vae, "encode", str(image), "-o", str(latent_rs), "--force", "--timings", "-w", args.weights, *precision],
                [sys.executable, str(ROOT / "bench/torch_vae.py"), "encode", args.weights, str(image), str(latent_py), *precision],
            ),
            "decode": (
                [args.vae, "decode", str(latent_rs), "-o", str(tmp / "rs.png"), "--force", "--timings", "-w", args.weights, *precision],
                [sys.executable, str(ROOT / "bench/torch_vae.py"), "decode", args.weights, str(latent_py), str(tmp / "py.png"), *precision],
            ),
        }
        for job, (rs_cmd, py_cmd) in jobs.items():
            rs, py, stages = [], [], ""
            for _ in range(args.runs):
                wall, rss, err = run(rs_cmd, env)
                rs.append((wall, rss))
                stages = next((l for l in err.splitlines() if l.startswith("timings:")), "")
                py.append(run(py_cmd, env)[:2])
            rs_t, py_t = statistics.median(w for w, _ in rs), statistics.median(w for w, _ in py)
            rs_m, py_m = max(m for _, m in rs), max(m for _, m in py)
            rows.append((f"{job} {size}", rs_t, py_t, rs_m, py_m, stages))
            print(f"{label} {job} {size}: vae {rs_t:.2f}s {rs_m:.2f} GiB | torch {py_t:.2f}s {py_m:.2f} GiB | "
                  f"time ratio {rs_t / py_t:.2f}, memory ratio {rs_m / py_m:.2f}\n    vae {stages}", flush=True)
            if job == "encode":
                rs_shape, py_shape = latent_shape(latent_rs), latent_shape(latent_py)
                same = "same" if rs_shape == py_shape else "DIFFERENT: the two jobs are not alike"
                print(f"    latent: vae {rs_shape}, torch {py_shape} ({same})", flush=True)

    print(f"\n{label} ({cls}), median of {args.runs} runs, {args.threads} threads, {args.precision}:\n")
    print("| model | job | vae time | PyTorch time | ratio | vae peak RSS | PyTorch peak RSS | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rs_t, py_t, rs_m, py_m, _ in rows:
        print(f"| {label} | {name} | {rs_t:.2f} s | {py_t:.2f} s | {rs_t / py_t:.2f} | {rs_m:.2f} GiB | {py_m:.2f} GiB | "
              f"{rs_m / py_m:.2f} |")


if __name__ == "__main__":
    main()
