"""The scheduler host and the batching port (serve --ray's parts) without Ray: two
servers share one SchedulerHost in this process, through LocalLink or over HTTP
(ExchangeServer and HttpLink, the transport serve --ray uses)."""

from __future__ import annotations

import asyncio
import pickle
import time

import aiohttp
import numpy as np
import pytest

from aragog_jax.serving import (
    ExchangeServer,
    HttpLink,
    LocalLink,
    LoopbackServer,
    SchedulerHost,
    ServeOptions,
    Server,
    load_runtime,
)
from aragog_jax.serving._remote import Reply
from tests.serving._fleetkit import fake_pair, post_json, write_fleet


class CountingLink:
    """Counts the calls and events a replica sends the host through ``inner``."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = 0
        self.events = 0

    async def engine_urls(self):
        return await self.inner.engine_urls()

    async def exchange(self, replica, events, wait_s):
        self.calls += 1
        self.events += len(events)
        return await self.inner.exchange(replica, events, wait_s)


async def _cluster(
    tmp_path, engines, fn, *, replicas=2, lease_s=10.0, engine_timeout_s=2.0, http=False
):
    fakes, urls = [], []
    for name, (model, fake) in engines.items():
        srv = LoopbackServer(fake.app, handler_cancellation=True)
        fakes.append(srv)
        urls.append((name, model, await srv.start()))
    settings = {"port": 0, "metrics_poll_s": 0.05, "engine_timeout_s": engine_timeout_s}
    path = write_fleet(tmp_path, urls, server=settings)
    host = SchedulerHost(load_runtime(path), lease_s=lease_s, warm_up=False)
    await host.open()
    exchange_server = None
    if http:
        exchange_server = ExchangeServer(host)
        await exchange_server.start()

        async def locate():
            return exchange_server.endpoint

        links = [CountingLink(HttpLink(locate)) for _ in range(replicas)]
        for ln in links:
            ln.server = exchange_server
    else:
        links = [CountingLink(LocalLink(host)) for _ in range(replicas)]
    servers = [
        Server(
            load_runtime(path), ServeOptions(drain_s=1.0, warm_up=False, tune_gc=False, remote=ln)
        )
        for ln in links
    ]
    try:
        https = []
        for s in servers:
            https.append(aiohttp.ClientSession(base_url=await s.start()))
        try:
            return await fn(host, servers, https, links)
        finally:
            for h in https:
                await h.close()
    finally:
        for s in servers:
            await s.stop(drain_s=0.5)
        for ln in links:
            if isinstance(ln.inner, HttpLink):
                await ln.inner.close()
        if exchange_server is not None:
            await exchange_server.stop()
        await host.close()
        for f in fakes:
            await f.stop()


async def _hang_one(host, engines, http):
    """Engines that never answer, and one run on them: returns once it holds a slot."""
    for _, (_, fake) in engines.items():
        fake.mode = "hang"
    task = asyncio.ensure_future(_run(http))
    for _ in range(200):
        await asyncio.sleep(0.01)
        if host.stats()["in_flight"]:
            break
    return task


async def _settled(host, timeout_s=5.0):
    """Until the host holds no run and no engine slot (or ``timeout_s`` passed)."""
    deadline = time.monotonic() + timeout_s
    while (host.stats()["runs"] or host.stats()["in_flight"]) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


async def _run(http, wf="fan", text="hi"):
    return await post_json(http, f"/v1/workflows/{wf}/runs", {"input": text})


@pytest.mark.parametrize("http", [False, True], ids=["local", "http"])
def test_two_replicas_share_one_scheduler_every_request_accounted(tmp_path, http):
    async def body(host, servers, https, links):
        results = await asyncio.gather(*(_run(https[i % 2], text=f"q{i}") for i in range(40)))
        assert [st for st, _, _ in results] == [200] * 40
        receipts = [b["receipt"] for _, b, _ in results]
        assert all(len(r["stages"]) == 3 for r in receipts)
        # every round came from the host, numbered by it, over both replicas' stages
        assert host.num_rounds >= 1
        assert sum(s.executor.counts["completed"] for s in servers) == 40
        # the last runs' ends may still be on their way (a call over HTTP)
        await _settled(host)
        assert host.stats()["runs"] == 0 and host.stats()["in_flight"] == 0
        assert host.port.num_ready == 0
        # batched: far fewer calls than the 40 * 3 stage events each would need alone
        events = sum(ln.events for ln in links)
        assert events >= 40 * (1 + 3)  # an add and three finishes per run
        return events

    asyncio.run(_cluster(tmp_path, fake_pair(), body, http=http))


def test_dead_replica_lease_drops_its_runs(tmp_path):
    """A replica that stops calling loses its lease: its runs leave the meta-queue and the
    engine slots of their running stages come back (nothing leaks in the host)."""

    async def body(host, servers, https, links):
        task = await _hang_one(host, engines, https[0])
        assert host.stats()["runs"] == 1 and host.stats()["in_flight"] >= 1
        # the replica "dies": its port stops calling (no more heartbeats)
        port = servers[0].executor.sched
        port._closed = True
        port._listener.cancel()
        await asyncio.sleep(0.05)
        host._boxes[port.replica].seen -= 100.0  # its last call was long ago
        assert host.expire(time.monotonic()) == [port.replica]
        assert host.stats() | {"calls": 0, "rounds": 0} == {
            "replicas": 1,
            "busy_replicas": 0,
            "runs": 0,
            "ready": 0,
            "rounds": 0,
            "calls": 0,
            "in_flight": 0,
        }
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    engines = fake_pair()
    asyncio.run(_cluster(tmp_path, engines, body, lease_s=10.0))


def test_scheduler_down_fails_in_flight_and_refuses_new_with_503(tmp_path):
    async def body(host, servers, https, links):
        task = await _hang_one(host, engines, https[0])

        async def dead(replica, events, wait_s):
            raise ConnectionError("scheduler actor died")

        links[0].exchange = dead
        servers[0].executor.sched._exchange = dead
        servers[0].executor.kick()  # a round: the port calls the host and finds it gone
        # the listener's next poll finds it too; the run in flight fails with 503
        port = servers[0].executor.sched
        await port._call([], 0.0)
        status, body_, _ = await task
        assert status == 503 and "scheduler unavailable" in body_["error"]["message"]
        status, body_, _ = await _run(https[0])
        assert status == 503 and "scheduler unavailable" in body_["error"]["message"]
        # the other replica still reaches it
        for _, (_, fake) in engines.items():
            fake.mode = "ok"

    engines = fake_pair()
    asyncio.run(_cluster(tmp_path, engines, body))


def test_restarted_scheduler_fails_what_the_old_one_held_then_serves(tmp_path):
    """A new host (new epoch) never saw the runs queued with the old one: the replica fails
    them with 503 at its first answer from the new one, and new requests complete."""

    async def body(host, servers, https, links):
        task = await _hang_one(host, engines, https[0])
        new = SchedulerHost(host.fleet, warm_up=False)
        await new.open()
        try:
            links[0].inner.host = new  # the scheduler deployment restarted
            port = servers[0].executor.sched
            await port._call([], 0.0)
            status, body_, _ = await task
            assert status == 503, body_
            assert "the scheduler restarted" in body_["error"]["message"]
            for _, (_, fake) in engines.items():
                fake.mode = "ok"
            status, body_, _ = await _run(https[0])
            assert status == 200, body_
            assert new.stats()["rounds"] >= 1 and new.stats()["runs"] == 0
        finally:
            await new.close()

    engines = fake_pair()
    asyncio.run(_cluster(tmp_path, engines, body))


def test_a_queued_run_whose_client_left_leaves_the_host_at_once(tmp_path):
    """A run cancelled while it waits in the meta-queue (no round follows) still reaches
    the host: its cancel is sent without waiting for another request."""

    async def body(host, servers, https, links):
        for _, (_, fake) in engines.items():
            fake.mode = "hang"
        # fill every engine slot, so the next run waits in the meta-queue
        first = [asyncio.ensure_future(_run(https[0], text=f"f{i}")) for i in range(40)]
        for _ in range(300):
            await asyncio.sleep(0.01)
            if host.stats()["ready"]:
                break
        assert host.stats()["ready"] > 0
        runs_before = host.stats()["runs"]
        ex = servers[0].executor
        waiting = [r for r in ex.runs.values() if not r.tasks]
        assert waiting
        ex.cancel(waiting[0], "client disconnected")
        for _ in range(30):  # well within the long poll's 2 s
            await asyncio.sleep(0.01)
            if host.stats()["runs"] == runs_before - 1:
                break
        assert host.stats()["runs"] == runs_before - 1
        for t in first:
            t.cancel()
        await asyncio.gather(*first, return_exceptions=True)

    engines = fake_pair()
    asyncio.run(_cluster(tmp_path, engines, body, engine_timeout_s=30.0))


def test_long_poll_sleeps_on_when_its_replicas_own_call_took_the_plan(tmp_path):
    """A round files a plan in the replica's mailbox and wakes its long poll; when the
    replica's call with events takes the plan first, the long poll finds the mailbox
    empty and must keep waiting (answering it empty costs a call per stage for nothing:
    the old host did)."""

    async def body(host, servers, https, links):
        await host.exchange("r", [], 0.0)
        poll = asyncio.ensure_future(host.exchange("r", [], 5.0))
        await asyncio.sleep(0.01)
        wf = host.fleet.workflows["chain"]
        mask = np.ones(len(wf.space.configs), dtype=bool)
        reply = await host.exchange("r", [("add", "run-1", "chain", mask, False, True)], 0.0)
        assert [a.request_id for p in reply.plans for a in p.assignments] == ["run-1"]
        await asyncio.sleep(0.2)
        assert not poll.done(), poll.result()
        await host.exchange("r", [("cancel", "run-1")], 0.0)  # a failure wakes it with news
        host._fail("nothing", "x")  # no owner: nobody's mailbox
        assert not poll.done()
        await host.exchange("r", [("add", "run-2", "chain", mask, False, True)], 0.0)
        host._fail("run-2", "engines gone")
        reply = await asyncio.wait_for(poll, 1.0)
        assert reply.failures == [("run-2", "engines gone")] and not reply.plans

    asyncio.run(_cluster(tmp_path, fake_pair(), body, replicas=0))


def test_http_link_finds_a_restarted_scheduler(tmp_path):
    """Over HTTP, a scheduler that went away fails the runs in flight with 503; the next
    call asks where the scheduler is again and reaches the new one (a new epoch)."""

    async def body(host, servers, https, links):
        task = await _hang_one(host, engines, https[0])
        new = SchedulerHost(host.fleet, warm_up=False)
        await new.open()
        new_server = ExchangeServer(new)
        await new_server.start()
        try:
            located = []

            async def locate():
                located.append(new_server.endpoint)
                return new_server.endpoint

            links[0].inner._locate = locate
            await links[0].server.stop()  # the old scheduler is gone: the long poll fails
            status, body_, _ = await asyncio.wait_for(task, 10.0)
            assert status == 503 and "scheduler unavailable" in body_["error"]["message"]
            port = servers[0].executor.sched
            await port._call([], 0.0)  # asks again where it is, and gets through
            assert located and set(located) == {new_server.endpoint} and not port.down
            for _, (_, fake) in engines.items():
                fake.mode = "ok"
            status, body_, _ = await _run(https[0])
            assert status == 200, body_
            await _settled(new)
            assert new.stats()["rounds"] >= 1 and new.stats()["runs"] == 0
        finally:
            await new_server.stop()
            await new.close()

    engines = fake_pair()
    asyncio.run(_cluster(tmp_path, engines, body, http=True))


def test_exchange_server_checks_its_token_before_reading_a_call(tmp_path):
    async def body(host, servers, https, links):
        server = ExchangeServer(host)
        url = await server.start()
        try:
            async with aiohttp.ClientSession() as http:
                bad = pickle.dumps(Reply("x"))  # would be loaded if the token were not checked
                for auth in ({}, {"Authorization": "Bearer nope"}):
                    async with http.post(f"{url}/exchange", data=bad, headers=auth) as r:
                        assert r.status == 403
                    async with http.get(f"{url}/engines", headers=auth) as r:
                        assert r.status == 403
                assert host.num_calls == 0
                link = HttpLink(lambda: _ready(server.endpoint))
                try:
                    assert await link.engine_urls() == host.urls
                    reply = await link.exchange("r", [], 0.0)
                    assert reply.epoch == host.epoch and host.num_calls == 1
                finally:
                    await link.close()
        finally:
            await server.stop()

    asyncio.run(_cluster(tmp_path, fake_pair(), body, replicas=0))


async def _ready(value):
    return value


def test_serve_ray_flags_are_checked_before_ray_starts(capsys):
    from aragog_jax import serve
    from aragog_jax._cli import run_cli

    assert run_cli(serve.main, ["--ray", "--replicas", "0"]) == 2
    assert "--replicas must be >= 1, got 0" in capsys.readouterr().err
    assert run_cli(serve.main, ["--ray", "--replica-cpus", "-1"]) == 2
    assert "--replica-cpus must be >= 0" in capsys.readouterr().err
