# Sourced by the scripts that build on small_tier.sh's work folder (one_model.sh, distill_variants.sh, comparison.sh,
# ../miar_brain/small_comparison.sh, which then sets its own CONFIGS and TOKENIZER): the folder,
# the executables, the configs, a check that small_tier.sh's outputs exist, and one `train` that reuses finished runs.
#
#   SCRIPT=name.sh; source "$(dirname "$0")/small_tier_lib.sh" "${1:-small_tier}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
WORK="$1"
BIN="$(dirname "$(command -v direct-nextaccel || echo "$REPO/.venv/bin/direct-nextaccel")")"
CONFIGS="$HERE/configs/small"
DATA="$WORK/data"
TOKENIZER="$WORK/runs/small_aqvae/model_1499.pt"

require() {  # PATH...: what small_tier.sh leaves in WORK
  for needed in "$@"; do
    if [ ! -e "$needed" ]; then
      echo "$SCRIPT: $needed is missing: run bash projects/fastmri_brain/small_tier.sh $WORK first" >&2
      exit 2
    fi
  done
}

train() {  # CONFIG NAME LAST_ITERATION
  if [ -f "$WORK/runs/$2/model_$3.pt" ]; then return; fi
  if ! "$BIN/direct" train "$WORK/runs" --cfg "$1" --training-root "$DATA/train" --validation-root "$DATA/val" \
    --name "$2" --device cpu --num-gpus 0 --num-workers 0 > "$WORK/runs/$2.log" 2>&1; then
    echo "$SCRIPT: training $2 failed, see $WORK/runs/$2.log" >&2
    return 1
  fi
}
