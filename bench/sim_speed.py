"""Where the simulator's time goes on the headline case, and before/after in one run.

    python bench/sim_speed.py                          # this checkout
    python bench/sim_speed.py --baseline ../main       # interleaved with another checkout

The headline case of ``bench/paper.py --speed`` (qwen self_refine_humaneval, 8 GPUs,
the top automatic rate, aragog and per_workflow). Per checkout, in a fresh process:

* ``speed``: ``bench/paper.py``'s ``simulator_speed`` (stage completions per wall second
  with each round's measured wall time charged, the scheduler's share, the empty kernel
  call).
* ``breakdown``: the same run with a fixed round cost (1 ms, bit-reproducible) repeated,
  every call into the real scheduler timed: ``schedule()`` (the round), and the
  bookkeeping calls (``add_request``, ``on_stage_finished``, ``viable_mask``, ...); the
  rest is the simulator's own code (event loop, engine models, load vector). Medians
  over the repeats, in microseconds per stage completion and per call.
* ``own``: the simulator's own code alone: the scheduler's answers of that run are
  recorded once and replayed from a stub, so the run does everything but schedule
  (CPU time, the least and the median of the repeats).
* ``rounds``: rounds per stage completion, and the rounds that could not place anything
  (nothing ready; ready stages but no assignment) with their wall time.

With ``--baseline`` the two checkouts alternate ``--repeats`` times and the JSON holds
both and their ratios. Written to ``bench/results/sim_speed.json`` (git SHAs, load average).

``--crossover`` measures instead where the host path for small rounds stops paying
(``SMALL_ROUND_ITEMS``): the headline run (and the same case at ``--rate-factors`` times
its rate, for larger rounds) with a fixed round cost, once with every round on the host
path and once with every round compiled, alternating ``--repeats`` times. Plans are the
same bit for bit, so the runs hold the same rounds: per round the median process CPU of
``schedule()`` on each path (process CPU counts XLA's worker threads too), binned by ready
items, into ``bench/results/sim_speed_crossover.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXED_ROUND_COST_S = 0.001
DEFAULT_OUT = ROOT / "bench/results/sim_speed.json"


def _one(tree: Path, reps: int) -> dict:
    """Measure the package of checkout ``tree`` with this checkout's bench code (run in
    its own process)."""
    sys.path.insert(0, str(tree))
    # First, from tree (a namespace package: tree's portion leads its path, so every
    # submodule comes from there).
    import aragog_jax.sim._driver as driver

    sys.path.insert(0, str(ROOT))  # bench.paper from this checkout
    import numpy as np

    from bench.paper import Settings, _ds, _jax_setup, simulator_speed, speed_case, speed_config

    _jax_setup()
    from aragog_jax._provenance import git_sha
    from aragog_jax.sim import auto_rates, simulate

    st = Settings()
    ds = _ds(st, "self_refine_humaneval", "qwen")
    hs, hm, pwf = speed_case(ds, st)
    rate = auto_rates(hs, st.coarse_rates)[-1]
    out: dict = {
        "git_sha": git_sha(Path(driver.__file__).parent),
        "driver": driver.__file__,
        "rate": rate,
        "speed": simulator_speed(ds, rate, st),
    }
    real = driver.Scheduler
    timed = ("schedule", "add_request", "on_stage_finished", "viable_mask")
    spent = dict.fromkeys(timed, 0.0)
    calls = dict.fromkeys(timed, 0)
    log: dict = {"finished": [], "viable": [], "plans": []}
    rounds: list[tuple[int, int, float]] = []  # (ready items, assignments, wall s)

    class Timed(real):
        """The real scheduler, every call from the driver timed (and its answers kept)."""

        def schedule(self, load):
            n = self.num_ready
            t0 = time.perf_counter()
            plan = super().schedule(load)
            w = time.perf_counter() - t0
            spent["schedule"] += w
            calls["schedule"] += 1
            rounds.append((n, len(plan.assignments), w))
            log["plans"].append(plan)
            return plan

        def add_request(self, *args, **kw):
            t0 = time.perf_counter()
            super().add_request(*args, **kw)
            spent["add_request"] += time.perf_counter() - t0
            calls["add_request"] += 1

        def on_stage_finished(self, request_id, stage):
            t0 = time.perf_counter()
            done = super().on_stage_finished(request_id, stage)
            spent["on_stage_finished"] += time.perf_counter() - t0
            calls["on_stage_finished"] += 1
            log["finished"].append(done)
            return done

        def viable_mask(self, request_id):
            t0 = time.perf_counter()
            mask = super().viable_mask(request_id)
            spent["viable_mask"] += time.perf_counter() - t0
            calls["viable_mask"] += 1
            log["viable"].append(mask)
            return mask

    class Replayed:
        """The recorded answers of the run above, in the order the driver asked."""

        def __init__(self, *args, **kw) -> None:
            self._finished = iter(log["finished"])
            self._viable = iter(log["viable"])
            self._plans = iter(log["plans"])
            self.num_in_flight = 0

        def add_request(self, *args, **kw) -> None:
            self.num_in_flight += 1

        def on_stage_finished(self, request_id, stage) -> bool:
            done = next(self._finished)
            self.num_in_flight -= done
            return done

        def viable_mask(self, request_id):
            return next(self._viable)

        def schedule(self, load):
            return next(self._plans)

    for pol in ("aragog", "per_workflow"):
        cfg = speed_config(st, pol, rate, hm.route_cost_s, FIXED_ROUND_COST_S)
        simulate(hs, cfg, hm.router, per_workflow_config=pwf)  # compile every bucket
        driver.Scheduler = Timed
        rows = []
        try:
            for _ in range(reps):
                for v in log.values():
                    v.clear()
                rounds.clear()
                spent.update(dict.fromkeys(timed, 0.0))
                calls.update(dict.fromkeys(timed, 0))
                res = simulate(hs, cfg, hm.router, per_workflow_config=pwf)
                rows.append({"wall_s": res.sim_wall_s, **spent})
            driver.Scheduler = Replayed
            own = []
            for _ in range(reps):
                t0 = time.thread_time()
                rep = simulate(hs, cfg, hm.router, per_workflow_config=pwf)
                own.append(time.thread_time() - t0)
            if not np.array_equal(rep.finish, res.finish):
                raise RuntimeError("the replayed run differs from the recorded one")
        finally:
            driver.Scheduler = real
        c = res.stage_completions
        med = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
        med["own_s"] = float(np.median([r["wall_s"] - sum(r[k] for k in timed) for r in rows]))
        n, assigned, wall = (np.asarray(x, dtype=np.float64) for x in zip(*rounds, strict=True))
        out[pol] = {
            "stage_completions": c,
            "rounds": res.rounds,
            "rounds_per_completion": res.rounds / c,
            "per_s": c / med["wall_s"],
            "us_per_completion": {k: v / c * 1e6 for k, v in med.items()},
            "us_per_call": {k: med[k] / calls[k] * 1e6 for k in timed if calls[k]},
            "calls": dict(calls),
            "own_cpu_us_per_completion": {
                "min": min(own) / c * 1e6,
                "median": float(np.median(own)) / c * 1e6,
            },
            "rounds_nothing_ready": int((n == 0).sum()),
            "rounds_nothing_ready_wall_s": float(wall[n == 0].sum()),
            "rounds_ready_but_unplaced": int(((n > 0) & (assigned == 0)).sum()),
            "rounds_ready_but_unplaced_wall_s": float(wall[(n > 0) & (assigned == 0)].sum()),
            "mean_ready_per_round": float(n.mean()),
            "mean_assigned_per_round": float(assigned.mean()),
        }
    return out


#: Bins of ready items per round in the ``--crossover`` table (inclusive bounds).
CROSSOVER_BINS = (
    (1, 1),
    (2, 4),
    (5, 8),
    (9, 12),
    (13, 16),
    (17, 20),
    (21, 24),
    (25, 28),
    (29, 32),
    (33, 40),
    (41, 48),
    (49, 64),
    (65, 128),
    (129, 1 << 30),
)
#: ``small_items`` of the two paths: every round on the host / every round compiled.
ALL_HOST, ALL_COMPILED = 1 << 30, 0


def crossover(reps: int, rate_factors: list[float]) -> dict:
    """schedule()'s process CPU per round on the host path vs compiled, by ready items."""
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from bench.paper import Settings, _ds, _jax_setup, speed_case, speed_config

    _jax_setup()
    import aragog_jax.sim._driver as driver
    from aragog_jax._provenance import git_sha
    from aragog_jax.scheduler import SMALL_ROUND_ITEMS, BeamPolicy
    from aragog_jax.sim import auto_rates, simulate

    st = Settings()
    hs, hm, _ = speed_case(_ds(st, "self_refine_humaneval", "qwen"), st)
    top = auto_rates(hs, st.coarse_rates)[-1]
    real = driver.Scheduler
    rounds: list[tuple[int, int, int]] = []  # (ready items, search steps, process CPU ns)

    class Timed(real):
        def schedule(self, load):
            n = self.num_ready
            t0 = time.process_time_ns()
            plan = super().schedule(load)
            rounds.append((n, plan.search_steps, time.process_time_ns() - t0))
            return plan

    out: dict = {"git_sha": git_sha(ROOT), "small_round_items": SMALL_ROUND_ITEMS, "cases": []}
    driver.Scheduler = Timed
    try:
        for factor in rate_factors:
            cfg = speed_config(st, "aragog", top * factor, hm.route_cost_s, FIXED_ROUND_COST_S)
            cpu: dict[int, list[list[int]]] = {ALL_HOST: [], ALL_COMPILED: []}
            finish = {}
            for small in cpu:  # compile every bucket the run needs
                simulate(hs, cfg, hm.router, policy=BeamPolicy(small_items=small))
            for _ in range(reps):
                for small, runs in cpu.items():
                    rounds.clear()
                    res = simulate(hs, cfg, hm.router, policy=BeamPolicy(small_items=small))
                    finish.setdefault(small, res.finish)
                    if not np.array_equal(finish[small], res.finish):
                        raise RuntimeError("a run with a fixed round cost changed its outputs")
                    runs.append([r[2] for r in rounds])
            if not np.array_equal(finish[ALL_HOST], finish[ALL_COMPILED]):
                raise RuntimeError("the host path and the compiled round planned differently")
            items = np.array([r[0] for r in rounds])
            steps = np.array([r[1] for r in rounds])
            med = {
                k: np.median(np.array(v, dtype=np.float64), axis=0) / 1e3 for k, v in cpu.items()
            }
            rows = []
            for lo, hi in CROSSOVER_BINS:
                m = (items >= lo) & (items <= hi)
                if m.any():
                    host, comp = float(med[ALL_HOST][m].mean()), float(med[ALL_COMPILED][m].mean())
                    rows.append(
                        {
                            "items": [lo, min(hi, int(items.max()))],
                            "rounds": int(m.sum()),
                            "mean_search_steps": float(steps[m].mean()),
                            "host_us": host,
                            "compiled_us": comp,
                            "host_over_compiled": host / comp,
                        }
                    )
            out["cases"].append(
                {
                    "rate": top * factor,
                    "rate_factor": factor,
                    "rounds": len(rounds),
                    "rounds_by_items": np.bincount(items).tolist(),
                    "run_ms": {
                        "all_host": float(med[ALL_HOST].sum() / 1e3),
                        "all_compiled": float(med[ALL_COMPILED].sum() / 1e3),
                    },
                    "by_items": rows,
                }
            )
    finally:
        driver.Scheduler = real
    return out


def _measure(tree: Path, reps: int) -> dict:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--one", str(tree), "--repeats", str(reps)],
        cwd=tree,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"sim_speed: the run in {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, help="another checkout to measure alongside")
    ap.add_argument("--repeats", type=int, default=7, help="runs per measurement (default 7)")
    ap.add_argument("--rounds", type=int, default=2, help="alternations with --baseline")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--note", default="", help="said in the JSON (e.g. what the baseline is)")
    ap.add_argument(
        "--crossover",
        action="store_true",
        help="host path vs compiled round per round size (bench/results/sim_speed_crossover.json)",
    )
    ap.add_argument(
        "--rate-factors",
        default="1,1.3",
        help="--crossover: multiples of the headline rate to run (default 1,1.3)",
    )
    ap.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.repeats < 1 or args.rounds < 1:
        print("sim_speed: --repeats and --rounds must be >= 1", file=sys.stderr)
        return 2
    if args.crossover:
        try:
            factors = [float(x) for x in args.rate_factors.split(",")]
        except ValueError:
            factors = []
        if not factors or min(factors) <= 0:
            print(
                f"sim_speed: --rate-factors {args.rate_factors!r}: give positive numbers, comma-separated",
                file=sys.stderr,
            )
            return 2
        out = (
            args.out if args.out != DEFAULT_OUT else ROOT / "bench/results/sim_speed_crossover.json"
        )
        load = os.getloadavg()[0]
        result = {
            "benchmark": "schedule() per round, host path vs compiled, headline case's rounds",
            "command": " ".join(["python bench/sim_speed.py", *sys.argv[1:]]),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **crossover(args.repeats, factors),
            "load_average_1m": [load, os.getloadavg()[0]],
            "note": "2-core machine shared with other jobs; process CPU per round (median over "
            "the repeats), compare within this file only. " + args.note,
        }
        out.write_text(json.dumps(result, indent=1) + "\n")
        for case in result["cases"]:
            print(f"rate x{case['rate_factor']:g}: {case['run_ms']}")
            for row in case["by_items"]:
                print(
                    f"  items {row['items'][0]:>3}-{row['items'][1]:<4} rounds {row['rounds']:>4}  "
                    f"host {row['host_us']:6.0f} us  compiled {row['compiled_us']:6.0f} us  "
                    f"ratio {row['host_over_compiled']:.2f}"
                )
        return 0
    if args.one is not None:
        print(json.dumps(_one(args.one, args.repeats)))
        return 0
    if args.baseline is not None and not (args.baseline / "aragog_jax").is_dir():
        print(f"sim_speed: --baseline {args.baseline}: not a checkout", file=sys.stderr)
        return 2
    trees = {"this": ROOT}
    if args.baseline is not None:
        trees = {"baseline": args.baseline.resolve(), "this": ROOT}
    load = [os.getloadavg()[0]]
    runs: dict[str, list[dict]] = {k: [] for k in trees}
    for _ in range(args.rounds if args.baseline is not None else 1):
        for name, tree in trees.items():
            runs[name].append(_measure(tree, args.repeats))
            load.append(os.getloadavg()[0])
    result = {
        "benchmark": "simulator speed breakdown, headline case (qwen self_refine_humaneval, 8 GPUs, top auto rate)",
        "command": " ".join(["python bench/sim_speed.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_1m": load,
        "note": "2-core machine shared with other jobs; compare within this file only. "
        + args.note,
        "runs": runs,
    }
    if args.baseline is not None:
        best = {k: max(v, key=lambda r: r["aragog"]["per_s"]) for k, v in runs.items()}
        result["ratio_this_over_baseline"] = {
            pol: {
                "per_s (fixed round cost)": best["this"][pol]["per_s"]
                / best["baseline"][pol]["per_s"],
                "own_cpu_min": best["this"][pol]["own_cpu_us_per_completion"]["min"]
                / best["baseline"][pol]["own_cpu_us_per_completion"]["min"],
            }
            for pol in ("aragog", "per_workflow")
        }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result.get("ratio_this_over_baseline", runs["this"][-1]["aragog"]), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
