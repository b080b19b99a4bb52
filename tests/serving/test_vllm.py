"""Integration with two real vLLM CPU engines (``-m vllm``; prepared by scripts/test.sh).

The engines serve the tiny random-weight Llama as ``tiny-a`` (core 0) and ``tiny-b``
(core 1), with ``--max-num-seqs 4``. The last test kills ``tiny-a``, so it stays last.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
import pytest

from aragog_jax.engines.client import ClientLimits, EngineClient
from aragog_jax.engines.gauges import kv_capacity_from_metrics
from aragog_jax.serving import (
    CircuitBreaker,
    EngineLoadState,
    LoadMonitor,
    ServeOptions,
    Server,
    load_runtime,
)

from ._fleetkit import write_fleet

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

LONG_CHAIN = """
name = "chain"

[[stage]]
name = "draft"
input_tokens = 10
output_tokens = 48
prompt = "Draft: {input}"

[[stage]]
name = "polish"
upstream = ["draft"]
input_tokens = 60
output_tokens = 48
prompt = "Polish {draft} for {input}"
"""


def _fleet(tmp_path, engines, **server):
    settings = {"port": 0, "metrics_poll_s": 0.1, "engine_timeout_s": 30.0, **server}
    eng = [
        ("vllm-a", "small", engines[0].url, engines[0].name),
        ("vllm-b", "big", engines[1].url, engines[1].name),
    ]
    return load_runtime(
        write_fleet(tmp_path, eng, server=settings, workflows={"chain": LONG_CHAIN})
    )


async def _runs(http, n, text="q"):
    async def one(i):
        async with http.post("/v1/workflows/chain/runs", json={"input": f"{text} {i}"}) as r:
            return r.status, await r.json()

    return await asyncio.gather(*(one(i) for i in range(n)))


def test_unprofiled_engines_report_their_slots(vllm_engines):
    """What vLLM 0.32 reports of its capacity: by default only the KV cache
    (``vllm:cache_config_info``) and ``max_model_len`` (``/v1/models``), so the slots are the
    sequences that fit at full context; with its development endpoints, ``max_num_seqs``.
    First in this file: a later test kills an engine."""
    engines, _ = vllm_engines
    by_name = {e.name: e for e in engines}

    async def ask(name: str):
        client = EngineClient(name, by_name[name].url, name, ClientLimits(probe_timeout_s=60.0))
        await client.open()
        try:
            return await client.reported_slots(), await client.metrics_text()
        finally:
            await client.close()

    default, metrics = asyncio.run(ask("tiny-a"))
    kv = kv_capacity_from_metrics(metrics)
    assert kv > 0, "vLLM exports vllm:cache_config_info"
    assert default.slots == kv // 1024 and "KV capacity" in default.source
    dev, _ = asyncio.run(ask("tiny-b"))
    assert dev.slots == 4 and "max_num_seqs" in dev.source  # --max-num-seqs 4


def test_monitor_reads_real_gauges_moving(vllm_engines):
    engines, _ = vllm_engines

    async def go():
        # A generous probe timeout: on a loaded 2-core machine a busy engine's /metrics can
        # take seconds, and a failed scrape would leave the last (idle) values in place.
        clients = [
            EngineClient(
                e.name, e.url, e.name, ClientLimits(request_timeout_s=60, probe_timeout_s=15)
            )
            for e in engines
        ]
        for c in clients:
            await c.open()
        states = [EngineLoadState(c, c.name, CircuitBreaker()) for c in clients]
        mon = LoadMonitor(states, poll_s=0.05)
        peak = {c.name: [0, 0] for c in clients}
        try:
            await mon.poll_once()
            idle = {s.engine: (s.running, s.waiting, s.source) for s in mon.snapshot()}
            # Judged on the raw scraped gauges (st.scraped), not the in-flight-adjusted snapshot.
            # vLLM CPU updates its gauges in bursts, so a 50 ms poll can miss a whole wave on
            # a loaded machine: send up to three waves, stopping once every engine was caught
            # running a full batch with a queue behind it.
            results = []
            mon.start()  # one scraping task per engine, every 50 ms
            for wave in range(3):
                work = [
                    asyncio.create_task(c.chat(f"tell me {wave} {i}", max_tokens=200, seed=i))
                    for c in clients
                    for i in range(16)
                ]
                while not all(t.done() for t in work):
                    for st in states:
                        sc = st.scraped
                        peak[st.name][0] = max(peak[st.name][0], int(sc.running or 0))
                        peak[st.name][1] = max(peak[st.name][1], int(sc.waiting or 0))
                    await asyncio.sleep(0.02)
                results += await asyncio.gather(*work)
                if all(r == 4 and w >= 1 for r, w in peak.values()):
                    break
            await mon.stop()
            await mon.poll_once()
            after = {st.name: (st.scraped.running, st.scraped.waiting) for st in states}
            orca = [r.orca for r in results if r.orca is not None]
            tokens = {
                c.name: sum(
                    r.completion_tokens
                    for i, r in enumerate(results)
                    if (i // 16) % len(clients) == k
                )
                for k, c in enumerate(clients)
            }
            print("waves:", wave + 1, end=" ")
            print(
                "scrape errors:",
                {st.name: st.scrape_errors for st in states},
                "polls:",
                mon.num_polls,
                "tokens:",
                tokens,
            )
            return idle, peak, after, results, orca
        finally:
            for c in clients:
                await c.close()

    idle, peak, after, results, orca = asyncio.run(asyncio.wait_for(go(), 240))
    print(
        "vLLM gauges: idle",
        idle,
        "peak [running, waiting]",
        peak,
        "after",
        after,
        f"ORCA reports: {len(orca)}",
    )
    assert all(v == (0, 0, "metrics") for v in idle.values())
    for name, (running, waiting) in peak.items():
        assert running == 4, (name, peak)  # --max-num-seqs 4
        # 16 requests, 4 at a time: the queue holds 12, 8, 4 while the waves run. How
        # deep a poll catches it depends on how busy the machine is; that it queues does not.
        assert waiting >= 1, (name, peak)
    assert all(v == (0.0, 0.0) for v in after.values())
    assert len(results) % 32 == 0 and all(r.completion_tokens > 0 for r in results)
    assert orca, "vLLM sent no endpoint-load-metrics header"
    assert all(0.0 <= o.kv_usage <= 1.0 for o in orca if o.kv_usage is not None)


def test_runs_complete_through_server_on_both_engines(vllm_engines, tmp_path):
    engines, _ = vllm_engines

    async def go():
        s = Server(_fleet(tmp_path, engines), ServeOptions(drain_s=5))
        url = await s.start()
        try:
            async with aiohttp.ClientSession(base_url=url) as http:
                res = await _runs(http, 12)
                async with http.get("/metrics") as r:
                    metrics = await r.text()
                for _ in range(240):  # /ready turns 200 once the large round buckets are compiled
                    async with http.get("/ready") as r:
                        ready = r.status
                    if ready == 200:
                        break
                    await asyncio.sleep(0.5)
            return res, metrics, ready
        finally:
            await s.stop(drain_s=1)

    res, metrics, ready = asyncio.run(asyncio.wait_for(go(), 240))
    assert ready == 200
    assert [st for st, _ in res] == [200] * 12, [b for st, b in res if st != 200]
    used = {stage["engine"] for _, body in res for stage in body["receipt"]["stages"]}
    print(
        "engines used:",
        sorted(used),
        "models:",
        sorted({stage["model"] for _, b in res for stage in b["receipt"]["stages"]}),
    )
    assert used == {"vllm-a", "vllm-b"}
    assert all(body["output"] for _, body in res)
    assert 'aragog_requests_total{status="completed",workflow="chain"} 12.0' in metrics
    for _, body in res:
        for stage in body["receipt"]["stages"]:
            assert stage["completion_tokens"] > 0 and stage["run_s"] > 0


def test_openai_client_streams_the_output_stage_token_by_token(vllm_engines, tmp_path):
    """The official client sees the output stage's tokens in many chunks as the real
    engine generates them, and the receipt in the last chunk."""
    openai = pytest.importorskip("openai")
    engines, _ = vllm_engines

    async def go():
        s = Server(_fleet(tmp_path, engines), ServeOptions(drain_s=5, warm_up=False))
        url = await s.start()
        try:
            client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
            arrivals = []
            t0 = time.monotonic()
            stream = await client.chat.completions.create(
                model="workflow:chain",
                messages=[{"role": "user", "content": "write a long story"}],
                stream=True,
            )
            async for ch in stream:
                arrivals.append((time.monotonic() - t0, ch))
            await client.close()
            return arrivals
        finally:
            await s.stop(drain_s=1)

    arrivals = asyncio.run(asyncio.wait_for(go(), 240))
    texts = [
        (t, ch.choices[0].delta.content)
        for t, ch in arrivals
        if ch.choices and ch.choices[0].delta.content
    ]
    last = arrivals[-1][1]
    receipt = last.model_extra["aragog"]["receipt"]
    polish = receipt["stages"][-1]
    print(
        f"{len(texts)} content chunks over {texts[-1][0] - texts[0][0]:.3f} s; polish: "
        f"{polish['completion_tokens']} tokens on {polish['engine']}"
    )
    assert last.choices[0].finish_reason == "stop" and polish["stage"] == "polish"
    # Several chunks, not the whole answer at once (the random-weight model's tokens often
    # decode to no text on their own, so there are fewer text chunks than tokens).
    assert polish["completion_tokens"] > 1 and len(texts) >= 3
    assert texts[-1][0] > texts[0][0]


def test_engine_killed_mid_run_fails_over_and_accounts_for_every_request(vllm_engines, tmp_path):
    engines, procs = vllm_engines
    victim = engines[0]

    async def go():
        s = Server(_fleet(tmp_path, engines), ServeOptions(drain_s=5))
        url = await s.start()
        try:
            async with aiohttp.ClientSession(base_url=url) as http:
                task = asyncio.create_task(_runs(http, 16, "kill"))
                # Wait until tiny-a is busy with our stages, then kill it.
                t0 = time.monotonic()
                while s.executor.engines["vllm-a"].in_flight == 0 and time.monotonic() - t0 < 30:
                    await asyncio.sleep(0.02)
                in_flight_at_kill = s.executor.engines["vllm-a"].in_flight
                os.killpg(victim.pid, signal.SIGKILL)
                res = await task
                counts = dict(s.executor.counts)
                healthy = s.executor.engines["vllm-a"].breaker.state.name
                left = s.executor.num_in_flight
                accepted = s.executor.num_accepted
            return res, counts, healthy, left, accepted, in_flight_at_kill
        finally:
            await s.stop(drain_s=1)

    res, counts, state, left, accepted, at_kill = asyncio.run(asyncio.wait_for(go(), 240))
    procs[victim.name].wait(timeout=10)
    statuses = [st for st, _ in res]
    failovers = sum(b["receipt"]["failovers"] for st, b in res if st == 200)
    print(
        f"killed {victim.name} with {at_kill} stages in flight; statuses {statuses}; failovers "
        f"{failovers}; counts {counts}"
    )
    assert at_kill > 0
    assert len(res) == 16 == accepted and left == 0
    assert sum(counts.values()) == 16
    assert all(st in (200, 502, 503) for st in statuses)
    assert statuses.count(200) == counts["completed"]
    assert failovers >= 1 and state != "CLOSED"
    for st, body in res:
        if st == 200:
            for stage in body["receipt"]["stages"]:
                for a in stage["failed_attempts"]:
                    assert a["engine"] == "vllm-a"
