"""Reproduce the Aragog paper's evaluation in the simulator and write ``bench/results/paper.md``.

    python bench/paper.py                 # full run (reported time in paper.md)
    python bench/paper.py --quick         # smoke run: 2 workflows, short runs

For every shipped workflow x family (qwen, llama) on the 8-GPU fleets it sweeps arrival
rates for aragog (shipped trained router when present, oracle masks otherwise — the
table says which), per_input and per_workflow, and compares Aragog's max throughput and
its median/P95 latency at the highest rate with the paper's ranges. Then the ablations of
the paper's Table 1: beam width 1/2/4/8, 4 vs 8 GPUs, the constrained space and the
mixed family. Nothing here is tuned to the paper's numbers: the simulator and data are
what they are, and the file says where and why figures fall outside the paper's ranges.

Writes ``paper.md``, ``paper.json`` (every summary, with the git SHA) and plots under
``bench/results/paper/``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAPER = {
    "thr_vs_per_input": (42.8, 76.3),
    "thr_vs_per_workflow": (78.1, 217.0),
    "p50_vs_per_input": (-71.1, -32.5),
    "p50_vs_per_workflow": (-86.1, -60.0),
    "p95_vs_per_input": (-76.2, -46.2),
    "p95_vs_per_workflow": (-89.0, -63.2),
    "accuracy_drop_points": (0.0, 2.0),
}
WORKFLOWS = ("self_refine_humaneval", "self_refine_squad", "text_to_sql_bird", "voting_mmlu_pro", "decomposition_strategyqa")
FAMILIES = ("qwen", "llama")
MAIN_POLICIES = ("aragog", "aragog-oracle", "per_input", "per_workflow")


def _enable_compile_cache() -> None:
    import jax

    cache = Path(os.path.expanduser("~/.cache/aragog_jax/jax"))
    cache.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def _fmt(x: float, pct: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:+.1f}%" if pct else f"{x:.2f}"


def _in(x: float, rng: tuple[float, float]) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    lo, hi = rng
    return "in" if lo <= x <= hi else ("above" if x > hi else "below")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="directory for paper.md (default bench/results)")
    ap.add_argument("--datasets", type=Path, default=None, help="datasets root (default profiles/datasets)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 workflows, 3 rates, 15 s of arrivals, no ablations")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals per run (default 60)")
    ap.add_argument("--num-rates", type=int, default=4, help="rates per sweep (default 4)")
    ap.add_argument("--round-interval", type=float, default=0.1, help="least virtual seconds between rounds (default 0.1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument("--render", type=Path, help="only re-render paper.md from an existing paper.json")
    ap.add_argument("--speed", action="store_true",
                    help="only measure the simulator speed on the headline case (printed as JSON; paper.md untouched)")
    args = ap.parse_args(argv)
    if args.render:
        results = json.loads(args.render.read_text())
        (args.out / "paper.md").write_text(render(results))
        _plot_gains(results, args.out / "paper")
        print(f"wrote {args.out / 'paper.md'}")
        return 0
    _enable_compile_cache()
    from aragog_jax._cli import tune_xla

    tune_xla()  # the simulator's rounds: see aragog_jax/_cli.py
    if args.speed:
        from aragog_jax.sim import SweepConfig, auto_rates, load_setup
        from aragog_jax.sim._setup import DATASETS_DIR

        ds_dir = (args.datasets or DATASETS_DIR) / "self_refine_humaneval" / "qwen"
        top = auto_rates(load_setup("self_refine_humaneval", "qwen", gpus=8, dataset=ds_dir), args.num_rates)[-1]
        sweep = SweepConfig(duration_s=args.duration, round_interval_s=args.round_interval, seed=args.seed,
                            horizon_s=args.duration * 2.0)
        print(json.dumps(simulator_speed(ds_dir, top, sweep), indent=1))
        return 0

    from aragog_jax.sim import SweepConfig, constrained_variant, load_setup, run_sweep, write_summary
    from aragog_jax._provenance import git_sha
    from aragog_jax.sim._setup import DATASETS_DIR
    from aragog_jax.spec import load_models, load_workflow
    from aragog_jax.spec._load import WORKFLOWS_DIR

    t_start = time.perf_counter()
    ds_root = args.datasets or DATASETS_DIR
    plots = args.out / "paper"
    plots.mkdir(parents=True, exist_ok=True)
    workflows = WORKFLOWS[:2] if args.quick else WORKFLOWS
    base = SweepConfig(
        policies=MAIN_POLICIES,
        num_rates=3 if args.quick else args.num_rates,
        duration_s=15.0 if args.quick else args.duration,
        round_interval_s=args.round_interval,
        seed=args.seed,
        horizon_s=(15.0 if args.quick else args.duration) * 2.0,
        # per-workflow gets the same accuracy budget Aragog is held to: 2 points of c_max.
        workflow_tolerance=0.02,
    )

    def ds(wf: str, fam: str) -> Path:
        return ds_root / wf / fam

    results: dict[str, dict] = {"main": {}, "ablations": {}}

    def run(key: str, group: str, setup, sweep: SweepConfig) -> dict:
        t0 = time.perf_counter()
        summary = run_sweep(setup, sweep, progress=sys.stderr.isatty(), keep_runs=True)
        write_summary(summary, plots / key)
        headline = summary["_runs"].get("aragog", [None])[-1]
        clean = {k: v for k, v in summary.items() if not k.startswith("_")}
        if headline is not None:
            clean["headline_stage_completions"] = headline.stage_completions
            clean["headline_sim_wall_s"] = headline.sim_wall_s
            clean["headline_scheduler_wall_s"] = float(sum(headline.round_wall_s))
        results[group][key] = clean
        print(f"[{time.perf_counter() - t_start:7.1f}s] {key}: {time.perf_counter() - t0:.1f}s", flush=True)
        return clean

    for fam in FAMILIES:
        for wf in workflows:
            run(f"{wf}-{fam}", "main", load_setup(wf, fam, gpus=8, dataset=ds(wf, fam)), base)

    if not args.quick and not args.no_ablations:
        hw, hf = "self_refine_humaneval", "qwen"
        main_key = f"{hw}-{hf}"
        rates = tuple(results["main"][main_key]["rates"])
        setup = load_setup(hw, hf, gpus=8, dataset=ds(hw, hf))
        for b in (1, 2, 8):
            run(f"beam{b}-{main_key}", "ablations", setup, SweepConfig(**{**base.__dict__, "policies": ("aragog",), "beam_width": b, "rates": rates}))
        run(f"4gpu-{main_key}", "ablations", load_setup(hw, hf, gpus=4, dataset=ds(hw, hf)), base)
        catalog = load_models()
        for wf in ("self_refine_humaneval", "voting_mmlu_pro"):
            var = constrained_variant(load_workflow(WORKFLOWS_DIR / f"{wf}.toml", catalog))
            run(f"constrained-{wf}-{hf}", "ablations", load_setup(wf, hf, gpus=8, dataset=ds(wf, hf), workflow_spec=var), base)
        for wf in ("self_refine_humaneval", "voting_mmlu_pro"):
            if (ds(wf, "mixed") / "meta.json").is_file():
                run(f"mixed-{wf}", "ablations", load_setup(wf, "mixed", gpus=8, dataset=ds(wf, "mixed")), base)

    top = results["main"]["self_refine_humaneval-qwen"]["rates"][-1]
    results["speed"] = simulator_speed(ds("self_refine_humaneval", "qwen"), top, base)

    wall = time.perf_counter() - t_start
    results["git_sha"] = git_sha()
    results["wall_s"] = wall
    results["machine"] = f"{platform.machine()} {os.cpu_count()} CPUs, {platform.python_version()}"
    results["settings"] = {k: v for k, v in base.__dict__.items()}
    results["quick"] = args.quick
    (args.out / "paper.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    _plot_gains(results, plots)
    (args.out / "paper.md").write_text(render(results))
    print(f"wrote {args.out / 'paper.md'} in {wall:.0f}s")
    return 0


def simulator_speed(ds_dir: Path, rate: float, sweep) -> dict:
    """Simulator speed on the headline case (qwen self_refine_humaneval, 8 GPUs, at
    ``rate``), everything compiled and warm, for aragog and per_workflow.

    Besides stage completions per wall second it splits where the time goes: a least
    squares fit of each round's wall time to ``fixed + per_step * search_steps`` (the
    beam search looks at ``search_steps`` items), and the floor of one kernel call that
    does nothing (no free slot, 16 items), so the report can say what bounds the speed.
    """
    import jax
    import numpy as np

    from aragog_jax.scheduler import COMPILED, pad_round
    from aragog_jax.sim import RunConfig, build_masks, load_setup, simulate
    from aragog_jax.sim._setup import per_workflow_config

    hs = load_setup("self_refine_humaneval", "qwen", gpus=8, dataset=ds_dir)
    hm = build_masks(hs, None, None)
    pwf = per_workflow_config(hs.dataset.scores[hs.rows], hs.space.c_max)
    out: dict = {}
    for pol in ("aragog", "per_workflow"):
        cfg = RunConfig(policy=pol, rate=rate, duration_s=sweep.duration_s, round_interval_s=sweep.round_interval_s,
                        horizon_s=sweep.horizon_s, route_cost_s=hm.route_cost_s, seed=sweep.seed)
        simulate(hs, cfg, hm.router, per_workflow_config=pwf)  # compile every bucket it needs
        res = simulate(hs, cfg, hm.router, per_workflow_config=pwf)
        wall = np.asarray(res.round_wall_s)
        steps = np.asarray(res.round_steps, dtype=np.float64)
        fixed, per_step = np.linalg.lstsq(np.stack([np.ones_like(steps), steps], axis=1), wall, rcond=None)[0]
        sched_s = float(wall.sum())
        out[pol] = {"rate": rate, "stage_completions": res.stage_completions, "wall_s": res.sim_wall_s,
                    "scheduler_s": sched_s, "rounds": res.rounds,
                    "per_s": res.stage_completions / res.sim_wall_s,
                    "per_s_excl_scheduler": res.stage_completions / max(res.sim_wall_s - sched_s, 1e-9),
                    "mean_search_steps": float(steps.mean()), "round_fixed_us": float(fixed * 1e6),
                    "round_per_step_us": float(per_step * 1e6)}
    # One kernel call with nothing to do, in the smallest item bucket of this fleet.
    num_engines, num_models = len(hs.engines), len({e.model for e in hs.engines})
    empty = pad_round(  # padded to the smallest buckets: 16 items, 32 configurations, 64 slots
        np.zeros((0, 32), dtype=bool), np.zeros((0, 32), dtype=np.int8), np.zeros(0, dtype=np.int32),
        np.arange(num_engines, dtype=np.int32) % num_models, np.zeros(num_engines, dtype=np.int32),
        np.zeros((num_engines, 64), dtype=np.int32), num_models,
    )
    jax.block_until_ready(COMPILED(empty, 4))
    reps = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(200):
            jax.block_until_ready(COMPILED(empty, 4))
        reps.append((time.perf_counter() - t0) / 200)
    out["empty_kernel_call_us"] = float(min(reps) * 1e6)
    return out


def _plot_gains(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = list(results["main"])
    if not keys:
        return
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, (metric, base, rng, title) in zip(
        axes,
        [
            ("max_throughput_gain_pct", "per_input", PAPER["thr_vs_per_input"], "max throughput gain vs per-input (%)"),
            ("max_throughput_gain_pct", "per_workflow", PAPER["thr_vs_per_workflow"], "max throughput gain vs per-workflow (%)"),
            ("median_latency_change_pct", "per_input", PAPER["p50_vs_per_input"], "P50 latency change vs per-input (%)"),
        ],
        strict=True,
    ):
        vals = [results["main"][k]["comparison"].get(f"aragog_vs_{base}", {}).get(metric, float("nan")) for k in keys]
        ax.bar(np.arange(len(keys)), vals)
        ax.axhspan(rng[0], rng[1], color="g", alpha=0.15, label="paper range")
        ax.set_xticks(np.arange(len(keys)))
        ax.set_xticklabels([k.replace("_", " ") for k in keys], rotation=70, fontsize=6)
        ax.set_title(title, fontsize=9)
        ax.axhline(0, color="k", lw=0.5)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "gains_vs_paper.png", dpi=110)
    plt.close(fig)


def sustained_index(per_rate: list[dict]) -> int:
    """Index of the highest rate at which the policy keeps up (throughput >= 90% of the rate)."""
    ok = [i for i, r in enumerate(per_rate) if r["throughput"] >= 0.9 * r["rate"]]
    return ok[-1] if ok else 0


def latency_at_sustained(pols: dict) -> dict[str, float]:
    """Latency changes of aragog vs each baseline at the highest rate aragog sustains."""
    from aragog_jax.sim._metrics import pct_change

    a = pols["aragog"]["per_rate"]
    i = sustained_index(a)
    out = {"rate": a[i]["rate"]}
    for b in ("per_input", "per_workflow"):
        if b in pols:
            br = pols[b]["per_rate"][i]
            out[f"p50_{b}"] = pct_change(a[i]["latency"]["p50"], br["latency"]["p50"])
            out[f"p95_{b}"] = pct_change(a[i]["latency"]["p95"], br["latency"]["p95"])
    return out


def _oracle_cell(pols: dict) -> str:
    from aragog_jax.sim._metrics import pct_change

    if "aragog-oracle" not in pols:
        return "-"
    o = pols["aragog-oracle"]["max_throughput"]
    return (f"{o:.1f} ({_fmt(pct_change(o, pols['per_input']['max_throughput']), True)} / "
            f"{_fmt(pct_change(o, pols['per_workflow']['max_throughput']), True)})")


def render(results: dict) -> str:
    L: list[str] = []
    L.append("# Aragog paper reproduction in the simulator")
    L.append("")
    L.append(
        f"Generated by `python bench/paper.py` at git `{results['git_sha'][:12]}` on {results['machine']}; "
        f"total wall time **{results['wall_s'] / 60:.1f} min**{' (quick mode)' if results['quick'] else ''}. "
        "Every number below comes from the discrete-event simulator driving the real scheduler "
        "(`aragog_jax.scheduler.Scheduler`) on engines built from the *derived* H100 profiles "
        "(`profiles/engines/`, see `profiles/README.md`) and the *synthetic* accuracy datasets "
        "(`profiles/datasets/`). Nothing was tuned to hit the paper's figures."
    )
    L.append("")
    s = results["settings"]
    L.append(
        f"Settings: Poisson arrivals for {s['duration_s']:g} s per run, {s['num_rates']} rates per sweep "
        "(geometric, from half of what the largest engine alone sustains to 1.25 x the fleet's upper bound with every "
        "engine saturated, decode and prefill included, so the top rate overloads every policy), "
        f"horizon {s['horizon_s']:g} s, scheduling rounds at least {s['round_interval_s'] * 1e3:g} ms apart, each round's "
        "measured wall time charged to the virtual clock, routing time of the real jitted router charged per request. "
        "Throughput = stage completions per second in the window [duration/2, duration] divided by the stages per "
        "request (requests/s; equal to the request completion rate in steady state, without waiting for whole "
        "multi-stage requests to drain through saturated engines); `max` is the highest over the sweep. "
        "Latency changes are at the highest rate (all policies see the same requests at the same times)."
    )
    L.append("")
    L.append("## Main results (8 GPUs)")
    L.append("")
    L.append(
        "| workflow / family | masks | max thr aragog / per-input / per-workflow (req/s) | thr gain vs PI | vs PW | "
        "P50 change vs PI | vs PW | P95 change vs PI | vs PW | accuracy drop (points) | aragog-oracle max thr (gain vs PI / PW) |"
    )
    L.append("|---|---|---|---|---|---|---|---|---|---|---|")
    outside: list[str] = []
    for key, r in results["main"].items():
        pols = r["policies"]
        cmp_ = r["comparison"]
        pi = cmp_.get("aragog_vs_per_input", {})
        pw = cmp_.get("aragog_vs_per_workflow", {})
        drop = cmp_.get("aragog_accuracy_drop_points", float("nan"))
        masks = "router" if pols["aragog"]["masks"].startswith("router") else "**oracle**"
        cells = [
            (pi.get("max_throughput_gain_pct"), "thr_vs_per_input"),
            (pw.get("max_throughput_gain_pct"), "thr_vs_per_workflow"),
            (pi.get("median_latency_change_pct"), "p50_vs_per_input"),
            (pw.get("median_latency_change_pct"), "p50_vs_per_workflow"),
            (pi.get("p95_latency_change_pct"), "p95_vs_per_input"),
            (pw.get("p95_latency_change_pct"), "p95_vs_per_workflow"),
        ]
        txt = []
        for v, name in cells:
            where = _in(v, PAPER[name])
            if where not in ("in", "n/a"):
                outside.append(f"{key}: {name} {_fmt(v, True)} ({where} the paper's {PAPER[name][0]:+g}..{PAPER[name][1]:+g}%)")
            txt.append(_fmt(v, True) + ("" if where == "in" else f" ({where})"))
        if not 0 <= drop <= 2.0:
            outside.append(f"{key}: accuracy drop {drop:.2f} points (paper: within 2)")
        L.append(
            f"| {key} | {masks} | {pols['aragog']['max_throughput']:.1f} / {pols['per_input']['max_throughput']:.1f} / "
            f"{pols['per_workflow']['max_throughput']:.1f} | " + " | ".join(txt) + f" | {drop:.2f} | " + _oracle_cell(pols) + " |"
        )
    L.append("")
    L.append(
        "Paper ranges: throughput +42.8..+76.3% vs per-input, +78.1..+217% vs per-workflow; median latency "
        "-32.5..-71.1% / -60..-86.1%; P95 -46.2..-76.2% / -63.2..-89%; accuracy within 2 points of c_max. "
        "A cell says (above)/(below) when it falls outside the paper's range."
    )
    L.append("")
    L.append("### Latency at the highest rate Aragog sustains")
    L.append("")
    L.append(
        "At the sweep's highest rate every policy is far past its capacity, the backlog grows for the whole run and "
        "latencies approach the horizon for all of them, which compresses the differences above toward zero. The "
        "table below compares latency at the highest rate at which Aragog still keeps up (throughput >= 90% of the "
        "arrival rate), where the baselines may already be overloaded."
    )
    L.append("")
    L.append("| workflow / family | rate (req/s) | P50 change vs PI | vs PW | P95 change vs PI | vs PW |")
    L.append("|---|---|---|---|---|---|")
    for key, r in results["main"].items():
        ls = latency_at_sustained(r["policies"])
        cells = []
        for name, rng in (("p50_per_input", "p50_vs_per_input"), ("p50_per_workflow", "p50_vs_per_workflow"),
                          ("p95_per_input", "p95_vs_per_input"), ("p95_per_workflow", "p95_vs_per_workflow")):
            v = ls.get(name, float("nan"))
            where = _in(v, PAPER[rng])
            cells.append(_fmt(v, True) + ("" if where == "in" else f" ({where})"))
        L.append(f"| {key} | {ls['rate']:g} | " + " | ".join(cells) + " |")
    L.append("")
    L.append("![gains vs paper](paper/gains_vs_paper.png)")
    L.append("")
    L.append("Per-case plots (throughput-latency, latency CDF at the highest rate, accuracy, admitted-set sizes) are in "
             "`bench/results/paper/<case>/`.")
    L.append("")
    L.append("### Detail per case")
    L.append("")
    L.append("| case | policy | max thr | P50 / P95 at top rate (s) | accuracy (c_max) | sched ms/round | routing share low/high load | mean admitted |")
    L.append("|---|---|---|---|---|---|---|---|")
    for group in ("main", "ablations"):
        for key, r in results[group].items():
            for p, d in r["policies"].items():
                top = d["per_rate"][-1]
                adm = d.get("admitted") or {}
                ro = d["routing_overhead_share"]
                L.append(
                    f"| {key} | {p} | {d['max_throughput']:.1f} | {top['latency']['p50']:.1f} / {top['latency']['p95']:.1f}"
                    f"{' (censored %d)' % top['latency_censored'] if top.get('latency_censored') else ''} | "
                    f"{d['accuracy']:.3f} ({d['c_max_accuracy']:.3f}) | {d['scheduler_ms_per_round']:.2f} | "
                    f"{100 * ro['lowest_rate']:.3f}% / {100 * ro['highest_rate']:.3f}% | "
                    f"{adm.get('mean', float('nan')):.1f} of {r['num_configs']} |"
                )
    L.append("")
    if results["ablations"]:
        L.append("## Ablations (paper Table 1)")
        L.append("")
        L.append("| ablation | aragog max thr | vs per-input | vs per-workflow | P50 at top rate (s) |")
        L.append("|---|---|---|---|---|")
        main = results["main"]
        ref = main.get("self_refine_humaneval-qwen")
        if ref:
            L.append(f"| beam 4 (main run, qwen self_refine_humaneval) | {ref['policies']['aragog']['max_throughput']:.1f} | "
                     f"{_fmt(ref['comparison']['aragog_vs_per_input']['max_throughput_gain_pct'], True)} | "
                     f"{_fmt(ref['comparison']['aragog_vs_per_workflow']['max_throughput_gain_pct'], True)} | "
                     f"{ref['policies']['aragog']['per_rate'][-1]['latency']['p50']:.1f} |")
        from aragog_jax.sim._metrics import pct_change

        for key, r in results["ablations"].items():
            a = r["policies"]["aragog"]
            c = r["comparison"]
            pi = c.get("aragog_vs_per_input", {}).get("max_throughput_gain_pct", float("nan"))
            pw = c.get("aragog_vs_per_workflow", {}).get("max_throughput_gain_pct", float("nan"))
            if key.startswith("beam") and ref:  # beam runs reuse the main run's baselines
                pi = pct_change(a["max_throughput"], ref["policies"]["per_input"]["max_throughput"])
                pw = pct_change(a["max_throughput"], ref["policies"]["per_workflow"]["max_throughput"])
            L.append(f"| {key} | {a['max_throughput']:.1f} | {_fmt(pi, True)} | {_fmt(pw, True)} | {a['per_rate'][-1]['latency']['p50']:.1f} |")
        L.append("")
    L.append("## Outside the paper's ranges")
    L.append("")
    if outside:
        L.extend(f"- {o}" for o in outside)
    else:
        L.append("- none")
    L.append("")
    L.append("## Simulator speed")
    L.append("")
    L.extend(render_speed(results.get("speed", {})))
    L.append("")
    L.extend(findings(results))
    L.append("")
    L.append(ANALYSIS)
    return "\n".join(L) + "\n"


def render_speed(speed: dict) -> list[str]:
    """The simulator-speed bullets of paper.md (target: 50,000 stage completions/s)."""
    L = []
    empty_us = speed.get("empty_kernel_call_us")
    for pol, sp in speed.items():
        if not isinstance(sp, dict):
            continue
        L.append(
            f"- Headline case (qwen self_refine_humaneval, {pol} at {sp['rate']:g} req/s, compiled and warm): "
            f"{sp['stage_completions']} stage completions in {sp['wall_s']:.2f} s of wall time = "
            f"**{sp['per_s']:,.0f} stage completions/s** (target 50,000: "
            f"{'met' if sp['per_s'] >= 50_000 else 'not met'}); {sp['scheduler_s']:.2f} s of it inside the real "
            f"scheduler's `schedule()` ({sp['rounds']} rounds), the rest (event processing, engines, the "
            f"scheduler's bookkeeping calls) ran at {sp['per_s_excl_scheduler']:,.0f} stage completions/s."
        )
        if "round_fixed_us" in sp:
            L.append(
                f"  A round cost {sp['round_fixed_us']:.0f} µs + {sp['round_per_step_us']:.2f} µs per item the beam "
                f"search looked at (least-squares fit over this run's rounds; {sp['mean_search_steps']:.1f} items per "
                f"round on average)."
            )
    ar = speed.get("aragog")
    if empty_us is not None and isinstance(ar, dict) and "round_per_step_us" in ar:
        kernel_s = ar["rounds"] * (empty_us + ar["round_per_step_us"] * ar["mean_search_steps"]) * 1e-6
        L.append(
            f"- One call of the compiled round kernel with nothing to do (16 items, no free slot) costs "
            f"{empty_us:.0f} µs on this CPU: XLA:CPU's fixed cost of a program with a data-dependent loop, paid "
            f"once per round whatever its size. The aragog run above needs {ar['rounds']} rounds (rounds are at "
            f"least 100 ms of virtual time apart; one per {ar['stage_completions'] / ar['rounds']:.1f} stage "
            f"completions) of {ar['mean_search_steps']:.0f} beam steps on average, so the kernel calls alone take "
            f"{kernel_s:.2f} s: even with free host code and event processing this run could not go faster than "
            f"{ar['stage_completions'] / kernel_s:,.0f} stage completions/s on this machine. Charging a cheaper "
            f"stand-in instead of the real kernel would stop measuring the real decision logic, which is the point "
            f"of the simulator."
        )
    return L


def findings(results: dict) -> list[str]:
    """Numbers-driven summary of the main table."""
    import numpy as np

    L = ["## Findings", ""]
    for fam in FAMILIES:
        rows = {k: v for k, v in results["main"].items() if k.endswith("-" + fam)}
        if not rows:
            continue

        def rng(key: str, pol: str = "aragog", rows=rows) -> str:
            from aragog_jax.sim._metrics import pct_change

            vals = [pct_change(v["policies"][pol]["max_throughput"], v["policies"][key]["max_throughput"]) for v in rows.values()]
            return f"{min(vals):+.1f}..{max(vals):+.1f}%"

        drops = [v["comparison"]["aragog_accuracy_drop_points"] for v in rows.values()]
        adm_r = np.mean([v["policies"]["aragog"]["admitted"]["mean"] / v["num_configs"] for v in rows.values()])
        adm_o = np.mean([v["policies"]["aragog-oracle"]["admitted"]["mean"] / v["num_configs"] for v in rows.values()]) if all("aragog-oracle" in v["policies"] for v in rows.values()) else float("nan")
        L.append(
            f"- **{fam}**: Aragog with the shipped router: max throughput {rng('per_input')} vs per-input and "
            f"{rng('per_workflow')} vs per-workflow; accuracy drop vs c_max {min(drops):.2f}..{max(drops):.2f} points. "
            + (f"With oracle masks: {rng('per_input', 'aragog-oracle')} vs per-input. " if adm_o == adm_o else "")
            + f"The router admits {100 * adm_r:.0f}% of the configurations on average, the oracle accurate set "
            f"{100 * adm_o:.0f}%."
        )
    same = [k for k, v in results["main"].items() if v["per_workflow_config"] == v["c_max"]]
    L.append(f"- per-workflow's configuration (the cheapest within 2 points of c_max on the test split) is c_max itself "
             f"in {len(same)} of {len(results['main'])} cases; `per_workflow_config` in paper.json lists each.")
    return L


ANALYSIS = """## Analysis

What in the model drives the figures above (see Findings for this run's numbers):

* **Fleet capacity is mostly small-model capacity.** With the derived profiles a
  Qwen2.5-7B TP1 engine decodes ~10k tokens/s at its saturation batch, the 14B TP2 and
  32B TP4 engines ~8.3k and ~8.5k; in the llama fleet the 3B and 8B replicas together
  decode ~37k tokens/s against ~4.9k for the 70B on 4 GPUs. Per-input (oracle cheapest
  accurate configuration) already sends most stages to the small engines, so Aragog can
  only add what the larger engines contribute. That bounds the gain over per-input at
  roughly the large engines' share of fleet capacity: enough for +24..+46% on qwen, and
  the same order with oracle masks on llama, but not more.
* **Router conservatism decides llama.** The shipped routers admit clearly fewer
  configurations than the oracle accurate set (calibrated so that admitted
  configurations are rarely inaccurate), and they drop exactly the small-model
  configurations: Aragog must then run more stages on the 70B engine, which is the
  llama fleet's bottleneck, and loses its edge over per-input (which is given oracle
  knowledge of the cheapest accurate configuration, as in the paper). With oracle masks
  the gain comes back. A less conservative router (larger epsilon, more training data)
  or a fleet with more large-model capacity would move llama toward the paper's range;
  we did not change either to get there.
* **Latency at moderate load can be worse than per-input.** The utility U ranks by
  forecast throughput gain, not by per-request speed: when a large engine has free
  slots, stages go there and decode 2-5x slower per sequence than on the small engine
  per-input would have used. The paper's latency wins over per-input come from
  per-input's queueing at the small engines; here those engines have so much headroom
  that per-input queues only near its own capacity.
* **Per-workflow.** Where no cheaper configuration reaches c_max's test accuracy within
  2 points (see Findings: mostly llama, whose synthetic test splits are small and whose
  c_max is needed on every stage), per-workflow runs the largest model everywhere and is
  capped by one engine (~1/4 of the qwen fleet's decode capacity, ~1/9 of the llama
  fleet's), which puts Aragog's gain far above the paper's range. Where it finds a
  cheaper configuration (most qwen cases) the gains land inside or near the paper's
  +78..+217%.
* **Latency at the highest rate** is a backlog measurement: every policy is past
  capacity, latency grows through the whole run, and requests still running at the
  horizon are counted with their latency so far; the differences shrink toward zero.
  The table at the highest rate Aragog sustains is the more informative comparison.
* **Beam width barely matters here.** Rounds run every >= 100 ms of virtual time and
  place about ten stages each, into the few engines that have free slots; the
  throughput-gain ranking then leaves little for a wider beam to find, and beam 1, 2, 4
  and 8 reach the same max throughput. The paper's beam-vs-greedy gap is measured as
  per-round optimality against brute force (the scheduler benchmark reports it); it does
  not turn into a throughput difference in this model.
* **Routing overhead** is ~0.1 ms per request for the shipped (6 x 64) routers against
  latencies of seconds, i.e. far below the paper's <= 3.5%.
* **Constrained space and mixed family** behave as expected: tying the critic to the
  refiner (or all voters to one model) removes configurations and lowers the gain; the
  mixed family (Llama-3.1-8B + Phi-4 + Qwen2.5-32B) lands near the qwen results.
* **Derived profiles.** The engines are a formula (profiles/README.md), with prefill
  added to every iteration that admits a sequence; the large saturation batches
  (150-190 sequences) make small engines hard to saturate. Measured profiles
  (`python -m aragog_jax.profile`) would change the absolute numbers.
"""


if __name__ == "__main__":
    raise SystemExit(main())
