"""The front door: aiohttp routes, admission, security, and the server's lifecycle.

Errors map to HTTP statuses in one place (:func:`status_of`): schema errors 400 (naming
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
import contextlib
import gc
import hmac
import ipaddress
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import msgspec
from aiohttp import web

from aragog_jax.errors import (
    AragogError,
    BadRequest,
    DeadlineExceededError,
    NotFound,
    NoViableConfigurationError,
    OverloadedError,
    PayloadTooLarge,
    RequestTimeout,
    ShuttingDown,
    SpecError,
    StageFunctionError,
    Unauthorized,
    UpstreamError,
    UpstreamTimeout,
)
from aragog_jax.scheduler import DEFAULT_BEAM_WIDTH
from aragog_jax.serving._conn import ConnLimits, GuardedRunner
from aragog_jax.serving._emulated import EmulatedEngine
from aragog_jax.serving._executor import Executor, OutputDelta, Run, close_part
from aragog_jax.serving._fleet import FleetRuntime, size_unprofiled
from aragog_jax.serving._loopback import LoopbackServer
from aragog_jax.serving._metrics import ServerMetrics
from aragog_jax.serving._sched import LATE_ITEMS, WARM_ITEMS
from aragog_jax.serving._wire import (
    ENCODER,
    FRONT_CHAT_DECODER,
    RUN_REQUEST_DECODER,
    DeltaEvent,
    DoneEvent,
    ErrorEvent,
    RunResponse,
    StageEvent,
    WorkflowInfo,
    error_body,
)

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


WORKFLOW_MODEL_PREFIX = "workflow:"
# request -> the Run admitted for it (a typed key where aiohttp has them: 3.12+ warns on str keys)
RUN_KEY = web.RequestKey("aragog_run", Run) if hasattr(web, "RequestKey") else "aragog_run"
RETRY_AFTER_S = 1


_STATUS: list[tuple[type[BaseException], int, str]] = [
    (BadRequest, 400, "invalid_request_error"),
    (SpecError, 400, "invalid_request_error"),
    (Unauthorized, 401, "authentication_error"),
    (NotFound, 404, "not_found_error"),
    (RequestTimeout, 408, "request_timeout"),
    (PayloadTooLarge, 413, "payload_too_large"),
    (OverloadedError, 429, "overloaded_error"),
    (ShuttingDown, 503, "unavailable"),
    (UpstreamTimeout, 504, "upstream_timeout"),
    (UpstreamError, 502, "upstream_error"),
    (NoViableConfigurationError, 503, "no_viable_configuration"),
    (DeadlineExceededError, 504, "deadline_exceeded"),
    (StageFunctionError, 500, "stage_function_error"),
    (AragogError, 503, "unavailable"),
]


#: Errors that refuse a request before a run is admitted (aragog_requests_rejected_total);
#: the others end an admitted run (aragog_requests_total{status}).
_REJECTIONS = (
    BadRequest,
    SpecError,
    Unauthorized,
    NotFound,
    RequestTimeout,
    PayloadTooLarge,
    OverloadedError,
    ShuttingDown,
)

#: Names and ids from a request are clipped to this many characters in error messages.
ECHO_CHARS = 80


def clip(text: str, limit: int = ECHO_CHARS) -> str:
    """``text`` for an error message: at most ``limit`` characters, marked when cut."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def status_of(exc: BaseException) -> tuple[int, str]:
    for cls, status, kind in _STATUS:
        if isinstance(exc, cls):
            return status, kind
    return 500, "internal_error"


def error_response(exc: BaseException) -> web.Response:
    status, kind = status_of(exc)
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 429 else None
    resp = web.Response(
        status=status,
        body=error_body(str(exc), kind, status, getattr(exc, "field", None)),
        content_type="application/json",
        headers=headers,
    )
    if status == 408:
        resp.force_close()  # the rest of the body may still be coming
    return resp


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost, or "" (every interface)
        return False


_FIELD_RE = re.compile(r"at `\$\.?([^`]*)`")
_MISSING_RE = re.compile(r"(?:missing required field|unknown field) `([^`]+)`")


def schema_error(exc: msgspec.MsgspecError) -> BadRequest:
    msg = str(exc)
    m = _MISSING_RE.search(msg) or _FIELD_RE.search(msg)
    field = m.group(1) if m else None
    if isinstance(exc, msgspec.ValidationError):
        return BadRequest(
            f"invalid request: {msg}" + (f" (field {field!r})" if field else ""), field
        )
    return BadRequest(f"malformed JSON: {msg}", None)


@dataclass
class ServeOptions:
    drain_s: float = 30.0  # graceful shutdown: how long in-flight requests may finish
    keep_rounds: int = 256  # scheduling rounds kept for GET /v1/rounds/{id}
    policy: str = "aragog"  # scheduling policy (aragog_jax.scheduler.make_policy)
    beam_width: int = DEFAULT_BEAM_WIDTH
    warm_up: bool = True  # compile the scheduling round for common sizes at start-up
    # After start-up, collect once, move every live object (modules, compiled router and
    # scheduler, fleet) to the collector's permanent generation (gc.freeze) and raise the
    # young-generation threshold to GC_THRESHOLD_0; stop() undoes both (the last stop, when
    # several servers share the process). Without it a full collection walks those ~200k
    # objects (100+ ms pauses under load), and at the default
    # threshold (700) the allocation bursts of one busy loop turn trigger ~40 young
    # collections a second that keep scanning live runs: about 4% of the loop's time.
    tune_gc: bool = True


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
        self.app = self._make_app()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> str:
        urls: dict[str, str] = {}
        for e in self.fleet.engines:
            if e.emulated:
                eng = EmulatedEngine(
                    e.name,
                    e.model,
                    e.profile,
                    time_scale=self.settings.time_scale,
                    served_model_name=e.served_model,
                )
                srv = LoopbackServer(eng.app)
                urls[e.name] = await srv.start()
                self.emulated[e.name] = (eng, srv)
            else:
                urls[e.name] = e.spec.url
        await size_unprofiled(self.fleet.engines)
        self.executor = Executor(
            self.fleet,
            urls,
            self.metrics,
            keep_rounds=self.options.keep_rounds,
            policy=self.options.policy,
            beam_width=self.options.beam_width,
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
            took = await loop.run_in_executor(None, self.executor.warm_up, WARM_ITEMS)
            for worker in self.executor.routers.values():
                await loop.run_in_executor(None, worker.warm_up, self.settings.max_queue)
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
        return GuardedRunner(app, self.limits, self._rejected, shutdown_timeout=shutdown_timeout)

    def _rejected(self, status: int, kind: str) -> None:
        self.metrics.rejected.labels(str(status), kind).inc()

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
        r.add_get("/health", self.health)
        r.add_get("/ready", self.ready)
        r.add_get("/metrics", self.prom)
        r.add_get("/v1/workflows", self.list_workflows)
        r.add_post("/v1/workflows/{name}/runs", self.run_workflow)
        r.add_get("/v1/models", self.list_models)
        r.add_post("/v1/chat/completions", self.chat)
        r.add_get("/v1/rounds/{round_id}", self.get_round)
        r.add_get("/v1/rounds/{round_id}/decision", self.get_round)
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
            if isinstance(exc, _REJECTIONS):
                self._rejected(*status_of(exc))
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
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        raw = key.encode("utf-8", "surrogateescape")  # the header's bytes, whatever they are
        if not raw or not any(hmac.compare_digest(raw, k) for k in self._keys):
            raise Unauthorized(
                "missing or invalid API key (send Authorization: Bearer <key>)"
            )  # never the key

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

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(self, request: web.Request) -> web.Response:
        ex = self.executor
        ok, why = ex.ready() if ex is not None and self.state == "serving" else (False, self.state)
        if ok and self.compiling:
            ok, why = False, "compiling the scheduling round for large rounds"
        routers = {
            n: ("compiled" if w.router is not None else "admit-all")
            for n, w in self.fleet.workflows.items()
        }
        return web.json_response(
            {"ready": ok, "detail": why, "routers": routers}, status=200 if ok else 503
        )

    async def prom(self, request: web.Request) -> web.Response:
        if self.executor is not None:
            self.executor.export_load()
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")

    def _workflow(self, name: str):
        wf = self.fleet.workflows.get(name)
        if wf is None:
            raise NotFound(
                f"unknown workflow {clip(name)!r} (known: {', '.join(sorted(self.fleet.workflows))})"
            )
        return wf

    async def list_workflows(self, request: web.Request) -> web.Response:
        data = [
            WorkflowInfo(
                name=w.name,
                description=w.spec.description,
                stages=list(w.space.stage_names),
                num_configs=w.space.num_configs,
                router="trained" if w.router is not None else "admit-all",
                model=WORKFLOW_MODEL_PREFIX + w.name,
            )
            for w in self.fleet.workflows.values()
        ]
        return web.Response(
            body=ENCODER.encode({"object": "list", "data": data}), content_type="application/json"
        )

    async def list_models(self, request: web.Request) -> web.Response:
        data = [
            {"id": WORKFLOW_MODEL_PREFIX + n, "object": "model", "created": 0, "owned_by": "aragog"}
            for n in self.fleet.workflows
        ]
        return web.json_response({"object": "list", "data": data})

    async def get_round(self, request: web.Request) -> web.Response:
        """A recent scheduling round in the round-replay CLI's input format
        (``/v1/rounds/{id}/decision``: what the scheduler decided)."""
        raw = request.match_info["round_id"]
        # Plain ASCII decimal only: int() would also take "1_0", " 1 " and other scripts' digits.
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
            raise BadRequest(
                f"round id must be a non-negative decimal integer, got {clip(raw, 24)!r}",
                "round_id",
            )
        rid = int(raw)
        for plan in reversed(self.executor.recent_rounds):
            if plan.round_id == rid:
                doc = plan.decision() if request.path.endswith("/decision") else plan.to_replay()
                return web.Response(body=ENCODER.encode(doc), content_type="application/json")
        raise NotFound(f"round {rid} is not among the last {self.options.keep_rounds} rounds kept")

    async def _read(self, request: web.Request, decoder):
        if request.content.is_eof():  # the usual case: the whole body came with the head
            raw = await request.read()
        else:
            try:
                async with asyncio.timeout(self.settings.body_timeout_s):
                    raw = await request.read()
            except TimeoutError as exc:
                raise RequestTimeout(
                    f"request body not received within {self.settings.body_timeout_s:g} s"
                ) from exc
        try:
            return decoder.decode(raw)
        except msgspec.MsgspecError as exc:
            raise schema_error(exc) from exc

    def _admit(self, request: web.Request, workflow: str, text: str, **kw) -> Run:
        """Admit a run for ``request``; the guard cancels it if the client goes away."""
        if self.state != "serving" or self.executor is None:
            raise ShuttingDown(f"server is {self.state}; not accepting new requests")
        run = request[RUN_KEY] = self.executor.admit(workflow, text, **kw)
        return run

    async def run_workflow(self, request: web.Request) -> web.StreamResponse:
        wf = self._workflow(request.match_info["name"])
        body = await self._read(request, RUN_REQUEST_DECODER)
        run = self._admit(
            request,
            wf.name,
            _workflow_input(body.input, "input"),
            deadline_s=body.deadline_s,
            replay=body.replay,
            stream=body.stream,
        )
        if body.stream:
            return await self._stream_run(request, run)
        res = await self.executor.wait(run)
        return web.Response(
            body=ENCODER.encode(
                RunResponse(id=res.id, workflow=wf.name, output=res.output, receipt=res.receipt)
            ),
            content_type="application/json",
        )

    async def _sse(
        self, request: web.Request, run: Run, frames: AsyncIterator[bytes]
    ) -> web.StreamResponse:
        """Send ``frames`` as server-sent events; a client that goes away cancels the run."""
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        try:
            async with contextlib.aclosing(frames):
                async for frame in frames:
                    await resp.write(frame)
        except ConnectionResetError:  # a write found the connection gone: end quietly
            self.executor.cancel(run, "client disconnected")
            return resp
        await resp.write_eof()
        return resp

    async def _stream_run(self, request: web.Request, run: Run) -> web.StreamResponse:
        return await self._sse(request, run, _run_frames(run))

    # -- OpenAI-compatible ------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._read(request, FRONT_CHAT_DECODER)
        if not body.model.startswith(WORKFLOW_MODEL_PREFIX):
            raise NotFound(
                f"model {clip(body.model)!r}: use 'workflow:<name>' (see GET /v1/models)"
            )
        wf = self._workflow(body.model[len(WORKFLOW_MODEL_PREFIX) :])
        users = [m for m in body.messages if m.role == "user"]
        if not users:
            raise BadRequest("messages: needs a user message (the workflow input)", "messages")
        run = self._admit(
            request, wf.name, _workflow_input(users[-1].text(), "messages"), stream=body.stream
        )
        created = int(time.time())
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if not body.stream:
            res = await self.executor.wait(run)
            usage = _usage(res.receipt)
            payload = {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": body.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": res.output},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
                "aragog": {"id": res.id, "receipt": res.receipt},
            }
            return web.Response(body=ENCODER.encode(payload), content_type="application/json")
        return await self._sse(request, run, _chat_frames(run, cid, created, body.model))


async def _run_frames(run: Run) -> AsyncIterator[bytes]:
    """Workflow-run events: ``stage`` per finished stage, ``delta`` per piece of the output
    stage's text as its engine produces it, then ``done`` (output and receipt) or ``error``."""
    while (item := await run.events.get()) is not None:
        if isinstance(item, OutputDelta):
            yield (
                b"event: delta\ndata: "
                + ENCODER.encode(DeltaEvent(run.id, item.stage, item.text))
                + b"\n\n"
            )
        else:
            yield (
                b"event: stage\ndata: "
                + ENCODER.encode(StageEvent(run.id, item.stage, item.text, item.receipt))
                + b"\n\n"
            )
    exc = run.done.exception()
    if exc is None:
        res = run.done.result()
        yield (
            b"event: done\ndata: "
            + ENCODER.encode(DoneEvent(run.id, res.output, res.receipt))
            + b"\n\n"
        )
    else:
        status, _ = status_of(exc)
        yield (
            b"event: error\ndata: " + ENCODER.encode(ErrorEvent(run.id, status, str(exc))) + b"\n\n"
        )


async def _chat_frames(run: Run, cid: str, created: int, model: str) -> AsyncIterator[bytes]:
    """OpenAI ``chat.completion.chunk`` frames: the role, one chunk per piece of the output
    stage's text as its engine produces it, a last chunk with ``finish_reason``, ``usage``
    and the receipt (``aragog``, as in the non-streamed reply), then ``[DONE]``. A run
    that fails ends with one ``{"error": ...}`` frame and no ``[DONE]``."""

    def chunk(delta: dict, finish: str | None = None, **extra) -> bytes:
        c = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return b"data: " + ENCODER.encode(c) + b"\n\n"

    yield chunk({"role": "assistant", "content": ""})
    while (item := await run.events.get()) is not None:
        if isinstance(item, OutputDelta):
            yield chunk({"content": item.text})
    exc = run.done.exception()
    if exc is not None:
        status, kind = status_of(exc)
        err = {"message": str(exc), "type": kind, "code": status, "field": None}
        yield b"data: " + ENCODER.encode({"error": err, "aragog": {"id": run.id}}) + b"\n\n"
        return
    res = run.done.result()
    yield chunk(
        {}, "stop", usage=_usage(res.receipt), aragog={"id": res.id, "receipt": res.receipt}
    )
    yield b"data: [DONE]\n\n"


def _workflow_input(text: str, field: str) -> str:
    """The one rule for a workflow's input, for runs and chat alike: some non-whitespace text."""
    if not text.strip():
        raise BadRequest(f"{field}: the workflow input must contain non-whitespace text", field)
    return text


def _usage(receipt) -> dict:
    p = sum(s.prompt_tokens for s in receipt.stages)
    c = sum(s.completion_tokens for s in receipt.stages)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
