#!/usr/bin/env bash
# Issue 16's tables in README.md: one NextAccel for all four nested families against four per-family models at equal
# total budget (R = 32), and the one model against R (32, 16, 8, 4) next to E2EVarNet trained per R.
#
#   bash projects/fastmri_brain/one_model.sh [WORK_DIR]      (default: small_tier/, as small_tier.sh)
#
# Needs what small_tier.sh builds in WORK_DIR: the simulated data, the small AQ-VAE and E2EVarNet at R = 32 for
# Cartesian-Y. Trains (one thread each, two at a time): the one model (1200 iterations at batch 4 = 4800 slices), one
# model per family (300 iterations = 1200 slices each, 4800 in all) and E2EVarNet for Cartesian-Y at R = 16, 8, 4
# (the R = 32 recipe: 3000 iterations at batch 2). Then benchmarks on the validation subjects. Finished runs are reused.
set -euo pipefail
SCRIPT=one_model.sh
# shellcheck source=projects/fastmri_brain/small_tier_lib.sh
source "$(dirname "$0")/small_tier_lib.sh" "${1:-small_tier}"
E2E32="$WORK/runs/small_e2evarnet_cartesian_y/model_2999.pt"
require "$DATA/train" "$DATA/val" "$TOKENIZER" "$E2E32"
mkdir -p "$WORK/runs" "$WORK/bench" "$WORK/configs"
export OMP_NUM_THREADS=1

# Configs: the repository's, with this run's tokenizer; per-family models at a quarter of the one model's iterations.
sed "s#^  tokenizer_checkpoint: .*#  tokenizer_checkpoint: $TOKENIZER#" "$CONFIGS/nextaccel_all_families.yaml" \
  > "$WORK/configs/nextaccel_all_families.yaml"
declare -A MASK=([cartesian_x]=NestedCartesianX [cartesian_y]=NestedCartesianY [radial]=NestedRadial
  [gaussian2d]=NestedGaussian2D)
for family in cartesian_x cartesian_y radial gaussian2d; do
  sed -e "s#^  tokenizer_checkpoint: .*#  tokenizer_checkpoint: $TOKENIZER#" -e "s/^  mask_family: .*/  mask_family: $family/" \
    -e "s/name: NestedCartesianY/name: ${MASK[$family]}/" -e "s/num_iterations: 1500/num_iterations: 300/" \
    -e "s/checkpoint_steps: 500/checkpoint_steps: 300/" -e "s/validation_steps: 1500/validation_steps: 100000/" \
    "$CONFIGS/nextaccel_cartesian_y.yaml" > "$WORK/configs/nextaccel_${family}_300.yaml"
done
for R in 16 8 4; do
  sed -e "s/accelerations: \[32\]/accelerations: [$R]/" -e "s/cartesian_y_32x/cartesian_y_${R}x/" \
    "$CONFIGS/e2evarnet_cartesian_y.yaml" > "$WORK/configs/e2evarnet_cartesian_y_r$R.yaml"
done

train "$WORK/configs/nextaccel_all_families.yaml" small_nextaccel_all_families 1199 &
(for family in cartesian_y cartesian_x radial gaussian2d; do
  train "$WORK/configs/nextaccel_${family}_300.yaml" "small_nextaccel_${family}_300" 299
done) &
wait
train "$WORK/configs/e2evarnet_cartesian_y_r16.yaml" small_e2evarnet_cartesian_y_r16 2999 &
train "$WORK/configs/e2evarnet_cartesian_y_r8.yaml" small_e2evarnet_cartesian_y_r8 2999 &
wait
train "$WORK/configs/e2evarnet_cartesian_y_r4.yaml" small_e2evarnet_cartesian_y_r4 2999

ONE="One-model=$WORK/configs/nextaccel_all_families.yaml:$WORK/runs/small_nextaccel_all_families/model_1199.pt"
bench() {  # OUTPUT FAMILY R RUN...
  local output=$1 family=$2 R=$3
  shift 3
  "$BIN/direct-nextaccel" benchmark --data "$DATA/val" --output "$WORK/bench/$output" --family "$family" \
    --acceleration "$R" --metrics psnr ssim haarpsi --run "$@"
}
# 1. R = 32, per family: the one model against the family's own model.
for family in cartesian_y cartesian_x radial gaussian2d; do
  bench "one_model_${family}_r32" "$family" 32 "$ONE" \
    "Per-family=$WORK/configs/nextaccel_${family}_300.yaml:$WORK/runs/small_nextaccel_${family}_300/model_299.pt"
done
# 2. Against R: the one model on every family; E2EVarNet trained at each R (Cartesian-Y).
for R in 32 16 8 4; do
  if [ "$R" = 32 ]; then e2e="$CONFIGS/e2evarnet_cartesian_y.yaml:$E2E32"
  else e2e="$WORK/configs/e2evarnet_cartesian_y_r$R.yaml:$WORK/runs/small_e2evarnet_cartesian_y_r$R/model_2999.pt"; fi
  bench "against_r_cartesian_y_r$R" cartesian_y "$R" "$ONE" "E2EVarNet-R$R=$e2e"
  if [ "$R" != 32 ]; then
    for family in cartesian_x radial gaussian2d; do bench "against_r_${family}_r$R" "$family" "$R" "$ONE"; done
  fi
done
