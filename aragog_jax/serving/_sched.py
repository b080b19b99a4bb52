"""The executor's one door into the scheduler.

The executor speaks in run ids, stage ids and engine names; this port keeps per-run
bookkeeping (which stages are ready, running, done, on which model) and turns a
monitor snapshot into a scheduling round.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aragog_jax.serving._fleet import FleetRuntime, WorkflowRuntime
from aragog_jax.serving._monitor import EngineLoad as MonitorLoad

PENDING, READY, RUNNING, DONE = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class Assignment:
    run_id: str
    stage_id: int
    engine: str


@dataclass(frozen=True, slots=True)
class PlanOut:
    assignments: list[Assignment]
    round_id: int
    record: Any | None = None  # round-replay dump, when the scheduler provides one


@dataclass
class _RunBook:
    wf: WorkflowRuntime
    admitted: np.ndarray  # bool[C] what routing admitted (and the fleet can serve)
    mask: np.ndarray  # bool[C] admitted, still consistent with decisions made
    state: np.ndarray  # int8[S]
    model_of: dict[int, int] = field(default_factory=dict)  # stage -> model id (running or done)
    seq: int = 0


class SchedulerPort:
    def __init__(self, fleet: FleetRuntime):
        self.fleet = fleet
        self.books: dict[str, _RunBook] = {}
        self._seq = itertools.count()
        self._round_ids = itertools.count()
        self.num_pending = 0
        self.engine_sat = {e.name: int(e.profile.saturation_batch) for e in fleet.engines}

    # -- bookkeeping ----------------------------------------------------------------------

    def _ready_now(self, b: _RunBook) -> list[int]:
        up = b.wf.space.upstream
        out = []
        for s in range(b.wf.space.num_stages):
            if b.state[s] == PENDING and all(b.state[u] == DONE for u in up[s]):
                b.state[s] = READY
                out.append(s)
        self.num_pending += len(out)
        return out

    def add(self, run_id: str, wf: WorkflowRuntime, mask: np.ndarray) -> list[int]:
        b = _RunBook(wf, np.array(mask, dtype=bool), np.array(mask, dtype=bool), np.zeros(wf.space.num_stages, np.int8), seq=next(self._seq))
        self.books[run_id] = b
        return self._ready_now(b)

    def _restrict(self, b: _RunBook, sid: int, model_id: int) -> None:
        b.mask &= b.wf.space.configs[:, sid] == model_id

    def finished(self, run_id: str, sid: int, engine: str) -> list[int]:
        b = self.books.get(run_id)
        if b is None:
            return []
        b.state[sid] = DONE
        return self._ready_now(b)

    def release(self, run_id: str, sid: int, engine: str) -> None:
        """A dispatched stage was abandoned (its run ended); nothing to reschedule."""

    def failed(self, run_id: str, sid: int, engine: str, healthy_models: set[str]) -> bool:
        """Put the stage back in the queue; False when no admitted configuration is left."""
        b = self.books.get(run_id)
        if b is None:
            return False
        b.state[sid] = READY
        self.num_pending += 1
        b.model_of.pop(sid, None)
        b.mask = self._base_mask(b)
        return bool(self._viable(b, healthy_models).any())

    def _base_mask(self, b: _RunBook) -> np.ndarray:
        """Admitted configurations consistent with the stages running or done."""
        space = b.wf.space
        mask = b.admitted.copy()
        for s, mid in b.model_of.items():
            mask &= space.configs[:, s] == mid
        return mask

    def _viable(self, b: _RunBook, healthy_models: set[str]) -> np.ndarray:
        space = b.wf.space
        ok_model = np.array([m in healthy_models for m in space.model_names], dtype=bool)
        undecided = [s for s in range(space.num_stages) if b.state[s] in (PENDING, READY)]
        v = b.mask.copy()
        for s in undecided:
            v &= ok_model[space.configs[:, s]]
        return v

    def unviable(self, healthy_models: set[str]) -> list[str]:
        return [rid for rid, b in self.books.items() if not self._viable(b, healthy_models).any()]

    def cancel(self, run_id: str) -> None:
        b = self.books.pop(run_id, None)
        if b is not None:
            self.num_pending -= int((b.state == READY).sum())

    # -- rounds ---------------------------------------------------------------------------

    def schedule(self, loads: list[MonitorLoad]) -> PlanOut:
        """Interim greedy policy: oldest request first; per ready stage, the engine with the
        most free slots among models that keep an admitted configuration."""
        free: dict[str, int] = {}
        for ld in loads:
            f = 0
            if ld.healthy:
                f = max(0, self.engine_sat[ld.engine] - ld.running - ld.waiting)
                if ld.slots_cap is not None:
                    f = min(f, ld.slots_cap)
            free[ld.engine] = f
        engines_of: dict[str, list[str]] = {}
        for e in self.fleet.engines:
            engines_of.setdefault(e.model, []).append(e.name)
        out: list[Assignment] = []
        for rid, b in sorted(self.books.items(), key=lambda kv: kv[1].seq):
            space = b.wf.space
            for sid in np.flatnonzero(b.state == READY).tolist():
                cand = np.unique(space.configs[b.mask, sid])
                best = None
                for mid in cand.tolist():
                    for en in engines_of.get(space.model_names[mid], []):
                        if free[en] > 0 and (best is None or free[en] > free[best[1]]):
                            best = (mid, en)
                if best is None:
                    continue
                mid, en = best
                free[en] -= 1
                b.state[sid] = RUNNING
                b.model_of[sid] = mid
                self._restrict(b, sid, mid)
                self.num_pending -= 1
                out.append(Assignment(rid, sid, en))
        return PlanOut(out, next(self._round_ids))
