"""The emulated engine: an OpenAI-compatible HTTP server with a profile's timing.

It drives the continuous-batching engine model the simulator also drives
(:class:`aragog_jax.engines.BatchingEngine`, built from an
:class:`~aragog_jax.spec.EngineProfile`) on a real clock: virtual time is
wall time since start multiplied by ``time_scale``, so ``time_scale = 5`` makes every
request five times faster than the profile says while keeping batching behaviour
(queueing, iteration times growing with the batch) intact. The driver sleeps until the
engine's next boundary; an arrival wakes it early. Nothing busy-waits.

Endpoints: ``POST /v1/chat/completions`` (also ``stream: true``), ``GET /v1/models``,
``/health``, ``/metrics`` with vLLM's gauge names. Replies are placeholders, not answers:
``[emulated <model>: placeholder text]`` and seeded lorem-ipsum words, a function of the
model name, prompt and seed; ``completion_tokens`` is exactly ``max_tokens`` (like vLLM
with ``ignore_eos``).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
import uuid

import msgspec
from aiohttp import web

from aragog_jax.engines.batching import BatchingEngine
from aragog_jax.errors import SpecError
from aragog_jax.spec import EngineProfile

# Placeholder text, so nobody mistakes an emulated reply for a model's answer.
_WORDS = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua ut enim ad minim veniam quis nostrud"
).split()
MAX_TEXT_WORDS = 48


def prompt_tokens_of(text: str) -> int:
    """Rough token count (4 characters per token), at least 1."""
    return max(1, len(text) // 4)


def deterministic_text(model: str, prompt: str, seed: int, num_tokens: int) -> str:
    """``[emulated <model>: placeholder text] lorem ipsum ...``: seeded filler words (at most
    :data:`MAX_TEXT_WORDS`), a function of the model, prompt and seed."""
    digest = hashlib.blake2b(f"{model}\x00{seed}\x00{prompt}".encode(), digest_size=8).digest()
    rng = random.Random(int.from_bytes(digest, "little"))
    n = max(1, min(num_tokens, MAX_TEXT_WORDS))
    return f"[emulated {model}: placeholder text] " + " ".join(rng.choice(_WORDS) for _ in range(n))


class _ChatBody(msgspec.Struct):
    model: str
    messages: list[dict]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    seed: int | None = None
    stream: bool = False


_DECODE = msgspec.json.Decoder(_ChatBody)
_ENC = msgspec.json.Encoder()


class EmulatedEngine:
    """One emulated engine; ``app`` is its aiohttp application.

    Lifecycle: the driver task starts with the app (``on_startup``) and is cancelled at
    cleanup; pending requests then fail with 503.
    """

    def __init__(
        self,
        name: str,
        model: str,
        profile: EngineProfile,
        *,
        time_scale: float = 1.0,
        served_model_name: str = "",
        default_max_tokens: int = 256,
    ):
        if time_scale <= 0:
            raise SpecError(f"engine {name}: time_scale must be > 0, got {time_scale}")
        self.name = name
        self.model = model
        self.served = served_model_name or model
        self.sim = BatchingEngine(name, model, profile)
        self.time_scale = time_scale
        self.default_max_tokens = default_max_tokens
        self._t0 = time.monotonic()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.num_success = 0
        self.num_generated = 0
        self.num_prompt = 0
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self._chat)
        self.app.router.add_get("/v1/models", self._models)
        self.app.router.add_get("/health", self._health)
        self.app.router.add_get("/metrics", self._metrics)
        self.app.on_startup.append(self._start)
        self.app.on_cleanup.append(self._stop)

    # -- clock and driver ------------------------------------------------------------------

    def _vnow(self) -> float:
        return (time.monotonic() - self._t0) * self.time_scale

    def _advance(self, vnow: float) -> None:
        """Process every boundary due by ``vnow``; resolve finished requests."""
        sim = self.sim
        while sim.next_time <= vnow:
            for fut in sim.on_event(sim.next_time):
                if not fut.done():
                    fut.set_result(None)

    async def _drive(self) -> None:
        while True:
            self._advance(self._vnow())
            self._wake.clear()
            nt = self.sim.next_time
            timeout = (
                None if nt == float("inf") else max(0.0, (nt - self._vnow()) / self.time_scale)
            )
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    async def _start(self, app: web.Application) -> None:
        self._t0 = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(
            self._drive(), name=f"emulated-{self.name}"
        )

    async def _stop(self, app: web.Application) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def generate(self, prompt: str, max_tokens: int) -> None:
        """Wait as long as the profile says this sequence takes in the current batch."""
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        vnow = self._vnow()
        self._advance(vnow)
        self.sim.submit(vnow, fut, prompt_tokens_of(prompt), max_tokens)
        self._wake.set()
        await fut

    # -- handlers --------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = _DECODE.decode(await request.read())
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return web.json_response({"error": {"message": str(exc), "code": 400}}, status=400)
        if body.model != self.served:
            return web.json_response(
                {"error": {"message": f"model {body.model!r} not served here", "code": 404}},
                status=404,
            )
        prompt = "\n".join(str(m.get("content") or "") for m in body.messages)
        max_tokens = max(
            1, body.max_tokens or body.max_completion_tokens or self.default_max_tokens
        )
        try:
            await self.generate(prompt, max_tokens)
        except SpecError as exc:
            return web.json_response({"error": {"message": str(exc), "code": 400}}, status=400)
        text = deterministic_text(self.model, prompt, body.seed or 0, max_tokens)
        p = prompt_tokens_of(prompt)
        self.num_success += 1
        self.num_generated += max_tokens
        self.num_prompt += p
        usage = {
            "prompt_tokens": p,
            "completion_tokens": max_tokens,
            "total_tokens": p + max_tokens,
        }
        rid = f"chatcmpl-{uuid.uuid4().hex[:16]}"
        if not body.stream:
            return web.Response(
                body=_ENC.encode(
                    {
                        "id": rid,
                        "object": "chat.completion",
                        "created": int(time.time()),
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
            )
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        words = text.split(" ")
        deltas = [{"role": "assistant", "content": ""}] + [
            {"content": (" " if i else "") + w} for i, w in enumerate(words)
        ]
        for i, d in enumerate(deltas):
            last = i == len(deltas) - 1
            chunk = {
                "id": rid,
                "object": "chat.completion.chunk",
                "model": self.served,
                "choices": [{"index": 0, "delta": d, "finish_reason": "length" if last else None}],
            }
            await resp.write(b"data: " + _ENC.encode(chunk) + b"\n\n")
        await resp.write(
            b"data: " + _ENC.encode({"id": rid, "choices": [], "usage": usage}) + b"\n\n"
        )
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": self.served, "object": "model", "owned_by": "aragog-emulated"}],
            }
        )

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    async def _metrics(self, request: web.Request) -> web.Response:
        self._advance(self._vnow())
        lab = f'{{engine="0",model_name="{self.served}"}}'
        lines = [
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{lab} {float(self.sim.num_running)}",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{lab} {float(self.sim.num_waiting)}",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{lab} {max(0.0, self.sim.kv_usage())}",
            "# TYPE vllm:request_success_total counter",
            f"vllm:request_success_total{lab} {float(self.num_success)}",
            "# TYPE vllm:generation_tokens_total counter",
            f"vllm:generation_tokens_total{lab} {float(self.num_generated)}",
            "# TYPE vllm:prompt_tokens_total counter",
            f"vllm:prompt_tokens_total{lab} {float(self.num_prompt)}",
        ]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")
