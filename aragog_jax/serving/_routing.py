"""Routing at serve time: one batching worker per workflow, off the event loop.

Requests that arrive while a routing call is running are batched into the next call
(the router pads to its compiled buckets), so routing never blocks the event loop and
costs one compiled call per batch rather than per request. A workflow without a router
admits every servable configuration (logged once at start-up).
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

    async def route(self, text: str) -> Routed:
        wf = self.wf
        if wf.router is None:
            return Routed(wf.servable, int(wf.space.num_configs), 0.0, "admit-all")
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((text, fut))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())
        return await fut

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
            elapsed = time.perf_counter() - t0
            mask = np.asarray(res.mask, dtype=bool)
            for i, (_, fut) in enumerate(batch):
                if not fut.done():
                    row = mask[i]
                    fut.set_result(Routed(row & self.wf.servable, int(row.sum()), elapsed, "trained"))
