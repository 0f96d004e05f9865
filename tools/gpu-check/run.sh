#!/usr/bin/env bash
# GPU check for `vae`, on a machine with a GPU, PyTorch, and neither Rust nor a network:
# parity of the carried `vae` binary's GPU path with its own CPU f32 path, and its speed
# against PyTorch + diffusers in the same run. See tools/gpu-check/README.md.
#
#   VAE=./vae tools/gpu-check/run.sh                 # everything from the defaults below
#   DEVICE=cpu TORCH_DEVICE=cpu PRECISIONS=f32 TORCH_DTYPES=fp32 \
#     WEIGHTS=tests/fixtures/weights/tiny_sd tools/gpu-check/run.sh   # the CPU-only dry run
#
# Exit status: 0 when every parity check passed, 1 when one failed, 2 when a step could not run.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
VAE="${VAE:-$repo/target/release/vae}"
DEVICE="${DEVICE:-gpu}"                # what `vae --device` gets
TORCH_DEVICE="${TORCH_DEVICE:-cuda}"   # where PyTorch runs
PRECISIONS="${PRECISIONS:-f32 f16}"    # `vae --precision` values to check and time
TORCH_DTYPES="${TORCH_DTYPES:-fp32 fp16}"
REPEAT="${REPEAT:-5}"                  # timed runs after one warm-up, in both tools
IMAGE="${IMAGE:-$repo/tests/fixtures/images/kodim03.png}"
WEIGHTS="${WEIGHTS:-}"                 # a diffusers AutoencoderKL folder; default: SD 1.x-size random
WHEELS="${WHEELS:-$here/wheels}"       # diffusers and its dependencies, when not installed
OUT="${OUT:-$PWD/gpu-check-out}"

fail() { echo "gpu-check: $*" >&2; exit 2; }
[ -x "$VAE" ] || fail "no vae binary at $VAE (set VAE=)"
[ -f "$IMAGE" ] || fail "no image at $IMAGE (set IMAGE=)"
mkdir -p "$OUT"

if ! python3 -c 'import torch' 2>/dev/null; then fail "PyTorch is not installed"; fi
if ! python3 -c 'import diffusers, safetensors, PIL, numpy' 2>/dev/null; then
  [ -d "$WHEELS" ] || fail "diffusers is not installed and $WHEELS holds no wheels (README: carrying the wheels)"
  echo "gpu-check: installing diffusers from $WHEELS" >&2
  python3 -m pip install --quiet --no-index --find-links "$WHEELS" diffusers safetensors pillow numpy \
    || fail "installing the wheels in $WHEELS failed"
fi

if [ -z "$WEIGHTS" ]; then
  WEIGHTS="$OUT/weights-sd15-random"
  [ -f "$WEIGHTS/config.json" ] || python3 "$here/check.py" make-weights "$WEIGHTS"
fi

"$VAE" --version
run_vae() { # LOG ARGS...: runs vae, keeping its stderr in LOG
  local log="$1"; shift
  if ! "$VAE" "$@" --weights "$WEIGHTS" --force 2>"$OUT/$log"; then
    echo "gpu-check: vae $* failed:" >&2; tail -n 5 "$OUT/$log" >&2; return 1
  fi
}

# The reference: the CPU path in f32 (itself held to 1e-4 of diffusers' float64 pass by the tests).
run_vae cpu_encode.log encode "$IMAGE" -o "$OUT/cpu.safetensors" --device cpu || exit 2
run_vae cpu_decode.log decode "$OUT/cpu.safetensors" -o "$OUT/cpu.png" --device cpu || exit 2

status=0
for p in $PRECISIONS; do
  # Encode the image, and decode the CPU's latent, so that each half is compared on its own.
  run_vae "encode_$p.log" encode "$IMAGE" -o "$OUT/$p.safetensors" --device "$DEVICE" --precision "$p" --repeat "$REPEAT" || status=1
  run_vae "decode_$p.log" decode "$OUT/cpu.safetensors" -o "$OUT/$p.png" --device "$DEVICE" --precision "$p" --repeat "$REPEAT" || status=1
done

python3 "$here/check.py" torch-bench --weights "$WEIGHTS" --image "$IMAGE" --latent "$OUT/cpu.safetensors" \
  --device "$TORCH_DEVICE" --dtypes $TORCH_DTYPES --repeat "$REPEAT" --out "$OUT/torch.json" || status=1

python3 "$here/check.py" report --out "$OUT" --precisions $PRECISIONS || status=1
exit "$status"
