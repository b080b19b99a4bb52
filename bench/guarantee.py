"""Which guarantee keeps the throughput: every calibration guarantee on a 5-stage Llama
workflow the project does not ship, and flexibility kept vs the number of labelled inputs.

    python bench/guarantee.py [--quick] [--parts guarantees,sizes] [--work DIR]

Part ``guarantees`` (issue 18 item 5): a five-stage chain (plan -> solve -> check ->
revise -> answer, 3^5 = 243 configurations over Llama 3B/8B/70B) is written to the work
directory, 6,000 synthetic labelled inputs are generated for it (``aragog_jax.data.generate``,
seed 7: 3,600 train, 1,200 calibration, 1,200 test), one router is trained (6 x 64 ReLU,
hashed unigrams; training does not depend on the guarantee, the same seed gives the same
parameters) and calibrated with every guarantee at epsilon 0.02, confidence 0.95. Each
router's masks drive the simulator on the Llama 8-GPU fleet over the test split (the
sweep settings of ``bench/paper.py``: 30 s of arrivals, throughput from 15 s, fixed round
and routing costs of 1 ms so the figures do not depend on this machine's load). Per
guarantee: flexibility kept (test split, share of the oracle's accurate set), aragog's
max throughput vs per-input (the paper's oracle per-input, and per-input with the same
router), and the realised accuracy drop in the simulator (c_max minus the configurations
actually run, paired on the completed requests).

Part ``sizes``: routers trained on 1k, 3k, 10k and 60k labelled inputs of two workflow x
family pairs, evaluated on 4,000 fresh inputs (another generator seed); before (the
previous default: guarantee ``cheapest``, six hidden layers) and after (guarantee
``scheduled``; below 10k inputs one hidden layer, which overfits less).

Writes ``bench/results/guarantee.json`` (with the git SHA) and ``guarantee.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import jax
import jax.numpy as jnp
import msgspec
import numpy as np

from aragog_jax._provenance import git_sha
from aragog_jax.data import generate, save_dataset
from aragog_jax.kernels import routing as K
from aragog_jax.router import (
    GUARANTEES,
    HashedNgramFeaturizer,
    RouterCheckpoint,
    TrainConfig,
    admitted_masks,
    calibrate,
    fit_router,
    routing_report,
    save_checkpoint,
)
from aragog_jax.space import build_space, load_space
from aragog_jax.space._load import resolve_workflow
from aragog_jax.spec import family_pool, load_models, load_workflow

ROOT = Path(__file__).resolve().parents[1]
EPSILON, CONFIDENCE = 0.02, 0.95
FAMILY = "llama"
WORKFLOW_TOML = """\
name = "research_chain"
description = "Five-stage chain: plan, solve, check, revise, answer (bench/guarantee.py)."
dataset = "synthetic"
metric = "exact match"
target_accuracy = { llama = 0.70 }

[[stage]]
name = "plan"
input_tokens = 300
output_tokens = 120
prompt = "Plan the steps.\\n\\n{input}"

[[stage]]
name = "solve"
upstream = ["plan"]
input_tokens = 450
output_tokens = 250
prompt = "Solve.\\n\\n{input}\\n\\nPlan: {plan}"

[[stage]]
name = "check"
upstream = ["solve"]
input_tokens = 600
output_tokens = 150
prompt = "Check the solution.\\n\\n{input}\\n\\nSolution: {solve}"

[[stage]]
name = "revise"
upstream = ["solve", "check"]
input_tokens = 800
output_tokens = 250
prompt = "Revise.\\n\\n{input}\\n\\nSolution: {solve}\\nCheck: {check}"

[[stage]]
name = "answer"
upstream = ["revise"]
input_tokens = 400
output_tokens = 40
prompt = "Give the final answer.\\n\\n{input}\\n\\n{revise}"
"""
HIDDEN = (64,) * 6  # the shipped routers' network
SMALL_HIDDEN = (64,)
SIZE_PAIRS = (("research_chain", "llama"), ("self_refine_squad", "llama"))
SIZES = (1000, 3000, 10_000, 60_000)


def _workflow(work: Path, name: str):
    """(workflow file, spec, space) of the bench's chain or a shipped workflow."""
    catalog = load_models()
    if name == "research_chain":
        path = work / "research_chain.toml"
        path.write_text(WORKFLOW_TOML)
    else:
        path = resolve_workflow(name)
    wf = load_workflow(path, catalog)
    return path, wf, build_space(wf, family_pool(catalog, FAMILY))


def _logits(ckpt: RouterCheckpoint, feats: np.ndarray) -> np.ndarray:
    fn = jax.jit(K.router_logits)
    return np.concatenate(
        [
            np.asarray(fn(ckpt.params, jnp.asarray(feats[i : i + 4096])))
            for i in range(0, len(feats), 4096)
        ]
    )


def _with_thresholds(ckpt: RouterCheckpoint, cal) -> RouterCheckpoint:
    meta = msgspec.structs.replace(
        ckpt.meta,
        calibration=cal.to_dict() | {"base_thresholds": cal.base_thresholds.tolist()},
    )
    return RouterCheckpoint(meta=meta, params=ckpt.params, thresholds=cal.thresholds)


def part_guarantees(work: Path, quick: bool) -> dict:
    from aragog_jax.sim import SweepConfig, auto_rates, build_masks, load_setup, run_sweep

    num = 1500 if quick else 6000
    wf_path, wf, space = _workflow(work, "research_chain")
    ds = generate(space, wf, num, seed=7, family=FAMILY)
    ds_dir = save_dataset(ds, work / f"research_chain_{num}")
    feat = HashedNgramFeaturizer(dim=1024)
    t0 = time.perf_counter()
    cfg = TrainConfig(hidden=HIDDEN, guarantee="scheduled", sweep=(), max_epochs=5 if quick else 60)
    res = fit_router(ds, space, feat, cfg, family=FAMILY, progress=False)
    train_s = time.perf_counter() - t0
    labels = ds.labels(space.c_max)
    cal_i, test_i = ds.split_index("calibration"), ds.split_index("test")
    feats = feat(ds.texts)
    cal_logits, test_logits = (
        _logits(res.checkpoint, feats[cal_i]),
        _logits(res.checkpoint, feats[test_i]),
    )
    y_test, s_test = labels[test_i], ds.scores[test_i]

    setup = load_setup(wf_path, FAMILY, gpus=8, dataset=ds_dir)
    sweep = SweepConfig(
        policies=("aragog", "per_input-router"),
        duration_s=30.0,
        warmup_s=15.0,
        horizon_s=45.0,
        round_interval_s=0.1,
        round_cost_s=0.001,
        route_cost_s=0.001,
        seed=0,
        workflow_tolerance=0.02,
    )
    # max throughput is reached at overload (the top rate is 1.1 x the fleet's bound); two
    # lower rates show what each policy sustains
    top = auto_rates(setup, 2)[-1]
    rates = tuple(round(top * f, 3) for f in ((1.0,) if quick else (0.33, 0.66, 1.0)))
    sweep = replace(sweep, rates=rates)
    base = run_sweep(
        setup,
        replace(sweep, policies=("per_input", "aragog-oracle")),
        progress=False,
        masks=build_masks(setup, "oracle", 0.001),
    )
    per_input = base["policies"]["per_input"]["max_throughput"]
    oracle_thr = base["policies"]["aragog-oracle"]["max_throughput"]
    rows = []
    for g in ("cheapest", "any", "config", "scheduled"):
        cal = calibrate(
            cal_logits,
            labels[cal_i],
            space.c_max,
            epsilon=EPSILON,
            confidence=CONFIDENCE,
            guarantee=g,
        )
        ckpt = save_checkpoint(_with_thresholds(res.checkpoint, cal), work / f"router_{g}.npz")
        rep = routing_report(
            admitted_masks(test_logits, cal.thresholds, space.c_max), s_test, y_test, space.c_max
        )
        summ = run_sweep(setup, sweep, progress=False, masks=build_masks(setup, str(ckpt), 0.001))
        a, pr = summ["policies"]["aragog"], summ["policies"]["per_input-router"]
        rows.append(
            {
                "guarantee": g,
                "flexibility_kept": rep["flexibility_kept"],
                "admitted_mean": rep["admitted_mean"],
                "oracle_mean": rep["oracle_mean"],
                "test_any_inaccurate_rate": rep["any_inaccurate_rate"],
                "test_delta_cheapest_points": rep["delta_cheapest_points"],
                "test_delta_random_points": rep["delta_random_points"],
                "policy_bound": cal.policy_bound,
                "level": cal.level,
                "aragog_max_throughput": a["max_throughput"],
                "per_input_router_max_throughput": pr["max_throughput"],
                "aragog_vs_per_input_pct": 100.0 * (a["max_throughput"] / per_input - 1.0),
                "aragog_vs_per_input_router_pct": 100.0
                * (a["max_throughput"] / pr["max_throughput"] - 1.0),
                "sim_accuracy_drop_points": 100.0 * (a["c_max_accuracy"] - a["accuracy"]),
                "sim_per_input_router_drop_points": 100.0 * (pr["c_max_accuracy"] - pr["accuracy"]),
            }
        )
        print(
            f"{g:10s} flex {100 * rep['flexibility_kept']:5.1f}%  aragog {a['max_throughput']:.2f} req/s "
            f"({rows[-1]['aragog_vs_per_input_pct']:+.1f}% vs per-input)  "
            f"drop {rows[-1]['sim_accuracy_drop_points']:.2f} pts",
            flush=True,
        )
    return {
        "workflow": wf.name,
        "family": FAMILY,
        "num_inputs": num,
        "splits": res.report["splits"],
        "num_configs": space.num_configs,
        "epsilon": EPSILON,
        "confidence": CONFIDENCE,
        "hidden": list(HIDDEN),
        "train_seconds": round(train_s, 1),
        "rates": [float(r) for r in rates],
        "per_input_max_throughput": per_input,
        "aragog_oracle_max_throughput": oracle_thr,
        "aragog_oracle_vs_per_input_pct": 100.0 * (oracle_thr / per_input - 1.0),
        "sim": {k: v for k, v in base["sweep"].items() if k not in ("policies", "router")},
        "rows": rows,
    }


def part_sizes(work: Path, quick: bool) -> dict:
    sizes = (1000, 3000) if quick else SIZES
    out = []
    for name, family in SIZE_PAIRS:
        if name == "research_chain":
            _, wf, space = _workflow(work, name)
        else:
            space = load_space(name, family)
            wf = load_workflow(resolve_workflow(name), load_models())
        held = generate(space, wf, 1000 if quick else 4000, seed=99, family=family)
        y_held, s_held = held.labels(space.c_max), held.scores
        feat = HashedNgramFeaturizer(dim=1024)
        f_held = feat(held.texts)
        for n in sizes:
            ds = generate(space, wf, n, seed=1000, family=family)
            cal_i = ds.split_index("calibration")
            labels = ds.labels(space.c_max)
            f_cal = feat([ds.texts[i] for i in cal_i])
            variants = [("before", HIDDEN, "cheapest"), ("scheduled", HIDDEN, "scheduled")]
            if n < 60_000:
                variants.append(("scheduled-1-layer", SMALL_HIDDEN, "scheduled"))
            trained: dict = {}
            for label, hidden, g in variants:
                t0 = time.perf_counter()
                if hidden not in trained:
                    cfg = TrainConfig(
                        hidden=hidden, guarantee=g, sweep=(), max_epochs=5 if quick else 60
                    )
                    trained[hidden] = fit_router(
                        ds, space, feat, cfg, family=family, progress=False
                    ).checkpoint
                ckpt = trained[hidden]
                cal = calibrate(
                    _logits(ckpt, f_cal),
                    labels[cal_i],
                    space.c_max,
                    epsilon=EPSILON,
                    confidence=CONFIDENCE,
                    guarantee=g,
                )
                rep = routing_report(
                    admitted_masks(_logits(ckpt, f_held), cal.thresholds, space.c_max),
                    s_held,
                    y_held,
                    space.c_max,
                )
                row = {
                    "workflow": name,
                    "family": family,
                    "num_inputs": n,
                    "variant": label,
                    "hidden": list(hidden),
                    "guarantee": g,
                    "flexibility_kept": rep["flexibility_kept"],
                    "any_inaccurate_rate": rep["any_inaccurate_rate"],
                    "delta_cheapest_points": rep["delta_cheapest_points"],
                    "delta_random_points": rep["delta_random_points"],
                    "seconds": round(time.perf_counter() - t0, 1),
                }
                out.append(row)
                print(
                    f"{name}/{family} n={n:6d} {label:17s} {g:9s} hidden {len(hidden)}x{hidden[0]}: flex "
                    f"{100 * row['flexibility_kept']:5.1f}%  any-inaccurate {row['any_inaccurate_rate']:.3f}",
                    flush=True,
                )
    return {"held_out_inputs": 1000 if quick else 4000, "rows": out}


def render(result: dict) -> str:
    lines = [
        "# Guarantees: what actually runs, and how many labels it takes",
        "",
        f"`{result.get('command', 'python bench/guarantee.py')}` at {result['git_sha']} on "
        f"{result['device']} ({result['wall_s']:.0f} s; shared 2-core machine, figures from one run). "
        f"{result.get('git_sha_note', '')}",
        "",
    ]
    g = result.get("guarantees")
    if g:
        lines += [
            "## Guarantees on a 5-stage Llama workflow the project does not ship "
            f"({g['num_inputs']:,} labelled inputs)",
            "",
            f"`{g['workflow']}` (plan -> solve -> check -> revise -> answer, {g['num_configs']} configurations), "
            f"splits {g['splits']}, router {len(g['hidden'])}x{g['hidden'][0]} on hashed unigrams, epsilon "
            f"{g['epsilon']}, confidence {g['confidence']}. Simulated on the Llama 8-GPU fleet over the test split "
            f"(rates {', '.join(f'{r:g}' for r in g['rates'])} req/s). Per-input (oracle) reaches "
            f"{g['per_input_max_throughput']:.2f} req/s; aragog with oracle masks "
            f"{g['aragog_oracle_max_throughput']:.2f} "
            f"({g['aragog_oracle_vs_per_input_pct']:+.1f}%).",
            "",
            "| guarantee | flexibility kept (of oracle) | admitted / oracle | aragog vs per-input "
            "| aragog vs per-input (same router) | realised accuracy drop (sim) "
            "| some admitted inaccurate (test) | policy bound |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in g["rows"]:
            pb = "-" if r["policy_bound"] is None else f"{r['policy_bound']:.4f}"
            lines.append(
                f"| `{r['guarantee']}` | {100 * r['flexibility_kept']:.1f}% "
                f"| {r['admitted_mean']:.1f} / {r['oracle_mean']:.1f} "
                f"| {r['aragog_vs_per_input_pct']:+.1f}% | {r['aragog_vs_per_input_router_pct']:+.1f}% "
                f"| {r['sim_accuracy_drop_points']:.2f} points | {100 * r['test_any_inaccurate_rate']:.2f}% | {pb} |"
            )
        rows = {r["guarantee"]: r for r in g["rows"]}
        if {"scheduled", "any", "cheapest", "config"} <= rows.keys():
            sc, an, ch, co = rows["scheduled"], rows["any"], rows["cheapest"], rows["config"]
            lines += [
                "",
                "Reading: `scheduled` bounds what actually runs (every admitted configuration at once) "
                f"and keeps {100 * sc['flexibility_kept']:.1f}% of the oracle's flexibility, against "
                f"{100 * an['flexibility_kept']:.1f}% for `any`, the other guarantee that covers every "
                f"scheduler choice; `cheapest` keeps {100 * ch['flexibility_kept']:.1f}% but bounds only the "
                "cheapest admitted configuration, and `config` "
                f"({100 * co['flexibility_kept']:.1f}%) bounds none of what runs: on "
                f"{100 * co['test_any_inaccurate_rate']:.1f}% of the test inputs it admits an inaccurate "
                f"configuration (epsilon {100 * g['epsilon']:.0f}%). The realised drop of `scheduled` "
                f"({sc['sim_accuracy_drop_points']:.2f} points) is far inside the 2-point budget because the "
                "bound is a worst case over the admitted set and the scheduler is not adversarial; a "
                "guarantee that holds for every load-driven choice cannot spend that slack.",
            ]
        lines.append("")
    s = result.get("sizes")
    if s:
        lines += [
            f"## Flexibility kept vs labelled inputs (evaluated on {s['held_out_inputs']:,} fresh inputs)",
            "",
            "Before: the previous default, guarantee `cheapest` with six hidden layers of 64. After: "
            "guarantee `scheduled` with the same network, and with one hidden layer of 64 (not run at "
            "60k). Splits 60/20/20 of the labelled inputs; epsilon 0.02, confidence 0.95. In brackets: "
            "share of the fresh inputs on which some admitted configuration is inaccurate.",
            "",
            "| workflow | family | labelled inputs | before: cheapest, 6x64 | scheduled, 6x64 "
            "| scheduled, 1x64 |",
            "|---|---|---|---|---|---|",
        ]
        rows = s["rows"]

        def cell(w, f, n, variant):
            r = next(
                (
                    r
                    for r in rows
                    if (r["workflow"], r["family"], r["num_inputs"], r["variant"])
                    == (w, f, n, variant)
                ),
                None,
            )
            if r is None:
                return "-"
            return f"{100 * r['flexibility_kept']:.1f}% ({100 * r['any_inaccurate_rate']:.1f}%)"

        keys = sorted({(r["workflow"], r["family"], r["num_inputs"]) for r in rows})
        for w, f, n in keys:
            lines.append(
                f"| {w} | {f} | {n:,} | {cell(w, f, n, 'before')} | {cell(w, f, n, 'scheduled')} "
                f"| {cell(w, f, n, 'scheduled-1-layer')} |"
            )
        lines += [
            "",
            "Reading: below 10k labelled inputs the previous default admits (almost) only c_max: its "
            "per-configuration step needs ~330 admitted, all-accurate calibration inputs per "
            "configuration. `scheduled` spends the whole calibration split on one threshold, and one "
            "hidden layer overfits less than six on 600-1,800 training inputs; at 10k both networks "
            "tie. At 60k `cheapest` keeps a few points more, but only by admitting sets in which some "
            "configuration is inaccurate on 2.6-4.0% of the inputs (over epsilon for a scheduler that "
            "may run any of them); `scheduled` stays under 2%.",
            "",
        ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python bench/guarantee.py", description=__doc__.splitlines()[0]
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke run: small data, few epochs (not a comparison)"
    )
    p.add_argument("--parts", default="guarantees,sizes", help="comma-separated: guarantees, sizes")
    p.add_argument(
        "--work", type=Path, default=ROOT / "out" / "guarantee", help="scratch directory"
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "guarantee.json")
    p.add_argument("--render", action="store_true", help="only rewrite the .md from the .json")
    args = p.parse_args(argv)
    if args.render:
        args.out.with_suffix(".md").write_text(render(json.loads(args.out.read_text())))
        return 0
    assert set(GUARANTEES) >= {"cheapest", "any", "config", "scheduled"}
    args.work.mkdir(parents=True, exist_ok=True)
    parts = {x.strip() for x in args.parts.split(",") if x.strip()}
    t0 = time.perf_counter()
    result: dict = {
        "git_sha": git_sha(),
        "device": platform.machine() + " " + platform.processor(),
        "quick": args.quick,
    }
    if args.out.is_file() and not args.quick:  # keep the other part of an earlier run
        old = json.loads(args.out.read_text())
        for k in ("guarantees", "sizes"):
            if k not in parts and k in old:
                result[k] = old[k]
    if "guarantees" in parts:
        result["guarantees"] = part_guarantees(args.work, args.quick)
    if "sizes" in parts:
        result["sizes"] = part_sizes(args.work, args.quick)
    result["wall_s"] = time.perf_counter() - t0
    out = args.out if not args.quick else args.work / "guarantee.json"
    out.write_text(json.dumps(result, indent=2, allow_nan=True) + "\n")
    out.with_suffix(".md").write_text(render(result))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
