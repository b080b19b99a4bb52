"""Rate sweeps over policies: rate grids (automatic, dense around the knees), masks, runs.

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
* ``aragog-yardstick`` / ``per_input-yardstick``: ``aragog`` / ``per_input-router`` over
  the yardstick router's calibrated masks (the best calibrated router the synthetic
  data allows; ``bench/_yardstick.py`` builds them into :class:`Masks`), routing time
  charged as for the trained router. Diagnostic: they run at every rate of the grid but
  place no knee rates and do not enter the rate every policy sustains
  (``DIAGNOSTIC_POLICIES``), so adding them leaves the other policies' figures unchanged.
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

Metrics: :mod:`aragog_jax.sim._summary`.
"""

from __future__ import annotations

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
from aragog_jax.sim._setup import ROUTERS_DIR, Setup, per_workflow_config, selection_rows
from aragog_jax.sim._summary import (
    DIAGNOSTIC_POLICIES,
    SUSTAINED_SHARE,
    admitted_hist,
    aggregate,
    case_c_max_accuracy,
    compare,
    highest_sustained_index,
    summarize_run,
)

POLICIES = (
    "aragog",
    "aragog-paper",
    "aragog-scarce",
    "aragog-oracle",
    "greedy",
    "per_input",
    "per_input-router",
    "per_workflow",
    "aragog-yardstick",
    "per_input-yardstick",
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
    "aragog-yardstick": "aragog",
    "per_input-yardstick": "per_input",
}
#: Policies charged the routing time per request.
_USES_ROUTER = {
    "aragog",
    "aragog-paper",
    "aragog-scarce",
    "greedy",
    "per_input-router",
    "aragog-yardstick",
    "per_input-yardstick",
}
#: Policies over the yardstick router's masks (:attr:`Masks.yardstick`).
_USES_YARDSTICK = {"aragog-yardstick", "per_input-yardstick"}
#: Policies that run one fixed configuration per request (no admitted-set histogram).
_FIXED = {"per_input", "per_input-router", "per_workflow", "per_input-yardstick"}


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
    yardstick: np.ndarray | None = None  # bool[N, C] the yardstick router's masks, if built
    yardstick_source: str = ""

    def for_policy(self, policy: str) -> tuple[np.ndarray, str]:
        """The masks ``policy`` schedules over, and where they come from."""
        if policy in _USES_YARDSTICK:
            if self.yardstick is None:
                raise AragogError(
                    f"policy {policy!r} needs the yardstick router's masks (Masks.yardstick; "
                    "bench/paper.py builds them with bench/_yardstick.py)"
                )
            return self.yardstick, self.yardstick_source
        if policy in _USES_ROUTER:
            return self.router, self.source
        return self.oracle, "oracle"


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
    for p in sweep.policies:
        masks.for_policy(p)  # a policy without its masks is refused before any run
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
        mask, source = masks.for_policy(p)
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
            "masks": source if p != "per_workflow" else f"config {pwf}",
            "admitted": admitted_hist(mask[setup.rows]) if p not in _FIXED else None,
        }
        policies[p].update(aggregate(per_rate))
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
        policies[p] = {**da, "per_rate": per_rate, **aggregate(per_rate)}
    out["policies"] = policies
    out["c_max_accuracy"] = case_c_max_accuracy(policies)
    out["comparison"] = compare(policies)
    if "_runs" in a and "_runs" in b:
        out["_runs"] = {
            p: sorted(a["_runs"][p] + b["_runs"][p], key=lambda r: r.config.rate)
            for p in a["_runs"]
        }
    return out


def knee_curves(summaries: list[dict]) -> list[list[dict]]:
    """The per-rate curves whose knees :func:`run_dense` refines: every policy of every
    summary but the ``DIAGNOSTIC_POLICIES``."""
    return [
        d["per_rate"]
        for summ in summaries
        for p, d in summ["policies"].items()
        if p not in DIAGNOSTIC_POLICIES
    ]


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
    curves = knee_curves(first)
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


def with_overrides(sweep: SweepConfig, **kw) -> SweepConfig:
    return replace(sweep, **kw)
