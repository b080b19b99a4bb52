"""Rate sweeps over policies, the summary JSON and its plots.

Policies (``POLICIES``):

* ``aragog``: beam search (width ``beam_width``) over the router's masks when a
  checkpoint exists for the workflow × family, else oracle masks (the summary says
  which); routing time of the real jitted router is charged per request.
* ``aragog-paper``: ``aragog`` with the paper's rule (no scarcity reservation, see
  ``aragog_jax.scheduler``; the same as ``aragog`` while that is the default), over the
  same router masks, routing time charged.
* ``aragog-scarce``: ``aragog`` with the scarcity reservation, same masks and charge.
* ``aragog-oracle``: beam search over the oracle masks (the accurate set from the
  dataset), no routing time.
* ``greedy``: beam width 1 over the same masks as ``aragog``, routing time charged.
* ``per_input``: the cheapest accurate configuration by FLOPs (oracle accuracy: the
  paper's best case for per-input routing), fixed at arrival, no routing time.
* ``per_input-router``: the cheapest configuration the same trained router admits,
  fixed at arrival, routing time charged: what a deployment would compare against.
* ``per_workflow``: one configuration for every request: the cheapest whose accuracy
  matches ``c_max`` within ``workflow_tolerance`` (default 0.02, the same 2-point budget
  Aragog's accuracy is judged by), picked on the calibration split (topped up from the
  training split below 500 inputs; :func:`~aragog_jax.sim._setup.selection_rows`),
  never on the test split the requests come from.

Workload: Poisson (or gamma) arrivals during ``duration_s`` (default 60 s); each run
continues until every request finished or the horizon (default 2 x duration).

Rates: ``rates`` as given, ``num_rates`` automatic ones (:func:`auto_rates`), or with
``dense`` a coarse pass of ``num_rates`` followed by ``per_knee`` rates inside every
policy's knee bracket (:func:`refine_rates`, :func:`run_dense`), at least ``min_rates``
in all, every policy at every rate.

Metrics per policy and rate: ``throughput`` is the stage completion rate in the window
[warm-up, duration] (warm-up ``warmup_s``, default duration / 2) divided by the stages
per request, in requests/s (while arrivals still come: at overload the fleet's
sustained capacity, at light load the arrival rate; every request has exactly S stages,
so in steady state it equals the request completion rate, but it does not wait for
whole multi-stage requests to drain through a saturated engine, which at overload takes
longer than the window); ``throughput_requests`` is the request completion rate in the
same window; ``throughput_overall`` is completions / (last completion - first arrival).
``offered`` is the arrival rate realised in the same window. ``max_throughput`` is the
highest ``throughput`` over the sweep; a policy *sustains* a rate when its throughput is
at least 90% of ``offered`` (``SUSTAINED_SHARE``), and
``sustained_rate`` is the highest rate it sustains. Latency is arrival to last stage
over every request; requests unfinished at the horizon count with their latency so far
(``latency_censored`` says how many), so percentiles are lower bounds then.
``comparison.latency_at`` holds every policy's mean / P25 / P50 / P95 at the highest
rate every policy sustains and at the highest rate aragog sustains. ``accuracy`` is
the mean score of the realised configurations over the completed requests, and a
policy's ``c_max_accuracy`` the mean score ``c_max`` gets on those same inputs (a paired
comparison: policies complete different requests, so it differs a little between
policies). The case's one ``c_max_accuracy`` (top level of the summary, and the line in
the accuracy plot) is over every request of the sweep, the same inputs for every policy
(``c_max_accuracy_all`` per rate).
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from aragog_jax._provenance import git_sha
from aragog_jax.errors import AragogError
from aragog_jax.router import Router
from aragog_jax.scheduler import DEFAULT_BEAM_WIDTH
from aragog_jax.sim._driver import RunConfig, RunResult, simulate
from aragog_jax.sim._metrics import latency_stats, pct_change
from aragog_jax.sim._setup import ROUTERS_DIR, Setup, per_workflow_config, selection_rows

#: Throughput window: completions in [WINDOW_START * duration, duration] (the fleet has
#: filled by then: the first half covers the pipeline fill of multi-stage requests).
WINDOW_START = 0.5

POLICIES = (
    "aragog",
    "aragog-paper",
    "aragog-scarce",
    "aragog-oracle",
    "greedy",
    "per_input",
    "per_input-router",
    "per_workflow",
)
_SCHEDULER_POLICY = {
    "aragog": "aragog",
    "aragog-paper": "aragog-paper",
    "aragog-scarce": "aragog-scarce",
    "aragog-oracle": "aragog",
    "greedy": "greedy",
    "per_input": "per_input",
    "per_input-router": "per_input",
    "per_workflow": "per_workflow",
}
_USES_ROUTER = {"aragog", "aragog-paper", "aragog-scarce", "greedy", "per_input-router"}
#: Policies that run one fixed configuration per request (no admitted-set histogram).
_FIXED = {"per_input", "per_input-router", "per_workflow"}
#: A policy sustains a rate when its throughput is at least this share of the rate.
SUSTAINED_SHARE = 0.9


@dataclass(frozen=True)
class SweepConfig:
    """Parameters shared by every run of a sweep (see :class:`RunConfig`)."""

    policies: tuple[str, ...] = ("aragog", "per_input", "per_workflow")
    rates: tuple[float, ...] | None = None  # None: automatic
    num_rates: int = 6
    num_requests: int = 0  # 0: every arrival within duration_s
    duration_s: float = 60.0
    round_interval_s: float = 0.05
    beam_width: int = DEFAULT_BEAM_WIDTH
    arrival: str = "poisson"
    cv: float = 2.0
    seed: int = 0
    round_cost_s: float | None = None  # None: measured per round
    route_cost_s: float | None = None  # None: measured from the router
    poll_interval_s: float = 0.0
    horizon_s: float | None = None  # None: 2 x duration_s
    workflow_tolerance: float = 0.02  # per_workflow: same 2-point budget Aragog is held to
    router: str | None = None  # checkpoint path; None: the shipped one if present; "oracle": none
    warmup_s: float | None = None  # throughput window starts here; None: duration_s * WINDOW_START
    dense: bool = False  # rates: a coarse pass of num_rates, then rates around every policy's knee
    per_knee: int = 2  # dense: rates added inside each policy's knee bracket
    min_rates: int = 8  # dense: at least this many rates in all


def request_output_tokens(setup: Setup) -> float:
    """Mean output tokens per request over the rows requests draw from."""
    return float(setup.dataset.tokens[setup.rows, :, 1].sum(axis=1).mean())


def engine_request_rates(setup: Setup) -> list[float]:
    """Requests/s each engine would sustain alone, running every stage of every request.

    Per request an engine spends, per stage, ``o * t(sat)/sat`` decoding (its share of a
    saturated iteration) plus ``p / prefill_rate`` prefilling, with the mean prompt p and
    output o of the requests' stages (context at mid-generation).
    """
    tok = setup.dataset.tokens[setup.rows].astype(np.float64)  # [N, S, 2]
    p = tok[:, :, 0].mean(axis=0)
    o = tok[:, :, 1].mean(axis=0)
    out = []
    for e in setup.engines:
        prof = e.profile
        b = prof.saturation_batch
        ctx = float((p + o / 2).mean())
        t_iter = (
            prof.decode_base_s + prof.decode_per_seq_s * b + prof.decode_per_ctx_token_s * b * ctx
        )
        cost = float((o * t_iter / b + p / prof.prefill_tokens_per_s).sum())
        out.append(1.0 / cost)
    return out


#: The top automatic rate, times the fleet's upper bound (every engine saturated).
TOP_RATE_FACTOR = 1.1


def auto_rates(setup: Setup, num: int) -> tuple[float, ...]:
    """Geometric rates from half of what the largest engine alone sustains to
    ``TOP_RATE_FACTOR`` x what the whole fleet would sustain with every engine saturated
    (an upper bound for any policy, so the top rate overloads all of them). See
    :func:`engine_request_rates`.
    """
    rates = engine_request_rates(setup)
    biggest = max(range(len(setup.engines)), key=lambda i: setup.engines[i].profile.decode_base_s)
    lo = 0.5 * rates[biggest]
    hi = TOP_RATE_FACTOR * sum(rates)
    if num <= 1:
        return (round(hi, 3),)
    return tuple(round(float(r), 3) for r in np.geomspace(lo, hi, num))


@dataclass(eq=False)
class Masks:
    router: np.ndarray  # bool[N, C] masks for router-based policies
    oracle: np.ndarray  # bool[N, C]
    source: str  # "router:<path>" or "oracle (no router checkpoint)"
    route_cost_s: float


def build_masks(setup: Setup, router: str | None, route_cost_s: float | None) -> Masks:
    """Router masks for every dataset row (or oracle masks), and the routing time to charge."""
    oracle = setup.labels
    path = None
    if router != "oracle":
        path = (
            Path(router) if router else ROUTERS_DIR / setup.space.workflow / f"{setup.family}.npz"
        )
        if router and not path.is_file():
            raise AragogError(f"router checkpoint not found: {path}")
        if not path.is_file():
            path = None
    if path is None:
        return Masks(
            oracle,
            oracle,
            "oracle (no router checkpoint)",
            0.0 if route_cost_s is None else route_cost_s,
        )
    base = setup.base_space if setup.base_space is not None else setup.space
    r = Router.load(path, base).compile()
    res = r.route_texts(setup.dataset.texts)
    mask = np.asarray(res.mask, dtype=bool)
    if setup.variant_index is not None:
        # A constrained variant: admit what the router admits inside the smaller space
        # (c_max is in both, so no row is empty).
        mask = mask[:, setup.variant_index]
    if route_cost_s is None:
        text = setup.dataset.texts[int(setup.rows[0])]
        for _ in range(5):
            r.route_texts([text])
        samples = [r.route_texts([setup.dataset.texts[int(i)]]).elapsed for i in setup.rows[:50]]
        route_cost_s = float(np.median(samples))
    return Masks(mask, oracle, f"router:{path}", route_cost_s)


def summarize_run(setup: Setup, res: RunResult, warmup_s: float | None = None) -> dict:
    """One run's statistics; the throughput window is [``warmup_s``, end of arrivals]
    (default: its second half)."""
    ds = setup.dataset
    done = np.isfinite(res.finish)
    n_done = int(done.sum())
    window_end = float(res.config.duration_s if res.config.num_requests <= 0 else res.arrival.max())
    window_start = (
        window_end * WINDOW_START if warmup_s is None else min(float(warmup_s), window_end)
    )
    span = window_end - window_start
    in_window = done & (res.finish >= window_start) & (res.finish <= window_end)
    req_rate = float(in_window.sum()) / span if span > 0 else float("nan")
    st = res.stage_done_at
    stage_rate = (
        float(((st >= window_start) & (st <= window_end)).sum()) / span
        if span > 0
        else float("nan")
    )
    steady = stage_rate / setup.space.num_stages
    in_arrivals = (res.arrival >= window_start) & (res.arrival <= window_end)
    offered = float(in_arrivals.sum()) / span if span > 0 else float("nan")
    overall = n_done / float(res.finish[done].max() - res.arrival.min()) if n_done else 0.0
    # Requests still running at the horizon count with their latency so far (a lower
    # bound), so percentiles are never flattered by leaving the slowest out.
    lat_all = np.where(done, res.finish, max(res.end_time, float(res.arrival.max()))) - res.arrival
    lat = res.latency[done]
    rows = res.rows[done]
    acc = float(ds.scores[rows, res.config_idx[done]].mean()) if n_done else float("nan")
    cmax = float(ds.scores[rows, setup.space.c_max].mean()) if n_done else float("nan")
    cmax_all = (
        float(ds.scores[res.rows, setup.space.c_max].mean()) if res.rows.size else float("nan")
    )
    walls = np.asarray(res.round_wall_s)
    sched_wall = float(walls.sum())
    return {
        "rate": res.config.rate,
        "num_requests": int(res.arrival.size),
        "completed": int(n_done),
        "unfinished": res.num_unfinished,
        "throughput": float(steady),
        "throughput_window_s": [window_start, window_end],
        "offered": offered,
        "throughput_requests": req_rate,
        "throughput_overall": float(overall),
        "latency": latency_stats(lat_all),
        "latency_censored": int((~done).sum()),
        "rounds_compiling": res.compiled_rounds,
        "accuracy": acc,
        "c_max_accuracy": cmax,
        "c_max_accuracy_all": cmax_all,
        "routing_overhead_share": float(res.route_s[done].sum() / lat.sum())
        if n_done and lat.sum() > 0
        else 0.0,
        "scheduler_ms_per_round": float(1e3 * walls.mean()) if walls.size else 0.0,
        "scheduler_ms_p95": float(1e3 * np.percentile(walls, 95)) if walls.size else 0.0,
        "rounds": res.rounds,
        "stage_completions": res.stage_completions,
        "sim_wall_s": res.sim_wall_s,
        "stage_completions_per_wall_s": res.stage_completions / res.sim_wall_s
        if res.sim_wall_s > 0
        else 0.0,
        "stage_completions_per_wall_s_excl_scheduler": (
            res.stage_completions / (res.sim_wall_s - sched_wall)
            if res.sim_wall_s > sched_wall
            else 0.0
        ),
        "num_admitted_mean": float(res.num_admitted.mean()),
        "distinct_configs": int(np.unique(res.config_idx[done]).size),
        "engine_utilization": {
            k: v / float(res.end_time) if res.end_time > 0 else 0.0
            for k, v in res.engine_busy_s.items()
        },
        "engine_tokens": res.engine_tokens,
    }


def run_sweep(
    setup: Setup,
    sweep: SweepConfig,
    *,
    progress: bool = True,
    keep_runs: bool = False,
    masks: Masks | None = None,
) -> dict:
    """Every policy at every rate; returns the summary dict (see ``write_summary``).

    With ``sweep.dense`` the rates are placed by :func:`run_dense` (a coarse pass, then
    rates around every policy's knee). ``masks`` reuses masks built by :func:`build_masks`.
    """
    if sweep.dense:
        return run_dense(
            [(setup, sweep.policies)],
            sweep,
            progress=progress,
            keep_runs=keep_runs,
            masks=[masks] if masks is not None else None,
        )[0]
    for p in sweep.policies:
        if p not in POLICIES:
            raise AragogError(f"unknown policy {p!r} (known: {', '.join(POLICIES)})")
    t0 = time.perf_counter()
    masks = masks if masks is not None else build_masks(setup, sweep.router, sweep.route_cost_s)
    rates = sweep.rates or auto_rates(setup, sweep.num_rates)
    sel_rows, sel_note = selection_rows(setup.dataset)
    pwf = per_workflow_config(
        setup.dataset.scores[sel_rows], setup.space.c_max, sweep.workflow_tolerance
    )
    total = len(sweep.policies) * len(rates)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=total, desc=f"{setup.space.workflow}/{setup.family}", unit="run", leave=False
        )
    policies: dict[str, dict] = {}
    runs: dict[str, list[RunResult]] = {}
    for p in sweep.policies:
        use_router = p in _USES_ROUTER
        mask = masks.router if use_router else masks.oracle
        per_rate = []
        for rate in rates:
            cfg = RunConfig(
                policy=_SCHEDULER_POLICY[p],
                rate=float(rate),
                num_requests=sweep.num_requests,
                duration_s=sweep.duration_s,
                round_interval_s=sweep.round_interval_s,
                beam_width=1 if p == "greedy" else sweep.beam_width,
                arrival=sweep.arrival,
                cv=sweep.cv,
                seed=sweep.seed,
                route_cost_s=masks.route_cost_s if use_router else 0.0,
                round_cost_s=sweep.round_cost_s,
                poll_interval_s=sweep.poll_interval_s,
                horizon_s=sweep.horizon_s
                if sweep.horizon_s is not None
                else 2.0 * sweep.duration_s,
            )
            res = simulate(setup, cfg, mask, per_workflow_config=pwf)
            per_rate.append(summarize_run(setup, res, sweep.warmup_s))
            if keep_runs:
                runs.setdefault(p, []).append(res)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(policy=p, rate=f"{rate:g}")
        policies[p] = {
            "per_rate": per_rate,
            "masks": ("oracle" if not use_router else masks.source)
            if p != "per_workflow"
            else f"config {pwf}",
            "admitted": _admitted_hist(mask[setup.rows]) if p not in _FIXED else None,
        }
        policies[p].update(_aggregate(per_rate))
    if bar is not None:
        bar.close()
    summary = {
        "git_sha": git_sha(),
        "workflow": setup.space.workflow,
        "family": setup.family,
        "fleet": str(setup.fleet_path),
        "num_gpus": setup.num_gpus,
        "engines": [
            {"name": e.name, "model": e.model, "gpus": e.num_gpus, "profile_kind": e.profile.kind}
            for e in setup.engines
        ],
        "fleet_request_rate_bound": float(sum(engine_request_rates(setup))),
        "num_configs": setup.space.num_configs,
        "c_max": setup.space.config_to_models(setup.space.c_max),
        "c_max_accuracy": case_c_max_accuracy(policies),
        "per_workflow_config": setup.space.config_to_models(pwf),
        "per_workflow_selected_on": sel_note,
        "mask_source": masks.source,
        "route_cost_s": masks.route_cost_s,
        "rates": [float(r) for r in rates],
        "sweep": {
            k: (v if not isinstance(v, float) or math.isfinite(v) else None)
            for k, v in asdict(sweep).items()
        },
        "round_cost": "measured" if sweep.round_cost_s is None else sweep.round_cost_s,
        "device": platform.machine() + " " + platform.processor(),
        "wall_s": time.perf_counter() - t0,
        "policies": policies,
        "comparison": compare(policies),
    }
    if keep_runs:
        summary["_runs"] = runs
    return summary


def _aggregate(per_rate: list[dict]) -> dict:
    """A policy's figures over its sweep (recomputed when sweeps are merged)."""
    thr = [r["throughput"] for r in per_rate]
    done = [r["completed"] for r in per_rate]
    any_done = sum(done) > 0
    return {
        "max_throughput": float(np.nanmax(thr)) if any(np.isfinite(thr)) else float("nan"),
        "sustained_rate": (
            per_rate[i]["rate"]
            if (i := highest_sustained_index(per_rate)) is not None
            else float("nan")
        ),
        "accuracy": float(np.average([r["accuracy"] for r in per_rate], weights=done))
        if any_done
        else float("nan"),
        "c_max_accuracy": float(np.average([r["c_max_accuracy"] for r in per_rate], weights=done))
        if any_done
        else float("nan"),
        "routing_overhead_share": {
            "lowest_rate": per_rate[0]["routing_overhead_share"],
            "highest_rate": per_rate[-1]["routing_overhead_share"],
        },
        "scheduler_ms_per_round": float(
            np.average(
                [r["scheduler_ms_per_round"] for r in per_rate],
                weights=[max(r["rounds"], 1) for r in per_rate],
            )
        ),
    }


def sustains(run: dict) -> bool:
    """Whether a run kept up: throughput >= SUSTAINED_SHARE x the arrivals in the same
    window (``offered``: the realised Poisson count, not the nominal rate, so sampling
    noise in a short window does not decide it; the nominal rate when absent)."""
    return bool(run["throughput"] >= SUSTAINED_SHARE * run.get("offered", run["rate"]))


def highest_sustained_index(per_rate: list[dict]) -> int | None:
    """Index of the highest rate the policy sustains (None: it sustains none)."""
    ok = [i for i, r in enumerate(per_rate) if sustains(r)]
    return ok[-1] if ok else None


def refine_rates(
    rates: tuple[float, ...],
    curves: list[list[dict]],
    *,
    per_knee: int = 2,
    min_rates: int = 8,
    min_gap: float = 0.03,
) -> tuple[float, ...]:
    """Rates to add to a coarse sweep so that every policy's knee is sampled densely.

    For each curve (one policy's per-rate results on ``rates``, ascending) the knee
    bracket is (highest sustained rate, next rate); a policy that sustains no rate gets
    the bracket one geometric step below the lowest rate, one that sustains every rate
    none. ``per_knee`` rates are placed geometrically inside every bracket; a new rate
    within ``min_gap`` (relative) of a rate already there is dropped. While the sweep
    has fewer than ``min_rates`` rates, the widest gap (by ratio) gets its geometric
    midpoint. Returns the new rates only, ascending, rounded to 3 decimals: a
    deterministic function of the coarse results.
    """
    grid = sorted(float(r) for r in rates)
    if len(grid) < 2:
        raise AragogError("refine_rates needs a coarse sweep of at least 2 rates")
    new: list[float] = []

    def add(r: float) -> None:
        r = round(float(r), 3)
        if r > 0 and all(abs(r - q) > min_gap * q for q in grid + new):
            new.append(r)

    brackets = set()
    for per_rate in curves:
        if [round(r["rate"], 6) for r in per_rate] != [round(r, 6) for r in grid]:
            raise AragogError("refine_rates: every curve must cover the coarse rates, in order")
        i = highest_sustained_index(per_rate)
        if i is None:
            brackets.add((grid[0] * grid[0] / grid[1], grid[0]))
        elif i < len(grid) - 1:
            brackets.add((grid[i], grid[i + 1]))
    for lo, hi in sorted(brackets):
        for k in range(1, per_knee + 1):
            add(lo * (hi / lo) ** (k / (per_knee + 1)))
    while len(grid) + len(new) < min_rates:
        allr = sorted(grid + new)
        j = max(range(len(allr) - 1), key=lambda i: allr[i + 1] / allr[i])
        before = len(new)
        add(math.sqrt(allr[j] * allr[j + 1]))
        if len(new) == before:
            break  # the widest gap is already below min_gap: nothing left to split
    return tuple(sorted(new))


def merge_sweeps(a: dict, b: dict) -> dict:
    """One summary from two sweeps of the same setup and policies at different rates."""
    if set(a["policies"]) != set(b["policies"]):
        raise AragogError("merge_sweeps: the sweeps must run the same policies")
    rates = sorted(set(a["rates"]) | set(b["rates"]))
    out = {**a, "rates": rates, "wall_s": a["wall_s"] + b["wall_s"]}
    policies = {}
    for p, da in a["policies"].items():
        per_rate = sorted(da["per_rate"] + b["policies"][p]["per_rate"], key=lambda r: r["rate"])
        policies[p] = {**da, "per_rate": per_rate, **_aggregate(per_rate)}
    out["policies"] = policies
    out["c_max_accuracy"] = case_c_max_accuracy(policies)
    out["comparison"] = compare(policies)
    if "_runs" in a and "_runs" in b:
        out["_runs"] = {
            p: sorted(a["_runs"][p] + b["_runs"][p], key=lambda r: r.config.rate)
            for p in a["_runs"]
        }
    return out


def run_dense(
    arms: list[tuple[Setup, tuple[str, ...]]],
    sweep: SweepConfig,
    *,
    progress: bool = True,
    keep_runs: bool = False,
    masks: list[Masks] | None = None,
) -> list[dict]:
    """Sweeps that share one rate grid, dense around every policy's knee.

    ``arms`` are (setup, policies) pairs: e.g. Aragog on one fleet and the baselines on
    another. A coarse pass runs every arm at ``sweep.rates`` (or ``sweep.num_rates``
    automatic rates of the first arm's setup); :func:`refine_rates` then places rates
    around every policy's knee and every arm runs those too, so all policies share
    every rate (latency can be compared rate by rate). Returns one merged summary per arm
    with ``rate_grid`` saying which rates were coarse and which were added.
    """
    coarse = tuple(sweep.rates or auto_rates(arms[0][0], sweep.num_rates))
    base = replace(sweep, rates=coarse, dense=False)
    masks = masks or [build_masks(s, sweep.router, sweep.route_cost_s) for s, _ in arms]
    first = [
        run_sweep(s, replace(base, policies=pols), progress=progress, keep_runs=keep_runs, masks=m)
        for (s, pols), m in zip(arms, masks, strict=True)
    ]
    curves = [d["per_rate"] for summ in first for d in summ["policies"].values()]
    extra = refine_rates(coarse, curves, per_knee=sweep.per_knee, min_rates=sweep.min_rates)
    out = []
    for (s, pols), m, summ in zip(arms, masks, first, strict=True):
        if extra:
            summ = merge_sweeps(
                summ,
                run_sweep(
                    s,
                    replace(base, rates=extra, policies=pols),
                    progress=progress,
                    keep_runs=keep_runs,
                    masks=m,
                ),
            )
        summ["rate_grid"] = {
            "coarse": list(coarse),
            "added": list(extra),
            "per_knee": sweep.per_knee,
            "min_rates": sweep.min_rates,
            "sustained_share": SUSTAINED_SHARE,
        }
        out.append(summ)
    return out


def case_c_max_accuracy(policies: dict) -> float:
    """``c_max``'s mean score over every request of the sweep (the same inputs for every
    policy: requests are drawn from the seed and the rate alone)."""
    for d in policies.values():
        rs = d["per_rate"]
        n = sum(r["num_requests"] for r in rs)
        return (
            float(sum(r["c_max_accuracy_all"] * r["num_requests"] for r in rs) / n)
            if n
            else float("nan")
        )
    return float("nan")


def _admitted_hist(mask: np.ndarray) -> dict:
    counts = mask.sum(axis=1)
    return {
        "mean": float(counts.mean()),
        "median": float(np.median(counts)),
        "counts": counts.astype(int).tolist(),
        "num_configs": int(mask.shape[1]),
    }


LATENCY_KEYS = ("mean", "p25", "p50", "p95")


def latency_at_rates(policies: dict) -> dict:
    """Every policy's latency (mean, P25, P50, P95) at two rates of a shared grid: the
    highest rate every policy sustains (``common``) and the highest rate aragog
    sustains (``aragog``), with aragog's change vs each baseline in percent. Empty when
    the policies do not share one rate grid or no such rate exists (``None`` entries)."""
    grids = {tuple(round(r["rate"], 6) for r in d["per_rate"]) for d in policies.values()}
    if len(grids) != 1 or not policies:
        return {}
    n = len(next(iter(grids)))
    every = [i for i in range(n) if all(sustains(d["per_rate"][i]) for d in policies.values())]
    at = {"common": every[-1] if every else None}
    if "aragog" in policies:
        at["aragog"] = highest_sustained_index(policies["aragog"]["per_rate"])
    out: dict = {}
    for name, i in at.items():
        if i is None:
            out[name] = None
            continue
        lat = {
            p: {k: d["per_rate"][i]["latency"][k] for k in LATENCY_KEYS}
            for p, d in policies.items()
        }
        entry = {
            "rate": next(iter(policies.values()))["per_rate"][i]["rate"],
            "index": i,
            "latency": lat,
            "sustained": {p: sustains(d["per_rate"][i]) for p, d in policies.items()},
        }
        if "aragog" in lat:
            entry["aragog_change_pct"] = {
                b: {k: pct_change(lat["aragog"][k], lat[b][k]) for k in LATENCY_KEYS}
                for b in lat
                if b != "aragog"
            }
        out[name] = entry
    return out


def compare(policies: dict) -> dict:
    """Aragog's gains vs each baseline: max throughput and latency at the highest rate."""
    out: dict[str, dict] = {}
    if "aragog" not in policies:
        return out
    a = policies["aragog"]
    for base in (
        "per_input",
        "per_input-router",
        "per_workflow",
        "greedy",
        "aragog-oracle",
        "aragog-paper",
        "aragog-scarce",
    ):
        if base not in policies:
            continue
        b = policies[base]
        out[f"aragog_vs_{base}"] = {
            "max_throughput_gain_pct": pct_change(a["max_throughput"], b["max_throughput"]),
            "median_latency_change_pct": pct_change(
                a["per_rate"][-1]["latency"]["p50"], b["per_rate"][-1]["latency"]["p50"]
            ),
            "p95_latency_change_pct": pct_change(
                a["per_rate"][-1]["latency"]["p95"], b["per_rate"][-1]["latency"]["p95"]
            ),
        }
    out["aragog_accuracy_drop_points"] = 100.0 * (a["c_max_accuracy"] - a["accuracy"])
    out["latency_at"] = latency_at_rates(policies)
    return out


def write_summary(summary: dict, out: str | Path, *, plots: bool = True) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clean = {k: v for k, v in summary.items() if not k.startswith("_")}
    (out / "summary.json").write_text(json.dumps(clean, indent=2, allow_nan=True) + "\n")
    if plots:
        plot_summary(summary, out)
    return out / "summary.json"


def plot_summary(summary: dict, out: Path) -> list[Path]:
    """Throughput–latency curves, latency CDF at the highest rate, accuracy bars,
    admitted-configuration counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    title = f"{summary['workflow']} / {summary['family']} / {summary['num_gpus']} GPUs"
    pols = summary["policies"]
    paths = []

    def save(fig, ax, name: str) -> None:
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out / name)
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for p, d in pols.items():
        x = [r["throughput"] for r in d["per_rate"]]
        ax.plot(x, [r["latency"]["p50"] for r in d["per_rate"]], marker="o", label=f"{p} P50")
        ax.plot(
            x,
            [r["latency"]["p95"] for r in d["per_rate"]],
            ls="--",
            color=ax.lines[-1].get_color(),
            alpha=0.6,
        )
    ax.set_xlabel("throughput (requests/s)")
    ax.set_ylabel("latency (s): P50 solid, P95 dashed")
    ax.set_yscale("log")
    save(fig, ax, "throughput_latency.png")

    runs = summary.get("_runs")
    if runs:
        fig, ax = plt.subplots(figsize=(6, 4))
        for p, rs in runs.items():
            lat = np.sort(rs[-1].latency[np.isfinite(rs[-1].latency)])
            ax.plot(lat, np.arange(1, lat.size + 1) / lat.size, label=p)
        ax.set_xlabel(f"latency (s) at {summary['rates'][-1]:g} requests/s")
        ax.set_ylabel("CDF")
        save(fig, ax, "latency_cdf.png")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(pols)
    ax.bar(names, [pols[p]["accuracy"] for p in names], label="realised")
    cm = (
        summary["c_max_accuracy"]
        if "c_max_accuracy" in summary
        else np.mean([pols[p]["c_max_accuracy"] for p in names])
    )
    ax.axhline(cm, color="k", ls="--", label=f"c_max {cm:.3f}")
    ax.axhline(cm - 0.02, color="r", ls=":", label="c_max - 2 points")
    ax.set_ylabel("accuracy")
    ax.set_ylim(max(0.0, cm - 0.15), min(1.0, cm + 0.08))
    save(fig, ax, "accuracy.png")

    hist = {p: d["admitted"] for p, d in pols.items() if d.get("admitted")}
    if hist:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        seen = set()
        for p, h in hist.items():
            key = json.dumps(h["counts"][:50])
            if key in seen:
                continue
            seen.add(key)
            ax.hist(
                h["counts"],
                bins=min(50, h["num_configs"]),
                alpha=0.5,
                label=f"{p} (mean {h['mean']:.1f})",
            )
        ax.set_xlabel(
            f"admitted configurations per input (of {next(iter(hist.values()))['num_configs']})"
        )
        ax.set_ylabel("inputs")
        save(fig, ax, "admitted.png")
    return paths


def with_overrides(sweep: SweepConfig, **kw) -> SweepConfig:
    return replace(sweep, **kw)
