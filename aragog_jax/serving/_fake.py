"""A loopback fake engine for fault injection, tests and the load benchmark.

Modes (switchable at run time through ``engine.mode``):

* ``ok``: answers at once (after ``delay_s`` when set).
* ``slow``: waits ``slow_s`` before answering (to trip timeouts).
* ``fail``: answers ``fail_status`` (default 503) with a JSON error.
* ``truncated``: announces a Content-Length longer than the body and drops the
  connection mid-body.
* ``malformed``: 200 with a body that is not a chat completion.
* ``stream_truncated``: a stream that stops before ``[DONE]``.
* ``stream_error``: a stream that sends an error chunk after its first piece, then
  ``[DONE]`` (what vLLM does when generation fails mid-stream).
* ``hang``: never answers (until the client gives up).

``stream: true`` requests get server-sent events in modes ``ok`` and ``slow``: the text
in ``stream_pieces`` chunks, ``stream_gap_s`` apart (counted in ``num_streamed``).
``/metrics`` reports the gauges in ``gauges`` when set, else its own in-flight count as
running (vLLM names by default, SGLang names with ``flavour="sglang"``). ``/health``
answers 503 in modes ``fail`` and ``hang`` and whenever ``health_fails`` is set. Chat
requests are counted in ``num_requests`` (received), ``num_completed`` (answered) and
``num_cancelled`` (the caller hung up first; served with ``handler_cancellation``).
With ``orca=True`` replies carry vLLM's ``endpoint-load-metrics`` header when asked.

Capacity, as real engines report it (each only when set): ``kv_blocks = (num_gpu_blocks,
block_size)`` adds vLLM's ``vllm:cache_config_info`` to ``/metrics``; ``max_model_len``
goes into ``/v1/models``; ``max_num_seqs`` is served by ``/server_info`` (vLLM in dev
mode) or, with ``flavour="sglang"``, as ``max_running_requests`` by ``/get_server_info``.
"""

from __future__ import annotations

import asyncio
import hashlib

import msgspec
from aiohttp import web

_ENC = msgspec.json.Encoder()

MODES = ("ok", "slow", "fail", "truncated", "malformed", "stream_truncated", "stream_error", "hang")


class FakeEngine:
    def __init__(
        self,
        served_model: str = "fake",
        *,
        mode: str = "ok",
        delay_s: float = 0.0,
        slow_s: float = 5.0,
        fail_status: int = 503,
        flavour: str = "vllm",
        orca: bool = False,
        stream_pieces: int = 2,
        stream_gap_s: float = 0.0,
        kv_blocks: tuple[int, int] | None = None,
        max_model_len: int = 0,
        max_num_seqs: int = 0,
    ):
        if mode not in MODES:
            raise ValueError(f"unknown fake-engine mode {mode!r} (modes: {', '.join(MODES)})")
        self.served = served_model
        self.mode = mode
        self.delay_s = delay_s
        self.slow_s = slow_s
        self.fail_status = fail_status
        self.flavour = flavour
        self.orca = orca
        self.stream_pieces = max(1, stream_pieces)
        self.stream_gap_s = stream_gap_s
        self.kv_blocks = kv_blocks
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        self.num_streamed = 0
        self.gauges: dict[str, float] | None = None  # override what /metrics reports
        self.health_fails = False
        self.num_requests = 0
        self.num_completed = 0
        self.num_cancelled = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.prompts: list[str] = []
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self._chat)
        self.app.router.add_get("/v1/models", self._models)
        self.app.router.add_get("/health", self._health)
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_get("/server_info", self._server_info)
        self.app.router.add_get("/get_server_info", self._server_info)

    def text_for(self, prompt: str) -> str:
        return f"{self.served}:{hashlib.blake2b(prompt.encode(), digest_size=4).hexdigest()}"

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.num_requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(request)
        except asyncio.CancelledError:
            self.num_cancelled += 1
            raise
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        body = msgspec.json.decode(await request.read())
        mode = self.mode
        prompt = "\n".join(str(m.get("content") or "") for m in body.get("messages", []))
        self.prompts.append(prompt)
        max_tokens = int(body.get("max_tokens") or 16)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if mode == "slow":
            await asyncio.sleep(self.slow_s)
        elif mode == "hang":
            await asyncio.sleep(3600)
        elif mode == "fail":
            return web.json_response(
                {"error": {"message": "injected failure", "code": self.fail_status}},
                status=self.fail_status,
            )
        elif mode == "malformed":
            return web.Response(
                body=b'{"id": "x", "choices": "not-a-list"', content_type="application/json"
            )
        elif mode == "truncated":
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.content_length = 4096
            await resp.prepare(request)
            await resp.write(b'{"id": "x", "choices": [')
            request.transport.close()
            return resp
        text = self.text_for(prompt)
        usage = {
            "prompt_tokens": max(1, len(prompt) // 4),
            "completion_tokens": max_tokens,
            "total_tokens": 0,
        }
        headers = {}
        if self.orca and request.headers.get("endpoint-load-metrics-format", "").upper() == "JSON":
            headers["endpoint-load-metrics"] = (
                "JSON "
                + _ENC.encode(
                    {
                        "named_metrics": {
                            "kv_cache_usage_perc": 0.25,
                            "num_requests_waiting": float(self.in_flight - 1),
                        }
                    }
                ).decode()
            )
        if body.get("stream"):
            self.num_streamed += 1
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", **headers})
            await resp.prepare(request)
            n = self.stream_pieces
            for i in range(n):
                if i and self.stream_gap_s:
                    await asyncio.sleep(self.stream_gap_s)
                piece = text[i * len(text) // n : (i + 1) * len(text) // n]
                chunk = {
                    "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]
                }
                await resp.write(b"data: " + _ENC.encode(chunk) + b"\n\n")
                if mode == "stream_error":
                    err = {
                        "error": {
                            "message": "injected failure mid-stream",
                            "type": "InternalServerError",
                            "code": 500,
                        }
                    }
                    await resp.write(b"data: " + _ENC.encode(err) + b"\n\ndata: [DONE]\n\n")
                    await resp.write_eof()
                    return resp
            if mode == "stream_truncated":
                request.transport.close()
                return resp
            await resp.write(
                b"data: "
                + _ENC.encode(
                    {
                        "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
                        "usage": usage,
                    }
                )
                + b"\n\n"
            )
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            self.num_completed += 1
            return resp
        self.num_completed += 1
        return web.Response(
            body=_ENC.encode(
                {
                    "id": "fake",
                    "object": "chat.completion",
                    "model": self.served,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "length",
                        }
                    ],
                    "usage": usage,
                }
            ),
            content_type="application/json",
            headers=headers,
        )

    async def _models(self, request: web.Request) -> web.Response:
        model: dict = {"id": self.served, "object": "model"}
        if self.max_model_len:
            model["max_model_len"] = self.max_model_len
        return web.json_response({"object": "list", "data": [model]})

    async def _server_info(self, request: web.Request) -> web.Response:
        sglang = self.flavour == "sglang"
        if not self.max_num_seqs or sglang != (request.path == "/get_server_info"):
            return web.Response(status=404, text="not found")
        if sglang:
            return web.json_response({"max_running_requests": self.max_num_seqs})
        config = {"scheduler_config": {"max_num_seqs": self.max_num_seqs}}
        return web.json_response({"vllm_config": config})

    async def _health(self, request: web.Request) -> web.Response:
        if self.health_fails or self.mode in ("fail", "hang"):
            return web.Response(status=503, text="unhealthy")
        return web.Response(text="")

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.flavour == "sglang":
            names = ("sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:token_usage")
        else:
            names = (
                "vllm:num_requests_running",
                "vllm:num_requests_waiting",
                "vllm:kv_cache_usage_perc",
            )
        g = (
            self.gauges
            if self.gauges is not None
            else {names[0]: float(self.in_flight), names[1]: 0.0, names[2]: 0.0}
        )
        lines = []
        for k, v in g.items():
            lines.append(f"# TYPE {k} gauge")
            lines.append(f'{k}{{engine="0",model_name="{self.served}"}} {v}')
        if self.kv_blocks is not None and self.flavour != "sglang":
            blocks, size = self.kv_blocks
            lines.append("# TYPE vllm:cache_config_info gauge")
            lines.append(
                f'vllm:cache_config_info{{block_size="{size}",engine="0",num_gpu_blocks="{blocks}"}} 1.0'
            )
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")
