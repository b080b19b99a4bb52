"""``python -m aragog_jax.simulate``: compare scheduling policies on a simulated fleet.

Runs the real scheduler against continuous-batching engines built from engine profiles,
on a virtual clock, over the test split of an accuracy dataset; sweeps arrival rates for
every policy (``--dense``: a coarse pass, then rates around every policy's knee) and
writes ``OUT/summary.json`` plus plots. See ``aragog_jax.sim``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from aragog_jax._cli import run_cli, tune_xla
from aragog_jax.errors import AragogError


def _rates(text: str) -> tuple[float, ...] | None:
    if text == "auto":
        return None
    try:
        rates = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise AragogError(
            f"--rates: expected 'auto' or comma-separated numbers, got {text!r}"
        ) from exc
    if not rates or any(r <= 0 for r in rates):
        raise AragogError(f"--rates: rates must be > 0, got {text!r}")
    return tuple(sorted(rates))


def _cost(text: str, flag: str) -> float | None:
    if text == "measured":
        return None
    try:
        v = float(text)
    except ValueError as exc:
        raise AragogError(f"{flag}: expected 'measured' or seconds, got {text!r}") from exc
    if v < 0:
        raise AragogError(f"{flag}: must be >= 0, got {v}")
    return v


DEFAULT_COMPILE_CACHE = "~/.cache/aragog_jax/jax"


def _enable_compile_cache(where: str) -> None:
    """Keep the scheduler's compiled round buckets on disk between runs (JAX's persistent
    compilation cache): a rerun skips recompiling them. ``none`` turns it off."""
    import os

    import jax

    if where == "none":
        return
    cache = Path(os.path.expanduser(where))
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:
        return
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def build_parser() -> argparse.ArgumentParser:
    from aragog_jax.scheduler import DEFAULT_BEAM_WIDTH  # the scheduler's; loads JAX

    p = argparse.ArgumentParser(
        prog="python -m aragog_jax.simulate",
        description="Simulate a GPU fleet serving one workflow and compare scheduling policies "
        "(aragog, aragog-paper, aragog-scarce, aragog-oracle, greedy, per_input, per_input-router, "
        "per_workflow) over a sweep of arrival rates.",
    )
    p.add_argument(
        "--workflow",
        required=True,
        help="shipped workflow name (e.g. self_refine_humaneval) or a workflow TOML",
    )
    p.add_argument("--family", required=True, help="model family: qwen, llama or mixed")
    p.add_argument(
        "--gpus", type=int, default=8, choices=(4, 8), help="shipped fleet size (default 8)"
    )
    p.add_argument(
        "--fleet", help="fleet TOML instead of the shipped profiles/fleets/<family>_<gpus>gpu.toml"
    )
    p.add_argument(
        "--dataset",
        help="accuracy dataset directory (default profiles/datasets/<workflow>/<family>)",
    )
    p.add_argument(
        "--router",
        help="router checkpoint (default: the shipped one if present); 'oracle' forces oracle masks",
    )
    p.add_argument(
        "--policies",
        default="aragog,per_input,per_workflow",
        help="comma-separated (default aragog,per_input,per_workflow)",
    )
    p.add_argument("--rates", default="auto", help="'auto' or comma-separated requests/s")
    p.add_argument(
        "--num-rates",
        type=int,
        default=6,
        help="rates in an automatic sweep, or its coarse pass with --dense (default 6)",
    )
    p.add_argument(
        "--dense",
        action="store_true",
        help="after the coarse pass add --per-knee rates inside every policy's knee bracket (last rate it "
        "sustains at >= 90%% of the arrivals, next rate), at least --min-rates in all",
    )
    p.add_argument(
        "--per-knee", type=int, default=2, help="--dense: rates added per knee bracket (default 2)"
    )
    p.add_argument(
        "--min-rates", type=int, default=8, help="--dense: rates in all at least (default 8)"
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="throughput is measured from here to the end of arrivals (default: half of --duration)",
    )
    p.add_argument(
        "--duration", type=float, default=60.0, help="seconds of arrivals per run (default 60)"
    )
    p.add_argument(
        "--num-requests",
        type=int,
        default=0,
        help="fixed number of requests per run instead of --duration",
    )
    p.add_argument(
        "--round-interval",
        type=float,
        default=0.05,
        help="least virtual seconds between scheduling rounds, the server loop's period (default 0.05)",
    )
    p.add_argument(
        "--beam",
        type=int,
        default=DEFAULT_BEAM_WIDTH,
        help="beam width of aragog (default %(default)s)",
    )
    p.add_argument("--arrival", choices=("poisson", "gamma"), default="poisson")
    p.add_argument(
        "--cv",
        type=float,
        default=2.0,
        help="coefficient of variation of gamma arrivals (default 2)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--round-cost",
        default="measured",
        help="virtual seconds per scheduling round: 'measured' (default; each "
        "round's wall time, results vary slightly between reruns) or a number (bit-reproducible)",
    )
    p.add_argument(
        "--route-cost",
        default="measured",
        help="routing seconds per request: 'measured' from the router or a number",
    )
    p.add_argument(
        "--poll-interval",
        type=float,
        default=0.0,
        help="load metrics scrape interval in s (0: exact load)",
    )
    p.add_argument(
        "--horizon",
        type=float,
        default=None,
        help="stop each run at this virtual time (default 2 x duration)",
    )
    p.add_argument(
        "--workflow-tolerance",
        type=float,
        default=0.02,
        help="per_workflow: the cheapest configuration within this accuracy of c_max on the calibration "
        "split (plus train below 500 inputs; never test) (default 0.02, the budget Aragog is held to)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run, not a comparison: 3 rates, 20 s of arrivals measured after a 10 s warm-up",
    )
    p.add_argument("--no-plots", action="store_true")
    p.add_argument(
        "--compile-cache",
        default=DEFAULT_COMPILE_CACHE,
        help=f"JAX persistent compilation cache directory, or 'none' (default {DEFAULT_COMPILE_CACHE})",
    )
    p.add_argument(
        "--out", required=True, type=Path, help="output directory for summary.json and plots"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _enable_compile_cache(args.compile_cache)
    from aragog_jax.sim import SweepConfig, load_setup, run_sweep, write_summary

    if args.num_requests < 0 or args.num_rates < 1 or args.beam < 1 or args.duration <= 0:
        raise AragogError(
            "--num-rates and --beam must be >= 1, --duration > 0, --num-requests >= 0"
        )
    if args.dense and (args.num_rates < 2 or args.per_knee < 0 or args.min_rates < 2):
        raise AragogError("--dense needs --num-rates >= 2, --per-knee >= 0 and --min-rates >= 2")
    if args.quick:
        print(
            "smoke run (--quick): short runs and 3 rates check that it works; the numbers are not a comparison"
        )
    policies = tuple(x.strip() for x in args.policies.split(",") if x.strip())
    sweep = SweepConfig(
        policies=policies,
        rates=_rates(args.rates),
        num_rates=3 if args.quick else args.num_rates,
        num_requests=args.num_requests,
        duration_s=20.0 if args.quick else args.duration,
        warmup_s=10.0 if args.quick else args.warmup,
        dense=args.dense,
        per_knee=args.per_knee,
        min_rates=args.min_rates,
        round_interval_s=args.round_interval,
        beam_width=args.beam,
        arrival=args.arrival,
        cv=args.cv,
        seed=args.seed,
        round_cost_s=_cost(args.round_cost, "--round-cost"),
        route_cost_s=_cost(args.route_cost, "--route-cost"),
        poll_interval_s=args.poll_interval,
        horizon_s=args.horizon,
        workflow_tolerance=args.workflow_tolerance,
        router=args.router,
    )
    setup = load_setup(
        args.workflow, args.family, gpus=args.gpus, fleet=args.fleet, dataset=args.dataset
    )
    summary = run_sweep(setup, sweep, progress=True, keep_runs=not args.no_plots)
    path = write_summary(summary, args.out, plots=not args.no_plots)
    print(
        f"{summary['workflow']} / {summary['family']} on {summary['num_gpus']} GPUs, masks: {summary['mask_source']}, "
        f"c_max accuracy {summary['c_max_accuracy']:.3f} (every request of the sweep)"
    )
    for p, d in summary["policies"].items():
        top = d["per_rate"][-1]
        print(
            f"  {p:14s} max {d['max_throughput']:7.2f} req/s | at {top['rate']:g} req/s P50 "
            f"{top['latency']['p50']:7.2f}s "
            f"P95 {top['latency']['p95']:7.2f}s | accuracy {d['accuracy']:.3f} "
            f"({100 * (d['accuracy'] - d['c_max_accuracy']):+.1f} pts vs c_max on its completed requests) | "
            f"{d['scheduler_ms_per_round']:.3f} ms/round"
        )
    for k, v in summary["comparison"].items():
        if isinstance(v, dict) and k.startswith("aragog_vs_"):
            print(
                f"  {k}: throughput {v['max_throughput_gain_pct']:+.1f}%, P50 {v['median_latency_change_pct']:+.1f}%, "
                f"P95 {v['p95_latency_change_pct']:+.1f}%"
            )
    for name, lat in summary["comparison"].get("latency_at", {}).items():
        if lat:
            where = "every policy sustains" if name == "common" else "aragog sustains"
            print(
                f"  highest rate {where}: {lat['rate']:g} req/s; P50 "
                + ", ".join(f"{p} {v['p50']:.2f}s" for p, v in lat["latency"].items())
            )
    print(f"wrote {path} ({summary['wall_s']:.1f}s)")
    return 0


if __name__ == "__main__":
    tune_xla()
    raise SystemExit(run_cli(main))
