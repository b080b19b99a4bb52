"""Routing at serve time: one batching worker per workflow.

Requests that arrive in the same event-loop turn (or while a routing call is running)
are batched into one call; the router pads to its compiled buckets, so a batch costs
one compiled call. A router whose featuriser is local arithmetic (hashed n-grams:
tens of microseconds per batch) runs on the event loop, where a thread hop would cost
more than the call; one whose featuriser calls an embeddings endpoint runs in a worker
thread so the loop keeps dispatching. A workflow without a router admits every
servable configuration (logged once at start-up).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np

from aragog_jax.serving._fleet import WorkflowRuntime


@dataclass(frozen=True, slots=True)
class Routed:
    mask: np.ndarray  # bool[C] admitted and servable
    num_admitted: int  # admitted by the router (before the servable filter)
    routing_s: float
    router: str  # "trained" or "admit-all"


class RouterWorker:
    def __init__(self, wf: WorkflowRuntime):
        self.wf = wf
        self._pending: list[tuple[str, asyncio.Future]] = []
        self._task: asyncio.Task | None = None
        self._flush_scheduled = False
        self.in_thread = wf.router is not None and _needs_thread(wf.router)

    async def route(self, text: str) -> Routed:
        wf = self.wf
        if wf.router is None:
            return Routed(wf.servable, int(wf.space.num_configs), 0.0, "admit-all")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append((text, fut))
        if not self.in_thread:
            if not self._flush_scheduled:
                self._flush_scheduled = True
                loop.call_soon(self._flush)
        elif self._task is None or self._task.done():
            self._task = loop.create_task(self._drain())
        return await fut

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._pending = self._pending, []
        if batch:
            self._deliver(batch, self.wf.router.route_texts)

    def _deliver(self, batch, call) -> None:
        t0 = time.perf_counter()
        try:
            res = call([t for t, _ in batch])
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        self._resolve(batch, res, time.perf_counter() - t0)

    def _resolve(self, batch, res, elapsed: float) -> None:
        mask = np.asarray(res.mask, dtype=bool)
        for i, (_, fut) in enumerate(batch):
            if not fut.done():
                row = mask[i]
                fut.set_result(Routed(row & self.wf.servable, int(row.sum()), elapsed, "trained"))

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending, []
            texts = [t for t, _ in batch]
            t0 = time.perf_counter()
            try:
                res = await loop.run_in_executor(None, self.wf.router.route_texts, texts)
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self._resolve(batch, res, time.perf_counter() - t0)


def _needs_thread(router) -> bool:
    """True when routing may block on I/O (an embeddings endpoint)."""
    try:
        from aragog_jax.router import EmbeddingsFeaturizer
    except ImportError:
        return True
    return isinstance(getattr(router, "featurizer", None), EmbeddingsFeaturizer)
