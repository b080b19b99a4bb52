"""Routing overlapped with queueing: held requests, ``release`` and ``widen_mask``."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aragog_jax.errors import NoViableConfigurationError, SchedulerError
from aragog_jax.scheduler import LoadVector, Scheduler, make_policy

from ._kit import TwinPolicy, engines, mask_where, space

FANOUT = [("plan", ()), ("s1", ("plan",)), ("s2", ("plan",)), ("agg", ("s1", "s2"))]
FLEET = engines({"e7": ("7B", 100.0, 3), "e14": ("14B", 60.0, 2), "e32": ("32B", 30.0, 2)})
SP = space(FANOUT)


def _only_cmax(sp=SP) -> np.ndarray:
    mask = np.zeros(sp.num_configs, dtype=bool)
    mask[sp.c_max] = True
    return mask


def test_held_request_keeps_its_place_and_waits_for_release():
    sched = Scheduler(FLEET, TwinPolicy())
    sched.add_request("held", SP, _only_cmax(), held=True)
    sched.add_request("next", SP, _only_cmax())
    assert sched.is_held("held") and sched.ready_stages("held") == []
    plan = sched.schedule(LoadVector.idle(FLEET))
    assert [(a.request_id, a.stage_name) for a in plan.assignments] == [("next", "plan")]
    assert sched.release("held") == [0] and not sched.is_held("held")
    assert sched.release("held") == []  # not held any more: nothing to do
    plan = sched.schedule(LoadVector.idle(FLEET))
    assert [(a.request_id, a.model) for a in plan.assignments] == [("held", "32B")]


def test_widening_before_release_lets_the_first_stage_use_the_wider_set():
    sched = Scheduler(FLEET, TwinPolicy())
    sched.add_request("r", SP, _only_cmax(), held=True)
    sched.widen_mask("r", mask_where(SP, plan=["7B", "32B"]))
    sched.release("r")
    plan = sched.schedule(LoadVector.idle(FLEET))
    assert [a.model for a in plan.assignments] == ["7B"]  # the most throughput for one slot


def test_widening_after_a_stage_started_keeps_its_model():
    sched = Scheduler(FLEET, TwinPolicy())
    sched.add_request("r", SP, _only_cmax())
    (a,) = sched.schedule(LoadVector.idle(FLEET)).assignments
    assert a.model == "32B"
    sched.widen_mask("r", np.ones(SP.num_configs, dtype=bool))
    viable = sched.viable_mask("r")
    plan_col = SP.configs[:, 0]
    assert (plan_col[viable] == SP.model_names.index("32B")).all()
    assert viable.sum() == 3**3  # every choice of the three later stages
    sched.on_stage_finished("r", "plan")
    models = {a.model for a in sched.schedule(LoadVector.idle(FLEET)).assignments}
    assert models <= {"7B", "14B", "32B"} and models != {"32B"}


def test_a_narrower_mask_is_refused():
    sched = Scheduler(FLEET, TwinPolicy())
    wide = mask_where(SP, plan=["7B", "32B"])
    sched.add_request("r", SP, wide, held=True)
    with pytest.raises(SchedulerError, match="drops configurations"):
        sched.widen_mask("r", _only_cmax())
    with pytest.raises(SchedulerError, match="mask must be bool"):
        sched.widen_mask("r", np.ones(3, dtype=bool))
    np.testing.assert_array_equal(sched.viable_mask("r"), wide)


def test_per_input_repicks_only_before_its_first_stage():
    """per_input runs one configuration: widening re-picks the cheapest admitted one
    while nothing has started, and leaves it alone after."""
    sched = Scheduler(FLEET, make_policy("per_input"))
    sched.add_request("r", SP, _only_cmax(), held=True)
    sched.widen_mask("r", np.ones(SP.num_configs, dtype=bool))
    assert np.flatnonzero(sched.viable_mask("r")).tolist() == [0]  # cheapest first
    sched.add_request("s", SP, _only_cmax())
    sched.release("r")
    busy = LoadVector.observe(FLEET, {"e7": {"running": 3}, "e14": {"running": 2}})
    (a,) = sched.schedule(busy).assignments  # only the 32B engine has slots: s starts
    assert (a.request_id, a.model) == ("s", "32B")
    sched.widen_mask("s", np.ones(SP.num_configs, dtype=bool))
    assert np.flatnonzero(sched.viable_mask("s")).tolist() == [SP.c_max]


_STEP = st.one_of(
    st.tuples(st.just("widen"), st.lists(st.integers(0, SP.num_configs - 1), max_size=12)),
    st.tuples(st.just("round"), st.lists(st.integers(0, 3), min_size=3, max_size=3)),
    st.tuples(st.just("finish"), st.integers(0, 63)),
    st.tuples(st.just("fail"), st.integers(0, 63)),
    st.just(("release",)),
)


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    first=st.lists(st.integers(0, SP.num_configs - 1), max_size=10),
    steps=st.lists(_STEP, max_size=25),
)
def test_widening_never_removes_a_configuration(first, steps):
    """Whatever rounds, finishes, failures and releases happen between them, a widening
    never shrinks the viable mask, and the mask is always the router's mask narrowed by
    the models of the started stages and the failed pairs (nothing else)."""
    sched = Scheduler(FLEET, TwinPolicy(beam_width=2))
    routed = _only_cmax()
    routed[first] = True
    sched.add_request("r", SP, routed.copy(), held=True)
    failed: set[tuple[int, int]] = set()
    running: list[int] = []
    for step in steps:
        if not sched.is_queued("r"):
            break
        kind = step[0]
        if kind == "widen":
            before = sched.viable_mask("r")
            routed[step[1]] = True
            sched.widen_mask("r", routed.copy())
            assert (sched.viable_mask("r") >= before).all()
        elif kind == "round":
            load = LoadVector.observe(
                FLEET, {e.name: {"running": r} for e, r in zip(FLEET, step[1], strict=True)}
            )
            placed = sched.schedule(load).assignments
            assert not placed or not sched.is_held("r")
            running += [a.stage for a in placed]
        elif kind == "release":
            sched.release("r")
        elif running:
            s = running.pop(step[1] % len(running))
            if kind == "finish":
                sched.on_stage_finished("r", s)
            else:
                model = sched.realised_config("r")[SP.stage_names[s]]
                failed.add((s, SP.model_names.index(model)))
                engine = next(e.name for e in FLEET if e.model == model)
                try:
                    sched.on_stage_failed("r", s, engine)
                except NoViableConfigurationError:  # nothing left: the request left the queue
                    break
        if sched.is_queued("r") and not sched.is_done("r"):
            want = routed.copy()
            for name, model in sched.realised_config("r").items():
                want &= SP.configs[:, SP.stage_names.index(name)] == SP.model_names.index(model)
            for s, m in failed:
                want &= SP.configs[:, s] != m
            np.testing.assert_array_equal(sched.viable_mask("r"), want)
