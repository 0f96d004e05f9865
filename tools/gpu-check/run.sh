#!/usr/bin/env bash
# GPU check for `vae`, on a machine with a GPU, PyTorch, and neither Rust nor a network:
# parity of the carried `vae` binary's GPU paths with its own CPU f32 path, and its speed
# (one image, and a batch) against PyTorch + diffusers in the same run. See README.md here.
#
#   VAE=./vae tools/gpu-check/run.sh                 # everything from the defaults below
#   DEVICES=cpu TORCH_DEVICE=cpu PRECISIONS=f32 TORCH_DTYPES=fp32 BATCH=2 \
#     WEIGHTS=tests/fixtures/weights/tiny_sd tools/gpu-check/run.sh   # the CPU-only dry run
#
# Exit status: 0 when every parity check passed, 1 when one failed, 2 when a step could not run.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
VAE="${VAE:-$repo/target/release/vae}"
DEVICES="${DEVICES:-cuda wgpu}"        # `vae --device` values, each checked and timed
TORCH_DEVICE="${TORCH_DEVICE:-cuda}"   # where PyTorch runs
PRECISIONS="${PRECISIONS:-f32 f16}"    # `vae --precision` values
TORCH_DTYPES="${TORCH_DTYPES:-fp32 fp16}"
REPEAT="${REPEAT:-5}"                  # timed runs after one warm-up, in both tools
BATCH="${BATCH:-8}"                    # images in the batched runs (0: none)
PROFILE="${PROFILE-${DEVICES%% *}}"    # devices profiled kernel by kernel, beside PyTorch ('': none)
IMAGE="${IMAGE:-}"                     # default: a 512x512 crop of kodim03, the issue's size
WEIGHTS="${WEIGHTS:-}"                 # a diffusers AutoencoderKL folder; default: SD 1.x-size random
WHEELS="${WHEELS:-$here/wheels}"       # diffusers and its dependencies, when not installed
OUT="${OUT:-$PWD/gpu-check-out}"

fail() { echo "gpu-check: $*" >&2; exit 2; }
[ -x "$VAE" ] || fail "no vae binary at $VAE (set VAE=)"
mkdir -p "$OUT"
VAE="$(realpath "$VAE")"; OUT="$(realpath "$OUT")"

if ! python3 -c 'import torch' 2>/dev/null; then fail "PyTorch is not installed"; fi
if ! python3 -c 'import diffusers, safetensors, PIL, numpy' 2>/dev/null; then
  [ -d "$WHEELS" ] || fail "diffusers is not installed and $WHEELS holds no wheels (README: carrying the wheels)"
  echo "gpu-check: installing diffusers from $WHEELS" >&2
  python3 -m pip install --quiet --no-index --find-links "$WHEELS" diffusers safetensors pillow numpy \
    || fail "installing the wheels in $WHEELS failed"
fi

# burn-cuda compiles its kernels with NVRTC, which cudarc loads at run time: put the folder of
# a libnvrtc (the CUDA toolkit's, or PyTorch's nvidia-cuda-nvrtc wheel's) on the library path.
if [[ " $DEVICES " == *" cuda "* || " $DEVICES " == *" gpu "* ]] && ! ldconfig -p | grep -q 'libnvrtc\.so'; then
  nvrtc="$(find /usr/local/cuda*/lib64 /usr/local/cuda*/targets/*/lib /opt /usr/lib \
    "$(python3 -c 'import site; print(site.getsitepackages()[0])')" \
    -name 'libnvrtc.so*' 2>/dev/null | head -n 1 || true)"
  if [ -n "$nvrtc" ]; then
    export LD_LIBRARY_PATH="$(dirname "$nvrtc")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "gpu-check: NVRTC from $(dirname "$nvrtc")" >&2
  else
    echo "gpu-check: no libnvrtc found; --device cuda will fail" >&2
  fi
fi

if [ -z "$IMAGE" ]; then
  IMAGE="$OUT/image-512.png"
  python3 "$here/check.py" make-image "$repo/tests/fixtures/images/kodim03.png" "$IMAGE"
fi
[ -f "$IMAGE" ] || fail "no image at $IMAGE (set IMAGE=)"
IMAGE="$(realpath "$IMAGE")"
if [ -z "$WEIGHTS" ]; then
  WEIGHTS="$OUT/weights-sd15-random"
  [ -f "$WEIGHTS/config.json" ] || python3 "$here/check.py" make-weights "$WEIGHTS"
fi
WEIGHTS="$(realpath "$WEIGHTS")"

# vae runs in $OUT, where this cubecl.toml makes CubeCL log each autotune decision (one line per
# operation and shape: the kernel that won, and the top 3 times) into the run's log; the report
# counts the winners, e.g. whether convolutions got an implicit GEMM on tensor cores or the
# direct kernel (WGPU.md here). It also keeps the autotune results on disk in $OUT/cubecl-cache
# (instead of the user cache directory), emptied here so that the first runs start cold.
rm -rf "$OUT/cubecl-cache"
cache_dir="$(printf '[environment]\npath = { directory = "%s" }' "$OUT/cubecl-cache")"
printf '[autotune.logger]\nlevel = "minimal"\nstderr = true\n\n%s\n' "$cache_dir" >"$OUT/cubecl.toml"

"$VAE" --version
run_vae() { # LOG ARGS...: runs vae in $OUT (or $RUN_IN), keeping its stderr in $OUT/LOG
  local log="$1"; shift
  if ! (cd "${RUN_IN:-$OUT}" && "$VAE" "$@" --weights "$WEIGHTS" --force 2>"$OUT/$log"); then
    echo "gpu-check: vae $* failed:" >&2; tail -n 5 "$OUT/$log" >&2; return 1
  fi
}

# The reference: the CPU path in f32 (itself held to 1e-4 of diffusers' float64 pass by the tests).
run_vae cpu_encode.log encode "$IMAGE" -o "$OUT/cpu.safetensors" --device cpu || exit 2
run_vae cpu_decode.log decode "$OUT/cpu.safetensors" -o "$OUT/cpu.png" --device cpu || exit 2

# The batch: BATCH copies of the image and of the CPU's latent (vae reads each file; the model
# gets one tensor of BATCH images, as PyTorch does below).
if [ "$BATCH" -gt 0 ]; then
  mkdir -p "$OUT/batch-in"
  for i in $(seq 1 "$BATCH"); do
    cp "$IMAGE" "$OUT/batch-in/image-$i.png"
    cp "$OUT/cpu.safetensors" "$OUT/batch-in/latent-$i.safetensors"
  done
fi

status=0
for d in $DEVICES; do
  for p in $PRECISIONS; do
    # Encode the image, and decode the CPU's latent, so that each half is compared on its own.
    args=(--device "$d" --precision "$p" --repeat "$REPEAT")
    run_vae "encode_${d}_$p.log" encode "$IMAGE" -o "$OUT/${d}_$p.safetensors" "${args[@]}" || status=1
    run_vae "decode_${d}_$p.log" decode "$OUT/cpu.safetensors" -o "$OUT/${d}_$p.png" "${args[@]}" || status=1
    if [ "$BATCH" -gt 0 ]; then
      mkdir -p "$OUT/batch-${d}_$p"
      run_vae "encode_batch_${d}_$p.log" encode "$OUT"/batch-in/image-*.png -o "$OUT/batch-${d}_$p" \
        --batch-size "$BATCH" "${args[@]}" || status=1
      run_vae "decode_batch_${d}_$p.log" decode "$OUT"/batch-in/latent-*.safetensors -o "$OUT/batch-${d}_$p" \
        --batch-size "$BATCH" "${args[@]}" || status=1
    fi
  done
done

# A second process for each single-image run: its warm-up finds the first one's autotune
# results on disk, which is what every run after the first on a machine gets.
for d in $DEVICES; do
  for p in $PRECISIONS; do
    args=(--device "$d" --precision "$p" --repeat 1)
    run_vae "encode_again_${d}_$p.log" encode "$IMAGE" -o "$OUT/again_${d}_$p.safetensors" "${args[@]}" || status=1
    run_vae "decode_again_${d}_$p.log" decode "$OUT/cpu.safetensors" -o "$OUT/again_${d}_$p.png" "${args[@]}" || status=1
  done
done

# Op by op: one pass of each with CubeCL's profiler on (each kernel launched alone and timed on
# the device, so the sum exceeds a normal pass), the autotune results already on disk; PyTorch's
# side runs under torch.profiler in torch-bench.
if [ -n "$PROFILE" ]; then
  mkdir -p "$OUT/profile"
  printf '[profiling.logger]\nlevel = "basic"\nstderr = true\n\n%s\n' "$cache_dir" >"$OUT/profile/cubecl.toml"
  for d in $PROFILE; do
    for p in $PRECISIONS; do
      args=(--device "$d" --precision "$p")
      RUN_IN="$OUT/profile" run_vae "profile/encode_${d}_$p.log" encode "$IMAGE" -o "$OUT/profile/${d}_$p.safetensors" "${args[@]}" || status=1
      RUN_IN="$OUT/profile" run_vae "profile/decode_${d}_$p.log" decode "$OUT/cpu.safetensors" -o "$OUT/profile/${d}_$p.png" "${args[@]}" || status=1
    done
  done
fi

python3 "$here/check.py" torch-bench --weights "$WEIGHTS" --image "$IMAGE" --latent "$OUT/cpu.safetensors" \
  --device "$TORCH_DEVICE" --dtypes $TORCH_DTYPES --repeat "$REPEAT" --batch "$BATCH" ${PROFILE:+--profile} \
  --out "$OUT/torch.json" || status=1

python3 "$here/check.py" report --out "$OUT" --devices $DEVICES --precisions $PRECISIONS --batch "$BATCH" \
  --profile $PROFILE || status=1
exit "$status"
