"""Round replay: ``python -m aragog_jax.schedule ROUND.json [--policy aragog] [--beam 4]``.

Reads one scheduling round as JSON (``-`` for standard input) and prints the decision
as JSON. The format is documented in :mod:`aragog_jax.scheduler._replay` and the
README. ``--example [--seed N] [--example-items N]`` prints a random round to start from
(``brute_force`` replays rounds of at most ``BRUTE_FORCE_MAX_ITEMS`` = 10 ready items;
the other policies have no limit). Malformed input
is a one-line ``error: <field>: ...`` and exit status 2.

The configurations in a round are the ones the request's policy admitted, so
``per_input`` and ``per_workflow`` replay as ``greedy`` (B = 1) over them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from aragog_jax._cli import run_cli
from aragog_jax.errors import SchedulerError
from aragog_jax.scheduler import (
    BRUTE_FORCE_MAX_ITEMS,
    DEFAULT_BEAM_WIDTH,
    BeamPolicy,
    PolicyName,
    make_policy,
    random_replay,
    replay_round,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m aragog_jax.schedule",
        description="Replay one scheduling round: read it as JSON, print the decision as JSON.",
    )
    p.add_argument("round", nargs="?", help="round JSON file, or - for standard input")
    p.add_argument("--policy", default="aragog", choices=[n.value for n in PolicyName])
    p.add_argument(
        "--beam", type=int, default=DEFAULT_BEAM_WIDTH, help="beam width B of the aragog policy"
    )
    p.add_argument("--example", action="store_true", help="print a random round instead")
    p.add_argument("--seed", type=int, default=0, help="seed of --example")
    p.add_argument(
        "--example-items",
        type=int,
        metavar="N",
        help=f"--example: exactly N ready items (default: 6 requests with 1-3 each); brute_force replays at most "
        f"{BRUTE_FORCE_MAX_ITEMS}",
    )
    p.add_argument("--indent", type=int, default=None, help="indent the JSON output")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.example:
        if args.example_items is not None and args.example_items < 1:
            raise SchedulerError(f"--example-items: must be >= 1, got {args.example_items}")
        doc = random_replay(np.random.default_rng(args.seed), num_items=args.example_items)
        print(json.dumps(doc, indent=args.indent))
        return 0
    if args.round is None:
        raise SchedulerError("give a round JSON file (or - for standard input), or --example")
    if args.beam < 1:
        raise SchedulerError(f"--beam: must be >= 1, got {args.beam}")
    try:
        text = (
            sys.stdin.read() if args.round == "-" else Path(args.round).read_text(encoding="utf-8")
        )
    except OSError as exc:
        raise SchedulerError(f"{args.round}: cannot read ({exc.strerror})") from exc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchedulerError(
            f"{args.round}: not JSON (line {exc.lineno} column {exc.colno}: {exc.msg})"
        ) from exc
    if args.policy in (PolicyName.PER_INPUT, PolicyName.PER_WORKFLOW):
        policy = BeamPolicy(1, name=PolicyName(args.policy))
    else:
        policy = make_policy(args.policy, beam_width=args.beam)
    print(json.dumps(replay_round(doc, policy), indent=args.indent))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
