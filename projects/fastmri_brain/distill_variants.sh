#!/usr/bin/env bash
# The distillation variants of issue 13 item 2 on the small tier (nested Cartesian-Y, R = 32), in one command:
#
#   bash projects/fastmri_brain/distill_variants.sh [WORK_DIR]      (default: small_tier/, as small_tier.sh)
#
# Needs what projects/fastmri_brain/small_tier.sh leaves in WORK_DIR: the simulated data (data/train, data/val), the
# small AQ-VAE (runs/small_aqvae/model_1499.pt) and the small NextAccel base model
# (runs/small_nextaccel_cartesian_y/model_1499.pt). Then:
# 1. two privileged teachers (configs/small/teacher_cartesian_y.yaml, 1500 iterations at batch 4 each), which differ
#    only in their randomized prefixes: `mixed` (random codes or the teacher's own argmax, fraction 0.2: the earlier
#    choice) and `base_rollout` (the frozen base model's own sampled rollout, fraction 0.5: the config's);
# 2. four distillations of the base model (configs/small/distill_cartesian_y.yaml, 600 iterations at batch 4 each):
#    {argmax, multinomial} student rollout x {mixed, base_rollout} teacher;
# 3. `direct-nextaccel benchmark` on the validation subjects: zero-filled, the base model and the four distilled
#    students, the AQ-VAE's bound rows and the memorisation columns. The gain of a variant is its row minus the
#    base model's row (WORK_DIR/bench/distill_variants/benchmark.md).
# Every run uses direct train's default --seed, so all variants see the same data order. Finished runs are reused.
set -euo pipefail
SCRIPT=distill_variants.sh
# shellcheck source=projects/fastmri_brain/small_tier_lib.sh
source "$(dirname "$0")/small_tier_lib.sh" "${1:-small_tier}"
BASE="$WORK/runs/small_nextaccel_cartesian_y/model_1499.pt"
require "$DATA/train" "$DATA/val" "$TOKENIZER" "$BASE"
mkdir -p "$WORK/configs" "$WORK/bench"

wait_all() {  # PID...: fail when any of them failed
  local status=0
  for pid in "$@"; do wait "$pid" || status=1; done
  return "$status"
}

paths=(-e "s#^  tokenizer_checkpoint: .*#  tokenizer_checkpoint: $TOKENIZER#"
       -e "s#^  prefix_model_checkpoint: .*#  prefix_model_checkpoint: $BASE#"
       -e "s#^  model_checkpoint: .*#  model_checkpoint: $BASE#")
sed "${paths[@]}" "$CONFIGS/nextaccel_cartesian_y.yaml" > "$WORK/configs/nextaccel_cartesian_y.yaml"
sed "${paths[@]}" "$CONFIGS/teacher_cartesian_y.yaml" > "$WORK/configs/teacher_base_rollout.yaml"
sed "${paths[@]}" -e "s#^  prefix_noise: .*#  prefix_noise: mixed#" \
  -e "s#^  prefix_noise_fraction: .*#  prefix_noise_fraction: 0.2#" \
  "$CONFIGS/teacher_cartesian_y.yaml" > "$WORK/configs/teacher_mixed.yaml"

OMP_NUM_THREADS=1 train "$WORK/configs/teacher_mixed.yaml" small_teacher_mixed 1499 &
first=$!
OMP_NUM_THREADS=1 train "$WORK/configs/teacher_base_rollout.yaml" small_teacher_base_rollout 1499 &
wait_all "$first" "$!"

runs=()
for teacher in mixed base_rollout; do
  pids=()
  for rollout in argmax multinomial; do
    name="small_distill_${rollout}_${teacher}"
    sed "${paths[@]}" -e "s#^  rollout: .*#  rollout: $rollout#" \
      -e "s#^  teacher_checkpoint: .*#  teacher_checkpoint: $WORK/runs/small_teacher_$teacher/model_1499.pt#" \
      "$CONFIGS/distill_cartesian_y.yaml" > "$WORK/configs/distill_${rollout}_${teacher}.yaml"
    OMP_NUM_THREADS=1 train "$WORK/configs/distill_${rollout}_${teacher}.yaml" "$name" 599 &
    pids+=("$!")
    runs+=("distilled-${rollout}-${teacher}=$WORK/configs/nextaccel_cartesian_y.yaml:$WORK/runs/$name/model_599.pt")
  done
  wait_all "${pids[@]}"
done

"$BIN/direct-nextaccel" benchmark --data "$DATA/val" --output "$WORK/bench/distill_variants" --family cartesian_y \
  --run "NextAccel=$WORK/configs/nextaccel_cartesian_y.yaml:$BASE" "${runs[@]}" \
  --bound "AQ-VAE=$CONFIGS/aqvae.yaml:$TOKENIZER" \
  --training-root "$DATA/train" --metrics psnr ssim nmse haarpsi
