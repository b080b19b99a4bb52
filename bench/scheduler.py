"""Scheduler benchmarks: the jitted round vs its pure-Python twin, and optimality.

    python bench/scheduler.py [--quick] --json bench/results/scheduler.json

* ``headline``: R = 1024 ready items, C = 243 configurations, M = 9 engines (3 models x
  3 replicas), B = 4, 64 free slots in total. ``jit_ms`` is one round of the compiled
  ``score_stages`` + ``beam_assign`` from host NumPy inputs to the result on the host
  (what ``Scheduler.schedule`` pays for the kernels); ``reference_ms`` is the NumPy
  ``score_stages`` twin plus the pure-Python ``beam_assign`` twin on the same round.
* ``adversarial``: same sizes, 90% of the items can only use a model whose engines are
  full while the others have the 64 slots. ``adversarial_one_slot``: those engines have
  one free slot each, so the pre-filter cannot drop the blocked items and the search
  walks past them.
* ``schedule_round``: the whole ``Scheduler.schedule`` (state machine, array assembly,
  kernels, commits) on 1,024 ready stages of the shipped decomposition workflow
  (C = 243) over 9 engines with shipped H100 profiles.
* ``sublinear``: headline sizes at R = 128 and R = 1024; ``ratio`` = time(1024) /
  time(128) (8 would be linear).
* ``grid``: R x C x M x B; ``optimality``: U of beam (B = 4) and greedy over U of brute
  force on seeded small instances (mean and 5th percentile of the ratio).

Every kernel case also times the scarcity reservation (``aragog-scarce``) on the same
round in the same run: ``scarce_jit_ms`` and ``rule_ratio`` = scarce_jit_ms / jit_ms
(the reservation's cost per round against the default ``aragog``).

Compilation is excluded; every jitted call ends on the host. The machine is shared:
compare numbers from one run with each other.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

from aragog_jax._provenance import git_sha

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aragog_jax.scheduler import (
    COMPILED,
    COMPILED_SCARCE,
    EngineInfo,
    LoadVector,
    RoundArrays,
    Scheduler,
)
from aragog_jax.scheduler._random import random_round
from aragog_jax.scheduler._round import twin_round
from aragog_jax.space import load_space
from aragog_jax.spec import PROFILES_DIR, load_profile
from bench._timing import time_fn  # noqa: E402

HEADLINE = {"num_items": 1024, "num_configs": 243, "num_engines": 9, "beam": 4, "total_free": 64}
GRID_R, GRID_C, GRID_M, GRID_B = (16, 128, 1024), (27, 243, 4096), (3, 6, 9), (1, 4, 8)


def make_round(num_items, num_configs, num_engines, total_free=64, seed=0, **kw) -> RoundArrays:
    rng = np.random.default_rng(seed)
    arrays, _ = random_round(
        rng,
        num_items=num_items,
        num_configs=num_configs,
        num_engines=num_engines,
        total_free=total_free,
        **kw,
    )
    return arrays


def jit_round(arrays: RoundArrays, beam: int, compiled=COMPILED):
    exe = compiled.compile(arrays, beam)
    args = arrays.kernel_args()

    def run():
        _, result = exe(*args)
        return np.asarray(result.engine)  # on the host, as the scheduler uses it

    return run


def reference_round(arrays: RoundArrays, beam: int):
    return lambda: twin_round(arrays, beam)[1]


def compare(
    arrays: RoundArrays, beam: int, jit_time: float, ref_time: float, ref_reps: int = 3
) -> dict:
    jit_t = time_fn(jit_round(arrays, beam), jit_time)
    scarce_t = time_fn(jit_round(arrays, beam, COMPILED_SCARCE), jit_time)
    ref_t = time_fn(reference_round(arrays, beam), ref_time, min_reps=ref_reps)
    _, result = COMPILED(arrays, beam)
    twin = reference_round(arrays, beam)()
    assert np.array_equal(np.asarray(result.engine), twin.engine), "kernel and twin disagree"
    jit_ms, ref_ms = 1e3 * statistics.median(jit_t), 1e3 * statistics.median(ref_t)
    return {
        "jit_ms": jit_ms,
        "jit_ms_min": 1e3 * min(jit_t),
        "jit_ms_p90": 1e3 * float(np.percentile(jit_t, 90)),
        "reference_ms": ref_ms,
        "speedup": ref_ms / jit_ms,
        "scarce_jit_ms": 1e3 * statistics.median(scarce_t),
        "rule_ratio": 1e3 * statistics.median(scarce_t) / jit_ms,
        "beam_steps": int(result.num_steps),
        "placed": int((np.asarray(result.engine) >= 0).sum()),
        "jit_reps": len(jit_t),
        "reference_reps": len(ref_t),
    }


def schedule_round_setup():
    """A scheduler with 1,024 ready stages of the decomposition workflow and a load with 64
    free slots; returns (scheduler, load, add) where ``add(n)`` appends n new requests."""
    space = load_space("decomposition_strategyqa", "qwen")
    names = {
        "Qwen2.5-7B-Instruct": "qwen2.5-7b-instruct_h100_tp1.toml",
        "Qwen2.5-14B-Instruct": "qwen2.5-14b-instruct_h100_tp1.toml",
        "Qwen2.5-32B-Instruct": "qwen2.5-32b-instruct_h100_tp2.toml",
    }
    engines = [
        EngineInfo.from_profile(
            f"{m.split('-')[1].lower()}-{i}", load_profile(PROFILES_DIR / "engines" / f)
        )
        for m, f in names.items()
        for i in range(3)
    ]
    rng = np.random.default_rng(0)
    sched = Scheduler(engines, "aragog", beam_width=4, spaces=[space])
    ids = itertools.count()

    def add(n: int) -> None:
        for _ in range(n):
            sched.add_request(
                next(ids), space, rng.random(space.num_configs) < rng.uniform(0.05, 0.5)
            )

    # 160 requests past their first stage (3 parallel solvers ready each) + 544 new ones.
    add(160)
    for a in sched.schedule(LoadVector.idle(engines)).assignments:
        sched.on_stage_finished(a.request_id, a.stage)
    add(544)
    assert sched.num_ready == 1024, sched.num_ready
    free = rng.multinomial(64, np.full(len(engines), 1 / len(engines)))
    load = LoadVector.observe(
        engines,
        {
            e.name: {"running": max(0, e.saturation_batch - int(f))}
            for e, f in zip(engines, free, strict=True)
        },
    )
    return sched, load, add


def schedule_round_bench(quick: bool) -> dict:
    """The whole Scheduler.schedule in steady state: 1,024 ready stages every round.

    Between timed rounds the assigned stages finish (their successors become ready)
    until 1,022 stages are ready, and new requests top the queue up to 1,024.
    """
    sched, load, add = schedule_round_setup()
    sched.warmup(max_items=1024)
    times, sizes = [], []
    for rep in range(1 + (20 if quick else 100)):
        gc.collect()
        gc.disable()
        t = time.perf_counter()
        plan = sched.schedule(load)
        elapsed = time.perf_counter() - t
        gc.enable()
        if rep:
            times.append(elapsed)
        sizes.append(len(plan.assignments) + len(plan.skipped))
        for a in plan.assignments:
            if (
                sched.num_ready >= 1022
            ):  # a finish adds up to 3 ready stages; stay in the 1,024 bucket
                break
            sched.on_stage_finished(a.request_id, a.stage)
        add(1024 - sched.num_ready)
    return {
        "ready_stages": int(np.median(sizes)),
        "in_flight_requests": sched.num_in_flight,
        "free_slots": int(load.free_slots().sum()),
        "assigned": len(plan.assignments),
        "schedule_ms": 1e3 * statistics.median(times),
        "schedule_ms_min": 1e3 * min(times),
        "schedule_ms_p90": 1e3 * float(np.percentile(times, 90)),
        "reps": len(times),
    }


def optimality(num_instances: int, beam: int = 4) -> dict:
    """U(beam) / U(brute force) and U(greedy) / U(brute force) on small instances."""
    beam_r, greedy_r = [], []
    zero = 0
    for seed in range(num_instances):
        rng = np.random.default_rng(10_000 + seed)
        num_items = int(rng.integers(2, 8))
        arrays, _ = random_round(
            rng,
            num_items=num_items,
            num_configs=int(rng.choice([8, 27])),
            num_engines=int(rng.integers(2, 5)),
            total_free=int(rng.integers(1, num_items + 1)),
            max_ready=2,
            item_bucket=16,
            cfg_bucket=32,
            slot_bucket=64,
        )
        brute = twin_round(arrays, None)[1]
        if int(brute.utility) <= 0:
            zero += 1
            continue
        wide = int(COMPILED(arrays, beam)[1].utility)
        greedy = int(COMPILED(arrays, 1)[1].utility)
        beam_r.append(wide / int(brute.utility))
        greedy_r.append(greedy / int(brute.utility))
    b, g = np.array(beam_r), np.array(greedy_r)
    return {
        "instances": num_instances,
        "scored": len(beam_r),
        "skipped_zero_optimum": zero,
        "beam_width": beam,
        "beam_mean": float(b.mean()),
        "beam_p5": float(np.percentile(b, 5)),
        "beam_min": float(b.min()),
        "beam_optimal_share": float((b >= 1.0 - 1e-12).mean()),
        "greedy_mean": float(g.mean()),
        "greedy_p5": float(np.percentile(g, 5)),
        "greedy_min": float(g.min()),
        "greedy_optimal_share": float((g >= 1.0 - 1e-12).mean()),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="headline, adversarial, sub-linearity, optimality (< 1 min)",
    )
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    quick = args.quick
    jit_time, ref_time = (0.5, 0.3) if quick else (1.5, 1.0)
    t0 = time.perf_counter()
    print(f"device: {jax.devices()[0]}  jax {jax.__version__}  {platform.machine()}", flush=True)

    h = HEADLINE
    headline_arrays = make_round(
        h["num_items"], h["num_configs"], h["num_engines"], h["total_free"]
    )
    headline = {**h, **compare(headline_arrays, h["beam"], jit_time, ref_time)}
    print(f"headline: {headline}", flush=True)
    adversarial = {
        **h,
        "blocked_share": 0.9,
        **compare(
            make_round(
                h["num_items"],
                h["num_configs"],
                h["num_engines"],
                h["total_free"],
                blocked_share=0.9,
            ),
            h["beam"],
            jit_time,
            ref_time,
        ),
    }
    print(f"adversarial: {adversarial}", flush=True)
    one_slot = {
        **h,
        "blocked_share": 0.9,
        "blocked_slots": 1,
        **compare(
            make_round(
                h["num_items"],
                h["num_configs"],
                h["num_engines"],
                h["total_free"],
                blocked_share=0.9,
                blocked_slots=1,
            ),
            h["beam"],
            jit_time,
            ref_time,
        ),
    }
    print(f"adversarial_one_slot: {one_slot}", flush=True)
    small = compare(
        make_round(128, h["num_configs"], h["num_engines"], h["total_free"]),
        h["beam"],
        jit_time,
        ref_time,
    )
    sublinear = {
        "r128_ms": small["jit_ms"],
        "r1024_ms": headline["jit_ms"],
        "ratio": headline["jit_ms"] / small["jit_ms"],
    }
    print(f"sublinear: {sublinear}", flush=True)
    sched_round = schedule_round_bench(quick)
    print(f"schedule_round: {sched_round}", flush=True)
    opt = optimality(1000)
    print(f"optimality: {opt}", flush=True)

    grid = []
    if not quick:
        for r, c, m, b in itertools.product(GRID_R, GRID_C, GRID_M, GRID_B):
            row = {"num_items": r, "num_configs": c, "num_engines": m, "beam": b}
            row.update(compare(make_round(r, c, m, 64), b, 0.3, 0.3, ref_reps=2))
            grid.append(row)
            print(
                f"grid R={r} C={c} M={m} B={b}: jit {row['jit_ms']:.3f} ms, ref {row['reference_ms']:.2f} ms, "
                f"x{row['speedup']:.0f}",
                flush=True,
            )

    out = {
        "benchmark": "scheduler",
        "command": "python bench/scheduler.py"
        + (" --quick" if quick else "")
        + (f" --json {args.json}" if args.json else ""),
        "git_sha": git_sha(),
        "device": str(jax.devices()[0]),
        "jax_version": jax.__version__,
        "machine": platform.machine(),
        "cpu_count": len(__import__("os").sched_getaffinity(0)),
        "quick": quick,
        "headline": headline,
        "adversarial": adversarial,
        "adversarial_one_slot": one_slot,
        "sublinear": sublinear,
        "schedule_round": sched_round,
        "optimality": opt,
        "grid": grid,
        "wall_s": time.perf_counter() - t0,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
