"""Load monitor: gauge parsing with vLLM/SGLang names and fallbacks, staleness, health."""

from __future__ import annotations

import asyncio

from aragog_jax.engines.client import ClientLimits, EngineClient, OrcaReport
from aragog_jax.engines.gauges import parse_gauges
from aragog_jax.serving import (
    CircuitBreaker,
    EngineLoadState,
    FakeEngine,
    LoadMonitor,
    LoopbackServer,
)
from aragog_jax.serving._monitor import ScrapedLoad

VLLM_TEXT = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 1.0
vllm:num_requests_waiting{engine="0",model_name="m"} 5.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5
vllm:request_success_total{engine="0",model_name="m"} 17.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="0.3",model_name="m"} 2.0
"""


def test_parse_vllm_sums_label_sets_and_ignores_others():
    g = parse_gauges(VLLM_TEXT)
    assert g == {
        "vllm:num_requests_running": 4.0,
        "vllm:num_requests_waiting": 5.0,
        "vllm:kv_cache_usage_perc": 0.5,
    }
    s = ScrapedLoad.from_gauges(g, 1.0)
    assert (s.running, s.waiting, s.kv_usage) == (4.0, 5.0, 0.5)


def test_old_vllm_and_sglang_names():
    old = ScrapedLoad.from_gauges(
        parse_gauges('vllm:num_requests_running 2\nvllm:gpu_cache_usage_perc{a="b"} 0.7\n'), 0
    )
    assert (old.running, old.waiting, old.kv_usage) == (2.0, None, 0.7)
    sg = ScrapedLoad.from_gauges(
        parse_gauges(
            'sglang:num_running_reqs{x="1"} 6\nsglang:num_queue_reqs 2\nsglang:token_usage 0.25\n'
        ),
        0,
    )
    assert (sg.running, sg.waiting, sg.kv_usage) == (6.0, 2.0, 0.25)


def _state(in_flight=0):
    st = EngineLoadState(EngineClient("e", "http://127.0.0.1:9", "m"), "m", CircuitBreaker())
    st.in_flight = in_flight
    return st


def test_snapshot_fresh_stale_and_orca():
    st = _state(in_flight=2)
    st.scraped = ScrapedLoad(running=4.0, waiting=1.0, kv_usage=0.3, at=10.0)
    fresh = st.snapshot(10.5, stale_after_s=1.0)
    assert (fresh.running, fresh.waiting, fresh.source, fresh.kv_usage) == (4, 1, "metrics", 0.3)
    # Own traffic since the scrape is counted at once: 3 sent, 1 back.
    st.num_dispatched += 3
    st.num_returned += 1
    moved = st.snapshot(10.5, 1.0)
    assert moved.running + moved.waiting == 4 + 1 + 2
    # A stage that returns frees its slot before the next scrape.
    st.num_returned += 2
    assert sum((lambda x: (x.running, x.waiting))(st.snapshot(10.5, 1.0))) == 5
    # Never less than what this server itself has in flight.
    st.in_flight = 9
    assert sum((lambda x: (x.running, x.waiting))(st.snapshot(10.5, 1.0))) == 9
    st.in_flight = 2
    st.orca = OrcaReport(waiting=7.0, kv_usage=0.9, at=10.4)
    o = st.snapshot(10.5, 1.0)
    assert (o.waiting, o.kv_usage, o.source) == (7, 0.9, "metrics+orca")
    stale = st.snapshot(12.0, 1.0)
    assert (stale.running, stale.waiting, stale.source) == (2, 0, "in_flight")


def test_unhealthy_engine_has_zero_slots():
    st = _state()
    st.breaker.on_failure(0.0, "boom")
    snap = st.snapshot(0.1, 1.0)
    assert not snap.healthy and snap.slots_cap == 0


def test_monitor_scrapes_fake_and_detects_failure_and_recovery():
    async def go():
        fake = FakeEngine("m")
        fake.gauges = {
            "vllm:num_requests_running": 2.0,
            "vllm:num_requests_waiting": 9.0,
            "vllm:kv_cache_usage_perc": 0.1,
        }
        srv = LoopbackServer(fake.app)
        url = await srv.start()
        client = EngineClient("e", url, "m", ClientLimits(probe_timeout_s=0.5))
        await client.open()
        changes = []
        st = EngineLoadState(client, "m", CircuitBreaker(cooldown_s=0.05))
        mon = LoadMonitor([st], poll_s=0.05, on_change=lambda: changes.append(1))
        try:
            await mon.poll_once()
            snap = mon.snapshot()[0]
            assert (snap.running, snap.waiting, snap.source) == (2, 9, "metrics")
            assert changes
            fake.mode = "fail"  # /health 503; /metrics still answers
            fake.gauges = None
            await mon.poll_once()
            await asyncio.sleep(0.06)
            fake.health_fails = True
            fake.mode = "ok"
            # /metrics alone answering is not health: make /metrics fail too.
            await srv.stop()
            await mon.poll_once()
            assert not mon.snapshot()[0].healthy
            srv2 = LoopbackServer(FakeEngine("m").app, port=srv.port)
            await srv2.start()
            await asyncio.sleep(0.06)  # cooldown over: half-open probe
            n = len(changes)
            await mon.poll_once()
            assert mon.snapshot()[0].healthy and st.breaker.state.name == "CLOSED"
            assert len(changes) > n
            await srv2.stop()
        finally:
            await client.close()

    asyncio.run(go())
