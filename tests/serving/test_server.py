"""The server against loopback fake engines: routes, receipts, faults, admission, shutdown."""

from __future__ import annotations

import asyncio
import json
import threading

import aiohttp
import pytest

from aragog_jax.serving import FakeEngine, LoopbackServer, ServeOptions, Server, load_runtime

from ._fleetkit import CHAIN, FAN, write_fleet
from ._fleetkit import fake_pair as _two
from ._fleetkit import post_json as _post
from ._fleetkit import serve_fakes as _serve


def test_run_completes_with_receipt(tmp_path):
    engines = _two()

    async def fn(s, http):
        return await _post(http, "/v1/workflows/chain/runs", {"input": "reverse a string"})

    status, body, _ = asyncio.run(_serve(tmp_path, engines, fn))
    assert status == 200, body
    rec = body["receipt"]
    assert [st["stage"] for st in rec["stages"]] == ["draft", "polish"]
    assert rec["num_configs"] == 4 and rec["num_admitted"] == 4 and rec["router"] == "admit-all"
    polish = rec["stages"][1]
    fake = engines[polish["engine"]][1]
    draft_text = engines[rec["stages"][0]["engine"]][1].text_for("Draft: reverse a string")
    # The final stage's prompt is rendered from the input and the upstream output.
    assert body["output"] == fake.text_for(f"Polish {draft_text} for reverse a string")
    assert rec["configuration"] == {"draft": rec["stages"][0]["model"], "polish": polish["model"]}
    assert all(
        st["queue_s"] >= 0 and st["run_s"] > 0 and st["round_id"] >= 0 for st in rec["stages"]
    )


def test_fan_in_and_streaming_events(tmp_path):
    async def fn(s, http):
        events = []
        async with http.post("/v1/workflows/fan/runs", json={"input": "q", "stream": True}) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            async for line in r.content:
                if line.startswith(b"data: "):
                    events.append(json.loads(line[6:]))
        return events

    events = asyncio.run(_serve(tmp_path, _two(), fn))
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "done" and kinds.count("stage") == 3
    assert {e["stage"] for e in events if e["event"] == "stage"} == {"a", "b", "join"}
    assert events[-2]["stage"] == "join" and events[-1]["output"] == events[-2]["output"]


def test_listing_and_errors(tmp_path):
    async def fn(s, http):
        out = {}
        async with http.get("/v1/workflows") as r:
            out["wf"] = await r.json()
        async with http.get("/v1/models") as r:
            out["models"] = await r.json()
        out["404"] = await _post(http, "/v1/workflows/nope/runs", {"input": "x"})
        out["400_missing"] = await _post(http, "/v1/workflows/chain/runs", {})
        out["400_type"] = await _post(http, "/v1/workflows/chain/runs", {"input": 3})
        out["400_unknown"] = await _post(
            http, "/v1/workflows/chain/runs", {"input": "x", "bogus": 1}
        )
        async with http.post(
            "/v1/workflows/chain/runs",
            data=b"{not json",
            headers={"Content-Type": "application/json"},
        ) as r:
            out["400_json"] = (r.status, await r.json())
        async with http.post(
            "/v1/workflows/chain/runs", data=b'{"input": "' + b"x" * 5000 + b'"}'
        ) as r:
            out["413"] = r.status
        async with http.get("/health") as r:
            out["health"] = r.status
        async with http.get("/ready") as r:
            out["ready"] = (r.status, await r.json())
        return out

    out = asyncio.run(_serve(tmp_path, _two(), fn, server={"max_body_bytes": 1024}))
    assert [w["name"] for w in out["wf"]["data"]] == ["chain", "fan"]
    assert {m["id"] for m in out["models"]["data"]} == {"workflow:chain", "workflow:fan"}
    assert out["404"][0] == 404 and "unknown workflow 'nope'" in out["404"][1]["error"]["message"]
    assert out["400_missing"][0] == 400 and out["400_missing"][1]["error"]["field"] == "input"
    assert out["400_type"][0] == 400 and out["400_type"][1]["error"]["field"] == "input"
    assert out["400_unknown"][0] == 400 and out["400_unknown"][1]["error"]["field"] == "bogus"
    assert out["400_json"][0] == 400 and "malformed JSON" in out["400_json"][1]["error"]["message"]
    assert out["413"] == 413
    assert out["health"] == 200 and out["ready"][0] == 200 and out["ready"][1]["ready"] is True


def test_api_keys_from_file_and_env(tmp_path, monkeypatch):
    monkeypatch.setenv("ARAGOG_TEST_KEYS", "env-key-1, env-key-2")

    async def fn(s, http):
        no = await _post(http, "/v1/workflows/chain/runs", {"input": "x"})
        bad = await _post(
            http,
            "/v1/workflows/chain/runs",
            {"input": "x"},
            headers={"Authorization": "Bearer nope"},
        )
        ok_file = await _post(
            http,
            "/v1/workflows/chain/runs",
            {"input": "x"},
            headers={"Authorization": "Bearer file-key"},
        )
        ok_env = await _post(
            http,
            "/v1/workflows/chain/runs",
            {"input": "x"},
            headers={"Authorization": "Bearer env-key-2"},
        )
        async with http.get("/health") as r:
            health = r.status
        return no, bad, ok_file, ok_env, health

    no, bad, ok_file, ok_env, health = asyncio.run(
        _serve(
            tmp_path,
            _two(),
            fn,
            server={"api_keys": ["file-key"], "api_keys_env": "ARAGOG_TEST_KEYS"},
        )
    )
    assert no[0] == 401 and bad[0] == 401
    assert "nope" not in json.dumps(bad[1])  # the key is never echoed
    assert ok_file[0] == 200 and ok_env[0] == 200 and health == 200


def test_queue_full_is_429_with_retry_after_and_deadline_is_504(tmp_path):
    async def fn(s, http):
        first = asyncio.create_task(
            _post(http, "/v1/workflows/chain/runs", {"input": "slow", "deadline_s": 0.3})
        )
        await asyncio.sleep(0.1)
        second = await _post(http, "/v1/workflows/chain/runs", {"input": "x"})
        return await first, second, s.executor.counts

    first, second, counts = asyncio.run(
        _serve(tmp_path, _two("slow", "slow", slow_s=1.0), fn, server={"max_queue": 1})
    )
    assert second[0] == 429 and second[2]["Retry-After"] == "1"
    assert first[0] == 504 and "deadline" in first[1]["error"]["message"]
    assert counts["expired"] == 1


@pytest.mark.parametrize("mode", ["fail", "malformed", "truncated", "hang"])
def test_engine_fault_fails_over_to_other_model(tmp_path, mode):
    engines = _two(mode_small=mode, mode_big="ok")

    async def fn(s, http):
        res = [await _post(http, "/v1/workflows/chain/runs", {"input": f"in{i}"}) for i in range(3)]
        async with http.get("/metrics") as r:
            metrics = await r.text()
        return res, metrics, s.executor.engines["e-small"].breaker.num_opened

    res, metrics, opened = asyncio.run(
        _serve(tmp_path, engines, fn, server={"engine_timeout_s": 0.3})
    )
    assert all(r[0] == 200 for r in res), res
    stages = [st for r in res for st in r[1]["receipt"]["stages"]]
    assert all(st["engine"] == "e-big" for st in stages)
    failed = [a for st in stages for a in st["failed_attempts"]]
    assert failed and all(a["engine"] == "e-small" for a in failed)
    assert opened >= 1
    assert 'aragog_failovers_total{workflow="chain"}' in metrics
    assert 'aragog_engine_healthy{engine="e-small"} 0.0' in metrics


def test_no_viable_configuration_left_is_503_not_a_hang(tmp_path):
    async def fn(s, http):
        r = await asyncio.wait_for(_post(http, "/v1/workflows/chain/runs", {"input": "x"}), 10)
        return r, s.executor.counts, s.executor.num_in_flight

    (status, body, _), counts, left = asyncio.run(_serve(tmp_path, _two("fail", "fail"), fn))
    assert status in (502, 503), body
    assert (
        "no admitted configuration" in body["error"]["message"]
        or "failed" in body["error"]["message"]
    )
    assert counts["failed"] == 1 and left == 0


def test_engine_recovery_is_detected(tmp_path):
    engines = _two(mode_small="fail")

    async def fn(s, http):
        await _post(http, "/v1/workflows/chain/runs", {"input": "x"})
        br = s.executor.engines["e-small"].breaker
        assert br.state.name != "CLOSED"
        engines["e-small"][1].mode = "ok"
        for _ in range(100):
            await asyncio.sleep(0.05)
            if br.state.name == "CLOSED":
                break
        return br.state.name

    assert asyncio.run(_serve(tmp_path, engines, fn)) == "CLOSED"


def test_graceful_shutdown_drains_in_flight(tmp_path):
    async def fn(s, http):
        running = asyncio.create_task(_post(http, "/v1/workflows/chain/runs", {"input": "x"}))
        # Stop only once the request is admitted (in flight): a request still unread on its
        # connection when the listener closes is refused, not drained (a loaded CI machine
        # once took longer than a fixed 0.1 s to read it).
        for _ in range(500):
            if s.executor.num_in_flight:
                break
            await asyncio.sleep(0.01)
        assert s.executor.num_in_flight == 1
        stopping = asyncio.create_task(s.stop(drain_s=5.0))
        await asyncio.sleep(0.05)
        try:
            late = (await _post(http, "/v1/workflows/chain/runs", {"input": "late"}))[0]
        except aiohttp.ClientError:
            late = "refused"
        done = await running
        summary = await stopping
        return done, late, summary

    done, late, summary = asyncio.run(_serve(tmp_path, _two("ok", "ok", delay_s=0.2), fn))
    assert done[0] == 200 and summary == {"cancelled_at_shutdown": 0}
    assert late in ("refused", 503)


def test_openai_client_unchanged(tmp_path):
    openai = pytest.importorskip("openai")

    async def fn(s, http):
        client = openai.AsyncOpenAI(base_url=s.url + "/v1", api_key="unused")
        models = await client.models.list()
        resp = await client.chat.completions.create(
            model="workflow:chain",
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hello"},
            ],
        )
        chunks = []
        stream = await client.chat.completions.create(
            model="workflow:fan", messages=[{"role": "user", "content": "q"}], stream=True
        )
        async for ch in stream:
            if ch.choices and ch.choices[0].delta.content:
                chunks.append(ch.choices[0].delta.content)
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(
                model="workflow:nope", messages=[{"role": "user", "content": "x"}]
            )
        await client.close()
        return [m.id for m in models.data], resp, "".join(chunks)

    ids, resp, streamed = asyncio.run(_serve(tmp_path, _two(), fn))
    assert ids == ["workflow:chain", "workflow:fan"]
    assert resp.choices[0].message.role == "assistant" and resp.choices[
        0
    ].message.content.startswith(("small:", "big:"))
    assert resp.usage.completion_tokens == 16
    assert streamed.startswith(("small:", "big:"))


def test_receipt_rounds_replay_to_the_same_decision(tmp_path):
    from aragog_jax.scheduler import make_policy
    from aragog_jax.scheduler._replay import replay_round

    async def fn(s, http):
        status, body, _ = await _post(
            http, "/v1/workflows/fan/runs", {"input": "q", "replay": True}
        )
        rid = body["receipt"]["stages"][0]["round_id"]
        async with http.get(f"/v1/rounds/{rid}") as r:
            served = (r.status, await r.json())
        async with http.get(f"/v1/rounds/{rid}/decision") as r:
            decision = await r.json()
        async with http.get("/v1/rounds/999999") as r:
            missing = r.status
        return status, body, served, decision, missing

    status, body, served, decision, missing = asyncio.run(_serve(tmp_path, _two(), fn))
    assert status == 200
    rounds = body["receipt"]["rounds"]
    assert rounds and {st["round_id"] for st in body["receipt"]["stages"]} <= {
        r["round_id"] for r in rounds
    }
    first = rounds[0]
    assert served == (200, first["round"]) and decision == first["decision"]
    replayed = replay_round(first["round"], make_policy("aragog", beam_width=4))
    assert replayed["assignments"] == first["decision"]["assignments"]
    run_id = body["id"]
    assert any(a["request"] == run_id for a in first["decision"]["assignments"])
    assert missing == 404


def test_trained_router_masks_configurations(tmp_path):
    from aragog_jax.router import shipped_router
    from aragog_jax.spec import PROFILES_DIR

    ckpt = shipped_router("self_refine_humaneval", "qwen")
    if not ckpt.exists():
        pytest.skip(f"no shipped router at {ckpt}")
    models = ["Qwen2.5-7B-Instruct", "Qwen2.5-14B-Instruct", "Qwen2.5-32B-Instruct"]

    async def go():
        fakes = [FakeEngine(m) for m in models]
        srvs = [LoopbackServer(f.app) for f in fakes]
        urls = [await s.start() for s in srvs]
        lines = [
            'family = "qwen"',
            f'models = "{PROFILES_DIR / "models.toml"}"',
            f'workflows = ["{PROFILES_DIR / "workflows" / "self_refine_humaneval.toml"}"]',
            "[routers]",
            f'self_refine_humaneval = "{ckpt}"',
        ]
        for i, (m, u) in enumerate(zip(models, urls, strict=True)):
            lines += ["[[engine]]", f'name = "e{i}"', f'model = "{m}"', f'url = "{u}"']
        lines += ["[server]", "port = 0"]
        path = tmp_path / "fleet.toml"
        path.write_text("\n".join(lines) + "\n")
        fleet = load_runtime(path, router_buckets=(1, 8))
        s = Server(fleet, ServeOptions(warm_up=False))
        url = await s.start()
        try:
            async with aiohttp.ClientSession(base_url=url) as http:

                async def one(text):
                    async with http.post(
                        "/v1/workflows/self_refine_humaneval/runs", json={"input": text}
                    ) as r:
                        return r.status, await r.json()

                res = await asyncio.gather(
                    *(one(f"def f{i}(x): return x + {i}") for i in range(10))
                )
                async with http.get("/ready") as r:
                    ready = await r.json()
            return res, ready, fleet.workflows["self_refine_humaneval"].router
        finally:
            await s.stop(drain_s=0.5)
            for srv in srvs:
                await srv.stop()

    res, ready, router = asyncio.run(go())
    assert ready["routers"] == {"self_refine_humaneval": "compiled"}
    assert all(st == 200 for st, _ in res)
    for (_, body), i in zip(res, range(10), strict=False):
        rec = body["receipt"]
        assert rec["router"] == "trained" and rec["routing_s"] > 0
        expected = router.route_texts([f"def f{i}(x): return x + {i}"]).mask[0]
        assert rec["num_admitted"] == int(expected.sum())
        # The configuration that ran is one the router admitted.
        idx = router.space.index_of(rec["configuration"])
        assert expected[idx]


def _qwen_router_fleet(tmp_path, urls: list[str], models: list[str]):
    from aragog_jax.router import shipped_router
    from aragog_jax.spec import PROFILES_DIR

    ckpt = shipped_router("self_refine_humaneval", "qwen")
    if not ckpt.exists():
        pytest.skip(f"no shipped router at {ckpt}")
    lines = [
        'family = "qwen"',
        f'models = "{PROFILES_DIR / "models.toml"}"',
        f'workflows = ["{PROFILES_DIR / "workflows" / "self_refine_humaneval.toml"}"]',
        "[routers]",
        f'self_refine_humaneval = "{ckpt}"',
    ]
    for i, (m, u) in enumerate(zip(models, urls, strict=True)):
        lines += ["[[engine]]", f'name = "e{i}"', f'model = "{m}"', f'url = "{u}"']
    lines += ["[server]", "port = 0"]
    path = tmp_path / "fleet.toml"
    path.write_text("\n".join(lines) + "\n")
    return load_runtime(path, router_buckets=(1, 8))


@pytest.mark.parametrize("router_fails", [False, True])
def test_round_routes_the_turns_arrivals_in_one_batch_and_dispatches_them(tmp_path, router_fails):
    """Runs admitted in one loop turn are routed in one call at the start of the next
    round, queued, and their first stage dispatched by that same round."""
    models = ["Qwen2.5-7B-Instruct", "Qwen2.5-14B-Instruct", "Qwen2.5-32B-Instruct"]

    async def go():
        fakes = [FakeEngine(m, delay_s=0.2) for m in models]
        srvs = [LoopbackServer(f.app) for f in fakes]
        urls = [await s.start() for s in srvs]
        fleet = _qwen_router_fleet(tmp_path, urls, models)
        router = fleet.workflows["self_refine_humaneval"].router
        batches: list[list[str]] = []
        route_texts = router.route_texts

        def recording(texts, budget_s=None):
            batches.append(list(texts))
            if router_fails:
                raise RuntimeError("router exploded")
            return route_texts(texts, budget_s)

        router.route_texts = recording
        s = Server(fleet, ServeOptions(warm_up=False))
        await s.start()
        try:
            ex = s.executor
            runs = [
                ex.admit("self_refine_humaneval", f"def f{i}(x): return x + {i}") for i in range(6)
            ]
            assert batches == [] and all(r.status == "routing" for r in runs)
            await asyncio.sleep(0)  # one loop turn: the round the admissions asked for
            statuses = [r.status for r in runs]
            dispatched = sum(st.num_dispatched for st in ex.engines.values())
            outcomes = []
            for r in runs:
                try:
                    outcomes.append((await ex.wait(r)).receipt.router)
                except Exception as exc:  # noqa: BLE001
                    outcomes.append(str(exc))
            return batches, statuses, dispatched, outcomes
        finally:
            await s.stop(drain_s=0.5)
            for srv in srvs:
                await srv.stop()

    batches, statuses, dispatched, outcomes = asyncio.run(go())
    texts = [f"def f{i}(x): return x + {i}" for i in range(6)]
    assert batches[0] == texts
    if router_fails:
        assert batches == [texts] and statuses == ["failed"] * 6 and dispatched == 0
        assert outcomes == ["routing failed: router exploded"] * 6
    else:
        assert statuses == ["queued"] * 6 and dispatched == 6
        assert outcomes == ["trained"] * 6


@pytest.mark.parametrize("tune", [True, False])
def test_start_tunes_the_collector_and_stop_restores_it(tmp_path, tune):
    import gc

    async def fn(s, http):
        status, _, _ = await _post(http, "/v1/workflows/chain/runs", {"input": "x"})
        return status, gc.get_freeze_count(), gc.get_threshold()

    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    status, frozen, threshold = asyncio.run(
        _serve(tmp_path, _two(), fn, options=ServeOptions(drain_s=2.0, warm_up=False, tune_gc=tune))
    )
    assert status == 200
    if tune:
        assert frozen > 10_000 and threshold[0] >= 10_000 and threshold[1:] == before[1:]
    else:
        assert frozen == 0 and threshold == before
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == before


def test_collector_tuning_is_shared_by_servers_in_one_process(tmp_path):
    """Two servers stopped in start order: the first stop keeps the second's tuning, the
    last restores the process's own collector settings."""
    import gc

    async def go():
        fakes = []
        servers = []
        for i in range(2):
            urls = []
            for name, (model, fake) in _two().items():
                srv = LoopbackServer(fake.app)
                fakes.append(srv)
                urls.append((name, model, await srv.start()))
            (tmp_path / str(i)).mkdir()
            path = write_fleet(tmp_path / str(i), urls, server={"port": 0, "metrics_poll_s": 0.05})
            servers.append(Server(load_runtime(path), ServeOptions(drain_s=0.5, warm_up=False)))
            await servers[-1].start()
        try:
            await servers[0].stop()
            between = gc.get_threshold(), gc.get_freeze_count()
            await servers[1].stop()
        finally:
            for f in fakes:
                await f.stop()
        return between

    before = gc.get_threshold()
    (threshold, frozen) = asyncio.run(go())
    assert threshold[0] >= 10_000 and frozen > 0  # the second server still serves, tuned
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_stop_restores_the_collector_even_when_closing_fails(tmp_path, monkeypatch):
    import gc

    async def go():
        fakes, urls = [], []
        for name, (model, fake) in _two().items():
            fakes.append(LoopbackServer(fake.app))
            urls.append((name, model, await fakes[-1].start()))
        s = Server(
            load_runtime(write_fleet(tmp_path, urls, server={"port": 0})),
            ServeOptions(drain_s=0.5, warm_up=False),
        )
        await s.start()
        close = s.executor.close

        async def broken():
            await close()
            raise RuntimeError("engine client close failed")

        monkeypatch.setattr(s.executor, "close", broken)
        try:
            with pytest.raises(RuntimeError):
                await s.stop()
        finally:
            await s.site.stop()  # what the failed stop left open
            for f in fakes:
                await f.stop()

    before = gc.get_threshold()
    asyncio.run(go())
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_runs_admitted_in_one_turn_queue_in_admission_order_across_workflows(tmp_path):
    """The scheduler's meta-queue is FIFO: a round that routes several workflows' arrivals
    queues them in the order they were admitted, not grouped by workflow."""

    async def fn(s, http):
        ex = s.executor
        runs = [ex.admit(w, "x") for w in ("chain", "fan", "chain", "fan")]
        await asyncio.sleep(0)  # the round that routes and queues them
        return [r.id for r in runs], list(ex.sched.sched.request_ids())

    admitted, queued = asyncio.run(_serve(tmp_path, _two(delay_s=0.2), fn))
    assert queued == admitted


def test_router_in_a_worker_thread_routes_and_serves(tmp_path):
    """A router that may block (embeddings endpoint) is called off the loop, batched."""
    models = ["Qwen2.5-7B-Instruct", "Qwen2.5-14B-Instruct", "Qwen2.5-32B-Instruct"]

    async def go():
        fakes = [FakeEngine(m) for m in models]
        srvs = [LoopbackServer(f.app) for f in fakes]
        urls = [await s.start() for s in srvs]
        fleet = _qwen_router_fleet(tmp_path, urls, models)
        router = fleet.workflows["self_refine_humaneval"].router
        threads: list[bool] = []
        featurize = router.featurizer

        def recording(texts):
            threads.append(threading.current_thread() is threading.main_thread())
            return featurize(texts)

        router.featurizer = recording
        s = Server(fleet, ServeOptions(warm_up=False))
        url = await s.start()
        s.executor.routers["self_refine_humaneval"].in_thread = True
        try:
            async with aiohttp.ClientSession(base_url=url) as http:
                res = await asyncio.gather(
                    *(
                        _post(http, "/v1/workflows/self_refine_humaneval/runs", {"input": f"f{i}"})
                        for i in range(5)
                    )
                )
        finally:
            await s.stop(drain_s=0.5)
            for srv in srvs:
                await srv.stop()
        return res, threads

    res, threads = asyncio.run(go())
    assert [st for st, _, _ in res] == [200] * 5
    assert all(body["receipt"]["router"] == "trained" for _, body, _ in res)
    assert threads and not any(threads)  # never on the loop's (main) thread


_STAGES_PY = """
async def draft_twice(stage, model, lm, state):
    first = await lm(state.prompt)
    return await lm("again " + first)

async def broken(stage, model, lm, state):
    raise KeyError("missing tool")
"""


def _fn_chain(function: str) -> str:
    return CHAIN.replace(
        'prompt = "Draft: {input}"', f'prompt = "Draft: {{input}}"\nfunction = "{function}"'
    )


def test_stage_function_runs_on_the_chosen_engine_and_feeds_the_next_stage(tmp_path):
    (tmp_path / "stages.py").write_text(_STAGES_PY)
    engines = _two()

    async def fn(s, http):
        return await _post(http, "/v1/workflows/chain/runs", {"input": "sum a list"})

    status, body, _ = asyncio.run(
        _serve(tmp_path, engines, fn, workflows={"chain": _fn_chain("stages.py:draft_twice")})
    )
    assert status == 200, body
    draft, polish = body["receipt"]["stages"]
    fake = engines[draft["engine"]][1]
    draft_text = fake.text_for("again " + fake.text_for("Draft: sum a list"))
    assert (
        fake.prompts.count("Draft: sum a list") == 1
    )  # both calls went to the engine the scheduler chose
    assert body["output"] == engines[polish["engine"]][1].text_for(
        f"Polish {draft_text} for sum a list"
    )
    assert draft["engine_calls"] == 2 and polish["engine_calls"] == 1
    assert draft["completion_tokens"] > polish["completion_tokens"]  # two calls' tokens add up


def test_failing_stage_function_is_500_naming_stage_and_function(tmp_path):
    (tmp_path / "stages.py").write_text(_STAGES_PY)

    async def fn(s, http):
        status, body, _ = await _post(http, "/v1/workflows/chain/runs", {"input": "x"})
        ok, _, _ = await _post(
            http, "/v1/workflows/fan/runs", {"input": "y"}
        )  # the server keeps serving
        return status, body, ok

    status, body, ok = asyncio.run(
        _serve(tmp_path, _two(), fn, workflows={"chain": _fn_chain("stages.py:broken"), "fan": FAN})
    )
    assert status == 500 and body["error"]["type"] == "stage_function_error"
    assert (
        "stage 'draft': function broken raised KeyError: 'missing tool'" in body["error"]["message"]
    )
    assert ok == 200


def test_fleet_with_a_missing_stage_function_fails_at_load(tmp_path):
    from aragog_jax.errors import SpecError

    path = write_fleet(
        tmp_path,
        [("e", "small", "http://127.0.0.1:9")],
        workflows={"chain": _fn_chain("stages.py:nope")},
    )
    (tmp_path / "stages.py").write_text(_STAGES_PY)
    with pytest.raises(
        SpecError,
        match=r"workflow 'chain': stage\[0\] \(draft\)\.function .* has no function 'nope'",
    ):
        load_runtime(path)


def test_a_part_that_fails_to_close_does_not_keep_the_others_open(tmp_path):
    """stop(): an engine client whose close raises is reported (raised, logged), and the
    other clients and the listener are still closed."""
    engines = _two()

    async def go():
        fakes = [LoopbackServer(f.app) for _, f in engines.values()]
        urls = [
            (name, model, await srv.start())
            for (name, (model, _)), srv in zip(engines.items(), fakes, strict=True)
        ]
        path = write_fleet(tmp_path, urls, server={"port": 0, "metrics_poll_s": 0.05})
        s = Server(load_runtime(path), ServeOptions(drain_s=0.5, warm_up=False))
        url = await s.start()
        clients = [st.client for st in s.executor.engines.values()]

        async def broken_close():
            raise RuntimeError("socket already gone")

        real_close, clients[0].close = clients[0].close, broken_close
        with pytest.raises(RuntimeError, match="socket already gone"):
            await s.stop(drain_s=0.1)
        other_closed = clients[1].closed
        await real_close()
        try:
            async with aiohttp.ClientSession() as http:
                await http.get(url + "/health")
            listening = True
        except aiohttp.ClientError:
            listening = False
        for srv in fakes:
            await srv.stop()
        return s.state, other_closed, listening

    state, other_closed, listening = asyncio.run(go())
    assert state == "closed" and other_closed and not listening


def test_a_stage_that_becomes_ready_is_dispatched_within_a_loop_turn(tmp_path):
    """No timer or batching window between a stage becoming ready and its dispatch: a
    ticker that yields to the loop (``sleep(0)``) advances at most a couple of times
    between the draft returning and the polish being dispatched (a timer of even 1 ms
    would let it spin hundreds of times), and the same from admission to the draft."""
    engines = _two()

    async def fn(s, http):
        ex = s.executor
        turns = 0
        marks: list[tuple[str, int]] = []

        async def ticker():
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        finished, dispatch = ex.sched.finished, ex.dispatcher.dispatch

        def on_finished(run_id, sid):
            marks.append(("finished", turns))
            return finished(run_id, sid)

        def on_dispatch(run, a, round_id, now):
            marks.append((f"dispatch {a.stage_name}", turns))
            return dispatch(run, a, round_id, now)

        ex.sched.finished, ex.dispatcher.dispatch = on_finished, on_dispatch
        tick = asyncio.create_task(ticker())
        try:
            await asyncio.sleep(0)
            run = ex.admit("chain", "reverse a string")
            marks.append(("admitted", turns))
            await ex.wait(run)
        finally:
            tick.cancel()
        return marks

    marks = asyncio.run(_serve(tmp_path, engines, fn))
    names = [m for m, _ in marks]
    assert names == ["admitted", "dispatch draft", "finished", "dispatch polish", "finished"]
    at = dict(zip(names[:4], [t for _, t in marks[:4]], strict=True))
    assert at["dispatch draft"] - at["admitted"] <= 2, marks
    assert at["dispatch polish"] - at["finished"] <= 2, marks
