"""The scheduler state machine: DESIGN §5 examples, ordering, consistency, failures, errors."""

from __future__ import annotations

import numpy as np
import pytest

from aragog_jax.errors import NoViableConfigurationError, SchedulerError
from aragog_jax.scheduler import (
    BeamPolicy,
    CompiledRounds,
    EngineInfo,
    EngineLoad,
    LoadVector,
    PolicyName,
    Scheduler,
    make_policy,
)
from aragog_jax.scheduler._replay import replay_round
from aragog_jax.spec import CurvePoint, EngineProfile

from ._kit import engines, mask_where, space

ONE = [("answer", ())]
# a -> {b, c -> d} -> e: after a, b (depth 1) and c (depth 2) are ready in parallel.
DAG = [("a", ()), ("b", ("a",)), ("c", ("a",)), ("d", ("c",)), ("e", ("b", "d"))]
FANOUT = [("plan", ()), ("s1", ("plan",)), ("s2", ("plan",)), ("agg", ("s1", "s2"))]


def _fig9():
    fleet = engines({"e7": ("7B", 100.0, 32), "e14": ("14B", 60.0, 16), "e32": ("32B", 30.0, 8)})
    load = LoadVector.observe(
        fleet, {"e7": {"running": 16}, "e14": {"running": 16}, "e32": {"running": 4}}
    )
    return fleet, load


def test_fig9_beam_assigns_all_three_to_7b():
    fleet, load = _fig9()
    assert [e.free_slots for e in load.engines] == [16, 0, 4]
    sp = space(ONE)
    sched = Scheduler(fleet, "aragog", beam_width=4)
    sched.add_request("R1", sp, mask_where(sp, answer=["7B"]))
    sched.add_request("R2", sp, mask_where(sp, answer=["7B", "14B"]))
    sched.add_request("R3", sp, mask_where(sp, answer=["7B", "14B", "32B"]))
    plan = sched.schedule(load)
    assert [(a.request_id, a.engine, a.model) for a in plan.assignments] == [
        ("R1", "e7", "7B"),
        ("R2", "e7", "7B"),
        ("R3", "e7", "7B"),
    ]
    assert plan.skipped == ()
    # U: three sequences on the 7B engine, 300 tokens/s over a fleet capacity of 5,200.
    assert plan.utilization == pytest.approx(300.0 / (3200 + 960 + 240))
    assert sched.realised_config("R3") == {"answer": "7B"}


def test_depth_ordering_deepest_first_within_a_request():
    sp = space(DAG)
    fleet = engines({"e7": ("7B", 100.0, 8)})
    sched = Scheduler(fleet)
    sched.add_request("r", sp)
    plan = sched.schedule(LoadVector.idle(fleet))
    assert [a.stage_name for a in plan.assignments] == ["a"]
    sched.on_stage_finished("r", "a")
    assert sched.stage_status("r") == {
        "a": "done",
        "b": "ready",
        "c": "ready",
        "d": "waiting",
        "e": "waiting",
    }
    # One free slot: the deeper branch (c, depth 2) goes before b (depth 1).
    one_slot = LoadVector.observe(fleet, {"e7": {"running": 7}})
    plan = sched.schedule(one_slot)
    assert [a.stage_name for a in plan.assignments] == ["c"]
    assert [s.stage_name for s in plan.skipped] == ["b"]
    sched.on_stage_finished("r", "c")
    plan = sched.schedule(LoadVector.idle(fleet))
    assert [a.stage_name for a in plan.assignments] == [
        "b",
        "d",
    ]  # both depth 1: lower stage index first


def test_fifo_across_requests_keeps_position_while_running():
    sp = space([("x", ()), ("y", ("x",))])
    fleet = engines({"e7": ("7B", 100.0, 4)})
    sched = Scheduler(fleet)
    for r in ("A", "B", "C"):
        sched.add_request(r, sp)
    plan = sched.schedule(LoadVector.observe(fleet, {"e7": {"running": 2}}))
    assert [a.request_id for a in plan.assignments] == ["A", "B"]
    assert [s.request_id for s in plan.skipped] == ["C"]
    sched.on_stage_finished("B", "x")
    plan = sched.schedule(LoadVector.observe(fleet, {"e7": {"running": 3}}))
    assert [a.request_id for a in plan.assignments] == ["B"]  # B's y is ahead of C's x
    assert list(sched.request_ids()) == ["A", "B", "C"]


def test_parallel_stages_of_one_request_stay_consistent():
    sp = space(FANOUT)
    # Admitted: s1 and s2 on the same model (so choosing them independently could break it).
    same = sp.configs[:, sp.stage_names.index("s1")] == sp.configs[:, sp.stage_names.index("s2")]
    fleet = engines({"e7": ("7B", 10.0, 8), "e14": ("14B", 100.0, 8), "e32": ("32B", 30.0, 8)})
    for width in (1, 4):
        sched = Scheduler(fleet, beam_width=width)
        sched.add_request("r", sp, same)
        sched.schedule(LoadVector.idle(fleet))
        sched.on_stage_finished("r", "plan")
        # e14 has one free slot and the best gain (100 > 2 x 30 on e32): s1 takes it, and
        # s2 must follow to 14B and wait rather than go to a free 32B or 7B engine.
        load = LoadVector.observe(fleet, {"e14": {"running": 7}})
        plan = sched.schedule(load)
        chosen = {a.stage_name: a.model for a in plan.assignments}
        assert chosen == {"s1": "14B"}, chosen
        assert [s.stage_name for s in plan.skipped] == ["s2"]
        assert sched.viable_mask("r").any()
        plan = sched.schedule(LoadVector.idle(fleet))
        assert [(a.stage_name, a.model) for a in plan.assignments] == [("s2", "14B")]


def test_finish_to_done_and_realised_config():
    sp = space(FANOUT)
    fleet = engines({"e7": ("7B", 100.0, 8), "e32": ("32B", 50.0, 8)})
    sched = Scheduler(fleet)
    sched.add_request(7, sp, mask_where(sp, agg=["32B"]))
    idle = LoadVector.idle(fleet)
    for stages in (["plan"], ["s1", "s2"], ["agg"]):
        plan = sched.schedule(idle)
        assert sorted(a.stage_name for a in plan.assignments) == stages
        done = [sched.on_stage_finished(7, a.stage) for a in plan.assignments]
    assert done[-1] is True and sched.is_done(7) and sched.num_in_flight == 0
    cfg = sched.realised_config(7)
    assert cfg["agg"] == "32B" and set(cfg) == set(sp.stage_names)
    assert sched.schedule(idle).assignments == ()


def test_failed_stage_excludes_its_model_and_replans():
    sp = space(ONE)
    fleet = engines({"e7": ("7B", 100.0, 8), "e7b": ("7B", 100.0, 8), "e14": ("14B", 10.0, 8)})
    sched = Scheduler(fleet)
    sched.add_request("r", sp, mask_where(sp, answer=["7B", "14B"]))
    idle = LoadVector.idle(fleet)
    (a,) = sched.schedule(idle).assignments
    assert a.model == "7B"
    sched.on_stage_failed("r", "answer", a.engine)
    assert sched.stage_status("r") == {"answer": "ready"}
    (b,) = sched.schedule(idle).assignments
    assert b.model == "14B"  # the 7B replica is excluded too: the model failed for this stage
    with pytest.raises(NoViableConfigurationError, match="no admitted configuration left"):
        sched.on_stage_failed("r", "answer", "e14")
    with pytest.raises(SchedulerError, match="unknown request"):
        sched.is_done("r")


def test_cancel_removes_request():
    sp = space(ONE)
    fleet = engines({"e7": ("7B", 100.0, 8)})
    sched = Scheduler(fleet)
    sched.add_request("a", sp)
    sched.add_request("b", sp)
    sched.cancel("a")
    plan = sched.schedule(LoadVector.idle(fleet))
    assert [x.request_id for x in plan.assignments] == ["b"]
    with pytest.raises(SchedulerError, match="unknown request 'a'"):
        sched.on_stage_finished("a", 0)


def test_invalid_calls_say_why():
    sp = space(ONE)
    fleet = engines({"e7": ("7B", 100.0, 8), "e14": ("14B", 10.0, 8)})
    sched = Scheduler(fleet)
    with pytest.raises(SchedulerError, match="unknown request 'nope'"):
        sched.on_stage_finished("nope", 0)
    sched.add_request("r", sp)
    with pytest.raises(SchedulerError, match="already added"):
        sched.add_request("r", sp)
    with pytest.raises(SchedulerError, match=r"mask must be bool\[3\]"):
        sched.add_request("bad", sp, np.ones(4, dtype=bool))
    with pytest.raises(SchedulerError, match="it is ready, not running"):
        sched.on_stage_finished("r", "answer")
    with pytest.raises(SchedulerError, match="unknown stage 'x'"):
        sched.on_stage_finished("r", "x")
    with pytest.raises(SchedulerError, match="stage index 3 outside"):
        sched.on_stage_finished("r", 3)
    other = engines({"e7": ("7B", 100.0, 8), "zzz": ("14B", 10.0, 8)})
    with pytest.raises(SchedulerError, match=r"unknown engines \['zzz'\]"):
        sched.schedule(LoadVector.idle(other))
    with pytest.raises(SchedulerError, match=r"missing \['e14'\]"):
        sched.schedule(LoadVector.idle(fleet[:1]))
    (a,) = sched.schedule(LoadVector.idle(fleet)).assignments
    with pytest.raises(SchedulerError, match="runs on"):
        sched.on_stage_failed("r", 0, "e14" if a.engine == "e7" else "e7")
    with pytest.raises(SchedulerError, match="unknown engine 'x'"):
        sched.on_stage_failed("r", 0, "x")
    sched.on_stage_finished("r", 0)
    with pytest.raises(SchedulerError, match="unknown request"):  # finished twice: it is done
        sched.on_stage_finished("r", 0)
    with pytest.raises(SchedulerError, match="unknown policy 'fastest'"):
        make_policy("fastest")
    with pytest.raises(SchedulerError, match="duplicate engine names"):
        Scheduler(fleet + fleet)
    with pytest.raises(SchedulerError, match="beam_width must be >= 1"):
        Scheduler(fleet, beam_width=0)


def test_finishing_a_stage_twice_in_a_running_request():
    sp = space([("x", ()), ("y", ())])
    fleet = engines({"e7": ("7B", 100.0, 8)})
    sched = Scheduler(fleet)
    sched.add_request("r", sp)
    sched.schedule(LoadVector.idle(fleet))
    sched.on_stage_finished("r", "x")
    with pytest.raises(SchedulerError, match="cannot finish stage 'x' of request 'r': it is done"):
        sched.on_stage_finished("r", "x")


def test_unserved_models_are_dropped_and_empty_masks_refused():
    sp = space(ONE)
    fleet = engines({"e7": ("7B", 100.0, 8)})
    sched = Scheduler(fleet)
    with pytest.raises(NoViableConfigurationError, match="can run on engines"):
        sched.add_request("r", sp, mask_where(sp, answer=["32B"]))
    sched.add_request("ok", sp)
    assert sched.viable_mask("ok").sum() == 1


def test_second_round_in_a_bucket_does_not_trace():
    sp = space(FANOUT)
    fleet = engines({"e7": ("7B", 100.0, 64), "e14": ("14B", 60.0, 64), "e32": ("32B", 30.0, 64)})
    compiled = CompiledRounds()
    sched = Scheduler(fleet, BeamPolicy(4, compiled=compiled), spaces=[sp])
    assert sched.warmup(max_items=32) == 2  # buckets of 16 and 32 items, ahead of time
    assert compiled.num_traces == 2
    for r in range(3):
        sched.add_request(r, sp)
    sched.schedule(LoadVector.idle(fleet))
    assert compiled.num_traces == 2
    for r in range(3, 12):  # a different number of items, same 16-item bucket
        sched.add_request(r, sp)
    for r in range(3):
        sched.on_stage_finished(r, "plan")
    plan = sched.schedule(LoadVector.observe(fleet, {"e7": {"running": 60}}))
    assert len(plan.assignments) > 3
    assert compiled.num_traces == 2 and len(compiled.buckets) == 2


def test_per_input_and_per_workflow_fix_one_configuration():
    sp = space([("x", ()), ("y", ("x",))])
    fleet = engines({"e7": ("7B", 100.0, 8), "e14": ("14B", 100.0, 8), "e32": ("32B", 100.0, 8)})
    mask = mask_where(sp, x=["14B", "32B"])
    sched = Scheduler(fleet, "per_input")
    sched.add_request("r", sp, mask)
    assert sched.viable_mask("r").sum() == 1
    cheapest = int(np.flatnonzero(mask)[0])
    assert sched.viable_mask("r")[cheapest]
    fixed = {"x": "32B", "y": "7B"}
    sched = Scheduler(fleet, "per_workflow", per_workflow={"wf": fixed})
    sched.add_request("r", sp, mask)
    (a,) = sched.schedule(LoadVector.idle(fleet)).assignments
    assert a.model == "32B"
    with pytest.raises(SchedulerError, match="no configuration for workflow 'other'"):
        sched.add_request("o", space(ONE, name="other"))
    with pytest.raises(SchedulerError, match="needs per_workflow"):
        Scheduler(fleet, "per_workflow")


def test_brute_force_policy_matches_or_beats_beam_and_refuses_big_rounds():
    sp = space(FANOUT)
    fleet = engines({"e7": ("7B", 100.0, 8), "e14": ("14B", 60.0, 8), "e32": ("32B", 30.0, 8)})
    load = LoadVector.observe(fleet, {"e7": {"running": 6}, "e14": {"running": 7}})
    results = {}
    for name in ("aragog", "brute_force"):
        sched = Scheduler(fleet, name)
        for r in range(4):
            sched.add_request(r, sp, np.random.default_rng(r).random(sp.num_configs) < 0.4)
        results[name] = sched.schedule(load).utilization
    assert results["brute_force"] >= results["aragog"] - 1e-9
    sched = Scheduler(fleet, make_policy(PolicyName.BRUTE_FORCE, brute_force_max_items=2))
    for r in range(3):
        sched.add_request(r, sp)
    with pytest.raises(SchedulerError, match="at most 2 ready items"):
        sched.schedule(load)


@pytest.mark.parametrize("policy", ["aragog", "greedy"])
def test_plan_replays_to_the_same_decision(policy):
    sp = space(FANOUT)
    fleet = engines(
        {
            "e7": ("7B", 100.0, 8),
            "e7b": ("7B", 90.0, 4),
            "e14": ("14B", 60.0, 8),
            "e32": ("32B", 30.0, 8),
        }
    )
    sched = Scheduler(fleet, policy)
    rng = np.random.default_rng(0)
    for r in range(6):
        sched.add_request(f"r{r}", sp, rng.random(sp.num_configs) < 0.3)
    load = LoadVector.observe(fleet, {"e7": {"running": 5}, "e14": {"running": 6}})
    for _ in range(3):
        plan = sched.schedule(load)
        doc = plan.to_replay()
        assert replay_round(doc, make_policy(policy)) == plan.decision()
        for a in plan.assignments:
            sched.on_stage_finished(a.request_id, a.stage)


def test_load_vector_from_profile_and_observations():
    profile = EngineProfile(
        model="7B",
        hardware="H100",
        tensor_parallel=1,
        kind="derived",
        saturation_batch=8,
        kv_capacity_tokens=1000,
        prefill_tokens_per_s=1.0,
        decode_base_s=0.01,
        decode_per_seq_s=0.001,
        decode_per_ctx_token_s=0.0,
        curve=[CurvePoint(1, 50.0), CurvePoint(8, 300.0)],
    )
    info = EngineInfo.from_profile("e", profile)
    assert info.model == "7B" and info.saturation_batch == 8 and info.curve[-1] == (8.0, 300.0)
    assert EngineLoad.observe(info, running=3, waiting=2).free_slots == 3
    assert EngineLoad.observe(info, running=3, healthy=False).free_slots == 0
    assert EngineLoad.observe(info, running=1, kv_usage=0.995).free_slots == 0
    assert EngineLoad.observe(info, running=20).free_slots == 0
    lv = LoadVector.observe([info], {"e": {"running": 4}})
    # f(4) = 50 + 3/7 * 250; f(6) = 50 + 5/7 * 250; capacity 300.
    assert lv.utilization(np.array([2])) == pytest.approx((2 / 7 * 250) / 300)
    with pytest.raises(SchedulerError, match="unknown engines"):
        LoadVector.observe([info], {"x": {}})
    with pytest.raises(SchedulerError, match="concurrency must strictly increase"):
        EngineInfo("e", "7B", 8, ((4, 1.0), (2, 2.0)))


def test_finished_requests_are_forgotten_oldest_first(monkeypatch):
    import aragog_jax.scheduler._scheduler as module

    monkeypatch.setattr(module, "MAX_FINISHED", 2)
    sp = space(FANOUT)
    fleet = engines({"e7": ("7B", 100.0, 8)})
    sched = Scheduler(fleet)
    idle = LoadVector.idle(fleet)
    for rid in ("A", "B", "C"):
        sched.add_request(rid, sp)
        while not sched.is_done(rid):
            for a in sched.schedule(idle).assignments:
                # the stage as an int, a NumPy int and a name: the same transition
                stage = {"plan": a.stage, "s1": np.int64(a.stage), "s2": a.stage_name}.get(
                    a.stage_name, a.stage
                )
                sched.on_stage_finished(rid, stage)
    assert sched.realised_config("B") == dict.fromkeys(sp.stage_names, "7B")
    assert sched.is_done("C")
    with pytest.raises(SchedulerError, match="unknown request 'A'"):
        sched.is_done("A")  # the oldest of three, over the limit of two
    sched.add_request("A", sp)  # forgotten, so its id may come again
    with pytest.raises(SchedulerError, match="already added"):
        sched.add_request("C", sp)


def test_per_workflow_admits_a_fresh_mask_every_time():
    sp = space(ONE)
    policy = make_policy("per_workflow", per_workflow={sp.workflow: 1})
    first = policy.admit(sp, np.ones(sp.num_configs, dtype=bool))
    first[:] = True  # a caller writing into its mask changes no later answer
    again = policy.admit(sp, np.ones(sp.num_configs, dtype=bool))
    assert np.flatnonzero(again).tolist() == [1]
