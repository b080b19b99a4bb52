"""An exported DSPy program served like any workflow, on loopback fake engines."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import dspy

from aragog_jax.dspy import ProgramStages
from aragog_jax.engines.client import EngineClient
from aragog_jax.engines.stages import StageState, load_stage_functions, run_stage
from aragog_jax.errors import SpecError, UpstreamError
from aragog_jax.serving import LoopbackServer, ServeOptions, Server, load_runtime
from aragog_jax.spec import load_models, load_workflow

from ..serving._fleetkit import CATALOG, with_fake_client, write_fleet
from ._dspykit import EXAMPLES, DSPyFakeEngine, export_example


def _workflow(tmp_path):
    toml, _ = export_example(tmp_path)
    (tmp_path / "models.toml").write_text(CATALOG)
    return load_workflow(toml, load_models(tmp_path / "models.toml"))


async def _with_engine(fn, **fake_kw):
    return await with_fake_client(DSPyFakeEngine("small", **fake_kw), fn)


def test_a_stage_sends_dspys_own_messages_and_parses_the_reply(tmp_path):
    wf = _workflow(tmp_path)
    fns = load_stage_functions(wf)
    program = fns[0].__globals__["STAGES"].program

    async def go(fake, client):
        gen = await run_stage(
            wf.stage[0], fns[0], "small", client, StageState(EXAMPLES[0], {}, ""), seed=3
        )
        crit = await run_stage(
            wf.stage[1],
            fns[1],
            "small",
            client,
            StageState(EXAMPLES[0], {"generate": gen.text}, ""),
            seed=4,
        )
        return fake, gen, crit

    fake, gen, crit = asyncio.run(_with_engine(go))
    # The engine got exactly the messages DSPy's ChatAdapter renders for the predictor.
    expected = dspy.ChatAdapter().format(program.generate.signature, [], {"question": EXAMPLES[0]})
    assert fake.prompts[0] == "\n".join(m["content"] for m in expected)
    assert (
        gen.text == fake.text_for(fake.prompts[0]).split("\n")[1]
        and gen.calls == 1
        and gen.prompt_tokens > 0
    )
    # A typed multi-field output travels as JSON and the next stage gets the draft unchanged.
    out = json.loads(crit.text)
    assert (
        set(out) == {"issues", "confident"}
        and isinstance(out["issues"], list)
        and isinstance(out["confident"], bool)
    )
    assert f"[[ ## draft ## ]]\n{gen.text}\n" in fake.prompts[1]


def test_an_engine_error_inside_dspy_propagates_for_failover(tmp_path):
    wf = _workflow(tmp_path)
    fns = load_stage_functions(wf)

    async def go(fake, client):
        return await run_stage(
            wf.stage[0], fns[0], "small", client, StageState("q", {}, ""), seed=1
        )

    try:
        asyncio.run(_with_engine(go, mode="fail"))
    except UpstreamError as exc:
        assert "HTTP 503" in str(exc) and type(exc).__name__ == "UpstreamError"
    else:
        raise AssertionError("expected the engine's UpstreamError")


def test_a_changed_program_is_refused_at_start_up(tmp_path):
    _, stages = export_example(tmp_path)
    text = stages.read_text()
    stages.write_text(text.replace("'fingerprint': '", "'fingerprint': '0"))
    try:
        load_stage_functions(load_workflow(tmp_path / "self_refine_dspy.toml"))
    except SpecError as exc:
        assert "changed since it was exported" in str(
            exc
        ) and "re-run python -m aragog_jax.dspy export" in str(exc)
    else:
        raise AssertionError("expected SpecError")
    assert ProgramStages  # the public name the generated module imports


async def _serve(tmp_path, fn, *, modes=("ok", "ok")):
    toml, _ = export_example(tmp_path)
    fakes = {
        "e-small": DSPyFakeEngine("small", mode=modes[0]),
        "e-big": DSPyFakeEngine("big", mode=modes[1]),
    }
    servers, urls = [], []
    for name, fake in fakes.items():
        srv = LoopbackServer(fake.app)
        servers.append(srv)
        urls.append((name, fake.served, await srv.start()))
    path = write_fleet(
        tmp_path,
        urls,
        server={"port": 0, "metrics_poll_s": 0.05, "engine_timeout_s": 5.0},
        workflows={"self_refine_dspy": toml.read_text()},
    )
    s = Server(load_runtime(path), ServeOptions(drain_s=2.0, warm_up=False))
    url = await s.start()
    try:
        async with aiohttp.ClientSession(base_url=url) as http:
            return fakes, await fn(http)
    finally:
        await s.stop(drain_s=0.5)
        for srv in servers:
            await srv.stop()


def test_served_run_and_openai_front_with_receipts(tmp_path):
    async def fn(http):
        async with http.post(
            "/v1/workflows/self_refine_dspy/runs", json={"input": EXAMPLES[1]}
        ) as r:
            run = (r.status, await r.json())
        async with http.post(
            "/v1/chat/completions",
            json={
                "model": "workflow:self_refine_dspy",
                "messages": [{"role": "user", "content": EXAMPLES[0]}],
            },
        ) as r:
            chat = (r.status, await r.json())
        return run, chat

    fakes, ((status, body), (cstatus, chat)) = asyncio.run(_serve(tmp_path, fn))
    assert status == 200, body
    rec = body["receipt"]
    (tmp_path / "receipt.json").write_text(json.dumps(body, indent=2))
    assert [st["stage"] for st in rec["stages"]] == ["generate", "critique", "refine"]
    assert rec["num_configs"] == 8 and all(st["engine_calls"] == 1 for st in rec["stages"])
    # The output is the refine predictor's answer, parsed by DSPy from the engine it ran on.
    refine = rec["stages"][2]
    fake = fakes[refine["engine"]]
    assert body["output"].startswith(f"{fake.served}-") and body["output"].endswith("-answer")
    assert sum(f.num_completed for f in fakes.values()) == 3 + 3
    assert cstatus == 200 and chat["choices"][0]["message"]["content"].endswith("-answer")
    assert [st["stage"] for st in chat["aragog"]["receipt"]["stages"]] == [
        "generate",
        "critique",
        "refine",
    ]


def test_failing_engine_fails_over_inside_a_dspy_stage(tmp_path):
    async def fn(http):
        async with http.post(
            "/v1/workflows/self_refine_dspy/runs", json={"input": EXAMPLES[0]}
        ) as r:
            return r.status, await r.json()

    fakes, (status, body) = asyncio.run(_serve(tmp_path, fn, modes=("fail", "ok")))
    assert status == 200, body
    rec = body["receipt"]
    assert rec["configuration"] == {"generate": "big", "critique": "big", "refine": "big"}
    assert body["output"].startswith("big-")
    # The 503 reached the executor as an engine error (not a stage-function error): it
    # was recorded and the stage rescheduled, with one call on the failing engine, not
    # DSPy's adapter fallback retrying it.
    failed = [a for st in rec["stages"] for a in st["failed_attempts"]]
    assert (
        failed and all(a["engine"] == "e-small" for a in failed) and rec["failovers"] == len(failed)
    )
    assert fakes["e-small"].num_requests == len(failed)


def test_lm_takes_chat_messages_and_sends_them_unchanged():
    """The runner's ``lm`` accepts DSPy's messages (system + user) as well as one prompt string."""
    from aragog_jax.engines.client import ChatResult
    from aragog_jax.engines.stages import LM
    from aragog_jax.errors import StageFunctionError

    class Client:
        def __init__(self):
            self.prompts = []

        async def chat(self, prompt, *, max_tokens, seed=0, timeout_s=None):
            self.prompts.append(prompt)
            return ChatResult("ok", 3, 1, "stop", None)

    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    client = Client()
    lm = LM("small", client, 8, 0, None)
    assert asyncio.run(lm(messages)) == "ok" and client.prompts == [messages]
    body = EngineClient("e", "http://127.0.0.1:1", "served").chat_body(
        messages, max_tokens=4, seed=1
    )
    assert body["messages"] == messages
    assert EngineClient("e", "http://127.0.0.1:1", "served").chat_body("hi", max_tokens=4, seed=1)[
        "messages"
    ] == [{"role": "user", "content": "hi"}]
    for bad in ([], [{"role": "user"}], [{"content": "x"}], 3):
        try:
            asyncio.run(lm(bad))
        except StageFunctionError as exc:
            assert "list of {'role', 'content'} messages" in str(exc)
        else:
            raise AssertionError(f"{bad!r} accepted")
