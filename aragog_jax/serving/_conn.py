"""Connections at the front door: read timeouts, a bound on open connections, client
disconnects, and aiohttp's own errors in the server's JSON error shape.

aiohttp parses each connection's requests in a :class:`~aiohttp.web.RequestHandler` and
answers a malformed one (a request line or header line over its limit, a bad method, a
bad header) itself, before any application code runs, in plain text that echoes the
offending bytes, which may hold an API key. :class:`GuardedRunner` runs an application
with a RequestHandler subclass that:

* answers those errors with the JSON error shape and a fixed message: the bytes are
  never echoed or logged (one log line names the error class);
* closes a connection whose request head (request line and headers) is not complete
  ``header_timeout_s`` after it opened or after the first byte of a later request
  (slowloris), answering 408 when some of the head had arrived;
* refuses connections beyond ``max_connections`` open ones: 503 and close;
* cancels the request's handler when the client disconnects (aiohttp's
  ``handler_cancellation``; off by default), so the work behind it can stop.

Idle keep-alive connections close after ``keepalive_timeout_s`` (aiohttp's own timer).
The body read timeout belongs to the handlers, which read the body.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong

from aragog_jax.serving._lane import Lane, LaneHandler
from aragog_jax.serving._wire import INTERNAL_ERROR_MESSAGE, error_body

log = logging.getLogger("aragog_jax.serving")


@dataclass(frozen=True)
class ConnLimits:
    """Per-connection limits of the front door (``[server]`` in the fleet file)."""

    header_timeout_s: float = 10.0  # request line + headers complete within this
    keepalive_timeout_s: float = 30.0  # an idle keep-alive connection closes after this
    max_connections: int = 4096  # open connections; more are answered 503 and closed
    max_line_bytes: int = 8190  # request line and each header line (aiohttp's default)
    # After answering a request whose body was not read (401, 413, ...), read and drop
    # what is still coming for at most this long, so the client sees the answer instead
    # of a reset; then close.
    linger_s: float = 2.0


#: Requests whose head starts with this may be answered by the fast lane (:mod:`._lane`).
LANE_PREFIX = b"POST /v1/"

#: Called with (status, error type) for every request or connection refused here.
OnRefused = Callable[[int, str], None]


def _raw_response(status: int, kind: str, message: str) -> bytes:
    """A complete HTTP/1.1 error response that closes the connection."""
    body = error_body(message, kind, status)
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
    )
    if status == 503:
        head += "Retry-After: 1\r\n"
    return (head + "\r\n").encode() + body


def describe_http_error(
    status: int, exc: BaseException | None, limits: ConnLimits
) -> tuple[int, str, str]:
    """(status, error type, message) for an error aiohttp raised while parsing or
    handling a request. The message never contains request bytes."""
    if status >= 500:
        return 500, "internal_error", INTERNAL_ERROR_MESSAGE
    if isinstance(exc, LineTooLong):
        return (
            400,
            "invalid_request_error",
            f"request line or a header line is over {limits.max_line_bytes} bytes",
        )
    if status == 400:
        name = type(exc).__name__ if exc is not None else "BadHttpMessage"
        return 400, "invalid_request_error", f"malformed HTTP request ({name})"
    return status, "invalid_request_error", HTTPStatus(status).phrase


class _Guard:
    """What every connection of one runner shares: limits, the open count, the callback."""

    def __init__(self, limits: ConnLimits, on_refused: OnRefused):
        self.limits = limits
        self.on_refused = on_refused
        self.num_open = 0
        # Canned answers, built once.
        self.too_many = _raw_response(
            503,
            "too_many_connections",
            f"server has {limits.max_connections} connections open; retry",
        )
        self.head_timeout = _raw_response(
            408,
            "request_timeout",
            f"request line and headers not received within {limits.header_timeout_s:g} s",
        )


class _GuardedProtocol(web.RequestHandler):
    """aiohttp's per-connection handler with the guard's head timer, connection bound
    and JSON errors (see the module docstring)."""

    def __init__(
        self, manager: web.Server, *, guard: _Guard, loop: asyncio.AbstractEventLoop, **kwargs
    ):
        super().__init__(manager, loop=loop, **kwargs)
        self._guard = guard
        self._guard_loop = loop
        self._head_timer: asyncio.TimerHandle | None = None
        self._awaiting_head = True  # between requests: the next bytes start a request head
        # loop.time() when the current head started (its first byte, or the connection
        # opening); None while a request is being handled or the connection is idle.
        self._head_since: float | None = None
        self._head_bytes = 0  # bytes received towards the current head
        self._refused = False

    # -- connection bound and head timer -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        g = self._guard
        if g.num_open >= g.limits.max_connections:
            # Not handed to aiohttp: answer the first bytes with 503 and close.
            self._refused = True
            self.transport = transport  # type: ignore[assignment]
            self._head_timer = self._guard_loop.call_later(
                g.limits.header_timeout_s, transport.close
            )
            return
        g.num_open += 1
        super().connection_made(transport)
        self._head_since = self._guard_loop.time()
        self._arm_head_timer(self._head_since + g.limits.header_timeout_s)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._refused:
            self.transport = None
            return
        self._guard.num_open -= 1
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(self._guard.too_many)
                self.transport.close()
                self._guard.on_refused(503, "too_many_connections")
            return
        if self._awaiting_head and data:  # (aiohttp feeds b"" when it resumes reading)
            self._head_bytes += len(data)
            if self._head_since is None:
                self._head_since = self._guard_loop.time()
                if self._head_timer is None:
                    self._arm_head_timer(self._head_since + self._guard.limits.header_timeout_s)
        super().data_received(data)

    # The head timer is lazy (like aiohttp's keep-alive timer): a complete head does not
    # cancel it; when it fires it checks the head in progress, if any, and re-arms for
    # that head's own deadline. Busy keep-alive connections thus cost no timer per request.

    def _arm_head_timer(self, when: float) -> None:
        self._head_timer = self._guard_loop.call_at(when, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._head_since is None or self.transport is None:
            return  # no head in progress: the next one arms the timer again
        deadline = self._head_since + self._guard.limits.header_timeout_s
        if self._guard_loop.time() < deadline:
            self._arm_head_timer(deadline)
            return
        if self._head_bytes:
            self.transport.write(self._guard.head_timeout)
            self._guard.on_refused(408, "request_timeout")
            log.info(
                "closed a connection whose request head took over %g s",
                self._guard.limits.header_timeout_s,
            )
        self.force_close()

    def continue_head(self, since: float) -> None:
        """The head in progress started at ``since`` (loop time), before the fast lane
        handed the connection over (:mod:`._lane`): its deadline counts from then."""
        self._head_since = since
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._arm_head_timer(since + self._guard.limits.header_timeout_s)

    def head_received(self) -> None:
        """A request head is complete: its handler runs next (the server's request factory)."""
        self._awaiting_head = False
        self._head_since = None
        self._head_bytes = 0

    def request_done(self) -> None:
        """The handler returned: the next bytes on this connection start a new head."""
        self._awaiting_head = True

    # -- aiohttp's own errors ------------------------------------------------------------

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, ConnectionError):  # the client is gone: nothing to answer
            log.info("client went away during %s (%s)", request.method, type(exc).__name__)
            raise ConnectionError("client went away") from exc
        if status >= 500:
            log.error(
                "unhandled error answering %s %s", request.method, request.path[:200], exc_info=exc
            )
        else:
            # Never the exception's text: aiohttp puts the offending bytes (keys) there.
            log.info(
                "refused a malformed request from %s: %s",
                request.remote,
                type(exc).__name__ if exc else status,
            )
        if request.writer.output_size > 0:
            raise ConnectionError("the response had started; cannot send an error response")
        status, kind, text = describe_http_error(status, exc, self._guard.limits)
        if status < 500:
            self._guard.on_refused(status, kind)
        resp = web.Response(
            status=status, body=error_body(text, kind, status), content_type="application/json"
        )
        resp.force_close()
        return resp


class _GuardedServer(web.Server):
    """aiohttp's low-level server making :class:`_GuardedProtocol` connections; tells each
    connection when its request head is complete (request factory) and when its handler
    returned."""

    def __init__(
        self,
        base: web.Server,
        guard: _Guard,
        loop: asyncio.AbstractEventLoop,
        protocol_kwargs: dict,
        lane: LaneHandler | None,
        max_body: int,
    ):
        super().__init__(
            self._handle, request_factory=self._request, handler_cancellation=True, loop=loop
        )
        self._base_handler = base.request_handler
        self._base_factory = base.request_factory
        self._guard = guard
        self._protocol_loop = loop
        self._protocol_kwargs = protocol_kwargs
        self._lane = lane
        self._max_body = max_body

    def __call__(self) -> asyncio.Protocol:
        if self._lane is None:
            return self._guarded()
        return Lane(
            self,
            self._guard,
            self._lane,
            self._guarded,
            self._protocol_loop,
            prefix=LANE_PREFIX,
            max_body=self._max_body,
        )

    def _guarded(self) -> _GuardedProtocol:
        return _GuardedProtocol(
            self, guard=self._guard, loop=self._protocol_loop, **self._protocol_kwargs
        )

    def _request(self, message, payload, protocol, writer, task):  # noqa: ANN001 - aiohttp's factory signature
        protocol.head_received()
        return self._base_factory(message, payload, protocol, writer, task)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            return await self._base_handler(request)
        finally:
            request.protocol.request_done()


class GuardedRunner(web.AppRunner):
    """An AppRunner whose connections are guarded (see the module docstring). With a
    ``lane`` handler, each connection starts in the fast lane (:mod:`._lane`), which
    answers the hot ``POST /v1/...`` requests itself (bodies up to ``max_body`` bytes)
    and hands the rest to the guarded aiohttp protocol."""

    def __init__(
        self,
        app: web.Application,
        limits: ConnLimits,
        on_refused: OnRefused,
        *,
        shutdown_timeout: float = 1.0,
        lane: LaneHandler | None = None,
        max_body: int = 0,
    ):
        self._protocol_kwargs = {
            "access_log": None,
            "keepalive_timeout": limits.keepalive_timeout_s,
            "max_line_size": limits.max_line_bytes,
            "max_field_size": limits.max_line_bytes,
            "lingering_time": limits.linger_s,
        }
        self._guard = _Guard(limits, on_refused)
        self._lane = lane
        self._max_body = max_body
        super().__init__(
            app, handle_signals=False, shutdown_timeout=shutdown_timeout, **self._protocol_kwargs
        )

    @property
    def num_open(self) -> int:
        """Connections open now (refused ones not counted)."""
        return self._guard.num_open

    async def _make_server(self) -> web.Server:
        # The application's own server (it freezes the app and resolves its handler and
        # request factory); the guarded server takes those over.
        base = await super()._make_server()
        return _GuardedServer(
            base,
            self._guard,
            asyncio.get_running_loop(),
            self._protocol_kwargs,
            self._lane,
            self._max_body,
        )
