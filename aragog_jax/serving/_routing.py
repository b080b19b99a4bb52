"""Routing at serve time: one router worker per workflow.

A router whose featuriser is local arithmetic (hashed n-grams: tens of microseconds per
batch) runs on the event loop, where a thread hop would cost more than the call: the
executor batches every request admitted since the last scheduling round into one
:meth:`RouterWorker.route_batch` call at the start of that round, so a request is
routed, queued and (capacity permitting) dispatched in the same loop turn. The router
pads to its compiled buckets, so a batch costs one compiled call. A router whose
featuriser calls an embeddings endpoint routes off the round (:meth:`RouterWorker.route`;
requests arriving while a call runs are batched into the next) so the loop keeps
dispatching: the embeddings are awaited on the loop over the featuriser's long-lived
session (closed by :meth:`RouterWorker.aclose`), then the compiled router runs on them.
Any other featuriser that may block runs, with the router, in a worker thread. A
workflow without a router admits every servable configuration (logged once at start-up).

Off the loop, routing overlaps queueing: the request is queued at arrival with ``c_max``
(:meth:`RouterWorker.provisional`) and a router with ``route_progressive`` scores the
configurations cheapest-first in chunks in a worker thread, handing each wider admitted
set to the caller's ``progress`` callback as it is found; the callback says when the
request no longer wants more (its first stage was dispatched) and the batch stops once
none does (see :mod:`._intake`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from aragog_jax.serving._fleet import WorkflowRuntime


@dataclass(frozen=True, slots=True)
class Routed:
    mask: np.ndarray  # bool[C] admitted and servable
    num_admitted: int  # admitted by the router (before the servable filter)
    routing_s: float
    router: str  # "trained" or "admit-all"
    fraction: float = 1.0  # share of the configurations scored
    complete: bool = True  # every configuration was scored


#: Called on the loop with each wider admitted set; returns whether more is still wanted.
Progress = Callable[[Routed], bool]


class RouterWorker:
    def __init__(self, wf: WorkflowRuntime):
        self.wf = wf
        self._pending: list[tuple[str, asyncio.Future, Progress | None]] = []
        self._task: asyncio.Task | None = None
        # A featuriser with async I/O (an embeddings endpoint) is awaited on the loop, off
        # the round; anything marked in_thread without one runs in a worker thread.
        self._aembed = getattr(getattr(wf.router, "featurizer", None), "aembed", None)
        self.in_thread = self._aembed is not None

    def warm_up(self, max_batch: int) -> int:
        """Run every compiled bucket a batch of up to ``max_batch`` requests can use once,
        so the first large batch (a burst of arrivals) does not pay for the bucket's first
        execution (~5 ms for 512 rows). Blocking: call it off the loop. Returns the number
        of buckets run."""
        router = self.wf.router
        if router is None:
            return 0
        n = 0
        progressive = self.in_thread and hasattr(router, "route_progressive")
        for b in router.buckets:
            router.route_texts(["warm-up"] * b)
            if progressive:
                for _ in router.route_progressive(np.zeros((b, router.featurizer.dim), np.float32)):
                    pass
            n += 1
            if b >= max_batch:
                break
        return n

    def provisional(self) -> Routed:
        """What a request queued before its routing finished may run: ``c_max`` alone (it
        is always admitted), on the servable configurations."""
        space = self.wf.space
        mask = np.zeros(space.num_configs, dtype=bool)
        mask[space.c_max] = True
        return Routed(mask & self.wf.servable, 1, 0.0, "trained", 0.0, False)

    def route_batch(self, texts: list[str]) -> list[Routed]:
        """Route ``texts`` now, on the calling thread (for routers with ``in_thread`` False).

        Raises whatever the router raises; the caller fails the whole batch with it."""
        wf = self.wf
        if wf.router is None:
            return [Routed(wf.servable, int(wf.space.num_configs), 0.0, "admit-all")] * len(texts)
        t0 = time.perf_counter()
        res = wf.router.route_texts(texts)
        return self._rows(res, time.perf_counter() - t0, len(texts))

    async def route(self, text: str, progress: Progress | None = None) -> Routed:
        """Route one request off the event loop (for routers with ``in_thread`` True).

        With ``progress``, every wider admitted set found before routing completes is
        handed to it on the loop; once it returns False the request wants no more, and
        the result is the last set it was handed (``complete`` False) when scoring stopped
        for that (every request of the batch said so)."""
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((text, fut, progress))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())
        return await fut

    def _rows(self, res, elapsed: float, n: int) -> list[Routed]:
        mask = np.asarray(res.mask, dtype=bool)
        servable = self.wf.servable
        frac = float(res.fraction_completed)
        return [
            Routed(mask[i] & servable, int(mask[i].sum()), elapsed, "trained", frac, frac >= 1.0)
            for i in range(n)
        ]

    def _resolve(self, batch, res, elapsed: float) -> None:
        for (_, fut, _), routed in zip(batch, self._rows(res, elapsed, len(batch)), strict=True):
            if not fut.done():
                fut.set_result(routed)

    def _progress(self, batch, res, elapsed: float) -> bool:
        """Hand a partial result to the batch's callbacks; whether any request wants more."""
        wanted = False
        for (_, fut, progress), routed in zip(
            batch, self._rows(res, elapsed, len(batch)), strict=True
        ):
            if fut.done():
                continue
            wanted |= progress is None or progress(routed)
        return wanted

    async def _route_progressively(self, batch, texts: list[str], t0: float):
        """Featurise, then score chunk by chunk in a worker thread (one hop per chunk) until
        done or no request of the batch wants more; returns the last result."""
        loop = asyncio.get_running_loop()
        router = self.wf.router
        if self._aembed is not None:
            features = await self._aembed(texts)
        else:
            features = await loop.run_in_executor(None, router.featurizer, texts)
        steps = router.route_progressive(features)
        res = None
        while True:
            step = await loop.run_in_executor(None, next, steps, None)
            if step is None:
                return res
            res = step
            if res.fraction_completed >= 1.0:
                return res
            if not self._progress(batch, res, time.perf_counter() - t0):
                steps.close()
                return res

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        router = self.wf.router
        progressive = hasattr(router, "route_progressive")
        largest = max(getattr(router, "buckets", ()) or (1 << 30,))
        while self._pending:
            # route_progressive takes one bucket at most; a bigger burst goes in several.
            batch, self._pending = self._pending[:largest], self._pending[largest:]
            texts = [t for t, _, _ in batch]
            t0 = time.perf_counter()
            try:
                if progressive:
                    res = await self._route_progressively(batch, texts, t0)
                elif self._aembed is not None:
                    res = router.route_features(await self._aembed(texts))
                else:
                    res = await loop.run_in_executor(None, router.route_texts, texts)
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                for _, fut, _ in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self._resolve(batch, res, time.perf_counter() - t0)

    async def aclose(self) -> None:
        """Close what the router's featuriser keeps open (an embeddings session)."""
        featurizer = getattr(self.wf.router, "featurizer", None)
        aclose = getattr(featurizer, "aclose", None)
        if aclose is not None:
            await aclose()
