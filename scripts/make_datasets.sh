#!/usr/bin/env bash
# Regenerate every shipped synthetic accuracy dataset (profiles/datasets/<workflow>/<family>/)
# and their summary profiles/datasets/stats.json. Deterministic: rerunning it changes no byte.
# Inputs per workflow are the paper's benchmark sizes; the seed is 0 everywhere.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
OUT="$ROOT/profiles/datasets"
SEED=0
declare -A NUM_INPUTS=(
  [self_refine_humaneval]=164
  [self_refine_squad]=1000
  [text_to_sql_bird]=780
  [voting_mmlu_pro]=1500
  [decomposition_strategyqa]=1500
)
for wf in self_refine_humaneval self_refine_squad text_to_sql_bird voting_mmlu_pro decomposition_strategyqa; do
  for fam in qwen llama mixed; do
    python -m aragog_jax.synth --workflow "$wf" --family "$fam" --num-inputs "${NUM_INPUTS[$wf]}" \
      --seed "$SEED" --out "$OUT/$wf/$fam" --quiet
    echo "[datasets] $wf/$fam" >&2
  done
done
python "$ROOT/scripts/dataset_stats.py" "$OUT" > "$OUT/stats.json"
python "$ROOT/scripts/dataset_stats.py" "$OUT" --markdown
