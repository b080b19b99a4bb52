"""Reproduce the Aragog paper's evaluation in the simulator and write ``bench/results/paper.md``.

    python bench/paper.py                 # full run (wall time in paper.md)
    python bench/paper.py --quick         # SMOKE RUN of every code path: not a comparison

For every shipped workflow x family (qwen, llama) it reports the main table twice:

* **paper accounting** (the paper's rule): Aragog serves on 7 GPUs and the 8th runs its
  router (``profiles/fleets/<family>_7gpu.toml``); per-input and per-workflow need no
  router and get the 8th GPU as one more replica of the family's smallest model
  (``<family>_8gpu.toml``). ``per_input-router`` runs the same router, so it is charged
  the same GPU (7-GPU fleet).
* **equal fleet**: every policy on the same 8 serving GPUs.

Policies: aragog (the shipped trained router's masks), aragog-oracle (oracle masks),
per_input (oracle: the cheapest accurate configuration per input, the paper's best
case), per_input-router (the cheapest configuration the same router admits) and
per_workflow (the cheapest configuration within 2 points of c_max on the calibration
split, topped up from train below 500 inputs). Every arm of a case shares one rate grid:
a coarse geometric pass, then rates inside every policy's knee bracket
(``aragog_jax.sim.run_dense``), at least 8 rates. Latency (mean / P25 / P50 / P95) is
compared at the highest rate every policy sustains (throughput >= 90% of the arrivals)
and at the highest rate Aragog sustains. Ablations: beam width 1/2/4/8 (self-refine and
voting), 4 vs 8 GPUs (self-refine and voting), the constrained space and the mixed family
on all five workflows, and per-round optimality (beam vs greedy vs brute force) on
rounds captured from the simulator at its highest rate. Nothing is tuned to the paper's
numbers; the last section of paper.md names every case outside the paper's ranges and
the measured reason.

Writes ``paper.md``, ``paper.json`` (every summary, with the git SHA) and plots under
``bench/results/paper/``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
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
WORKFLOWS = (
    "self_refine_humaneval",
    "self_refine_squad",
    "text_to_sql_bird",
    "voting_mmlu_pro",
    "decomposition_strategyqa",
)
FAMILIES = ("qwen", "llama")
from aragog_jax.scheduler import SCARCITY_DEFAULT  # noqa: E402

#: The two scheduling rules (issue 18): the scarcity reservation and the paper's rule.
CANDIDATE, PAPER_RULE = "aragog-scarce", "aragog-paper"
#: The default policy ``aragog`` runs one of them (``SCARCITY_DEFAULT``); OTHER_RULE is
#: the other, run beside it so every report compares the two. RULE_KEYS maps each rule to
#: the policy that ran it in this report (``aragog`` for the default's).
OTHER_RULE = PAPER_RULE if SCARCITY_DEFAULT else CANDIDATE
DEFAULT_RULE = CANDIDATE if SCARCITY_DEFAULT else PAPER_RULE
RULE_KEYS = {DEFAULT_RULE: "aragog", OTHER_RULE: OTHER_RULE}
RULE_NAMES = {CANDIDATE: "scarcity reservation", PAPER_RULE: "paper's rule"}
#: Diagnostic arms over the yardstick router's calibrated masks (``bench/_yardstick.py``:
#: the best calibrated router the synthetic data allows): the default rule and
#: per-input-router on them. They run every rate of the grid in both fleets but place no
#: knee rates and do not enter the rate every policy sustains (``DIAGNOSTIC_POLICIES``).
YARDSTICK_POLICIES = ("aragog-yardstick", "per_input-yardstick")
#: Equal fleet: every policy on the 8-GPU fleet.
EQUAL_POLICIES = (
    "aragog",
    OTHER_RULE,
    "aragog-oracle",
    "per_input",
    "per_input-router",
    "per_workflow",
    *YARDSTICK_POLICIES,
)
#: Paper accounting: the policies that run the router serve on 7 GPUs; aragog-oracle
#: (Aragog with exact masks) and the yardstick arms too, so the router's share of any gap
#: is measured on the same fleet.
ROUTED_POLICIES = ("aragog", OTHER_RULE, "aragog-oracle", "per_input-router", *YARDSTICK_POLICIES)
ABLATION_POLICIES = ("aragog", "per_input", "per_workflow")
BEAM_WORKFLOWS = ("self_refine_humaneval", "voting_mmlu_pro")
#: Beam widths and per-round optimality: the paper's two ablation workflows on Qwen, and
#: two Llama cases where the 70B engine is scarce (issue 18).
BEAM_CASES = (
    ("self_refine_humaneval", "qwen"),
    ("voting_mmlu_pro", "qwen"),
    ("self_refine_squad", "llama"),
    ("voting_mmlu_pro", "llama"),
)
SMOKE = "SMOKE RUN (--quick): checks that every step runs; its numbers are not a comparison"


@dataclass(frozen=True)
class Settings:
    """What every task of one paper.py run shares (JSON-able)."""

    duration_s: float = 30.0
    warmup_s: float = 15.0
    horizon_factor: float = 1.5  # runs stop at horizon_factor x duration_s
    coarse_rates: int = 5
    per_knee: int = 1
    min_rates: int = 8
    ablation_coarse_rates: int = 3  # ablations report max throughput only: a sparser grid
    ablation_min_rates: int = 4
    round_interval_s: float = 0.1
    round_cost_s: float = 0.001
    route_cost_s: float = 0.001
    seed: int = 0
    datasets: str = ""
    plots: str = ""
    opt_rounds: int = 60
    opt_max_items: int = 8

    def sweep(self, policies: tuple[str, ...], **kw):
        from aragog_jax.sim import SweepConfig

        return SweepConfig(
            policies=policies,
            num_rates=self.coarse_rates,
            duration_s=self.duration_s,
            warmup_s=self.warmup_s,
            round_interval_s=self.round_interval_s,
            round_cost_s=self.round_cost_s,
            route_cost_s=self.route_cost_s,
            seed=self.seed,
            horizon_s=self.horizon_factor * self.duration_s,
            workflow_tolerance=0.02,
            dense=True,
            per_knee=self.per_knee,
            min_rates=self.min_rates,
            **kw,
        )


def _jax_setup() -> None:
    """Persistent compile cache, synchronous CPU dispatch (a round's kernel runs on the
    calling thread: on a busy 2-core machine handing it to a worker thread and back cost
    more than the kernel), and the simulator's XLA flags. Runs in every worker."""
    import jax

    from aragog_jax._cli import tune_xla
    from aragog_jax.simulate import DEFAULT_COMPILE_CACHE, _enable_compile_cache

    tune_xla()
    _enable_compile_cache(DEFAULT_COMPILE_CACHE)
    jax.config.update("jax_cpu_enable_async_dispatch", False)


def _clean(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if not k.startswith("_")}


def _ds(st: Settings, wf: str, fam: str) -> Path:
    from aragog_jax.sim._setup import DATASETS_DIR

    return (Path(st.datasets) if st.datasets else DATASETS_DIR) / wf / fam


# --- tasks (each runs in a worker process; returns JSON-able dicts) -------------------


def yardstick_masks(setup, route_cost_s: float):
    """``build_masks`` of ``setup`` (the shipped router's masks, the oracle's) plus the
    yardstick router's calibrated masks for every row of its dataset (``bench/_yardstick.py``:
    calibrated like the shipped router on its training draw's calibration split)."""
    from aragog_jax.sim import build_masks
    from bench._yardstick import NUM_INPUTS, SEED, calibrated_yardstick, dataset_masks

    wf, fam = setup.space.workflow, setup.family
    ys = calibrated_yardstick(wf, fam)
    mask = dataset_masks(
        ys, setup.space, setup.workflow, setup.dataset, where=f"{wf}/{fam} dataset"
    )
    cal = ys.settings
    source = (
        f"yardstick (P(accurate | difficulty, role), {ys.num_samples} luck draws per role; calibrated on the "
        f"routers' training draw ({NUM_INPUTS} inputs, seed {SEED}): {cal['guarantee']}, epsilon "
        f"{cal['epsilon']}, confidence {cal['confidence']}, level {ys.level:.2f}, policy bound "
        f"{ys.policy_bound:.4f})"
    )
    return replace(build_masks(setup, None, route_cost_s), yardstick=mask, yardstick_source=source)


def task_main(st: Settings, wf: str, fam: str) -> dict:
    """One case, both accountings on one shared rate grid."""
    from aragog_jax.sim import build_masks, load_setup, run_dense, write_summary
    from aragog_jax.sim._setup import FLEETS_DIR

    key = f"{wf}-{fam}"
    s8 = load_setup(wf, fam, gpus=8, dataset=_ds(st, wf, fam))
    s7 = load_setup(wf, fam, fleet=FLEETS_DIR / f"{fam}_7gpu.toml", dataset=_ds(st, wf, fam))
    m8 = yardstick_masks(s8, st.route_cost_s)
    m7 = replace(
        build_masks(s7, None, st.route_cost_s),
        yardstick=m8.yardstick,
        yardstick_source=m8.yardstick_source,
    )
    eq, routed = run_dense(
        [(s8, EQUAL_POLICIES), (s7, ROUTED_POLICIES)],
        st.sweep(EQUAL_POLICIES),
        progress=False,
        keep_runs=True,
        masks=[m8, m7],
    )
    out = Path(st.plots) / key
    write_summary(eq, out / "equal_fleet")
    write_summary(routed, out / "routed_7gpu", plots=False)
    res = {"equal": _clean(eq), "routed": _clean(routed)}
    res["paper"] = paper_accounting(res["equal"], res["routed"])
    plot_case(key, res, out / "throughput_latency.png")
    return res


def paper_accounting(equal: dict, routed: dict) -> dict:
    """The paper's rule from the two arms: router-running policies on 7 GPUs, the others on 8."""
    from aragog_jax.sim._summary import compare

    pols = {
        "aragog": routed["policies"]["aragog"],
        **{
            p: routed["policies"][p]
            for p in (OTHER_RULE, "aragog-oracle", *YARDSTICK_POLICIES)
            if p in routed["policies"]
        },
        "per_input": equal["policies"]["per_input"],
        "per_input-router": routed["policies"]["per_input-router"],
        "per_workflow": equal["policies"]["per_workflow"],
    }
    return {
        "policies": pols,
        "comparison": compare(pols),
        "rates": equal["rates"],
        "fleets": {"routed": routed["fleet"], "baselines": equal["fleet"]},
        "gpus": {"routed": routed["num_gpus"], "baselines": equal["num_gpus"]},
        "fleet_request_rate_bound": {
            "routed": routed["fleet_request_rate_bound"],
            "baselines": equal["fleet_request_rate_bound"],
        },
    }


def task_ablation(
    st: Settings,
    key: str,
    wf: str,
    fam: str,
    gpus: int = 8,
    constrained: bool = False,
    policies: tuple[str, ...] = ABLATION_POLICIES,
    rates: tuple[float, ...] | None = None,
    beam: int = 4,
) -> dict:
    from aragog_jax.sim import constrained_variant, load_setup, run_sweep, write_summary
    from aragog_jax.spec import load_models, load_workflow
    from aragog_jax.spec._load import WORKFLOWS_DIR

    var = (
        constrained_variant(load_workflow(WORKFLOWS_DIR / f"{wf}.toml", load_models()))
        if constrained
        else None
    )
    setup = load_setup(wf, fam, gpus=gpus, dataset=_ds(st, wf, fam), workflow_spec=var)
    sweep = replace(
        st.sweep(policies, beam_width=beam),
        num_rates=st.ablation_coarse_rates,
        min_rates=st.ablation_min_rates,
    )
    if rates is not None:
        sweep = replace(sweep, rates=tuple(rates), dense=False)
    summ = run_sweep(setup, sweep, progress=False)
    write_summary(summ, Path(st.plots) / key, plots=False)
    return _clean(summ)


def task_optimality(st: Settings, wf: str, fam: str, rate: float) -> dict:
    """Per-round optimality (the paper's Fig. 10) on rounds captured from the simulator.

    Aragog (B = 4, router masks, the default rule) runs at ``rate`` (the case's highest
    rate); every round's kernel inputs are recorded. Every k-th round (k spreads
    ``opt_rounds`` over the run) is trimmed to its FIFO prefix of at most
    ``opt_max_items`` ready items, whole requests only (the exhaustive search is
    exponential in the items), and solved under both rules (``aragog-scarce``: the
    scarcity reservation; ``aragog-paper``: the paper's) by beam widths 1, 2, 4, 8 and by brute
    force over that rule's search space. A round is *contested* when its search space
    holds more than one complete assignment (brute force examines more than one leaf):
    only there can the width matter. ``reservation_changed`` counts the trimmed rounds
    whose B = 4 plan differs between the rules.
    """
    import numpy as np

    from aragog_jax.scheduler import (
        COMPILED,
        COMPILED_PAPER,
        COMPILED_SCARCE,
        BeamPolicy,
        pad_round,
    )
    from aragog_jax.scheduler._round import twin_round
    from aragog_jax.sim import RunConfig, build_masks, load_setup, simulate
    from aragog_jax.sim._setup import per_workflow_config, selection_rows

    class Recorder(BeamPolicy):
        def __init__(self) -> None:
            super().__init__(4, compiled=COMPILED)
            self.rounds: list = []

        def assign(self, arrays):
            self.rounds.append(arrays)
            return super().assign(arrays)

    setup = load_setup(wf, fam, gpus=8, dataset=_ds(st, wf, fam))
    masks = build_masks(setup, None, st.route_cost_s)
    rows, _ = selection_rows(setup.dataset)
    pwf = per_workflow_config(setup.dataset.scores[rows], setup.space.c_max, 0.02)
    rec = Recorder()
    cfg = RunConfig(
        policy="aragog",
        rate=rate,
        duration_s=st.duration_s,
        round_interval_s=st.round_interval_s,
        horizon_s=st.horizon_factor * st.duration_s,
        route_cost_s=masks.route_cost_s,
        round_cost_s=st.round_cost_s,
        seed=st.seed,
    )
    simulate(setup, cfg, masks.router, per_workflow_config=pwf, policy=rec)
    captured = rec.rounds
    step = max(1, len(captured) // st.opt_rounds)
    widths = (1, 2, 4, 8)
    rules = {CANDIDATE: (True, COMPILED_SCARCE), PAPER_RULE: (False, COMPILED_PAPER)}
    ratios = {r: {b: [] for b in widths} for r in rules}
    contested = {r: {b: [] for b in widths} for r in rules}
    items_kept, items_full, leaves = [], [], {r: [] for r in rules}
    zero = dict.fromkeys(rules, 0)
    changed = 0
    t0 = time.perf_counter()
    for a in captured[::step][: st.opt_rounds]:
        n = a.num_items
        req = np.asarray(a.item_req)[:n]
        k = min(n, st.opt_max_items)
        while 0 < k < n and req[k] == req[k - 1]:
            k -= 1  # keep whole requests
        if k == 0:
            continue
        t = pad_round(
            np.asarray(a.item_viable)[:k],
            np.asarray(a.item_cfg_model)[:k],
            req[:k],
            np.asarray(a.engine_model),
            np.asarray(a.free_slots),
            np.asarray(a.gain),
            a.num_models,
            cfg_bucket=np.asarray(a.item_viable).shape[1],
        )
        items_full.append(n)
        items_kept.append(k)
        plans = {}
        for name, (reserve, compiled) in rules.items():
            brute = twin_round(t, None, reserve=reserve)[1]
            leaves[name].append(int(brute.num_steps))
            if int(brute.utility) <= 0:
                zero[name] += 1
                continue
            for b in widths:
                res = compiled(t, b)[1]
                if b == 4:
                    plans[name] = np.asarray(res.engine).tolist()
                r = int(res.utility) / int(brute.utility)
                ratios[name][b].append(r)
                if int(brute.num_steps) > 1:
                    contested[name][b].append(r)
        if len(plans) == 2 and plans[CANDIDATE] != plans[PAPER_RULE]:
            changed += 1

    def stats(v: list[float]) -> dict:
        arr = np.asarray(v) if v else np.asarray([float("nan")])
        return {
            "n": len(v),
            "mean": float(np.mean(arr)),
            "min": float(np.min(arr)),
            "optimal_share": float(np.mean(arr >= 1.0 - 1e-12)),
        }

    out = {
        "workflow": wf,
        "family": fam,
        "rate": rate,
        "rounds_captured": len(captured),
        "every": step,
        "rounds_solved": len(items_kept),
        "max_items": st.opt_max_items,
        "items_full_mean": float(np.mean(items_full)) if items_full else 0.0,
        "items_kept_mean": float(np.mean(items_kept)) if items_kept else 0.0,
        "reservation_changed": changed,
        "brute_force_s": time.perf_counter() - t0,
        "rules": {
            name: {
                "zero_optimum": zero[name],
                "brute_leaves_mean": float(np.mean(leaves[name])) if leaves[name] else 0.0,
                "contested": len(contested[name][1]),
                "ratios": {str(b): v for b, v in ratios[name].items()},
                **{f"beam{b}": stats(ratios[name][b]) for b in widths},
                **{f"contested_beam{b}": stats(contested[name][b]) for b in widths},
            }
            for name in rules
        },
    }
    path = Path(st.plots) / f"opt-{wf}-{fam}" / "optimality.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    return out


def task_speed(st: Settings, rate: float) -> dict:
    return simulator_speed(_ds(st, "self_refine_humaneval", "qwen"), rate, st)


def _run_task(spec: tuple) -> tuple:
    name, key, kwargs = spec
    t0 = time.perf_counter()
    fn = {
        "main": task_main,
        "ablation": task_ablation,
        "optimality": task_optimality,
        "speed": task_speed,
    }[name]
    return name, key, fn(**kwargs), time.perf_counter() - t0


# --- driver ---------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench" / "results",
        help="directory for paper.md (default bench/results)",
    )
    ap.add_argument(
        "--datasets", type=Path, default=None, help="datasets root (default profiles/datasets)"
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="SMOKE RUN, not a comparison: one workflow on both families, one ablation of each kind, "
        "20 s of arrivals measured after a 10 s warm-up, 4 rates; checks that every step runs",
    )
    ap.add_argument(
        "--duration",
        type=float,
        default=30.0,
        help="seconds of arrivals per run (default 30, to fit the time budget on the shared machine: "
        "throughput measured in [15, 30] s was within 5%% of [30, 60] s at six points, see paper.md)",
    )
    ap.add_argument(
        "--horizon-factor",
        type=float,
        default=1.5,
        help="runs stop at this x duration (default 1.5; later requests count as censored)",
    )
    ap.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="throughput is measured from here to the end of arrivals (default: duration / 2)",
    )
    ap.add_argument(
        "--coarse-rates", type=int, default=5, help="rates of the coarse pass (default 5)"
    )
    ap.add_argument(
        "--per-knee",
        type=int,
        default=1,
        help="rates added inside each policy's knee bracket (default 1)",
    )
    ap.add_argument("--min-rates", type=int, default=8, help="rates per sweep at least (default 8)")
    ap.add_argument(
        "--round-interval",
        type=float,
        default=0.1,
        help="least virtual seconds between rounds (default 0.1)",
    )
    ap.add_argument(
        "--round-cost",
        type=float,
        default=0.001,
        help="virtual seconds charged per scheduling round (default 0.001: above every round's measured "
        "mean on this CPU, and fixed so results do not depend on the machine's load)",
    )
    ap.add_argument(
        "--route-cost",
        type=float,
        default=0.001,
        help="virtual seconds of routing charged per request to router-based policies (default 0.001)",
    )
    ap.add_argument(
        "--jobs",
        type=int,
        default=3,
        help="worker processes (default 3: one more than this machine's 2 cores, so a worker's idle moments "
        "are used)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument(
        "--only", help="comma-separated main cases to run (e.g. voting_mmlu_pro-llama); default all"
    )
    ap.add_argument(
        "--ablations-only",
        action="store_true",
        help="run only the ablations (beam widths take the main grid from an earlier run's summaries on disk)",
    )
    ap.add_argument(
        "--collect",
        action="store_true",
        help="build paper.json/paper.md from the summaries a run (or several) left under OUT/paper/ "
        "without running anything; tasks that did not finish are listed",
    )
    ap.add_argument(
        "--render",
        type=Path,
        help="only re-render paper.md from an existing paper.json (the router tables are re-read from "
        "their files and stored back into it)",
    )
    ap.add_argument(
        "--since",
        type=float,
        default=0.0,
        help="--collect: ignore summaries older than this Unix time",
    )
    ap.add_argument(
        "--wall",
        type=float,
        default=float("nan"),
        help="--collect: the runs' wall time to report (s)",
    )
    ap.add_argument(
        "--speed",
        action="store_true",
        help="only measure the simulator speed on the headline case (printed as JSON; paper.md untouched)",
    )
    ap.add_argument(
        "--with-speed", action="store_true", help="also measure the simulator speed into paper.md"
    )
    args = ap.parse_args(argv)
    if args.render:
        results = json.loads(args.render.read_text())
        results["routers"] = router_facts()
        args.render.write_text(json.dumps(results, indent=1, default=str) + "\n")
        (args.out / "paper.md").write_text(render(results))
        print(f"wrote {args.out / 'paper.md'}")
        return 0
    if args.jobs < 1 or args.min_rates < 2 or args.coarse_rates < 2 or args.duration <= 0:
        print(
            "error: --jobs >= 1, --coarse-rates and --min-rates >= 2, --duration > 0",
            file=sys.stderr,
        )
        return 2
    plots = args.out / "paper"
    plots.mkdir(parents=True, exist_ok=True)
    if args.quick:
        print(f"*** {SMOKE} ***", flush=True)
        st = Settings(
            duration_s=20.0,
            warmup_s=10.0,
            coarse_rates=3,
            per_knee=1,
            min_rates=4,
            ablation_coarse_rates=3,
            ablation_min_rates=3,
            round_interval_s=args.round_interval,
            round_cost_s=args.round_cost,
            route_cost_s=args.route_cost,
            seed=args.seed,
            datasets=str(args.datasets or ""),
            plots=str(plots),
            opt_rounds=8,
            opt_max_items=6,
        )
    else:
        st = Settings(
            duration_s=args.duration,
            warmup_s=args.warmup if args.warmup is not None else args.duration / 2,
            horizon_factor=args.horizon_factor,
            coarse_rates=args.coarse_rates,
            per_knee=args.per_knee,
            min_rates=args.min_rates,
            round_interval_s=args.round_interval,
            round_cost_s=args.round_cost,
            route_cost_s=args.route_cost,
            seed=args.seed,
            datasets=str(args.datasets or ""),
            plots=str(plots),
        )
    if args.speed:
        _jax_setup()
        from aragog_jax.sim import auto_rates, load_setup

        top = auto_rates(
            load_setup(
                "self_refine_humaneval",
                "qwen",
                gpus=8,
                dataset=_ds(st, "self_refine_humaneval", "qwen"),
            ),
            st.coarse_rates,
        )[-1]
        print(json.dumps(task_speed(st, top), indent=1))
        return 0

    t_start = time.perf_counter()
    workflows = ("self_refine_humaneval",) if args.quick else WORKFLOWS
    if args.collect:
        return collect_from_disk(args, st, workflows)
    phase1 = [
        ("main", f"{wf}-{fam}", {"st": st, "wf": wf, "fam": fam})
        for fam in FAMILIES
        for wf in workflows
    ]
    if args.only:
        phase1 = [t for t in phase1 if t[1] in set(args.only.split(","))]
    if args.ablations_only:
        phase1 = []
    if not args.no_ablations:
        abl = []
        for wf in BEAM_WORKFLOWS[1:] if args.quick else BEAM_WORKFLOWS:
            abl.append((f"4gpu-{wf}-qwen", {"wf": wf, "fam": "qwen", "gpus": 4}))
        for wf in ("text_to_sql_bird",) if args.quick else WORKFLOWS:
            abl.append((f"constrained-{wf}-qwen", {"wf": wf, "fam": "qwen", "constrained": True}))
        for wf in ("self_refine_humaneval",) if args.quick else WORKFLOWS:
            if (_ds(st, wf, "mixed") / "meta.json").is_file():
                abl.append((f"mixed-{wf}", {"wf": wf, "fam": "mixed"}))
        phase1 += [("ablation", k, {"st": st, "key": k, **kw}) for k, kw in abl]
    results: dict = {"main": {}, "ablations": {}, "beam": {}, "optimality": {}, "task_wall_s": {}}

    def collect(done) -> None:
        name, key, res, wall = done
        results["task_wall_s"][key] = wall
        if name == "main":
            results["main"][key] = res
        elif name == "ablation":
            results["beam" if key.startswith("beam") else "ablations"][key] = res
        elif name == "optimality":
            results["optimality"][key.removeprefix("opt-")] = res
        else:
            results["speed"] = res
        print(f"[{time.perf_counter() - t_start:7.1f}s] {key}: {wall:.1f}s", flush=True)

    def run_all(specs: list) -> None:
        if args.jobs == 1:
            _jax_setup()
            for spec in specs:
                collect(_run_task(spec))
            return
        with ProcessPoolExecutor(
            max_workers=args.jobs,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_jax_setup,
        ) as pool:
            futures = [pool.submit(_run_task, spec) for spec in specs]  # longest (main cases) first
            for fut in as_completed(futures):
                collect(fut.result())  # the first failure stops the run

    run_all(phase1)
    phase2 = []
    head = "self_refine_humaneval-qwen"
    if not args.no_ablations:
        for wf, fam in BEAM_CASES:
            key = f"{wf}-{fam}"
            if key not in results["main"] and args.ablations_only:
                disk = plots / key / "equal_fleet" / "summary.json"
                if disk.is_file():
                    results["main"][key] = {"equal": json.loads(disk.read_text())}
            if key not in results["main"]:
                continue
            # Max throughput is reached at or above aragog's knee: the beam widths run
            # the main grid from aragog's highest sustained rate up.
            eq = results["main"][key]["equal"]
            knee = eq["policies"]["aragog"]["sustained_rate"]
            rates = tuple(r for r in eq["rates"] if not math.isfinite(knee) or r >= knee)
            for b in (1,) if args.quick else (1, 2, 8):
                phase2.append(
                    (
                        "ablation",
                        f"beam{b}-{key}",
                        {
                            "st": st,
                            "key": f"beam{b}-{key}",
                            "wf": wf,
                            "fam": fam,
                            "policies": ("aragog",),
                            "rates": rates,
                            "beam": b,
                        },
                    )
                )
            phase2.append(
                ("optimality", f"opt-{key}", {"st": st, "wf": wf, "fam": fam, "rate": rates[-1]})
            )
    if args.ablations_only:
        from aragog_jax.sim import auto_rates, load_setup

        for wf, fam in BEAM_CASES:
            if not any(k == f"opt-{wf}-{fam}" for _, k, _ in phase2):
                top = auto_rates(
                    load_setup(wf, fam, gpus=8, dataset=_ds(st, wf, fam)), st.coarse_rates
                )[-1]
                phase2.append(
                    (
                        "optimality",
                        f"opt-{wf}-{fam}",
                        {"st": st, "wf": wf, "fam": fam, "rate": top},
                    )
                )
        run_all(phase2)
        print(
            f"ablations done in {time.perf_counter() - t_start:.0f}s; build paper.md with --collect"
        )
        return 0
    if args.with_speed:
        phase2.append(
            ("speed", "speed", {"st": st, "rate": results["main"][head]["equal"]["rates"][-1]})
        )
    run_all(phase2)

    wall = time.perf_counter() - t_start
    write_report(args, st, results, plots, wall)
    print(f"wrote {args.out / 'paper.md'} in {wall:.0f}s")
    if args.quick:
        print(f"*** {SMOKE} ***")
    return 0


def write_report(args, st: Settings, results: dict, plots: Path, wall_s: float) -> None:
    """Stamp ``results`` (git SHA, wall time, machine, settings, world) and write paper.json,
    the plots and paper.md: one tail for a run and for --collect."""
    from aragog_jax._provenance import git_sha

    results["git_sha"] = git_sha()
    results["wall_s"] = wall_s
    results["machine"] = (
        f"{platform.machine()} {os.cpu_count()} CPUs, {platform.python_version()}, {args.jobs} worker processes"
    )
    results["settings"] = asdict(st)
    results["quick"] = args.quick
    results["world"] = world_provenance(results)
    results["routers"] = router_facts()
    (args.out / "paper.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    _plot_gains(results, plots)
    if results["optimality"]:
        _plot_optimality(results["optimality"], plots / "round_optimality.png")
    (args.out / "paper.md").write_text(render(results))


def collect_from_disk(args, st: Settings, workflows: tuple[str, ...]) -> int:
    """paper.json / paper.md from the summaries under OUT/paper/ (see --collect)."""
    plots = Path(st.plots)
    results: dict = {"main": {}, "ablations": {}, "beam": {}, "optimality": {}, "missing": []}
    for fam in FAMILIES:
        for wf in workflows:
            key = f"{wf}-{fam}"
            eq, ro = (
                plots / key / "equal_fleet" / "summary.json",
                plots / key / "routed_7gpu" / "summary.json",
            )
            if (
                eq.is_file()
                and ro.is_file()
                and eq.stat().st_mtime >= args.since
                and ro.stat().st_mtime >= args.since
            ):
                res = {"equal": json.loads(eq.read_text()), "routed": json.loads(ro.read_text())}
                res["paper"] = paper_accounting(res["equal"], res["routed"])
                results["main"][key] = res
            else:
                results["missing"].append(key)
    keys = [f"4gpu-{wf}-qwen" for wf in BEAM_WORKFLOWS] + [
        f"constrained-{wf}-qwen" for wf in WORKFLOWS
    ]
    keys += [f"mixed-{wf}" for wf in WORKFLOWS] + [
        f"beam{b}-{wf}-{fam}" for wf, fam in BEAM_CASES for b in (1, 2, 8)
    ]
    for key in keys:
        f = plots / key / "summary.json"
        if f.is_file() and f.stat().st_mtime >= args.since:
            results["beam" if key.startswith("beam") else "ablations"][key] = json.loads(
                f.read_text()
            )
        else:
            results["missing"].append(key)
    for wf, fam in BEAM_CASES:
        f = plots / f"opt-{wf}-{fam}" / "optimality.json"
        if f.is_file() and f.stat().st_mtime >= args.since:
            results["optimality"][f"{wf}-{fam}"] = json.loads(f.read_text())
        else:
            results["missing"].append(f"opt-{wf}-{fam}")
    write_report(args, st, results, plots, args.wall)
    print(f"wrote {args.out / 'paper.md'}; missing: {', '.join(results['missing']) or 'none'}")
    return 0


def world_provenance(results: dict) -> dict:
    """What the simulated world is made of: the profile kind of every model's engine, and
    the generator fields of the qwen datasets' meta.json."""
    from aragog_jax.sim._setup import DATASETS_DIR

    kinds = {}
    for r in results["main"].values():
        for e in r["equal"]["engines"]:
            kinds[e["model"]] = e["profile_kind"]
    metas = {}
    for wf in WORKFLOWS:
        m = DATASETS_DIR / wf / "qwen" / "meta.json"
        if m.is_file():
            meta = json.loads(m.read_text())
            metas[wf] = {
                k: meta[k] for k in ("generator", "version", "calibration", "source") if k in meta
            }
    return {"profile_kinds": kinds, "datasets": metas}


# --- plots ------------------------------------------------------------------------------


def plot_case(key: str, res: dict, path: Path) -> None:
    """Throughput-latency curves, all policies on one plot per accounting: P50 (solid) and
    P95 (dashed) against the offered rate, filled markers where the policy sustains it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from aragog_jax.sim._summary import sustains

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for ax, (acc, title) in zip(
        axes,
        (("paper", "paper accounting (router GPU charged)"), ("equal", "equal 8-GPU fleet")),
        strict=True,
    ):
        pols = res[acc]["policies"]
        for p, d in pols.items():
            pr = d["per_rate"]
            x = [r["rate"] for r in pr]
            line = ax.plot(x, [r["latency"]["p50"] for r in pr], label=f"{p}")[0]
            ax.plot(
                x, [r["latency"]["p95"] for r in pr], ls="--", color=line.get_color(), alpha=0.6
            )
            for r in pr:
                ax.plot(
                    r["rate"],
                    r["latency"]["p50"],
                    "o",
                    color=line.get_color(),
                    mfc=line.get_color() if sustains(r) else "none",
                    ms=4,
                )
        lat = res[acc]["comparison"].get("latency_at", {})
        for name, ls in (("common", ":"), ("aragog", "-.")):
            if lat.get(name):
                ax.axvline(
                    lat[name]["rate"],
                    color="grey",
                    ls=ls,
                    lw=0.8,
                    label=f"highest rate {'every policy' if name == 'common' else 'aragog'} sustains",
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("arrival rate (requests/s)")
        ax.set_title(f"{key}: {title}", fontsize=9)
        ax.legend(fontsize=6)
    axes[0].set_ylabel("latency (s): P50 solid, P95 dashed; hollow = not sustained")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_gains(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = list(results["main"])
    if not keys:
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, (base, rng, title) in zip(
        axes,
        [
            ("per_input", PAPER["thr_vs_per_input"], "max throughput gain vs per-input (%)"),
            (
                "per_workflow",
                PAPER["thr_vs_per_workflow"],
                "max throughput gain vs per-workflow (%)",
            ),
        ],
        strict=True,
    ):
        x = np.arange(len(keys))
        for off, acc, label in ((-0.2, "paper", "paper accounting"), (0.2, "equal", "equal fleet")):
            vals = [
                results["main"][k][acc]["comparison"]
                .get(f"aragog_vs_{base}", {})
                .get("max_throughput_gain_pct", float("nan"))
                for k in keys
            ]
            ax.bar(x + off, vals, width=0.4, label=label)
        ax.axhspan(rng[0], rng[1], color="g", alpha=0.15, label="paper range")
        ax.set_xticks(x)
        ax.set_xticklabels([k.replace("_", " ") for k in keys], rotation=70, fontsize=6)
        ax.set_title(title, fontsize=9)
        ax.axhline(0, color="k", lw=0.5)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "gains_vs_paper.png", dpi=110)
    plt.close(fig)


def _plot_optimality(opt: dict, path: Path) -> None:
    """The paper's Fig. 10 on captured rounds: CDF of U(beam B) / U(brute force)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(opt), figsize=(5 * len(opt), 3.8), squeeze=False)
    for ax, (key, o) in zip(axes[0], opt.items(), strict=True):
        for b, v in o["rules"][DEFAULT_RULE]["ratios"].items():
            if not v:
                continue
            x = np.sort(np.asarray(v))
            ax.step(
                x,
                np.arange(1, x.size + 1) / x.size,
                where="post",
                label=f"{'greedy (B=1)' if b == '1' else 'beam B=' + b}",
            )
        ax.set_xlabel("utility / brute-force optimum (per round)")
        ax.set_ylabel("share of rounds")
        ax.set_title(
            f"{key} at {o['rate']:g} req/s: {o['rounds_solved']} captured rounds, <= {o['max_items']} items",
            fontsize=8,
        )
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- rendering --------------------------------------------------------------------------


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:+.1f}%" if pct else f"{x:.2f}"


def _in(x: float | None, rng: tuple[float, float]) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    lo, hi = rng
    return "in" if lo <= x <= hi else ("above" if x > hi else "below")


def _cell(x: float | None, rng_name: str | None) -> str:
    if rng_name is None:
        return _fmt(x, True)
    where = _in(x, PAPER[rng_name])
    return _fmt(x, True) + ("" if where in ("in", "n/a") else f" ({where})")


def _gain(block: dict, base: str) -> float:
    return (
        block["comparison"]
        .get(f"aragog_vs_{base}", {})
        .get("max_throughput_gain_pct", float("nan"))
    )


def _rule(block: dict, rule: str) -> dict | None:
    """The summary of the policy that ran ``rule`` (CANDIDATE or PAPER_RULE) in ``block``."""
    return block["policies"].get(RULE_KEYS[rule])


def _rule_gain(block: dict) -> float:
    """Max throughput of the scarcity reservation against the paper's rule (%)."""
    from aragog_jax.sim._metrics import pct_change

    c, p = _rule(block, CANDIDATE), _rule(block, PAPER_RULE)
    if c is None or p is None:
        return float("nan")
    return pct_change(c["max_throughput"], p["max_throughput"])


def _thr(block: dict, p: str) -> str:
    d = block["policies"].get(p)
    return f"{d['max_throughput']:.1f}" if d else "-"


#: Main-table columns per accounting: (policy, GPUs it serves on in the paper accounting).
MAIN_COLUMNS = (
    ("aragog", 7),
    (OTHER_RULE, 7),
    ("aragog-oracle", 7),
    ("per_input", 8),
    ("per_input-router", 7),
    ("per_workflow", 8),
)


def main_table(results: dict, acc: str) -> list[str]:
    from aragog_jax.sim._metrics import pct_change

    names = " / ".join(f"{p} {g}" if acc == "paper" else p for p, g in MAIN_COLUMNS)
    L = [
        f"| case | max thr (req/s): {names} | gain vs per-input | vs per-input-router | vs per-workflow | "
        f"{CANDIDATE} vs {PAPER_RULE} | aragog-oracle vs per-input | accuracy drop (points) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, r in results["main"].items():
        b = r[acc]
        drop = b["comparison"].get("aragog_accuracy_drop_points", float("nan"))
        oracle = b["policies"].get("aragog-oracle")
        cells = [
            " / ".join(_thr(b, p) for p, _ in MAIN_COLUMNS),
            _cell(_gain(b, "per_input"), "thr_vs_per_input"),
            _cell(_gain(b, "per_input-router"), None),
            _cell(_gain(b, "per_workflow"), "thr_vs_per_workflow"),
            _cell(_rule_gain(b), None),
            _cell(
                pct_change(oracle["max_throughput"], b["policies"]["per_input"]["max_throughput"])
                if oracle
                else float("nan"),
                "thr_vs_per_input",
            ),
            f"{drop:.2f}" + ("" if 0 <= drop <= 2.0 or not math.isfinite(drop) else " (outside)"),
        ]
        L.append(f"| {key} | " + " | ".join(cells) + " |")
    return L


def _p95_at(d: dict | None, i: int | None, rate: float | None) -> float:
    """P95 of policy summary ``d`` at grid index ``i`` (nan unless it ran that rate)."""
    if d is None or i is None or i >= len(d["per_rate"]) or d["per_rate"][i]["rate"] != rate:
        return float("nan")
    return d["per_rate"][i]["latency"]["p95"]


def _rule_checks(b: dict, p: str) -> dict:
    """Issue 18's bar for policy ``p`` in one accounting block ``b``: max throughput vs
    aragog-paper's (the paper's rule) and the same-router per-input baseline's
    (per_input-router), P95 at p's highest sustained rate vs per-input's at that rate,
    and the accuracy drop. Every policy of a case ran the same rate grid."""
    from aragog_jax.sim._metrics import pct_change
    from aragog_jax.sim._summary import highest_sustained_index

    pols = b["policies"]
    d = pols[p]
    paper = _rule(b, PAPER_RULE)
    i = highest_sustained_index(d["per_rate"])
    out = {
        "thr": d["max_throughput"],
        "vs_paper": pct_change(d["max_throughput"], paper["max_throughput"])
        if paper
        else float("nan"),
        "vs_pi": pct_change(d["max_throughput"], pols["per_input"]["max_throughput"]),
        "vs_pir": pct_change(d["max_throughput"], pols["per_input-router"]["max_throughput"]),
        "index": i,
        "rate": None,
        "p95": float("nan"),
        "p95_pi": float("nan"),
        "drop": 100.0 * (d["c_max_accuracy"] - d["accuracy"]),
    }
    if i is not None:
        out["rate"] = d["per_rate"][i]["rate"]
        out["p95"] = d["per_rate"][i]["latency"]["p95"]
        out["p95_pi"] = _p95_at(pols["per_input"], i, out["rate"])
    out["ok"] = {
        "thr_paper": paper is not None and out["thr"] >= paper["max_throughput"],
        "thr_pir": out["thr"] >= pols["per_input-router"]["max_throughput"],
        "p95": math.isfinite(out["p95"]) and out["p95"] <= out["p95_pi"],
        "acc": out["drop"] <= 2.0,
    }
    out["all"] = all(out["ok"].values())
    return out


def _secs(x: float) -> str:
    return f"{x:.1f} s" if math.isfinite(x) else "n/a"


def _share(x: float) -> str:
    """A fraction as a whole percentage ('n/a' when undefined)."""
    return f"{100 * x:.0f}%" if math.isfinite(x) else "n/a"


def _yardstick_p95(b: dict, c: dict) -> dict:
    """P95 at aragog's highest sustained rate (``c``: ``_rule_checks`` of aragog in block
    ``b``) with the yardstick router's masks, for aragog-yardstick and per_input-yardstick,
    and the share of aragog's P95 gap to per-input that the yardstick's masks close."""
    pols = b["policies"]
    i, rate = c["index"], c["rate"]
    ys = _p95_at(pols.get("aragog-yardstick"), i, rate)
    gap = c["p95"] - c["p95_pi"]
    return {
        "aragog": ys,
        "per_input": _p95_at(pols.get("per_input-yardstick"), i, rate),
        "closed": (c["p95"] - ys) / gap if gap > 0 and math.isfinite(ys) else float("nan"),
        "meets": math.isfinite(ys) and ys <= c["p95_pi"],
    }


def _miss_reasons(r: dict, acc: str, c: dict) -> str:
    """The measured reason for every bar the default misses in one row (``c``:
    ``_rule_checks`` of aragog): the same figures for aragog-oracle (exact masks, same
    fleet), aragog-yardstick (the best calibrated router's masks, same fleet) and
    per_input-router / per_input-yardstick (the same masks, no load awareness)."""
    from aragog_jax.sim._metrics import pct_change

    b = r[acc]
    pols = b["policies"]
    ora = pols.get("aragog-oracle")
    pir = pols["per_input-router"]
    out = []
    if not c["ok"]["thr_pir"] or not c["ok"]["thr_paper"]:
        if ora:
            out.append(
                f"throughput: with exact masks (aragog-oracle) {ora['max_throughput']:.1f} req/s = "
                f"{_fmt(pct_change(ora['max_throughput'], pir['max_throughput']), True)} vs per-input-router, so "
                + (
                    "the router's masks cost it"
                    if ora["max_throughput"] >= pir["max_throughput"]
                    else "even exact masks do not reach it: capacity, not the router"
                )
            )
    if not c["ok"]["p95"]:
        if c["index"] is None:
            out.append("P95: aragog sustains no rate of the grid")
        else:
            i, rate = c["index"], c["rate"]
            engines = r["routed"]["engines"] if acc == "paper" else r["equal"]["engines"]

            def share(d: dict | None, eng: list[dict]) -> str:
                if d is None or _p95_at(d, i, rate) != _p95_at(d, i, rate):
                    return "n/a"
                return f"{100 * _largest_engine_share(d['per_rate'][i], eng):.0f}%"

            o95 = _p95_at(ora, i, rate)
            y = _yardstick_p95(b, c)
            gap = c["p95"] - c["p95_pi"]
            if not math.isfinite(o95):
                verdict = "no exact-mask run on this fleet"
            elif o95 <= c["p95_pi"]:
                verdict = f"with exact masks aragog meets it ({_secs(o95)}): the router's masks are the reason"
            else:
                verdict = (
                    f"with exact masks aragog misses it too ({_secs(o95)}); the router's masks account for "
                    f"{100 * (c['p95'] - o95) / gap:.0f}% of the gap"
                )
            if "aragog-yardstick" not in pols:
                yverdict = ""
            else:
                yverdict = (
                    f"; with the yardstick's calibrated masks (the best router meeting the same guarantee) "
                    f"aragog {'meets' if y['meets'] else 'misses'} it ({_secs(y['aragog'])}, "
                    f"{_share(y['closed'])} of the gap closed; per-input-yardstick {_secs(y['per_input'])})"
                )
            out.append(
                f"P95 at {rate:g} req/s: {verdict}{yverdict} (per-input-router, the same masks without load "
                f"awareness: {_secs(_p95_at(pir, i, rate))}; output-token share on the largest model: aragog "
                f"{share(pols['aragog'], engines)}, aragog-yardstick {share(pols.get('aragog-yardstick'), engines)}, "
                f"aragog-oracle {share(ora, engines)}, per-input {share(pols['per_input'], r['equal']['engines'])})"
            )
    if not c["ok"]["acc"]:
        odrop = 100.0 * (ora["c_max_accuracy"] - ora["accuracy"]) if ora else float("nan")
        out.append(
            f"accuracy: drop {c['drop']:.2f} points with the router's masks, {odrop:.2f} with exact ones"
        )
    return "; ".join(out) or "-"


def done_when_table(results: dict) -> list[str]:
    """Issue 18's done-when bar for the default policy ``aragog``, case by case, both
    accountings, with the measured reason for every miss."""
    rows = [(key, acc, r) for acc in ("paper", "equal") for key, r in results["main"].items()]
    if not rows:
        return []
    L = [
        "## Issue 18's bar for the default policy",
        "",
        f"The default policy `aragog` runs the {RULE_NAMES[DEFAULT_RULE]} "
        f"(`aragog_jax.scheduler.SCARCITY_DEFAULT = {SCARCITY_DEFAULT}`), so `aragog` and `{DEFAULT_RULE}` are "
        f"the same policy here and `{OTHER_RULE}` runs beside it"
        + (
            f" (the bar's 'max throughput >= {PAPER_RULE}' holds by construction)."
            if not SCARCITY_DEFAULT
            else "."
        )
        + " Bars per case and accounting: max throughput >= aragog-paper's and >= the same-router per-input "
        "baseline's (per_input-router); P95 at aragog's highest sustained rate <= per-input's at that rate; "
        "accuracy within 2 points of c_max. A check mark says the bar holds; the last column gives the measured "
        "reason for each miss: the same figures with exact masks (aragog-oracle, on the same fleet as aragog), "
        "with the yardstick router's calibrated masks (aragog-yardstick: the router that knows each input's latent "
        "difficulty and role, calibrated with the same procedure, epsilon, confidence and guarantee on the same "
        "split as the shipped router; `bench/_yardstick.py`), and for per-input with the router's and the "
        "yardstick's masks.",
        "",
        "| case | accounting | max thr (req/s) | vs aragog-paper | vs per-input-router | highest sustained rate | "
        "P95 there: aragog / per-input (s) | accuracy drop (points) | measured reason for a miss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def mark(flag: bool) -> str:
        return " ✓" if flag else " ✗"

    met = 0
    for key, acc, r in rows:
        c = _rule_checks(r[acc], "aragog")
        met += c["all"]
        rate = f"{c['rate']:g}" if c["rate"] is not None else "none"
        L.append(
            f"| {key} | {'paper (7 vs 8 GPUs)' if acc == 'paper' else 'equal 8 GPUs'} | {c['thr']:.1f} | "
            f"{_fmt(c['vs_paper'], True)}{mark(c['ok']['thr_paper'])} | {_fmt(c['vs_pir'], True)}"
            f"{mark(c['ok']['thr_pir'])} | {rate} | {c['p95']:.1f} / {c['p95_pi']:.1f}{mark(c['ok']['p95'])} | "
            f"{c['drop']:.2f}{mark(c['ok']['acc'])} | {_miss_reasons(r, acc, c) if not c['all'] else '-'} |"
        )
    misses = {
        k: sum(not _rule_checks(r[acc], "aragog")["ok"][k] for _, acc, r in rows)
        for k in ("thr_paper", "thr_pir", "p95", "acc")
    }
    L += [
        "",
        f"Rows meeting every bar: **{met} of {len(rows)}**. Misses: max throughput vs aragog-paper "
        f"{misses['thr_paper']}, vs per-input-router {misses['thr_pir']}, P95 vs per-input {misses['p95']}, "
        f"accuracy {misses['acc']}.",
        "",
    ]
    closed = []
    for key, acc, r in rows:
        c = _rule_checks(r[acc], "aragog")
        if c["ok"]["p95"] or c["index"] is None or "aragog-yardstick" not in r[acc]["policies"]:
            continue
        y = _yardstick_p95(r[acc], c)
        closed.append(
            f"{key} {'paper' if acc == 'paper' else 'equal'} {_share(y['closed'])} "
            f"({c['p95']:.1f} → {y['aragog']:.1f} s vs per-input {c['p95_pi']:.1f} s"
            + (", meets it)" if y["meets"] else ")")
        )
    if closed:
        met_y = sum(x.endswith("meets it)") for x in closed)
        L += [
            "Share of the P95 gap (aragog's P95 minus per-input's, at aragog's highest sustained rate) that the "
            f"yardstick router's masks close, per missed row (aragog-yardstick meets the bar in {met_y} of "
            f"{len(closed)}): " + "; ".join(closed) + ".",
            "",
        ]
    return L


def p95_gap_table(results: dict) -> list[str]:
    """Every row where aragog's P95 misses per-input's, its gap split three ways by masks
    on the same fleet and rate: what the scheduler adds with exact masks (aragog-oracle
    minus per-input), what a calibrated guarantee on this data costs even the best router
    (aragog-yardstick minus aragog-oracle), and what our router adds to that (aragog minus
    aragog-yardstick); then the verdict the issue asks for."""
    rows = []
    for acc in ("paper", "equal"):
        for key, r in results["main"].items():
            b = r[acc]
            c = _rule_checks(b, "aragog")
            if c["ok"]["p95"] or c["index"] is None or "aragog-yardstick" not in b["policies"]:
                continue
            i, rate, pols = c["index"], c["rate"], b["policies"]
            engines = r["routed"]["engines"] if acc == "paper" else r["equal"]["engines"]

            def big(p: str, eng: list[dict] = engines, i: int = i, pols: dict = pols) -> str:
                d = pols.get(p)
                return f"{100 * _largest_engine_share(d['per_rate'][i], eng):.0f}%" if d else "n/a"

            def only_cmax(p: str, pols: dict = pols) -> float:
                counts = ((pols.get(p) or {}).get("admitted") or {}).get("counts")
                return sum(n == 1 for n in counts) / len(counts) if counts else float("nan")

            rows.append(
                {
                    "key": key,
                    "acc": acc,
                    "rate": rate,
                    "pi": c["p95_pi"],
                    "oracle": _p95_at(pols.get("aragog-oracle"), i, rate),
                    "yard": _p95_at(pols["aragog-yardstick"], i, rate),
                    "pi_yard": _p95_at(pols.get("per_input-yardstick"), i, rate),
                    "router": c["p95"],
                    "shares": " / ".join(
                        [big("aragog"), big("aragog-yardstick"), big("aragog-oracle")]
                        + [big("per_input", r["equal"]["engines"])]
                    ),
                    "cmax": [only_cmax(p) for p in ("aragog", "aragog-yardstick", "aragog-oracle")],
                }
            )
    if not rows:
        return []
    L = [
        "### Where aragog's P95 gap to per-input comes from",
        "",
        "Rows of the bar table where aragog's P95 misses per-input's. At aragog's highest sustained rate, on aragog's "
        "fleet, the same scheduler on three sets of masks: exact (aragog-oracle), the yardstick router's calibrated "
        "masks (aragog-yardstick: the best router that meets the same guarantee, epsilon and confidence on this "
        "data) and the shipped router's (aragog). The gap (aragog minus per-input) splits into the scheduler's own "
        "share with exact masks (oracle minus per-input), the calibrated guarantee's price on this data, which no "
        "router calibrated this way can avoid (yardstick minus oracle), and our router's share (aragog minus "
        "yardstick). The last column is the share of the test inputs whose admitted set is c_max alone (every "
        "stage on its model, the largest).",
        "",
        "| case | accounting | rate (req/s) | P95 (s): per-input / aragog-oracle / aragog-yardstick / aragog "
        "| per-input-yardstick P95 (s) | gap (s) | scheduler, exact masks | guarantee's price | our router "
        "| output tokens on the largest model: aragog / -yardstick / -oracle / per-input "
        "| inputs admitted c_max only: aragog / -yardstick / -oracle |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    fracs, price, twin = [], [], []
    for x in rows:
        gap = x["router"] - x["pi"]
        parts = (x["oracle"] - x["pi"], x["yard"] - x["oracle"], x["router"] - x["yard"])
        fracs.append([p / gap for p in parts])
        price.append(x["yard"] > x["pi"])
        twin.append(x["pi_yard"] > x["pi"])
        L.append(
            f"| {x['key']} | {'paper (7 vs 8 GPUs)' if x['acc'] == 'paper' else 'equal 8 GPUs'} | {x['rate']:g} | "
            f"{x['pi']:.1f} / {x['oracle']:.1f} / {x['yard']:.1f} / {x['router']:.1f} | {x['pi_yard']:.1f} | "
            f"{gap:.1f} | "
            + " | ".join(_share(p / gap) for p in parts)
            + f" | {x['shares']} | {' / '.join(_share(v) for v in x['cmax'])} |"
        )
    n, miss = len(rows), sum(price)

    def between(v: list[float]) -> str:
        v = [x for x in v if math.isfinite(x)]
        if not v:
            return "n/a"
        lo, hi = _share(min(v)), _share(max(v))
        return lo if lo == hi else f"{lo} to {hi}"

    def rng(j: int) -> str:
        return between([f[j] for f in fracs])

    def span(j: int) -> str:
        return between([x["cmax"][j] for x in rows])

    split = (
        f"Of the gap, the calibrated guarantee's price (yardstick minus oracle) is {rng(1)}, our router's share "
        f"(aragog minus yardstick) {rng(2)} and the scheduler's own with exact masks {rng(0)}."
    )
    mechanism = (
        "To keep 'some admitted configuration is inaccurate' within epsilon, a calibrated router admits c_max "
        f"alone for the inputs whose cheaper configurations it cannot bound ({span(1)} of the test inputs with "
        f"the yardstick's masks, {span(0)} with ours, {span(2)} with exact masks); every stage of those requests "
        "runs on the largest model, the fleet's scarce engine. Per-input with the yardstick's masks (the cheapest "
        f"admitted configuration, no load awareness) misses per-input's P95 too in {sum(twin)} of {n} rows: the "
        "tail comes with the masks, not with the scheduler."
    )
    if miss == n:
        verdict = (
            f"**With the yardstick's masks aragog still misses per-input's P95 in all {n} rows**: no router "
            "calibrated with this procedure at this epsilon and confidence closes it; it is the guarantee's price "
            f"on a scarce fleet. {split} {mechanism} Next step: a calibration that spends the epsilon budget "
            "preferring configurations off the scarce model (e.g. admit configurations in order of their load on "
            "the scarce engine, so that the hard inputs keep a bounded configuration that runs its cheap stages "
            "elsewhere) instead of one common threshold over all of them."
        )
    elif miss == 0:
        verdict = (
            f"**With the yardstick's masks aragog meets per-input's P95 in all {n} rows**: our router is the gap. "
            f"{split}"
        )
    else:
        verdict = (
            f"**With the yardstick's masks aragog meets per-input's P95 in {n - miss} of {n} rows and misses it in "
            f"{miss}**: where it meets it our router is the gap, elsewhere the calibrated guarantee's price "
            f"remains. {split} {mechanism}"
        )
    return L + ["", verdict, ""]


def scarcity_table(results: dict) -> list[str]:
    """The scarcity reservation (CANDIDATE) beside the paper's rule (PAPER_RULE), case by
    case, both accountings, and the decision rule for ``SCARCITY_DEFAULT``."""
    from aragog_jax.sim._metrics import pct_change

    rows = [
        (key, acc, r[acc])
        for acc in ("paper", "equal")
        for key, r in results["main"].items()
        if _rule(r[acc], CANDIDATE) is not None and _rule(r[acc], PAPER_RULE) is not None
    ]
    if not rows:
        return []
    L = [
        f"## Scarcity reservation ({CANDIDATE}) vs the paper's rule ({PAPER_RULE})",
        "",
        f"The same bars for both rules (`aragog` is {DEFAULT_RULE} in this run). Decision rule for the default "
        f"(`SCARCITY_DEFAULT`): {CANDIDATE} becomes the default only if it wins on the calibrated world: max "
        f"throughput >= {PAPER_RULE}'s in every row, higher in at least one, and no row where {PAPER_RULE} meets "
        f"every bar and {CANDIDATE} does not. Cells: {CANDIDATE} / {PAPER_RULE}; a check mark says the bar holds.",
        "",
        "| case | accounting | max thr (req/s) | vs per-input-router | vs per-input | highest sustained rate | "
        f"P95 there vs per-input's (s) | accuracy drop (points) | {CANDIDATE} vs {PAPER_RULE} (thr) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    wins = {CANDIDATE: 0, PAPER_RULE: 0}
    ge = gt = lost_bar = 0
    for key, acc, b in rows:
        c = {p: _rule_checks(b, RULE_KEYS[p]) for p in (CANDIDATE, PAPER_RULE)}
        beats = c[CANDIDATE]["thr"] >= c[PAPER_RULE]["thr"]
        ge += beats
        gt += c[CANDIDATE]["thr"] > c[PAPER_RULE]["thr"]
        lost_bar += c[PAPER_RULE]["all"] and not c[CANDIDATE]["all"]
        for p in c:
            wins[p] += c[p]["all"]

        def mark(flag: bool) -> str:
            return " ✓" if flag else ""

        def both(fn, c=c) -> str:
            return " / ".join(fn(c[p]) for p in (CANDIDATE, PAPER_RULE))

        L.append(
            f"| {key} | {'paper (7 vs 8 GPUs)' if acc == 'paper' else 'equal 8 GPUs'} | "
            + both(lambda x: f"{x['thr']:.1f}")
            + " | "
            + both(lambda x: _fmt(x["vs_pir"], True) + mark(x["ok"]["thr_pir"]))
            + " | "
            + both(lambda x: _fmt(x["vs_pi"], True))
            + " | "
            + both(lambda x: f"{x['rate']:g}" if x["rate"] is not None else "none")
            + " | "
            + both(lambda x: f"{x['p95']:.1f} vs {x['p95_pi']:.1f}" + mark(x["ok"]["p95"]))
            + " | "
            + both(lambda x: f"{x['drop']:.2f}" + mark(x["ok"]["acc"]))
            + f" | {_fmt(pct_change(c[CANDIDATE]['thr'], c[PAPER_RULE]['thr']), True)}"
            + mark(beats)
            + " |"
        )
    wins_rule = ge == len(rows) and gt > 0 and lost_bar == 0
    L += [
        "",
        f"Rows meeting every bar: {CANDIDATE} {wins[CANDIDATE]} of {len(rows)}, {PAPER_RULE} {wins[PAPER_RULE]} of "
        f"{len(rows)}. {CANDIDATE}'s max throughput >= {PAPER_RULE}'s in {ge} of {len(rows)} rows, higher in {gt}; "
        f"rows where only {PAPER_RULE} meets every bar: {lost_bar}. By the decision rule {CANDIDATE} "
        + ("**wins**" if wins_rule else "**does not win**")
        + f" (`SCARCITY_DEFAULT = {SCARCITY_DEFAULT}` in this run).",
        "",
    ]
    return L


ROUTER_FAMILIES = ("qwen", "llama", "mixed")
#: Share of the yardstick's flexibility issue 18 asks of the shipped routers.
YARDSTICK_TARGET = 0.85


def router_facts(root: Path = ROOT) -> dict:
    """The router table's figures, read (not recomputed) from the files that hold them:
    every shipped router's training report (``profiles/routers/<workflow>/<family>.report.json``:
    test split of its training draw), ``bench/results/router_yardstick.json`` (the yardstick
    on the same split) and the labelled-inputs part of ``bench/results/guarantee.json``.
    A yardstick row counts only when it measured the router shipped now: its flexibility
    kept equals the report's (same split) and its calibration used the same guarantee."""
    rdir = root / "profiles" / "routers"
    ypath = root / "bench" / "results" / "router_yardstick.json"
    gpath = root / "bench" / "results" / "guarantee.json"
    yard = json.loads(ypath.read_text()) if ypath.is_file() else {"rows": []}
    yrows = {(r["workflow"], r["family"]): r for r in yard["rows"]}
    pairs = []
    for wf in WORKFLOWS:
        for fam in ROUTER_FAMILIES:
            rp = rdir / wf / f"{fam}.report.json"
            if not rp.is_file():
                continue
            rep = json.loads(rp.read_text())
            t, cal = rep["test"], rep["calibration"]
            row = {
                "workflow": wf,
                "family": fam,
                "num_configs": rep["num_configs"],
                "guarantee": cal["guarantee"],
                "hidden": rep["model"]["hidden"],
                "flexibility_kept": t["flexibility_kept"],
                "delta_cheapest_points": t["delta_cheapest_points"],
                "delta_random_points": t["delta_random_points"],
                "any_inaccurate_rate": t.get("any_inaccurate_rate", float("nan")),
                "policy_bound": cal["policy_bound"],
                "report_git_sha": rep.get("git_sha", ""),
                "yardstick": None,
            }
            y = yrows.get((wf, fam))
            sh = (y or {}).get("routers", {}).get("shipped")
            if sh is not None:
                row["yardstick"] = {
                    "flexibility_kept": y["yardstick"]["flexibility_kept"],
                    "delta_cheapest_points": y["yardstick"]["delta_cheapest_points"],
                    "share": sh["share_of_yardstick"],
                    "routing_cpu_p50_ms": sh.get("routing_cpu_p50_ms", float("nan")),
                    "current": abs(sh["flexibility_kept"] - t["flexibility_kept"]) < 1e-9
                    and y["calibration"]["guarantee"] == cal["guarantee"],
                }
            pairs.append(row)
    sizes = json.loads(gpath.read_text()) if gpath.is_file() else {}
    return {
        "sources": {
            "reports": "profiles/routers/<workflow>/<family>.report.json",
            "yardstick": f"bench/results/router_yardstick.json (git {yard.get('git_sha', 'n/a')[:12]})",
            "sizes": f"bench/results/guarantee.json (git {sizes.get('git_sha', 'n/a')[:12]})",
        },
        "pairs": pairs,
        "sizes": sizes.get("sizes", {}),
    }


def router_tables(facts: dict | None) -> list[str]:
    """The router table (flexibility kept vs the oracle and the yardstick, all shipped
    pairs) and flexibility kept against the number of labelled inputs."""
    if not facts or not facts.get("pairs"):
        return []
    src = facts["sources"]
    L = [
        "## Routers: flexibility kept vs the oracle and the yardstick",
        "",
        "Read from files, not recomputed by this run: the shipped routers' training reports "
        f"(`{src['reports']}`, test split of each router's 60,000-input training draw, seed 1000; "
        "`scripts/train_routers.sh`) and the yardstick on the same split "
        f"(`{src['yardstick']}`; `python bench/router_yardstick.py`: the router that knows each input's "
        "latent difficulty and role exactly, calibrated with the same procedure, epsilon 0.02, confidence 0.95 "
        "and guarantee). *Flexibility kept* is the mean share of the truly accurate configurations admitted "
        "(the oracle keeps 100%). A yardstick cell reads 'stale' when that file measured another router than "
        "the one shipped now (different flexibility on the same split, or another guarantee).",
        "",
        "| workflow | family | C | guarantee | router (of oracle) | yardstick (of oracle) | router, share of "
        "yardstick | Δacc cheapest / random admitted (pts) | some admitted inaccurate (test) | routing CPU p50 (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    shares = []
    for p in facts["pairs"]:
        y = p["yardstick"]
        if y is None:
            ycells = "n/a | n/a"
            p50 = "n/a"
        elif not y["current"]:
            ycells = "stale | stale"
            p50 = "n/a"
        else:
            shares.append(y["share"])
            ycells = f"{100 * y['flexibility_kept']:.1f}% | **{100 * y['share']:.1f}%**"
            p50 = f"{y['routing_cpu_p50_ms']:.3f}"
        L.append(
            f"| {p['workflow']} | {p['family']} | {p['num_configs']} | `{p['guarantee']}` | "
            f"{100 * p['flexibility_kept']:.1f}% | {ycells} | {p['delta_cheapest_points']:+.2f} / "
            f"{p['delta_random_points']:+.2f} | {100 * p['any_inaccurate_rate']:.2f}% | {p50} |"
        )
    n = len(facts["pairs"])
    hit = sum(s >= YARDSTICK_TARGET for s in shares)
    flex = [p["flexibility_kept"] for p in facts["pairs"]]
    L += [
        "",
        f"Pairs at >= {100 * YARDSTICK_TARGET:.0f}% of the yardstick: **{hit} of {n}** (issue 18's target: 12 of "
        f"15; {n - len(shares)} without a current yardstick row)"
        + (
            f"; shares {100 * min(shares):.1f}-{100 * max(shares):.1f}% (median "
            f"{100 * sorted(shares)[len(shares) // 2]:.1f}%)"
            if shares
            else ""
        )
        + f"; of the oracle {100 * min(flex):.1f}-{100 * max(flex):.1f}%. Routing CPU p50: one request "
        "(featurise one text + the compiled bucket-1 kernel), process CPU time on the shared machine.",
        "",
    ]
    rows = facts.get("sizes", {}).get("rows", [])
    if rows:
        variants = list(dict.fromkeys(r["variant"] for r in rows))
        desc = {
            v: next(
                f"`{r['guarantee']}`, {len(r['hidden'])}x{r['hidden'][0]}"
                for r in rows
                if r["variant"] == v
            )
            for v in variants
        }
        shipped = {(p["guarantee"], tuple(p["hidden"])) for p in facts["pairs"]}
        L += [
            "### Flexibility kept vs labelled inputs",
            "",
            f"From `{src['sizes']}` (`python bench/guarantee.py --parts sizes`): a router trained on 1k / 3k / 10k / "
            "60k labelled inputs of the same generator (seed 1000, splits 60/20/20), epsilon 0.02, confidence 0.95, "
            f"evaluated on {facts['sizes'].get('held_out_inputs', 'n/a')} fresh inputs; in brackets the share of "
            "them on which some admitted configuration is inaccurate. The shipped routers' recipe is "
            + ", ".join(f"`{g}` {len(h)}x{h[0]}" for g, h in sorted(shipped))
            + " at 60k.",
            "",
            "| workflow | family | labelled inputs | "
            + " | ".join(f"{v} ({desc[v]})" for v in variants)
            + " |",
            "|---|---|---|" + "---|" * len(variants),
        ]
        keys = list(dict.fromkeys((r["workflow"], r["family"], r["num_inputs"]) for r in rows))
        for wf, fam, num in keys:
            cells = []
            for v in variants:
                r = next(
                    (
                        r
                        for r in rows
                        if (r["workflow"], r["family"], r["num_inputs"], r["variant"])
                        == (wf, fam, num, v)
                    ),
                    None,
                )
                cells.append(
                    f"{100 * r['flexibility_kept']:.1f}% ({100 * r['any_inaccurate_rate']:.1f}%)"
                    if r
                    else "-"
                )
            L.append(f"| {wf} | {fam} | {num:,} | " + " | ".join(cells) + " |")
        L.append("")
    return L


def latency_table(results: dict, acc: str, at: str) -> list[str]:
    judge = at == "aragog"
    L = [
        "| case | rate (req/s) | aragog mean / P25 / P50 / P95 (s) | P50 vs per-input | vs per-input-router | "
        "vs per-workflow | P95 vs per-input | vs per-input-router | vs per-workflow | baselines sustaining it |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in results["main"].items():
        lat = r[acc]["comparison"].get("latency_at", {}).get(at)
        if not lat:
            L.append(f"| {key} | none | - | - | - | - | - | - | - | - |")
            continue
        a = lat["latency"]["aragog"]
        ch = lat["aragog_change_pct"]
        cells = []
        for q in ("p50", "p95"):
            for base in ("per_input", "per_input-router", "per_workflow"):
                rng = f"{q}_vs_{base}" if judge and base != "per_input-router" else None
                cells.append(_cell(ch.get(base, {}).get(q), rng))
        sus = ", ".join(p for p, ok in lat["sustained"].items() if ok and p != "aragog") or "none"
        L.append(
            f"| {key} | {lat['rate']:g} | {a['mean']:.1f} / {a['p25']:.1f} / {a['p50']:.1f} / {a['p95']:.1f} | "
            + " | ".join(cells)
            + f" | {sus} |"
        )
    return L


def ablation_tables(results: dict) -> list[str]:
    from aragog_jax.sim._metrics import pct_change

    L = ["## Ablations (paper Table 1)", ""]
    main = results["main"]
    if results["beam"]:
        L += [
            "### Beam width (equal 8-GPU fleet, the main run's rates from aragog's knee up; B = 4 is the main run)",
            "",
            "| workflow | B=1 (greedy) | B=2 | B=4 | B=8 | gain vs per-input at B=1 / 2 / 4 / 8 |",
            "|---|---|---|---|---|---|",
        ]
        for wf, fam in BEAM_CASES:
            key = f"{wf}-{fam}"
            if key not in main:
                continue
            eq = main[key]["equal"]["policies"]
            thr = {4: eq["aragog"]["max_throughput"]}
            for b in (1, 2, 8):
                r = results["beam"].get(f"beam{b}-{key}")
                if r:
                    thr[b] = r["policies"]["aragog"]["max_throughput"]
            pi = eq["per_input"]["max_throughput"]
            cols = [f"{thr[b]:.1f}" if b in thr else "-" for b in (1, 2, 4, 8)]
            gains = " / ".join(
                _fmt(pct_change(thr[b], pi), True) if b in thr else "-" for b in (1, 2, 4, 8)
            )
            L.append(f"| {key} | " + " | ".join(cols) + f" | {gains} |")
        L.append("")
    groups = [
        ("4gpu-", "4 GPUs (Qwen2.5 7B TP1, 14B TP1, 32B TP2) vs the 8-GPU main run", True),
        (
            "constrained-",
            "Constrained space (critic = refiner, voters/solvers share one model, SQL refiner = "
            "SQL writer) vs the full space",
            True,
        ),
        ("mixed-", "Mixed family (Llama-3.1-8B x2, Phi-4, Qwen2.5-32B on 8 GPUs)", False),
    ]
    for prefix, title, has_ref in groups:
        rows = {k: v for k, v in results["ablations"].items() if k.startswith(prefix)}
        if not rows:
            continue
        L += [
            f"### {title}",
            "",
            "| case | configurations | max thr aragog / per-input / per-workflow | gain vs "
            "per-input | vs per-workflow | "
            "main run (qwen, full space, 8 GPUs): gain vs per-input / per-workflow |",
            "|---|---|---|---|---|---|",
        ]
        for key, r in rows.items():
            ref = main.get(key[len(prefix) :]) if has_ref else None
            refc = (
                f"{_fmt(_gain(ref['equal'], 'per_input'), True)} / {_fmt(_gain(ref['equal'], 'per_workflow'), True)}"
                if ref
                else "-"
            )
            L.append(
                f"| {key} | {r['num_configs']} | {_thr(r, 'aragog')} / {_thr(r, 'per_input')} / "
                f"{_thr(r, 'per_workflow')} | "
                f"{_cell(_gain(r, 'per_input'), 'thr_vs_per_input')} | "
                f"{_cell(_gain(r, 'per_workflow'), 'thr_vs_per_workflow')} | "
                f"{refc} |"
            )
        L.append("")
    if results["optimality"]:
        L += [
            "### Per-round optimality on captured rounds (the paper's Fig. 10)",
            "",
            "Aragog (B = 4, the default rule) runs at the case's highest rate and every round's kernel inputs are "
            "recorded; an evenly spaced sample is trimmed to its FIFO prefix of whole requests with at most the "
            "number of items below (the exhaustive search is exponential in the items) and solved under each rule "
            "by beam widths 1, 2, 4, 8 and by brute force over that rule's search space. Ratio = utility U of the "
            "beam's assignment / U of the optimum (rounds whose optimum is 0 are skipped); a round is *contested* "
            "when its search space has more than one complete assignment, the only rounds where the width can "
            "matter. Cells: mean ratio (min, share of rounds at the optimum).",
            "",
            "| case | rate | rule | rounds captured / solved / contested | items per round (full / trimmed) | "
            "plans changed by the reservation (B=4) | greedy | B=2 | B=4 | B=8 |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for key, o in results["optimality"].items():
            for rule, ro in o.get("rules", {}).items():
                cells = [
                    f"{ro[f'contested_beam{b}']['mean']:.4f} ({ro[f'contested_beam{b}']['min']:.3f}, "
                    f"{100 * ro[f'contested_beam{b}']['optimal_share']:.0f}%)"
                    for b in (1, 2, 4, 8)
                ]
                L.append(
                    f"| {key} | {o['rate']:g} | {rule} | {o['rounds_captured']} / {o['rounds_solved']} / "
                    f"{ro['contested']} (every {o['every']}th; {ro['zero_optimum']} with optimum 0) | "
                    f"{o['items_full_mean']:.0f} / {o['items_kept_mean']:.1f} (<= {o['max_items']}) | "
                    f"{o['reservation_changed']} | " + " | ".join(cells) + " |"
                )
        L += ["", "![per-round optimality](paper/round_optimality.png)", ""]
    L += [
        "The paper's embedding-model router ablation (BERT-style encoders instead of the MLP over hashed n-grams) "
        "cannot run here: it needs real embedding models, which this CPU-only project does not ship.",
        "",
    ]
    return L


def detail_table(results: dict) -> list[str]:
    L = [
        "### Detail per case",
        "",
        "| case | fleet | policy | max thr | highest sustained rate | P50 / P95 at the top rate "
        "(s) | accuracy (c_max) | "
        "sched ms/round | mean admitted |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in results["main"].items():
        for arm, pols in (("8 GPUs", r["equal"]["policies"]), ("7 GPUs", r["routed"]["policies"])):
            for p, d in pols.items():
                top = d["per_rate"][-1]
                adm = d.get("admitted") or {}
                cen = (
                    f" (censored {top['latency_censored']})" if top.get("latency_censored") else ""
                )
                L.append(
                    f"| {key} | {arm} | {p} | {d['max_throughput']:.1f} | {_fmt(d.get('sustained_rate'))} | "
                    f"{top['latency']['p50']:.1f} / {top['latency']['p95']:.1f}{cen} | {d['accuracy']:.3f} "
                    f"({d['c_max_accuracy']:.3f}) | {d['scheduler_ms_per_round']:.2f} | "
                    f"{adm.get('mean', float('nan')):.1f} of {r['equal']['num_configs']} |"
                )
    return L


def render(results: dict) -> str:
    s = results["settings"]
    L = ["# Aragog paper reproduction in the simulator", ""]
    if results.get("quick"):
        L += [
            f"**{SMOKE}.** Short runs, few rates and one workflow; use the full run for any comparison.",
            "",
        ]
    if results.get("missing"):
        L += [
            f"**Incomplete run:** these tasks did not finish within the time budget and are absent below: "
            f"{', '.join(results['missing'])}.",
            "",
        ]
    world = results.get("world", {})
    kinds = sorted(set(world.get("profile_kinds", {}).values()))
    L.append(
        f"Generated by `python bench/paper.py{' --quick' if results.get('quick') else ''}` at git "
        f"`{results['git_sha'][:12]}` on {results['machine']}; total wall time **{results['wall_s'] / 60:.1f} min** "
        "(the machine was shared with other jobs). Every number comes from the discrete-event "
        "simulator driving the real "
        "scheduler (`aragog_jax.scheduler.Scheduler`) on engines built from the engine profiles "
        f"(`profiles/engines/`, kinds: {', '.join(kinds) or 'n/a'}; see `profiles/README.md`) and "
        "the synthetic accuracy "
        "datasets (`profiles/datasets/`, see its README). Nothing was tuned to hit the paper's figures."
    )
    L.append("")
    L.append(
        f"Settings: Poisson arrivals for {s['duration_s']:g} s per run, each run stopped at "
        f"{s.get('horizon_factor', 2.0) * s['duration_s']:g} s (requests still running then count "
        "with their latency so "
        "far, a lower bound: `censored`); throughput = stage completions per second in "
        f"[{s['warmup_s']:g} s, {s['duration_s']:g} s] (the warm-up while the pipeline fills is "
        "excluded) divided by the "
        "stages per request; a policy *sustains* a rate when that throughput is >= 90% of the arrivals in the same "
        f"window. Rates (main cases): a coarse geometric pass of {s['coarse_rates']} rates (from "
        "half of what the largest engine "
        "alone sustains to 1.1 x the fleet's upper bound with every engine saturated), then "
        f"{s['per_knee']} rate(s) inside every policy's knee bracket (last sustained rate, next rate; the two "
        "diagnostic yardstick arms place none), at least "
        f"{s['min_rates']} in all; every policy of a case (both fleets) runs at every rate of the "
        "grid. Ablations report "
        f"max throughput only and use {s.get('ablation_coarse_rates', s['coarse_rates'])} coarse rates, at least "
        f"{s.get('ablation_min_rates', s['min_rates'])} in all; the beam widths run the main grid "
        "from aragog's highest "
        "sustained rate up (where max throughput is reached). Rounds at least "
        f"{s['round_interval_s'] * 1e3:g} ms of virtual time apart; each round is charged "
        f"{s['round_cost_s'] * 1e3:g} ms "
        "(a round's measured mean was 0.2-0.9 ms on this CPU when it was quiet; `sched ms/round` below is what it "
        "measured during this run, inflated by the other jobs on the machine; a fixed charge keeps results independent "
        "of the machine's load and bit-reproducible) and every request of a router-based policy "
        f"{s['route_cost_s'] * 1e3:g} "
        "ms of routing, a pure delay before the request joins the meta-queue (one request's routing with a shipped "
        "router, featurising included, measured 0.17-0.26 ms of wall time p50 on a quiet machine, "
        "`bench/results/router_yardstick.json`; the 6x512 kernel "
        "alone 0.10 ms on a quiet one, `bench/results/router.json`). The charge moves latency by itself only: at "
        "the bar's rate on voting_mmlu_pro-llama (7 GPUs) a charge of 1 ms, the measured 0.78 ms and 0.2 ms gave "
        "aragog's P95 12.4745, 12.4743 and 12.4737 s and the same throughput (`python -m aragog_jax.simulate "
        "--workflow voting_mmlu_pro --family llama --fleet profiles/fleets/llama_7gpu.toml --policies aragog "
        "--rates 3.923 --duration 30 --horizon 45 --warmup 15 --round-interval 0.1 --round-cost 0.001 "
        "--route-cost 0.001|measured|0.0002`). `max` throughput is the highest over the grid."
    )
    L += [
        "",
        "## Main results, paper accounting",
        "",
        "The paper's rule: Aragog serves on 7 GPUs and its router takes the 8th "
        "(`profiles/fleets/<family>_7gpu.toml`); the baselines need no router and get the 8th GPU as one more replica "
        "of the family's smallest model (`<family>_8gpu.toml`: a second Qwen2.5-7B, a second Llama-3.2-3B). "
        "per_input-router runs the same router and is charged the same GPU (7 GPUs).",
        "",
    ]
    L += main_table(results, "paper")
    L += [
        "",
        "## Main results, equal fleet",
        "",
        "Every policy on the same 8 serving GPUs (the router is not charged a GPU).",
        "",
    ]
    L += main_table(results, "equal")
    L += [""] + done_when_table(results) + p95_gap_table(results) + scarcity_table(results)
    L += router_tables(results.get("routers"))
    L += [
        "",
        "Paper ranges: throughput +42.8..+76.3% vs per-input, +78.1..+217% vs per-workflow; median latency "
        "-32.5..-71.1% / -60..-86.1%; P95 -46.2..-76.2% / -63.2..-89%; accuracy within 2 points of c_max. A cell says "
        "(above)/(below) when it falls outside; the paper has no per-input-router baseline, so "
        "those cells are not judged.",
        "",
        "![gains vs paper](paper/gains_vs_paper.png)",
        "",
    ]
    for acc, title in (("paper", "paper accounting"), ("equal", "equal fleet")):
        L += [
            f"## Latency, {title}",
            "",
            "At the highest rate Aragog sustains (the baselines may be overloaded there: the paper's 'peak request "
            "rates'; judged against the paper's ranges):",
            "",
        ]
        L += latency_table(results, acc, "aragog")
        L += [
            "",
            "At the highest rate every policy sustains (light load for the strongest policies; not judged):",
            "",
        ]
        L += latency_table(results, acc, "common")
        L.append("")
    L += [
        "Throughput-latency curves with every policy on one plot per case (both accountings side by side) are "
        "`bench/results/paper/<case>/throughput_latency.png`; the equal-fleet sweep's own plots and `summary.json` are "
        "in `<case>/equal_fleet/`, the 7-GPU arm's `summary.json` in `<case>/routed_7gpu/`.",
        "",
    ]
    L += detail_table(results)
    L.append("")
    if results["ablations"] or results["beam"] or results["optimality"]:
        L += ablation_tables(results)
    L += ["## Simulator speed", ""]
    L += (
        render_speed(results["speed"])
        if results.get("speed")
        else ["Not measured in this run (`python bench/paper.py --speed`, or `--with-speed`)."]
    )
    L.append("")
    L += outside_ranges(results)
    return "\n".join(L) + "\n"


def _largest_engine_share(run: dict, engines: list[dict]) -> float:
    """Share of output tokens a run put on the fleet's largest model."""
    big = max(engines, key=lambda e: e["gpus"])["model"]
    names = {e["name"] for e in engines if e["model"] == big}
    tok = run.get("engine_tokens", {})
    total = sum(tok.values())
    return sum(v for k, v in tok.items() if k in names) / total if total else float("nan")


def outside_ranges(results: dict) -> list[str]:
    """Every case outside the paper's ranges with the measured reason, then findings vs defects."""
    from aragog_jax.sim._metrics import pct_change

    L = ["## Outside the paper's ranges: measured reasons, findings and defects", ""]
    counts = {"paper": 0, "equal": 0}
    for acc, title in (("paper", "paper accounting"), ("equal", "equal fleet")):
        L += [f"### {title}", ""]
        for key, r in results["main"].items():
            b = r[acc]
            eq = r["equal"]
            pols = b["policies"]
            bound = (
                b["fleet_request_rate_bound"]["routed"]
                if acc == "paper"
                else b.get("fleet_request_rate_bound")
            )
            if bound is None:
                bound = eq["fleet_request_rate_bound"]
            a_thr = pols["aragog"]["max_throughput"]
            pi_thr = pols["per_input"]["max_throughput"]
            g_pi = _gain(b, "per_input")
            where = _in(g_pi, PAPER["thr_vs_per_input"])
            if where not in ("in", "n/a"):
                counts[acc] += 1
                ceiling = pct_change(bound, pi_thr)
                oracle = pct_change(
                    eq["policies"]["aragog-oracle"]["max_throughput"],
                    eq["policies"]["per_input"]["max_throughput"],
                )
                router = pct_change(pols["per_input-router"]["max_throughput"], pi_thr)
                L.append(
                    f"- **{key}: throughput vs per-input {_fmt(g_pi, True)}** ({where} +42.8..+76.3%). Capacity: "
                    f"Aragog's fleet would serve at most {bound:.1f} req/s with every engine "
                    "saturated (decode and prefill "
                    f"at the requests' mean token counts), per-input already reaches {pi_thr:.1f}, "
                    "so no scheduler on it "
                    f"could gain more than {_fmt(ceiling, True)}; Aragog reaches {a_thr:.1f} "
                    f"({100 * a_thr / bound:.0f}% "
                    f"of that bound). Router: with oracle masks (aragog-oracle, equal fleet) the gain is "
                    f"{_fmt(oracle, True)}; per-input with the same router's masks has {_fmt(router, True)} throughput "
                    "against oracle per-input. The bound is computed at mean token counts, so a "
                    "policy can exceed it by "
                    f"a few percent. Experiments: the fleet bound (`fleet_request_rate_bound` in "
                    f"summary.json), the aragog-oracle and per_input-router sweeps."
                )
            g_pw = _gain(b, "per_workflow")
            where = _in(g_pw, PAPER["thr_vs_per_workflow"])
            if where not in ("in", "n/a"):
                counts[acc] += 1
                same = eq["per_workflow_config"] == eq["c_max"]
                L.append(
                    f"- **{key}: throughput vs per-workflow {_fmt(g_pw, True)}** ({where} +78.1..+217%). per-workflow "
                    f"runs {'c_max itself' if same else 'a configuration cheaper than c_max'} "
                    f"({', '.join(f'{k}={v}' for k, v in eq['per_workflow_config'].items())}; picked on the "
                    f"{eq.get('per_workflow_selected_on', 'selection split')}) and reaches "
                    f"{pols['per_workflow']['max_throughput']:.1f} req/s"
                    + (
                        ": every stage on the largest engine, which caps it at that engine's share of the fleet."
                        if same
                        else "."
                    )
                )
            lat = b["comparison"].get("latency_at", {}).get("aragog")
            if lat:
                i = lat["index"]
                for q in ("p50", "p95"):
                    for base in ("per_input", "per_workflow"):
                        v = lat["aragog_change_pct"].get(base, {}).get(q)
                        where = _in(v, PAPER[f"{q}_vs_{base}"])
                        if where in ("in", "n/a"):
                            continue
                        counts[acc] += 1
                        run_a = pols["aragog"]["per_rate"][i]
                        run_b = pols[base]["per_rate"][i]
                        eng_a = r["routed"]["engines"] if acc == "paper" else eq["engines"]
                        L.append(
                            f"- **{key}: {q.upper()} vs {base.replace('_', '-')} {_fmt(v, True)}** "
                            f"at {lat['rate']:g} req/s "
                            f"({where} the paper's range). {base.replace('_', '-')} "
                            + (
                                "also keeps up there (no queue for Aragog to avoid)"
                                if lat["sustained"][base]
                                else "is overloaded there"
                            )
                            + f"; Aragog puts {100 * _largest_engine_share(run_a, eng_a):.0f}% of "
                            "its output tokens on the "
                            f"largest model against {100 * _largest_engine_share(run_b, eq['engines']):.0f}% for "
                            f"{base.replace('_', '-')} (per-token decode there is several times slower). Experiment: "
                            f"`engine_tokens` of both runs at that rate in summary.json."
                        )
            drop = b["comparison"].get("aragog_accuracy_drop_points", float("nan"))
            if math.isfinite(drop) and not 0 <= drop <= 2.0:
                counts[acc] += 1
                L.append(f"- **{key}: accuracy drop {drop:.2f} points** (paper: within 2).")
        L.append("")
    L += [
        f"Cells outside the paper's ranges: {counts['paper']} (paper accounting), {counts['equal']} (equal fleet).",
        "",
    ]
    L += FINDINGS.splitlines()
    return L


FINDINGS = """### Genuine findings vs defects

**Genuine findings** (properties of Aragog's algorithm in the world simulated here; the
experiment named shows each):

* *The gain over per-input is capped by the large engines' share of fleet capacity.*
  Per-input already sends most stages to the small engines; a load-aware scheduler can
  only add what the larger engines contribute. The capacity bound in each line above
  (`fleet_request_rate_bound`: every engine saturated) is that cap; where it is below
  the paper's +42.8%, no scheduler could reach the paper's range on that fleet.
* *The paper's accounting matters.* Charging the router a GPU and giving the baselines
  one more small replica moves per-input's capacity by the small engine's share and
  Aragog's bound down by it: compare the two main tables row by row.
* *A deployed per-input router is weaker than the oracle.* `per_input-router` (the
  cheapest configuration the same trained router admits) loses throughput against
  oracle per-input wherever the router drops the cheapest accurate configuration; Aragog's
  gains against it are the comparison a deployment would see.
* *Latency at light load is per-stage speed, not queueing.* The utility ranks by forecast
  throughput gain: when the large engine has free slots, stages go there and decode
  several times slower per sequence. At the highest rate every policy sustains there is
  no queue to avoid, so Aragog's latency can exceed per-input's (the token shares on the
  largest model in the lines above measure it).
* *Beam width barely changes throughput* (Beam width table), while per-round optimality
  on captured rounds shows what the wider beam buys per round.
* *A reservation computed from one round's queue does not move the scarce cases.*
  `aragog-scarce` keeps a scarce model's free slots for the queued items that can only
  use it; on self_refine_squad-llama and voting_mmlu_pro-llama it gave the paper rule's
  throughput and latency at every rate in both accountings (`bench/results/scarcity/`),
  because within a round the paper's rule already leaves those slots to them. The P95 gap
  to per-input is the masks: per_input-router, with the same masks, has it too.
* *A calibrated router pays for its guarantee in tail latency on a scarce fleet.* The
  yardstick router (the best calibrated router on this data, `aragog-yardstick`) and our
  router's masks compared under the same scheduler: "Where aragog's P95 gap to per-input
  comes from" above.

**Defects** (of this reproduction, not of Aragog; fixed here, or still open):

* Fixed here: per-workflow picked its configuration on the test split (now calibration,
  topped up from train below 500 inputs); `--quick` measured while the pipeline filled
  (now a labelled smoke run with a warm-up window); latency was compared only at a rate
  that overloads every policy and the sweep had 4 rates (now a dense grid and the two
  sustained rates); the router's GPU was not charged (now the paper accounting).
* Open: throughput at overload is not fully steady within a run (measured before this
  run on the derived profiles, self-refine/Qwen aragog at 33.5 req/s: 27.4, 29.6, 30.3,
  31.0 req/s for 20, 30, 40, 60 s of arrivals, each over its second half). This run uses
  30 s of arrivals (window [15, 30] s) to fit its time budget on the shared machine; at
  six points the window [15, 30] s was within 5% of [30, 60] s (self-refine/Qwen aragog
  23.8 and 33.5 req/s: 23.38 vs 22.98, 29.60 vs 31.02; voting/Llama aragog 30 req/s:
  18.39 vs 17.59; per-input 14, 20, 30 req/s: 13.15 vs 12.93, 17.31 vs 17.45, 18.28 vs
  18.25), so gains can move by a few points with longer runs
  (`python bench/paper.py --duration 60`). The engine profiles and accuracy data are only as good as their sources
  (`profiles/README.md`, `profiles/datasets/README.md`): where they are derived or
  synthetic rather than fitted to published measurements, the capacity ratios and the
  per-workflow choices above inherit that.
"""


def speed_case(ds_dir: Path, st: Settings):
    """The headline case of the speed measurement: (setup, masks, per_workflow config)."""
    from aragog_jax.sim import build_masks, load_setup
    from aragog_jax.sim._setup import per_workflow_config, selection_rows

    hs = load_setup("self_refine_humaneval", "qwen", gpus=8, dataset=ds_dir)
    hm = build_masks(hs, None, st.route_cost_s)
    pwf = per_workflow_config(
        hs.dataset.scores[selection_rows(hs.dataset)[0]], hs.space.c_max, 0.02
    )
    return hs, hm, pwf


def speed_config(
    st: Settings, policy: str, rate: float, route_cost_s: float, round_cost_s: float | None = None
):
    """One run of the speed measurement (``round_cost_s`` None: each round's wall time)."""
    from aragog_jax.sim import RunConfig

    return RunConfig(
        policy=policy,
        rate=rate,
        duration_s=st.duration_s,
        round_interval_s=st.round_interval_s,
        horizon_s=st.horizon_factor * st.duration_s,
        route_cost_s=route_cost_s,
        round_cost_s=round_cost_s,
        seed=st.seed,
    )


def simulator_speed(ds_dir: Path, rate: float, st: Settings) -> dict:
    """Simulator speed on the headline case (qwen self_refine_humaneval, 8 GPUs, at
    ``rate``), everything compiled and warm, for aragog and per_workflow, with each round's
    measured wall time charged.

    Besides stage completions per wall second (and per second of the process's CPU, which
    other jobs on a shared machine do not inflate) it splits where the time goes: a least
    squares fit of each round's wall time to ``fixed + per_step * search_steps`` (the
    beam search looks at ``search_steps`` items), and the floor of one kernel call that
    does nothing (no free slot, 16 items), so the report can say what bounds the speed.
    """
    import jax
    import numpy as np

    from aragog_jax.scheduler import COMPILED, DEFAULT_BEAM_WIDTH, pad_round
    from aragog_jax.sim import simulate

    hs, hm, pwf = speed_case(ds_dir, st)
    out: dict = {}
    for pol in ("aragog", "per_workflow"):
        cfg = speed_config(st, pol, rate, hm.route_cost_s)
        simulate(hs, cfg, hm.router, per_workflow_config=pwf)  # compile every bucket it needs
        # Rounds are charged their measured time, so no two runs are alike: a run that met
        # a round larger than any before compiled its bucket (a server compiles them at
        # start-up) and is timed again, up to 5 runs.
        timed_runs = 0
        while timed_runs < 5:
            timed_runs += 1
            cpu0 = time.process_time()
            res = simulate(hs, cfg, hm.router, per_workflow_config=pwf)
            cpu_s = time.process_time() - cpu0
            if not res.compiled_rounds:
                break
        wall = np.asarray(res.round_wall_s)
        steps = np.asarray(res.round_steps, dtype=np.float64)
        fixed, per_step = np.linalg.lstsq(
            np.stack([np.ones_like(steps), steps], axis=1), wall, rcond=None
        )[0]
        sched_s = float(wall.sum())
        out[pol] = {
            "rate": rate,
            "stage_completions": res.stage_completions,
            "wall_s": res.sim_wall_s,
            "scheduler_s": sched_s,
            "rounds": res.rounds,
            "per_s": res.stage_completions / res.sim_wall_s,
            # Process CPU (every thread, XLA's too): what the run cost on a shared machine,
            # where wall time also counts the other jobs' turns on the cores.
            "cpu_s": cpu_s,
            "per_cpu_s": res.stage_completions / cpu_s,
            "timed_runs": timed_runs,
            "per_s_excl_scheduler": res.stage_completions / max(res.sim_wall_s - sched_s, 1e-9),
            "mean_search_steps": float(steps.mean()),
            "round_fixed_us": float(fixed * 1e6),
            "round_per_step_us": float(per_step * 1e6),
        }
    # One kernel call with nothing to do, in the smallest item bucket of this fleet.
    num_engines, num_models = len(hs.engines), len({e.model for e in hs.engines})
    empty = pad_round(  # padded to the smallest buckets: 16 items, 32 configurations, 64 slots
        np.zeros((0, 32), dtype=bool),
        np.zeros((0, 32), dtype=np.int8),
        np.zeros(0, dtype=np.int32),
        np.arange(num_engines, dtype=np.int32) % num_models,
        np.zeros(num_engines, dtype=np.int32),
        np.zeros((num_engines, 64), dtype=np.int32),
        num_models,
    )
    jax.block_until_ready(COMPILED(empty, DEFAULT_BEAM_WIDTH))
    reps = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(200):
            jax.block_until_ready(COMPILED(empty, DEFAULT_BEAM_WIDTH))
        reps.append((time.perf_counter() - t0) / 200)
    out["empty_kernel_call_us"] = float(min(reps) * 1e6)
    return out


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
        if "per_cpu_s" in sp:
            L.append(
                f"  Per second of process CPU (every thread; on a shared machine wall time also "
                f"counts other jobs): {sp['per_cpu_s']:,.0f} stage completions/s."
            )
        if "round_fixed_us" in sp:
            L.append(
                f"  A round cost {sp['round_fixed_us']:.0f} µs + {sp['round_per_step_us']:.2f} µs per item the beam "
                f"search looked at (least-squares fit over this run's rounds; {sp['mean_search_steps']:.1f} items per "
                f"round on average)."
            )
    ar = speed.get("aragog")
    if empty_us is not None and isinstance(ar, dict) and "round_per_step_us" in ar:
        kernel_s = (
            ar["rounds"] * (empty_us + ar["round_per_step_us"] * ar["mean_search_steps"]) * 1e-6
        )
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


if __name__ == "__main__":
    raise SystemExit(main())
