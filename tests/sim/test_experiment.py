"""Sweep logic the paper reproduction stands on: dense rate placement, latency at sustained
rates, merged sweeps, per_input-router, per_workflow's selection split, constrained spaces."""

from __future__ import annotations

import numpy as np
import pytest

from aragog_jax.data import AccuracyDataset
from aragog_jax.errors import AragogError
from aragog_jax.sim import SweepConfig, constrained_variant, load_setup, run_sweep
from aragog_jax.sim._experiment import Masks, knee_curves, merge_sweeps, refine_rates, run_dense
from aragog_jax.sim._setup import selection_rows
from aragog_jax.sim._summary import highest_sustained_index, latency_at_rates
from aragog_jax.space import build_space
from aragog_jax.spec import family_pool, load_models, load_workflow
from aragog_jax.spec._load import WORKFLOWS_DIR

WF = "self_refine_humaneval"


def _curve(rates, thr, p50=None):
    p50 = p50 or [1.0 + i for i in range(len(rates))]
    return [
        {
            "rate": r,
            "throughput": t,
            "latency": {"mean": lat, "p25": 0.5 * lat, "p50": lat, "p95": 2 * lat},
        }
        for r, t, lat in zip(rates, thr, p50, strict=True)
    ]


def test_refine_places_rates_inside_every_knee_bracket():
    coarse = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
    a = _curve(
        coarse, [1.0, 2.0, 4.0, 7.5, 9.0, 9.0]
    )  # sustains up to 8 (7.5 >= 7.2): knee in (8, 16)
    b = _curve(coarse, [1.0, 2.0, 3.0, 3.0, 3.0, 3.0])  # sustains up to 2: knee in (2, 4)
    extra = refine_rates(coarse, [a, b], per_knee=2, min_rates=8)
    assert extra == (
        2.52,
        3.175,
        10.079,
        12.699,
    )  # 2 * 2^(1/3), 2 * 2^(2/3), 8 * 2^(1/3), 8 * 2^(2/3)
    assert extra == refine_rates(
        coarse, [b, a], per_knee=2, min_rates=8
    )  # order of curves does not matter
    # The same bracket from two policies is refined once.
    assert refine_rates(coarse, [a, a], per_knee=2, min_rates=8) == (10.079, 12.699)


def test_refine_handles_policies_that_sustain_none_or_all_and_fills_to_min_rates():
    coarse = (2.0, 4.0, 8.0)
    none = _curve(coarse, [0.5, 0.5, 0.5])  # knee below the lowest rate: bracket (1, 2)
    every = _curve(coarse, [2.0, 4.0, 8.0])  # no knee inside the sweep: no bracket
    assert refine_rates(coarse, [every], per_knee=2, min_rates=3) == ()
    assert refine_rates(coarse, [none], per_knee=1, min_rates=3) == (1.414,)
    # Fewer than min_rates: the widest gap by ratio gets its geometric midpoint, repeatedly.
    extra = refine_rates(coarse, [every], per_knee=2, min_rates=6)
    assert len(coarse) + len(extra) == 6 and extra == (
        2.828,
        3.363,
        5.657,
    )  # 4 / 2.828 > 2.828 / 2 after rounding
    with pytest.raises(AragogError, match="cover the coarse rates"):
        refine_rates(coarse, [_curve((2.0, 4.0), [2.0, 4.0])])


def test_latency_at_the_highest_rate_every_policy_sustains_and_at_aragogs():
    rates = (1.0, 2.0, 4.0, 8.0)
    pols = {
        "aragog": {"per_rate": _curve(rates, [1.0, 2.0, 4.0, 7.5], p50=[1.0, 1.0, 2.0, 3.0])},
        "per_input": {"per_rate": _curve(rates, [1.0, 2.0, 3.0, 3.0], p50=[2.0, 2.0, 8.0, 30.0])},
        "per_workflow": {
            "per_rate": _curve(rates, [1.0, 1.5, 1.5, 1.5], p50=[4.0, 20.0, 40.0, 60.0])
        },
    }
    assert highest_sustained_index(pols["per_workflow"]["per_rate"]) == 0
    out = latency_at_rates(pols)
    assert (
        out["common"]["rate"] == 1.0 and out["common"]["index"] == 0
    )  # per_workflow sustains only 1 req/s
    assert out["aragog"]["rate"] == 8.0 and out["aragog"]["sustained"] == {
        "aragog": True,
        "per_input": False,
        "per_workflow": False,
    }
    assert out["common"]["aragog_change_pct"]["per_input"]["p50"] == pytest.approx(-50.0)
    assert out["aragog"]["aragog_change_pct"]["per_workflow"]["p95"] == pytest.approx(-95.0)
    assert set(out["common"]["latency"]["per_input"]) == {"mean", "p25", "p50", "p95"}
    # No rate every policy sustains: reported as None, not a wrong rate.
    pols["per_workflow"]["per_rate"] = _curve(rates, [0.5, 0.5, 0.5, 0.5])
    assert latency_at_rates(pols)["common"] is None
    # Policies on different grids cannot be compared rate by rate.
    pols["per_workflow"]["per_rate"] = _curve((1.0, 2.0, 4.0, 9.0), [1.0, 1.5, 1.5, 1.5])
    assert latency_at_rates(pols) == {}


def _sweep(**kw):
    base = dict(
        policies=("aragog", "per_input"),
        duration_s=8.0,
        round_interval_s=0.1,
        round_cost_s=0.001,
        route_cost_s=0.0,
        router="oracle",
    )
    base.update(kw)
    return SweepConfig(**base)


def test_per_input_router_runs_the_cheapest_configuration_the_router_admits(setup):
    rng = np.random.default_rng(0)
    n, c = setup.labels.shape
    router = rng.random((n, c)) < 0.3
    router[:, setup.space.c_max] = True  # a calibrated router always keeps c_max
    masks = Masks(router=router, oracle=setup.labels, source="router:test", route_cost_s=0.002)
    summ = run_sweep(
        setup,
        _sweep(policies=("per_input", "per_input-router"), rates=(3.0,)),
        progress=False,
        keep_runs=True,
        masks=masks,
    )
    for pol, mask in (("per_input", setup.labels), ("per_input-router", router)):
        res = summ["_runs"][pol][0]
        done = res.config_idx >= 0
        cheapest = np.argmax(mask[res.rows[done]], axis=1)  # configurations are sorted by FLOPs
        assert (res.config_idx[done] == cheapest).all()
    assert summ["_runs"]["per_input-router"][0].route_s[0] == 0.002  # routing is charged ...
    assert summ["_runs"]["per_input"][0].route_s[0] == 0.0  # ... only where a router decides
    assert summ["policies"]["per_input-router"]["masks"] == "router:test"


@pytest.mark.slow
def test_dense_sweep_shares_one_grid_across_arms_and_merges(dataset_dir):
    # Two arms on the 4-GPU fleet (~19 req/s at most): 2 req/s is light load, 25 req/s
    # overloads both; beam width 1 for both keeps the compiled buckets few.
    setup4 = load_setup(WF, "qwen", gpus=4, dataset=dataset_dir)
    sweep = _sweep(
        rates=(2.0, 25.0), dense=True, per_knee=1, min_rates=4, duration_s=24.0, warmup_s=8.0
    )
    (a, b) = run_dense(
        [(setup4, ("per_input",)), (setup4, ("per_workflow",))], sweep, progress=False
    )
    assert a["rates"] == b["rates"] and len(a["rates"]) == 4
    assert (
        a["rate_grid"]["coarse"] == [2.0, 25.0] and 7.071 in a["rate_grid"]["added"]
    )  # sqrt(2 * 25)
    for summ, p in ((a, "per_input"), (b, "per_workflow")):
        pr = summ["policies"][p]["per_rate"]
        rates = [r["rate"] for r in pr]
        assert rates == sorted(rates) == summ["rates"]
        # max_throughput and sustained_rate are recomputed over the merged rates.
        assert summ["policies"][p]["max_throughput"] == max(r["throughput"] for r in pr)
        i = highest_sustained_index(pr)
        sustained = summ["policies"][p]["sustained_rate"]
        assert sustained == rates[i] if i is not None else np.isnan(sustained)
    assert (
        highest_sustained_index(a["policies"]["per_input"]["per_rate"]) is not None
    )  # 2 req/s is light load
    with pytest.raises(AragogError, match="same policies"):
        merge_sweeps(a, b)


def test_per_workflow_picks_on_calibration_never_on_test(dataset_dir):
    s = load_setup(WF, "qwen", dataset=dataset_dir)
    rows, note = selection_rows(s.dataset, min_inputs=500)  # 120 inputs: calibration + train
    splits = np.asarray(s.dataset.splits)
    assert set(splits[rows]) == {"calibration", "train"} and "test" not in set(splits[rows])
    assert rows.size == (splits != "test").sum() and "calibration + train" in note
    cal, note = selection_rows(s.dataset, min_inputs=1)
    assert set(splits[cal]) == {"calibration"} and note.startswith("calibration split")
    # The choice follows the selection rows: make c_max the only accurate configuration on
    # the test split and a cheap one tie elsewhere; per_workflow must pick the cheap one.
    ds = s.dataset
    scores = np.zeros_like(ds.scores)
    scores[:, s.space.c_max] = 1.0
    scores[splits != "test", 0] = 1.0
    tweaked = AccuracyDataset(
        ids=ds.ids,
        texts=ds.texts,
        splits=ds.splits,
        tokens=ds.tokens,
        scores=scores,
        meta=dict(ds.meta),
    )
    s.dataset = tweaked
    summ = run_sweep(s, _sweep(policies=("per_workflow",), rates=(2.0,)), progress=False)
    assert summ["per_workflow_config"] == s.space.config_to_models(0)
    assert "calibration" in summ["per_workflow_selected_on"]


@pytest.mark.parametrize(
    "name, ties",
    [
        ("self_refine_humaneval", {"critique": "refine"}),
        ("self_refine_squad", {"critique": "refine"}),
        ("text_to_sql_bird", {"refine": "sql"}),
        ("voting_mmlu_pro", {"voter_2": "voter_1", "voter_3": "voter_1", "voter_4": "voter_1"}),
        ("decomposition_strategyqa", {"solver_2": "solver_1", "solver_3": "solver_1"}),
    ],
)
def test_every_shipped_workflow_has_a_constrained_space(name, ties):
    catalog = load_models()
    wf = load_workflow(WORKFLOWS_DIR / f"{name}.toml", catalog)
    var = constrained_variant(wf)
    assert {st.name: st.same_model_as for st in var.stage if st.same_model_as} == ties
    full, small = (
        build_space(wf, family_pool(catalog, "qwen")),
        build_space(var, family_pool(catalog, "qwen")),
    )
    assert small.num_configs == full.num_configs // 3 ** len(ties)
    for a, b in ties.items():
        i, j = small.stage_names.index(a), small.stage_names.index(b)
        assert (small.configs[:, i] == small.configs[:, j]).all()


def test_yardstick_policies_schedule_over_the_yardstick_masks_and_are_charged_routing(setup):
    rng = np.random.default_rng(1)
    n, c = setup.labels.shape
    router = rng.random((n, c)) < 0.3
    yard = rng.random((n, c)) < 0.3
    router[:, setup.space.c_max] = yard[:, setup.space.c_max] = True
    masks = Masks(
        router=router,
        oracle=setup.labels,
        source="router:test",
        route_cost_s=0.002,
        yardstick=yard,
        yardstick_source="yardstick:test",
    )
    pols = ("per_input-router", "per_input-yardstick", "aragog-yardstick")
    summ = run_sweep(
        setup,
        _sweep(policies=pols, rates=(3.0,)),
        progress=False,
        keep_runs=True,
        masks=masks,
    )
    for pol, mask in (("per_input-router", router), ("per_input-yardstick", yard)):
        res = summ["_runs"][pol][0]
        done = res.config_idx >= 0
        assert (res.config_idx[done] == np.argmax(mask[res.rows[done]], axis=1)).all()
    res = summ["_runs"]["aragog-yardstick"][0]
    done = res.config_idx >= 0
    assert done.any() and yard[res.rows[done], res.config_idx[done]].all()  # only admitted ones
    for p in ("per_input-yardstick", "aragog-yardstick"):
        assert summ["_runs"][p][0].route_s[0] == 0.002
        assert summ["policies"][p]["masks"] == "yardstick:test"
    assert summ["policies"]["per_input-yardstick"]["admitted"] is None  # a fixed configuration
    assert summ["policies"]["aragog-yardstick"]["admitted"]["mean"] == pytest.approx(
        yard[setup.rows].sum(axis=1).mean()
    )
    with pytest.raises(AragogError, match="yardstick router's masks"):
        run_sweep(
            setup,
            _sweep(policies=("aragog-yardstick",), rates=(3.0,)),
            progress=False,
            masks=Masks(router, setup.labels, "router:test", 0.0),
        )


def test_diagnostic_policies_neither_place_knees_nor_move_the_common_rate():
    rates = (1.0, 2.0, 4.0, 8.0)
    pols = {
        "aragog": {"per_rate": _curve(rates, [1.0, 2.0, 4.0, 7.5])},
        "per_input": {"per_rate": _curve(rates, [1.0, 2.0, 4.0, 3.0])},
        "aragog-yardstick": {"per_rate": _curve(rates, [0.5, 0.5, 0.5, 0.5])},  # sustains none
    }
    out = latency_at_rates(pols)
    assert out["common"]["rate"] == 4.0  # without the diagnostic arm it would be None
    assert out["common"]["sustained"]["aragog-yardstick"] is False  # still reported
    assert "aragog-yardstick" in out["aragog"]["aragog_change_pct"]
    summ = [{"policies": pols}]
    assert [id(c) for c in knee_curves(summ)] == [
        id(pols["aragog"]["per_rate"]),
        id(pols["per_input"]["per_rate"]),
    ]
