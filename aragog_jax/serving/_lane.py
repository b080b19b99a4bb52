"""The front door's fast lane: the hot requests (a non-streaming workflow run or chat
completion) read and answered on a plain ``asyncio.Protocol`` with httptools, every other
request handed to aiohttp.

Through aiohttp's server a request costs about 0.5 ms of CPU on this project's 2-core
machine before any of the server's own code runs (``bench/peers.py``: its
``aiohttp-proxy`` against ``python-floor``, the same pass-through without a framework,
0.62 against 0.17 ms): a ``RequestHandler`` task per connection, request and response
objects with multidicts, the router, the middleware chain. The hot requests need none of
it: one head, one body already in the buffer, one JSON answer.

:class:`Lane` is each connection's first protocol. While its requests are hot, it answers
them itself: it finds the head's end in its buffer, parses the head with httptools
(llhttp, the parser of Node.js and of aiohttp's C extension), and calls the server's lane
handler with the path, the ``Authorization`` value and the body. The handler returns an
awaitable answer, or None for a request it leaves to aiohttp (a stream, a bad key).

Anything else is **handed over**: the connection's transport is given to aiohttp's
guarded protocol (:mod:`._conn`) together with every byte not yet answered, and stays
there for the rest of its life. So aiohttp, with all its checks, still takes every request
that is not plainly hot: another method or path, a head over ``max_line_bytes`` bytes or
not parseable, HTTP/1.0, ``Transfer-Encoding``, ``Expect``, ``Upgrade``, a percent-encoded
or query-carrying path, a body over the limit or not yet complete in the buffer, a
missing or wrong key (aiohttp's middleware answers 401), a stream.

What the lane keeps of the guard, for the requests it answers:

* the connection bound: a connection over ``max_connections`` is handed over at once, and
  the guarded protocol refuses it (503);
* the head timer: a head not complete ``header_timeout_s`` after the connection opened
  or after its first byte closes the connection, with a 408 when some of it had arrived;
* idle keep-alive connections close after ``keepalive_timeout_s``;
* the client going away cancels the request's handler (and with it the run);
* ``Connection: close`` from the client closes after the answer; requests pipelined
  behind one in progress wait in the buffer (reading pauses past ``max_buffer`` bytes)
  and are answered in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus

import httptools

from aragog_jax.serving._wire import INTERNAL_ERROR_MESSAGE, error_body

log = logging.getLogger("aragog_jax.serving")

#: An answer: (status, extra header lines each ending in CRLF, JSON body).
Answer = tuple[int, bytes, bytes]
#: The lane handler: (path, Authorization value or None, body) -> a function that starts
#: answering (a coroutine function of no arguments, called in the request's task, so no
#: coroutine exists before the task runs), or None to hand the request to aiohttp.
LaneHandler = Callable[[str, bytes | None, bytes], Callable[[], Awaitable[Answer]] | None]

HEAD_END = b"\r\n\r\n"
_PHRASES = {s.value: s.phrase.encode() for s in HTTPStatus}
_INTERNAL = error_body(INTERNAL_ERROR_MESSAGE, "internal_error", 500)


async def _internal_error() -> Answer:
    return 500, b"", _INTERNAL


class _Head:
    """httptools callbacks collecting one request head."""

    __slots__ = ("url", "headers")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))


def parse_head(head: bytes) -> tuple[str, int, bytes | None, bool] | None:
    """(path, Content-Length, Authorization, keep-alive) of a hot-lane POST head (ending in
    CRLF CRLF), or None for a head the lane leaves to aiohttp (see the module docstring)."""
    cb = _Head()
    parser = httptools.HttpRequestParser(cb)
    try:
        parser.feed_data(head)
    except Exception:  # malformed, or an upgrade: aiohttp answers it
        return None
    if parser.get_method() != b"POST" or parser.get_http_version() != "1.1":
        return None
    url = cb.url
    if b"?" in url or b"%" in url or b"#" in url or not url.isascii():
        return None
    length: int | None = None
    auth: bytes | None = None
    keep = True
    for name, value in cb.headers:
        if name == b"content-length":
            if length is not None or not value.isdigit():
                return None
            length = int(value)
        elif name == b"authorization":
            if auth is not None:
                return None
            auth = value
        elif name == b"connection":
            tokens = {t.strip().lower() for t in value.split(b",")}
            if b"close" in tokens:
                keep = False
            if b"upgrade" in tokens:
                return None
        elif name in (b"transfer-encoding", b"expect", b"upgrade"):
            return None
    if length is None:
        return None
    return url.decode("ascii"), length, auth, keep


class _Date:
    """The ``Date`` header's value, formatted once a second."""

    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second = -1
        self.value = b""

    def now(self) -> bytes:
        t = int(time.time())
        if t != self.second:
            self.second = t
            self.value = formatdate(t, usegmt=True).encode()
        return self.value


_DATE = _Date()


def response_bytes(status: int, extra: bytes, body: bytes, close: bool) -> bytes:
    """A complete HTTP/1.1 JSON response."""
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nDate: %s\r\n%s%s\r\n%s"
        % (
            status,
            _PHRASES.get(status, b"Unknown"),
            len(body),
            _DATE.now(),
            extra,
            b"Connection: close\r\n" if close else b"",
            body,
        )
    )


class Lane(asyncio.Protocol):
    """One connection while its requests are hot (see the module docstring).

    ``manager`` is aiohttp's low-level server (the lane registers with it, so shutdown
    closes it like aiohttp's own connections); ``guard`` the runner's shared limits and
    counters; ``slow`` makes the guarded aiohttp protocol a connection is handed to."""

    def __init__(
        self,
        manager,
        guard,
        handler: LaneHandler,
        slow: Callable[[], asyncio.Protocol],
        loop: asyncio.AbstractEventLoop,
        *,
        prefix: bytes,
        max_body: int,
    ):
        self._manager = manager
        self._guard = guard
        self._handler = handler
        self._slow = slow
        self._loop = loop
        self._prefix = prefix
        self._max_body = max_body
        self._max_buffer = max_body + 65536
        self._task_handler = None  # aiohttp's Server.connection_lost reads it
        self._counted = False  # in the guard's open count and the manager's connections
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._task: asyncio.Task | None = None  # the request being answered
        self._keep = True  # the request being answered allows another on the connection
        self._closing = False  # close after the request being answered (shutdown)
        self._paused = False
        self._timer: asyncio.TimerHandle | None = None
        # loop.time() when the current head started (connection open or its first byte);
        # None while a request is answered or the connection is idle.
        self._head_since: float | None = None
        self._idle_since = 0.0  # when the last answer was written

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        if self._guard.num_open >= self._guard.limits.max_connections:
            self._hand_over()  # the guarded protocol refuses it (503)
            return
        self._guard.num_open += 1
        self._counted = True
        self._manager.connection_made(self, transport)
        self._head_since = self._loop.time()
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._counted:
            self._counted = False
            self._guard.num_open -= 1
            self._manager.connection_lost(self, exc)
        self.transport = None
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the client went away: its run ends (Executor.wait)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._task is not None:  # pipelined behind the request being answered
            if len(self._buf) > self._max_buffer and not self._paused:
                self._paused = True
                self.transport.pause_reading()
            return
        self._next()

    # -- requests ----------------------------------------------------------------------------

    def _next(self) -> None:
        """Start answering the request at the head of the buffer, hand the connection over,
        or wait for more bytes."""
        buf = self._buf
        if not buf or self._closing:
            return
        if self._head_since is None:
            self._head_since = self._loop.time()
        n = min(len(buf), len(self._prefix))
        if buf[:n] != self._prefix[:n]:
            self._hand_over()
            return
        end = buf.find(HEAD_END)
        if end < 0 or end > self._guard.limits.max_line_bytes:
            if end >= 0 or len(buf) > self._guard.limits.max_line_bytes:
                self._hand_over()  # aiohttp applies its per-line limits and answers
            return
        head = parse_head(bytes(buf[: end + 4]))
        if head is None:
            self._hand_over()
            return
        path, length, auth, keep = head
        total = end + 4 + length
        if length > self._max_body or len(buf) < total:
            self._hand_over()  # 413, or a body still coming (read under aiohttp's timeout)
            return
        try:
            answer = self._handler(path, auth, bytes(buf[end + 4 : total]))
        except Exception:
            log.exception("unhandled error answering a request")
            answer = _internal_error
        if answer is None:
            self._hand_over()
            return
        del buf[:total]
        self._head_since = None
        self._keep = keep
        self._task = self._loop.create_task(self._answer(answer))

    async def _answer(self, answer: Callable[[], Awaitable[Answer]]) -> None:
        try:
            status, extra, body = await answer()
        except Exception:
            log.exception("unhandled error answering a request")
            status, extra, body = 500, b"", _INTERNAL
        self._task = None
        tr = self.transport
        if tr is None or tr.is_closing():
            return
        close = not self._keep or self._closing
        tr.write(response_bytes(status, extra, body, close))
        if close:
            tr.close()
            return
        self._idle_since = self._loop.time()
        if self._paused:
            self._paused = False
            tr.resume_reading()
        self._next()
        if self._task is None:
            self._arm()

    def _hand_over(self) -> None:
        """Give the connection, and every byte not yet answered, to aiohttp's guarded
        protocol for the rest of its life."""
        tr = self.transport
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        since = self._head_since
        if self._counted:
            self._counted = False
            self._guard.num_open -= 1  # the guarded protocol counts it again
            self._manager.connection_lost(self, None)
        self.transport = None
        proto = self._slow()
        tr.set_protocol(proto)
        proto.connection_made(tr)
        if since is not None:
            proto.continue_head(since)
        if self._buf:
            data, self._buf = bytes(self._buf), bytearray()
            proto.data_received(data)

    # -- timers and shutdown -----------------------------------------------------------------

    def _arm(self) -> None:
        """Make the connection's one timer fire by the current deadline. It is lazy: a
        later deadline leaves a pending timer alone, which re-arms itself when it fires."""
        if self.transport is None:
            return
        when = self._deadline()
        if when is None:
            return
        if self._timer is not None:
            if self._timer.when() <= when:
                return
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._tick)

    def _deadline(self) -> float | None:
        if self._task is not None:
            return None  # the handler's own limits apply
        if self._head_since is not None:
            return self._head_since + self._guard.limits.header_timeout_s
        return self._idle_since + self._guard.limits.keepalive_timeout_s

    def _tick(self) -> None:
        self._timer = None
        tr = self.transport
        when = self._deadline()
        if tr is None or when is None:
            return
        if self._loop.time() < when:
            self._timer = self._loop.call_at(when, self._tick)
            return
        if self._head_since is not None and self._buf:
            tr.write(self._guard.head_timeout)
            self._guard.on_refused(408, "request_timeout")
            log.info(
                "closed a connection whose request head took over %g s",
                self._guard.limits.header_timeout_s,
            )
        tr.close()

    def close(self) -> None:
        """Stop after the request being answered (aiohttp's ``pre_shutdown``)."""
        self._closing = True
        if self._task is None and self.transport is not None:
            self.transport.close()

    async def shutdown(self, timeout: float | None = 15.0) -> None:
        """Wait up to ``timeout`` for the request being answered, then close."""
        self._closing = True
        task = self._task
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=timeout)
            task.cancel()  # (no-op when it ended)
        if self.transport is not None:
            self.transport.close()
