"""Summarise the shipped accuracy datasets: c_max accuracy and viable-set sizes.

python scripts/dataset_stats.py profiles/datasets            # JSON (stats.json)
python scripts/dataset_stats.py profiles/datasets --markdown # the README table
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from aragog_jax.data import load_dataset, viability_stats
from aragog_jax.space import load_space


def collect(root: Path) -> dict:
    out = {}
    for meta in sorted(root.glob("*/*/meta.json")):
        wf, fam = meta.parent.parent.name, meta.parent.name
        space = load_space(wf, fam)
        ds = load_dataset(meta.parent, space)
        st = viability_stats(ds.scores, space.c_max, space.config_flops)
        st = {k: round(v, 4) for k, v in st.items()}
        out[f"{wf}/{fam}"] = {
            "num_inputs": ds.num_inputs,
            "num_configs": space.num_configs,
            "target_accuracy": ds.meta["generator"]["target_accuracy"],
            **st,
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", type=Path)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    stats = collect(args.root)
    if not args.markdown:
        print(json.dumps(stats, indent=2, sort_keys=True))
        return 0
    print(
        "| workflow / family | N | C | target | c_max acc | viable frac mean | q10 / q25 / q50 / "
        "q75 / q90 | cheapest != c_max | all accurate | oracle FLOPs |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key, s in stats.items():
        qs = " / ".join(f"{s[f'viable_frac_q{q}']:.2f}" for q in (10, 25, 50, 75, 90))
        print(
            f"| {key} | {s['num_inputs']} | {s['num_configs']} | {s['target_accuracy']:.2f} | "
            f"{s['c_max_accuracy']:.3f} "
            f"| {s['viable_frac_mean']:.2f} | {qs} | {s['cheapest_not_cmax']:.2f} | {s['all_accurate_frac']:.2f} "
            f"| {s['oracle_flops_ratio']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
