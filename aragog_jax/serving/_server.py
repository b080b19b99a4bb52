"""The front door: aiohttp routes, admission, security, and the server's lifecycle.

Errors map to HTTP statuses in one place (:func:`status_of`): schema errors 400 (naming
the field), bad or missing key 401, unknown workflow 404, body too large 413, meta-queue
full 429 (with ``Retry-After``), a workflow's stage function raised 500, engine failure
502, no viable configuration or shutting down 503, deadline 504.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
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
    DeadlineExceededError,
    NoViableConfigurationError,
    OverloadedError,
    SpecError,
    StageFunctionError,
    UpstreamError,
    UpstreamTimeout,
)
from aragog_jax.serving._emulated import EmulatedEngine
from aragog_jax.serving._executor import Executor, OutputDelta, Run, close_part
from aragog_jax.serving._fleet import FleetRuntime
from aragog_jax.serving._loopback import LoopbackServer
from aragog_jax.serving._metrics import ServerMetrics
from aragog_jax.serving._sched import LATE_ITEM_BUCKETS, WARM_ITEM_BUCKETS
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
RETRY_AFTER_S = 1


class NotFound(AragogError):
    """Unknown workflow or route."""


class BadRequest(AragogError):
    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class Unauthorized(AragogError):
    pass


class ShuttingDown(AragogError):
    """The server is draining: 503."""


_STATUS: list[tuple[type[BaseException], int, str]] = [
    (BadRequest, 400, "invalid_request_error"),
    (SpecError, 400, "invalid_request_error"),
    (Unauthorized, 401, "authentication_error"),
    (NotFound, 404, "not_found_error"),
    (OverloadedError, 429, "overloaded_error"),
    (UpstreamTimeout, 504, "upstream_timeout"),
    (UpstreamError, 502, "upstream_error"),
    (NoViableConfigurationError, 503, "no_viable_configuration"),
    (DeadlineExceededError, 504, "deadline_exceeded"),
    (StageFunctionError, 500, "stage_function_error"),
    (AragogError, 503, "unavailable"),
]


def status_of(exc: BaseException) -> tuple[int, str]:
    for cls, status, kind in _STATUS:
        if isinstance(exc, cls):
            return status, kind
    return 500, "internal_error"


def error_response(exc: BaseException) -> web.Response:
    status, kind = status_of(exc)
    body = {"error": {"message": str(exc), "type": kind, "code": status, "field": getattr(exc, "field", None)}}
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 429 else None
    return web.Response(status=status, body=ENCODER.encode(body), content_type="application/json", headers=headers)


_FIELD_RE = re.compile(r"at `\$\.?([^`]*)`")
_MISSING_RE = re.compile(r"(?:missing required field|unknown field) `([^`]+)`")


def schema_error(exc: msgspec.MsgspecError) -> BadRequest:
    msg = str(exc)
    m = _MISSING_RE.search(msg) or _FIELD_RE.search(msg)
    field = m.group(1) if m else None
    if isinstance(exc, msgspec.ValidationError):
        return BadRequest(f"invalid request: {msg}" + (f" (field {field!r})" if field else ""), field)
    return BadRequest(f"malformed JSON: {msg}", None)


@dataclass
class ServeOptions:
    drain_s: float = 30.0  # graceful shutdown: how long in-flight requests may finish
    keep_rounds: int = 256  # scheduling rounds kept for GET /v1/rounds/{id}
    policy: str = "aragog"  # scheduling policy (aragog_jax.scheduler.make_policy)
    beam_width: int = 4
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
        self._late_warm: asyncio.Future | None = None
        self._gc_tuned = False  # this server holds the collector tuned (_tune_gc)
        self.app = self._make_app()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> str:
        urls: dict[str, str] = {}
        for e in self.fleet.engines:
            if e.emulated:
                eng = EmulatedEngine(e.name, e.model, e.profile, time_scale=self.settings.time_scale, served_model_name=e.served_model)
                srv = LoopbackServer(eng.app)
                urls[e.name] = await srv.start()
                self.emulated[e.name] = (eng, srv)
            else:
                urls[e.name] = e.spec.url
        self.executor = Executor(
            self.fleet, urls, self.metrics, keep_rounds=self.options.keep_rounds,
            policy=self.options.policy, beam_width=self.options.beam_width,
        )  # fmt: skip
        # Bind before the slow part, so a busy port fails at once; until "serving",
        # requests get 503 and /ready says "starting".
        self.site = LoopbackServer(self.app, self.settings.host, self.settings.port, shutdown_timeout=1.0)
        self.url = await self.site.start()
        loop = asyncio.get_running_loop()
        if self.options.warm_up:
            took = await loop.run_in_executor(None, self.executor.sched.warm_up, WARM_ITEM_BUCKETS)
            for worker in self.executor.routers.values():
                await loop.run_in_executor(None, worker.warm_up, self.settings.max_queue)
            log.info("scheduler compiled for rounds of up to %d stages in %.1f s", max(WARM_ITEM_BUCKETS), took)
            self._late_warm = loop.run_in_executor(None, self.executor.sched.warm_up, LATE_ITEM_BUCKETS)
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
            log.info("scheduler compiled for rounds of up to %d stages in %.1f s more", max(LATE_ITEM_BUCKETS), fut.result())

    @property
    def compiling(self) -> bool:
        return self._late_warm is not None and not self._late_warm.done()

    async def stop(self, drain_s: float | None = None) -> dict[str, int]:
        """Stop taking requests, let in-flight ones finish for ``drain_s``, then close.

        Safe to call more than once (later calls wait for the first)."""
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
            while ex.num_in_flight and time.monotonic() < deadline:
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

    # -- app ------------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body_bytes, middlewares=[self._guard])
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
            if self.fleet.api_keys and request.path != "/health":
                auth = request.headers.get("Authorization", "")
                key = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
                if not key or not any(hmac.compare_digest(key.encode(), k.encode()) for k in self.fleet.api_keys):
                    # Never log or echo the key.
                    raise Unauthorized("missing or invalid API key (send Authorization: Bearer <key>)")
            if request.content_length is not None and request.content_length > self.settings.max_body_bytes:
                return web.Response(
                    status=413, content_type="application/json",
                    body=ENCODER.encode({"error": {"message": f"request body over {self.settings.max_body_bytes} bytes",
                                                   "type": "payload_too_large", "code": 413, "field": None}}),
                )  # fmt: skip
            return await handler(request)
        except AragogError as exc:
            return error_response(exc)
        except web.HTTPRequestEntityTooLarge:
            return web.Response(
                status=413, content_type="application/json",
                body=ENCODER.encode({"error": {"message": f"request body over {self.settings.max_body_bytes} bytes",
                                               "type": "payload_too_large", "code": 413, "field": None}}),
            )  # fmt: skip

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(self, request: web.Request) -> web.Response:
        ex = self.executor
        ok, why = ex.ready() if ex is not None and self.state == "serving" else (False, self.state)
        if ok and self.compiling:
            ok, why = False, "compiling the scheduling round for large rounds"
        routers = {n: ("compiled" if w.router is not None else "admit-all") for n, w in self.fleet.workflows.items()}
        return web.json_response({"ready": ok, "detail": why, "routers": routers}, status=200 if ok else 503)

    async def prom(self, request: web.Request) -> web.Response:
        if self.executor is not None:
            self.executor.export_load()
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")

    def _workflow(self, name: str):
        wf = self.fleet.workflows.get(name)
        if wf is None:
            raise NotFound(f"unknown workflow {name!r} (known: {', '.join(sorted(self.fleet.workflows))})")
        return wf

    async def list_workflows(self, request: web.Request) -> web.Response:
        data = [
            WorkflowInfo(
                name=w.name, description=w.spec.description, stages=list(w.space.stage_names),
                num_configs=w.space.num_configs, router="trained" if w.router is not None else "admit-all",
                model=WORKFLOW_MODEL_PREFIX + w.name,
            )
            for w in self.fleet.workflows.values()
        ]  # fmt: skip
        return web.Response(body=ENCODER.encode({"object": "list", "data": data}), content_type="application/json")

    async def list_models(self, request: web.Request) -> web.Response:
        data = [{"id": WORKFLOW_MODEL_PREFIX + n, "object": "model", "created": 0, "owned_by": "aragog"} for n in self.fleet.workflows]
        return web.json_response({"object": "list", "data": data})

    async def get_round(self, request: web.Request) -> web.Response:
        """A recent scheduling round in the round-replay CLI's input format
        (``/v1/rounds/{id}/decision``: what the scheduler decided)."""
        try:
            rid = int(request.match_info["round_id"])
        except ValueError as exc:
            raise BadRequest("round id must be an integer", "round_id") from exc
        for rec in reversed(self.executor.recent_rounds):
            if rec.round_id == rid:
                doc = rec.plan.decision() if request.path.endswith("/decision") else rec.replay()
                return web.Response(body=ENCODER.encode(doc), content_type="application/json")
        raise NotFound(f"round {rid} is not among the last {self.options.keep_rounds} rounds kept")

    async def _read(self, request: web.Request, decoder):
        raw = await request.read()
        try:
            return decoder.decode(raw)
        except msgspec.MsgspecError as exc:
            raise schema_error(exc) from exc

    def _admit(self, workflow: str, text: str, **kw) -> Run:
        if self.state != "serving" or self.executor is None:
            raise ShuttingDown(f"server is {self.state}; not accepting new requests")
        return self.executor.admit(workflow, text, **kw)

    async def run_workflow(self, request: web.Request) -> web.StreamResponse:
        wf = self._workflow(request.match_info["name"])
        body = await self._read(request, RUN_REQUEST_DECODER)
        run = self._admit(wf.name, body.input, deadline_s=body.deadline_s, replay=body.replay, stream=body.stream)
        if body.stream:
            return await self._stream_run(request, run)
        res = await self.executor.wait(run)
        return web.Response(
            body=ENCODER.encode(RunResponse(id=res.id, workflow=wf.name, output=res.output, receipt=res.receipt)),
            content_type="application/json",
        )

    async def _sse(self, request: web.Request, run: Run, frames: AsyncIterator[bytes]) -> web.StreamResponse:
        """Send ``frames`` as server-sent events; a client that goes away cancels the run."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        try:
            async with contextlib.aclosing(frames):
                async for frame in frames:
                    await resp.write(frame)
        except (asyncio.CancelledError, ConnectionResetError):
            self.executor._finish(run, "cancelled", AragogError("client disconnected"))
            raise
        await resp.write_eof()
        return resp

    async def _stream_run(self, request: web.Request, run: Run) -> web.StreamResponse:
        return await self._sse(request, run, _run_frames(run))

    # -- OpenAI-compatible ------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._read(request, FRONT_CHAT_DECODER)
        if not body.model.startswith(WORKFLOW_MODEL_PREFIX):
            raise NotFound(f"model {body.model!r}: use 'workflow:<name>' (see GET /v1/models)")
        wf = self._workflow(body.model[len(WORKFLOW_MODEL_PREFIX):])
        users = [m for m in body.messages if m.role == "user"]
        if not users or not users[-1].text().strip():
            raise BadRequest("messages: needs a non-empty user message (the workflow input)", "messages")
        run = self._admit(wf.name, users[-1].text(), stream=body.stream)
        created = int(time.time())
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if not body.stream:
            res = await self.executor.wait(run)
            usage = _usage(res.receipt)
            payload = {
                "id": cid, "object": "chat.completion", "created": created, "model": body.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": res.output}, "finish_reason": "stop"}],
                "usage": usage, "aragog": {"id": res.id, "receipt": res.receipt},
            }  # fmt: skip
            return web.Response(body=ENCODER.encode(payload), content_type="application/json")
        return await self._sse(request, run, _chat_frames(run, cid, created, body.model))


async def _run_frames(run: Run) -> AsyncIterator[bytes]:
    """Workflow-run events: ``stage`` per finished stage, ``delta`` per piece of the output
    stage's text as its engine produces it, then ``done`` (output and receipt) or ``error``."""
    while (item := await run.events.get()) is not None:
        if isinstance(item, OutputDelta):
            yield b"event: delta\ndata: " + ENCODER.encode(DeltaEvent(run.id, item.stage, item.text)) + b"\n\n"
        else:
            yield b"event: stage\ndata: " + ENCODER.encode(StageEvent(run.id, item.stage, item.text, item.receipt)) + b"\n\n"
    exc = run.done.exception()
    if exc is None:
        res = run.done.result()
        yield b"event: done\ndata: " + ENCODER.encode(DoneEvent(run.id, res.output, res.receipt)) + b"\n\n"
    else:
        status, _ = status_of(exc)
        yield b"event: error\ndata: " + ENCODER.encode(ErrorEvent(run.id, status, str(exc))) + b"\n\n"


async def _chat_frames(run: Run, cid: str, created: int, model: str) -> AsyncIterator[bytes]:
    """OpenAI ``chat.completion.chunk`` frames: the role, one chunk per piece of the output
    stage's text as its engine produces it, a last chunk with ``finish_reason``, ``usage``
    and the receipt (``aragog``, as in the non-streamed reply), then ``[DONE]``. A run
    that fails ends with one ``{"error": ...}`` frame and no ``[DONE]``."""

    def chunk(delta: dict, finish: str | None = None, **extra) -> bytes:
        c = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}  # fmt: skip
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
    yield chunk({}, "stop", usage=_usage(res.receipt), aragog={"id": res.id, "receipt": res.receipt})
    yield b"data: [DONE]\n\n"


def _usage(receipt) -> dict:
    p = sum(s.prompt_tokens for s in receipt.stages)
    c = sum(s.completion_tokens for s in receipt.stages)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
