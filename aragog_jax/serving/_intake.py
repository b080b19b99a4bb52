"""Intake: an admitted run is routed (the workflow's router picks the configurations it
admits) and joins the scheduler's meta-queue.

Routers that run on the loop route in one batch per workflow, at the start of the next
scheduling round, before the run is queued: tens of microseconds, always complete.

A router off the loop (``in_thread``: an embeddings endpoint, anything that may block)
overlaps routing with queueing. The run joins the meta-queue at the next round in
admission order (its FIFO place is its arrival) with ``c_max`` alone, which is always
admitted, and *held*: its stages wait for the router. Each wider admitted set the
router's monotone pruning finds (``Router.route_progressive``: cheapest-first chunks)
widens the queued run's mask (``Scheduler.widen_mask``). The run is released (its stages
become schedulable) when routing completes or when ``budget_s`` has passed since it
arrived, whichever is first; a released run whose routing is still going keeps widening
until its first stage is dispatched (it reached the head of the queue). Then routing
stops for it and it runs with the admitted set found so far, which only grew from
``c_max``. The receipt says how far routing got (``RoutingReceipt``).

While its routing goes on a queued run is *unsettled* (``SchedulerPort.settle`` ends it):
the sweep after an engine goes down spares it, as routing may still admit a
configuration off that engine's model, and it is judged once, on its final mask, when
routing completes.

Why stopping early keeps the accuracy guarantee: the partial set is ``c_max`` plus
configurations the router admits (no fill-in), a subset of the calibrated admitted set
that keeps ``c_max``. The default guarantee (``scheduled``; also ``any``) bounds the rate
at which *some* admitted configuration is inaccurate, and a smaller set never raises
that loss, so whatever the scheduler runs out of the partial set is covered. (The
per-configuration and ``cheapest`` guarantees do not transfer to a subset's cheapest
member in general.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aragog_jax.errors import AragogError, NoViableConfigurationError
from aragog_jax.serving._metrics import ServerMetrics
from aragog_jax.serving._routing import Routed, RouterWorker
from aragog_jax.serving._runs import Overlap, Run
from aragog_jax.serving._sched import SchedulerPort

#: How long a run's stages wait for a router off the loop before they run with the
#: configurations admitted so far: an embeddings call takes ~5-30 ms, a stage seconds.
DEFAULT_ROUTING_BUDGET_S = 0.05


class Intake:
    """Routes admitted runs and queues them; ending a run, asking for a round and judging
    a run whose routing completed are the executor's (callables)."""

    def __init__(
        self,
        routers: dict[str, RouterWorker],
        sched: SchedulerPort,
        metrics: ServerMetrics,
        *,
        finish: Callable[[Run, str, AragogError], None],
        kick: Callable[[], None],
        settled: Callable[[Run], None],
        budget_s: float = DEFAULT_ROUTING_BUDGET_S,
    ):
        self.budget_s = float(budget_s)
        self._settled = settled  # routing completed for a queued run: re-judge its viability
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
        """Route ``run`` at the next round (in its workflow's batch), or start routing it
        off the loop now and queue it, held, at the next round."""
        worker = self.routers[run.wf.name]
        if worker.in_thread:
            loop = asyncio.get_running_loop()
            run.overlap = Overlap(self.budget_s)
            run.routed = worker.provisional()
            task = loop.create_task(self._route_in_thread(run, worker))
            run.tasks.add(task)
            task.add_done_callback(run.tasks.discard)
            run.overlap.timer = loop.call_later(self.budget_s, self._release, run)
        self._unrouted.append(run)
        self.kick()

    async def _route_in_thread(self, run: Run, worker: RouterWorker) -> None:
        try:
            routed = await worker.route(run.input, lambda r: self._widen(run, r))
        except Exception as exc:  # noqa: BLE001
            if run.overlap.used_s is None:  # else the run goes on with what it had
                self._finish(run, "failed", AragogError(f"routing failed: {exc}"))
            return
        self._widen(run, routed)

    def _widen(self, run: Run, routed: Routed) -> bool:
        """A wider admitted set for an overlapped run; returns whether it wants more."""
        ov = run.overlap
        if run.finished or ov.used_s is not None:
            return False
        run.routed = routed
        if ov.queued:
            self.sched.widen(run.id, routed.mask)
        elif not ov.in_intake:  # nothing it had could run here (c_max not servable)
            if routed.complete and not routed.mask.any():
                self._queue(run, routed, time.monotonic())  # fails it, saying why
                return False
            self._enqueue(run, time.monotonic())
        if routed.complete:
            self._fix(run, time.monotonic() - run.t0)
            self._release(run)
            if ov.queued:
                self._settled(run)
            return False
        if not ov.held:
            self.kick()  # a released run may fit somewhere it did not
        return True

    def _release(self, run: Run) -> None:
        """The run's stages stop waiting for the router (routing completed, or the budget
        passed)."""
        ov = run.overlap
        if run.finished or not ov.held:
            return
        ov.held = False
        ov.timer.cancel()
        if ov.queued:
            now = time.monotonic()
            for sid in self.sched.release(run.id):
                run.ready_at[sid] = now
            self.kick()

    def dispatched(self, run: Run, now: float) -> None:
        """The run's first stage is being dispatched: routing stops for it (it runs with
        the admitted set found so far)."""
        if run.overlap.used_s is None:
            self._fix(run, now - run.t0)

    def _fix(self, run: Run, used_s: float) -> None:
        """Routing is over for the run: its mask is final."""
        run.overlap.used_s = used_s
        if run.overlap.queued:
            self.sched.settle(run.id)
        self.metrics.routing_s.observe(used_s)
        self.metrics.admitted.observe(run.routed.num_admitted)

    def _enqueue(self, run: Run, now: float) -> None:
        """An overlapped run joins the meta-queue with what it has (held unless released)."""
        ov = run.overlap
        if run.finished or ov.queued or not run.routed.mask.any():
            return  # c_max is not servable: it joins once routing admits something that is
        try:
            ready = self.sched.add(
                run.id, run.wf, run.routed.mask, held=ov.held, settled=ov.used_s is not None
            )
        except NoViableConfigurationError as exc:
            self._finish(run, "failed", exc)
            return
        ov.queued = True
        run.status = "queued"
        for sid in ready:
            run.ready_at[sid] = now

    def route_admitted(self) -> None:
        """Route every run admitted since the last round (one batch per workflow) and queue
        them in admission order (the scheduler's meta-queue is FIFO)."""
        pending, self._unrouted = self._unrouted, []
        by_wf: dict[str, list[Run]] = {}
        for run in pending:
            if not run.finished and run.overlap is None:
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
            if run.overlap is not None:
                run.overlap.in_intake = False
                if run.routed.complete and not run.routed.mask.any():
                    self._queue(run, run.routed, now)  # routed already; nothing servable
                else:
                    self._enqueue(run, now)
            elif run.id in routed:
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
