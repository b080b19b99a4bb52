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
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

from aragog_jax.engines.client import ClientLimits, EngineClient
from aragog_jax.engines.stages import run_stage, stage_state
from aragog_jax.errors import (
    AragogError,
    DeadlineExceededError,
    EngineRejected,
    NoViableConfigurationError,
    OverloadedError,
    StageFunctionError,
    UpstreamError,
)
from aragog_jax.scheduler import DEFAULT_BEAM_WIDTH, Assignment, Plan
from aragog_jax.serving._breaker import BreakerState, CircuitBreaker
from aragog_jax.serving._fleet import FleetRuntime, WorkflowRuntime
from aragog_jax.serving._metrics import ServerMetrics
from aragog_jax.serving._monitor import EngineLoadState, LoadMonitor
from aragog_jax.serving._routing import Routed, RouterWorker
from aragog_jax.serving._sched import SchedulerPort
from aragog_jax.serving._wire import Attempt, Receipt, StageReceipt
from aragog_jax.spec import StageSpec

log = logging.getLogger("aragog_jax.serving")

#: A stage is given up after this many failed attempts (on top of the viability check).
MAX_ATTEMPTS_PER_STAGE = 4


async def close_part(what: str, aw, failures: list[BaseException]) -> None:
    """Await one closing step; a failure is logged and kept in ``failures`` (raised by the
    caller once every part was tried), so one part cannot keep the others open."""
    try:
        await aw
    except Exception as exc:  # noqa: BLE001 - logged, raised after the other parts
        log.error("shutdown: closing %s failed: %s", what, exc, exc_info=exc)
        failures.append(exc)


@dataclass(frozen=True, slots=True)
class StageFinished:
    """A stream event: ``stage`` ended with ``text``."""

    stage: str
    text: str
    receipt: StageReceipt


@dataclass(frozen=True, slots=True)
class OutputDelta:
    """A stream event: the next piece of the output stage's text."""

    stage: str
    text: str


@dataclass
class Run:
    id: str
    wf: WorkflowRuntime
    input: str
    t0: float
    deadline: float
    replay: bool = False
    routed: Routed | None = None
    outputs: dict[int, str] = field(default_factory=dict)
    receipts: dict[int, StageReceipt] = field(default_factory=dict)
    ready_at: dict[int, float] = field(default_factory=dict)
    attempts: dict[int, list[Attempt]] = field(default_factory=dict)
    tasks: set[asyncio.Task] = field(default_factory=set)
    # Stage tasks dispatched but not yet started. A task cancelled before its first step
    # never runs its body, so its engine slot is given back by _finish instead.
    unstarted: dict[asyncio.Task, Assignment] = field(default_factory=dict)
    rounds: list[Plan] = field(default_factory=list)
    done: asyncio.Future | None = None
    events: asyncio.Queue | None = None  # StageFinished / OutputDelta, then None (streamed runs)
    streamed_chars: int = 0  # output text already handed to the client (no failover after)
    timer: asyncio.TimerHandle | None = None
    status: str = "routing"  # routing, queued, completed, failed, expired, cancelled
    failovers: int = 0

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "failed", "expired", "cancelled")

    def upstream_outputs(self, stage: StageSpec) -> dict[str, str]:
        """``stage``'s upstream outputs by stage name (what its prompt is rendered with)."""
        return {up: self.outputs.get(self.wf.stage_index[up], "") for up in stage.upstream}


@dataclass(frozen=True, slots=True)
class RunResult:
    id: str
    output: str
    receipt: Receipt


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
        self.sched = SchedulerPort(fleet, policy, beam_width)
        self.routers = {name: RouterWorker(wf) for name, wf in fleet.workflows.items()}
        self.runs: dict[str, Run] = {}
        self.num_accepted = 0
        self.draining = False
        self._kick_scheduled = False
        self._unrouted: list[Run] = []  # runs admitted since the last round, in admission order
        self._seed = itertools.count()
        self.recent_rounds: deque[Plan] = deque(maxlen=keep_rounds)
        self.counts = {"completed": 0, "failed": 0, "expired": 0, "cancelled": 0}

    # -- lifecycle ----------------------------------------------------------------------

    async def open(self) -> None:
        for st in self.engines.values():
            await st.client.open()
        await self.monitor.poll_once()
        self.monitor.start()

    async def close(self) -> None:
        """End what is left (503) and close the monitor, engine clients and router sessions;
        every one is tried, the first failure is raised after."""
        failures: list[BaseException] = []
        await close_part("the load monitor", self.monitor.stop(), failures)
        for run in list(self.runs.values()):
            self._finish(run, "cancelled", AragogError("server shutting down"))
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
            id=f"run-{uuid.uuid4().hex[:20]}",
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
        self.metrics.in_flight.set(len(self.runs))
        if self.routers[workflow].in_thread:
            task = asyncio.get_running_loop().create_task(self._route_in_thread(run))
            run.tasks.add(task)
            task.add_done_callback(run.tasks.discard)
        else:
            self._unrouted.append(run)
            self.kick()
        return run

    async def wait(self, run: Run) -> RunResult:
        """Wait for a run to end; raises the AragogError it ended with (504 past its deadline).
        Cancelling the waiter (the client disconnected) cancels the run."""
        try:
            return await asyncio.shield(run.done)
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
        self._finish(run, "cancelled", AragogError(f"run cancelled: {why}"))

    def _expire(self, run: Run) -> None:
        self._finish(
            run,
            "expired",
            DeadlineExceededError(
                f"request {run.id} ran past its deadline of {run.deadline - run.t0:g} s"
            ),
        )

    async def _route_in_thread(self, run: Run) -> None:
        try:
            routed = await self.routers[run.wf.name].route(run.input)
        except Exception as exc:  # noqa: BLE001
            self._finish(run, "failed", AragogError(f"routing failed: {exc}"))
            return
        self._queue(run, routed, time.monotonic())
        self.kick()

    def _route_admitted(self) -> None:
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

    def kick(self) -> None:
        """Ask for a scheduling round soon (coalesced)."""
        if not self._kick_scheduled:
            self._kick_scheduled = True
            asyncio.get_running_loop().call_soon(self._round)

    def _round(self) -> None:
        self._kick_scheduled = False
        if self._unrouted:
            self._route_admitted()
        if not self.sched.num_ready:
            self.metrics.meta_queue.set(0)
            return
        t0 = time.perf_counter()
        plan = self.sched.schedule(self.monitor.snapshot())
        self.metrics.scheduling_s.observe(time.perf_counter() - t0)
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
            self._dispatch(run, a, plan.round_id, now)
        self.metrics.meta_queue.set(self.sched.num_ready)

    def export_load(self) -> None:
        """Copy the monitor's view into the engine gauges (when /metrics is scraped)."""
        m = self.metrics
        for ld in self.monitor.snapshot():
            m.engine_running.labels(ld.engine).set(ld.running)
            m.engine_waiting.labels(ld.engine).set(ld.waiting)
            m.engine_in_flight.labels(ld.engine).set(ld.in_flight)
            m.engine_kv.labels(ld.engine).set(ld.kv_usage)
            m.engine_healthy.labels(ld.engine).set(1.0 if ld.healthy else 0.0)
        m.meta_queue.set(self.sched.num_ready)
        m.in_flight.set(len(self.runs))

    def _dispatch(self, run: Run, a: Assignment, round_id: int, now: float) -> None:
        st = self.engines[a.engine]
        st.in_flight += 1
        st.num_dispatched += 1
        st.breaker.on_dispatch(now)
        task = asyncio.get_running_loop().create_task(self._run_stage(run, a, st, round_id, now))
        run.tasks.add(task)
        run.unstarted[task] = a
        task.add_done_callback(run.tasks.discard)

    async def _run_stage(
        self, run: Run, a: Assignment, st: EngineLoadState, round_id: int, t_disp: float
    ) -> None:
        del run.unstarted[
            asyncio.current_task()
        ]  # from here on this task gives its slot back itself
        sid = a.stage
        stage = run.wf.spec.stage[sid]
        left = run.deadline - time.monotonic()
        # The session's default timeout is the engine timeout; only a nearer deadline needs its own.
        timeout = max(0.05, left) if left < self.settings.engine_timeout_s else None
        streams = run.events is not None and sid == run.wf.space.output_stage
        try:
            try:
                res = await run_stage(
                    stage,
                    run.wf.stage_fns.get(sid),
                    st.model,
                    st.client,
                    stage_state(stage, run.input, run.upstream_outputs(stage)),
                    seed=next(self._seed) % 2**31,
                    timeout_s=timeout,
                    on_delta=(lambda text: self._delta(run, stage.name, text)) if streams else None,
                )
            finally:
                st.in_flight -= 1
                st.num_returned += 1
        except asyncio.CancelledError:
            self._abandoned(run, a, st)
            raise
        except StageFunctionError as exc:
            # The workflow's own code failed, not the engine: no failover, the run fails (500).
            log.error("workflow %s run %s: %s", run.wf.name, run.id, exc, exc_info=exc.__cause__)
            self.metrics.dispatches.labels(a.engine, st.model, "function_error").inc()
            self._finish(run, "failed", exc)
            self.kick()
            return
        except EngineRejected as exc:
            self.metrics.dispatches.labels(a.engine, st.model, "rejected").inc()
            self._finish(run, "failed", UpstreamError(f"stage {stage.name!r}: {exc}"))
            self.kick()
            return
        except UpstreamError as exc:
            self._on_engine_fault(run, a, st, exc)
            return
        now = time.monotonic()
        if st.breaker.on_success(now):
            log.warning("engine %s recovered", st.name)
        if res.last is not None and res.last.orca is not None:
            st.orca = res.last.orca
        self.metrics.dispatches.labels(a.engine, st.model, "ok").inc()
        if run.finished:
            self.kick()
            return
        queue_s = t_disp - run.ready_at.get(sid, t_disp)
        self.metrics.queue_s.observe(queue_s)
        rec = StageReceipt(
            stage=stage.name,
            model=st.model,
            engine=st.name,
            queue_s=queue_s,
            run_s=now - t_disp,
            prompt_tokens=res.prompt_tokens,
            completion_tokens=res.completion_tokens,
            round_id=round_id,
            failed_attempts=run.attempts.get(sid, []),
            engine_calls=res.calls,
        )
        run.outputs[sid] = res.text
        run.receipts[sid] = rec
        newly_ready = self.sched.finished(run.id, sid)
        for r in newly_ready:
            run.ready_at[r] = now
        if streams and not run.streamed_chars and res.text:
            self._delta(run, stage.name, res.text)  # a stage function's result: one piece
        if run.events is not None:
            run.events.put_nowait(StageFinished(stage.name, res.text, rec))
        if len(run.outputs) == run.wf.space.num_stages:
            self._complete(run)
        self.kick()

    def _delta(self, run: Run, stage: str, text: str) -> None:
        if run.finished or run.events is None:
            return
        run.streamed_chars += len(text)
        run.events.put_nowait(OutputDelta(stage, text))

    def _abandoned(self, run: Run, a: Assignment, st: EngineLoadState) -> None:
        """A dispatched stage was cancelled (its run ended): counted, and a round may use
        the engine slot it gave back."""
        self.metrics.dispatches.labels(a.engine, st.model, "cancelled").inc()
        self.kick()

    def _on_engine_fault(
        self, run: Run, a: Assignment, st: EngineLoadState, exc: UpstreamError
    ) -> None:
        now = time.monotonic()
        sid = a.stage
        if st.breaker.on_failure(now, str(exc)):
            log.warning("engine %s marked unhealthy: %s", st.name, exc)
        self.metrics.dispatches.labels(a.engine, st.model, "error").inc()
        attempts = run.attempts.setdefault(sid, [])
        attempts.append(Attempt(model=st.model, engine=st.name, error=str(exc)))
        if run.streamed_chars and not run.finished:
            # Part of the reply is with the client already; another engine would not continue it.
            self._finish(
                run,
                "failed",
                UpstreamError(
                    f"stage {run.wf.spec.stage[sid].name!r} failed on {st.name} after {run.streamed_chars} characters "
                    f"of the reply were streamed (a streamed reply cannot fail over): {exc}"
                ),
            )
        if run.finished:
            self.kick()
            return
        run.failovers += 1
        self.metrics.failovers.labels(run.wf.name).inc()
        healthy_models = self._healthy_models(now)
        viable = self.sched.failed(run.id, sid, a.engine)
        if len(attempts) >= MAX_ATTEMPTS_PER_STAGE:
            self._finish(
                run,
                "failed",
                UpstreamError(
                    f"stage {run.wf.spec.stage[sid].name!r} failed {len(attempts)} times; last: {exc}"
                ),
            )
        elif not viable:
            self._finish(
                run,
                "failed",
                NoViableConfigurationError(
                    f"stage {run.wf.spec.stage[sid].name!r} failed on {st.name} ({exc}) and no admitted configuration "
                    f"can run on the remaining healthy engines"
                ),
            )
        else:
            run.ready_at[sid] = now
        # Other queued requests may have lost their last option too.
        self._sweep_unviable(healthy_models)
        self.kick()

    def _healthy_models(self, now: float) -> set[str]:
        return {
            st.model
            for st in self.engines.values()
            if st.breaker.poll(now) is not BreakerState.OPEN
        }

    def _sweep_unviable(self, healthy_models: set[str]) -> None:
        for run_id in self.sched.unviable(healthy_models):
            run = self.runs.get(run_id)
            if run is not None and not run.finished:
                self._finish(
                    run,
                    "failed",
                    NoViableConfigurationError(
                        f"{run.wf.name}: no admitted configuration can run on the healthy engines "
                        f"({sorted(healthy_models)})"
                    ),
                )

    # -- endings ------------------------------------------------------------------------

    def _receipt(self, run: Run) -> Receipt:
        wf = run.wf
        stages = [run.receipts[s] for s in range(wf.space.num_stages) if s in run.receipts]
        routed = run.routed
        return Receipt(
            workflow=wf.name,
            num_configs=wf.space.num_configs,
            num_admitted=routed.num_admitted if routed else 0,
            router=routed.router
            if routed
            else ("trained" if wf.router is not None else "admit-all"),
            routing_s=routed.routing_s if routed else 0.0,
            total_s=time.monotonic() - run.t0,
            stages=stages,
            configuration={r.stage: r.model for r in stages},
            failovers=run.failovers,
            rounds=[r.dump() for r in run.rounds],
        )

    def _complete(self, run: Run) -> None:
        wf = run.wf
        output = run.outputs[wf.space.output_stage]
        self._end(run, "completed")
        run.done.set_result(RunResult(run.id, output, self._receipt(run)))

    def _finish(self, run: Run, status: str, exc: AragogError) -> None:
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
            self._abandoned(run, a, st)
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
        self.metrics.in_flight.set(len(self.runs))
        if run.events is not None and status == "completed":
            run.events.put_nowait(None)
