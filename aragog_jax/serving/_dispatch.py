"""Stage dispatch: one stage on one engine, its result, and failover when the engine fails.

The dispatcher owns what happens between a scheduling round's assignment and the stage's
end: the engine slot, the call (streamed to the client for a streamed run's output stage),
the receipt, and on an engine fault the circuit breaker, the attempt record and the
stage's return to the scheduler. Ending a run and asking for a round are the executor's:
they come in as callables.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable

from aragog_jax.engines.stages import run_stage, stage_state
from aragog_jax.errors import (
    AragogError,
    EngineRejected,
    NoViableConfigurationError,
    StageFunctionError,
    UpstreamError,
)
from aragog_jax.scheduler import Assignment
from aragog_jax.serving._metrics import ServerMetrics
from aragog_jax.serving._monitor import EngineLoadState, healthy_models
from aragog_jax.serving._runs import OutputDelta, Run, StageFinished
from aragog_jax.serving._sched import SchedulerPort
from aragog_jax.serving._wire import Attempt, StageReceipt

log = logging.getLogger("aragog_jax.serving")

#: A stage is given up after this many failed attempts (on top of the viability check).
MAX_ATTEMPTS_PER_STAGE = 4


class StageDispatcher:
    """Runs assigned stages on their engines and hands each outcome back to the run."""

    def __init__(
        self,
        engines: dict[str, EngineLoadState],
        sched: SchedulerPort,
        metrics: ServerMetrics,
        runs: dict[str, Run],
        engine_timeout_s: float,
        *,
        finish: Callable[[Run, str, AragogError], None],
        complete: Callable[[Run], None],
        kick: Callable[[], None],
    ):
        self.engines = engines
        self.sched = sched
        self.metrics = metrics
        self.runs = runs  # the executor's runs in flight (the same dict)
        self.engine_timeout_s = engine_timeout_s
        self._finish = finish
        self._complete = complete
        self.kick = kick
        self._seed = itertools.count()

    def dispatch(self, run: Run, a: Assignment, round_id: int, now: float) -> None:
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
        timeout = max(0.05, left) if left < self.engine_timeout_s else None
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
            self.abandoned(run, a, st)
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

    def abandoned(self, run: Run, a: Assignment, st: EngineLoadState) -> None:
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
        healthy = healthy_models(self.engines.values(), now)
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
        self._sweep_unviable(healthy)
        self.kick()

    def recheck(self, run: Run) -> None:
        """Routing completed for a queued run: fail it if an engine went down while it
        was routing and nothing it admits can run on the healthy ones (the sweep after
        that engine's failure skipped it, as routing might still have admitted more)."""
        self._sweep_unviable(healthy_models(self.engines.values(), time.monotonic()), [run.id])

    def _sweep_unviable(self, healthy: set[str], run_ids: list[str] | None = None) -> None:
        for run_id in self.sched.unviable(healthy, run_ids):
            run = self.runs.get(run_id)
            if run is not None and not run.finished:
                self._finish(
                    run,
                    "failed",
                    NoViableConfigurationError(
                        f"{run.wf.name}: no admitted configuration can run on the healthy engines "
                        f"({sorted(healthy)})"
                    ),
                )
