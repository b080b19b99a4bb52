"""The front door: the aiohttp app, its guard (security, limits, errors), and the server's
lifecycle. The route handlers are in :mod:`._api`, SSE streaming in :mod:`._sse`.

Errors map to HTTP statuses in one place (:func:`~._status.status_of`): schema errors 400 (naming
the field), bad or missing key 401, unknown workflow or route 404, wrong method 405,
body not received in time 408, body too large 413, meta-queue full 429 (with
``Retry-After``), a workflow's stage function raised 500, engine failure 502, no viable
configuration or shutting down 503, deadline 504. Every error, aiohttp's own included
(see :mod:`._conn`), is the JSON shape of :func:`~._wire.error_body`; requests refused
before a run was admitted are counted in ``aragog_requests_rejected_total``.

A client that disconnects cancels its handler (``handler_cancellation``), and with it
the run: :meth:`Executor.cancel`.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

from aiohttp import web

from aragog_jax.errors import AragogError, PayloadTooLarge, Unauthorized
from aragog_jax.scheduler import DEFAULT_BEAM_WIDTH
from aragog_jax.serving._api import (
    CHAT_PATH,
    RUN_KEY,
    RUNS_PREFIX,
    RUNS_SUFFIX,
    WORKFLOW_MODEL_PREFIX,
    Api,
)
from aragog_jax.serving._conn import ConnLimits, GuardedRunner
from aragog_jax.serving._emulated import EmulatedEngine
from aragog_jax.serving._executor import Executor, close_part
from aragog_jax.serving._fleet import FleetRuntime, start_engines
from aragog_jax.serving._intake import DEFAULT_ROUTING_BUDGET_S
from aragog_jax.serving._lane import Answer
from aragog_jax.serving._loopback import LoopbackServer
from aragog_jax.serving._metrics import ServerMetrics
from aragog_jax.serving._remote import RemotePort, SchedulerLink
from aragog_jax.serving._sched import LATE_ITEMS, WARM_ITEMS
from aragog_jax.serving._status import (
    ECHO_CHARS,
    REJECTIONS,
    RETRY_AFTER_S,
    clip,
    error_parts,
    error_response,
    is_loopback,
    schema_error,
    status_of,
)
from aragog_jax.serving._wire import error_body

__all__ = [
    "ECHO_CHARS",
    "RETRY_AFTER_S",
    "RUN_KEY",
    "WORKFLOW_MODEL_PREFIX",
    "ServeOptions",
    "Server",
    "clip",
    "error_response",
    "is_loopback",
    "schema_error",
    "status_of",
]

log = logging.getLogger("aragog_jax.serving")

#: Young-generation collection threshold while serving (see ServeOptions.tune_gc).
GC_THRESHOLD_0 = 10_000

# The collector is process-wide: servers in one process (tests, embedding) share the
# tuning, and the settings from before the first start come back when the last stops.
_gc_tuned_by = 0
_gc_saved_threshold: tuple[int, ...] = ()


def _tune_gc() -> None:
    global _gc_tuned_by, _gc_saved_threshold
    gc.collect()
    gc.freeze()
    if _gc_tuned_by == 0:
        _gc_saved_threshold = gc.get_threshold()
        gc.set_threshold(max(GC_THRESHOLD_0, _gc_saved_threshold[0]), *_gc_saved_threshold[1:])
    _gc_tuned_by += 1


def _untune_gc() -> None:
    global _gc_tuned_by
    _gc_tuned_by -= 1
    if _gc_tuned_by == 0:
        gc.unfreeze()
        gc.set_threshold(*_gc_saved_threshold)


@dataclass
class ServeOptions:
    drain_s: float = 30.0  # graceful shutdown: how long in-flight requests may finish
    keep_rounds: int = 256  # scheduling rounds kept for GET /v1/rounds/{id}
    policy: str = "aragog"  # scheduling policy (aragog_jax.scheduler.make_policy)
    beam_width: int = DEFAULT_BEAM_WIDTH
    warm_up: bool = True  # compile the scheduling round for common sizes at start-up
    # A router off the loop (embeddings endpoint): how long a request's stages wait for it
    # before running with the configurations admitted so far (aragog_jax.serving._intake).
    routing_budget_s: float = DEFAULT_ROUTING_BUDGET_S
    # After start-up, collect once, move every live object (modules, compiled router and
    # scheduler, fleet) to the collector's permanent generation (gc.freeze) and raise the
    # young-generation threshold to GC_THRESHOLD_0; stop() undoes both (the last stop, when
    # several servers share the process). Without it a full collection walks those ~200k
    # objects (100+ ms pauses under load), and at the default
    # threshold (700) the allocation bursts of one busy loop turn trigger ~40 young
    # collections a second that keep scanning live runs: about 4% of the loop's time.
    tune_gc: bool = True
    # serve --ray: the scheduler is a SchedulerHost elsewhere, reached through this link
    # (``exchange`` and ``engine_urls`` coroutines; see :mod:`._remote`). The host runs the
    # emulated engines, the load monitor and the rounds; this server runs everything else.
    remote: SchedulerLink | None = None
    # Answer the hot requests (non-streaming runs and chat completions) in the fast lane
    # (aragog_jax.serving._lane) instead of through aiohttp's server; off: aiohttp takes
    # every request (the lane's tests compare the two).
    fast_lane: bool = True


class Server:
    """Lifecycle: ``await start()`` -> serving; ``await stop()`` drains and closes."""

    def __init__(self, fleet: FleetRuntime, options: ServeOptions = ServeOptions()):
        self.fleet = fleet
        self.settings = fleet.settings
        self.options = options
        self.metrics = ServerMetrics()
        self.executor: Executor | None = None
        self.emulated: dict[str, tuple[EmulatedEngine, LoopbackServer]] = {}
        self.site: LoopbackServer | None = None
        self.url = ""
        self.state = "starting"  # starting, serving, draining, closed
        self._stopping: asyncio.Task | None = None
        self._drain_cut = False  # cut_drain(): stop waiting for in-flight requests
        self._late_warm: asyncio.Future | None = None
        self._gc_tuned = False  # this server holds the collector tuned (_tune_gc)
        # Compared as bytes: a header that is not UTF-8 (aiohttp hands it over with
        # surrogate escapes) is just a wrong key, never an encoding error.
        self._keys = tuple(k.encode() for k in fleet.api_keys)
        st = self.settings
        self.limits = ConnLimits(
            header_timeout_s=st.header_timeout_s,
            keepalive_timeout_s=st.keepalive_timeout_s,
            max_connections=st.max_connections,
        )
        self.api = Api(self)
        self.app = self._make_app()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> str:
        remote = self.options.remote
        port = None
        if remote is not None:
            urls = await remote.engine_urls()
            port = RemotePort(remote.exchange, replica=getattr(remote, "name", None))
        else:
            urls, self.emulated = await start_engines(self.fleet)
        self.executor = Executor(
            self.fleet,
            urls,
            self.metrics,
            keep_rounds=self.options.keep_rounds,
            policy=self.options.policy,
            beam_width=self.options.beam_width,
            routing_budget_s=self.options.routing_budget_s,
            port=port,
        )
        # Bind before the slow part, so a busy port fails at once; until "serving",
        # requests get 503 and /ready says "starting".
        self.site = LoopbackServer(
            self.app,
            self.settings.host,
            self.settings.port,
            shutdown_timeout=1.0,
            make_runner=self._runner,
        )
        self.url = await self.site.start()
        if not self._keys and not is_loopback(self.settings.host):
            log.warning(
                "NO AUTH: listening on %r, which is not a loopback address, without API keys: anyone who can reach "
                "it can run workflows on your engines. Set [server] api_keys or api_keys_env in the fleet file.",
                self.settings.host,
            )
        loop = asyncio.get_running_loop()
        if self.options.warm_up:
            for worker in self.executor.routers.values():
                await loop.run_in_executor(None, worker.warm_up, self.settings.max_queue)
        if self.options.warm_up and remote is None:  # else the rounds compile in the host
            took = await loop.run_in_executor(None, self.executor.warm_up, WARM_ITEMS)
            log.info(
                "scheduler compiled for rounds of up to %d stages in %.1f s",
                WARM_ITEMS,
                took,
            )
            self._late_warm = loop.run_in_executor(
                None, self.executor.warm_up, LATE_ITEMS, 2 * WARM_ITEMS
            )
            self._late_warm.add_done_callback(self._warm_done)
        await self.executor.open()
        if self.options.tune_gc:
            _tune_gc()
            self._gc_tuned = True
        self.state = "serving"
        return self.url

    def _warm_done(self, fut: asyncio.Future) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            log.warning("scheduler warm-up failed (rounds compile on first use): %s", exc)
        else:
            log.info(
                "scheduler compiled for rounds of up to %d stages in %.1f s more",
                LATE_ITEMS,
                fut.result(),
            )

    def _runner(self, app: web.Application, shutdown_timeout: float) -> GuardedRunner:
        return GuardedRunner(
            app,
            self.limits,
            self._rejected,
            shutdown_timeout=shutdown_timeout,
            lane=self._lane if self.options.fast_lane else None,
            max_body=self.settings.max_body_bytes,
        )

    def _rejected(self, status: int, kind: str) -> None:
        self.metrics.rejected.labels(str(status), kind).inc()

    def _count_refusal(self, exc: AragogError) -> None:
        """Count a request refused before its run was admitted (:data:`REJECTIONS`)."""
        if isinstance(exc, REJECTIONS):
            self._rejected(*status_of(exc))

    @property
    def compiling(self) -> bool:
        return self._late_warm is not None and not self._late_warm.done()

    async def stop(self, drain_s: float | None = None) -> dict[str, int]:
        """Stop taking requests, let in-flight ones finish for ``drain_s``, then close.

        Safe to call more than once (later calls wait for the first); :meth:`cut_drain`
        ends the wait for in-flight requests early."""
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop(drain_s))
        return await asyncio.shield(self._stopping)

    async def _stop(self, drain_s: float | None) -> dict[str, int]:
        try:
            return await self._close(drain_s)
        finally:  # even when closing failed or was cancelled
            if self._gc_tuned:
                self._gc_tuned = False
                _untune_gc()

    async def _close(self, drain_s: float | None) -> dict[str, int]:
        """Drain, then close every part; a part that fails to close does not keep the
        others open (the first failure is raised once all were tried)."""
        self.state = "draining"
        ex = self.executor
        left = 0
        failures: list[BaseException] = []

        async def step(what: str, aw) -> None:
            await close_part(what, aw, failures)

        if ex is not None:
            ex.draining = True
        if self.site is not None:
            await step("the listener", self.site.stop_listening())
        if ex is not None:
            deadline = time.monotonic() + (self.options.drain_s if drain_s is None else drain_s)
            while ex.num_in_flight and time.monotonic() < deadline and not self._drain_cut:
                await asyncio.sleep(0.05)
            left = ex.num_in_flight
            await step("the executor", ex.close())  # what is left ends with 503
        if self.site is not None:
            await step("the site", self.site.stop())
        if self._late_warm is not None and not self._late_warm.done():
            await asyncio.wait([self._late_warm], timeout=30)  # a compile cannot be interrupted
        for name, (_, srv) in self.emulated.items():
            await step(f"emulated engine {name}", srv.stop())
        self.state = "closed"
        if failures:
            raise failures[0]
        return {"cancelled_at_shutdown": left}

    def cut_drain(self) -> None:
        """Stop waiting for in-flight requests (a second SIGINT/SIGTERM): a stop in
        progress, or the next one, ends them with 503 at once."""
        self._drain_cut = True

    # -- app ------------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.settings.max_body_bytes, middlewares=[self._guard]
        )
        r = app.router
        r.add_get("/health", self.api.health)
        r.add_get("/ready", self.api.ready)
        r.add_get("/metrics", self.api.prom)
        r.add_get("/v1/workflows", self.api.list_workflows)
        r.add_post(RUNS_PREFIX + "{name}" + RUNS_SUFFIX, self.api.run_workflow)
        r.add_get("/v1/models", self.api.list_models)
        r.add_post(CHAT_PATH, self.api.chat)
        r.add_get("/v1/rounds/{round_id}", self.api.get_round)
        r.add_get("/v1/rounds/{round_id}/decision", self.api.get_round)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler):
        try:
            if self._keys and request.path != "/health":
                self._authorize(request.headers.get("Authorization", ""))
            if (
                request.content_length is not None
                and request.content_length > self.settings.max_body_bytes
            ):
                raise PayloadTooLarge(f"request body over {self.settings.max_body_bytes} bytes")
            return await handler(request)
        except AragogError as exc:
            self._count_refusal(exc)
            return error_response(exc)
        except web.HTTPRequestEntityTooLarge:  # a chunked body over client_max_size
            self._rejected(413, "payload_too_large")
            return error_response(
                PayloadTooLarge(f"request body over {self.settings.max_body_bytes} bytes")
            )
        except (
            web.HTTPException
        ) as exc:  # aiohttp's router: unknown route (404), wrong method (405)
            if exc.status < 400:
                raise
            return self._http_error(request, exc)
        except BaseException as exc:
            # The client went away (aiohttp cancels the handler, or a write found the
            # connection closed), or a bug: whatever the handler awaited, its run ends.
            run = request.get(RUN_KEY)
            if run is not None:
                gone = isinstance(exc, (asyncio.CancelledError, ConnectionResetError))
                self.executor.cancel(
                    run,
                    "client disconnected"
                    if gone
                    else f"request handler failed: {type(exc).__name__}",
                )
            raise

    def _authorize(self, auth: str) -> None:
        # The header's bytes, whatever they are (aiohttp decodes with surrogate escapes).
        if not self._key_ok(auth.encode("utf-8", "surrogateescape")):
            raise Unauthorized(
                "missing or invalid API key (send Authorization: Bearer <key>)"
            )  # never the key

    def _key_ok(self, auth: bytes) -> bool:
        key = auth[7:].strip() if auth[:7].lower() == b"bearer " else b""
        return bool(key) and any(hmac.compare_digest(key, k) for k in self._keys)

    # -- the fast lane (._lane) -----------------------------------------------------------

    def _lane(
        self, path: str, auth: bytes | None, body: bytes
    ) -> Callable[[], Awaitable[Answer]] | None:
        """What answers a hot request, or None for one the app takes: a missing or bad
        key (the middleware answers 401), a stream, any other route."""
        if self._keys and (auth is None or not self._key_ok(auth)):
            return None
        try:
            reply = self.api.fast(path, body)
        except AragogError as exc:
            return partial(self._lane_answer, None, exc)
        return None if reply is None else partial(self._lane_answer, reply, None)

    async def _lane_answer(
        self, reply: Callable[[], Awaitable[bytes]] | None, exc: AragogError | None
    ) -> Answer:
        try:
            if exc is None:
                return 200, b"", await reply()
        except AragogError as raised:
            exc = raised
        self._count_refusal(exc)
        status, headers, body = error_parts(exc)
        return status, "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode(), body

    def _http_error(self, request: web.Request, exc: web.HTTPException) -> web.Response:
        if exc.status == 404:
            message, kind = f"no route {request.method} {clip(request.path)}", "not_found_error"
        elif exc.status == 405:
            allowed = ", ".join(sorted(getattr(exc, "allowed_methods", ()) or ()))
            message, kind = (
                f"method {clip(request.method, 16)} not allowed on {clip(request.path)} (allowed: {allowed})",
                "method_not_allowed",
            )
        else:
            message, kind = exc.reason, "invalid_request_error"
        self._rejected(exc.status, kind)
        headers = {k: v for k, v in exc.headers.items() if k == "Allow"}
        return web.Response(
            status=exc.status,
            body=error_body(message, kind, exc.status),
            content_type="application/json",
            headers=headers,
        )
