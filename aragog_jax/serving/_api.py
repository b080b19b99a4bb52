"""The HTTP routes: workflow runs, the OpenAI-compatible front, and the read-only
endpoints (health, readiness, metrics, workflows, models, scheduling rounds).

The handlers read the server's public state (``state``, ``executor``, ``compiling``);
the server owns the app, its guard and its lifecycle (:mod:`._server`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING

import msgspec
from aiohttp import web

from aragog_jax.errors import AragogError, BadRequest, NotFound, RequestTimeout, ShuttingDown
from aragog_jax.serving._executor import Run
from aragog_jax.serving._sse import chat_frames, run_frames, send_sse, usage_of
from aragog_jax.serving._status import clip, schema_error
from aragog_jax.serving._wire import (
    ENCODER,
    FRONT_CHAT_DECODER,
    RUN_REQUEST_DECODER,
    FrontChatRequest,
    RunRequest,
    RunResponse,
    WorkflowInfo,
)

if TYPE_CHECKING:
    from aragog_jax.serving._server import Server

WORKFLOW_MODEL_PREFIX = "workflow:"
CHAT_PATH = "/v1/chat/completions"
RUNS_PREFIX, RUNS_SUFFIX = "/v1/workflows/", "/runs"  # POST /v1/workflows/{name}/runs
# request -> the Run admitted for it (a typed key where aiohttp has them: 3.12+ warns on str keys)
RUN_KEY = web.RequestKey("aragog_run", Run) if hasattr(web, "RequestKey") else "aragog_run"


class Api:
    """The route handlers of one :class:`~._server.Server`."""

    def __init__(self, server: Server):
        self.server = server
        self.fleet = server.fleet
        self.settings = server.settings
        self.metrics = server.metrics

    @property
    def executor(self):
        return self.server.executor

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(self, request: web.Request) -> web.Response:
        ex = self.executor
        ok, why = (
            ex.ready()
            if ex is not None and self.server.state == "serving"
            else (False, self.server.state)
        )
        if ok and self.server.compiling:
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
        raise NotFound(
            f"round {rid} is not among the last {self.server.options.keep_rounds} rounds kept"
        )

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
        return _decode(raw, decoder)

    def _admit(self, request: web.Request | None, workflow: str, text: str, **kw) -> Run:
        """Admit a run for ``request`` (None in the fast lane, which cancels the run itself
        when the client goes away); the guard cancels it if the client goes away."""
        if self.server.state != "serving" or self.executor is None:
            raise ShuttingDown(f"server is {self.server.state}; not accepting new requests")
        run = self.executor.admit(workflow, text, **kw)
        if request is not None:
            request[RUN_KEY] = run
        return run

    # -- the fast lane (._lane): the hot requests' answers as bytes -----------------------

    def fast(self, path: str, raw: bytes) -> Callable[[], Awaitable[bytes]] | None:
        """What answers a non-streaming ``POST path`` with body ``raw`` (a coroutine
        function of no arguments returning the answer's body), or None for a request the
        aiohttp app takes: a stream (SSE) or a path that is not a run or a chat
        completion. Raises the request's error at once when the body is not valid."""
        if path == CHAT_PATH:
            chat = _decode(raw, FRONT_CHAT_DECODER)
            return None if chat.stream else partial(self._chat_reply, None, chat)
        if not (path.startswith(RUNS_PREFIX) and path.endswith(RUNS_SUFFIX)):
            return None
        name = path[len(RUNS_PREFIX) : -len(RUNS_SUFFIX)]
        if not name or "/" in name:  # (as aiohttp's {name}: one non-empty path segment)
            return None
        body = _decode(raw, RUN_REQUEST_DECODER)
        return None if body.stream else partial(self._run_reply, None, name, body)

    def _admit_run(self, request: web.Request | None, name: str, body: RunRequest):
        """(workflow, run) for a run request."""
        wf = self._workflow(name)
        run = self._admit(
            request,
            wf.name,
            _workflow_input(body.input, "input"),
            deadline_s=body.deadline_s,
            replay=body.replay,
            stream=body.stream,
        )
        return wf, run

    async def _run_reply(self, request: web.Request | None, name: str, body: RunRequest) -> bytes:
        wf, run = self._admit_run(request, name, body)
        res = await self._result(run)
        return ENCODER.encode(
            RunResponse(id=res.id, workflow=wf.name, output=res.output, receipt=res.receipt)
        )

    def _admit_chat(self, request: web.Request | None, body: FrontChatRequest) -> Run:
        if not body.model.startswith(WORKFLOW_MODEL_PREFIX):
            raise NotFound(
                f"model {clip(body.model)!r}: use 'workflow:<name>' (see GET /v1/models)"
            )
        wf = self._workflow(body.model[len(WORKFLOW_MODEL_PREFIX) :])
        users = [m for m in body.messages if m.role == "user"]
        if not users:
            raise BadRequest("messages: needs a user message (the workflow input)", "messages")
        text = _workflow_input(users[-1].text(), "messages")
        return self._admit(request, wf.name, text, stream=body.stream)

    async def _chat_reply(self, request: web.Request | None, body: FrontChatRequest) -> bytes:
        run = self._admit_chat(request, body)
        created = int(time.time())
        res = await self._result(run)
        return ENCODER.encode(
            {
                "id": _chat_id(),
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
                "usage": usage_of(res.receipt),
                "aragog": {"id": res.id, "receipt": res.receipt},
            }
        )

    async def _result(self, run: Run):
        """The run's result; a failure other than the run's own error (a bug) cancels it."""
        try:
            return await self.executor.wait(run)
        except AragogError:
            raise
        except Exception as exc:
            self.executor.cancel(run, f"request handler failed: {type(exc).__name__}")
            raise

    # -- aiohttp routes ---------------------------------------------------------------------

    async def run_workflow(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self._workflow(name)  # an unknown workflow is 404 before the body is read
        body = await self._read(request, RUN_REQUEST_DECODER)
        if not body.stream:
            return _json(await self._run_reply(request, name, body))
        _, run = self._admit_run(request, name, body)
        return await send_sse(self.executor, request, run, run_frames(run))

    # -- OpenAI-compatible ------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._read(request, FRONT_CHAT_DECODER)
        if not body.stream:
            return _json(await self._chat_reply(request, body))
        run = self._admit_chat(request, body)
        frames = chat_frames(run, _chat_id(), int(time.time()), body.model)
        return await send_sse(self.executor, request, run, frames)


def _chat_id() -> str:
    return f"chatcmpl-{os.urandom(12).hex()}"


def _json(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


def _decode(raw: bytes, decoder):
    try:
        return decoder.decode(raw)
    except msgspec.MsgspecError as exc:
        raise schema_error(exc) from exc


def _workflow_input(text: str, field: str) -> str:
    """The one rule for a workflow's input, for runs and chat alike: some non-whitespace text."""
    if not text.strip():
        raise BadRequest(f"{field}: the workflow input must contain non-whitespace text", field)
    return text
