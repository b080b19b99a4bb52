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
  (C = 243) over 9 engines with shipped H100 profiles, next to the kernel alone on the
  same round's inputs (``schedule_over_kernel``; target 1.5).
* ``small_rounds``: rounds with 1 to 32 ready stages, with the host path for rounds of at
  most ``SMALL_ROUND_ITEMS`` items (``schedule_ms``) and without it
  (``compiled_schedule_ms``; ratio ``host_over_compiled``), interleaved, next to one kernel
  call in the same buckets with nothing to place (the kernel's empty-call time).
* ``profile`` (``--profile``): cProfile of ``schedule()`` at 1,024 and at 1 ready stage.
  ``--only-schedule`` runs only these three.
* ``sublinear``: headline sizes at R = 128 and R = 1024; ``ratio`` = time(1024) /
  time(128) (8 would be linear).
* ``grid``: R x C x M x B; ``optimality``: U of beam (B = 4) and greedy over U of brute
  force on seeded small instances (mean and 5th percentile of the ratio).

Every kernel case also times the scarcity reservation (``aragog-scarce``) on the same
round in the same run: ``scarce_jit_ms`` and ``rule_ratio`` = scarce_jit_ms / jit_ms
(the reservation's cost per round against the default ``aragog``).

Compilation is excluded; every jitted call ends on the host. The machine is shared:
compare numbers from one run with each other. The schedule() cases count the process's CPU
time (every thread), not wall time, so that other processes on the cores do not count.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
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
    SMALL_ROUND_ITEMS,
    BeamPolicy,
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
#: Round sizes of the ``small_rounds`` case (host path vs compiled kernel).
SMALL_SIZES = (1, 2, 4, 8, 16, 32)
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


def _ms_stats(name: str, times: list[float]) -> dict:
    """Median, minimum and 90th percentile of per-call seconds, in milliseconds."""
    return {
        f"{name}_ms": 1e3 * statistics.median(times),
        f"{name}_ms_min": 1e3 * min(times),
        f"{name}_ms_p90": 1e3 * float(np.percentile(times, 90)),
    }


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
        **_ms_stats("jit", jit_t),
        "reference_ms": ref_ms,
        "speedup": ref_ms / jit_ms,
        "scarce_jit_ms": 1e3 * statistics.median(scarce_t),
        "rule_ratio": 1e3 * statistics.median(scarce_t) / jit_ms,
        "beam_steps": int(result.num_steps),
        "placed": int((np.asarray(result.engine) >= 0).sum()),
        "jit_reps": len(jit_t),
        "reference_reps": len(ref_t),
    }


@functools.cache
def decomposition_space():
    """The shipped decomposition workflow over the qwen family (C = 243), one object."""
    return load_space("decomposition_strategyqa", "qwen")


@functools.cache
def h100_engines() -> tuple[EngineInfo, ...]:
    """9 engines: 3 replicas each of Qwen2.5 7B, 14B (H100 TP1) and 32B (TP2), shipped profiles."""
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
    return tuple(engines)


def schedule_round_setup():
    """A scheduler with 1,024 ready stages of the decomposition workflow and a load with 64
    free slots; returns (scheduler, load, add) where ``add(n)`` appends n new requests."""
    space = decomposition_space()
    engines = h100_engines()
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


class _Capture:
    """Wraps a scheduler's policy and keeps the last round's kernel inputs, so the kernel
    alone can be timed on exactly the round ``schedule()`` just ran."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = inner.name
        self.beam_width = inner.beam_width
        self.compiled = inner.compiled
        self.arrays: RoundArrays | None = None

    def admit(self, space, mask):
        return self.inner.admit(space, mask)

    def assign(self, arrays: RoundArrays):
        self.arrays = arrays
        return self.inner.assign(arrays)


def _timed(fn) -> tuple[float, float]:
    """(CPU seconds of the process, every thread, XLA's included; wall seconds) of one
    ``fn()``: on a shared machine wall time also counts the time other processes hold the
    cores, while process CPU also counts XLA's pool threads spinning after a kernel
    returned (while the host code that follows runs): the two bracket the cost."""
    gc.collect()
    gc.disable()
    w = time.perf_counter()
    t = time.process_time()
    fn()
    elapsed = time.process_time() - t
    wall = time.perf_counter() - w
    gc.enable()
    return elapsed, wall


def _summary(sched_t: list[tuple], kernel_t: list[tuple]) -> dict:
    s_cpu, s_wall = zip(*sched_t, strict=True)
    k_cpu, k_wall = zip(*kernel_t, strict=True)
    s_ms, k_ms = 1e3 * statistics.median(s_cpu), 1e3 * statistics.median(k_cpu)
    sw_ms, kw_ms = 1e3 * statistics.median(s_wall), 1e3 * statistics.median(k_wall)
    return {
        **_ms_stats("schedule", s_cpu),
        **_ms_stats("kernel", k_cpu),
        "host_ms": s_ms - k_ms,
        "schedule_over_kernel": s_ms / k_ms,
        "schedule_wall_ms": sw_ms,
        "kernel_wall_ms": kw_ms,
        "schedule_over_kernel_wall": sw_ms / kw_ms,
        "reps": len(sched_t),
    }


def schedule_round_bench(quick: bool) -> dict:
    """The whole Scheduler.schedule in steady state: 1,024 ready stages every round, next
    to the kernel alone on the same round's inputs (timed right after it).

    Between timed rounds the assigned stages finish (their successors become ready)
    until 1,022 stages are ready, and new requests top the queue up to 1,024.
    """
    sched, load, add = schedule_round_setup()
    capture = sched.policy = _Capture(sched.policy)
    sched.warmup(max_items=1024)
    sched_t, kernel_t, sizes = [], [], []
    for rep in range(1 + (20 if quick else 100)):
        box = []
        elapsed = _timed(lambda: box.append(sched.schedule(load)))
        plan = box[0]
        kernel = jit_round(capture.arrays, capture.beam_width)
        kernel()  # the kernel's first call on these buffers, as schedule() made it
        if rep:
            sched_t.append(elapsed)
            kernel_t.append(_timed(kernel))
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
        **_summary(sched_t, kernel_t),
    }


def small_round_bench(num_ready: int, quick: bool) -> dict:
    """Rounds with ``num_ready`` ready stages (every one placed; its request then leaves
    and a new one keeps ``num_ready`` ready), with the host path for small rounds (the
    default ``aragog`` policy: ``schedule_ms``) and without it (``small_items=0``, every
    round through the compiled kernel: ``compiled_schedule_ms``), interleaved round by
    round on the same requests, next to one kernel call in the same buckets with nothing
    to place (the kernel's empty-call time)."""
    space = decomposition_space()
    engines = h100_engines()
    load = LoadVector.idle(engines)
    scheds, rngs = [], []
    for small in (SMALL_ROUND_ITEMS, 0):
        sched = Scheduler(engines, BeamPolicy(4, small_items=small), spaces=[space])
        sched.warmup(max_items=max(16, num_ready))
        if not small:  # the host path's rounds run straight from the tables: no arrays
            sched.policy = _Capture(sched.policy)
        scheds.append(sched)
        rngs.append(np.random.default_rng(1))
    ids = itertools.count(10**6)

    def top_up(sched, rng) -> None:
        while sched.num_ready < num_ready:
            sched.add_request(next(ids), space, rng.random(space.num_configs) < 0.3)

    for sched, rng in zip(scheds, rngs, strict=True):
        top_up(sched, rng)
        for a in sched.schedule(load).assignments:  # one round to learn its buckets
            sched.cancel(a.request_id)
    arrays = scheds[1].policy.arrays
    # The same buckets with nothing to place: the kernel's empty-call time.
    empty = dataclasses.replace(
        arrays,
        item_viable=np.zeros_like(arrays.item_viable),
        item_valid=np.zeros_like(arrays.item_valid),
        free_slots=np.zeros_like(arrays.free_slots),
        num_items=0,
    )
    kernel = jit_round(empty, 4)
    times: list[list[float]] = [[], [], []]
    placed = []
    for rep in range(1 + (100 if quick else 1000)):
        plans = []
        for k, (sched, rng) in enumerate(zip(scheds, rngs, strict=True)):
            top_up(sched, rng)
            box = []
            elapsed = _timed(lambda sched=sched, box=box: box.append(sched.schedule(load)))
            if rep:
                times[k].append(elapsed)
            plans.append(box[0])
            for a in box[0].assignments:
                sched.cancel(a.request_id)
        if rep:
            times[2].append(_timed(kernel))
        assert [len(p.assignments) for p in plans] == [len(plans[0].assignments)] * 2
        placed.append(len(plans[0].assignments))
    out = {
        "ready_stages": num_ready,
        "placed_per_round": float(np.mean(placed)),
        "in_flight_requests": scheds[0].num_in_flight,
        "host_path": num_ready <= SMALL_ROUND_ITEMS,
        **_summary(times[0], times[2]),
        **_ms_stats("compiled_schedule", [c for c, _ in times[1]]),
    }
    out["host_over_compiled"] = out["schedule_ms"] / out["compiled_schedule_ms"]
    return out


def profile_rounds(quick: bool, top: int = 15) -> dict:
    """cProfile of ``Scheduler.schedule`` at 1,024 and at 1 ready stage: the functions with
    the most own CPU time, in microseconds per round (profiling overhead included)."""
    import cProfile
    import pstats

    out = {}
    for name, num_ready in (("r1024", 1024), ("r1", 1)):
        if num_ready == 1024:
            sched, load, add = schedule_round_setup()
        else:
            space = decomposition_space()
            sched = Scheduler(h100_engines(), "aragog", spaces=[space])
            load = LoadVector.idle(sched.engines)
            ids = itertools.count(10**6)

            def add(n: int, space=space, ids=ids) -> None:
                for _ in range(n):
                    sched.add_request(next(ids), space, np.ones(space.num_configs, dtype=bool))

        sched.warmup(max_items=num_ready)
        rounds = 20 if num_ready == 1024 else 300
        rounds = rounds if quick else 3 * rounds
        prof = cProfile.Profile(time.process_time)
        for _ in range(rounds + 1):
            add(max(0, num_ready - sched.num_ready))
            prof.enable()
            plan = sched.schedule(load)
            prof.disable()
            for a in plan.assignments:
                if num_ready == 1:
                    sched.cancel(a.request_id)  # a new request keeps one stage ready
                    continue
                if sched.num_ready >= num_ready - 2:
                    break
                sched.on_stage_finished(a.request_id, a.stage)
        stats = pstats.Stats(prof).stats
        total = sum(v[2] for v in stats.values())
        rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
        out[name] = {
            "rounds": rounds,
            "total_us_per_round": 1e6 * total / rounds,
            "top_own_time": [
                {
                    "function": f"{Path(f).name}:{line}({fn})",
                    "calls_per_round": v[1] / rounds,
                    "own_us_per_round": 1e6 * v[2] / rounds,
                    "cum_us_per_round": 1e6 * v[3] / rounds,
                }
                for (f, line, fn), v in rows
            ],
        }
    return out


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
    p.add_argument(
        "--profile", action="store_true", help="also cProfile schedule() at 1,024 and 1 ready stage"
    )
    p.add_argument(
        "--only-schedule",
        action="store_true",
        help="only the schedule() cases (schedule_round, small_rounds, --profile)",
    )
    args = p.parse_args(argv)
    quick = args.quick
    jit_time, ref_time = (0.5, 0.3) if quick else (1.5, 1.0)
    t0 = time.perf_counter()
    print(f"device: {jax.devices()[0]}  jax {jax.__version__}  {platform.machine()}", flush=True)

    headline = adversarial = one_slot = sublinear = opt = None
    if not args.only_schedule:
        h = HEADLINE

        def case(**kw) -> dict:
            arrays = make_round(
                h["num_items"], h["num_configs"], h["num_engines"], h["total_free"], **kw
            )
            return {**h, **kw, **compare(arrays, h["beam"], jit_time, ref_time)}

        headline = case()
        print(f"headline: {headline}", flush=True)
        adversarial = case(blocked_share=0.9)
        print(f"adversarial: {adversarial}", flush=True)
        one_slot = case(blocked_share=0.9, blocked_slots=1)
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
    small = {f"r{k}": small_round_bench(k, quick) for k in SMALL_SIZES}
    for k, row in small.items():
        print(f"small_round {k}: {row}", flush=True)
    profile = profile_rounds(quick) if args.profile else None
    if profile:
        for k, row in profile.items():
            print(f"profile {k}: {row['total_us_per_round']:.0f} us/round", flush=True)
            for f in row["top_own_time"]:
                print(
                    f"  {f['own_us_per_round']:8.1f} us own {f['cum_us_per_round']:8.1f} cum "
                    f"{f['calls_per_round']:6.1f} calls  {f['function']}",
                    flush=True,
                )
    grid = []
    if not args.only_schedule:
        opt = optimality(1000)
        print(f"optimality: {opt}", flush=True)
    if not quick and not args.only_schedule:
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
        + (" --only-schedule" if args.only_schedule else "")
        + (" --profile" if args.profile else "")
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
        "small_rounds": small,
        "profile": profile,
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
