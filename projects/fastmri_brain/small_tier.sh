#!/usr/bin/env bash
# The small-tier tokenizer-bound tables of README.md (issue 12), from the shared data to the tables, in one command:
#
#   bash projects/fastmri_brain/small_tier.sh [WORK_DIR]      (default: small_tier/ in the current folder)
#
# 1. simulate the training/validation subject split of ../shared/data/README.md at 64 x 64, 4 coils;
# 2. train the small AQ-VAE (all four nested families, 6000 slices) and, per family, E2EVarNet and RecurrentVarNet
#    at R = 32 on the same 6000 slices (one thread each, so two can share the 2 cores);
#    and the NextAccel base model for Cartesian-Y on the AQ-VAE's tokens (6000 slices);
# 3. per family, `direct-nextaccel benchmark` on the validation subjects: zero-filled, both baselines (and NextAccel
#    for Cartesian-Y), the AQ-VAE's bound rows (fully sampled slice from its own tokens of all six levels, and from
#    the R = 32 tokens alone) and the memorisation columns against the training slices.
# Finished runs and simulated data are reused, so an interrupted script continues where it stopped.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
WORK="${1:-small_tier}"
SHARED="${SHARED_DATA:-$REPO/../shared/data}"
BIN="$(dirname "$(command -v direct-nextaccel || echo "$REPO/.venv/bin/direct-nextaccel")")"
CONFIGS="$HERE/configs/small"
mkdir -p "$WORK/runs" "$WORK/bench"
DATA="$WORK/data"

if [ ! -d "$DATA/val" ]; then
  "$BIN/direct-nextaccel" simulate "$SHARED/brain" --split --output "$DATA" --matrix 64 64 --coils 4 --max-slices 16
fi

train() {  # CONFIG NAME LAST_ITERATION
  if [ -f "$WORK/runs/$2/model_$3.pt" ]; then return; fi
  "$BIN/direct" train "$WORK/runs" --cfg "$1" --training-root "$DATA/train" --validation-root "$DATA/val" \
    --name "$2" --device cpu --num-gpus 0 --num-workers 0 > "$WORK/runs/$2.log" 2>&1
}

train "$CONFIGS/aqvae.yaml" small_aqvae 1499
mkdir -p "$WORK/configs"  # the NextAccel config with model.tokenizer_checkpoint pointing at this run's tokenizer
sed "s#^  tokenizer_checkpoint: .*#  tokenizer_checkpoint: $WORK/runs/small_aqvae/model_1499.pt#" \
  "$CONFIGS/nextaccel_cartesian_y.yaml" > "$WORK/configs/nextaccel_cartesian_y.yaml"
train "$WORK/configs/nextaccel_cartesian_y.yaml" small_nextaccel_cartesian_y 1499
for family in cartesian_y cartesian_x radial gaussian2d; do
  OMP_NUM_THREADS=1 train "$CONFIGS/e2evarnet_$family.yaml" "small_e2evarnet_$family" 2999 &
  OMP_NUM_THREADS=1 train "$CONFIGS/recurrentvarnet_$family.yaml" "small_recurrentvarnet_$family" 2999 &
  wait
done

for family in cartesian_y cartesian_x radial gaussian2d; do
  nextaccel=()
  if [ "$family" = cartesian_y ]; then
    nextaccel=("NextAccel=$WORK/configs/nextaccel_cartesian_y.yaml:$WORK/runs/small_nextaccel_cartesian_y/model_1499.pt")
  fi
  "$BIN/direct-nextaccel" benchmark --data "$DATA/val" --output "$WORK/bench/$family" --family "$family" \
    --run "E2EVarNet=$CONFIGS/e2evarnet_$family.yaml:$WORK/runs/small_e2evarnet_$family/model_2999.pt" \
    "RecurrentVarNet=$CONFIGS/recurrentvarnet_$family.yaml:$WORK/runs/small_recurrentvarnet_$family/model_2999.pt" \
    "${nextaccel[@]}" \
    --bound "AQ-VAE=$CONFIGS/aqvae.yaml:$WORK/runs/small_aqvae/model_1499.pt" \
    --training-root "$DATA/train" --metrics psnr ssim nmse haarpsi
done
