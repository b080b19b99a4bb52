"""Keep-alive HTTP/1.1 POSTs to one origin: the engine call's hot path.

Every stage the server dispatches is one ``POST /v1/chat/completions`` to an engine. Through
``aiohttp.ClientSession`` that call costs about 0.33 ms of CPU on this project's 2-core
machine (request and response objects, tracing hooks, cookie and redirect handling,
stream readers), more than the rest of a request's own code; the same call written on an
``asyncio.Protocol`` with ``httptools`` (uvloop's authors' binding of llhttp, the parser
Node.js and aiohttp use) costs about 0.08 ms (``bench/request_profile.py``).
:class:`H1Pool` is that call: a non-streaming POST whose response is read whole, over a
pool of keep-alive connections. Streams, probes and https stay on ``aiohttp``
(:mod:`aragog_jax.engines.http`).

Semantics the callers rely on (the same as the ``aiohttp`` session's):

* **limits**: at most ``max_connections`` open connections; a caller beyond them waits for
  one to come free, inside its timeout;
* **timeouts**: ``timeout_s`` bounds the whole call (waiting for a connection, connecting,
  the reply) and raises :class:`TimeoutError`; ``connect_timeout_s`` bounds connecting;
* **failures** raise what :func:`~aragog_jax.engines.http.transport_error` maps: an
  ``OSError`` from connecting, ``aiohttp.ServerDisconnectedError`` when the engine closes
  the connection before replying, ``aiohttp.ClientPayloadError`` when it closes it
  mid-reply, ``ValueError`` for bytes that are not HTTP;
* **keep-alive**: a connection is reused only after a complete reply the engine did not
  mark ``Connection: close``, and only within ``idle_s`` of its last use: vLLM's server
  (uvicorn) closes idle connections after 5 s, and a POST on a connection the server is
  closing would fail with nothing to show whether the engine ran it. A call that is
  cancelled or fails closes its connection.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

import aiohttp
import httptools

#: Reuse a connection only within this many seconds of its last reply: under uvicorn's
#: default ``timeout_keep_alive`` (5 s), so a server never closes one as we send on it.
IDLE_S = 2.0


@dataclass(frozen=True, slots=True)
class H1Response:
    status: int
    headers: dict[bytes, bytes]  # names lower-case
    body: bytes


class _Conn(asyncio.Protocol):
    """One connection; at most one request on it at a time (no pipelining)."""

    __slots__ = (
        "transport",
        "parser",
        "waiter",
        "headers",
        "parts",
        "started",
        "lost",
        "keep_alive",
        "used_at",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future | None = None
        self.headers: dict[bytes, bytes] = {}
        self.parts: list[bytes] = []
        self.started = False  # a byte of the current reply arrived
        self.lost = False
        self.keep_alive = False  # the last reply allows another request on the connection
        self.used_at = 0.0

    # -- asyncio.Protocol --

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.started = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ValueError("unexpected protocol upgrade"))
        except httptools.HttpParserError as exc:
            self._fail(ValueError(f"not an HTTP/1.1 reply: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.started:
            self._fail(aiohttp.ClientPayloadError("connection closed before the reply's end"))
        else:
            self._fail(aiohttp.ServerDisconnectedError("connection closed before a reply"))

    # -- httptools callbacks --

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.parts.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()  # only valid in this callback
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            body = self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)
            waiter.set_result(H1Response(self.parser.get_status_code(), self.headers, body))

    # -- use --

    def send(self, data: bytes, loop: asyncio.AbstractEventLoop) -> asyncio.Future:
        self.headers = {}
        self.parts = []
        self.started = False
        self.keep_alive = False
        self.waiter = loop.create_future()
        self.transport.write(data)
        return self.waiter

    def reusable(self) -> bool:
        return (
            not self.lost
            and self.waiter is None
            and self.keep_alive
            and not self.transport.is_closing()
        )

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()


class H1Pool:
    """Keep-alive connections to ``host:port`` for the event loop that uses it (see the
    module docstring); :meth:`post` is the one call."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_connections: int,
        connect_timeout_s: float | None,
        idle_s: float = IDLE_S,
    ):
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self.connect_timeout_s = connect_timeout_s
        self.idle_s = idle_s
        self._idle: deque[_Conn] = deque()
        self._open = 0  # connections open or being opened
        self._waiters: deque[asyncio.Future] = deque()
        self.closed = False

    async def post(self, head: bytes, body: bytes, timeout_s: float) -> H1Response:
        """Send ``head`` (from :func:`request_head`) with ``body``; the whole reply, or raise (see
        the module docstring)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        conn = self._reuse(loop)
        if conn is None:
            conn = await self._acquire(loop, deadline)
        reply = conn.send(b"%s%d\r\n\r\n%s" % (head, len(body), body), loop)
        timer = loop.call_at(deadline, _expire, reply)
        try:
            res = await reply
        except BaseException:
            conn.waiter = None
            self._discard(conn)
            raise
        finally:
            timer.cancel()
        if conn.reusable() and not self.closed:
            conn.used_at = loop.time()
            self._idle.append(conn)
            self._wake()
        else:
            self._discard(conn)
        return res

    def close(self) -> None:
        """Close every idle connection; busy ones close as their calls end."""
        self.closed = True
        while self._idle:
            self._discard(self._idle.pop())
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(aiohttp.ClientConnectionError("connection pool closed"))

    # -- connections --

    def _reuse(self, loop) -> _Conn | None:
        """The most recently used idle connection still fresh, or None."""
        now = loop.time()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.used_at < self.idle_s and conn.reusable():
                return conn
            self._discard(conn)
        return None

    async def _acquire(self, loop, deadline: float) -> _Conn:
        while True:
            if self.closed:
                raise aiohttp.ClientConnectionError("connection pool closed")
            if self._open < self.max_connections:
                return await self._connect(loop, deadline)
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, max(0.0, deadline - loop.time()))
            finally:
                if not waiter.done():
                    waiter.cancel()
            conn = self._reuse(loop)
            if conn is not None:
                return conn

    async def _connect(self, loop, deadline: float) -> _Conn:
        self._open += 1
        limit = deadline - loop.time()
        if self.connect_timeout_s is not None:
            limit = min(limit, self.connect_timeout_s)
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(_Conn, self.host, self.port), max(0.0, limit)
            )
        except BaseException:
            self._open -= 1
            self._wake()
            raise
        return conn

    def _discard(self, conn: _Conn) -> None:
        if conn.transport is not None:
            conn.transport.close()
        self._open -= 1
        self._wake()

    def _wake(self) -> None:
        """Let the longest waiter try again (a connection came free or closed)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


def request_head(host: str, port: int, path: str, headers: dict[str, str]) -> bytes:
    """The head of ``POST path`` to ``host:port`` up to ``Content-Length: `` (built once
    per caller; :meth:`H1Pool.post` appends the length and the body)."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")


def _expire(reply: asyncio.Future) -> None:
    if not reply.done():
        reply.set_exception(TimeoutError())


__all__ = ["IDLE_S", "H1Pool", "H1Response", "request_head"]
