"""serve --ray on a real local Ray cluster (2 CPUs, loopback; ``ray_cluster``): two
ingress replicas and one scheduler deployment in front of loopback fake engines."""

from __future__ import annotations

import asyncio
import threading
import time

import aiohttp
import pytest

from aragog_jax.serving import FakeEngine, LoopbackServer
from tests.serving._fleetkit import write_fleet

pytestmark = pytest.mark.ray

N = 40


class FakesInThread:
    """Fake engines served from a thread's own loop (the cluster outlives one test's loop)."""

    def __init__(self, engines: dict[str, tuple[str, FakeEngine]]):
        self.engines = engines
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers = []
        self.urls = []
        for name, (model, fake) in engines.items():
            srv = LoopbackServer(fake.app, handler_cancellation=True)
            url = asyncio.run_coroutine_threadsafe(srv.start(), self.loop).result(10)
            self.servers.append(srv)
            self.urls.append((name, model, url))

    def set(self, **kw):
        for _, fake in self.engines.values():
            for k, v in kw.items():
                setattr(fake, k, v)

    def stop(self):
        for srv in self.servers:
            asyncio.run_coroutine_threadsafe(srv.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def ray_serving(ray_cluster, tmp_path_factory):
    from ray import serve

    from aragog_jax.serve_ray import RayServeConfig, deploy

    fakes = FakesInThread(
        {"e-small": ("small", FakeEngine("small")), "e-big": ("big", FakeEngine("big"))}
    )
    path = write_fleet(
        tmp_path_factory.mktemp("rayfleet"),
        fakes.urls,
        server={"port": 0, "metrics_poll_s": 0.2, "engine_timeout_s": 5.0},
    )
    cfg = RayServeConfig(
        fleet=str(path), replicas=2, replica_cpus=0, scheduler_cpus=0, lease_s=3.0, warm_up=False
    )
    url = deploy(cfg, host="127.0.0.1", port=0)
    try:
        yield url, fakes
    finally:
        serve.shutdown()
        fakes.stop()


async def _post(http, path, body):
    async with http.post(path, json=body) as r:
        return r.status, await r.json(content_type=None)


def _scheduler_stats():
    from ray import serve

    return serve.get_deployment_handle("scheduler", "aragog").stats.remote().result()


def _runs_by_replica():
    from ray import serve

    return serve.get_deployment_handle("scheduler", "aragog").runs_by_replica.remote().result()


def _settled(timeout_s=15.0):
    """The scheduler's books once nothing is in flight (or the last look)."""
    deadline = time.monotonic() + timeout_s
    while True:
        st = _scheduler_stats()
        if (st["runs"], st["in_flight"], st["ready"]) == (0, 0, 0) or time.monotonic() > deadline:
            return st
        time.sleep(0.2)


def test_two_replicas_every_request_accounted_for(ray_serving):
    url, fakes = ray_serving
    fakes.set(mode="ok", delay_s=0.0)

    async def go():
        async with aiohttp.ClientSession(base_url=url) as http:
            return await asyncio.gather(
                *(_post(http, "/v1/workflows/fan/runs", {"input": f"q{i}"}) for i in range(N))
            )

    results = asyncio.run(go())
    assert [s for s, _ in results] == [200] * N
    assert all(len(b["receipt"]["stages"]) == 3 for _, b in results)
    st = _settled()
    assert (st["runs"], st["in_flight"], st["ready"]) == (0, 0, 0)
    assert st["replicas"] == 2 and st["rounds"] >= 1
    # batched: fewer calls to the scheduler than the 4 events (an add, three finishes) per run
    assert st["calls"] < 4 * N


def test_openai_client_through_the_ray_ingress(ray_serving):
    openai = pytest.importorskip("openai")
    url, fakes = ray_serving
    fakes.set(mode="ok", delay_s=0.0)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    models = {m.id for m in client.models.list()}
    assert "workflow:chain" in models
    reply = client.chat.completions.create(
        model="workflow:chain", messages=[{"role": "user", "content": "hello"}]
    )
    assert reply.choices[0].message.content
    pieces = []
    stream = client.chat.completions.create(
        model="workflow:chain", messages=[{"role": "user", "content": "hello"}], stream=True
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    assert len(pieces) >= 2  # the fake engine streams its reply in pieces, relayed as they come
    assert "".join(pieces) == reply.choices[0].message.content


def test_sse_runs_stream_through_the_ray_ingress(ray_serving):
    url, fakes = ray_serving
    fakes.set(mode="ok", delay_s=0.0)

    async def go():
        async with aiohttp.ClientSession(base_url=url) as http:
            async with http.post(
                "/v1/workflows/chain/runs", json={"input": "x", "stream": True}
            ) as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("text/event-stream")
                return (await r.read()).decode()

    text = asyncio.run(go())
    events = [ln[len("event: ") :] for ln in text.splitlines() if ln.startswith("event: ")]
    assert events.count("stage") == 2 and "delta" in events and events[-1] == "done", events


def test_replica_killed_mid_run_loses_nothing(ray_serving):
    """Kill the ingress replica that holds runs in flight: its clients get an error, the
    other replica (and Serve's restarted one) go on serving, and the scheduler's books come
    back to zero (the dead replica's runs dropped at the end of its lease).

    Which replica Serve's proxy sends a request to is its own choice (a burst may all go
    to one), so the victim is picked from the scheduler's books, never by position."""
    import ray

    from aragog_jax.serve_ray import ingress_replicas

    url, fakes = ray_serving
    fakes.set(mode="ok", delay_s=1.0)  # a run takes 2 s: the victim's are still running

    async def one(http, i):
        try:  # Serve's proxy answers a dead replica's requests with a plain-text 500
            async with http.post("/v1/workflows/chain/runs", json={"input": f"k{i}"}) as r:
                return r.status, await r.text()
        except aiohttp.ClientError as exc:
            return "error", repr(exc)

    async def go():
        async with aiohttp.ClientSession(base_url=url) as http:
            tasks = [asyncio.ensure_future(one(http, i)) for i in range(10)]
            live = await asyncio.to_thread(ingress_replicas)
            assert len(live) == 2, live
            deadline = time.monotonic() + 30
            while True:  # until a live replica holds runs (the scheduler saw their adds)
                books = await asyncio.to_thread(_runs_by_replica)
                held = {r: n for r, n in books.items() if n and r in live}
                if held or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            assert held, (books, list(live))
            victim = max(held, key=held.get)
            ray.kill(live[victim], no_restart=False)
            # every request sent before the kill ends; then the survivors serve new ones
            before = await asyncio.gather(*tasks)
            after = []
            deadline = time.monotonic() + 60
            while not any(s == 200 for s, _ in after) and time.monotonic() < deadline:
                after.append(await one(http, 100 + len(after)))  # a 500 while Serve learns
            return victim, held, before, after

    victim, held, before, after = asyncio.run(go())
    failed = [r for r in before if r[0] != 200]
    # each run in flight on the victim fails at its client; those on the others complete
    assert len(failed) >= held[victim], (victim, held, before)
    assert len(before) - len(failed) >= sum(n for r, n in held.items() if r != victim)
    for r in failed + after[:-1]:
        assert r[0] == "error" or r[0] >= 500, r
    assert after[-1][0] == 200, after
    fakes.set(delay_s=0.0)
    st = _settled(timeout_s=20.0)
    assert (st["runs"], st["in_flight"], st["ready"]) == (0, 0, 0), st
    assert victim not in _runs_by_replica(), "the dead replica's lease was not dropped"


def test_scheduler_killed_fails_in_flight_with_503_then_serves_again(ray_serving):
    """Kill the scheduler replica with runs in flight: they end with 503 (never hang), and
    once Serve has restarted it requests complete again. Last: the others need it whole."""
    import ray

    url, fakes = ray_serving
    fakes.set(mode="ok", delay_s=1.0)

    async def go():
        async with aiohttp.ClientSession(base_url=url) as http:
            tasks = [
                asyncio.ensure_future(_post(http, "/v1/workflows/chain/runs", {"input": f"s{i}"}))
                for i in range(6)
            ]
            for _ in range(100):
                await asyncio.sleep(0.05)
                if (await asyncio.to_thread(_scheduler_stats))["in_flight"] >= 2:
                    break
            (name,) = [
                a["name"]
                for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith("SERVE_REPLICA::aragog#scheduler#")
            ]
            ray.kill(ray.get_actor(name, namespace="serve"), no_restart=False)
            return await asyncio.gather(*tasks)

    results = asyncio.run(go())
    failed = [b for s, b in results if s != 200]
    assert failed, results  # they were in flight on the killed scheduler
    for s, b in results:
        assert s in (200, 503), (s, b)
        if s == 503:
            assert "scheduler" in b["error"]["message"], b
    fakes.set(delay_s=0.0)

    async def again():
        async with aiohttp.ClientSession(base_url=url) as http:
            deadline = time.monotonic() + 120
            while True:
                status, body = await _post(http, "/v1/workflows/chain/runs", {"input": "back"})
                if status == 200 or time.monotonic() > deadline:
                    return status, body
                await asyncio.sleep(1.0)

    status, body = asyncio.run(again())
    assert status == 200, body
