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

import gc
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

    Python's cyclic garbage collector is paused for the run (and restored after): the
    event loop allocates a tuple or two per event, which triggers collections that scan
    every object JAX and the process hold (a full one took 0.13-0.23 s on the headline
    case, about once in ten runs, charged to whichever run it fell in) while the run
    itself makes next to no cyclic garbage. Results do not depend on it.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _simulate(setup, cfg, masks, per_workflow_config, on_round, policy)
    finally:
        if enabled:
            gc.enable()


def _simulate(
    setup: Setup,
    cfg: RunConfig,
    masks: np.ndarray,
    per_workflow_config: int | None,
    on_round: Callable[[float], None] | None,
    policy: Policy | None,
) -> RunResult:
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
    # The event loop works on plain Python lists (numpy scalar indexing costs more than
    # the work it indexes); they become the result's arrays at the end.
    row_of = rows.tolist()
    req_tokens = ds.tokens[rows].tolist()  # [n][S][(input, output)] of each request's row
    queued = [INF] * n
    finish = [INF] * n
    config_idx = [-1] * n
    num_admitted = [0] * n
    route_s = np.full(n, float(cfg.route_cost_s))
    stage_models = [[-1] * num_stages for _ in range(n)]  # model id that ran each stage
    stage_engine_counts: dict[str, dict[str, int]] = {s: {} for s in space.stage_names}

    # Arrivals are already in time order, so they stay out of the heap: the loop takes the
    # next one when it sorts before the heap's top by the heap's own key (t, kind, tie),
    # i.e. before anything later and before any other kind at the same time but an
    # engine boundary. The heap then holds only the few engine, round and poll events.
    route_cost = cfg.route_cost_s
    add_times = [t_arr + route_cost for t_arr in arrival.tolist()]
    add_times.append(INF)  # sentinel: no more arrivals
    next_add = 0
    t_add = add_times[0]
    heap: list[tuple] = []
    counter = n
    heappush, heappop = heapq.heappush, heapq.heappop

    poll = cfg.poll_interval_s
    snap = [(0, 0, 0.0)] * len(engines)
    sent_since = [0] * len(engines)
    if poll > 0:
        counter += 1
        heappush(heap, (0.0, _POLL, counter, 0, 0))

    horizon = cfg.horizon_s
    round_interval = cfg.round_interval_s
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

    engine_names = tuple(i.name for i in infos)
    load_of = EngineLoad.of

    def load_vector() -> LoadVector:
        """What ``EngineLoad.observe`` gives for every engine (a vector per round), built
        with ``EngineLoad.of`` from the engine model's own ints and floats."""
        obs = []
        for e, info in enumerate(infos):
            if poll > 0:
                running, waiting, kv = snap[e]
                waiting += sent_since[e]
            else:
                eng = engines[e]
                running, waiting, kv = eng.b, len(eng.waiting), eng.kv_usage()
            obs.append(load_of(info, running, waiting, kv, True))
        return LoadVector.ordered(tuple(obs), engine_names)

    def dispatch(plan_assignments, t: float) -> None:
        nonlocal counter
        for a in plan_assignments:
            e = engine_index[a.engine]
            rid = a.request_id
            s = a.stage
            stage_models[rid][s] = engine_model_id[e]
            counts = stage_engine_counts[a.stage_name]
            counts[a.engine] = counts.get(a.engine, 0) + 1
            p, o = req_tokens[rid][s]
            eng = engines[e]
            if eng.submit(t, (rid, s), p, o) and eng.next_time < INF:
                counter += 1
                heappush(heap, (eng.next_time, _ENGINE, counter, e, eng.version))
            if poll > 0:
                sent_since[e] += 1

    while remaining > 0:
        if heap and (heap[0][0] < t_add or (heap[0][0] == t_add and heap[0][1] == _ENGINE)):
            t, kind, _, a, b = heappop(heap)
        elif t_add < INF:
            t, kind, a = t_add, _ADD, next_add
            next_add += 1
            t_add = add_times[next_add]
        else:
            break  # nothing left to happen
        if t > horizon:
            now = horizon
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
                    config_idx[rid] = cfg_lookup[tuple(stage_models[rid])]
                    remaining -= 1
            if eng.next_time < INF:
                counter += 1
                heappush(heap, (eng.next_time, _ENGINE, counter, a, eng.version))
            dirty = True
        elif kind == _ADD:
            sched.add_request(a, space, masks[row_of[a]])
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
            idle = (
                not heap
                and t_add == INF
                and not round_busy
                and all(eng.next_time == INF for eng in engines)
            )
            idle_polls = idle_polls + 1 if idle else 0
            if idle_polls > 3:
                break  # nothing can move any more: reported as a stall below
            if remaining > 0:
                counter += 1
                heappush(heap, (t + poll, _POLL, counter, 0, 0))
        if tick_pending or not dirty or round_busy:
            # A pending tick means t < last_round + round_interval until the tick itself
            # (which sorts after every other event at its instant) clears it: no round yet.
            continue
        if t_add <= t or (heap and heap[0][0] <= t):
            continue  # finish every event at this instant before planning
        if sched.num_in_flight:
            if t < last_round + round_interval:
                tick_pending = True
                counter += 1
                heappush(heap, (last_round + round_interval, _TICK, counter, 0, 0))
                continue
            dirty = False
            load = load_vector()
            if not any(e.free_slots for e in load.engines):
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
                heappush(heap, (t + cost, _DISPATCH, counter, 0, 0))

    if remaining > 0 and now < cfg.horizon_s and ((not heap and t_add == INF) or idle_polls > 3):
        raise AragogError(
            f"simulation stalled with {remaining} requests unfinished (policy {cfg.policy})"
        )
    return RunResult(
        config=cfg,
        rows=rows,
        arrival=arrival,
        queued=np.asarray(queued, dtype=np.float64),
        finish=np.asarray(finish, dtype=np.float64),
        config_idx=np.asarray(config_idx, dtype=np.int64),
        num_admitted=np.asarray(num_admitted, dtype=np.int64),
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
