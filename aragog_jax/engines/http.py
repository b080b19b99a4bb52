"""HTTP transport to OpenAI-compatible endpoints: sessions and the one error mapping.

* :class:`LoopSessions`: one ``aiohttp`` session (and its connection pool, with the
  caller's limits and timeouts) per event loop, opened on first use and kept until
  :meth:`LoopSessions.aclose`; with ``keep_alive=(host, port)`` also a lean keep-alive
  pool to that origin (:mod:`aragog_jax.engines._h1`) that opens and closes with it. A
  client used from several loops (a server's, a synchronous helper's ``asyncio.run``)
  never shares a session across loops.
* :func:`transport_error`: every transport exception an endpoint can produce becomes an
  :class:`~aragog_jax.errors.UpstreamError` (``UpstreamTimeout`` for timeouts) with a
  message naming the endpoint; callers raise it ``from`` the transport exception.

Used by the engine client (:mod:`aragog_jax.engines.client`) and the router's embeddings
featuriser; nothing here knows the chat protocol.
"""

from __future__ import annotations

import asyncio
import weakref

import aiohttp
import msgspec

from aragog_jax.engines._h1 import H1Pool
from aragog_jax.errors import UpstreamError, UpstreamTimeout


def transport_error(exc: BaseException, what: str, timeout_s: float) -> UpstreamError:
    """The exception tree's error for a transport exception of the endpoint ``what``.

    ``timeout_s`` is the timeout that ran out (named in the message). Raise the result
    ``from exc``.
    """
    if isinstance(exc, (TimeoutError, aiohttp.ServerTimeoutError)):
        return UpstreamTimeout(f"{what}: no reply within {timeout_s:g} s")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamError(f"{what}: truncated response: {exc}")
    if isinstance(exc, (aiohttp.ClientConnectionError, OSError)):
        return UpstreamError(
            f"{what}: unreachable (is the server up?): {type(exc).__name__}: {exc}"
        )
    if isinstance(exc, (ValueError, msgspec.DecodeError, msgspec.ValidationError)):
        return UpstreamError(f"{what}: malformed response: {exc}")
    return UpstreamError(f"{what}: {type(exc).__name__}: {exc}")


#: What :func:`transport_error` maps; anything else is a bug and propagates.
TRANSPORT_ERRORS = (TimeoutError, aiohttp.ClientError, OSError, ValueError)


class LoopSessions:
    """One ``aiohttp.ClientSession`` per event loop, and with ``keep_alive`` one
    :class:`~aragog_jax.engines._h1.H1Pool` beside it (see the module docstring)."""

    def __init__(
        self,
        *,
        max_connections: int,
        timeout_s: float,
        connect_timeout_s: float | None = None,
        keep_alive: tuple[str, int] | None = None,
    ):
        self.max_connections = max(1, int(max_connections))
        self.connect_timeout_s = connect_timeout_s
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        self.keep_alive = keep_alive
        self._sessions: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, aiohttp.ClientSession
        ] = weakref.WeakKeyDictionary()
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, H1Pool] = (
            weakref.WeakKeyDictionary()
        )

    def __len__(self) -> int:
        """Sessions held (one per loop that opened one and has not closed it)."""
        return len(self._sessions)

    def open(self) -> aiohttp.ClientSession:
        """The running loop's session, opened now if it has none."""
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.max_connections, limit_per_host=self.max_connections
            )
            session = aiohttp.ClientSession(
                connector=connector, timeout=self.timeout, raise_for_status=False
            )
            self._sessions[loop] = session
            if self.keep_alive is not None:
                self._close_pool(loop)
                self._pools[loop] = H1Pool(
                    *self.keep_alive,
                    max_connections=self.max_connections,
                    connect_timeout_s=self.connect_timeout_s,
                )
        return session

    def current(self) -> aiohttp.ClientSession | None:
        """The running loop's open session, or None (not opened in this loop, or closed)."""
        try:
            session = self._sessions.get(asyncio.get_running_loop())
        except RuntimeError:  # no running loop
            return None
        return None if session is None or session.closed else session

    def pool(self) -> H1Pool | None:
        """The running loop's keep-alive pool while its session is open, or None."""
        if self.current() is None:
            return None
        return self._pools.get(asyncio.get_running_loop())

    async def aclose(self) -> None:
        """Close the running loop's session and pool (no-op when it has none)."""
        loop = asyncio.get_running_loop()
        self._close_pool(loop)
        session = self._sessions.pop(loop, None)
        if session is not None:
            await session.close()

    def _close_pool(self, loop: asyncio.AbstractEventLoop) -> None:
        pool = self._pools.pop(loop, None)
        if pool is not None:
            pool.close()


__all__ = ["TRANSPORT_ERRORS", "LoopSessions", "transport_error"]
