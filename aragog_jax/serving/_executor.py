"""Workflow execution: requests in, scheduling rounds, stage dispatches, receipts out.

The executor is the one entry point from coroutines to the (synchronous) scheduler.
A scheduling round runs when something changed: a request arrived, a stage finished
or failed, or the load monitor saw an engine's load or health change. Rounds are
coalesced (many triggers in one loop iteration give one round) and never polled.
A round first routes, in one batch per workflow, the requests admitted since the last
round (routers that run on the loop; see :mod:`._routing`) and queues them, so a
request arriving in one loop turn is routed, queued and dispatched in the next.

Faults: an engine error marks the engine (circuit breaker) and the stage goes back to
the scheduler, which places it on another model that keeps an admitted configuration.
When none is left the request fails with :class:`NoViableConfigurationError` (503); an
engine that rejects the request itself (4xx) fails it with :class:`UpstreamError` (502).
Every accepted request ends in exactly one of: completed, failed, expired, cancelled.

Streaming: a run admitted with ``stream=True`` gets an ``events`` queue of
:class:`StageFinished` (each stage, as it ends) and :class:`OutputDelta` (the output
stage's text, as its engine produces it; upstream stages are not streamed), closed by
``None`` when the run ends. An output stage that is a stage function is not streamed
token by token: its result comes as one delta when it returns. Failover keeps its rule
until the first delta is out; after that the client holds part of a reply that another
engine would not continue, so an engine failure ends the run (502) instead.

The executor owns the runs and their endings; it composes :class:`~._intake.Intake`
(routing and queueing admitted runs) and :class:`~._dispatch.StageDispatcher` (a stage
on its engine, its result and failover). The records are in :mod:`._runs`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from typing import TYPE_CHECKING

from aragog_jax.engines.client import ClientLimits, EngineClient
from aragog_jax.errors import (
    AragogError,
    DeadlineExceededError,
    OverloadedError,
)
from aragog_jax.scheduler import DEFAULT_BEAM_WIDTH, Plan
from aragog_jax.serving._breaker import BreakerState, CircuitBreaker
from aragog_jax.serving._dispatch import MAX_ATTEMPTS_PER_STAGE, StageDispatcher
from aragog_jax.serving._fleet import FleetRuntime
from aragog_jax.serving._intake import DEFAULT_ROUTING_BUDGET_S, Intake
from aragog_jax.serving._metrics import ServerMetrics
from aragog_jax.serving._monitor import EngineLoadState, LoadMonitor
from aragog_jax.serving._routing import RouterWorker
from aragog_jax.serving._runs import (
    OutputDelta,
    Run,
    RunResult,
    StageFinished,
    close_part,
    receipt_of,
)
from aragog_jax.serving._sched import SchedulerPort

if TYPE_CHECKING:
    from aragog_jax.serving._remote import RemotePort

__all__ = [
    "MAX_ATTEMPTS_PER_STAGE",
    "Executor",
    "OutputDelta",
    "Run",
    "RunResult",
    "StageFinished",
    "close_part",
]

log = logging.getLogger("aragog_jax.serving")


class Executor:
    """Lifecycle: ``await open()`` (clients, monitor), then ``submit``; ``await close()``."""

    def __init__(
        self,
        fleet: FleetRuntime,
        engine_urls: dict[str, str],
        metrics: ServerMetrics,
        *,
        keep_rounds: int = 256,
        policy: str = "aragog",
        beam_width: int = DEFAULT_BEAM_WIDTH,
        routing_budget_s: float = DEFAULT_ROUTING_BUDGET_S,
        port: RemotePort | None = None,
    ):
        self.fleet = fleet
        self.settings = fleet.settings
        self.metrics = metrics
        limits = ClientLimits(
            request_timeout_s=self.settings.engine_timeout_s,
            connect_timeout_s=min(5.0, self.settings.engine_timeout_s),
            max_connections=max(64, self.settings.max_queue),
        )
        self.engines: dict[str, EngineLoadState] = {}
        for e in fleet.engines:
            client = EngineClient(e.name, engine_urls[e.name], e.served_model, limits)
            self.engines[e.name] = EngineLoadState(client, e.model, CircuitBreaker())
        self.monitor = LoadMonitor(
            list(self.engines.values()), poll_s=self.settings.metrics_poll_s, on_change=self.kick
        )
        # In process (the default), or batched to the scheduler deployment (serve --ray),
        # whose own load monitor then watches the engines (this one is not started).
        self.sched = port if port is not None else SchedulerPort(fleet, policy, beam_width)
        self.sched.attach(self.apply_plan, self._fail_run)
        self._monitoring = port is None
        self.routers = {name: RouterWorker(wf) for name, wf in fleet.workflows.items()}
        self.runs: dict[str, Run] = {}
        self.num_accepted = 0
        self.draining = False
        self._kick_scheduled = False
        self.recent_rounds: deque[Plan] = deque(maxlen=keep_rounds)
        self.counts = {"completed": 0, "failed": 0, "expired": 0, "cancelled": 0}
        self.dispatcher = StageDispatcher(
            self.engines,
            self.sched,
            metrics,
            self.runs,
            self.settings.engine_timeout_s,
            finish=self.finish,
            complete=self.complete,
            kick=self.kick,
        )
        self.intake = Intake(
            self.routers,
            self.sched,
            metrics,
            finish=self.finish,
            kick=self.kick,
            settled=self.dispatcher.recheck,
            budget_s=routing_budget_s,
        )

    # -- lifecycle ----------------------------------------------------------------------

    async def open(self) -> None:
        for st in self.engines.values():
            await st.client.open()
        if self._monitoring:
            await self.monitor.poll_once()
            self.monitor.start()
        await self.sched.open()

    async def close(self) -> None:
        """End what is left (503) and close the monitor, engine clients and router sessions;
        every one is tried, the first failure is raised after."""
        failures: list[BaseException] = []
        await close_part("the load monitor", self.monitor.stop(), failures)
        for run in list(self.runs.values()):
            self.finish(run, "cancelled", AragogError("server shutting down"))
        await close_part("the scheduler port", self.sched.close(), failures)
        for st in self.engines.values():
            await close_part(f"the client of engine {st.name}", st.client.close(), failures)
        for name, worker in self.routers.items():
            await close_part(f"the router of {name}", worker.aclose(), failures)
        if failures:
            raise failures[0]

    def warm_up(self, max_items: int, min_items: int = 1) -> float:
        """Compile the scheduling round for rounds of ``min_items`` to ``max_items`` ready
        stages (start-up; see :meth:`SchedulerPort.warm_up`); returns the seconds."""
        return self.sched.warm_up(max_items, min_items)

    @property
    def num_in_flight(self) -> int:
        return len(self.runs)

    def ready(self) -> tuple[bool, str]:
        now = time.monotonic()
        down = [n for n, st in self.engines.items() if st.breaker.poll(now) is BreakerState.OPEN]
        if len(down) == len(self.engines):
            return False, f"no engine reachable ({', '.join(down)})"
        if self.draining:
            return False, "draining"
        return True, f"{len(self.engines) - len(down)}/{len(self.engines)} engines reachable"

    # -- submission ---------------------------------------------------------------------

    def admit(
        self,
        workflow: str,
        text: str,
        *,
        deadline_s: float | None = None,
        replay: bool = False,
        stream: bool = False,
    ) -> Run:
        """Accept a run or raise OverloadedError (bounded meta-queue)."""
        if self.draining:
            raise AragogError("server is shutting down; not accepting new requests")
        self.sched.check()
        if len(self.runs) >= self.settings.max_queue:
            raise OverloadedError(f"meta-queue full ({self.settings.max_queue} requests in flight)")
        wf = self.fleet.workflows[workflow]
        now = time.monotonic()
        limit = (
            self.settings.request_deadline_s
            if deadline_s is None
            else min(deadline_s, self.settings.request_deadline_s)
        )
        run = Run(
            id=f"run-{os.urandom(10).hex()}",  # uuid4's randomness without its 5 us object
            wf=wf,
            input=text,
            t0=now,
            deadline=now + limit,
            replay=replay,
            done=asyncio.get_running_loop().create_future(),
            events=asyncio.Queue() if stream else None,
        )
        self.runs[run.id] = run
        run.timer = asyncio.get_running_loop().call_later(limit, self._expire, run)
        self.num_accepted += 1
        self.intake.add(run)
        return run

    async def wait(self, run: Run) -> RunResult:
        """Wait for a run to end; raises the AragogError it ended with (504 past its deadline).
        Cancelling the waiter (the client disconnected) cancels the run.

        ``run.done`` is awaited as it is, not shielded: the handler is its only waiter, so
        the cancellation that also cancels the future loses nothing (:meth:`finish` and
        :meth:`complete` skip a future that is done), and the run ends just below."""
        try:
            return await run.done
        except asyncio.CancelledError:
            self.cancel(run, "client disconnected")
            raise

    def cancel(self, run: Run, why: str) -> None:
        """End a run nobody waits for any more: its meta-queue slot is free at once, its
        in-flight engine calls are aborted (their tasks cancelled, which closes their
        connections; each asks for a round once its engine slot is free). One log line."""
        if run.finished:
            return
        log.info("run %s (%s) cancelled: %s", run.id, run.wf.name, why)
        self.finish(run, "cancelled", AragogError(f"run cancelled: {why}"))

    def _expire(self, run: Run) -> None:
        self.finish(
            run,
            "expired",
            DeadlineExceededError(
                f"request {run.id} ran past its deadline of {run.deadline - run.t0:g} s"
            ),
        )

    def kick(self) -> None:
        """Ask for a scheduling round soon (coalesced)."""
        if not self._kick_scheduled:
            self._kick_scheduled = True
            asyncio.get_running_loop().call_soon(self._round)

    def _round(self) -> None:
        self._kick_scheduled = False
        if self.intake.pending:
            self.intake.route_admitted()
        t0 = time.perf_counter()
        plan = self.sched.round(self.monitor.snapshot)  # None: nothing ready, or not here
        if plan is not None:
            self.metrics.scheduling_s.observe(time.perf_counter() - t0)
            self.apply_plan(plan)

    def apply_plan(self, plan: Plan) -> None:
        """Dispatch a round's assignments of this server's runs (others' are skipped)."""
        # Taken after the round, so its cost counts as the stages' queueing, not engine time.
        now = time.monotonic()
        if plan.num_items:
            self.recent_rounds.append(plan)
        for a in plan.assignments:
            run = self.runs.get(a.request_id)
            if run is None or run.finished:
                continue
            if run.replay and (not run.rounds or run.rounds[-1] is not plan):
                run.rounds.append(plan)
            if run.overlap is not None:
                self.intake.dispatched(run, now)  # routing stops at the first dispatch
            self.dispatcher.dispatch(run, a, plan.round_id, now)

    def _fail_run(self, run_id: str, exc: AragogError) -> None:
        """The scheduler ended a run (remote port: unviable, or the scheduler is gone)."""
        run = self.runs.get(run_id)
        if run is not None:
            self.finish(run, "failed", exc)

    def export_load(self) -> None:
        """Copy the monitor's view into the engine gauges, and the meta-queue depth and runs
        in flight into theirs, when /metrics is scraped (the only time they are read: the
        request path never sets a gauge)."""
        m = self.metrics
        for ld in self.monitor.snapshot():
            m.engine_running.labels(ld.engine).set(ld.running)
            m.engine_waiting.labels(ld.engine).set(ld.waiting)
            m.engine_in_flight.labels(ld.engine).set(ld.in_flight)
            m.engine_kv.labels(ld.engine).set(ld.kv_usage)
            m.engine_healthy.labels(ld.engine).set(1.0 if ld.healthy else 0.0)
        m.meta_queue.set(self.sched.num_ready)
        m.in_flight.set(len(self.runs))

    # -- endings ------------------------------------------------------------------------

    def complete(self, run: Run) -> None:
        wf = run.wf
        output = run.outputs[wf.space.output_stage]
        self._end(run, "completed")
        if not run.done.done():  # (cancelled: its handler went away in this loop turn)
            run.done.set_result(RunResult(run.id, output, receipt_of(run)))

    def finish(self, run: Run, status: str, exc: AragogError) -> None:
        if run.finished:
            return
        self._end(run, status)
        self.sched.cancel(run.id)
        for t in list(run.tasks):
            if t is not asyncio.current_task():
                t.cancel()
        for (
            a
        ) in run.unstarted.values():  # cancelled before their first step: never run their cleanup
            st = self.engines[a.engine]
            st.in_flight -= 1
            st.num_returned += 1
            self.dispatcher.abandoned(run, a, st)
        run.unstarted.clear()
        if not run.done.done():
            run.done.set_exception(exc)
            run.done.exception()  # mark retrieved: a handler may be gone already
        if run.events is not None:
            run.events.put_nowait(None)

    def _end(self, run: Run, status: str) -> None:
        run.status = status
        if run.timer is not None:
            run.timer.cancel()
        self.runs.pop(run.id, None)
        self.counts[status] = self.counts.get(status, 0) + 1
        self.metrics.requests.labels(run.wf.name, status).inc()
        if run.events is not None and status == "completed":
            run.events.put_nowait(None)
