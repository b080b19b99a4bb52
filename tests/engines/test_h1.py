"""The engine call's keep-alive pool (engines/_h1.py) against a real aiohttp server:
reuse, the connection limit, timeouts, cancellation, servers that close connections."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from aragog_jax.engines._h1 import H1Pool, request_head
from aragog_jax.engines.client import ClientLimits, EngineClient
from aragog_jax.errors import UpstreamError, UpstreamTimeout
from aragog_jax.serving import FakeEngine, LoopbackServer


class Echo:
    """An app that answers each POST with its body and records the client's port (one
    port per connection) and the calls it is serving at once."""

    def __init__(self, delay_s: float = 0.0, close: bool = False):
        self.delay_s = delay_s
        self.close = close  # answer with Connection: close
        self.ports: list[int] = []
        self.in_flight = self.max_in_flight = self.cancelled = 0
        self.app = web.Application()
        self.app.router.add_post("/echo", self.echo)

    async def echo(self, request: web.Request) -> web.Response:
        self.ports.append(request.transport.get_extra_info("peername")[1])
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            body = await request.read()
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            headers = {"Connection": "close"} if self.close else {}
            return web.Response(body=body, headers=headers)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1


async def _with(echo: Echo, fn, **pool_kw):
    srv = LoopbackServer(echo.app, handler_cancellation=True)
    await srv.start()
    kw = {"max_connections": 8, "connect_timeout_s": 1.0, **pool_kw}
    pool = H1Pool("127.0.0.1", srv.port, **kw)
    try:
        head = request_head("127.0.0.1", srv.port, "/echo", {"Content-Type": "text/plain"})
        return await fn(pool, head)
    finally:
        pool.close()
        await srv.stop()


def test_sequential_calls_reuse_one_connection_and_bodies_round_trip():
    echo = Echo()

    async def go(pool, head):
        return [await pool.post(head, b"x" * n, 2.0) for n in (0, 1, 70_000)]

    replies = asyncio.run(_with(echo, go))
    assert [(r.status, len(r.body)) for r in replies] == [(200, 0), (200, 1), (200, 70_000)]
    assert len(set(echo.ports)) == 1 and len(echo.ports) == 3


def test_the_connection_limit_holds_and_waiters_get_served():
    echo = Echo(delay_s=0.05)

    async def go(pool, head):
        replies = await asyncio.gather(*(pool.post(head, b"%d" % i, 5.0) for i in range(7)))
        return [r.body for r in replies]

    assert asyncio.run(_with(echo, go, max_connections=2)) == [b"%d" % i for i in range(7)]
    assert echo.max_in_flight == 2 and len(set(echo.ports)) == 2


def test_waiting_for_a_free_connection_counts_against_the_timeout():
    echo = Echo(delay_s=1.0)

    async def go(pool, head):
        first = asyncio.create_task(pool.post(head, b"a", 5.0))
        await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError):
            await pool.post(head, b"b", 0.2)
        return await first

    assert asyncio.run(_with(echo, go, max_connections=1)).body == b"a"
    assert len(echo.ports) == 1  # the second call never reached the server


def test_a_timed_out_call_closes_its_connection_and_the_next_call_opens_one():
    echo = Echo(delay_s=0.5)

    async def go(pool, head):
        with pytest.raises(TimeoutError):
            await pool.post(head, b"slow", 0.1)
        echo.delay_s = 0.0
        return await pool.post(head, b"fast", 2.0)

    assert asyncio.run(_with(echo, go)).body == b"fast"
    assert len(set(echo.ports)) == 2


def test_a_cancelled_call_closes_its_connection_so_the_server_sees_it():
    echo = Echo(delay_s=5.0)

    async def go(pool, head):
        call = asyncio.create_task(pool.post(head, b"x", 10.0))
        await asyncio.sleep(0.1)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        for _ in range(50):
            if echo.cancelled:
                break
            await asyncio.sleep(0.02)
        return pool._open

    assert asyncio.run(_with(echo, go)) == 0
    assert echo.cancelled == 1


def test_connection_close_replies_and_idle_expiry_open_new_connections():
    echo = Echo(close=True)

    async def go(pool, head):
        for _ in range(3):
            assert (await pool.post(head, b"c", 2.0)).body == b"c"
        echo.close = False
        await pool.post(head, b"k", 2.0)
        await asyncio.sleep(0.15)  # past idle_s: not reused
        await pool.post(head, b"k", 2.0)
        return pool._open

    assert asyncio.run(_with(echo, go, idle_s=0.1)) <= 1
    assert len(set(echo.ports)) == 5


def test_a_call_that_ends_after_the_pool_closed_closes_its_connection():
    echo = Echo(delay_s=0.2)

    async def go(pool, head):
        call = asyncio.create_task(pool.post(head, b"late", 2.0))
        await asyncio.sleep(0.05)
        pool.close()
        body = (await call).body
        return body, len(pool._idle), pool._open

    assert asyncio.run(_with(echo, go)) == (b"late", 0, 0)


def test_engine_closing_an_idle_connection_is_not_an_error():
    """The server closes keep-alive connections (as at its shutdown or keep-alive
    timeout); the next call finds the pooled one closed and opens a fresh one."""
    echo = Echo()

    async def go(pool, head):
        await pool.post(head, b"1", 2.0)
        (conn,) = pool._idle
        conn.transport.close()  # as if the server had closed it
        await asyncio.sleep(0.05)
        return (await pool.post(head, b"2", 2.0)).body

    assert asyncio.run(_with(echo, go)) == b"2"
    assert len(set(echo.ports)) == 2


def test_garbage_and_disconnects_map_to_upstream_errors():
    """Bytes that are not HTTP, and a server that hangs up before a reply, leave the engine
    client as UpstreamError naming the engine."""

    async def raw_server(reply: bytes):
        async def handle(reader, writer):
            await reader.read(1)
            writer.write(reply)
            await writer.drain()
            writer.close()

        return await asyncio.start_server(handle, "127.0.0.1", 0)

    async def go(reply: bytes):
        server = await raw_server(reply)
        port = server.sockets[0].getsockname()[1]
        client = EngineClient("e9", f"http://127.0.0.1:{port}", "m", ClientLimits())
        await client.open()
        try:
            await client.chat("x", max_tokens=1)
        finally:
            await client.close()
            server.close()

    with pytest.raises(UpstreamError, match="engine e9: malformed response") as info:
        asyncio.run(go(b"SMTP ready\r\n"))
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(UpstreamError, match="engine e9: unreachable") as info:
        asyncio.run(go(b""))
    assert isinstance(info.value.__cause__, aiohttp.ServerDisconnectedError)


def test_engine_client_calls_share_the_pool_and_map_timeouts():
    fake = FakeEngine("m")

    async def go():
        srv = LoopbackServer(fake.app)
        url = await srv.start()
        client = EngineClient("e0", url + "/", fake.served, ClientLimits(request_timeout_s=0.3))
        await client.open()
        try:
            for _ in range(5):
                await client.chat("hi", max_tokens=2)
            opened = srv.num_connections
            fake.mode = "hang"
            with pytest.raises(UpstreamTimeout, match="engine e0: no reply within 0.3 s"):
                await client.chat("hi", max_tokens=2)
            return opened
        finally:
            await client.close()
            await srv.stop()

    assert asyncio.run(go()) == 1 and fake.num_completed == 5


def test_engine_client_refuses_calls_before_open():
    async def go():
        client = EngineClient("e0", "http://127.0.0.1:9", "m")
        await client.chat("x", max_tokens=1)

    with pytest.raises(RuntimeError, match="engine client 'e0' is not open"):
        asyncio.run(go())
