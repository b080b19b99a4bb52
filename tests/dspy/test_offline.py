"""Offline: DSPy/LiteLLM reach no network, and ``import aragog_jax`` does not load DSPy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ._dspykit import EXAMPLE_REF, EXAMPLES, ROOT

GUARD = Path(__file__).with_name("_netguard.py")


def _run(code: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, list[str]]:
    proc = subprocess.run(
        [sys.executable, str(GUARD), code],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    attempts = json.loads(proc.stdout.strip().splitlines()[-1])
    return proc, attempts


# Import, trace, then serve every stage of the example program on a loopback fake engine
# through the runner, and ask DSPy for the stage LM's capabilities (which read the model
# metadata DSPy fetches from GitHub unless told not to).
TRACE_AND_RUN = f"""
import asyncio, sys
sys.path.insert(0, {str(ROOT)!r})
import aragog_jax.dspy as ad
from aragog_jax.serving import LoopbackServer
from aragog_jax.engines.client import EngineClient
from aragog_jax.engines.stages import LM, StageState
from tests.dspy._dspykit import DSPyFakeEngine

program = ad.load_program({EXAMPLE_REF!r})
traced = ad.trace_program(program, {EXAMPLES!r})
stages = ad.ProgramStages(program, traced, max_tokens=64)

async def main():
    fake = DSPyFakeEngine("small")
    srv = LoopbackServer(fake.app)
    client = EngineClient("e", await srv.start(), "small")
    await client.open()
    outputs = {{}}
    for call in traced.calls:
        lm = LM("small", client, 64, 0, None)
        state = StageState({EXAMPLES[0]!r}, {{u: outputs[u] for u in call.upstream}}, "")
        outputs[call.stage] = await stages.run(call.stage, "small", lm, state)
    assert stages.stage_lm("small", None).supports_response_schema is False
    import dspy
    dspy.LM("openai/gpt-4o-mini").supports_response_schema  # DSPy's model metadata: the bundled copy
    await client.close()
    await srv.stop()
    print("OUTPUT", outputs["refine"])

asyncio.run(main())
"""


def test_tracing_and_running_a_program_stays_on_loopback():
    proc, attempts = _run(TRACE_AND_RUN)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OUTPUT small-" in proc.stdout
    assert attempts == []


def test_the_guard_sees_dspy_fetching_model_metadata_without_the_setting():
    """The control: plain DSPy, without what aragog_jax.dspy sets, goes to the network."""
    code = """
import dspy
dspy.LM("openai/gpt-4o-mini").supports_response_schema
"""
    env = {k: v for k, v in os.environ.items() if k != "LITELLM_LOCAL_MODEL_COST_MAP"}
    proc = subprocess.run(
        [sys.executable, str(GUARD), code],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        env=env,
    )
    attempts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert any("raw.githubusercontent.com" in a for a in attempts), (attempts, proc.stderr[-2000:])


def test_import_aragog_jax_and_serve_do_not_load_dspy():
    code = (
        "import sys, aragog_jax, aragog_jax.serve, aragog_jax.serving, aragog_jax.label; "
        "print('LOADED', sorted(m for m in ('dspy', 'litellm') if m in sys.modules))"
    )
    proc, attempts = _run(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "LOADED []" in proc.stdout and attempts == []
