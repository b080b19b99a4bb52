"""Statistics of simulated runs: one run's figures, a policy's over its sweep, the
comparison between policies, the summary JSON and its plots.

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
from pathlib import Path

import numpy as np

from aragog_jax.sim._driver import RunResult
from aragog_jax.sim._metrics import latency_stats, pct_change
from aragog_jax.sim._setup import Setup

#: Throughput window: completions in [WINDOW_START * duration, duration] (the fleet has
#: filled by then: the first half covers the pipeline fill of multi-stage requests).
WINDOW_START = 0.5

#: A policy sustains a rate when its throughput is at least this share of the rate.
SUSTAINED_SHARE = 0.9


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


def aggregate(per_rate: list[dict]) -> dict:
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


def admitted_hist(mask: np.ndarray) -> dict:
    counts = mask.sum(axis=1)
    return {
        "mean": float(counts.mean()),
        "median": float(np.median(counts)),
        "counts": counts.astype(int).tolist(),
        "num_configs": int(mask.shape[1]),
    }


LATENCY_KEYS = ("mean", "p25", "p50", "p95")
#: Policies run only to explain others' figures (masks no deployment has): they place no
#: knee rates (``refine_rates`` in ``run_dense``) and do not enter the highest rate every
#: policy sustains.
DIAGNOSTIC_POLICIES = frozenset({"aragog-yardstick", "per_input-yardstick"})


def latency_at_rates(policies: dict) -> dict:
    """Every policy's latency (mean, P25, P50, P95) at two rates of a shared grid: the
    highest rate every policy sustains (``common``; ``DIAGNOSTIC_POLICIES`` aside) and the
    highest rate aragog
    sustains (``aragog``), with aragog's change vs each baseline in percent. Empty when
    the policies do not share one rate grid or no such rate exists (``None`` entries)."""
    grids = {tuple(round(r["rate"], 6) for r in d["per_rate"]) for d in policies.values()}
    if len(grids) != 1 or not policies:
        return {}
    n = len(next(iter(grids)))
    judged = [d for p, d in policies.items() if p not in DIAGNOSTIC_POLICIES]
    every = [i for i in range(n) if all(sustains(d["per_rate"][i]) for d in judged)]
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
