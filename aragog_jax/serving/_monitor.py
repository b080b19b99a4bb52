"""Load monitor (DESIGN §6): what each engine is doing, from three sources.

1. **Own in-flight count** per engine: exact for this server's traffic, always fresh.
2. **``/metrics`` scrape** every ``poll_s``: the running and waiting counts and the KV
   usage, parsed by :func:`aragog_jax.engines.gauges.parse_gauges` (vLLM and SGLang
   names, summed over data-parallel ranks).
3. **ORCA header** (``endpoint-load-metrics``) on engine replies, when the engine
   sends it: a fresher ``num_requests_waiting`` and KV usage than the last scrape.

The rule (:meth:`EngineLoadState.snapshot`): with a fresh scrape (younger than
``stale_after_s``), the engine holds what the scrape saw (running + waiting) plus this
server's dispatches since the scrape minus its requests that returned since, and never
less than the own in-flight count. Between scrapes the count therefore follows this
server's own traffic exactly, so a finished stage frees a slot at once instead of at
the next scrape. An ORCA report newer than the scrape raises ``waiting`` to what it
says and gives the KV usage. With a stale or missing scrape, the engine's load is the
own in-flight count alone. An engine whose breaker is open has zero slots.

The monitor also probes ``/health`` (the breaker's half-open probe) and calls
``on_change`` when an engine's health flips or its scraped load changes, which
triggers a scheduling round.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aragog_jax.engines.client import EngineClient, OrcaReport
from aragog_jax.engines.gauges import (
    KV_NAMES,
    RUNNING_NAMES,
    WAITING_NAMES,
    first_gauge,
    parse_gauges,
)
from aragog_jax.errors import UpstreamError
from aragog_jax.serving._breaker import BreakerState, CircuitBreaker

log = logging.getLogger("aragog_jax.serving")


@dataclass(frozen=True, slots=True)
class ScrapedLoad:
    running: float | None
    waiting: float | None
    kv_usage: float | None
    at: float
    dispatched_at: int = 0  # own dispatch / return counters when the scrape was sent
    returned_at: int = 0

    @classmethod
    def from_gauges(
        cls, g: dict[str, float], at: float, dispatched_at: int = 0, returned_at: int = 0
    ) -> ScrapedLoad:
        return cls(
            first_gauge(g, RUNNING_NAMES),
            first_gauge(g, WAITING_NAMES),
            first_gauge(g, KV_NAMES),
            at,
            dispatched_at,
            returned_at,
        )


@dataclass(frozen=True, slots=True)
class EngineReading:
    """What the monitor read of one engine's load (the port turns it into the scheduler's
    :class:`~aragog_jax.scheduler.EngineLoad`)."""

    engine: str
    model: str
    running: int
    waiting: int
    kv_usage: float  # 0-1, or -1 when unknown
    in_flight: int  # own requests on this engine
    healthy: bool
    slots_cap: int | None  # breaker limit (0 when open, probes when half-open)
    source: str  # "metrics", "metrics+orca", "in_flight"
    age_s: float  # age of the scrape used (inf when none)


class EngineLoadState:
    """Mutable per-engine bookkeeping; only the monitor and the executor touch it."""

    def __init__(self, client: EngineClient, model: str, breaker: CircuitBreaker):
        self.client = client
        self.name = client.name
        self.model = model
        self.breaker = breaker
        self.in_flight = 0
        self.scraped: ScrapedLoad | None = None
        self.orca: OrcaReport | None = None
        self.scrape_errors = 0
        self.num_dispatched = 0  # own requests sent to the engine (monotonic)
        self.num_returned = 0  # own requests that came back, however they ended (monotonic)

    def snapshot(self, now: float, stale_after_s: float) -> EngineReading:
        cap = self.breaker.slots(now)
        healthy = self.breaker.state is not BreakerState.OPEN
        sc = self.scraped
        age = now - sc.at if sc is not None else float("inf")
        if sc is not None and age <= stale_after_s and sc.running is not None:
            since = (self.num_dispatched - sc.dispatched_at) - (self.num_returned - sc.returned_at)
            total = max(float(self.in_flight), sc.running + (sc.waiting or 0.0) + since)
            running = min(total, max(sc.running, float(self.in_flight)))
            waiting = total - running
            kv = sc.kv_usage if sc.kv_usage is not None else -1.0
            source = "metrics"
            if (
                self.orca is not None
                and self.orca.at > sc.at
                and now - self.orca.at <= stale_after_s
            ):
                if self.orca.waiting is not None:
                    waiting = max(waiting, self.orca.waiting)
                if self.orca.kv_usage is not None:
                    kv = self.orca.kv_usage
                source = "metrics+orca"
            return EngineReading(
                self.name,
                self.model,
                int(running),
                int(round(waiting)),
                kv,
                self.in_flight,
                healthy,
                cap,
                source,
                age,
            )
        return EngineReading(
            self.name,
            self.model,
            self.in_flight,
            0,
            -1.0,
            self.in_flight,
            healthy,
            cap,
            "in_flight",
            age,
        )


def healthy_models(engines: Iterable[EngineLoadState], now: float) -> set[str]:
    """The models with at least one engine whose circuit breaker is not open at ``now``."""
    return {st.model for st in engines if st.breaker.poll(now) is not BreakerState.OPEN}


class LoadMonitor:
    """Scrapes every engine's ``/metrics`` and probes ``/health`` on an interval.

    Lifecycle: ``start()`` creates one polling task per engine; ``stop()`` cancels them.
    """

    def __init__(
        self,
        states: list[EngineLoadState],
        *,
        poll_s: float = 0.5,
        stale_after_s: float | None = None,
        on_change: Callable[[], None] | None = None,
    ):
        self.states = {s.name: s for s in states}
        self.poll_s = poll_s
        self.stale_after_s = stale_after_s if stale_after_s is not None else max(3 * poll_s, 1.0)
        self.on_change = on_change or (lambda: None)
        self._tasks: list[asyncio.Task] = []
        self.num_polls = 0

    def start(self) -> None:
        """One polling task per engine, so a slow engine never delays another's scrape."""
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [
                loop.create_task(self._run(st), name=f"load-monitor-{st.name}")
                for st in self.states.values()
            ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
        self._tasks = []

    def snapshot(self, now: float | None = None) -> list[EngineReading]:
        now = time.monotonic() if now is None else now
        return [s.snapshot(now, self.stale_after_s) for s in self.states.values()]

    async def _run(self, st: EngineLoadState) -> None:
        while True:
            try:
                changed = await self._poll_engine(st)
            except Exception as exc:  # noqa: BLE001 - a monitor bug must not stop monitoring
                log.warning("load monitor: engine %s: unexpected error %r", st.name, exc)
                changed = False
            self.num_polls += 1
            if changed:
                self.on_change()
            await asyncio.sleep(self.poll_s)

    async def poll_once(self) -> None:
        """Scrape every engine once, concurrently (start-up and tests)."""
        results = await asyncio.gather(
            *(self._poll_engine(s) for s in self.states.values()), return_exceptions=True
        )
        self.num_polls += 1
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                log.warning("load monitor: unexpected error %r", r)
        if any(r is True for r in results):
            self.on_change()

    async def _poll_engine(self, st: EngineLoadState) -> bool:
        """Scrape one engine; returns True when what the scheduler sees changed."""
        now = time.monotonic()
        before = st.breaker.poll(now)
        old = st.scraped
        d0, r0 = st.num_dispatched, st.num_returned
        try:
            text = await st.client.metrics_text()
        except UpstreamError as exc:
            st.scrape_errors += 1
            # /metrics failing alone is not an engine fault; /health decides.
            try:
                await st.client.health()
            except UpstreamError as hexc:
                if st.breaker.on_failure(time.monotonic(), str(hexc)):
                    log.warning("engine %s unhealthy: %s", st.name, hexc)
                return st.breaker.state != before
            log.debug("engine %s: /metrics failed: %s", st.name, exc)
            if st.breaker.on_success(time.monotonic()):
                log.warning("engine %s recovered", st.name)
            return st.breaker.state != before
        now = time.monotonic()
        st.scraped = ScrapedLoad.from_gauges(parse_gauges(text), now, d0, r0)
        if before is not BreakerState.CLOSED:
            # The scrape answered, so the engine is up; confirm with /health.
            try:
                await st.client.health()
            except UpstreamError as exc:
                st.breaker.on_failure(time.monotonic(), str(exc))
                return st.breaker.state != before
            if st.breaker.on_success(time.monotonic()):
                log.warning("engine %s recovered", st.name)
        changed = st.breaker.state != before
        if old is None or (old.running, old.waiting) != (st.scraped.running, st.scraped.waiting):
            changed = True
        return changed
