"""Generate a seeded synthetic accuracy dataset for a workflow.

    python -m aragog_jax.synth --workflow W --family F --num-inputs N --seed S --out DIR

W is a workflow TOML file or the name of a shipped workflow. The model behind the data
is documented in ``aragog_jax/data/_synth.py`` and ``profiles/datasets/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from aragog_jax._cli import run_cli
from aragog_jax.data import generate, save_dataset, viability_stats
from aragog_jax.errors import DatasetError
from aragog_jax.space import DEFAULT_MAX_CONFIGS, build_space
from aragog_jax.spec import (
    DEFAULT_MODELS,
    family_pool,
    load_models,
    load_workflow,
    resolve_workflow,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aragog_jax.synth",
        description="Write a seeded synthetic accuracy dataset (meta.json, inputs.jsonl, scores.npy) for a workflow.",
    )
    parser.add_argument(
        "--workflow", required=True, help="workflow TOML file, or the name of a shipped workflow"
    )
    parser.add_argument(
        "--family",
        required=True,
        help="model family (pool) from the model catalog, e.g. qwen, llama, mixed",
    )
    parser.add_argument("--num-inputs", type=int, required=True, help="number of inputs N")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    parser.add_argument(
        "--out", required=True, help="output directory (created; files in it are overwritten)"
    )
    parser.add_argument(
        "--target",
        type=float,
        default=None,
        help="accuracy of c_max to calibrate to (default: the workflow's target_accuracy for the family, else 0.75)",
    )
    parser.add_argument(
        "--models",
        default=str(DEFAULT_MODELS),
        help="model catalog TOML (default: shipped profiles/models.toml)",
    )
    parser.add_argument(
        "--max-configs",
        type=int,
        default=DEFAULT_MAX_CONFIGS,
        help="dense enumeration limit (default %(default)s)",
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    args = parser.parse_args(argv)
    if args.num_inputs < 1:
        raise DatasetError(f"--num-inputs: need at least 1 input, got {args.num_inputs}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise DatasetError(f"--out: {args.out} exists and is not a directory")
    catalog = load_models(args.models)
    wf = load_workflow(resolve_workflow(args.workflow), catalog)
    space = build_space(wf, family_pool(catalog, args.family), max_configs=args.max_configs)
    ds = generate(space, wf, args.num_inputs, args.seed, family=args.family, target=args.target)
    out = save_dataset(ds, args.out)
    if not args.quiet:
        st = viability_stats(ds.scores, space.c_max, space.config_flops)
        print(
            json.dumps(
                {
                    "out": str(out),
                    "num_inputs": ds.num_inputs,
                    "num_configs": space.num_configs,
                    **st,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
