"""The front door against hostile but legitimate clients, on loopback only: disconnects
mid-request and mid-stream, slowloris heads, stalled bodies, idle and surplus
connections, oversize and non-UTF-8 headers, aiohttp's own errors, and engines that
answer 4xx. Every wait is bounded."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time

import pytest

from aragog_jax.errors import SpecError
from aragog_jax.serving import FakeEngine, ServeOptions, load_runtime
from aragog_jax.serving import _server as server_module

from ._fleetkit import fake_pair, post_json, serve_fakes, write_fleet

RUN = "/v1/workflows/chain/runs"
CHAT = "/v1/chat/completions"


# -- raw HTTP on loopback -----------------------------------------------------------------


def _request(
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    close: bool = True,
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test"]
    if body or method == "POST":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _open(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def _exchange(url: str, raw: bytes, timeout_s: float = 5.0) -> tuple[int, dict, bytes]:
    """Send raw bytes, read until the server closes: (status, JSON body or {}, raw reply)."""
    reader, writer = await _open(url)
    try:
        writer.write(raw)
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), timeout_s)
    finally:
        writer.close()
    return _parse(reply)


def _parse(reply: bytes) -> tuple[int, dict, bytes]:
    if not reply:
        return 0, {}, reply
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    try:
        doc = json.loads(body)
    except ValueError:
        doc = {}
    return status, doc, reply


async def _until(cond, timeout_s: float = 5.0, step_s: float = 0.01) -> float:
    """Wait until ``cond()`` holds; returns the seconds it took (fails past ``timeout_s``)."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(step_s)
    return time.monotonic() - t0


async def _metrics(http) -> str:
    async with http.get("/metrics") as r:
        return await r.text()


def _errors_logged(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def _is_error_shape(doc: dict, status: int) -> bool:
    err = doc.get("error", {})
    return (
        set(err) == {"message", "type", "code", "field"}
        and err["code"] == status
        and isinstance(err["message"], str)
    )


def _busy_pair():
    """Engines that take 30 s per call but stay healthy (mode "hang" also fails /health,
    so the monitor would fail the runs before the client could hang up)."""
    return fake_pair("slow", "slow", slow_s=30.0)


# -- 1. disconnects -------------------------------------------------------------------------


_DISCONNECTS = {
    "run": (RUN, {"input": "x"}),
    "run_stream": (RUN, {"input": "x", "stream": True}),
    "chat": (CHAT, {"model": "workflow:chain", "messages": [{"role": "user", "content": "x"}]}),
    "chat_stream": (
        CHAT,
        {"model": "workflow:chain", "messages": [{"role": "user", "content": "x"}], "stream": True},
    ),
}


@pytest.mark.parametrize("kind", list(_DISCONNECTS))
def test_disconnect_mid_request_cancels_the_run_and_frees_its_slot(tmp_path, caplog, kind):
    """Two clients fill a two-slot meta-queue with runs whose engines hang, and hang up:
    the next client is admitted at once (not 429); all three runs end cancelled (metric
    and counts), their engine calls aborted at the engine, gauges back to 0, one log line
    each, no ERROR."""
    caplog.set_level(logging.INFO, logger="aragog_jax.serving")
    engines = _busy_pair()
    path, body = _DISCONNECTS[kind]
    raw = _request("POST", path, json.dumps(body).encode())

    async def fn(s, http):
        ex = s.executor

        def engine_calls() -> int:
            return sum(st.in_flight for st in ex.engines.values())

        conns = [await _open(s.url) for _ in range(2)]
        for _, w in conns:
            w.write(raw)
            await w.drain()
        await _until(lambda: engine_calls() == 2)
        for _, w in conns:
            w.close()
        reader, writer = await _open(s.url)  # at once: the slots must already be free
        writer.write(raw)
        await writer.drain()
        await _until(lambda: engine_calls() == 1 and ex.num_in_flight == 1)
        try:
            first = await asyncio.wait_for(reader.read(12), 0.05)
        except TimeoutError:
            first = b""
        writer.close()
        assert first in (
            b"",
            b"HTTP/1.1 200",
        )  # no 429: it waits for its run (streams: headers sent)
        await _until(
            lambda: ex.num_in_flight == 0 and sum(f.num_cancelled for _, f in engines.values()) == 3
        )
        await _until(lambda: sum(f.in_flight for _, f in engines.values()) == 0)
        return dict(ex.counts), [st.in_flight for st in ex.engines.values()], await _metrics(http)

    counts, engine_in_flight, metrics = asyncio.run(
        serve_fakes(tmp_path, engines, fn, server={"max_queue": 2, "engine_timeout_s": 60.0})
    )
    assert counts == {"completed": 0, "failed": 0, "expired": 0, "cancelled": 3}
    assert 'aragog_requests_total{status="cancelled",workflow="chain"} 3.0' in metrics
    assert "aragog_requests_in_flight 0.0" in metrics
    assert engine_in_flight == [0, 0]
    assert _dispatches(metrics, "cancelled") == 3 and _dispatches(metrics, "ok") == 0
    assert (
        sum(f.num_cancelled for _, f in engines.values()) == 3
    )  # the engines saw the calls aborted
    assert (
        len([r for r in caplog.records if "cancelled: client disconnected" in r.getMessage()]) == 3
    )
    assert not _errors_logged(caplog)


def _dispatches(metrics: str, outcome: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("aragog_stage_dispatches_total{") and f'outcome="{outcome}"' in line
    )


def test_disconnect_mid_stream_cancels_without_an_error_traceback(tmp_path, caplog):
    """A client reading a run's stage events hangs up after the first: the run is
    cancelled while its second stage runs, logged once, no ERROR or traceback."""
    caplog.set_level(logging.INFO)
    engines = fake_pair(delay_s=0.3)

    async def fn(s, http):
        reader, writer = await _open(s.url)
        writer.write(_request("POST", RUN, json.dumps({"input": "x", "stream": True}).encode()))
        await writer.drain()
        got = b""
        while b"event: stage" not in got:
            got += await asyncio.wait_for(reader.read(4096), 5)
        writer.close()
        await _until(lambda: s.executor.num_in_flight == 0)
        await asyncio.sleep(0.4)  # the aborted second stage would have answered by now
        return dict(s.executor.counts), await _metrics(http)

    counts, metrics = asyncio.run(serve_fakes(tmp_path, engines, fn))
    assert counts["cancelled"] == 1 and counts["completed"] == 0
    assert _dispatches(metrics, "cancelled") == 1 and "aragog_requests_in_flight 0.0" in metrics
    assert sum(f.num_cancelled for _, f in engines.values()) == 1
    assert (
        len([r for r in caplog.records if "cancelled: client disconnected" in r.getMessage()]) == 1
    )
    assert not _errors_logged(caplog)


def test_a_run_cancelled_before_its_stage_tasks_start_gives_their_engine_slots_back(tmp_path):
    """A disconnect handled in the loop turn after the round that dispatched the run's
    stages (their tasks created, not yet started: a cancelled task then never runs its own
    cleanup) must still return the engine slots, or mass disconnects wedge the server."""

    async def fn(s, http):
        ex = s.executor
        run = ex.admit("fan", "x")
        await asyncio.sleep(0)  # the round that routes the run and dispatches its two ready stages
        dispatched = sum(st.num_dispatched for st in ex.engines.values())
        ex.cancel(run, "client disconnected")
        await asyncio.sleep(0.05)
        status, _, _ = await post_json(http, RUN, {"input": "next"})  # the engines serve again
        return (
            dispatched,
            [st.in_flight for st in ex.engines.values()],
            await _metrics(http),
            status,
        )

    dispatched, in_flight, metrics, status = asyncio.run(
        serve_fakes(tmp_path, fake_pair(delay_s=0.05), fn)
    )
    assert dispatched == 2
    assert in_flight == [0, 0]
    assert _dispatches(metrics, "cancelled") == 2
    assert status == 200


def test_a_handler_failing_after_admission_cancels_its_run(tmp_path, caplog):
    """A bug between admission and the answer (500) does not leave the run holding its
    slot and its engines until the deadline."""
    caplog.set_level(logging.INFO)

    async def fn(s, http):
        async def broken_wait(run):
            raise RuntimeError("bug after admission")

        s.executor.wait = broken_wait
        status, doc, _ = await post_json(http, RUN, {"input": "x"})
        await _until(lambda: s.executor.num_in_flight == 0, 2.0)
        return status, doc, dict(s.executor.counts)

    status, doc, counts = asyncio.run(serve_fakes(tmp_path, _busy_pair(), fn))
    assert status == 500 and doc["error"]["type"] == "internal_error"
    assert counts["cancelled"] == 1
    assert any("request handler failed: RuntimeError" in r.getMessage() for r in caplog.records)


# -- 2, 3, 4. keys ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", " , "])
def test_api_keys_env_without_keys_refuses_to_start(tmp_path, monkeypatch, value):
    if value is None:
        monkeypatch.delenv("ARAGOG_TEST_KEYS", raising=False)
    else:
        monkeypatch.setenv("ARAGOG_TEST_KEYS", value)
    path = write_fleet(
        tmp_path,
        [("e", "small", "http://127.0.0.1:9")],
        server={"api_keys_env": "ARAGOG_TEST_KEYS"},
    )
    with pytest.raises(
        SpecError,
        match=r"server\.api_keys_env: environment variable ARAGOG_TEST_KEYS (is not set|holds no key)",
    ):
        load_runtime(path)


def test_api_keys_env_empty_but_file_keys_serve_with_those(tmp_path, monkeypatch):
    monkeypatch.setenv("ARAGOG_TEST_KEYS", "")
    path = write_fleet(
        tmp_path,
        [("e", "small", "http://127.0.0.1:9")],
        server={"api_keys": ["k1"], "api_keys_env": "ARAGOG_TEST_KEYS"},
    )
    assert load_runtime(path).api_keys == frozenset({"k1"})


def test_non_utf8_authorization_is_401_without_a_traceback(tmp_path, caplog):
    caplog.set_level(logging.INFO)

    async def fn(s, http):
        raw = _request("POST", RUN, b'{"input": "x"}').replace(
            b"Host: test", b"Host: test\r\nAuthorization: Bearer \xff\xfe\x80key"
        )
        return await _exchange(s.url, raw)

    status, doc, _ = asyncio.run(
        serve_fakes(tmp_path, fake_pair(), fn, server={"api_keys": ["good-key"]})
    )
    assert (
        status == 401
        and _is_error_shape(doc, 401)
        and doc["error"]["type"] == "authentication_error"
    )
    assert not _errors_logged(caplog)


@pytest.mark.parametrize("where", ["header", "url"])
def test_a_line_over_the_limit_is_json_and_never_echoed_or_logged(tmp_path, caplog, where):
    caplog.set_level(logging.DEBUG)
    secret = "sk-SECRET-0123456789"

    async def fn(s, http):
        if where == "header":
            raw = _request(
                "GET", "/v1/workflows", headers={"Authorization": f"Bearer {secret}" + "k" * 9000}
            )
        else:
            raw = _request("GET", f"/v1/workflows/{secret}" + "a" * 9000)
        return await _exchange(s.url, raw), await _metrics_with_key(s)

    (status, doc, reply), metrics = asyncio.run(
        serve_fakes(tmp_path, fake_pair(), fn, server={"api_keys": ["good-key"]})
    )
    assert status == 400 and _is_error_shape(doc, 400), reply[:300]
    assert "over 8190 bytes" in doc["error"]["message"]
    assert secret.encode() not in reply
    assert not any(
        secret in r.getMessage() or (r.exc_info and secret in str(r.exc_info[1]))
        for r in caplog.records
    )
    assert not _errors_logged(caplog)
    assert (
        'aragog_requests_rejected_total{reason="invalid_request_error",status="400"} 1.0' in metrics
    )


async def _metrics_with_key(s) -> str:
    import aiohttp

    async with (
        aiohttp.ClientSession() as http,
        http.get(s.url + "/metrics", headers={"Authorization": "Bearer good-key"}) as r,
    ):
        return await r.text()


# -- 6. timeouts and the connection bound -------------------------------------------------------


def test_slowloris_head_is_cut_at_the_header_timeout(tmp_path):
    async def fn(s, http):
        reader, writer = await _open(s.url)
        writer.write(b"POST /v1/workflows/chain/runs HTTP/1.1\r\nHost: test\r\n")
        t0 = time.monotonic()
        reply = b""
        for i in range(60):  # one header line every 0.05 s for up to 3 s
            try:
                writer.write(f"X-Slow-{i}: y\r\n".encode())
                await writer.drain()
                chunk = await asyncio.wait_for(reader.read(4096), 0.05)
            except TimeoutError:
                continue
            except ConnectionError:
                break
            reply += chunk
            if not chunk:  # the server closed the connection
                break
        took = time.monotonic() - t0
        writer.close()
        # A connection that never sends a byte is closed too, silently.
        reader2, writer2 = await _open(s.url)
        t1 = time.monotonic()
        idle_reply = await asyncio.wait_for(reader2.read(), 3)
        idle_took = time.monotonic() - t1
        writer2.close()
        return _parse(reply), took, idle_reply, idle_took, await _metrics(http)

    (status, doc, _), took, idle_reply, idle_took, metrics = asyncio.run(
        serve_fakes(tmp_path, fake_pair(), fn, server={"header_timeout_s": 0.4})
    )
    assert status == 408 and _is_error_shape(doc, 408) and doc["error"]["type"] == "request_timeout"
    assert 0.3 < took < 2.0
    assert idle_reply == b"" and 0.3 < idle_took < 2.0
    assert 'aragog_requests_rejected_total{reason="request_timeout",status="408"} 1.0' in metrics


def test_stalled_body_is_408_and_the_connection_closes(tmp_path):
    async def fn(s, http):
        reader, writer = await _open(s.url)
        head = _request("POST", RUN, b"", close=False).replace(
            b"Content-Length: 0", b"Content-Length: 100"
        )
        writer.write(head + b'{"input": "')
        await writer.drain()
        t0 = time.monotonic()
        reply = await asyncio.wait_for(reader.read(), 5)
        took = time.monotonic() - t0
        writer.close()
        return _parse(reply), took, dict(s.executor.counts)

    (status, doc, _), took, counts = asyncio.run(
        serve_fakes(tmp_path, fake_pair(), fn, server={"body_timeout_s": 0.4})
    )
    assert (
        status == 408
        and _is_error_shape(doc, 408)
        and "body not received within 0.4 s" in doc["error"]["message"]
    )
    assert 0.3 < took < 4.0  # the timeout, then at most the linger time before the close
    assert sum(counts.values()) == 0  # never admitted


def test_idle_keepalive_connection_is_closed(tmp_path):
    async def fn(s, http):
        reader, writer = await _open(s.url)
        writer.write(_request("GET", "/health", close=False))
        await writer.drain()
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        t0 = time.monotonic()
        rest = await asyncio.wait_for(reader.read(), 5)  # the body, then EOF when the server closes
        took = time.monotonic() - t0
        writer.close()
        return first, rest, took

    first, rest, took = asyncio.run(
        serve_fakes(tmp_path, fake_pair(), fn, server={"keepalive_timeout_s": 0.4})
    )
    assert first.startswith(b"HTTP/1.1 200") and rest.endswith(b'{"status": "ok"}')
    assert 0.3 < took < 3.0


def test_connections_over_the_bound_get_503_and_the_rest_are_served(tmp_path):
    async def fn(s, http):
        await http.close()  # its pooled connection would count
        held = [await _open(s.url) for _ in range(2)]
        await asyncio.sleep(0.05)
        over = await _exchange(s.url, _request("GET", "/health"))
        held[0][1].close()
        await _until(lambda: s.site.num_connections < 2)
        ok = await _exchange(s.url, _request("GET", "/health"))
        for _, w in held[1:]:
            w.close()
        return over, ok, s.metrics.render().decode()

    over, ok, metrics = asyncio.run(
        serve_fakes(tmp_path, fake_pair(), fn, server={"max_connections": 2})
    )
    assert (
        over[0] == 503
        and _is_error_shape(over[1], 503)
        and over[1]["error"]["type"] == "too_many_connections"
    )
    assert b"Retry-After: 1" in over[2]
    assert ok[0] == 200
    assert (
        'aragog_requests_rejected_total{reason="too_many_connections",status="503"} 1.0' in metrics
    )


# -- 7. every error is JSON ----------------------------------------------------------------------


def test_aiohttp_own_errors_are_the_json_shape(tmp_path, caplog):
    caplog.set_level(logging.INFO)

    async def fn(s, http):
        out = {}
        out["route"] = await _exchange(s.url, _request("GET", "/nope"))
        out["method"] = await _exchange(s.url, _request("GET", RUN))
        out["garbage"] = await _exchange(s.url, b"NOT HTTP AT ALL\r\n\r\n")
        out["bad_header"] = await _exchange(
            s.url, b"GET /health HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n"
        )
        big = "m" * 900_000
        async with http.post(
            CHAT, json={"model": "workflow:" + big, "messages": [{"role": "user", "content": "x"}]}
        ) as r:
            out["big_model"] = (r.status, await r.json(), await r.read())
        async with http.post(
            CHAT, json={"model": big, "messages": [{"role": "user", "content": "x"}]}
        ) as r:
            out["big_plain_model"] = (r.status, await r.json(), await r.read())

        def broken():
            raise RuntimeError("bug in a handler")

        s.executor.export_load = broken
        out["500"] = await _exchange(s.url, _request("GET", "/metrics"))
        return out

    out = asyncio.run(serve_fakes(tmp_path, fake_pair(), fn, server={"max_body_bytes": 2_000_000}))
    assert (
        out["route"][0] == 404
        and _is_error_shape(out["route"][1], 404)
        and "no route GET /nope" in out["route"][1]["error"]["message"]
    )
    status, doc, reply = out["method"]
    assert (
        status == 405 and _is_error_shape(doc, 405) and doc["error"]["type"] == "method_not_allowed"
    )
    assert b"Allow: POST" in reply
    for key in ("garbage", "bad_header"):
        assert (
            out[key][0] == 400
            and _is_error_shape(out[key][1], 400)
            and "malformed HTTP request" in out[key][1]["error"]["message"]
        )
    for key in ("big_model", "big_plain_model"):
        status, doc, raw = out[key]
        assert (
            status == 404
            and _is_error_shape(doc, 404)
            and len(raw) < 500
            and "(900" in doc["error"]["message"]
        )
    status, doc, _ = out["500"]
    assert status == 500 and _is_error_shape(doc, 500) and doc["error"]["type"] == "internal_error"
    assert "bug in a handler" not in doc["error"]["message"]
    # One ERROR with the traceback, for the bug only.
    assert [r.exc_info[1].args[0] for r in _errors_logged(caplog)] == ["bug in a handler"]


# -- 8. engines answering 4xx ------------------------------------------------------------------


def test_engine_answering_404_counts_against_it_and_fails_over(tmp_path):
    """A misconfigured engine (404 on every call) opens its breaker; every request
    completes on the other engine instead of failing 502."""
    engines = fake_pair(mode_small="fail", fail_status=404)

    async def fn(s, http):
        res = [await post_json(http, RUN, {"input": f"in{i}"}) for i in range(5)]
        return res, s.executor.engines["e-small"].breaker.num_opened, await _metrics(http)

    res, opened, metrics = asyncio.run(serve_fakes(tmp_path, engines, fn))
    assert [r[0] for r in res] == [200] * 5
    stages = [st for r in res for st in r[1]["receipt"]["stages"]]
    assert all(st["engine"] == "e-big" for st in stages)
    assert any("HTTP 404" in a["error"] for st in stages for a in st["failed_attempts"])
    assert opened >= 1 and 'aragog_engine_healthy{engine="e-small"} 0.0' in metrics


def test_engine_answering_400_blames_the_request_not_the_engine(tmp_path):
    engines = fake_pair(mode_small="fail", mode_big="fail", fail_status=400)

    async def fn(s, http):
        res = await post_json(http, RUN, {"input": "x"})
        return res, [st.breaker.num_opened for st in s.executor.engines.values()]

    (status, doc, _), opened = asyncio.run(serve_fakes(tmp_path, engines, fn))
    assert status == 502 and "HTTP 400" in doc["error"]["message"]
    assert opened == [0, 0]


# -- 9. rejections are counted --------------------------------------------------------------------


def test_refused_requests_are_counted_by_status_and_reason(tmp_path):
    async def fn(s, http):
        key = {"Authorization": "Bearer k"}
        await post_json(http, RUN, {}, headers=key)  # 400
        await post_json(http, RUN, {"input": "x"})  # 401
        await post_json(http, "/v1/workflows/nope/runs", {"input": "x"}, headers=key)  # 404
        async with http.post(
            RUN, data=b'{"input": "' + b"x" * 3000 + b'"}', headers=key
        ) as r:  # 413
            assert r.status == 413
        slow = asyncio.create_task(
            post_json(http, RUN, {"input": "a", "deadline_s": 0.5}, headers=key)
        )
        await _until(lambda: s.executor.num_in_flight == 1)
        await post_json(http, RUN, {"input": "b"}, headers=key)  # 429
        await slow
        async with http.get("/metrics", headers=key) as r:
            return await r.text()

    metrics = asyncio.run(
        serve_fakes(
            tmp_path,
            _busy_pair(),
            fn,
            server={"api_keys": ["k"], "max_queue": 1, "max_body_bytes": 2048},
        )
    )
    for status, reason in [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (404, "not_found_error"),
        (413, "payload_too_large"),
        (429, "overloaded_error"),
    ]:
        assert (
            f'aragog_requests_rejected_total{{reason="{reason}",status="{status}"}} 1.0' in metrics
        )
    assert (
        'aragog_requests_total{status="expired",workflow="chain"} 1.0' in metrics
    )  # the admitted one is a run, not a rejection


# -- 10. bind warning, second signal, round ids, input rule -----------------------------------


def test_is_loopback():
    assert all(server_module.is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "localhost"))
    assert not any(
        server_module.is_loopback(h) for h in ("0.0.0.0", "::", "", "10.1.2.3", "example.com")
    )


@pytest.mark.parametrize("keys", [[], ["k"]])
def test_non_loopback_bind_without_keys_warns_loudly(tmp_path, caplog, monkeypatch, keys):
    # The test binds loopback only; the address check itself is tested above.
    monkeypatch.setattr(server_module, "is_loopback", lambda host: False)
    caplog.set_level(logging.WARNING)

    async def fn(s, http):
        return None

    asyncio.run(serve_fakes(tmp_path, fake_pair(), fn, server={"api_keys": keys}))
    warned = [
        r for r in caplog.records if r.levelno == logging.WARNING and "NO AUTH" in r.getMessage()
    ]
    assert len(warned) == (0 if keys else 1)


def test_second_signal_during_drain_stops_at_once(tmp_path):
    from aragog_jax.serve import serve_until_signalled

    async def fn(s, http):
        serving = asyncio.create_task(serve_until_signalled(s, 30.0))
        running = asyncio.create_task(post_json(http, RUN, {"input": "x"}))
        await _until(lambda: s.executor.num_in_flight == 1)
        await asyncio.sleep(0.05)  # the handlers are installed once serving awaits
        t0 = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)
        await _until(lambda: s.state == "draining")
        await asyncio.sleep(0.2)
        assert not serving.done()  # the first signal drains (drain_s 30)
        os.kill(os.getpid(), signal.SIGTERM)
        summary = await asyncio.wait_for(serving, 5)
        took = time.monotonic() - t0
        status = (await running)[0]
        return summary, took, status

    summary, took, status = asyncio.run(
        serve_fakes(tmp_path, _busy_pair(), fn, options=ServeOptions(drain_s=30.0, warm_up=False))
    )
    assert summary == {"cancelled_at_shutdown": 1} and took < 3.0 and status == 503


def test_round_ids_are_plain_ascii_decimals(tmp_path):
    async def fn(s, http):
        out = {}
        for rid in ("1_0", "%201%20", "%D9%A1", "-1", "+1", "1e3", "9" * 40):
            async with http.get(f"/v1/rounds/{rid}") as r:
                out[rid] = (r.status, await r.json())
        async with http.get("/v1/rounds/12345") as r:
            out["ok"] = r.status
        return out

    out = asyncio.run(serve_fakes(tmp_path, fake_pair(), fn))
    assert out.pop("ok") == 404  # a well-formed id that is not kept
    for rid, (status, doc) in out.items():
        assert status == 400 and doc["error"]["field"] == "round_id", rid


def test_whitespace_only_input_is_refused_by_runs_and_chat_alike(tmp_path):
    async def fn(s, http):
        run = await post_json(http, RUN, {"input": " \t\n "})
        chat = await post_json(
            http,
            CHAT,
            {"model": "workflow:chain", "messages": [{"role": "user", "content": " \n"}]},
        )
        return run, chat, dict(s.executor.counts)

    (rs, rdoc, _), (cs, cdoc, _), counts = asyncio.run(serve_fakes(tmp_path, fake_pair(), fn))
    assert rs == cs == 400
    assert rdoc["error"]["field"] == "input" and cdoc["error"]["field"] == "messages"
    assert (
        "non-whitespace" in rdoc["error"]["message"]
        and "non-whitespace" in cdoc["error"]["message"]
    )
    assert sum(counts.values()) == 0


def test_fake_engine_counts_cancelled_calls():
    """The fake engine (served with handler_cancellation) notices a caller hanging up."""
    from aragog_jax.serving import LoopbackServer

    async def go():
        fake = FakeEngine("m", mode="hang")
        srv = LoopbackServer(fake.app, handler_cancellation=True)
        url = await srv.start()
        try:
            reader, writer = await _open(url)
            writer.write(_request("POST", "/v1/chat/completions", b'{"messages": []}'))
            await writer.drain()
            await _until(lambda: fake.in_flight == 1)
            writer.close()
            await _until(lambda: fake.in_flight == 0)
            return fake.num_cancelled
        finally:
            await srv.stop()

    assert asyncio.run(go()) == 1
