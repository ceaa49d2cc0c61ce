#!/usr/bin/env bash
# The small-tier MSVQ-VAE bound table of README.md (issue 12), from the shared data to the table, in one command:
#
#   bash projects/miar_brain/small_tier.sh [WORK_DIR]      (default: small_tier/ in the current folder)
#
# 1. simulate the training/validation subject split of ../shared/data/README.md at 64 x 64, 4 coils (shared with
#    projects/fastmri_brain/small_tier.sh when both use the same WORK_DIR);
# 2. train the small MSVQ-VAE (6000 slices);
# 3. `direct-nextaccel benchmark` on the validation subjects at 4 x 4 super-resolution: zero-padding of the
#    low-resolution k-space (the zero-filled row) against the MSVQ-VAE's bound (the fully sampled slice decoded from
#    its own tokens of all scales), with the memorisation columns against the training slices.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
WORK="${1:-small_tier}"
SHARED="${SHARED_DATA:-$REPO/../shared/data}"
BIN="$(dirname "$(command -v direct-nextaccel || echo "$REPO/.venv/bin/direct-nextaccel")")"
CONFIG="$HERE/configs/small/msvqvae.yaml"
mkdir -p "$WORK/runs" "$WORK/bench"
DATA="$WORK/data"

if [ ! -d "$DATA/val" ]; then
  "$BIN/direct-nextaccel" simulate "$SHARED/brain" --split --output "$DATA" --matrix 64 64 --coils 4 --max-slices 16
fi
if [ ! -f "$WORK/runs/small_msvqvae/model_1499.pt" ]; then
  "$BIN/direct" train "$WORK/runs" --cfg "$CONFIG" --training-root "$DATA/train" --validation-root "$DATA/val" \
    --name small_msvqvae --device cpu --num-gpus 0 --num-workers 0 > "$WORK/runs/small_msvqvae.log" 2>&1
fi
"$BIN/direct-nextaccel" benchmark --data "$DATA/val" --output "$WORK/bench/superresolution" \
  --bound "MSVQ-VAE=$CONFIG:$WORK/runs/small_msvqvae/model_1499.pt" --training-root "$DATA/train" \
  --metrics psnr ssim nmse haarpsi
