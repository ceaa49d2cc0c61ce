#!/usr/bin/env bash
# The small-tier super-resolution table of README.md (issue 13): MIAR (argmax, beam k = 1, 2, 3) on the stride-2
# MSVQ-VAE against zero-padding, E2EVarNet, RecurrentVarNet and U-Net at 4 x 4 super-resolution, in one command:
#
#   bash projects/miar_brain/small_comparison.sh [WORK_DIR]      (default: small_tier/, as small_tier.sh)
#
# Needs small_tier.sh's simulated data in WORK_DIR/data. Trains, one thread each and one at a time, what is not
# already there (finished runs are reused): the stride-2 tokenizer (configs/small/msvqvae_stride2.yaml, 4000 slices),
# MIAR on it (configs/small/miar.yaml, 1000 iterations at batch 4) and the three baselines (configs/small/*_sr4.yaml,
# 2000 iterations at batch 2): 4000 training slices for every method. Then one `direct-nextaccel benchmark` on the
# validation subjects: the four MIAR decodings (one config copy per variant), the baselines, the tokenizer's bound and
# the memorisation columns against the training slices. The table is WORK_DIR/bench/sr4_comparison/benchmark.md.
set -euo pipefail
SCRIPT=small_comparison.sh
# shellcheck source=projects/fastmri_brain/small_tier_lib.sh
source "$(dirname "$0")/../fastmri_brain/small_tier_lib.sh" "${1:-small_tier}"
CONFIGS="$(cd "$(dirname "$0")" && pwd)/configs/small"
TOKENIZER="$WORK/runs/small_msvqvae_stride2/model_999.pt"
require "$DATA/train" "$DATA/val"
mkdir -p "$WORK/runs" "$WORK/bench" "$WORK/configs"
export OMP_NUM_THREADS=1

# The repository's MIAR config with this run's tokenizer; one copy per decoding (paper Table 2).
sed "s#^  tokenizer_checkpoint: .*#  tokenizer_checkpoint: $TOKENIZER#" "$CONFIGS/miar.yaml" > "$WORK/configs/miar.yaml"
for variant in argmax:argmax:1 beam1:beam:1 beam2:beam:2 beam3:beam:3; do
  IFS=: read -r name decoding k <<< "$variant"
  sed -e "s/^  decoding: .*/  decoding: $decoding/" -e "s/^  beam_k: .*/  beam_k: $k/" "$WORK/configs/miar.yaml" \
    > "$WORK/configs/miar_$name.yaml"
done

train "$CONFIGS/msvqvae_stride2.yaml" small_msvqvae_stride2 999
train "$WORK/configs/miar.yaml" small_miar 999
for model in e2evarnet recurrentvarnet unet; do
  train "$CONFIGS/${model}_sr4.yaml" "small_${model}_sr4" 1999
done

MIAR="$WORK/runs/small_miar/model_999.pt"
"$BIN/direct-nextaccel" benchmark --data "$DATA/val" --output "$WORK/bench/sr4_comparison" \
  --run "MIAR-argmax=$WORK/configs/miar_argmax.yaml:$MIAR" "MIAR-beam1=$WORK/configs/miar_beam1.yaml:$MIAR" \
  "MIAR-beam2=$WORK/configs/miar_beam2.yaml:$MIAR" "MIAR-beam3=$WORK/configs/miar_beam3.yaml:$MIAR" \
  "E2EVarNet=$CONFIGS/e2evarnet_sr4.yaml:$WORK/runs/small_e2evarnet_sr4/model_1999.pt" \
  "RecurrentVarNet=$CONFIGS/recurrentvarnet_sr4.yaml:$WORK/runs/small_recurrentvarnet_sr4/model_1999.pt" \
  "U-Net=$CONFIGS/unet_sr4.yaml:$WORK/runs/small_unet_sr4/model_1999.pt" \
  --bound "MSVQ-VAE-stride2=$CONFIGS/msvqvae_stride2.yaml:$TOKENIZER" --training-root "$DATA/train" \
  --metrics psnr ssim nmse haarpsi
