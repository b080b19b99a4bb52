"""Intake: an admitted run is routed (the workflow's router picks the configurations it
admits) and joins the scheduler's meta-queue.

Routers that run on the loop route in one batch per workflow, at the start of the next
scheduling round; a router that runs in a thread routes each run as it is admitted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aragog_jax.errors import AragogError, NoViableConfigurationError
from aragog_jax.serving._metrics import ServerMetrics
from aragog_jax.serving._routing import Routed, RouterWorker
from aragog_jax.serving._runs import Run
from aragog_jax.serving._sched import SchedulerPort


class Intake:
    """Routes admitted runs and queues them; ending a run and asking for a round are the
    executor's (callables)."""

    def __init__(
        self,
        routers: dict[str, RouterWorker],
        sched: SchedulerPort,
        metrics: ServerMetrics,
        *,
        finish: Callable[[Run, str, AragogError], None],
        kick: Callable[[], None],
    ):
        self.routers = routers
        self.sched = sched
        self.metrics = metrics
        self._finish = finish
        self.kick = kick
        self._unrouted: list[Run] = []  # runs admitted since the last round, in admission order

    @property
    def pending(self) -> bool:
        """Whether runs wait to be routed at the next round."""
        return bool(self._unrouted)

    def add(self, run: Run) -> None:
        """Route ``run`` now (in a thread) or at the next round (in its workflow's batch)."""
        if self.routers[run.wf.name].in_thread:
            task = asyncio.get_running_loop().create_task(self._route_in_thread(run))
            run.tasks.add(task)
            task.add_done_callback(run.tasks.discard)
        else:
            self._unrouted.append(run)
            self.kick()

    async def _route_in_thread(self, run: Run) -> None:
        try:
            routed = await self.routers[run.wf.name].route(run.input)
        except Exception as exc:  # noqa: BLE001
            self._finish(run, "failed", AragogError(f"routing failed: {exc}"))
            return
        self._queue(run, routed, time.monotonic())
        self.kick()

    def route_admitted(self) -> None:
        """Route every run admitted since the last round (one batch per workflow) and queue
        them in admission order (the scheduler's meta-queue is FIFO)."""
        pending, self._unrouted = self._unrouted, []
        by_wf: dict[str, list[Run]] = {}
        for run in pending:
            if not run.finished:
                by_wf.setdefault(run.wf.name, []).append(run)
        routed: dict[str, Routed] = {}  # run id -> its routing
        for name, runs in by_wf.items():
            try:
                rows = self.routers[name].route_batch([r.input for r in runs])
            except Exception as exc:  # noqa: BLE001 - handed to every run of the batch
                for run in runs:
                    self._finish(run, "failed", AragogError(f"routing failed: {exc}"))
                continue
            routed.update((run.id, r) for run, r in zip(runs, rows, strict=True))
        now = time.monotonic()
        for run in pending:
            if run.id in routed:
                self._queue(run, routed[run.id], now)

    def _queue(self, run: Run, routed: Routed, now: float) -> None:
        """A routed run joins the scheduler's meta-queue (or fails: nothing admitted can run)."""
        if run.finished:
            return
        run.routed = routed
        self.metrics.routing_s.observe(routed.routing_s)
        self.metrics.admitted.observe(routed.num_admitted)
        if not routed.mask.any():
            self._finish(
                run,
                "failed",
                NoViableConfigurationError(
                    f"{run.wf.name}: no admitted configuration can run on this fleet"
                ),
            )
            return
        run.status = "queued"
        try:
            ready = self.sched.add(run.id, run.wf, routed.mask)
        except NoViableConfigurationError as exc:
            self._finish(run, "failed", exc)
            return
        for sid in ready:
            run.ready_at[sid] = now

    # -- rounds -------------------------------------------------------------------------
