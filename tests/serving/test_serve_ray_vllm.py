"""serve --ray in front of two real vLLM CPU engines (``-m vllm``; the session's
``vllm_engines``, before test_vllm.py kills one): two ingress replicas, one scheduler."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from ._fleetkit import CHAIN, write_fleet

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.ray]


def test_two_replicas_on_two_vllm_engines_every_request_accounted(
    vllm_engines, ray_cluster, tmp_path
):
    from ray import serve

    from aragog_jax.serve_ray import RayServeConfig, deploy

    engines, _ = vllm_engines
    eng = [
        ("vllm-a", "small", engines[0].url, engines[0].name),
        ("vllm-b", "big", engines[1].url, engines[1].name),
    ]
    settings = {"port": 0, "metrics_poll_s": 0.2, "engine_timeout_s": 60.0}
    path = write_fleet(tmp_path, eng, server=settings, workflows={"chain": CHAIN})
    cfg = RayServeConfig(fleet=str(path), replicas=2, replica_cpus=0, scheduler_cpus=0)
    url = deploy(cfg, host="127.0.0.1", port=0)
    try:

        async def go():
            async with aiohttp.ClientSession(base_url=url) as http:

                async def one(i):
                    async with http.post(
                        "/v1/workflows/chain/runs", json={"input": f"say {i}"}
                    ) as r:
                        return r.status, await r.json(content_type=None)

                return await asyncio.gather(*(one(i) for i in range(8)))

        results = asyncio.run(go())
        assert [s for s, _ in results] == [200] * 8, results
        used = {st["engine"] for _, b in results for st in b["receipt"]["stages"]}
        assert used <= {"vllm-a", "vllm-b"} and used
        assert all(b["output"] for _, b in results)
        handle = serve.get_deployment_handle("scheduler", "aragog")
        deadline = time.monotonic() + 15
        while True:
            st = handle.stats.remote().result()
            if (st["runs"], st["in_flight"]) == (0, 0) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert (st["runs"], st["in_flight"], st["ready"]) == (0, 0, 0), st
    finally:
        serve.shutdown()
