"""RouterWorker: batch routing on the loop, bucket warm-up."""

from __future__ import annotations

from aragog_jax.serving import load_runtime
from aragog_jax.serving._routing import RouterWorker

from .test_server import _qwen_router_fleet


def test_warm_up_runs_each_bucket_a_batch_can_use_once(tmp_path):
    models = ["Qwen2.5-7B-Instruct", "Qwen2.5-14B-Instruct", "Qwen2.5-32B-Instruct"]
    fleet = _qwen_router_fleet(
        tmp_path, ["http://127.0.0.1:9"] * 3, models
    )  # buckets (1, 8); no engine is called
    wf = fleet.workflows["self_refine_humaneval"]
    sizes: list[int] = []
    route_texts = wf.router.route_texts

    def recording(texts, budget_s=None):
        sizes.append(len(texts))
        return route_texts(texts, budget_s)

    wf.router.route_texts = recording
    worker = RouterWorker(wf)
    assert worker.warm_up(1) == 1 and sizes == [1]
    sizes.clear()
    assert worker.warm_up(5) == 2 and sizes == [1, 8]
    sizes.clear()
    assert worker.warm_up(10_000) == 2 and sizes == [1, 8]  # nothing past the largest bucket
    routed = worker.route_batch(["a", "b", "c"])
    assert sizes[-1] == 3 and len(routed) == 3
    assert all(r.router == "trained" and r.mask.shape == (wf.space.num_configs,) for r in routed)


def test_admit_all_workflow_needs_no_warm_up_and_admits_every_servable_configuration(tmp_path):
    from ._fleetkit import write_fleet

    fleet = load_runtime(
        write_fleet(
            tmp_path,
            [("e-small", "small", "http://127.0.0.1:9"), ("e-big", "big", "http://127.0.0.1:9")],
        )
    )
    wf = fleet.workflows["chain"]
    worker = RouterWorker(wf)
    assert worker.warm_up(256) == 0
    routed = worker.route_batch(["x", "y"])
    assert [r.router for r in routed] == ["admit-all"] * 2
    assert all(
        (r.mask == wf.servable).all() and r.num_admitted == wf.space.num_configs for r in routed
    )


def test_warm_up_of_a_router_off_the_loop_compiles_its_progressive_path(tmp_path):
    """A router off the loop scores in chunks (routing overlapped with queueing): warm-up
    compiles that path too, so the first request does not trace it."""
    models = ["Qwen2.5-7B-Instruct", "Qwen2.5-14B-Instruct", "Qwen2.5-32B-Instruct"]
    fleet = _qwen_router_fleet(tmp_path, ["http://127.0.0.1:9"] * 3, models)
    wf = fleet.workflows["self_refine_humaneval"]
    worker = RouterWorker(wf)
    worker.in_thread = True
    assert worker.warm_up(8) == 2
    traces = wf.router.num_traces
    steps = list(wf.router.route_progressive(wf.router.featurizer(["a", "b", "c"])))
    assert steps[-1].fraction_completed == 1.0 and wf.router.num_traces == traces
    first = worker.provisional()
    assert first.mask.sum() == 1 and first.mask[wf.space.c_max] and not first.complete
