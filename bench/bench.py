"""Whole-process benchmark: `vae` against PyTorch + diffusers on the same machine, same run.

    python3 bench/bench.py --weights DIFFUSERS_DIR [--sizes 512 1024] [--runs 3] [--threads 2]

For each size, a Kodak photo resized to SIZE x SIZE is encoded, and its latent decoded, by
both tools, alternating runs so that machine noise hits both alike. Reported per job: median
wall time, peak RSS (from wait4, i.e. the kernel's own high-water mark of that process), and
the ratio vae / PyTorch (below 1 means vae is faster or lighter). `vae`'s own stage times
(--timings) are printed too. Not a test: timings on a shared machine are noisy; compare
ratios from one run.
"""

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True, help="diffusers folder (config.json + safetensors)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--vae", default=str(ROOT / "target/release/vae"))
    ap.add_argument("--image", default=str(ROOT / "tests/fixtures/images/kodim03.png"))
    args = ap.parse_args()

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), RAYON_NUM_THREADS=str(args.threads))
    tmp = Path(tempfile.mkdtemp(prefix="vae-bench-"))
    rows = []
    for size in args.sizes:
        image = tmp / f"in{size}.png"
        Image.open(args.image).convert("RGB").resize((size, size), Image.LANCZOS).save(image)
        latent_rs, latent_py = tmp / f"rs{size}.safetensors", tmp / f"py{size}.safetensors"
        jobs = {
            "encode": (
                [args.vae, "encode", str(image), "-o", str(latent_rs), "--force", "--timings", "-w", args.weights],
                [sys.executable, str(ROOT / "bench/torch_vae.py"), "encode", args.weights, str(image), str(latent_py)],
            ),
            "decode": (
                [args.vae, "decode", str(latent_rs), "-o", str(tmp / "rs.png"), "--force", "--timings", "-w", args.weights],
                [sys.executable, str(ROOT / "bench/torch_vae.py"), "decode", args.weights, str(latent_py), str(tmp / "py.png")],
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
            print(f"{job} {size}: vae {rs_t:.2f}s {rs_m:.2f} GiB | torch {py_t:.2f}s {py_m:.2f} GiB | "
                  f"time ratio {rs_t / py_t:.2f}, memory ratio {rs_m / py_m:.2f}\n    vae {stages}", flush=True)

    print("\n| job | vae time | PyTorch time | ratio | vae peak RSS | PyTorch peak RSS | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, rs_t, py_t, rs_m, py_m, _ in rows:
        print(f"| {name} | {rs_t:.2f} s | {py_t:.2f} s | {rs_t / py_t:.2f} | {rs_m:.2f} GiB | {py_m:.2f} GiB | {rs_m / py_m:.2f} |")


if __name__ == "__main__":
    main()
