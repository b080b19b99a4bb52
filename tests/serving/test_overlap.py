"""Routing overlapped with queueing: a router off the loop routes while its request waits in
the meta-queue; past the routing budget the request runs with the configurations admitted
so far (``c_max`` at least), and the receipt says how far routing got."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np

from aragog_jax.router import Router
from aragog_jax.serving import FakeEngine, LoopbackServer, ServeOptions, Server

from .test_server import _qwen_router_fleet

MODELS = ["Qwen2.5-7B-Instruct", "Qwen2.5-14B-Instruct", "Qwen2.5-32B-Instruct"]
WF = "self_refine_humaneval"


class SlowFeaturizer:
    """A featuriser that takes ``delay_s`` (an embeddings endpoint on a bad day): awaited
    on the loop (``aembed``, the production path) or, with ``in_thread``, a blocking call
    the worker runs in a thread. Records when each call finished and on which thread."""

    def __init__(self, inner, delay_s: float, *, aembed: bool):
        self.inner, self.delay_s = inner, delay_s
        self.name, self.dim = inner.name, inner.dim
        self.done_at: list[float] = []
        self.on_main: list[bool] = []
        if aembed:
            self.aembed = self._aembed

    def __call__(self, texts):
        self.on_main.append(threading.current_thread() is threading.main_thread())
        time.sleep(self.delay_s)
        out = self.inner(texts)
        self.done_at.append(time.monotonic())
        return out

    async def _aembed(self, texts):
        await asyncio.sleep(self.delay_s)
        out = self.inner(texts)
        self.done_at.append(time.monotonic())
        return out


class SlowChunks(Router):
    """Scores its first chunk at once and every later one ``chunk_delay_s`` late."""

    chunk_delay_s = 3.0

    def route_progressive(self, features):
        for i, step in enumerate(super().route_progressive(features)):
            if i >= 2:
                time.sleep(self.chunk_delay_s)
            yield step


async def _serving(tmp_path, budget_s: float, setup, fn, *, delay_s: float = 0.05):
    """Run ``await fn(server, router)`` against three fake Qwen engines, after
    ``setup(fleet) -> router`` prepared the workflow's router."""
    fakes = [FakeEngine(m, delay_s=delay_s) for m in MODELS]
    srvs = [LoopbackServer(f.app) for f in fakes]
    urls = [await s.start() for s in srvs]
    fleet = _qwen_router_fleet(tmp_path, urls, MODELS)
    router = setup(fleet)
    s = Server(fleet, ServeOptions(warm_up=False, routing_budget_s=budget_s))
    await s.start()
    # Compile the scheduling round first (shared process-wide): a round that compiles
    # blocks the loop for seconds, which would blur every timing below.
    await asyncio.get_running_loop().run_in_executor(None, s.executor.warm_up, 16)
    try:
        return await fn(s, router)
    finally:
        await s.stop(drain_s=2.0)
        for srv in srvs:
            await srv.stop()


def _slow_featurizer(delay_s: float, *, aembed: bool):
    def setup(fleet):
        router = fleet.workflows[WF].router
        router.compile(router.buckets, budgeted=True)
        router.featurizer = SlowFeaturizer(router.featurizer, delay_s, aembed=aembed)
        return router

    return setup


def _cmax_models(router) -> dict[str, str]:
    return router.space.config_to_models(router.space.c_max)


def test_first_stage_runs_on_cmax_before_a_slow_router_finishes(tmp_path):
    """A 200 ms embeddings call, a 20 ms budget: the first stage is dispatched while the
    call is still out, on c_max (the only configuration admitted so far); routing stops
    there, so the whole run uses c_max, and the receipt says routing was incomplete. No
    request is lost in a burst."""

    async def fn(s, router):
        ex = s.executor
        runs = [ex.admit(WF, f"def f{i}(x): return x + {i}") for i in range(12)]
        while not sum(st.num_dispatched for st in ex.engines.values()):
            await asyncio.sleep(0.002)
        dispatched_while_routing = not router.featurizer.done_at
        results = [await ex.wait(r) for r in runs]
        return dispatched_while_routing, results, router

    dispatched_while_routing, results, router = asyncio.run(
        _serving(tmp_path, 0.02, _slow_featurizer(0.2, aembed=True), fn)
    )
    assert dispatched_while_routing
    assert len(results) == 12
    for res in results:
        rec = res.receipt
        assert rec.routing.complete is False and rec.routing.fraction == 0.0
        assert rec.routing.admitted == rec.num_admitted == 1
        assert rec.routing.budget_s == 0.02
        assert 0.02 <= rec.routing.used_s < 0.2 and rec.routing_s == rec.routing.used_s
        assert rec.configuration == _cmax_models(router)


def test_a_router_inside_the_budget_is_waited_for(tmp_path):
    """The same 200 ms router with a 5 s budget: the stages wait for it (held in the
    meta-queue), nothing is dispatched before it finished, and the receipt says complete."""

    async def fn(s, router):
        ex = s.executor
        run = ex.admit(WF, "def g(x): return x")
        first = None
        while first is None:
            if sum(st.num_dispatched for st in ex.engines.values()):
                first = time.monotonic()
            await asyncio.sleep(0.002)
        res = await ex.wait(run)
        return first, res, router

    first, res, router = asyncio.run(
        _serving(tmp_path, 5.0, _slow_featurizer(0.2, aembed=True), fn)
    )
    assert router.featurizer.done_at and first >= router.featurizer.done_at[0]
    rec = res.receipt
    want = router.route_texts(["def g(x): return x"]).mask[0]
    assert rec.routing.complete is True and rec.routing.fraction == 1.0
    assert rec.num_admitted == int(want.sum()) > 1
    assert 0.2 <= rec.routing.used_s < 5.0
    assert want[router.space.index_of(rec.configuration)]


def test_fast_router_in_a_thread_completes_and_says_so(tmp_path):
    """A router that may block runs in a worker thread (never on the loop's thread); when
    it is fast the receipt says routing completed, and what ran is what it admitted."""

    async def fn(s, router):
        ex = s.executor
        ex.routers[WF].in_thread = True
        runs = [ex.admit(WF, f"def h{i}(x): return {i}") for i in range(5)]
        return [await ex.wait(r) for r in runs], router

    results, router = asyncio.run(_serving(tmp_path, 0.5, _slow_featurizer(0.0, aembed=False), fn))
    assert router.featurizer.on_main and not any(router.featurizer.on_main)
    for i, res in enumerate(results):
        rec = res.receipt
        want = router.route_texts([f"def h{i}(x): return {i}"]).mask[0]
        assert rec.routing.complete is True and rec.routing.budget_s == 0.5
        assert rec.routing.admitted == int(want.sum())
        assert want[router.space.index_of(rec.configuration)]


def test_past_the_budget_the_run_uses_the_partial_set_found_so_far(tmp_path):
    """Chunks of 8 configurations; the first is scored at once, the rest 3 s late each.
    With a 0.5 s budget the run is released with c_max plus the first chunk's admitted
    configurations, runs inside that set, and routing stops there (fraction 8/C)."""
    text = "def k(x): return x * 2"

    def setup(fleet):
        wf = fleet.workflows[WF]
        router = SlowChunks.load(wf.router_path, chunk=8)
        router.compile((1, 8), budgeted=True)
        wf.router = router
        return router

    async def fn(s, router):
        ex = s.executor
        ex.routers[WF].in_thread = True
        return await ex.wait(ex.admit(WF, text)), router

    res, router = asyncio.run(_serving(tmp_path, 0.5, setup, fn))
    space = router.space
    full = router.route_texts([text]).mask[0]
    partial = np.zeros(space.num_configs, dtype=bool)
    partial[:8] = full[:8]
    partial[space.c_max] = True
    assert partial.sum() > 1  # the first chunk admitted something: a real partial set
    rec = res.receipt
    assert rec.routing.complete is False
    assert rec.routing.fraction == 8 / space.num_configs
    assert rec.routing.admitted == rec.num_admitted == int(partial.sum())
    assert 0.5 <= rec.routing.used_s < SlowChunks.chunk_delay_s
    assert partial[space.index_of(rec.configuration)]


def test_on_loop_router_receipt_is_complete_without_a_budget(tmp_path):
    async def fn(s, router):
        ex = s.executor
        assert not ex.routers[WF].in_thread
        return await ex.wait(ex.admit(WF, "def m(x): return x")), router

    res, router = asyncio.run(
        _serving(tmp_path, 0.05, lambda fleet: fleet.workflows[WF].router, fn)
    )
    rec = res.receipt
    assert rec.routing.complete is True and rec.routing.budget_s is None
    assert rec.routing.used_s == rec.routing_s > 0
    assert rec.routing.admitted == rec.num_admitted


def test_overlap_through_a_remote_scheduler(tmp_path):
    """serve --ray's port carries routing overlapped with queueing to the scheduler host:
    a run queued held with c_max, widened and released there. Inside the budget the run
    waits for the router and runs inside its full admitted set; past it, on c_max."""
    from aragog_jax.serving import load_runtime
    from aragog_jax.serving._remote import LocalLink, SchedulerHost

    async def go():
        fakes = [FakeEngine(m, delay_s=0.05) for m in MODELS]
        srvs = [LoopbackServer(f.app) for f in fakes]
        urls = [await s.start() for s in srvs]
        _qwen_router_fleet(tmp_path, urls, MODELS)
        host = SchedulerHost(load_runtime(tmp_path / "fleet.toml"), warm_up=False)
        await host.open()
        await asyncio.get_running_loop().run_in_executor(None, host.port.warm_up, 16)
        out = {}
        try:
            for budget_s in (5.0, 0.02):
                fleet = load_runtime(tmp_path / "fleet.toml", router_buckets=(1, 8))
                router = _slow_featurizer(0.2, aembed=True)(fleet)
                s = Server(
                    fleet,
                    ServeOptions(warm_up=False, routing_budget_s=budget_s, remote=LocalLink(host)),
                )
                await s.start()
                try:
                    text = f"def r{int(budget_s * 100)}(x): return x"
                    res = await s.executor.wait(s.executor.admit(WF, text))
                    out[budget_s] = (res, router.route_texts([text]).mask[0], router)
                finally:
                    await s.stop(drain_s=2.0)
            return out, host.stats()
        finally:
            await host.close()
            for srv in srvs:
                await srv.stop()

    out, stats = asyncio.run(go())
    res, full, router = out[5.0]
    rec = res.receipt
    assert rec.routing.complete is True and rec.num_admitted == int(full.sum()) > 1
    assert full[router.space.index_of(rec.configuration)]
    res, full, router = out[0.02]
    rec = res.receipt
    assert rec.routing.complete is False and rec.routing.admitted == 1
    assert rec.configuration == _cmax_models(router)
    assert stats["runs"] == stats["in_flight"] == 0


def test_a_run_still_routing_is_not_failed_for_an_engine_lost_meanwhile(tmp_path):
    """The unviable sweep (after an engine goes down) judges a run only once its routing
    is over: while it routes, its mask may still widen to a configuration off the lost
    model. When routing completes the run is judged once, on its final mask."""
    from aragog_jax.serving._sched import SchedulerPort

    fleet = _qwen_router_fleet(tmp_path, ["http://127.0.0.1:9"] * 3, MODELS)
    wf = fleet.workflows[WF]
    space = wf.space
    port = SchedulerPort(fleet)
    cmax = np.zeros(space.num_configs, dtype=bool)
    cmax[space.c_max] = True
    lost = set(_cmax_models(wf.router).values())
    assert len(lost) == 1  # c_max runs every stage on the largest model
    healthy = set(MODELS) - lost
    off_lost = next(
        c for c in range(space.num_configs) if lost.isdisjoint(space.config_to_models(c).values())
    )
    wider = cmax.copy()
    wider[off_lost] = True

    port.add("routing", wf, cmax, held=True, settled=False)
    port.add("routed", wf, cmax)  # routing over: only c_max admitted
    port.add("narrow", wf, cmax, settled=False)  # released while routing: c_max's stage may run
    assert port.unviable(healthy) == ["routed"]
    port.widen("routing", wider)
    port.settle("routing")
    port.settle("narrow")
    assert port.unviable(healthy, ["routing", "narrow"]) == ["narrow"]
    assert port.unviable(set(MODELS)) == []


def test_routing_holds_off_the_sweep_until_it_completes(tmp_path):
    """Through the executor: c_max's engine goes down while a run is held for a 300 ms
    router. The sweep spares the run while it routes (the old sweep failed it: its mask
    was c_max alone, on the lost model); routing then admits configurations off that
    model and the run completes on one of them."""
    text = "def z(x): return x - 1"

    async def fn(s, router):
        ex = s.executor
        run = ex.admit(WF, text)
        lost = set(_cmax_models(router).values())
        while not run.overlap.queued:
            await asyncio.sleep(0.002)
        for st in ex.engines.values():
            if st.model in lost:
                st.breaker.on_failure(time.monotonic(), "down for the test")
        during = ex.sched.unviable(set(MODELS) - lost)
        res = await ex.wait(run)
        return during, res, lost, router

    during, res, lost, router = asyncio.run(
        _serving(tmp_path, 5.0, _slow_featurizer(0.3, aembed=True), fn)
    )
    space = router.space
    full = router.route_texts([text]).mask[0]
    assert any(lost.isdisjoint(space.config_to_models(c).values()) for c in np.flatnonzero(full))
    assert during == []
    rec = res.receipt
    assert rec.routing.complete is True
    assert lost.isdisjoint(rec.configuration.values())


def test_the_scheduler_host_judges_a_run_when_its_routing_settles(tmp_path):
    """serve --ray: the host learns from a ``settle`` event that a run's routing is over,
    and judges that run then against the engines it holds healthy."""
    from aragog_jax.serving import load_runtime
    from aragog_jax.serving._remote import SchedulerHost

    async def go():
        srvs = [LoopbackServer(FakeEngine(m).app) for m in MODELS]
        urls = [await s.start() for s in srvs]
        _qwen_router_fleet(tmp_path, urls, MODELS)
        fleet = load_runtime(tmp_path / "fleet.toml")
        space = fleet.workflows[WF].space
        lost = set(space.config_to_models(space.c_max).values())
        cmax = np.zeros(space.num_configs, dtype=bool)
        cmax[space.c_max] = True
        wider = cmax.copy()
        off = [
            c
            for c in range(space.num_configs)
            if lost.isdisjoint(space.config_to_models(c).values())
        ]
        wider[off[0]] = True
        host = SchedulerHost(fleet, warm_up=False)
        await host.open()
        try:
            added = [("add", "x", WF, cmax, True, False), ("add", "w", WF, wider, True, False)]
            first = await host.exchange("r1", added, 0.0)
            for st in host.engines.values():
                if st.model in lost:
                    st.breaker.on_failure(time.monotonic(), "down for the test")
            second = await host.exchange("r1", [("settle", "x"), ("settle", "w")], 0.0)
            return first, second, host.stats()
        finally:
            await host.close()
            for srv in srvs:
                await srv.stop()

    first, second, stats = asyncio.run(go())
    assert first.failures == []
    assert [run_id for run_id, _ in second.failures] == ["x"]
    assert "no admitted configuration can run on the healthy engines" in second.failures[0][1]
    assert stats["runs"] == 1
