"""The front door's fast lane (aragog_jax.serving._lane): hot requests answered without
aiohttp, everything else handed over on the same connection, and answers that match
aiohttp's for the same requests.

Which side answered shows in the reply: aiohttp adds its ``Server`` header to every
response, the lane adds none."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from aragog_jax.serving import ServeOptions
from aragog_jax.serving._lane import parse_head, response_bytes

from ._fleetkit import fake_pair, serve_fakes

RUN = "/v1/workflows/chain/runs"
CHAT = "/v1/chat/completions"
AIOHTTP = b"\r\nserver: "  # (lower-cased reply head)


def _req(method: str, path: str, body=None, *, headers: dict | None = None) -> bytes:
    raw = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    lines = [f"{method} {path} HTTP/1.1", "Host: test"]
    if method == "POST":
        lines += ["Content-Type: application/json", f"Content-Length: {len(raw)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + raw


def _chat(text: str) -> dict:
    return {"model": "workflow:chain", "messages": [{"role": "user", "content": text}]}


async def _read_reply(reader: asyncio.StreamReader) -> tuple[int, bytes, dict]:
    """One reply off a keep-alive connection: (status, lower-cased head, JSON body)."""
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).lower()
    length = int(head.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
    body = await asyncio.wait_for(reader.readexactly(length), 10)
    return int(head.split(b" ", 2)[1]), head, json.loads(body)


async def _open(url: str):
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


def _output(doc: dict) -> str:
    return doc["output"] if "output" in doc else doc["choices"][0]["message"]["content"]


def test_hot_requests_are_the_lanes_until_another_request_hands_the_connection_to_aiohttp(
    tmp_path,
):
    async def fn(s, http):
        reader, writer = await _open(s.url)
        replies = []
        for raw in (
            _req("POST", RUN, {"input": "a"}),
            _req("POST", CHAT, _chat("b")),
            _req("GET", "/health"),
            _req("POST", RUN, {"input": "c"}),
        ):
            writer.write(raw)
            replies.append(await _read_reply(reader))
        writer.close()
        return replies

    replies = asyncio.run(serve_fakes(tmp_path, fake_pair(), fn))
    assert [status for status, _, _ in replies] == [200, 200, 200, 200]
    assert [AIOHTTP in head for _, head, _ in replies] == [False, False, True, True]
    lane_run, lane_chat, health, aiohttp_run = (doc for _, _, doc in replies)
    assert lane_run["workflow"] == "chain" and lane_run["output"]
    assert lane_chat["object"] == "chat.completion" and lane_chat["usage"]["total_tokens"] > 0
    assert health == {"status": "ok"} and aiohttp_run["output"]
    assert b"content-type: application/json" in replies[0][1] and b"\r\ndate: " in replies[0][1]


def test_pipelined_requests_are_answered_in_order_across_the_hand_over(tmp_path):
    reqs = [
        _req("POST", RUN, {"input": "first"}),
        _req("POST", CHAT, _chat("second")),
        _req("GET", "/health"),
        _req("POST", RUN, {"input": "third"}),
    ]

    async def fn(s, http):
        alone = []
        for raw in reqs:  # each on its own connection: the expected answers
            reader, writer = await _open(s.url)
            writer.write(raw)
            alone.append(await _read_reply(reader))
            writer.close()
        reader, writer = await _open(s.url)
        writer.write(b"".join(reqs))  # one write: all four in the buffer at once
        piped = [await _read_reply(reader) for _ in reqs]
        writer.close()
        return alone, piped

    alone, piped = asyncio.run(serve_fakes(tmp_path, fake_pair(), fn))
    assert [p[0] for p in piped] == [200] * 4
    for (_, _, want), (_, _, got) in zip(alone, piped, strict=True):
        if "status" in want:
            assert got == want
        else:
            assert _output(got) == _output(want)
    assert [AIOHTTP in head for _, head, _ in piped] == [False, False, True, True]


def test_a_body_that_comes_after_its_head_is_read_by_aiohttp(tmp_path):
    async def fn(s, http):
        reader, writer = await _open(s.url)
        raw = _req("POST", RUN, {"input": "late body"})
        cut = raw.index(b"\r\n\r\n") + 4
        writer.write(raw[:cut])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(raw[cut:])
        reply = await _read_reply(reader)
        writer.close()
        return reply

    status, head, doc = asyncio.run(serve_fakes(tmp_path, fake_pair(), fn))
    assert status == 200 and doc["output"] and AIOHTTP in head


def test_connection_close_is_honoured_and_an_idle_lane_connection_times_out(tmp_path):
    async def fn(s, http):
        reader, writer = await _open(s.url)
        writer.write(_req("POST", RUN, {"input": "x"}, headers={"Connection": "close"}))
        closed = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        reader, writer = await _open(s.url)
        writer.write(_req("POST", RUN, {"input": "x"}))
        first = await _read_reply(reader)
        t0 = time.monotonic()
        rest = await asyncio.wait_for(reader.read(), 5)  # EOF when the server closes it
        took = time.monotonic() - t0
        writer.close()
        return closed, first, rest, took, s.site.num_connections

    closed, first, rest, took, left = asyncio.run(
        serve_fakes(tmp_path, fake_pair(), fn, server={"keepalive_timeout_s": 0.4})
    )
    head = closed.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 200") and b"connection: close" in head
    assert AIOHTTP not in head
    assert first[0] == 200 and AIOHTTP not in first[1]
    assert rest == b"" and 0.3 < took < 3.0
    assert left == 0


def test_keys_in_the_lane_a_wrong_one_is_aiohttps_401(tmp_path):
    async def fn(s, http):
        out = []
        for headers in ({"Authorization": "Bearer k1"}, {"Authorization": "Bearer nope"}, {}):
            reader, writer = await _open(s.url)
            writer.write(_req("POST", RUN, {"input": "x"}, headers=headers))
            out.append(await _read_reply(reader))
            writer.close()
        return out

    ok, wrong, missing = asyncio.run(
        serve_fakes(tmp_path, fake_pair(), fn, server={"api_keys": ["k1"]})
    )
    assert ok[0] == 200 and AIOHTTP not in ok[1]
    for status, head, doc in (wrong, missing):
        assert status == 401 and AIOHTTP in head and doc["error"]["type"] == "authentication_error"
        assert "k1" not in json.dumps(doc)


#: Requests whose answers must not depend on which side of the front door takes them.
_ALIKE = {
    "run": (RUN, {"input": "same"}),
    "chat": (CHAT, _chat("same")),
    "schema": (RUN, {"input": 3}),
    "unknown field": (RUN, {"input": "x", "nope": 1}),
    "not json": (RUN, b"{not json"),
    "unknown workflow": ("/v1/workflows/nope/runs", {"input": "x"}),
    "bad model": (CHAT, {"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}),
    "no user message": (
        CHAT,
        {"model": "workflow:chain", "messages": [{"role": "system", "content": "x"}]},
    ),
    "whitespace input": (RUN, {"input": "  \n"}),
    "deadline": (RUN, {"input": "x", "deadline_s": -1}),
    "unknown route": ("/v1/nope", {"input": "x"}),
}


def _comparable(doc: dict) -> dict:
    """An answer without what differs between any two runs (ids, times, timings)."""
    if "error" in doc:
        return doc
    if "output" in doc:
        return {"workflow": doc["workflow"], "output": doc["output"]}
    return {
        "object": doc["object"],
        "model": doc["model"],
        "choices": doc["choices"],
        "usage": doc["usage"],
        "aragog": sorted(doc["aragog"]),
    }


@pytest.mark.parametrize("lane", [True, False], ids=["lane", "aiohttp"])
def test_the_lane_answers_as_aiohttp_does(tmp_path, lane):
    async def fn(s, http):
        out = {}
        for name, (path, body) in _ALIKE.items():
            reader, writer = await _open(s.url)
            writer.write(_req("POST", path, body))
            status, head, doc = await _read_reply(reader)
            writer.close()
            out[name] = (status, _comparable(doc), AIOHTTP in head)
        return out

    def answers(on: bool, sub: str):
        (tmp_path / sub).mkdir()
        opts = ServeOptions(drain_s=2.0, warm_up=False, fast_lane=on)
        return asyncio.run(serve_fakes(tmp_path / sub, fake_pair(), fn, options=opts))

    got = answers(lane, "a")
    want = answers(False, "b")  # aiohttp takes every request
    assert {k: v[:2] for k, v in got.items()} == {k: v[:2] for k, v in want.items()}
    assert got["run"][0] == 200 and got["schema"][0] == 400 and got["unknown workflow"][0] == 404
    by_lane = {k for k, v in got.items() if not v[2]}
    if lane:  # every valid-route POST, error or not, is the lane's; other routes are aiohttp's
        assert by_lane == set(_ALIKE) - {"unknown route"}
    else:
        assert by_lane == set()


def test_shutdown_closes_an_idle_lane_connection(tmp_path):
    async def fn(s, http):
        reader, writer = await _open(s.url)
        writer.write(_req("POST", RUN, {"input": "x"}))
        first = await _read_reply(reader)
        await s.stop(drain_s=0.5)
        rest = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return first, rest

    first, rest = asyncio.run(serve_fakes(tmp_path, fake_pair(), fn))
    assert first[0] == 200 and AIOHTTP not in first[1] and rest == b""


# -- the head parser --------------------------------------------------------------------------


def _head(lines: list[str]) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


BASE = ["POST /v1/chat/completions HTTP/1.1", "Host: x", "Content-Length: 12"]


def test_parse_head_takes_a_plain_post():
    assert parse_head(_head(BASE)) == ("/v1/chat/completions", 12, None, True)
    assert parse_head(_head([*BASE, "Authorization: Bearer k", "Connection: Close"])) == (
        "/v1/chat/completions",
        12,
        b"Bearer k",
        False,
    )


@pytest.mark.parametrize(
    "lines",
    [
        ["GET /v1/chat/completions HTTP/1.1", "Host: x", "Content-Length: 12"],
        ["POST /v1/chat/completions HTTP/1.0", "Host: x", "Content-Length: 12"],
        ["POST /v1/chat/completions?x=1 HTTP/1.1", "Host: x", "Content-Length: 12"],
        ["POST /v1/workflows/a%2Fb/runs HTTP/1.1", "Host: x", "Content-Length: 12"],
        ["POST /v1/chat/completions HTTP/1.1", "Host: x"],
        [*BASE, "Content-Length: 12"],
        [*BASE, "Transfer-Encoding: chunked"],
        [*BASE, "Expect: 100-continue"],
        [*BASE, "Upgrade: websocket", "Connection: upgrade"],
        [*BASE, "Authorization: Bearer a", "Authorization: Bearer b"],
        ["POST /v1/chat/completions HTTP/1.1", "Host: x", "Content-Length: -1"],
        ["POST /v1/chat/completions HTTP/1.1", "Bad Header", "Content-Length: 1"],
    ],
    ids=[
        "get",
        "http10",
        "query",
        "percent",
        "no length",
        "two lengths",
        "chunked",
        "expect",
        "upgrade",
        "two keys",
        "negative",
        "malformed",
    ],
)
def test_parse_head_leaves_the_rest_to_aiohttp(lines):
    assert parse_head(_head(lines)) is None


def test_response_bytes_are_one_complete_http_reply():
    raw = response_bytes(429, b"Retry-After: 1\r\n", b'{"a": 1}', close=True)
    head, body = raw.split(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
    assert b"\r\nContent-Length: 8\r\n" in head and b"\r\nRetry-After: 1\r\n" in head
    assert head.endswith(b"Connection: close") and body == b'{"a": 1}'


def test_a_long_line_in_a_complete_head_gets_aiohttps_400_even_with_a_good_key(tmp_path):
    async def fn(s, http):
        reader, writer = await _open(s.url)
        headers = {"Authorization": "Bearer k1", "X-Long": "a" * 9000}
        writer.write(_req("POST", RUN, {"input": "x"}, headers=headers))
        reply = await _read_reply(reader)
        writer.close()
        return reply

    status, head, doc = asyncio.run(
        serve_fakes(tmp_path, fake_pair(), fn, server={"api_keys": ["k1"]})
    )
    assert status == 400 and "over 8190 bytes" in doc["error"]["message"] and AIOHTTP in head


def test_a_bug_in_the_lane_handler_is_a_json_500_and_the_server_serves_on(
    tmp_path, monkeypatch, caplog
):
    from aragog_jax.serving import _api

    real = _api.Api.fast
    calls = []

    def broken_once(self, path, raw):
        calls.append(path)
        if len(calls) == 1:
            raise RuntimeError("bug in the handler")
        return real(self, path, raw)

    monkeypatch.setattr(_api.Api, "fast", broken_once)

    async def fn(s, http):
        out = []
        for _ in range(2):
            reader, writer = await _open(s.url)
            writer.write(_req("POST", RUN, {"input": "x"}))
            out.append(await _read_reply(reader))
            writer.close()
        return out

    (status, _, doc), (status2, _, doc2) = asyncio.run(serve_fakes(tmp_path, fake_pair(), fn))
    assert status == 500 and doc["error"]["type"] == "internal_error"
    assert "bug in the handler" not in json.dumps(doc)
    assert status2 == 200 and doc2["output"]
    assert any("unhandled error answering a request" in r.getMessage() for r in caplog.records)


def test_a_client_gone_before_the_answer_cancels_its_run_in_the_lane(tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO)

    async def fn(s, http):
        reader, writer = await _open(s.url)
        writer.write(_req("POST", RUN, {"input": "x"}))
        await writer.drain()
        for _ in range(200):  # until its stage is on an engine
            if s.executor.num_in_flight and any(st.in_flight for st in s.executor.engines.values()):
                break
            await asyncio.sleep(0.01)
        writer.close()
        for _ in range(300):
            if s.executor.num_in_flight == 0:
                break
            await asyncio.sleep(0.01)
        return s.executor.num_in_flight, dict(s.executor.counts)

    in_flight, counts = asyncio.run(
        serve_fakes(tmp_path, fake_pair("slow", "slow", slow_s=30.0), fn)
    )
    assert in_flight == 0 and counts.get("cancelled") == 1
    assert any("client disconnected" in r.getMessage() for r in caplog.records)
