"""The GPU path's kernels, counted and timed one by one: one encode and one decode per binary.

    python3 bench/gpu_kernels.py --weights DIFFUSERS_DIR --size 128 VAE [VAE ...]

Each VAE is a `vae` binary built with a GPU feature (e.g. one `--features wgpu` build before a
change and one after). For each, a Kodak photo resized to SIZE x SIZE is encoded, and the CPU's
latent of it decoded, on `--device gpu`: first once to fill that binary's autotune cache (its
own folder, so that no tuning lands in the profile), then once with CubeCL's profiler on, which
launches each kernel alone and times it on the device. Reported per job: launches, device time
of the convolutions, of the attention's matmuls, and of everything else (normalisation,
activations, adds, layout copies), that last also as a share of the convolutions' time: on a
software adapter (lavapipe) the convolutions' time moves with the machine's load as the other
kernels' does, so the share compares runs better than the milliseconds do. Also the latent's
largest difference from the CPU's and the decoded image's PSNR against the CPU's. Not a test.
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools" / "gpu-check"))
import check  # noqa: E402  (the profile-log parser and PSNR of the GPU check)


def vae(binary: Path, args: list[str], cwd: Path, log: Path) -> None:
    with log.open("w") as err:
        if subprocess.run([str(binary), *args, "--force"], cwd=cwd, stderr=err, stdout=subprocess.DEVNULL).returncode:
            last = (log.read_text().strip().splitlines() or ["no message"])[-1]
            sys.exit(f"{binary} {' '.join(args)} failed: {last}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("binaries", nargs="+", type=Path, metavar="VAE")
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--precision", default="f32")
    parser.add_argument("--top", type=int, default=8, help="kernels listed per job")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="vae-gpu-kernels-"))
    image = work / "image.png"
    photo = Image.open(ROOT / "tests" / "fixtures" / "images" / "kodim03.png").convert("RGB")
    photo.resize((args.size, args.size), Image.LANCZOS).save(image)
    weights = ["--weights", str(args.weights.resolve())]
    cpu_latent, cpu_png = work / "cpu.safetensors", work / "cpu.png"
    first = args.binaries[0].resolve()
    vae(first, ["encode", str(image), "-o", str(cpu_latent), "--device", "cpu", *weights], work, work / "cpu.log")
    vae(first, ["decode", str(cpu_latent), "-o", str(cpu_png), "--device", "cpu", *weights], work, work / "cpu.log")
    cpu_z = next(iter(load_file(str(cpu_latent)).values())).astype(np.float64)
    cpu_img = np.asarray(Image.open(cpu_png)).astype(np.float64)

    print(f"{args.size}x{args.size}, --precision {args.precision}, work files in {work}")
    for n, binary in enumerate(args.binaries):
        binary = binary.resolve()
        run = work / f"binary-{n}"
        (run / "profile").mkdir(parents=True)
        cache = f'[environment]\npath = {{ directory = "{run / "cubecl-cache"}" }}\n'
        (run / "cubecl.toml").write_text(cache)
        (run / "profile" / "cubecl.toml").write_text(f'[profiling.logger]\nlevel = "basic"\nstderr = true\n\n{cache}')
        gpu = ["--device", "gpu", "--precision", args.precision, *weights]
        print(f"\n{binary}")
        for op, source, output in [("encode", image, "z.safetensors"), ("decode", cpu_latent, "image.png")]:
            job = [op, str(source), "-o", output, *gpu]
            vae(binary, job, run, run / f"{op}.log")  # the warm-up: autotune, caches
            vae(binary, job, run / "profile", run / "profile" / f"{op}.log")
            rows = check.cubecl_profile(run / "profile" / f"{op}.log")
            if not rows:
                sys.exit(f"{binary}: no kernel in the profile (a build without a GPU feature?)")
            conv = sum(r["s"] for r in rows if "conv" in r["name"].lower())
            matmul = sum(r["s"] for r in rows if "matmul" in r["name"].lower())
            other = sum(r["s"] for r in rows) - conv - matmul
            if op == "encode":
                z = next(iter(load_file(str(run / "profile" / output)).values())).astype(np.float64)
                parity = f"latent within {np.abs(z - cpu_z).max():.2e} of the CPU's"
            else:
                decoded = np.asarray(Image.open(run / "profile" / output)).astype(np.float64)
                parity = f"PSNR {check.psnr(decoded, cpu_img):.1f} dB against the CPU's image"
            print(
                f"  {op}: {sum(r['count'] for r in rows)} launches; convolutions {1e3 * conv:.0f} ms, "
                f"matmuls {1e3 * matmul:.0f} ms, other kernels {1e3 * other:.0f} ms "
                f"({100 * other / conv:.2f}% of the convolutions'); {parity}"
            )
            for r in rows[: args.top]:
                print(f"    {1e3 * r['s']:9.2f} ms {r['count']:5d}x  {r['name'][:80]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
