"""The HTTP routes: workflow runs, the OpenAI-compatible front, and the read-only
endpoints (health, readiness, metrics, workflows, models, scheduling rounds).

The handlers read the server's public state (``state``, ``executor``, ``compiling``);
the server owns the app, its guard and its lifecycle (:mod:`._server`).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING

import msgspec
from aiohttp import web

from aragog_jax.errors import BadRequest, NotFound, RequestTimeout, ShuttingDown
from aragog_jax.serving._executor import Run
from aragog_jax.serving._sse import chat_frames, run_frames, send_sse, usage_of
from aragog_jax.serving._status import clip, schema_error
from aragog_jax.serving._wire import (
    ENCODER,
    FRONT_CHAT_DECODER,
    RUN_REQUEST_DECODER,
    RunResponse,
    WorkflowInfo,
)

if TYPE_CHECKING:
    from aragog_jax.serving._server import Server

WORKFLOW_MODEL_PREFIX = "workflow:"
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
        try:
            return decoder.decode(raw)
        except msgspec.MsgspecError as exc:
            raise schema_error(exc) from exc

    def _admit(self, request: web.Request, workflow: str, text: str, **kw) -> Run:
        """Admit a run for ``request``; the guard cancels it if the client goes away."""
        if self.server.state != "serving" or self.executor is None:
            raise ShuttingDown(f"server is {self.server.state}; not accepting new requests")
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

    async def _stream_run(self, request: web.Request, run: Run) -> web.StreamResponse:
        return await send_sse(self.executor, request, run, run_frames(run))

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
        cid = f"chatcmpl-{os.urandom(12).hex()}"
        if not body.stream:
            res = await self.executor.wait(run)
            usage = usage_of(res.receipt)
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
        return await send_sse(
            self.executor, request, run, chat_frames(run, cid, created, body.model)
        )


def _workflow_input(text: str, field: str) -> str:
    """The one rule for a workflow's input, for runs and chat alike: some non-whitespace text."""
    if not text.strip():
        raise BadRequest(f"{field}: the workflow input must contain non-whitespace text", field)
    return text
