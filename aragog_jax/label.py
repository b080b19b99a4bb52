"""Label a workflow over a dataset on real engines and write an accuracy dataset.

    python -m aragog_jax.label --workflow W.toml --fleet FLEET.toml --dataset DATA.jsonl \\
        --scorer module:function --out DIR [--sample K] [--concurrency N] [--seed S]

Runs every configuration of the workflow (or a seeded sample of ``K`` that always
includes ``c_max``) over every input on the fleet's engines and writes the accuracy
dataset the router trains on (``meta.json``, ``inputs.jsonl``, ``scores.npy``) plus
``labelled.npy``, ``label_report.json``, ``calls.jsonl`` (the call cache),
``failures.jsonl``, ``config_failures.jsonl``, ``input_errors.jsonl`` and
``label_state.json`` (what the directory was labelled with) into ``DIR``.

Stage outputs are shared across configurations through the configuration tree: engine
calls = distinct (stage, ancestor models) keys, which for a chain is the number of
distinct model prefixes in topological order; the naive count (configurations x stages)
is reported next to it. Rerunning with the same ``--out`` resumes: finished calls are
never recomputed, failed ones are retried. Each cached call is keyed by everything that
determines its output (input text, upstream outputs, stage prompt and function, model,
engine URL and sampling fields); a rerun whose dataset, workflow, fleet, scorer, seed or
sample differ from what ``--out`` was labelled with is refused with one line naming the
difference, unless ``--update`` (redo only the affected calls) or ``--restart``. One run
at a time per ``--out`` (a lock; a second run exits 2 naming the holder). Engines of
the fleet with a ``url`` are called directly; emulated engines (no url) are started on
loopback for the run.

Dataset lines that cannot be used (bad JSON, a missing or non-string text, a bad or
duplicate id) are printed with their line numbers, listed in ``input_errors.jsonl``,
and every other line is labelled; the run then exits with status 1. A scorer that cannot
be called as ``scorer(row, text)`` or returns something other than a number in [0, 1] is
refused on the first input, before any engine call (exit 2).

The dataset file is JSONL: the input text in ``input`` (or ``text``/``question``, or
``--text-field``), optional ``id`` and ``split``, plus whatever the scorer reads (the
shipped scorers read ``answer`` or ``answers``). Scorers:
``aragog_jax.data.scorers:exact_match``, ``aragog_jax.data.scorers:contains_answer``, or
any ``module:function`` or ``path/to/file.py:function`` taking
``(input_row: dict, output_text: str)`` and returning a float in [0, 1].
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from aragog_jax._cli import run_cli
from aragog_jax.errors import AragogError

MAX_BAD_LINES_SHOWN = 20


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        vals = tuple(float(x) for x in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected three comma-separated numbers, got {text!r}"
        ) from exc
    if len(vals) != 3:
        raise argparse.ArgumentTypeError(
            f"expected three fractions (train,calibration,test), got {text!r}"
        )
    return vals  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m aragog_jax.label",
        description="Run every configuration (or a seeded sample) of a workflow over a JSONL dataset on the "
        "fleet's engines, score the outputs and write an accuracy dataset (resumable; calls shared through "
        "the configuration tree).",
    )
    p.add_argument("--workflow", type=Path, required=True, help="workflow TOML")
    p.add_argument(
        "--fleet",
        type=Path,
        required=True,
        help="fleet TOML: engines (url, served model), model catalog, family",
    )
    p.add_argument(
        "--dataset",
        type=Path,
        required=True,
        help="JSONL inputs (input/text/question, optional id, split, answer)",
    )
    p.add_argument(
        "--scorer",
        required=True,
        help="module:function or file.py:function, e.g. aragog_jax.data.scorers:exact_match",
    )
    p.add_argument(
        "--out", type=Path, required=True, help="output dataset directory (also the resume cache)"
    )
    p.add_argument(
        "--sample",
        type=int,
        default=None,
        help="label a seeded sample of K configurations (c_max always in)",
    )
    p.add_argument("--family", default="", help="model family (default: the fleet's)")
    p.add_argument(
        "--concurrency", type=int, default=8, help="engine calls in flight at most (default 8)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of calls, splits and the sample (default 0)"
    )
    p.add_argument("--limit", type=int, default=None, help="label only the first N inputs")
    p.add_argument(
        "--text-field",
        default="",
        help="field holding the input text (default: input, text or question)",
    )
    p.add_argument(
        "--splits",
        type=_fractions,
        default=(0.6, 0.2, 0.2),
        help="train,calibration,test fractions for rows without a split (default 0.6,0.2,0.2)",
    )
    p.add_argument(
        "--timeout", type=float, default=120.0, help="per-call timeout in seconds (default 120)"
    )
    p.add_argument(
        "--time-scale",
        type=float,
        default=None,
        help="speed-up of emulated engines (default: the fleet's)",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--update",
        action="store_true",
        help="--out was labelled with another dataset, workflow, fleet, scorer, seed or sample: reuse the "
        "cached calls that still match and redo the rest (default: refuse, naming the difference)",
    )
    g.add_argument(
        "--restart",
        action="store_true",
        help="clear --out (outputs and call cache) and label from scratch",
    )
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


async def _label(args, progress) -> dict:
    from aragog_jax.data import (
        EngineTarget,
        Labeller,
        LabelSettings,
        load_inputs,
        load_scorer,
    )
    from aragog_jax.engines.fleet import load_engine_fleet
    from aragog_jax.serving import EmulatedEngine, LoopbackServer
    from aragog_jax.space import build_space
    from aragog_jax.spec import family_pool, load_workflow, resolve_workflow

    loaded = load_engine_fleet(args.fleet)
    fleet, catalog = loaded.spec, loaded.catalog
    family = args.family or fleet.family
    if not family:
        raise AragogError(f"{args.fleet}: no family; pass --family")
    wf = load_workflow(resolve_workflow(args.workflow), catalog)
    space = build_space(wf, family_pool(catalog, family))
    scorer = load_scorer(args.scorer)
    inputs = load_inputs(
        args.dataset,
        text_field=args.text_field,
        split_fractions=args.splits,
        seed=args.seed,
        limit=args.limit,
    )
    for bad in inputs.bad[:MAX_BAD_LINES_SHOWN]:
        print(f"{args.dataset}:{bad['line']}: {bad['reason']}", file=sys.stderr)
    if len(inputs.bad) > MAX_BAD_LINES_SHOWN:
        print(
            f"... and {len(inputs.bad) - MAX_BAD_LINES_SHOWN} more bad lines (all in "
            f"{args.out / 'input_errors.jsonl'})",
            file=sys.stderr,
        )
    time_scale = args.time_scale or fleet.server.time_scale
    servers: list = []
    targets: list[EngineTarget] = []
    try:
        for e in loaded.engines:
            url, identity = e.spec.url, ""
            if e.emulated:
                eng = EmulatedEngine(
                    e.name,
                    e.model,
                    e.profile,
                    time_scale=time_scale,
                    served_model_name=e.spec.served_model_name,
                )
                srv = LoopbackServer(eng.app)
                url = await srv.start()
                servers.append(srv)
                identity = (
                    "emulated"  # replies depend on model, prompt and seed, not on the loopback port
                )
            targets.append(EngineTarget(e.name, e.model, url, e.served_model, identity))
        on_change = "update" if args.update else "restart" if args.restart else "refuse"
        labeller = Labeller(
            wf,
            space,
            targets,
            inputs,
            scorer,
            args.out,
            LabelSettings(
                concurrency=args.concurrency,
                seed=args.seed,
                sample=args.sample,
                request_timeout_s=args.timeout,
                on_change=on_change,
            ),
            family=family,
            progress=progress,
            scorer_name=args.scorer,
            provenance={"fleet": str(args.fleet), "dataset": str(args.dataset)},
        )
        res = await labeller.run()
    finally:
        for srv in servers:
            await srv.stop()
    return {"workflow": wf.name, **res.report()}  # label_report.json holds this plus provenance


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def progress(msg: str) -> None:
        if not args.quiet:
            print(f"[label] {msg}", file=sys.stderr, flush=True)

    rep = asyncio.run(_label(args, progress))
    per, tot, run = rep["per_input"], rep["total"], rep["this_run"]
    print(
        f"labelled {rep['num_inputs'] - len(rep['dropped_inputs'])}/{rep['num_inputs']} inputs x "
        f"{rep['num_labelled_configs']} configurations of {rep['workflow']} into {args.out}"
    )
    print(
        f"engine calls: {tot['calls']} (per input {per['calls']}); distinct prefixes {tot['distinct_prefixes']} "
        f"(per input {per['distinct_prefixes']}); naive configurations x stages {tot['naive_calls']} "
        f"(per input {per['naive_calls']})"
    )
    print(
        f"this run: {run['calls_made']} calls made, {run['calls_cached']} cached, {run['calls_failed']} failed; "
        f"{rep['config_failures']} (input, configuration) failures; c_max accuracy {100 * rep['c_max_accuracy']:.1f}%; "
        f"splits {rep['splits']}; {rep['seconds']:.1f} s"
    )
    if rep["input_errors"]:
        print(
            f"error: {rep['input_errors']} bad dataset lines (see {args.out / 'input_errors.jsonl'}); "
            f"{rep['num_inputs']} valid inputs were labelled",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
