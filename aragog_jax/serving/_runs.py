"""A run's records: the run in flight, its result, its stream events and its receipt."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from aragog_jax.scheduler import Assignment, Plan
from aragog_jax.serving._fleet import WorkflowRuntime
from aragog_jax.serving._routing import Routed
from aragog_jax.serving._wire import Attempt, Receipt, RoutingReceipt, StageReceipt
from aragog_jax.spec import StageSpec

log = logging.getLogger("aragog_jax.serving")


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


@dataclass(slots=True)
class Overlap:
    """A run routed off the loop while it waits in the meta-queue (see :mod:`._intake`)."""

    budget_s: float  # how long its stages wait for the router before running with c_max+
    held: bool = True  # its stages wait for the router (until complete or the budget)
    in_intake: bool = True  # not yet through a round's intake (queued there, in order)
    queued: bool = False  # in the scheduler's meta-queue
    used_s: float | None = None  # set when the mask was fixed: routing completed or stopped
    timer: asyncio.TimerHandle | None = None  # the budget's end


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
    # never runs its body, so its engine slot is given back by Executor.finish instead.
    unstarted: dict[asyncio.Task, Assignment] = field(default_factory=dict)
    rounds: list[Plan] = field(default_factory=list)
    done: asyncio.Future | None = None
    events: asyncio.Queue | None = None  # StageFinished / OutputDelta, then None (streamed runs)
    streamed_chars: int = 0  # output text already handed to the client (no failover after)
    timer: asyncio.TimerHandle | None = None
    status: str = "routing"  # routing, queued, completed, failed, expired, cancelled
    failovers: int = 0
    overlap: Overlap | None = None  # routed off the loop, overlapped with queueing

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


def receipt_of(run: Run) -> Receipt:
    wf = run.wf
    stages = [run.receipts[s] for s in range(wf.space.num_stages) if s in run.receipts]
    routed = run.routed
    routing = None
    routing_s = routed.routing_s if routed else 0.0
    if routed is not None:
        ov = run.overlap
        if ov is not None and ov.used_s is not None:
            routing_s = ov.used_s
        routing = RoutingReceipt(
            complete=routed.complete,
            fraction=routed.fraction,
            used_s=routing_s,
            admitted=routed.num_admitted,
            budget_s=None if ov is None else ov.budget_s,
        )
    return Receipt(
        workflow=wf.name,
        num_configs=wf.space.num_configs,
        num_admitted=routed.num_admitted if routed else 0,
        router=routed.router if routed else ("trained" if wf.router is not None else "admit-all"),
        routing_s=routing_s,
        total_s=time.monotonic() - run.t0,
        stages=stages,
        configuration={r.stage: r.model for r in stages},
        failovers=run.failovers,
        rounds=[r.dump() for r in run.rounds],
        routing=routing,
    )
