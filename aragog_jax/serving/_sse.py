"""Server-sent events: a run's events as workflow-run frames or OpenAI chat chunks."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from aragog_jax.serving._executor import Executor, OutputDelta, Run
from aragog_jax.serving._status import status_of
from aragog_jax.serving._wire import ENCODER, DeltaEvent, DoneEvent, ErrorEvent, StageEvent


async def send_sse(
    executor: Executor, request: web.Request, run: Run, frames: AsyncIterator[bytes]
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
        executor.cancel(run, "client disconnected")
        return resp
    await resp.write_eof()
    return resp


async def run_frames(run: Run) -> AsyncIterator[bytes]:
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


async def chat_frames(run: Run, cid: str, created: int, model: str) -> AsyncIterator[bytes]:
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
        {}, "stop", usage=usage_of(res.receipt), aragog={"id": res.id, "receipt": res.receipt}
    )
    yield b"data: [DONE]\n\n"


def usage_of(receipt) -> dict:
    p = sum(s.prompt_tokens for s in receipt.stages)
    c = sum(s.completion_tokens for s in receipt.stages)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
