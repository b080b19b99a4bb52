"""HTTP transport to OpenAI-compatible endpoints: sessions and the one error mapping.

* :class:`LoopSessions`: one ``aiohttp`` session (and its connection pool, with the
  caller's limits and timeouts) per event loop, opened on first use and kept until
  :meth:`LoopSessions.aclose`. A client used from several loops (a server's, a
  synchronous helper's ``asyncio.run``) never shares a session across loops.
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
    """One ``aiohttp.ClientSession`` per event loop (see the module docstring)."""

    def __init__(
        self,
        *,
        max_connections: int,
        timeout_s: float,
        connect_timeout_s: float | None = None,
    ):
        self.max_connections = max(1, int(max_connections))
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        self._sessions: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, aiohttp.ClientSession
        ] = weakref.WeakKeyDictionary()

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
        return session

    def current(self) -> aiohttp.ClientSession | None:
        """The running loop's open session, or None (not opened in this loop, or closed)."""
        try:
            session = self._sessions.get(asyncio.get_running_loop())
        except RuntimeError:  # no running loop
            return None
        return None if session is None or session.closed else session

    async def aclose(self) -> None:
        """Close the running loop's session (no-op when it has none)."""
        session = self._sessions.pop(asyncio.get_running_loop(), None)
        if session is not None:
            await session.close()


__all__ = ["TRANSPORT_ERRORS", "LoopSessions", "transport_error"]
