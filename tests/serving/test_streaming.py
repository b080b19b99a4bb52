"""Streamed replies against loopback fake engines: the output stage's tokens as the engine
produces them (OpenAI chunks and workflow-run events), the receipt in the last chunk,
failover before the first token and an error chunk after it."""

from __future__ import annotations

import asyncio
import json

import pytest

from ._fleetkit import CHAIN, FAN
from .test_server import _STAGES_PY, _serve, _two

ONE = """
name = "one"

[[stage]]
name = "answer"
input_tokens = 10
output_tokens = 8
prompt = "Answer: {input}"
"""


async def _sse(http, path: str, body: dict, engines) -> list[tuple[object, int]]:
    """Every ``data:`` payload of a streamed reply (JSON, or the raw text of ``[DONE]``),
    each with the number of engine calls open when it arrived."""
    frames = []
    async with http.post(path, json=body) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        async for line in r.content:
            if line.startswith(b"data: "):
                data = line[6:].strip()
                open_calls = sum(fake.in_flight for _, fake in engines.values())
                frames.append(
                    (data.decode() if data == b"[DONE]" else json.loads(data), open_calls)
                )
    return frames


def _chat(workflow: str, text: str = "q") -> dict:
    return {
        "model": f"workflow:{workflow}",
        "messages": [{"role": "user", "content": text}],
        "stream": True,
    }


def _contents(frames) -> list[str]:
    return [
        f["choices"][0]["delta"]["content"]
        for f, _ in frames
        if isinstance(f, dict) and f.get("choices") and f["choices"][0]["delta"].get("content")
    ]


def test_chat_stream_sends_the_output_stage_tokens_as_the_engine_produces_them(tmp_path):
    engines = _two(stream_pieces=4, stream_gap_s=0.05)

    async def fn(s, http):
        return await _sse(http, "/v1/chat/completions", _chat("chain", "reverse a string"), engines)

    frames = asyncio.run(_serve(tmp_path, engines, fn))
    assert frames[0][0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    contents = _contents(frames)
    assert len(contents) == 4
    # The first three pieces reached the client while the engine was still sending.
    assert [
        n
        for f, n in frames
        if isinstance(f, dict) and f.get("choices") and f["choices"][0]["delta"].get("content")
    ][:3] == [1, 1, 1]
    last, _ = frames[-2]
    assert frames[-1][0] == "[DONE]" and last["choices"][0]["finish_reason"] == "stop"
    receipt = last["aragog"]["receipt"]  # the same key as the non-streamed reply
    assert last["aragog"]["id"].startswith("run-") and [
        st["stage"] for st in receipt["stages"]
    ] == ["draft", "polish"]
    draft, polish = receipt["stages"]
    draft_text = engines[draft["engine"]][1].text_for("Draft: reverse a string")
    assert "".join(contents) == engines[polish["engine"]][1].text_for(
        f"Polish {draft_text} for reverse a string"
    )
    assert (
        last["usage"]["completion_tokens"]
        == draft["completion_tokens"] + polish["completion_tokens"]
    )
    # Only the output stage was streamed; the upstream stage ran as a plain call.
    assert sum(fake.num_streamed for _, fake in engines.values()) == 1


def test_run_stream_sends_delta_events_for_the_output_stage(tmp_path):
    engines = _two(stream_pieces=3)

    async def fn(s, http):
        return await _sse(http, "/v1/workflows/fan/runs", {"input": "q", "stream": True}, engines)

    events = [e for e, _ in asyncio.run(_serve(tmp_path, engines, fn))]
    kinds = [e["event"] for e in events]
    assert kinds[:2] == ["stage", "stage"] and kinds[2:] == ["delta"] * 3 + ["stage", "done"]
    deltas = [e for e in events if e["event"] == "delta"]
    assert {e["stage"] for e in deltas} == {"join"} and {e["id"] for e in events} == {
        events[-1]["id"]
    }
    assert "".join(e["text"] for e in deltas) == events[-2]["output"] == events[-1]["output"]


def test_stream_fails_over_when_the_engine_fails_before_the_first_token(tmp_path):
    engines = _two(mode_small="fail")

    async def fn(s, http):
        return [
            await _sse(http, "/v1/chat/completions", _chat("one", f"q{i}"), engines)
            for i in range(3)
        ]

    replies = asyncio.run(_serve(tmp_path, engines, fn, workflows={"one": ONE}))
    failed = []
    for i, frames in enumerate(replies):
        assert frames[-1][0] == "[DONE]", frames
        receipt = frames[-2][0]["aragog"]["receipt"]
        assert receipt["stages"][0]["engine"] == "e-big"
        assert "".join(_contents(frames)) == engines["e-big"][1].text_for(f"Answer: q{i}")
        failed += receipt["stages"][0]["failed_attempts"]
    assert failed and all(a["engine"] == "e-small" for a in failed)


@pytest.mark.parametrize("mode", ["stream_truncated", "stream_error"])
def test_stream_ends_with_an_error_chunk_when_the_engine_fails_after_the_first_token(
    tmp_path, mode
):
    engines = _two(mode, mode, stream_pieces=2)

    async def fn(s, http):
        frames = await _sse(http, "/v1/chat/completions", _chat("chain"), engines)
        return frames, dict(s.executor.counts), s.executor.num_in_flight

    frames, counts, left = asyncio.run(_serve(tmp_path, engines, fn))
    # What the engine sent before failing: both pieces (then no [DONE]), or one (then an error).
    assert len(_contents(frames)) == {"stream_truncated": 2, "stream_error": 1}[mode]
    err = frames[-1][0]["error"]
    assert (
        err["code"] == 502
        and err["type"] == "upstream_error"
        and "cannot fail over" in err["message"]
    )
    assert "[DONE]" not in [f for f, _ in frames]
    assert (
        sum(fake.num_streamed for _, fake in engines.values()) == 1
    )  # no second engine continued it
    assert counts["failed"] == 1 and left == 0


def test_stage_function_as_output_stage_streams_its_result_as_one_chunk(tmp_path):
    (tmp_path / "stages.py").write_text(_STAGES_PY)
    engines = _two(stream_pieces=4)
    chain = CHAIN.replace(
        'prompt = "Polish {draft} for {input}"',
        'prompt = "Polish {draft} for {input}"\nfunction = "stages.py:draft_twice"',
    )

    async def fn(s, http):
        return await _sse(http, "/v1/chat/completions", _chat("chain"), engines)

    frames = asyncio.run(_serve(tmp_path, engines, fn, workflows={"chain": chain, "fan": FAN}))
    receipt = frames[-2][0]["aragog"]["receipt"]
    assert receipt["stages"][1]["engine_calls"] == 2
    polish = engines[receipt["stages"][1]["engine"]][1]
    assert polish.prompts[-1] == "again " + polish.text_for(polish.prompts[-2])
    assert _contents(frames) == [
        polish.text_for(polish.prompts[-1])
    ]  # the function's result, whole
    assert sum(fake.num_streamed for _, fake in engines.values()) == 0


def test_openai_client_sees_the_chunks_the_receipt_and_a_mid_stream_error(tmp_path):
    openai = pytest.importorskip("openai")
    engines = _two(stream_pieces=5)

    async def fn(s, http):
        client = openai.AsyncOpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)
        chunks = [
            ch
            async for ch in await client.chat.completions.create(
                model="workflow:fan", messages=[{"role": "user", "content": "q"}], stream=True
            )
        ]
        for _, fake in engines.values():
            fake.mode = "stream_truncated"
        got = []
        with pytest.raises(openai.APIError, match="cannot fail over") as info:
            async for ch in await client.chat.completions.create(
                model="workflow:fan", messages=[{"role": "user", "content": "q2"}], stream=True
            ):
                got.append(ch)
        await client.close()
        return chunks, got, info.value

    chunks, got, err = asyncio.run(_serve(tmp_path, engines, fn))
    text = [
        ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content
    ]
    assert len(text) == 5
    receipt = chunks[-1].model_extra["aragog"]["receipt"]
    assert (
        chunks[-1].choices[0].finish_reason == "stop"
        and [st["stage"] for st in receipt["stages"]][-1] == "join"
    )
    assert got and not any(ch.choices and ch.choices[0].finish_reason for ch in got)


def test_client_gone_mid_stream_cancels_the_run(tmp_path):
    """The streaming path hands a disconnect on (it swallows no cancellation): the run ends
    cancelled and leaves the meta-queue while its engine is still sending."""
    engines = _two(stream_pieces=8, stream_gap_s=0.1)

    async def fn(s, http):
        async with http.post("/v1/chat/completions", json=_chat("chain")) as r:
            async for line in r.content:
                if b'"content":"' in line and b'"content":""' not in line:
                    break  # the first piece of text: hang up
            r.connection.transport.abort()
        for _ in range(100):
            if s.executor.counts["cancelled"]:
                break
            await asyncio.sleep(0.05)
        return dict(s.executor.counts), s.executor.num_in_flight

    counts, left = asyncio.run(_serve(tmp_path, engines, fn))
    assert counts["cancelled"] == 1 and counts["completed"] == 0 and left == 0
