"""Engine client against the loopback fake engine: every fault maps to one error."""

from __future__ import annotations

import asyncio

import pytest

from aragog_jax.engines.client import ClientLimits, EngineClient, parse_orca
from aragog_jax.errors import EngineRejected, UpstreamError, UpstreamTimeout
from aragog_jax.serving import (
    FakeEngine,
    LoopbackServer,
)


async def _with_fake(
    fake: FakeEngine, fn, limits: ClientLimits = ClientLimits(request_timeout_s=2.0)
):
    srv = LoopbackServer(fake.app)
    url = await srv.start()
    client = EngineClient("e0", url, fake.served, limits)
    await client.open()
    try:
        return await fn(client)
    finally:
        await client.close()
        await srv.stop()


def test_ok_reply_and_usage():
    fake = FakeEngine("m")
    res = asyncio.run(_with_fake(fake, lambda c: c.chat("hello", max_tokens=7)))
    assert res.text == fake.text_for("hello")
    assert res.completion_tokens == 7
    assert fake.num_completed == 1


def test_stream_reply_is_joined():
    fake = FakeEngine("m")
    res = asyncio.run(_with_fake(fake, lambda c: c.chat("hi there", max_tokens=3, stream=True)))
    assert res.text == fake.text_for("hi there")
    assert res.finish_reason == "length"
    assert res.completion_tokens == 3


def test_on_delta_gets_each_piece_as_it_arrives():
    """Each piece reaches on_delta while the engine is still sending (before its last
    piece), and the pieces join to the returned text."""
    fake = FakeEngine("m", stream_pieces=3, stream_gap_s=0.05)
    seen: list[tuple[str, int]] = []
    res = asyncio.run(
        _with_fake(
            fake,
            lambda c: c.chat(
                "hi there", max_tokens=3, on_delta=lambda t: seen.append((t, fake.num_completed))
            ),
        )
    )
    assert len(seen) == 3 and "".join(t for t, _ in seen) == res.text == fake.text_for("hi there")
    assert (
        [done for _, done in seen[:-1]] == [0, 0]
        and fake.num_completed == 1
        and fake.num_streamed == 1
    )


@pytest.mark.parametrize(
    ("mode", "exc", "needle"),
    [
        ("fail", UpstreamError, "HTTP 503"),
        ("malformed", UpstreamError, "malformed"),
        ("truncated", UpstreamError, "engine e0"),
        ("stream_truncated", UpstreamError, "engine e0"),
        ("stream_error", UpstreamError, "engine e0: error mid-stream: injected failure mid-stream"),
        ("hang", UpstreamTimeout, "no reply within"),
    ],
)
def test_faults_map_to_upstream_errors(mode, exc, needle):
    fake = FakeEngine("m", mode=mode)
    stream = mode.startswith("stream_")
    with pytest.raises(exc, match=needle) as info:
        asyncio.run(
            _with_fake(fake, lambda c: c.chat("x", max_tokens=2, stream=stream, timeout_s=0.3))
        )
    assert not isinstance(info.value, EngineRejected)
    assert info.value.__cause__ is not None or mode in ("fail", "stream_truncated", "stream_error")


@pytest.mark.parametrize("status", [400, 413, 422])
def test_4xx_that_blame_the_request_are_rejected_not_engine_fault(status):
    fake = FakeEngine("m", mode="fail", fail_status=status)
    with pytest.raises(EngineRejected, match=f"HTTP {status}"):
        asyncio.run(_with_fake(fake, lambda c: c.chat("x", max_tokens=2)))


@pytest.mark.parametrize("status", [401, 403, 404, 405, 408, 409, 429])
def test_other_4xx_are_engine_faults(status):
    """A misconfigured engine (wrong key, URL or served model name) or a busy one: not the
    request's fault, so the breaker counts it and the stage fails over."""
    fake = FakeEngine("m", mode="fail", fail_status=status)
    with pytest.raises(UpstreamError, match=f"HTTP {status}") as info:
        asyncio.run(_with_fake(fake, lambda c: c.chat("x", max_tokens=2)))
    assert not isinstance(info.value, EngineRejected)


def test_connection_refused_is_upstream_error():
    async def go():
        client = EngineClient(
            "gone",
            "http://127.0.0.1:9",
            "m",
            ClientLimits(request_timeout_s=1.0, connect_timeout_s=0.5),
        )
        await client.open()
        try:
            await client.chat("x", max_tokens=1)
        finally:
            await client.close()

    with pytest.raises(UpstreamError, match="engine gone") as info:
        asyncio.run(go())
    assert info.value.__cause__ is not None


def test_orca_header_parsed_from_reply():
    fake = FakeEngine("m", orca=True)
    res = asyncio.run(_with_fake(fake, lambda c: c.chat("x", max_tokens=2)))
    assert res.orca is not None and res.orca.kv_usage == 0.25 and res.orca.waiting == 0.0


def test_parse_orca_formats():
    j = parse_orca(
        'JSON {"named_metrics": {"kv_cache_usage_perc": 0.5, "num_requests_waiting": 3.0}}', 1.0
    )
    assert (j.waiting, j.kv_usage, j.at) == (3.0, 0.5, 1.0)
    t = parse_orca(
        "TEXT named_metrics.kv_cache_utilization=0.4, named_metrics.num_requests_waiting=2", 2.0
    )
    assert (t.waiting, t.kv_usage) == (2.0, 0.4)
    assert parse_orca("JSON not-json", 0.0) is None
    assert parse_orca("PROTO abc", 0.0) is None
    assert parse_orca('JSON {"named_metrics": {}}', 0.0) is None


def test_session_default_timeout_applies_without_timeout_argument():
    fake = FakeEngine("m", mode="hang")
    with pytest.raises(UpstreamTimeout, match="no reply within 0.3 s"):
        asyncio.run(
            _with_fake(
                fake, lambda c: c.chat("x", max_tokens=2), ClientLimits(request_timeout_s=0.3)
            )
        )
