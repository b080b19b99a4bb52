"""Unprofiled engines take their slot count from what the engine reports (issue 15 item 3)."""

from __future__ import annotations

import asyncio

import pytest

from aragog_jax.engines import UNPROFILED_SATURATION, placeholder_profile
from aragog_jax.engines.gauges import (
    kv_capacity_from_metrics,
    max_model_len,
    slots_from_kv,
    slots_from_sglang_server_info,
    slots_from_vllm_server_info,
)
from aragog_jax.serving import FakeEngine, LoopbackServer, ServeOptions, Server, load_runtime
from tests.serving._fleetkit import with_fake_client, write_fleet


def test_parsers_read_each_engines_report():
    assert (
        slots_from_vllm_server_info(
            {"vllm_config": {"scheduler_config": {"max_num_seqs": 256}}}
        ).slots
        == 256
    )
    assert slots_from_sglang_server_info({"max_running_requests": 48}).slots == 48
    for bad in (None, [], {}, {"vllm_config": "text dump"}, {"max_running_requests": "x"}):
        assert slots_from_vllm_server_info(bad) is None
        assert slots_from_sglang_server_info(bad) is None
    models = {"data": [{"id": "other", "max_model_len": 8}, {"id": "m", "max_model_len": 1024}]}
    assert max_model_len(models, "m") == 1024 and max_model_len(models, "nope") == 0
    got = slots_from_kv(65536, 1024)
    assert got.slots == 64 and "65536" in got.source and "1024" in got.source
    assert slots_from_kv(100, 1024).slots == 1  # one sequence always fits
    assert slots_from_kv(0, 1024) is None and slots_from_kv(65536, 0) is None


def test_placeholder_profile_keeps_the_fixed_default_and_scales_its_curve():
    default = placeholder_profile("m")
    assert default.saturation_batch == UNPROFILED_SATURATION == 16
    assert [p.concurrency for p in default.curve] == [1, 2, 4, 8, 16]
    sized = placeholder_profile("m", 64, "somewhere")
    assert sized.saturation_batch == 64 and sized.curve[-1].concurrency == 64
    assert "64 slots from somewhere" in sized.notes
    assert [p.concurrency for p in placeholder_profile("m", 3).curve] == [1, 2, 3]


@pytest.mark.parametrize(
    ("fake", "slots", "source"),
    [
        (
            FakeEngine("m", max_num_seqs=24, kv_blocks=(4096, 16), max_model_len=1024),
            24,
            "max_num_seqs",
        ),
        (FakeEngine("m", flavour="sglang", max_num_seqs=48), 48, "max_running_requests"),
        (FakeEngine("m", kv_blocks=(4096, 16), max_model_len=1024), 64, "KV capacity 65536"),
        (FakeEngine("m", kv_blocks=(4096, 16)), None, None),  # no context length: no slots
        (FakeEngine("m"), None, None),
    ],
)
def test_client_asks_the_engine_for_its_slots(fake, slots, source):
    async def ask(fake, client):
        return await client.reported_slots()

    got = asyncio.run(with_fake_client(fake, ask))
    if slots is None:
        assert got is None
    else:
        assert got.slots == slots and source in got.source


def test_kv_capacity_from_the_fake_metrics_matches_vllms_format():
    async def metrics(fake, client):
        return await client.metrics_text()

    text = asyncio.run(with_fake_client(FakeEngine("m", kv_blocks=(4096, 16)), metrics))
    assert kv_capacity_from_metrics(text) == 65536


@pytest.mark.parametrize(
    ("fake_kw", "slots"), [({"kv_blocks": (512, 16), "max_model_len": 256}, 32), ({}, 16)]
)
def test_server_sizes_an_unprofiled_engine_from_its_report(tmp_path, fake_kw, slots):
    """The scheduler sees the engine's reported slots, or the fixed placeholder when it
    reports none (the old behaviour, kept as the last fallback)."""

    async def go():
        fakes = [FakeEngine("small", **fake_kw), FakeEngine("big", **fake_kw)]
        srvs = [LoopbackServer(f.app) for f in fakes]
        urls = [await s.start() for s in srvs]
        path = write_fleet(
            tmp_path,
            [("e-small", "small", urls[0]), ("e-big", "big", urls[1])],
            server={"port": 0},
        )
        fleet = load_runtime(path)
        assert [e.profile.saturation_batch for e in fleet.engines] == [16, 16]
        server = Server(fleet, ServeOptions(drain_s=0.5, warm_up=False))
        await server.start()
        try:
            return [i.saturation_batch for i in server.executor.sched.infos], [
                e.profile.notes for e in fleet.engines
            ]
        finally:
            await server.stop(drain_s=0.1)
            for s in srvs:
                await s.stop()

    sat, notes = asyncio.run(go())
    assert sat == [slots, slots]
    assert all(("slots from" in n) == bool(fake_kw) for n in notes)
