"""The fleet simulator: the real :class:`~aragog_jax.scheduler.Scheduler` on a virtual clock.

One run = one policy at one arrival rate. Requests arrive (Poisson or gamma), wait for
their admitted mask (routing time is charged for router-based policies: the request
joins the meta-queue that much later), join the scheduler's meta-queue, and every stage
the scheduler assigns runs on a :class:`~aragog_jax.engines.BatchingEngine` with the
dataset's token counts for that input and stage. Routing thus overlaps the first
stage's queueing as in the paper (and as the server does: it routes at the start of the
first round after arrival): the first stage leaves at ``max(arrival + routing, the
first round with a free slot after that)``, so routing adds latency only when a round
falls inside the routing window; it can also move the request behind others that
arrived during that window. A scheduling round runs whenever something changed (an arrival, a
completion, a poll) and some engine has a free slot; its wall time is measured and
charged to the virtual clock (or a fixed cost, for bit-reproducible runs): the plan is
dispatched when the round would have finished, and no other round runs meanwhile.

Events at equal times are processed in a fixed order (engine boundaries, then
arrivals, then dispatches, then polls; ties by insertion), so a run is a deterministic
function of its seed when the round cost is fixed.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from aragog_jax.engines.batching import BatchingEngine
from aragog_jax.errors import AragogError
from aragog_jax.scheduler import (
    COMPILED,
    DEFAULT_BEAM_WIDTH,
    EngineInfo,
    EngineLoad,
    LoadVector,
    Policy,
    Scheduler,
)
from aragog_jax.sim._setup import Setup
from aragog_jax.sim._workload import arrival_times, sample_inputs

_ENGINE, _ADD, _DISPATCH, _POLL, _TICK = 0, 1, 2, 3, 4
INF = math.inf


@dataclass(frozen=True)
class RunConfig:
    """One simulation run.

    Attributes:
      policy: scheduler policy name (aragog, greedy, per_input, per_workflow).
      rate: mean arrival rate, requests/s.
      num_requests: requests to simulate; 0: every arrival within ``duration_s``.
      duration_s: arrival window when ``num_requests`` is 0.
      beam_width: B of the aragog policy.
      arrival: ``poisson`` or ``gamma``; ``cv`` is gamma's coefficient of variation.
      seed: seeds arrivals and input sampling (the same for every policy at a rate, so
        policies see the same requests at the same times).
      route_cost_s: virtual seconds between arrival and joining the meta-queue.
      round_cost_s: seconds charged per scheduling round; None charges each round's
        measured wall time.
      poll_interval_s: 0 gives the scheduler exact engine load; > 0 gives it the engine
        metrics scraped every interval plus the stages it sent since the last scrape.
      horizon_s: stop at this virtual time; requests not finished are reported.
      round_interval_s: least virtual time between the starts of two rounds (the
        server's scheduling-loop period); events in between are planned together.
    """

    policy: str
    rate: float
    num_requests: int = 0
    duration_s: float = 60.0
    beam_width: int = DEFAULT_BEAM_WIDTH
    arrival: str = "poisson"
    cv: float = 2.0
    seed: int = 0
    route_cost_s: float = 0.0
    round_cost_s: float | None = None
    poll_interval_s: float = 0.0
    horizon_s: float = INF
    round_interval_s: float = 0.0


@dataclass(eq=False)
class RunResult:
    """Per-request outcomes and counters of one run (arrays indexed by request)."""

    config: RunConfig
    rows: np.ndarray  # int64[N] dataset row of each request
    arrival: np.ndarray  # float64[N]
    queued: np.ndarray  # float64[N] time it joined the meta-queue (after routing)
    finish: np.ndarray  # float64[N] completion time (inf: unfinished at the horizon)
    config_idx: np.ndarray  # int64[N] realised configuration (-1: unfinished)
    num_admitted: np.ndarray  # int64[N] configurations the request was admitted with
    route_s: np.ndarray  # float64[N] routing time charged
    stage_completions: int = 0
    rounds: int = 0
    round_wall_s: list[float] = field(default_factory=list)
    round_steps: list[int] = field(
        default_factory=list
    )  # search steps of each round in round_wall_s
    sim_wall_s: float = 0.0
    end_time: float = 0.0
    engine_busy_s: dict[str, float] = field(default_factory=dict)
    engine_tokens: dict[str, int] = field(default_factory=dict)
    stage_engine_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    compiled_rounds: int = 0
    stage_done_at: np.ndarray = field(
        default_factory=lambda: np.zeros(0)
    )  # float64[stage completions]

    @property
    def latency(self) -> np.ndarray:
        return self.finish - self.arrival

    @property
    def num_unfinished(self) -> int:
        return int((~np.isfinite(self.finish)).sum())


def simulate(
    setup: Setup,
    cfg: RunConfig,
    masks: np.ndarray,
    *,
    per_workflow_config: int | None = None,
    on_round: Callable[[float], None] | None = None,
    policy: Policy | None = None,
) -> RunResult:
    """Run one policy at one rate.

    Args:
      setup: fleet, space and dataset.
      cfg: the run's parameters.
      masks: bool[N_dataset, C] admitted configurations per dataset row (router or
        oracle masks; per_input picks the cheapest admitted one, per_workflow ignores it).
      per_workflow_config: configuration index of the per_workflow policy.
      policy: a policy object to schedule with instead of ``cfg.policy``'s (e.g. one
        that records the rounds it is asked to assign).
    """
    space = setup.space
    ds = setup.dataset
    wall0 = time.perf_counter()
    engines = [BatchingEngine(e.name, e.model, e.profile) for e in setup.engines]
    infos = [EngineInfo.from_profile(e.name, e.profile) for e in setup.engines]
    per_wf = {space.workflow: int(per_workflow_config)} if per_workflow_config is not None else None
    sched = Scheduler(
        infos,
        policy if policy is not None else cfg.policy,
        beam_width=cfg.beam_width,
        per_workflow=per_wf,
        spaces=[space],
    )
    model_index = {m: i for i, m in enumerate(space.model_names)}
    engine_model_id = [model_index[e.model] for e in setup.engines]
    engine_index = {e.name: i for i, e in enumerate(setup.engines)}
    num_stages = space.num_stages
    # Realised configuration lookup: tuple of model ids per stage -> configuration index.
    cfg_lookup = {tuple(int(m) for m in row): i for i, row in enumerate(space.configs)}

    if cfg.num_requests > 0:
        n = int(cfg.num_requests)
        arrival = arrival_times(n, cfg.rate, cfg.arrival, cv=cfg.cv, seed=cfg.seed + 1)
    else:  # every arrival within cfg.duration_s
        guess = int(cfg.rate * cfg.duration_s * 2 + 100)
        arrival = arrival_times(guess, cfg.rate, cfg.arrival, cv=cfg.cv, seed=cfg.seed + 1)
        arrival = arrival[arrival <= cfg.duration_s]
        n = int(arrival.size)
    rows = sample_inputs(setup.rows, n, seed=cfg.seed)
    tokens = ds.tokens  # [N_ds, S, 2]
    queued = np.full(n, INF)
    finish = np.full(n, INF)
    config_idx = np.full(n, -1, dtype=np.int64)
    num_admitted = np.zeros(n, dtype=np.int64)
    route_s = np.full(n, float(cfg.route_cost_s))
    stage_models = np.full((n, num_stages), -1, dtype=np.int64)
    stage_engine_counts: dict[str, dict[str, int]] = {s: {} for s in space.stage_names}

    heap: list[tuple] = []
    counter = 0
    for i in range(n):
        heap.append((float(arrival[i]) + cfg.route_cost_s, _ADD, i, i, 0))
    counter = n
    heapq.heapify(heap)

    def push_engine(e: int) -> None:
        nonlocal counter
        eng = engines[e]
        if eng.next_time < INF:
            counter += 1
            heapq.heappush(heap, (eng.next_time, _ENGINE, counter, e, eng.version))

    poll = cfg.poll_interval_s
    snap = [(0, 0, 0.0)] * len(engines)
    sent_since = [0] * len(engines)
    if poll > 0:
        counter += 1
        heapq.heappush(heap, (0.0, _POLL, counter, 0, 0))

    round_busy = False
    last_round = -INF
    tick_pending = False
    compiled_rounds = 0
    idle_polls = 0
    pending_plan: tuple = ()
    dirty = False
    rounds = 0
    round_wall: list[float] = []
    round_steps: list[int] = []
    completions = 0
    stage_times: list[float] = []
    remaining = n
    now = 0.0

    def load_vector() -> LoadVector:
        if poll > 0:
            obs = [
                EngineLoad.observe(
                    info,
                    running=snap[e][0],
                    waiting=snap[e][1] + sent_since[e],
                    kv_usage=snap[e][2],
                )
                for e, info in enumerate(infos)
            ]
        else:
            obs = [
                EngineLoad.observe(
                    info, running=eng.b, waiting=len(eng.waiting), kv_usage=eng.kv_usage()
                )
                for info, eng in zip(infos, engines, strict=True)
            ]
        return LoadVector(tuple(obs))

    def dispatch(plan_assignments, t: float) -> None:
        for a in plan_assignments:
            e = engine_index[a.engine]
            rid = a.request_id
            s = a.stage
            stage_models[rid, s] = engine_model_id[e]
            counts = stage_engine_counts[a.stage_name]
            counts[a.engine] = counts.get(a.engine, 0) + 1
            row = rows[rid]
            if engines[e].submit(t, (rid, s), int(tokens[row, s, 0]), int(tokens[row, s, 1])):
                push_engine(e)
            if poll > 0:
                sent_since[e] += 1

    while heap and remaining > 0:
        t, kind, _, a, b = heapq.heappop(heap)
        if t > cfg.horizon_s:
            now = cfg.horizon_s
            break
        now = t
        if kind == _ENGINE:
            eng = engines[a]
            if b != eng.version:
                continue  # stale entry
            for rid, s in eng.on_event(t):
                completions += 1
                stage_times.append(t)
                if sched.on_stage_finished(rid, s):
                    finish[rid] = t
                    config_idx[rid] = cfg_lookup[tuple(int(m) for m in stage_models[rid])]
                    remaining -= 1
            push_engine(a)
            dirty = True
        elif kind == _ADD:
            row = rows[a]
            mask = masks[row]
            sched.add_request(a, space, mask)
            queued[a] = t
            num_admitted[a] = int(np.count_nonzero(sched.viable_mask(a)))
            dirty = True
        elif kind == _DISPATCH:
            dispatch(pending_plan, t)
            round_busy = False
            # No dirty flag here: the round already placed everything that had a free
            # slot; only events during the round (which set it) can enable more.
        elif kind == _TICK:
            tick_pending = False
        else:  # _POLL
            snap = [(eng.b, len(eng.waiting), eng.kv_usage()) for eng in engines]
            sent_since = [0] * len(engines)
            dirty = True
            idle = not heap and not round_busy and all(eng.next_time == INF for eng in engines)
            idle_polls = idle_polls + 1 if idle else 0
            if idle_polls > 3:
                break  # nothing can move any more: reported as a stall below
            if remaining > 0:
                counter += 1
                heapq.heappush(heap, (t + poll, _POLL, counter, 0, 0))
        if heap and heap[0][0] <= t:
            continue  # finish every event at this instant before planning
        if dirty and not round_busy and sched.num_in_flight:
            if t < last_round + cfg.round_interval_s:
                if not tick_pending:
                    tick_pending = True
                    counter += 1
                    heapq.heappush(heap, (last_round + cfg.round_interval_s, _TICK, counter, 0, 0))
                continue
            dirty = False
            load = load_vector()
            if not load.free_slots().any():
                continue
            last_round = t
            num_buckets = len(COMPILED.buckets)
            w0 = time.perf_counter()
            plan = sched.schedule(load)
            w = time.perf_counter() - w0
            rounds += 1
            if len(COMPILED.buckets) != num_buckets:
                # This round compiled a new bucket (a server compiles them at start-up):
                # charge the median of the rounds so far instead, and keep it out of
                # the per-round statistics.
                compiled_rounds += 1
                w = float(np.median(round_wall)) if round_wall else 0.0
            else:
                round_wall.append(w)
                round_steps.append(plan.search_steps)
            if on_round is not None:
                on_round(w)
            if not plan.assignments:
                continue
            cost = w if cfg.round_cost_s is None else cfg.round_cost_s
            if cost <= 0:
                dispatch(plan.assignments, t)
            else:
                pending_plan = plan.assignments
                round_busy = True
                counter += 1
                heapq.heappush(heap, (t + cost, _DISPATCH, counter, 0, 0))

    if remaining > 0 and now < cfg.horizon_s and (not heap or idle_polls > 3):
        raise AragogError(
            f"simulation stalled with {remaining} requests unfinished (policy {cfg.policy})"
        )
    return RunResult(
        config=cfg,
        rows=rows,
        arrival=arrival,
        queued=queued,
        finish=finish,
        config_idx=config_idx,
        num_admitted=num_admitted,
        route_s=route_s,
        stage_completions=completions,
        rounds=rounds,
        round_wall_s=round_wall,
        round_steps=round_steps,
        sim_wall_s=time.perf_counter() - wall0,
        end_time=now,
        engine_busy_s={e.name: e.busy_s for e in engines},
        engine_tokens={e.name: e.tokens_out for e in engines},
        stage_engine_counts=stage_engine_counts,
        compiled_rounds=compiled_rounds,
        stage_done_at=np.asarray(stage_times),
    )
