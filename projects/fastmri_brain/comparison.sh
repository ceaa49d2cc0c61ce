#!/usr/bin/env bash
# Issue 13's comparison tables in README.md: NextAccel base and distilled against zero-filled, E2EVarNet and
# RecurrentVarNet for each nested family at R = 32, with the AQ-VAE's bound rows and the memorisation columns.
#
#   bash projects/fastmri_brain/comparison.sh [WORK_DIR]      (default: small_tier/, as small_tier.sh)
#
# Needs what small_tier.sh builds in WORK_DIR: the simulated data, the small AQ-VAE and both baselines of every
# family (6000 slices each). Trains, one thread each:
# 1. the one NextAccel base model on all four families (configs/small/nextaccel_all_families.yaml at 1500
#    iterations x batch 4 = 6000 slices, the baselines' budget);
# 2. the privileged teacher started from it (configs/small/teacher_all_families.yaml, 300 iterations = 1200 slices);
# 3. two distillations of the base model by that teacher (configs/small/distill_all_families.yaml, 150 iterations =
#    600 slices each): the paper's sampled rollout and the argmax rollout;
# then `direct-nextaccel benchmark` per family on the validation subjects (last checkpoints, nothing selected on
# them; WORK_DIR/bench/comparison_<family>/benchmark.md). Finished runs are reused.
set -euo pipefail
SCRIPT=comparison.sh
# shellcheck source=projects/fastmri_brain/small_tier_lib.sh
source "$(dirname "$0")/small_tier_lib.sh" "${1:-small_tier}"
FAMILIES=(cartesian_y cartesian_x radial gaussian2d)
baselines=()
for family in "${FAMILIES[@]}"; do
  baselines+=("$WORK/runs/small_e2evarnet_$family/model_2999.pt" "$WORK/runs/small_recurrentvarnet_$family/model_2999.pt")
done
require "$DATA/train" "$DATA/val" "$TOKENIZER" "${baselines[@]}"
mkdir -p "$WORK/runs" "$WORK/bench" "$WORK/configs"
export OMP_NUM_THREADS=1

BASE="$WORK/runs/small_nextaccel_all_families_1500/model_1499.pt"
TEACHER="$WORK/runs/small_teacher_all_families/model_299.pt"
paths=(-e "s#^  tokenizer_checkpoint: .*#  tokenizer_checkpoint: $TOKENIZER#"
       -e "s#^  prefix_model_checkpoint: [^ ]*#  prefix_model_checkpoint: $BASE#"
       -e "s#^  teacher_init_checkpoint: [^ ]*#  teacher_init_checkpoint: $BASE#"
       -e "s#^  model_checkpoint: [^ ]*#  model_checkpoint: $BASE#"
       -e "s#^  teacher_checkpoint: .*#  teacher_checkpoint: $TEACHER#")
NEXTACCEL="$WORK/configs/nextaccel_all_families_1500.yaml"
sed "${paths[@]}" -e "s/num_iterations: 1200/num_iterations: 1500/" -e "s/checkpoint_steps: 300/checkpoint_steps: 500/" \
  "$CONFIGS/nextaccel_all_families.yaml" > "$NEXTACCEL"
sed "${paths[@]}" "$CONFIGS/teacher_all_families.yaml" > "$WORK/configs/teacher_all_families.yaml"
for rollout in multinomial argmax; do
  sed "${paths[@]}" -e "s#^  rollout: .*#  rollout: $rollout#" "$CONFIGS/distill_all_families.yaml" \
    > "$WORK/configs/distill_all_families_$rollout.yaml"
done

train "$NEXTACCEL" small_nextaccel_all_families_1500 1499
train "$WORK/configs/teacher_all_families.yaml" small_teacher_all_families 299
train "$WORK/configs/distill_all_families_multinomial.yaml" small_distill_all_families_multinomial 149 &
sampled=$!
train "$WORK/configs/distill_all_families_argmax.yaml" small_distill_all_families_argmax 149 &
argmax=$!
wait "$sampled"
wait "$argmax"

bench() {  # FAMILY: every method's predictions, the bound rows and the memorisation columns (one thread)
  local family=$1
  "$BIN/direct-nextaccel" benchmark --data "$DATA/val" --output "$WORK/bench/comparison_$family" --family "$family" \
    --run "E2EVarNet=$CONFIGS/e2evarnet_$family.yaml:$WORK/runs/small_e2evarnet_$family/model_2999.pt" \
    "RecurrentVarNet=$CONFIGS/recurrentvarnet_$family.yaml:$WORK/runs/small_recurrentvarnet_$family/model_2999.pt" \
    "NextAccel=$NEXTACCEL:$BASE" \
    "NextAccel-distilled=$NEXTACCEL:$WORK/runs/small_distill_all_families_multinomial/model_149.pt" \
    "NextAccel-distilled-argmax-rollout=$NEXTACCEL:$WORK/runs/small_distill_all_families_argmax/model_149.pt" \
    --bound "AQ-VAE=$CONFIGS/aqvae.yaml:$TOKENIZER" \
    --training-root "$DATA/train" --metrics psnr ssim nmse haarpsi > "$WORK/bench/comparison_$family.log" 2>&1 || {
    echo "$SCRIPT: the benchmark of $family failed, see $WORK/bench/comparison_$family.log" >&2
    return 1
  }
}
for pair in "cartesian_y cartesian_x" "radial gaussian2d"; do  # two families at a time, one per core
  read -r first second <<< "$pair"
  bench "$first" &
  one=$!
  bench "$second" &
  two=$!
  wait "$one"
  wait "$two"
done
