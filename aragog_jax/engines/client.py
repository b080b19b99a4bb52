"""One long-lived HTTP client per engine: chat completions (one stream parser), probes.

Every failure an engine can produce leaves this module as an
:class:`~aragog_jax.errors.UpstreamError` (``UpstreamTimeout`` for timeouts) raised
``from`` the transport exception (mapped by :func:`aragog_jax.engines.http.transport_error`),
with a message naming the engine. The server, the labeller and the profiler all call
engines through :class:`EngineClient`.

Whose fault is a 4xx? Only the statuses in :data:`REQUEST_FAULT_STATUSES` (400 bad
request, e.g. a prompt over the context length; 413 too large; 422 unprocessable) say
the request itself is wrong: they raise :class:`EngineRejected`, which fails the run
(502) without blaming the engine, since another engine would refuse it too. Every other
4xx (401/403 the engine wants another key, 404 wrong URL or served model name, 405,
408 timeout, 429 overloaded, ...) says the engine is misconfigured or busy: it is an
engine fault like a 5xx, counts against its circuit breaker and the stage fails over.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import msgspec

from aragog_jax.engines import gauges
from aragog_jax.engines._h1 import request_head
from aragog_jax.engines._wire import CHUNK_DECODER, COMPLETION_DECODER, ENCODER
from aragog_jax.engines.http import TRANSPORT_ERRORS, LoopSessions, transport_error
from aragog_jax.errors import EngineRejected, UpstreamError

ORCA_REQUEST_HEADER = "endpoint-load-metrics-format"
ORCA_RESPONSE_HEADER = "endpoint-load-metrics"
_ORCA_RESPONSE_KEY = ORCA_RESPONSE_HEADER.encode()

#: Engine replies that blame the request, not the engine (see the module docstring).
REQUEST_FAULT_STATUSES = frozenset({400, 413, 422})


@dataclass(frozen=True, slots=True)
class OrcaReport:
    """vLLM's per-response load report (``endpoint-load-metrics`` header)."""

    waiting: float | None
    kv_usage: float | None
    at: float  # time.monotonic() when received


@dataclass(frozen=True, slots=True)
class ChatResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    orca: OrcaReport | None


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """Timeouts (seconds) and connection limits of one engine client."""

    request_timeout_s: float = 60.0
    connect_timeout_s: float = 5.0
    probe_timeout_s: float = 2.0
    max_connections: int = 512
    orca: bool = True  # ask for the ORCA load header


def parse_orca(value: str, now: float) -> OrcaReport | None:
    """Parse ``JSON {"named_metrics": {...}}`` or ``TEXT named_metrics.k=v, ...``."""
    fmt, _, body = value.strip().partition(" ")
    metrics: dict[str, float] = {}
    try:
        if fmt.upper() == "JSON":
            named = json.loads(body).get("named_metrics", {})
            metrics = {str(k): float(v) for k, v in named.items()}
        elif fmt.upper() == "TEXT":
            for item in body.split(","):
                k, _, v = item.strip().partition("=")
                if k.startswith("named_metrics."):
                    metrics[k.removeprefix("named_metrics.")] = float(v)
        else:
            return None
    except (ValueError, AttributeError, TypeError):
        return None
    waiting = metrics.get("num_requests_waiting")
    kv = metrics.get("kv_cache_usage_perc", metrics.get("kv_cache_utilization"))
    if waiting is None and kv is None:
        return None
    return OrcaReport(waiting=waiting, kv_usage=kv, at=now)


def _error_text(error: object) -> str:
    message = error.get("message") if isinstance(error, dict) else None
    return str(message if message is not None else error)[:200].replace("\n", " ")


class EngineClient:
    """An OpenAI-compatible engine at ``url`` serving ``served_model``.

    Lifecycle: ``await open()`` once, ``await close()`` once; the session and its
    connection pool live in between.
    """

    def __init__(
        self, name: str, url: str, served_model: str, limits: ClientLimits = ClientLimits()
    ):
        self.name = name
        self.url = url.rstrip("/")
        self.served_model = served_model
        self.limits = limits
        # The non-streaming chat call goes over a lean keep-alive pool (engines/_h1.py)
        # that the sessions open and close per event loop; https engines stay on aiohttp.
        parts = urlsplit(self.url)
        origin = (
            (parts.hostname, parts.port or 80)
            if parts.scheme == "http" and parts.hostname
            else None
        )
        self._sessions = LoopSessions(
            max_connections=limits.max_connections,
            timeout_s=limits.request_timeout_s,
            connect_timeout_s=limits.connect_timeout_s,
            keep_alive=origin,
        )
        self._headers = {"Content-Type": "application/json"}
        if limits.orca:
            self._headers[ORCA_REQUEST_HEADER] = "JSON"
        self._h1_head = (
            request_head(*origin, parts.path + "/v1/chat/completions", self._headers)
            if origin is not None
            else None
        )

    async def open(self) -> None:
        """Open the running event loop's session (one per loop; idempotent)."""
        self._sessions.open()

    async def close(self) -> None:
        """Close the running event loop's session and keep-alive pool."""
        await self._sessions.aclose()

    @property
    def closed(self) -> bool:
        """No open session in the running event loop (never opened there, or closed)."""
        return self._sessions.current() is None

    @property
    def session(self) -> aiohttp.ClientSession:
        session = self._sessions.current()
        if session is None:
            raise RuntimeError(f"engine client {self.name!r} is not open")
        return session

    # -- chat --------------------------------------------------------------------------

    async def chat(
        self,
        prompt: str | list[dict[str, str]],
        *,
        max_tokens: int,
        seed: int = 0,
        stream: bool = False,
        timeout_s: float | None = None,
        on_delta: Callable[[str], None] | None = None,
        extra: dict | None = None,
    ) -> ChatResult:
        """One chat completion; raises UpstreamError / UpstreamTimeout / EngineRejected.

        ``on_delta`` (streams the call) is called with each piece of text as the engine
        sends it, before the call returns; the returned text is the pieces joined.
        ``extra`` adds engine-specific body fields (e.g. vLLM's ``ignore_eos``)."""
        stream = stream or on_delta is not None
        body = self.chat_body(
            prompt, max_tokens=max_tokens, seed=seed, stream=stream, **(extra or {})
        )
        if not stream and self._h1_head is not None:
            return await self._chat_h1(body, timeout_s or self.limits.request_timeout_s)
        # No timeout argument means the session's (the engine timeout); None would mean "none".
        kw = {}
        if timeout_s:
            kw["timeout"] = aiohttp.ClientTimeout(
                total=timeout_s, sock_connect=self.limits.connect_timeout_s
            )
        url = self.url + "/v1/chat/completions"
        try:
            async with self.session.post(
                url, data=ENCODER.encode(body), headers=self._headers, **kw
            ) as resp:
                await self.check_status(resp)
                orca_raw = resp.headers.get(ORCA_RESPONSE_HEADER)
                orca = parse_orca(orca_raw, time.monotonic()) if orca_raw else None
                if stream:
                    return await self._read_stream(resp, orca, on_delta)
                raw = await resp.read()
        except UpstreamError:
            raise
        except TRANSPORT_ERRORS as exc:
            raise transport_error(
                exc, f"engine {self.name}", timeout_s or self.limits.request_timeout_s
            ) from exc
        return self._chat_result(raw, orca)

    async def _chat_h1(self, body: dict, timeout_s: float) -> ChatResult:
        """:meth:`chat` without streaming over the lean keep-alive pool (``_h1``)."""
        pool = self._sessions.pool()
        if pool is None:
            raise RuntimeError(f"engine client {self.name!r} is not open")
        try:
            resp = await pool.post(self._h1_head, ENCODER.encode(body), timeout_s)
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc, f"engine {self.name}", timeout_s) from exc
        if resp.status >= 400:
            raise self._status_error(resp.status, resp.body.decode("utf-8", "replace"))
        orca_raw = resp.headers.get(_ORCA_RESPONSE_KEY)
        orca = parse_orca(orca_raw.decode("latin-1"), time.monotonic()) if orca_raw else None
        return self._chat_result(resp.body, orca)

    def _chat_result(self, raw: bytes, orca: OrcaReport | None) -> ChatResult:
        """A non-streamed reply's body as a :class:`ChatResult` (UpstreamError if malformed)."""
        try:
            reply = COMPLETION_DECODER.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise UpstreamError(f"engine {self.name}: malformed response: {exc}") from exc
        choice = reply.choices[0]
        if choice.message.content is None:
            raise UpstreamError(
                f"engine {self.name}: malformed response: choices[0].message.content is null"
            )
        usage = reply.usage
        return ChatResult(
            text=choice.message.content,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            finish_reason=choice.finish_reason,
            orca=orca,
        )

    def chat_body(
        self,
        prompt: str | list[dict[str, str]],
        *,
        max_tokens: int,
        seed: int,
        stream: bool = False,
        **extra,
    ) -> dict:
        """The ``/v1/chat/completions`` request body: one user message (or the given chat
        messages), greedy, seeded; ``extra`` adds engine-specific fields."""
        body = {
            "model": self.served_model,
            "messages": [{"role": "user", "content": prompt}]
            if isinstance(prompt, str)
            else prompt,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "seed": seed,
            **extra,
        }
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    async def check_status(self, resp: aiohttp.ClientResponse) -> None:
        """Raise for an error reply: a status in REQUEST_FAULT_STATUSES is the request's
        fault (:class:`EngineRejected`), anything else >= 400 the engine's (UpstreamError)."""
        if resp.status >= 400:
            raise self._status_error(resp.status, await resp.text(errors="replace"))

    def _status_error(self, status: int, text: str) -> UpstreamError:
        detail = text[:200].replace("\n", " ")
        cls = EngineRejected if status in REQUEST_FAULT_STATUSES else UpstreamError
        return cls(f"engine {self.name}: HTTP {status}: {detail}")

    async def _read_stream(
        self,
        resp: aiohttp.ClientResponse,
        orca: OrcaReport | None,
        on_delta: Callable[[str], None] | None = None,
    ) -> ChatResult:
        parts: list[str] = []
        finish: str | None = None
        usage = None
        done = False
        async for line in resp.content:
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                done = True
                break
            try:
                chunk = CHUNK_DECODER.decode(data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise UpstreamError(f"engine {self.name}: malformed stream chunk: {exc}") from exc
            if chunk.error is not None:  # vLLM reports a failure mid-stream as an error chunk
                raise UpstreamError(
                    f"engine {self.name}: error mid-stream: {_error_text(chunk.error)}"
                )
            for c in chunk.choices:
                if c.delta.content:
                    parts.append(c.delta.content)
                    if on_delta is not None:
                        on_delta(c.delta.content)
                if c.finish_reason:
                    finish = c.finish_reason
            if chunk.usage is not None:
                usage = chunk.usage
        if not done:
            raise UpstreamError(f"engine {self.name}: stream ended without [DONE] (truncated)")
        return ChatResult(
            text="".join(parts),
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            finish_reason=finish,
            orca=orca,
        )

    # -- probes ------------------------------------------------------------------------

    async def get_text(self, path: str) -> str:
        """``GET path`` within the probe timeout; the body of a 200 reply."""
        timeout = aiohttp.ClientTimeout(total=self.limits.probe_timeout_s)
        try:
            async with self.session.get(self.url + path, timeout=timeout) as resp:
                if resp.status != 200:
                    raise UpstreamError(f"engine {self.name}: GET {path}: HTTP {resp.status}")
                return await resp.text()
        except UpstreamError:
            raise
        except TRANSPORT_ERRORS as exc:
            raise transport_error(
                exc, f"engine {self.name}: GET {path}", self.limits.probe_timeout_s
            ) from exc

    async def health(self) -> None:
        """Raise UpstreamError unless ``GET /health`` answers 200."""
        await self.get_text("/health")

    async def metrics_text(self) -> str:
        return await self.get_text("/metrics")

    async def get_json(self, path: str) -> object:
        """``GET path`` decoded as JSON (raises UpstreamError for a malformed body)."""
        text = await self.get_text(path)
        try:
            return json.loads(text)
        except ValueError as exc:
            raise UpstreamError(f"engine {self.name}: GET {path}: malformed JSON: {exc}") from exc

    async def reported_slots(self) -> gauges.ReportedSlots | None:
        """The most sequences the engine says it runs at once, or None when it says nothing
        (the sources and their order are in :mod:`aragog_jax.engines.gauges`)."""

        async def ask(path: str, parse) -> gauges.ReportedSlots | None:
            try:
                return parse(await self.get_json(path))
            except UpstreamError:
                return None

        for path, parse in (
            ("/server_info?config_format=json", gauges.slots_from_vllm_server_info),
            ("/get_server_info", gauges.slots_from_sglang_server_info),
        ):
            found = await ask(path, parse)
            if found is not None:
                return found
        try:
            kv = gauges.kv_capacity_from_metrics(await self.metrics_text())
        except UpstreamError:
            return None
        if not kv:
            return None
        context = await ask("/v1/models", lambda m: gauges.max_model_len(m, self.served_model))
        return gauges.slots_from_kv(kv, context or 0)
