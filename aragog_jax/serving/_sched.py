"""The executor's one door into the scheduler (:class:`aragog_jax.scheduler.Scheduler`).

The executor speaks in run ids, stage ids and engine names. This port turns the load
monitor's snapshot into the scheduler's :class:`LoadVector` (free slots capped by each
engine's circuit breaker), keeps the count of ready stages for the meta-queue gauge,
and answers the one question the scheduler does not: which queued requests have no
admitted configuration left on the engines that are healthy now.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from aragog_jax.engines.model import free_slots
from aragog_jax.errors import NoViableConfigurationError, SchedulerError
from aragog_jax.scheduler import EngineInfo, EngineLoad, LoadVector, Plan, Scheduler
from aragog_jax.serving._fleet import FleetRuntime, WorkflowRuntime
from aragog_jax.serving._monitor import EngineLoad as MonitorLoad

log = logging.getLogger("aragog_jax.serving")

#: Ready-item buckets compiled before the server listens, and right after (in a thread;
#: /ready says 503 until they are done). Larger rounds compile on first use.
WARM_ITEM_BUCKETS = (16, 32)
LATE_ITEM_BUCKETS = (64, 128, 256, 512)


@dataclass(frozen=True, slots=True)
class Assignment:
    run_id: str
    stage_id: int
    engine: str


@dataclass(frozen=True, slots=True)
class PlanOut:
    assignments: list[Assignment]
    round_id: int
    record: RoundRecord | None = None


@dataclass(frozen=True, slots=True)
class RoundRecord:
    """A scheduling round kept for replay; rendered only when asked for."""

    round_id: int
    plan: Plan
    at: float

    def replay(self) -> dict[str, Any]:
        """Exactly the round-replay CLI's input (``python -m aragog_jax.schedule``)."""
        return self.plan.to_replay()

    def dump(self) -> dict[str, Any]:
        return {
            "round_id": self.round_id,
            "policy": self.plan.policy,
            "round": self.replay(),
            "decision": self.plan.decision(),
        }


class SchedulerPort:
    def __init__(self, fleet: FleetRuntime, policy: str = "aragog", beam_width: int = 4):
        self.fleet = fleet
        self.infos = tuple(
            EngineInfo.from_profile(e.name, e.profile, e.model) for e in fleet.engines
        )
        spaces = [w.space for w in fleet.workflows.values()]
        self.sched = Scheduler(self.infos, policy, beam_width=beam_width, spaces=spaces)
        self._round_ids = itertools.count()
        self.num_pending = 0  # ready stages not yet dispatched (the meta-queue gauge)
        self._runs: dict[
            str, tuple[WorkflowRuntime, set[int]]
        ] = {}  # run -> (workflow, ready stages)

    # -- start-up -------------------------------------------------------------------------

    def warm_up(self, item_buckets: tuple[int, ...] = WARM_ITEM_BUCKETS) -> float:
        """Compile the round function for the common buckets on a throwaway scheduler
        (executables are shared process-wide), so the first requests do not pay for it."""
        t0 = time.perf_counter()
        wf = next(iter(self.fleet.workflows.values()))
        for n in item_buckets:
            tmp = Scheduler(
                self.infos,
                self.sched.policy,
                spaces=[w.space for w in self.fleet.workflows.values()],
            )
            sources = sum(1 for u in wf.space.upstream if not u)
            for i in range(max(1, n // max(1, sources))):
                tmp.add_request(("warm", i), wf.space, wf.servable)
            tmp.schedule(LoadVector.idle(self.infos))
        return time.perf_counter() - t0

    # -- transitions ----------------------------------------------------------------------

    def _ready_ids(self, run_id: str, wf: WorkflowRuntime) -> set[int]:
        status = self.sched.stage_status(run_id)
        return {wf.stage_index[n] for n, s in status.items() if s == "ready"}

    def add(self, run_id: str, wf: WorkflowRuntime, mask: np.ndarray) -> list[int]:
        """Queue a routed run; returns its ready stages.

        Raises NoViableConfigurationError when nothing admitted can run on this fleet."""
        self.sched.add_request(run_id, wf.space, np.asarray(mask, dtype=bool))
        ready = self._ready_ids(run_id, wf)
        self._runs[run_id] = (wf, ready)
        self.num_pending += len(ready)
        return sorted(ready)

    def finished(self, run_id: str, sid: int, engine: str) -> list[int]:
        """A stage returned; returns the stages that became ready."""
        entry = self._runs.get(run_id)
        if entry is None:
            return []
        wf, ready = entry
        if self.sched.on_stage_finished(run_id, sid):
            self._forget(run_id)
            return []
        now_ready = self._ready_ids(run_id, wf)
        new = now_ready - ready
        ready |= new
        self.num_pending += len(new)
        return sorted(new)

    def failed(self, run_id: str, sid: int, engine: str) -> bool:
        """Back to the queue without the failed model; False when nothing is left."""
        entry = self._runs.get(run_id)
        if entry is None:
            return False
        try:
            self.sched.on_stage_failed(run_id, sid, engine)
        except NoViableConfigurationError:
            self._forget(run_id)
            return False
        entry[1].add(sid)
        self.num_pending += 1
        return True

    def release(self, run_id: str, sid: int, engine: str) -> None:
        """A dispatched stage was abandoned because its run ended (already cancelled)."""

    def cancel(self, run_id: str) -> None:
        if run_id in self._runs:
            self._forget(run_id)
            try:
                self.sched.cancel(run_id)
            except SchedulerError:
                pass

    def _forget(self, run_id: str) -> None:
        _, ready = self._runs.pop(run_id)
        self.num_pending -= len(ready)

    def unviable(self, healthy_models: set[str]) -> list[str]:
        """Queued runs none of whose viable configurations avoid unhealthy models."""
        out = []
        for run_id, (wf, _) in self._runs.items():
            space = wf.space
            viable = self.sched.viable_mask(run_id)
            ok_model = np.array([m in healthy_models for m in space.model_names], dtype=bool)
            for name, st in self.sched.stage_status(run_id).items():
                if st in ("waiting", "ready"):
                    viable &= ok_model[space.configs[:, wf.stage_index[name]]]
            if not viable.any():
                out.append(run_id)
        return out

    # -- rounds ---------------------------------------------------------------------------

    def load_vector(self, loads: list[MonitorLoad]) -> LoadVector:
        by_name = {ld.engine: ld for ld in loads}
        out = []
        for info in self.infos:
            ld = by_name[info.name]
            kv = max(0.0, ld.kv_usage)
            free = free_slots(info.saturation_batch, ld.running, ld.waiting, kv, ld.healthy)
            if ld.slots_cap is not None:
                free = min(free, ld.slots_cap)
            out.append(
                EngineLoad(
                    name=info.name,
                    model=info.model,
                    saturation_batch=info.saturation_batch,
                    curve=info.curve,
                    running=ld.running,
                    waiting=ld.waiting,
                    kv_usage=kv,
                    healthy=ld.healthy,
                    free_slots=free,
                )
            )
        return LoadVector(tuple(out))

    def schedule(self, loads: list[MonitorLoad]) -> PlanOut:
        plan = self.sched.schedule(self.load_vector(loads))
        rid = next(self._round_ids)
        out = []
        for a in plan.assignments:
            out.append(Assignment(a.request_id, a.stage, a.engine))
            self._runs[a.request_id][1].discard(a.stage)
        self.num_pending -= len(out)
        return PlanOut(
            out, rid, RoundRecord(rid, plan, time.monotonic()) if (out or plan.skipped) else None
        )
