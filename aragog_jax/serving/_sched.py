"""The executor's one door into the scheduler (:class:`aragog_jax.scheduler.Scheduler`).

Two implementations share one interface: :class:`SchedulerPort` (here) holds the
scheduler in the server's own process; :class:`~._remote.RemotePort` batches the same
calls to a scheduler in another process (``serve --ray``). The executor sees only the
interface: ``add``, ``release``, ``widen``, ``settle``, ``finished``, ``failed``,
``cancel``, ``unviable``, ``round``,
``num_ready``, ``check``, ``attach``, ``open``/``close`` and ``warm_up``.

The executor speaks in run ids, stage indices and engine names, as the scheduler does.
This port adds only what the server needs and the scheduler does not know: the
scheduler's engines built from the fleet, the load monitor's snapshot turned into a
:class:`LoadVector` (free slots capped by each engine's circuit breaker), the stages
that became ready after a finish, and which queued requests have no admitted
configuration left on the engines that are healthy now.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np

from aragog_jax.engines.model import free_slots
from aragog_jax.errors import NoViableConfigurationError
from aragog_jax.scheduler import (
    DEFAULT_BEAM_WIDTH,
    EngineInfo,
    EngineLoad,
    LoadVector,
    Plan,
    Scheduler,
)
from aragog_jax.serving._fleet import FleetRuntime, WorkflowRuntime
from aragog_jax.serving._monitor import EngineReading

#: Ready-item buckets compiled before the server listens (up to WARM_ITEMS), and right
#: after (up to LATE_ITEMS, in a thread; /ready says 503 until they are done). Larger
#: rounds compile on first use.
WARM_ITEMS = 32
LATE_ITEMS = 512


class SchedulerPort:
    def __init__(
        self, fleet: FleetRuntime, policy: str = "aragog", beam_width: int = DEFAULT_BEAM_WIDTH
    ):
        self.fleet = fleet
        self.infos = tuple(
            EngineInfo.from_profile(e.name, e.profile, e.model) for e in fleet.engines
        )
        spaces = [w.space for w in fleet.workflows.values()]
        self.sched = Scheduler(self.infos, policy, beam_width=beam_width, spaces=spaces)
        # Queued runs whose routing is still going (their mask may widen): never unviable
        # yet, as routing may still admit a configuration the healthy engines can run.
        self._unsettled: set[str] = set()
        self._models = frozenset(info.model for info in self.infos)

    # -- the port interface's lifecycle (nothing to do in process) ---------------------

    def attach(self, on_plan, on_fail) -> None:
        """Where plans and failures decided elsewhere go (a local round returns its plan)."""

    def check(self) -> None:
        """Raise when new runs cannot be scheduled (never, in process)."""

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def warm_up(self, max_items: int, min_items: int = 1) -> float:
        """Compile the round for the item buckets from ``min_items`` to ``max_items``
        (executables are shared process-wide); returns the seconds it took."""
        t0 = time.perf_counter()
        self.sched.warmup(max_items, min_items=min_items)
        return time.perf_counter() - t0

    @property
    def num_ready(self) -> int:
        """Ready stages not yet dispatched (the meta-queue gauge)."""
        return self.sched.num_ready

    # -- transitions ----------------------------------------------------------------------

    def add(
        self,
        run_id: str,
        wf: WorkflowRuntime,
        mask: np.ndarray,
        *,
        held: bool = False,
        settled: bool = True,
    ) -> list[int]:
        """Queue a routed run; returns its ready stages (none while ``held``: its stages
        wait for :meth:`release`). ``settled=False``: routing is still going, the mask may
        widen until :meth:`settle`.

        Raises NoViableConfigurationError when nothing admitted can run on this fleet."""
        self.sched.add_request(run_id, wf.space, np.asarray(mask, dtype=bool), held=held)
        if not settled:
            self._unsettled.add(run_id)
        return self.sched.ready_stages(run_id)

    def release(self, run_id: str) -> list[int]:
        """A held run's stages become schedulable; returns them."""
        if not self.sched.is_queued(run_id):
            return []
        return self.sched.release(run_id)

    def widen(self, run_id: str, mask: np.ndarray) -> None:
        """Routing found more: grow a queued run's admitted set (never shrinks it)."""
        if self.sched.is_queued(run_id):
            self.sched.widen_mask(run_id, np.asarray(mask, dtype=bool))

    def settle(self, run_id: str) -> None:
        """Routing for the run is over: its mask is final (:meth:`unviable` judges it)."""
        self._unsettled.discard(run_id)

    def finished(self, run_id: str, sid: int) -> list[int]:
        """A stage returned; returns the stages that became ready."""
        if not self.sched.is_queued(run_id):
            return []
        before = self.sched.ready_stages(run_id)
        if self.sched.on_stage_finished(run_id, sid):
            self._unsettled.discard(run_id)
            return []
        return [s for s in self.sched.ready_stages(run_id) if s not in before]

    def failed(self, run_id: str, sid: int, engine: str) -> bool:
        """Back to the queue without the failed model; False when nothing is left."""
        if not self.sched.is_queued(run_id):
            return False
        try:
            self.sched.on_stage_failed(run_id, sid, engine)
        except NoViableConfigurationError:
            return False
        return True

    def cancel(self, run_id: str) -> None:
        """The run ended: it leaves the meta-queue (if it is still there)."""
        self._unsettled.discard(run_id)
        if self.sched.is_queued(run_id):
            self.sched.cancel(run_id)

    def unviable(self, healthy_models: set[str], run_ids: Iterable[str] | None = None) -> list[str]:
        """Queued runs (of ``run_ids``, default all) whose routing is over and none of
        whose viable configurations avoid unhealthy models."""
        if healthy_models >= self._models:
            return []  # every model can run: a queued run's viable set is never empty
        out = []
        for run_id in list(self.sched.request_ids() if run_ids is None else run_ids):
            if run_id in self._unsettled or not self.sched.is_queued(run_id):
                continue
            space = self.sched.space_of(run_id)
            viable = self.sched.viable_mask(run_id)
            ok_model = np.array([m in healthy_models for m in space.model_names], dtype=bool)
            for s in self.sched.unstarted_stages(run_id):
                viable &= ok_model[space.configs[:, s]]
            if not viable.any():
                out.append(run_id)
        return out

    # -- rounds ---------------------------------------------------------------------------

    def load_vector(self, loads: list[EngineReading]) -> LoadVector:
        by_name = {ld.engine: ld for ld in loads}
        out = []
        for info in self.infos:
            ld = by_name[info.name]
            kv = max(0.0, ld.kv_usage)
            free = free_slots(info.saturation_batch, ld.running, ld.waiting, kv, ld.healthy)
            if ld.slots_cap is not None:
                free = min(free, ld.slots_cap)
            out.append(EngineLoad.of(info, ld.running, ld.waiting, kv, ld.healthy, free))
        return LoadVector.ordered(tuple(out), self.sched.engine_names)

    def round(self, snapshot: Callable[[], list[EngineReading]]) -> Plan | None:
        """One round when stages are ready (None when none are)."""
        if not self.sched.num_ready:
            return None
        return self.schedule(snapshot())

    def schedule(self, loads: list[EngineReading]) -> Plan:
        """One round on the monitor's snapshot (assigned stages are running on return)."""
        return self.sched.schedule(self.load_vector(loads))
