#!/usr/bin/env bash
# Regenerate the shipped routers: profiles/routers/<workflow>/<family>.npz (+ .report.json, .sweep.png)
# for every shipped workflow x family (qwen, llama, mixed).
#
#   scripts/train_routers.sh                      # all 15 (~8 min on 2 idle cores, ~1 h on a loaded machine)
#   scripts/train_routers.sh voting_mmlu_pro qwen # one
#
# Training data: a synthetic accuracy dataset of NUM_INPUTS inputs drawn by
# `python -m aragog_jax.synth` with seed SEED (1000 by default, so the routers never saw
# the inputs of the shipped datasets in profiles/datasets, which use other seeds).
# Splits 60/20/20: train (early stopping on 15% of it), calibration, test; the report is
# on the test split. Thresholds are calibrated with the `scheduled` guarantee (whatever
# admitted configuration the scheduler runs is inaccurate on at most epsilon of the inputs,
# the `train` default), epsilon 0.02, confidence 0.95. Shipped routers are deliberately
# small (six hidden layers of width 64, float16 parameters, about 200 KiB each); the 6x512
# architecture is the benchmark target (bench/router.py) and `python -m aragog_jax.train`
# defaults to it.
# HIDDEN=128,128 scripts/train_routers.sh trains another width/depth into OUT.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
NUM_INPUTS="${NUM_INPUTS:-60000}"
SEED="${SEED:-1000}"
OUT="${OUT:-profiles/routers}"
HIDDEN="${HIDDEN:-64,64,64,64,64,64}"   # the shipped design; bench/router_explore.py compares others
WORKFLOWS=(self_refine_humaneval self_refine_squad text_to_sql_bird voting_mmlu_pro decomposition_strategyqa)
FAMILIES=(qwen llama mixed)
if [ "$#" -ge 1 ]; then WORKFLOWS=("$1"); fi
if [ "$#" -ge 2 ]; then FAMILIES=("$2"); fi
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
for wf in "${WORKFLOWS[@]}"; do
  for fam in "${FAMILIES[@]}"; do
    echo "== $wf / $fam" >&2
    python -m aragog_jax.synth --workflow "$wf" --family "$fam" --num-inputs "$NUM_INPUTS" --seed "$SEED" \
      --out "$TMP/$wf-$fam" --quiet
    python -m aragog_jax.train --workflow "$wf" --family "$fam" --dataset "$TMP/$wf-$fam" \
      --out "$OUT/$wf/$fam.npz" --hidden "$HIDDEN" --lr 3e-4 --param-dtype float16 --word-ngrams 1 \
      --epsilon 0.02 --confidence 0.95 --guarantee scheduled --seed 0 --quiet
    rm -rf "$TMP/$wf-$fam"
  done
done
