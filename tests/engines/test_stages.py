"""Stage functions (``[[stage]] function = ...``): loading, running, and their errors."""

from __future__ import annotations

import asyncio
import textwrap

import pytest

from aragog_jax.engines.stages import StageState, load_stage_functions, render_prompt, run_stage
from aragog_jax.errors import SpecError, StageFunctionError, UpstreamError
from aragog_jax.serving import FakeEngine
from aragog_jax.spec import load_models, load_workflow
from tests.serving._fleetkit import CATALOG, with_fake_client

STAGES_PY = """
async def draft_twice(stage, model, lm, state):
    first = await lm(state.prompt)
    return await lm(f"again [{model}] {first}", max_tokens=3)

async def shout(stage, model, lm, state):
    return (await lm(state.prompt)).upper() + "|" + ",".join(sorted(state.outputs))

async def boom(stage, model, lm, state):
    raise ValueError("no answer for " + state.input)

async def not_text(stage, model, lm, state):
    return 42

def plain(stage, model, lm, state):
    return "sync"
"""

WORKFLOW = """
name = "fn"

[[stage]]
name = "draft"
input_tokens = 10
output_tokens = 8
prompt = "Draft: {input}"
function = "stages.py:draft_twice"

[[stage]]
name = "polish"
upstream = ["draft"]
input_tokens = 10
output_tokens = 8
prompt = "Polish {draft}"
"""


def _workflow(tmp_path, text=WORKFLOW):
    (tmp_path / "models.toml").write_text(CATALOG)
    (tmp_path / "stages.py").write_text(STAGES_PY)
    (tmp_path / "wf.toml").write_text(textwrap.dedent(text))
    return load_workflow(tmp_path / "wf.toml", load_models(tmp_path / "models.toml"))


def test_relative_function_file_resolves_against_the_workflow_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)  # not the workflow's directory
    wf = _workflow(tmp_path)
    assert wf.stage[0].function == f"{(tmp_path / 'stages.py').resolve()}:draft_twice"
    assert wf.stage[1].function == ""
    fns = load_stage_functions(wf)
    assert set(fns) == {0} and fns[0].__name__ == "draft_twice"


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("stages.py:plain", "must be an async function"),
        ("stages.py:missing", "has no function 'missing'"),
        ("nowhere.py:f", "not found"),
        ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
    ],
)
def test_bad_stage_functions_are_spec_errors_naming_the_stage(tmp_path, ref, message):
    wf = _workflow(tmp_path, WORKFLOW.replace("stages.py:draft_twice", ref))
    with pytest.raises(SpecError, match=r"stage\[0\] \(draft\)\.function") as err:
        load_stage_functions(wf)
    assert message in str(err.value)


def test_malformed_function_reference_is_rejected_when_the_spec_loads(tmp_path):
    with pytest.raises(
        SpecError, match=r"stage\[0\]\.function: 'stages.py' is not module:function"
    ):
        _workflow(tmp_path, WORKFLOW.replace("stages.py:draft_twice", "stages.py"))


async def _with_engine(fn, **fake_kw):
    return await with_fake_client(FakeEngine("small", **fake_kw), fn)


def test_function_calls_the_chosen_engine_and_tokens_add_up(tmp_path):
    wf = _workflow(tmp_path)
    fns = load_stage_functions(wf)
    state = StageState("sort a list", {}, render_prompt(wf.stage[0].prompt, "sort a list", {}))

    async def go(fake, client):
        plain = await run_stage(wf.stage[0], None, "small", client, state, seed=7)
        out = await run_stage(wf.stage[0], fns[0], "small", client, state, seed=7)
        return fake, plain, out

    fake, plain, out = asyncio.run(_with_engine(go))
    first = fake.text_for("Draft: sort a list")
    assert plain.text == first and plain.calls == 1
    assert out.calls == 2 and out.text == fake.text_for(f"again [small] {first}")
    assert fake.prompts[-2:] == ["Draft: sort a list", f"again [small] {first}"]
    assert (
        out.prompt_tokens > plain.prompt_tokens and out.completion_tokens > plain.completion_tokens
    )


def test_function_sees_upstream_outputs_by_stage_name(tmp_path):
    wf = _workflow(
        tmp_path,
        WORKFLOW.replace(
            'prompt = "Polish {draft}"', 'prompt = "Polish {draft}"\nfunction = "stages.py:shout"'
        ),
    )
    fns = load_stage_functions(wf)
    state = StageState(
        "x", {"draft": "d1"}, render_prompt(wf.stage[1].prompt, "x", {"draft": "d1"})
    )

    async def go(fake, client):
        return fake, await run_stage(wf.stage[1], fns[1], "small", client, state, seed=1)

    fake, out = asyncio.run(_with_engine(go))
    assert out.text == fake.text_for("Polish d1").upper() + "|draft"


@pytest.mark.parametrize(
    ("name", "message"),
    [("boom", "raised ValueError: no answer for x"), ("not_text", "returned int, expected str")],
)
def test_a_failing_function_names_the_stage_and_the_function(tmp_path, name, message):
    wf = _workflow(tmp_path, WORKFLOW.replace("draft_twice", name))
    fns = load_stage_functions(wf)

    async def go(fake, client):
        return await run_stage(
            wf.stage[0], fns[0], "small", client, StageState("x", {}, "p"), seed=1
        )

    with pytest.raises(StageFunctionError, match=f"stage 'draft': function {name} {message}"):
        asyncio.run(_with_engine(go))


def test_engine_errors_inside_a_function_propagate_for_failover(tmp_path):
    wf = _workflow(tmp_path)
    fns = load_stage_functions(wf)

    async def go(fake, client):
        return await run_stage(
            wf.stage[0], fns[0], "small", client, StageState("x", {}, "p"), seed=1
        )

    with pytest.raises(UpstreamError) as err:
        asyncio.run(_with_engine(go, mode="fail"))
    assert not isinstance(err.value, StageFunctionError)


class _SeedClient:
    """An engine stand-in that records each call's seed and answers after a yield."""

    def __init__(self):
        self.seeds: list[int] = []

    async def chat(self, prompt, *, max_tokens, seed=0, timeout_s=None):
        from aragog_jax.engines.client import ChatResult

        self.seeds.append(seed)
        await asyncio.sleep(0)
        return ChatResult(f"{prompt}@{seed}", 1, 1, "stop", None)


def test_concurrent_lm_calls_get_distinct_reproducible_seeds():
    async def fan_out(stage, model, lm, state):
        a, b, c = await asyncio.gather(lm("a"), lm("b"), lm("c"))
        return a + b + c

    async def go():
        client = _SeedClient()
        out = await run_stage(_stage(), fan_out, "small", client, StageState("x", {}, "p"), seed=10)
        return client.seeds, out

    seeds, out = asyncio.run(go())
    assert seeds == [10, 11, 12] and out.calls == 3
    assert asyncio.run(go()) == (seeds, out)


def test_a_function_raising_cancelled_error_itself_is_a_function_error():
    """Only a cancellation of the stage's own task is a cancellation: a CancelledError the
    function raises on its own (an inner task it awaited was cancelled) fails the stage
    instead of leaving the run waiting for its deadline."""

    async def inner_cancelled(stage, model, lm, state):
        t = asyncio.get_running_loop().create_task(asyncio.sleep(10))
        await asyncio.sleep(0)
        t.cancel()
        return await t

    with pytest.raises(StageFunctionError, match="raised CancelledError"):
        asyncio.run(
            run_stage(
                _stage(), inner_cancelled, "small", _SeedClient(), StageState("x", {}, "p"), seed=1
            )
        )

    async def cancelled_from_outside():
        async def slow(stage, model, lm, state):
            await asyncio.sleep(10)
            return "late"

        task = asyncio.get_running_loop().create_task(
            run_stage(_stage(), slow, "small", _SeedClient(), StageState("x", {}, "p"), seed=1)
        )
        await asyncio.sleep(0)
        task.cancel()
        await task

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(cancelled_from_outside())


def _stage():
    from aragog_jax.spec import StageSpec

    return StageSpec(name="s", input_tokens=1, output_tokens=4, prompt="p")
