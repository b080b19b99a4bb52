"""Emulated engine: OpenAI shape, deterministic text, profile timing, vLLM gauges."""

from __future__ import annotations

import asyncio
import time

from aragog_jax.engines.client import ClientLimits, EngineClient
from aragog_jax.engines.gauges import parse_gauges
from aragog_jax.serving import (
    EmulatedEngine,
    LoopbackServer,
    deterministic_text,
)
from aragog_jax.spec import CurvePoint, EngineProfile


def _profile(base=0.01):
    return EngineProfile(
        model="M",
        hardware="H",
        tensor_parallel=1,
        kind="derived",
        saturation_batch=4,
        kv_capacity_tokens=100_000,
        prefill_tokens_per_s=1e6,
        decode_base_s=base,
        decode_per_seq_s=0.0,
        decode_per_ctx_token_s=0.0,
        curve=[CurvePoint(1, 100.0)],
    )


async def _run(fn, time_scale=10.0, base=0.01):
    eng = EmulatedEngine("e", "M", _profile(base), time_scale=time_scale)
    srv = LoopbackServer(eng.app)
    url = await srv.start()
    client = EngineClient("e", url, "M", ClientLimits(request_timeout_s=10))
    await client.open()
    try:
        return await fn(eng, client)
    finally:
        await client.close()
        await srv.stop()


def test_reply_is_deterministic_and_counts_tokens():
    async def fn(eng, c):
        a = await c.chat("same prompt", max_tokens=20, seed=3)
        b = await c.chat("same prompt", max_tokens=20, seed=3)
        s = await c.chat("same prompt", max_tokens=20, seed=3, stream=True)
        return a, b, s

    a, b, s = asyncio.run(_run(fn))
    assert a.text == b.text == s.text == deterministic_text("M", "same prompt", 3, 20)
    assert a.completion_tokens == 20 and s.completion_tokens == 20
    assert deterministic_text("M", "other", 3, 20) != a.text
    # Obviously a placeholder, naming its model: nobody mistakes it for an answer.
    head, _, words = a.text.partition("] ")
    assert head == "[emulated M: placeholder text" and len(words.split()) == 20
    assert set(words.split()) <= set(
        "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
        "incididunt ut labore et dolore magna aliqua enim ad minim veniam quis nostrud".split()
    )


def test_timing_follows_profile_and_batches_concurrently():
    # 50 tokens x 100 ms / time_scale 10 = 0.5 s of wall time per request at least.
    async def fn(eng, c):
        t0 = time.monotonic()
        await c.chat("x", max_tokens=50)
        one = time.monotonic() - t0
        tasks = [asyncio.create_task(c.chat(f"p{i}", max_tokens=50)) for i in range(6)]
        seen = []
        for _ in range(200):  # until the batch has formed (bounded: 2 s of polling)
            g = parse_gauges(await c.metrics_text())
            seen.append((g["vllm:num_requests_running"], g["vllm:num_requests_waiting"]))
            if seen[-1] == (4.0, 2.0):
                break
            await asyncio.sleep(0.01)
        await asyncio.gather(*tasks)
        g_after = parse_gauges(await c.metrics_text())
        return one, seen, g_after

    one, seen, g_after = asyncio.run(_run(fn, base=0.1))
    assert one >= 0.5
    # saturation_batch 4: four run, two wait.
    assert seen[-1] == (4.0, 2.0), seen
    assert (
        g_after["vllm:num_requests_running"] == 0.0 and g_after["vllm:num_requests_waiting"] == 0.0
    )


def test_wrong_model_is_404_and_models_lists_served_name():
    async def fn(eng, c):
        async with c.session.get(c.url + "/v1/models") as r:
            models = await r.json()
        async with c.session.post(
            c.url + "/v1/chat/completions", json={"model": "nope", "messages": []}
        ) as r:
            return models, r.status

    models, status = asyncio.run(_run(fn))
    assert models["data"][0]["id"] == "M" and status == 404
