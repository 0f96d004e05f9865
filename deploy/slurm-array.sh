#!/bin/bash
# Latents for a dataset of WebDataset shards on a Slurm job array.
#
#   sbatch deploy/slurm-array.sh
#   vae dataset report /shared/latents/sd15     # totals, once the array is done
#
# Each array task is one worker: `vae` reads SLURM_ARRAY_TASK_ID, _MIN, _STEP and
# SLURM_ARRAY_TASK_COUNT, so tasks 0..63 take the shards at positions i, i+64, ...
# of the name-sorted list. Requeued or re-submitted tasks skip finished shards
# (OUTPUT/NAME.tar exists) and redo only the one they were in the middle of.
#SBATCH --job-name=vae-latents
#SBATCH --array=0-63%32          # 64 workers, at most 32 at once
#SBATCH --cpus-per-task=8
#SBATCH --mem=8G
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --output=logs/vae-%A_%a.log

set -euo pipefail
# On GPU nodes, once `vae` is built with a GPU backend (see README, "GPU"):
#   #SBATCH --gres=gpu:1   and   --device gpu
# A GPU build keeps its kernel tuning in $XDG_CACHE_HOME/cubecl (else ~/.cache/cubecl),
# shared by the processes of a node. Where home is a network file system, a node-local
# folder is kinder to it:   export XDG_CACHE_HOME="${SLURM_TMPDIR:-/tmp}/cache"
exec vae dataset encode \
    '/shared/laion-subset/{00000..00999}.tar' \
    --output /shared/latents/sd15 \
    --weights /shared/weights/sd-vae-ft-mse \
    --tmp-dir "${SLURM_TMPDIR:-/tmp}"
