"""Inspect a workflow's configuration space.

    python -m aragog_jax.inspect WORKFLOW.toml --family FAMILY [--json]

WORKFLOW may also be the name of a shipped workflow (see ``profiles/workflows``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from aragog_jax._cli import run_cli
from aragog_jax.space import DEFAULT_MAX_CONFIGS, ConfigSpace, load_space
from aragog_jax.spec import DEFAULT_MODELS

#: What the text output's ``level`` and ``depth`` columns mean (printed under the table).
LEGEND = (
    "level: stages before this one on the longest path from the input (0: reads only the input); "
    "depth: stages after this one on the longest path to a sink (0: a sink, such as the output stage; "
    "the scheduler serves the deepest ready stage first)"
)


def stage_levels(space: ConfigSpace) -> list[int]:
    """Topological level per stage: 0 without upstream stages, else 1 + the deepest upstream level."""
    level = [0] * space.num_stages
    for s in space.topo_order:
        level[s] = max((level[u] + 1 for u in space.upstream[s]), default=0)
    return level


def describe(space: ConfigSpace) -> dict:
    """The space as a JSON-ready dict (what ``--json`` prints).

    Per stage, ``level`` counts stages on the longest path from the input to it and
    ``depth`` those on the longest path from it to a sink (0: a sink, e.g. the output).
    """
    levels = stage_levels(space)
    return {
        "workflow": space.workflow,
        "num_stages": space.num_stages,
        "num_models": space.num_models,
        "num_configs": space.num_configs,
        "models": list(space.model_names),
        "stages": [
            {
                "name": name,
                "level": levels[s],
                "depth": int(space.stage_depth[s]),
                "upstream": [space.stage_names[u] for u in space.upstream[s]],
                "candidates": [space.model_names[m] for m in space.candidates[s]],
                "input_tokens": int(space.stage_tokens[s, 0]),
                "output_tokens": int(space.stage_tokens[s, 1]),
            }
            for s, name in enumerate(space.stage_names)
        ],
        "topo_order": [space.stage_names[s] for s in space.topo_order],
        "flops_min": float(space.config_flops[0]),
        "flops_max": float(space.config_flops[-1]),
        "cheapest": space.config_to_models(0),
        "c_max": space.config_to_models(space.c_max),
        "c_max_index": space.c_max,
        "fingerprint": space.fingerprint(),
    }


def _print_text(d: dict) -> None:
    print(f"workflow   {d['workflow']}")
    print(f"models     {', '.join(d['models'])}")
    print(f"configs    {d['num_configs']:,} over {d['num_stages']} stages")
    print(f"FLOPs      {d['flops_min']:.3e} .. {d['flops_max']:.3e} per request")
    print()
    width = max(len(s["name"]) for s in d["stages"])
    print(f"  {'stage':<{width}}  level  depth  tokens in/out  upstream -> candidates")
    for s in d["stages"]:
        ups = ",".join(s["upstream"]) or "-"
        print(
            "  "
            f"{s['name']:<{width}}  {s['level']:>5}  {s['depth']:>5}  {s['input_tokens']:>6}/{s['output_tokens']:<6}  "
            f"{ups} -> {', '.join(s['candidates'])}"
        )
    for part in LEGEND.split("; "):
        print(f"  {part}")
    print()
    print(f"cheapest   {d['cheapest']}")
    print(f"c_max      {d['c_max']} (index {d['c_max_index']})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aragog_jax.inspect",
        description="Print a workflow's stages (their level and depth), candidate models and configuration space.",
        epilog=LEGEND + ". --json adds both per stage.",
    )
    parser.add_argument("workflow", help="workflow TOML file, or the name of a shipped workflow")
    parser.add_argument(
        "--family",
        required=True,
        help="model family (pool) from the model catalog, e.g. qwen, llama, mixed",
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
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    space = load_space(args.workflow, args.family, models=args.models, max_configs=args.max_configs)
    d = describe(space)
    if args.json:
        json.dump(d, sys.stdout, indent=2)
        print()
    else:
        _print_text(d)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
