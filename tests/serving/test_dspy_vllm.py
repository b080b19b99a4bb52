"""A DSPy program served on two real vLLM CPU engines (here, to share their session fixture).

The tiny model has random weights: its text never has DSPy's field structure, so DSPy's
own parser rejects every reply. What these tests check on the real engine is the path:
DSPy's rendered messages go through the runner to the engine the scheduler chose, the
engine's reply and usage come back through the stage LM, and a reply DSPy cannot parse
ends the request with a 500 naming the stage and DSPy's parse error, after DSPy's
ChatAdapter -> JSONAdapter fallback made exactly its two calls. The parsing itself is
checked on the loopback fake engines (tests/dspy/test_serve.py), whose replies parse.
"""

from __future__ import annotations

import asyncio
import re
import runpy

import aiohttp
import pytest

from aragog_jax.dspy._run import _StageEngine
from aragog_jax.engines.client import EngineClient
from aragog_jax.engines.stages import LM
from aragog_jax.serving import ServeOptions, Server, load_runtime

from ..dspy._dspykit import EXAMPLES, export_example
from ._fleetkit import write_fleet

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def _successes(metrics: str) -> float:
    return sum(
        float(m)
        for m in re.findall(r"^vllm:request_success_total\{[^}]*\} ([\d.e+]+)$", metrics, re.M)
    )


def test_stage_lm_sends_dspy_messages_to_the_real_engine(vllm_engines, tmp_path):
    engines, _ = vllm_engines
    _, stages_py = export_example(tmp_path)
    stages = runpy.run_path(str(stages_py))["STAGES"]  # what the server loads

    async def go():
        client = EngineClient("vllm-a", engines[0].url, engines[0].name)
        await client.open()
        try:
            lm = LM("small", client, 16, 7, 30.0)
            out = await stages.stage_lm("small", _StageEngine(lm, 16)).acall("Say hello.")
            return lm, out
        finally:
            await client.close()

    lm, out = asyncio.run(asyncio.wait_for(go(), 120))
    assert lm.calls == 1 and lm.prompt_tokens > 0 and lm.completion_tokens > 0
    assert out == [lm.last.text]


def test_served_dspy_program_reaches_vllm_and_reports_dspys_parse_error(vllm_engines, tmp_path):
    engines, _ = vllm_engines
    toml, _ = export_example(tmp_path)
    eng = [
        ("vllm-a", "small", engines[0].url, engines[0].name),
        ("vllm-b", "big", engines[1].url, engines[1].name),
    ]
    settings = {"port": 0, "metrics_poll_s": 0.1, "engine_timeout_s": 60.0}
    fleet = load_runtime(
        write_fleet(
            tmp_path, eng, server=settings, workflows={"self_refine_dspy": toml.read_text()}
        )
    )

    async def metrics() -> float:
        total = 0.0
        async with aiohttp.ClientSession() as http:
            for e in engines:
                async with http.get(e.url + "/metrics") as r:
                    total += _successes(await r.text())
        return total

    async def go():
        s = Server(fleet, ServeOptions(drain_s=5, warm_up=False))
        url = await s.start()
        try:
            before = await metrics()
            async with aiohttp.ClientSession(base_url=url) as http:
                async with http.post(
                    "/v1/workflows/self_refine_dspy/runs", json={"input": EXAMPLES[0]}
                ) as r:
                    res = (r.status, await r.json())
            return res, await metrics() - before
        finally:
            await s.stop(drain_s=1)

    (status, body), served = asyncio.run(asyncio.wait_for(go(), 240))
    err = body["error"]
    assert status == 500 and err["type"] == "stage_function_error", body
    assert "stage 'generate'" in err["message"] and "AdapterParseError" in err["message"]
    assert (
        served == 2
    )  # DSPy's ChatAdapter call and its JSONAdapter fallback, both answered by vLLM
