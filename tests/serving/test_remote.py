"""The scheduler host and the batching port (serve --ray's parts) without Ray: two
servers share one SchedulerHost in this process through LocalLink."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from aragog_jax.serving import LoopbackServer, ServeOptions, Server, load_runtime
from aragog_jax.serving._remote import LocalLink, SchedulerHost
from tests.serving._fleetkit import fake_pair, post_json, write_fleet


class CountingLink(LocalLink):
    """Counts the calls and events a replica sends the host."""

    def __init__(self, host):
        super().__init__(host)
        self.calls = 0
        self.events = 0

    async def exchange(self, replica, events, wait_s):
        self.calls += 1
        self.events += len(events)
        return await super().exchange(replica, events, wait_s)


async def _cluster(tmp_path, engines, fn, *, replicas=2, lease_s=10.0, engine_timeout_s=2.0):
    fakes, urls = [], []
    for name, (model, fake) in engines.items():
        srv = LoopbackServer(fake.app, handler_cancellation=True)
        fakes.append(srv)
        urls.append((name, model, await srv.start()))
    settings = {"port": 0, "metrics_poll_s": 0.05, "engine_timeout_s": engine_timeout_s}
    path = write_fleet(tmp_path, urls, server=settings)
    host = SchedulerHost(load_runtime(path), lease_s=lease_s, warm_up=False)
    await host.open()
    links = [CountingLink(host) for _ in range(replicas)]
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


async def _run(http, wf="fan", text="hi"):
    return await post_json(http, f"/v1/workflows/{wf}/runs", {"input": text})


def test_two_replicas_share_one_scheduler_every_request_accounted(tmp_path):
    async def body(host, servers, https, links):
        results = await asyncio.gather(*(_run(https[i % 2], text=f"q{i}") for i in range(40)))
        assert [st for st, _, _ in results] == [200] * 40
        receipts = [b["receipt"] for _, b, _ in results]
        assert all(len(r["stages"]) == 3 for r in receipts)
        # every round came from the host, numbered by it, over both replicas' stages
        assert host.num_rounds >= 1
        assert sum(s.executor.counts["completed"] for s in servers) == 40
        assert host.stats()["runs"] == 0 and host.stats()["in_flight"] == 0
        assert host.port.num_ready == 0
        # batched: far fewer calls than the 40 * 3 stage events each would need alone
        events = sum(ln.events for ln in links)
        assert events >= 40 * (1 + 3)  # an add and three finishes per run
        return events

    asyncio.run(_cluster(tmp_path, fake_pair(), body))


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
            links[0].host = new  # the scheduler deployment restarted
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


def test_serve_ray_flags_are_checked_before_ray_starts(capsys):
    from aragog_jax import serve
    from aragog_jax._cli import run_cli

    assert run_cli(serve.main, ["--ray", "--replicas", "0"]) == 2
    assert "--replicas must be >= 1, got 0" in capsys.readouterr().err
    assert run_cli(serve.main, ["--ray", "--replica-cpus", "-1"]) == 2
    assert "--replica-cpus must be >= 0" in capsys.readouterr().err
