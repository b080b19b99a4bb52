"""One scheduler for many front ends: the scheduler host and the port that batches to it.

``serve --ray`` runs N ingress replicas (each a whole :class:`~._server.Server`: HTTP,
validation, routing, receipts, streaming, engine calls) and one scheduler. The replicas'
executors reach it through :class:`RemotePort`, which has the interface of the in-process
:class:`~._sched.SchedulerPort`; :class:`SchedulerHost` holds the one real
``SchedulerPort``, the load monitor and the rounds. Nothing here knows Ray: the
transport is one coroutine, ``exchange(replica, events, wait_s) -> Reply``, which
:class:`ExchangeServer` and :class:`HttpLink` carry over keep-alive HTTP
(:mod:`aragog_jax.serve_ray` finds the server through the scheduler deployment's
handle), and tests also call directly (:class:`LocalLink`).

Batching: a replica's port records what its executor tells the scheduler (a routed run
added, held or not; a held run released or its admitted set widened, when routing
overlaps queueing; a stage finished or failed; a run ended) as events, in order, and sends every
event of one event-loop turn in one ``exchange``. The host applies a call's events,
then runs one round (calls arriving in the same turn of its loop share it) over the
ready stages of all replicas, and files each round's plan in the mailbox of every
replica with an assignment in it. A call returns its replica's mailbox. Each replica
also keeps one long poll (``exchange`` with no events and ``wait_s`` > 0) open, which
returns as soon as its mailbox fills: assignments made on another replica's call (a
stage of theirs freed an engine slot) arrive without polling, and the long poll is the
replica's lease heartbeat. So per round a replica makes one call, never one per stage.

Consistency (what happens when a part dies; no request is lost silently):

* **A replica dies.** Its clients' connections close (the HTTP proxy answers them with an
  error). Its lease runs out ``lease_s`` after its last call; the host then cancels its
  runs in the scheduler and gives back the engine slots of their running stages, so
  nothing it held leaks. A replica that calls after its lease ran out (it was only
  slow) is told so (``Reply.reset``) and fails the runs it had queued with 503.
* **The scheduler dies.** A call that fails or does not answer within ``call_timeout_s``
  marks the scheduler down: the replica fails every run in flight with 503
  (:class:`SchedulerUnavailable`) and answers 503 to new ones while it keeps calling;
  the first answer brings it back. A restarted host has a new ``epoch``: the runs a
  replica had queued with the old one are failed with 503 (the new one never saw them).
* **An engine dies.** As in one process (:mod:`._dispatch`): the replica's breaker and
  failover; the failed stage goes back to the host with the engine, and the host's
  breaker and monitor take the engine out of the rounds for every replica.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import pickle
import secrets
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp
import numpy as np
from aiohttp import web

from aragog_jax.engines.client import ClientLimits, EngineClient
from aragog_jax.errors import AragogError, NoViableConfigurationError
from aragog_jax.scheduler import DEFAULT_BEAM_WIDTH, Plan
from aragog_jax.serving._breaker import CircuitBreaker
from aragog_jax.serving._fleet import FleetRuntime, WorkflowRuntime, start_engines
from aragog_jax.serving._loopback import LoopbackServer
from aragog_jax.serving._monitor import EngineLoadState, LoadMonitor, healthy_models
from aragog_jax.serving._sched import LATE_ITEMS, WARM_ITEMS, SchedulerPort

log = logging.getLogger("aragog_jax.serving")

#: A replica that has not called for this long is presumed dead (its runs are dropped).
LEASE_S = 10.0
#: A replica's long poll waits this long for its mailbox (and renews its lease as often).
POLL_S = 2.0
#: A call to the host that does not answer within this (plus the poll) means it is down.
CALL_TIMEOUT_S = 120.0


class SchedulerUnavailable(AragogError):
    """The scheduler cannot be reached (serve --ray): 503."""


class Latencies:
    """The last ``keep`` durations of one step (seconds) and how many there were: what
    ``bench/scale_out.py --profile`` reads from the parts of ``serve --ray``."""

    def __init__(self, keep: int = 4096):
        self.recent: deque[float] = deque(maxlen=keep)
        self.count = 0

    def add(self, seconds: float) -> None:
        self.recent.append(seconds)
        self.count += 1

    def summary(self, since: int = 0) -> dict[str, float]:
        """Count, and percentiles of those recorded after the first ``since`` (still kept)."""
        kept = list(self.recent)[-(self.count - since) :] if self.count > since else []
        if not kept:
            return {"count": self.count}
        xs = np.sort(np.asarray(kept, dtype=np.float64))
        return {
            "count": self.count,
            "p50_ms": float(np.median(xs)) * 1e3,
            "p90_ms": float(xs[int(0.9 * (len(xs) - 1))]) * 1e3,
            "mean_ms": float(xs.mean()) * 1e3,
        }


# Events, in the order the executor made them: ("add", run_id, workflow, mask, held,
# settled), ("release", run_id), ("widen", run_id, mask), ("settle", run_id),
# ("finished", run_id, stage),
# ("failed", run_id, stage, engine), ("cancel", run_id).
Event = tuple


@dataclass
class Reply:
    """What the host hands a replica: its plans, its runs the scheduler gave up, and state."""

    epoch: str
    plans: list[Plan] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (run id, why)
    num_ready: int = 0  # ready stages over all replicas
    reset: bool = False  # this replica's lease had run out: its runs are gone


Exchange = Callable[[str, list[Event], float], Awaitable[Reply]]


class SchedulerLink(Protocol):
    """How a replica's server reaches the host (:class:`HttpLink`, :class:`LocalLink`).
    A link may have a ``name``: the replica's lease id at the host (default: a random one)."""

    async def engine_urls(self) -> dict[str, str]: ...

    async def exchange(self, replica: str, events: list[Event], wait_s: float) -> Reply: ...


class LocalLink:
    """A host in this process (tests, and the same code path without Ray)."""

    def __init__(self, host: SchedulerHost):
        self.host = host

    async def engine_urls(self) -> dict[str, str]:
        return dict(self.host.urls)

    async def exchange(self, replica: str, events: list[Event], wait_s: float) -> Reply:
        return await self.host.exchange(replica, list(events), wait_s)


class ExchangeServer:
    """A host's ``exchange`` over HTTP, on its own event loop: ``POST /exchange`` carries a
    pickled ``(replica, events, wait_s)`` and answers the pickled :class:`Reply`;
    ``GET /engines`` the engine URLs (JSON). Every call shows the server's random
    token (``Authorization: Bearer``), checked before anything is unpickled: only what
    was told the token (over the cluster's own channel: ``serve --ray`` hands it out
    through the scheduler deployment's handle) can call. A plain keep-alive HTTP call
    costs a replica far less than a Serve handle call (bench/results/scale_out_profile.md).

    A replica that hangs up (its call timed out, or it is closing) cancels its call's
    wait; plans leave the mailbox only into a reply, so a cancelled wait loses nothing
    (a reply lost on the way is a failed call: the replica fails its runs with 503)."""

    def __init__(self, host: SchedulerHost, bind: str = "127.0.0.1", port: int = 0):
        self.host = host
        self.token = secrets.token_hex(16)
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_post("/exchange", self._exchange)
        app.router.add_get("/engines", self._engines)
        self.server = LoopbackServer(app, host=bind, port=port, handler_cancellation=True)

    async def start(self) -> str:
        """Listen; returns the base URL."""
        return await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    @property
    def endpoint(self) -> tuple[str, str]:
        """What a replica needs to call: (base URL, token)."""
        return self.server.url, self.token

    def _allowed(self, request: web.Request) -> bool:
        shown = request.headers.get("Authorization", "").encode()
        return hmac.compare_digest(shown, f"Bearer {self.token}".encode())

    async def _exchange(self, request: web.Request) -> web.Response:
        if not self._allowed(request):
            return web.Response(status=403, text="wrong or missing scheduler token")
        replica, events, wait_s = pickle.loads(await request.read())
        reply = await self.host.exchange(replica, events, wait_s)
        return web.Response(body=pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))

    async def _engines(self, request: web.Request) -> web.Response:
        if not self._allowed(request):
            return web.Response(status=403, text="wrong or missing scheduler token")
        return web.json_response(dict(self.host.urls))


class HttpLink:
    """A replica's way to a host behind an :class:`ExchangeServer`: keep-alive HTTP calls.

    ``locate()`` says where the host is, as (base URL, token); it is asked again after a
    call fails, so a host that restarted elsewhere (``serve --ray``: a new scheduler
    replica, a new port and token) is found by the next call. Close it when done."""

    def __init__(
        self, locate: Callable[[], Awaitable[tuple[str, str]]], *, name: str | None = None
    ):
        self._locate = locate
        self.name = name  # the replica's lease id at the host (None: a random one)
        self._where: tuple[str, str] | None = None
        self._http: aiohttp.ClientSession | None = None

    async def _endpoint(self) -> tuple[aiohttp.ClientSession, str, dict[str, str]]:
        if self._where is None:
            self._where = tuple(await self._locate())
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None),  # RemotePort bounds every call
                connector=aiohttp.TCPConnector(limit=0),
            )
        url, token = self._where
        return self._http, url, {"Authorization": f"Bearer {token}"}

    async def engine_urls(self) -> dict[str, str]:
        http, url, auth = await self._endpoint()
        async with http.get(f"{url}/engines", headers=auth) as r:
            r.raise_for_status()
            return await r.json()

    async def exchange(self, replica: str, events: list[Event], wait_s: float) -> Reply:
        try:
            http, url, auth = await self._endpoint()
            body = pickle.dumps((replica, events, wait_s), protocol=pickle.HIGHEST_PROTOCOL)
            async with http.post(f"{url}/exchange", data=body, headers=auth) as r:
                if r.status != 200:
                    raise ConnectionError(f"the scheduler answered HTTP {r.status}")
                return pickle.loads(await r.read())
        except BaseException:
            self._where = None  # find it again: it may have restarted elsewhere
            raise

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None


@dataclass
class _Mailbox:
    plans: list[Plan] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    seen: float = 0.0
    runs: set[str] = field(default_factory=set)


class SchedulerHost:
    """The scheduler, the load monitor and the rounds for every replica.

    Lifecycle: ``await open()`` (emulated engines, engine clients, monitor, lease reaper),
    ``exchange`` from the replicas, ``await close()``."""

    def __init__(
        self,
        fleet: FleetRuntime,
        *,
        policy: str = "aragog",
        beam_width: int = DEFAULT_BEAM_WIDTH,
        lease_s: float = LEASE_S,
        warm_up: bool = True,
    ):
        self.fleet = fleet
        self.policy = policy
        self.beam_width = beam_width
        self.lease_s = lease_s
        self.warm = warm_up
        self.epoch = uuid.uuid4().hex[:12]
        self.urls: dict[str, str] = {}
        self.port: SchedulerPort | None = None
        self.engines: dict[str, EngineLoadState] = {}
        self.monitor: LoadMonitor | None = None
        self._emulated: list[LoopbackServer] = []
        self._boxes: dict[str, _Mailbox] = {}
        self._expired: set[str] = set()
        self._owner: dict[str, str] = {}  # run id -> replica
        self._running: dict[str, dict[int, str]] = {}  # run id -> {stage: engine}
        self._round: asyncio.Future | None = None
        self._reaper: asyncio.Task | None = None
        self._late_warm: asyncio.Future | None = None
        self.num_rounds = 0
        self.num_calls = 0
        self.service = Latencies()  # a call with events: applying them and its round
        self.round_s = Latencies()  # one round's decision (the scheduler's batched call)

    async def open(self) -> None:
        st = self.fleet.settings
        self.urls, emulated = await start_engines(self.fleet)
        self._emulated = [srv for _, srv in emulated.values()]
        self.port = SchedulerPort(self.fleet, self.policy, self.beam_width)
        limits = ClientLimits(
            request_timeout_s=st.engine_timeout_s,
            connect_timeout_s=min(5.0, st.engine_timeout_s),
            max_connections=8,
        )
        for e in self.fleet.engines:
            client = EngineClient(e.name, self.urls[e.name], e.served_model, limits)
            await client.open()
            self.engines[e.name] = EngineLoadState(client, e.model, CircuitBreaker())
        if self.warm:  # as the single-process server: small rounds now, larger ones behind
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self.port.warm_up, WARM_ITEMS)
            self._late_warm = loop.run_in_executor(
                None, self.port.warm_up, LATE_ITEMS, 2 * WARM_ITEMS
            )
        self.monitor = LoadMonitor(
            list(self.engines.values()), poll_s=st.metrics_poll_s, on_change=self._kick
        )
        await self.monitor.poll_once()
        self.monitor.start()
        self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        if self.monitor is not None:
            await self.monitor.stop()
        for st in self.engines.values():
            await st.client.close()
        for srv in self._emulated:
            await srv.stop()
        if self._late_warm is not None:
            await asyncio.wait([self._late_warm], timeout=30)  # a compile cannot be interrupted

    # -- the one call ---------------------------------------------------------------------

    async def exchange(self, replica: str, events: list[Event], wait_s: float = 0.0) -> Reply:
        """Apply a replica's events, run the round they call for, hand back its mailbox
        (waiting up to ``wait_s`` for something to arrive when it is empty)."""
        self.num_calls += 1
        if replica in self._expired:
            return Reply(self.epoch, reset=True)
        box = self._boxes.get(replica)
        if box is None:
            box = self._boxes[replica] = _Mailbox()
        box.seen = t0 = time.monotonic()
        if events:
            self._apply(replica, box, events)
            await self._round_soon()
            self.service.add(time.monotonic() - t0)
        if wait_s > 0:
            await self._wait(box, t0 + wait_s)
        box.seen = time.monotonic()
        reply = Reply(self.epoch, box.plans, box.failures, self.port.num_ready)
        box.plans, box.failures = [], []
        return reply

    @staticmethod
    async def _wait(box: _Mailbox, until: float) -> None:
        """A long poll: until the mailbox has something or ``until`` (monotonic) passes.
        A wake-up that finds it empty again (the replica's own call with events took the
        plan first) keeps waiting: answering it would only cost a call to renew it."""
        while not (box.plans or box.failures):
            left = until - time.monotonic()
            if left <= 0:
                return
            box.wake.clear()
            try:
                await asyncio.wait_for(box.wake.wait(), left)
            except TimeoutError:
                return

    def _apply(self, replica: str, box: _Mailbox, events: list[Event]) -> None:
        now = time.monotonic()
        sched = self.port
        lost_engine = False
        settled: list[str] = []  # runs whose routing completed in these events
        for ev in events:
            kind, run_id = ev[0], ev[1]
            if kind == "add":
                wf: WorkflowRuntime = self.fleet.workflows[ev[2]]
                try:
                    sched.add(run_id, wf, ev[3], held=ev[4], settled=ev[5])
                except NoViableConfigurationError as exc:
                    box.failures.append((run_id, str(exc)))
                    continue
                self._owner[run_id] = replica
                box.runs.add(run_id)
            elif self._owner.get(run_id) != replica:
                continue  # already dropped (its replica's lease ran out, or it failed here)
            elif kind == "cancel":
                self._drop(run_id)
            elif kind == "release":
                sched.release(run_id)
            elif kind == "widen":
                sched.widen(run_id, ev[2])
            elif kind == "settle":
                sched.settle(run_id)
                settled.append(run_id)
            elif kind == "finished":
                sid = ev[2]
                engine = self._running.get(run_id, {}).get(sid)
                self._release(run_id, sid)
                if engine is not None:
                    self.engines[engine].breaker.on_success(now)
                sched.finished(run_id, sid)
                if not sched.sched.is_queued(run_id):
                    self._forget(run_id)
            else:  # failed
                sid, engine = ev[2], ev[3]
                self._release(run_id, sid)
                if self.engines[engine].breaker.on_failure(now, "stage failed on a replica"):
                    log.warning("engine %s marked unhealthy (a replica's stage failed)", engine)
                    lost_engine = True
                if not sched.failed(run_id, sid, engine):
                    self._fail(
                        run_id,
                        f"no admitted configuration can run on the healthy engines after {engine} failed",
                    )
        if not (lost_engine or settled):
            return
        healthy = healthy_models(self.engines.values(), now)
        # After an engine is lost every queued run is judged; a run whose routing just
        # completed is judged once (earlier sweeps skip it: routing could still widen).
        for run_id in sched.unviable(healthy, None if lost_engine else settled):
            self._fail(
                run_id,
                f"no admitted configuration can run on the healthy engines ({sorted(healthy)})",
            )

    def _fail(self, run_id: str, why: str) -> None:
        replica = self._owner.get(run_id)
        self._drop(run_id)
        box = self._boxes.get(replica)
        if box is not None:
            box.failures.append((run_id, why))
            box.wake.set()

    def _release(self, run_id: str, sid: int) -> None:
        engine = self._running.get(run_id, {}).pop(sid, None)
        if engine is not None:
            st = self.engines[engine]
            st.in_flight -= 1
            st.num_returned += 1

    def _drop(self, run_id: str) -> None:
        """A run ends early: out of the meta-queue, its running stages' slots given back."""
        for sid in list(self._running.get(run_id, {})):
            self._release(run_id, sid)
        self.port.cancel(run_id)
        self._forget(run_id)

    def _forget(self, run_id: str) -> None:
        self._running.pop(run_id, None)
        box = self._boxes.get(self._owner.pop(run_id, ""))
        if box is not None:
            box.runs.discard(run_id)

    # -- rounds ---------------------------------------------------------------------------

    def _kick(self) -> None:
        if self._round is None:
            self._round = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(self._run_round)

    async def _round_soon(self) -> None:
        """One round for every call of this loop turn (they wait for the same one)."""
        self._kick()
        await asyncio.shield(self._round)

    def _run_round(self) -> None:
        fut, self._round = self._round, None
        try:
            t0 = time.perf_counter()
            plan = self.port.round(self.monitor.snapshot)
            self.round_s.add(time.perf_counter() - t0)
            if plan is not None:
                self._file(plan)
        finally:
            fut.set_result(None)

    def _file(self, plan: Plan) -> None:
        self.num_rounds += 1
        now = time.monotonic()
        to: set[str] = set()
        for a in plan.assignments:
            st = self.engines[a.engine]
            st.in_flight += 1
            st.num_dispatched += 1
            st.breaker.on_dispatch(now)
            self._running.setdefault(a.request_id, {})[a.stage] = a.engine
            to.add(self._owner[a.request_id])
        for replica in to:
            box = self._boxes[replica]
            box.plans.append(plan)
            box.wake.set()

    # -- leases ---------------------------------------------------------------------------

    async def _reap(self) -> None:
        period = self.lease_s / 4
        last = time.monotonic()
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            lag = now - last - period
            if lag > 0.05:  # this loop was busy (a round compiling): nobody could call
                for box in self._boxes.values():
                    box.seen += lag
            last = now
            self.expire(now)

    def expire(self, now: float) -> list[str]:
        """Drop the replicas whose lease ran out (their runs leave the meta-queue)."""
        gone = [r for r, b in self._boxes.items() if now - b.seen > self.lease_s]
        for replica in gone:
            box = self._boxes.pop(replica)
            self._expired.add(replica)
            for run_id in list(box.runs):
                self._drop(run_id)
            log.warning(
                "replica %s missed its lease (%.0f s): dropped its %d runs",
                replica,
                self.lease_s,
                len(box.runs),
            )
        if gone:
            self._kick()
        return gone

    def stats(self) -> dict[str, int]:
        return {
            "replicas": len(self._boxes),
            "busy_replicas": sum(1 for box in self._boxes.values() if box.runs),
            "runs": len(self._owner),
            "ready": self.port.num_ready,
            "rounds": self.num_rounds,
            "calls": self.num_calls,
            "in_flight": sum(st.in_flight for st in self.engines.values()),
        }

    def runs_by_replica(self) -> dict[str, int]:
        """Runs in flight per replica lease id (tests pick a replica to kill by it)."""
        return {replica: len(box.runs) for replica, box in self._boxes.items()}

    def timings(self, since: dict[str, int] | None = None) -> dict[str, dict[str, float]]:
        """Where a call's time goes in the host (``bench/scale_out.py --profile``): per
        step, the count and the percentiles after the counts in ``since``."""
        since = since or {}
        parts = {"service": self.service, "round": self.round_s}
        return {k: lat.summary(since.get(k, 0)) for k, lat in parts.items()}


class RemotePort:
    """The executor's scheduler port when the scheduler is a :class:`SchedulerHost`
    elsewhere: the calls become events, sent in one batch per loop turn."""

    def __init__(
        self,
        exchange: Exchange,
        *,
        poll_s: float = POLL_S,
        call_timeout_s: float = CALL_TIMEOUT_S,
        replica: str | None = None,
    ):
        self._exchange = exchange
        self.poll_s = poll_s
        self.call_timeout_s = call_timeout_s
        self.replica = replica or f"replica-{uuid.uuid4().hex[:12]}"
        self.num_ready = 0  # over all replicas, as of the last reply
        self.num_calls = 0
        self.exchange_s = Latencies()  # calls with events, as this replica waits for them
        self.epoch: str | None = None
        self.down: str = ""  # why the scheduler is unreachable ("" when it answers)
        self._events: list[Event] = []
        self._flushing = False
        self._space: dict[str, tuple[tuple[int, ...], ...]] = {}  # run id -> upstream
        self._done: dict[str, set[int]] = {}
        self._epoch_of: dict[str, str | None] = {}  # run id -> the epoch it was queued with
        self._on_plan: Callable[[Plan], None] = lambda plan: None
        self._on_fail: Callable[[str, AragogError], None] = lambda run_id, exc: None
        self._listener: asyncio.Task | None = None
        self._flusher: asyncio.Task | None = None
        self._closed = False

    def attach(
        self, on_plan: Callable[[Plan], None], on_fail: Callable[[str, AragogError], None]
    ) -> None:
        self._on_plan, self._on_fail = on_plan, on_fail

    async def open(self) -> None:
        """First contact (raises SchedulerUnavailable when the host does not answer), then
        the long poll."""
        reply = await self._call([], 0.0)
        if reply is None:
            raise SchedulerUnavailable(f"scheduler unreachable: {self.down}")
        self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def close(self) -> None:
        self._closed = True
        for t in (self._listener, self._flusher):
            if t is not None:
                t.cancel()
        if self._events:  # the runs' ends, so the host frees their slots now, not at lease end
            events, self._events = self._events, []
            try:
                await asyncio.wait_for(self._exchange(self.replica, events, 0.0), 2.0)
            except Exception:  # noqa: BLE001 - the lease will drop them
                pass

    def warm_up(self, max_items: int, min_items: int = 1) -> float:
        return 0.0  # the host compiles the rounds

    def check(self) -> None:
        if self.down:
            raise SchedulerUnavailable(f"scheduler unavailable ({self.down}); retry shortly")

    # -- transitions (recorded; sent at the next round) ------------------------------------

    def add(
        self,
        run_id: str,
        wf: WorkflowRuntime,
        mask: np.ndarray,
        *,
        held: bool = False,
        settled: bool = True,
    ) -> list[int]:
        self.check()
        up = wf.space.upstream
        self._space[run_id] = up
        self._done[run_id] = set()
        self._epoch_of[run_id] = self.epoch
        self._events.append(("add", run_id, wf.name, np.asarray(mask, dtype=bool), held, settled))
        return [] if held else _first_stages(up)

    def release(self, run_id: str) -> list[int]:
        """A held run's stages become schedulable (at the host with this turn's events);
        returns them: its first stages, as nothing of a held run has started."""
        up = self._space.get(run_id)
        if up is None:
            return []
        self._events.append(("release", run_id))
        return _first_stages(up)

    def widen(self, run_id: str, mask: np.ndarray) -> None:
        """Routing found more: the host grows the queued run's admitted set."""
        if run_id in self._space:
            self._events.append(("widen", run_id, np.asarray(mask, dtype=bool)))

    def settle(self, run_id: str) -> None:
        """Routing for the run is over: the host judges its viability from now on."""
        if run_id in self._space:
            self._events.append(("settle", run_id))

    def finished(self, run_id: str, sid: int) -> list[int]:
        up = self._space.get(run_id)
        if up is None:
            return []
        self._events.append(("finished", run_id, sid))
        done = self._done[run_id]
        done.add(sid)
        if len(done) == len(up):
            self._forget(run_id)
            return []
        return [
            s
            for s, ups in enumerate(up)
            if sid in ups and s not in done and all(u in done for u in ups)
        ]

    def failed(self, run_id: str, sid: int, engine: str) -> bool:
        if run_id not in self._space:
            return False
        self._events.append(("failed", run_id, sid, engine))
        return True  # the host says otherwise in a reply when nothing admitted is left

    def cancel(self, run_id: str) -> None:
        if run_id in self._space:
            self._forget(run_id)
            self._events.append(("cancel", run_id))
            self._flush_soon()  # no round may follow (a queued run's client hung up)

    def unviable(self, healthy_models: set[str], run_ids=None) -> list[str]:
        return []  # the host sweeps with its own engines' health

    def round(self, snapshot) -> None:
        """Send this turn's events (one call; the host runs the round). Plans arrive later."""
        self._flush_soon()
        return None

    def _flush_soon(self) -> None:
        """Send the events at the end of this loop turn (one call in flight at a time)."""
        if self._events and not self._flushing and not self._closed:
            self._flushing = True
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    # -- the calls ------------------------------------------------------------------------

    def _forget(self, run_id: str) -> None:
        self._space.pop(run_id, None)
        self._done.pop(run_id, None)
        self._epoch_of.pop(run_id, None)

    async def _flush(self) -> None:
        try:
            while self._events and not self._closed:
                events, self._events = self._events, []
                reply = await self._call(events, 0.0)
                if reply is None:
                    break  # down: what is left goes once the long poll gets through again
                self._deliver(reply)
        finally:
            self._flushing = False

    async def _listen(self) -> None:
        while not self._closed:
            reply = await self._call([], self.poll_s)
            if reply is None:
                await asyncio.sleep(min(1.0, self.poll_s))
            else:
                self._deliver(reply)
                self._flush_soon()

    async def _call(self, events: list[Event], wait_s: float) -> Reply | None:
        self.num_calls += 1
        t0 = time.perf_counter()
        try:
            reply = await asyncio.wait_for(
                self._exchange(self.replica, events, wait_s), wait_s + self.call_timeout_s
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the transport raises: down
            self._lost(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            return None
        if events:
            self.exchange_s.add(time.perf_counter() - t0)
        if self.down:
            log.warning("scheduler reachable again (epoch %s)", reply.epoch)
            self.down = ""
        if reply.reset or (self.epoch is not None and reply.epoch != self.epoch):
            if reply.reset:  # nothing of this call was applied: every run here is lost
                stale = list(self._space)
                self.replica = f"replica-{uuid.uuid4().hex[:12]}"  # a new lease from now on
            else:  # a new host applied this call's adds; it never saw the ones before
                added = {ev[1] for ev in events if ev[0] == "add"}
                stale = [
                    r for r, e in self._epoch_of.items() if e != reply.epoch and r not in added
                ]
            why = "this replica's lease ran out" if reply.reset else "the scheduler restarted"
            self._fail_runs(stale, f"the scheduler lost this request ({why})")
        self.epoch = reply.epoch
        for ev in events:
            if ev[0] == "add" and ev[1] in self._epoch_of:
                self._epoch_of[ev[1]] = reply.epoch
        return reply

    def _lost(self, why: str) -> None:
        if not self.down:
            log.error(
                "scheduler unreachable (%s): failing %d runs in flight", why, len(self._space)
            )
        self.down = why
        self._events = [ev for ev in self._events if ev[0] == "cancel"]
        self._fail_runs(list(self._space), f"scheduler unavailable ({why})")

    def _fail_runs(self, run_ids: list[str], why: str) -> None:
        for run_id in run_ids:
            self._on_fail(run_id, SchedulerUnavailable(why))

    def _deliver(self, reply: Reply) -> None:
        self.num_ready = reply.num_ready
        for run_id, why in reply.failures:
            self._forget(run_id)
            self._on_fail(run_id, NoViableConfigurationError(why))
        for plan in reply.plans:
            self._on_plan(plan)


def _first_stages(upstream: tuple[tuple[int, ...], ...]) -> list[int]:
    """The stages with nothing upstream: what a run that has not started can dispatch."""
    return [s for s, ups in enumerate(upstream) if not ups]
