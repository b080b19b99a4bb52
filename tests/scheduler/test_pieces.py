"""The scheduler's pieces behind their small interfaces: the curve cache keyed by engine,
plans with round ids, index-based stage queries, the ready count, and warm-up ranges."""

from __future__ import annotations

import numpy as np

from aragog_jax.scheduler import CompiledRounds, EngineLoad, LoadVector, Scheduler, make_policy
from aragog_jax.scheduler._cache import CurveCache
from aragog_jax.scheduler._policy import BeamPolicy

from ._kit import engines, space

DAG = [("a", ()), ("b", ("a",)), ("c", ("a",)), ("d", ("b", "c"))]
FLEET = engines({"e7": ("7B", 100.0, 8), "e14": ("14B", 60.0, 4), "e32": ("32B", 30.0, 4)})


def _with_curve(load: LoadVector, e: int, curve) -> LoadVector:
    engs = list(load.engines)
    old = engs[e]
    engs[e] = EngineLoad(old.name, old.model, old.saturation_batch, curve, running=old.running)
    return LoadVector(tuple(engs))


def test_curve_cache_is_keyed_by_engine_and_follows_a_new_curve():
    """Rows equal the direct computation; an engine whose curve changes (a new tuple with
    other values, or an equal tuple that is another object) gets rows of the curve it has."""
    load = LoadVector.observe(FLEET, {"e7": {"running": 3}, "e32": {"running": 1}})
    cache = CurveCache(len(FLEET), 100_000)
    np.testing.assert_array_equal(cache.gain_table(load, 64), load.gain_table(64))
    steeper = _with_curve(load, 0, ((0.0, 0.0), (8.0, 1600.0)))
    np.testing.assert_array_equal(cache.gain_table(steeper, 64), steeper.gain_table(64))
    assert not np.array_equal(steeper.gain_table(64), load.gain_table(64))
    same_values = _with_curve(load, 0, tuple(tuple(p) for p in FLEET[0].curve))
    np.testing.assert_array_equal(cache.gain_table(same_values, 64), load.gain_table(64))
    counts = np.array([2, 0, 1])
    assert cache.utilization(load, counts) == load.utilization(counts)
    assert cache.utilization(steeper, counts) == steeper.utilization(counts)
    assert cache.utilization(load, np.zeros(3, dtype=np.int64)) == 0.0


def test_host_curves_equal_the_round_tables_and_the_load_vector():
    """A host round's per-engine gain rows and U equal the round's gain table and
    ``LoadVector.utilization`` exactly, for loads that share some engines' rows with an
    earlier round, loads that grow an engine's line and loads past it, and after a curve
    changes (every row recomputed)."""
    cache = CurveCache(len(FLEET), 100_000)
    rng = np.random.default_rng(5)
    loads = [
        LoadVector.observe(FLEET, {"e7": {"running": r7}, "e32": {"running": r32}})
        for r7, r32 in ((3, 1), (3, 2), (0, 2), (7, 0), (300, 4050), (5000, 1))
    ]
    loads.append(_with_curve(loads[0], 1, ((0.0, 0.0), (4.0, 900.0))))
    for load in loads:
        host = cache.host(load, 64)
        assert host is cache.host(load, 64)  # remembered per loads
        table = cache.round(load, 64)
        assert host.gains == load.gain_table(64).tolist() == table.gain.tolist()
        assert host.capacity == load.capacity()
        for counts in ([0, 0, 0], [1, 0, 0], [2, 1, 3], *rng.integers(0, 9, (20, 3)).tolist()):
            want = load.utilization(np.array(counts))
            assert host.utilization(counts) == want == table.utilization(tuple(counts))


def test_assignments_are_frozen_values():
    """Assignment's own __init__ (the fields set at once) keeps the dataclass's
    behaviour: field order, equality, hash, repr, replace, pickling, and no writes."""
    import dataclasses
    import pickle

    from aragog_jax.scheduler import Assignment

    a = Assignment("r", 2, "b", "e7", "7B")
    assert [f.name for f in dataclasses.fields(a)] == list(vars(a))
    assert (a.request_id, a.stage, a.stage_name, a.engine, a.model) == ("r", 2, "b", "e7", "7B")
    assert a == Assignment("r", 2, "b", "e7", "7B") != Assignment("r", 3, "b", "e7", "7B")
    assert hash(a) == hash(Assignment("r", 2, "b", "e7", "7B"))
    assert repr(a) == "Assignment(request_id='r', stage=2, stage_name='b', engine='e7', model='7B')"
    assert dataclasses.replace(a, engine="e14").engine == "e14"
    assert pickle.loads(pickle.dumps(a)) == a
    try:
        a.stage = 3
    except dataclasses.FrozenInstanceError:
        pass
    else:
        raise AssertionError("Assignment is writable")


def test_plans_carry_round_ids_and_dump_the_replay_and_decision():
    sched = Scheduler(FLEET, "aragog", spaces=[space(DAG)])
    sched.add_request("r", space(DAG))
    plans = [sched.schedule(LoadVector.idle(FLEET)) for _ in range(3)]
    assert [p.round_id for p in plans] == [0, 1, 2]
    assert [p.num_items for p in plans] == [1, 0, 0]
    dump = plans[0].dump()
    assert dump == {
        "round_id": 0,
        "policy": "aragog",
        "round": plans[0].to_replay(),
        "decision": plans[0].decision(),
    }
    assert dump["decision"]["assignments"][0]["stage"] == 0


def test_a_plans_flexibility_is_computed_from_its_record_when_first_read():
    """F is not computed by the round (nothing in serving or the simulator reads it) but
    on first read, from the record: per request the configurations viable before the
    round that every placed item's model keeps, over the viable ones, averaged over the
    requests; the same on the host path and the arrays path."""
    sp = space(DAG)
    rng = np.random.default_rng(3)
    masks = {r: rng.random(sp.num_configs) < 0.6 for r in ("x", "y")}
    for small in (8, 0):
        sched = Scheduler(FLEET, BeamPolicy(4, small_items=small), spaces=[sp])
        for r, mask in masks.items():
            sched.add_request(r, sp, mask)
        for a in sched.schedule(LoadVector.idle(FLEET)).assignments:  # stage a of both
            sched.on_stage_finished(a.request_id, a.stage)
        before = {r: sched.viable_mask(r).copy() for r in masks}
        plan = sched.schedule(LoadVector.idle(FLEET))  # b and c of both: 4 items
        assert len(plan.assignments) == 4 and "flexibility" not in vars(plan)
        shares = []
        for r in masks:
            kept = before[r].copy()
            for a in plan.assignments:
                if a.request_id == r:
                    names = np.array(sp.model_names)[sp.configs[:, a.stage]]
                    kept &= names == a.model
            assert np.array_equal(kept, sched.viable_mask(r))  # what the commit narrowed
            shares.append(kept.sum() / before[r].sum())
        assert plan.flexibility == float(np.mean(shares)) < 1.0
        assert vars(plan)["flexibility"] == plan.flexibility  # kept once read


def test_stage_queries_are_indices_and_the_ready_count_follows_every_transition():
    sp = space(DAG)
    sched = Scheduler(FLEET, "aragog", spaces=[sp])
    sched.add_request("r", sp)
    sched.add_request("q", sp)
    assert sched.ready_stages("r") == [0] and sched.unstarted_stages("r") == [0, 1, 2, 3]
    assert sched.is_queued("r") and sched.space_of("r") is sp and sched.num_ready == 2
    plan = sched.schedule(LoadVector.idle(FLEET))
    assert sched.num_ready == 2 - len(plan.assignments) == 0
    sched.on_stage_finished("r", 0)
    assert sched.ready_stages("r") == [1, 2] and sched.num_ready == 2
    assert sched.unstarted_stages("r") == [1, 2, 3]
    (a, *_) = [a for a in sched.schedule(LoadVector.idle(FLEET)).assignments if a.request_id == "r"]
    assert sched.num_ready == int(np.count_nonzero(sched.tables.ready))
    sched.on_stage_failed("r", a.stage, a.engine)
    assert a.stage in sched.ready_stages("r")
    assert sched.num_ready == int(np.count_nonzero(sched.tables.ready))
    sched.cancel("q")
    sched.cancel("r")
    assert not sched.is_queued("r") and sched.num_ready == 0


def test_warmup_compiles_the_item_buckets_of_its_range_only():
    compiled = CompiledRounds()
    policy = BeamPolicy(2, compiled=compiled)
    sched = Scheduler(FLEET, policy, spaces=[space(DAG)])
    assert sched.warmup(64, min_items=32) == 2
    assert sorted(key[0][0] for key in compiled.buckets) == [32, 64]
    assert sched.warmup(16) == 1
    assert sorted(key[0][0] for key in compiled.buckets) == [16, 32, 64]
    assert Scheduler(FLEET, make_policy("brute_force")).warmup(64) == 0


def test_schedule_builds_assignments_plans_and_records_equal_to_their_constructors():
    """schedule() fills Assignment, Plan and RoundRecord without their constructors' field
    by field path (the instance dict at once): each equals the object the constructor
    builds from the same values, fields in order, with the same hash and repr."""
    import dataclasses

    from aragog_jax.scheduler import Assignment, Plan, RoundRecord

    sp = space(DAG)
    sched = Scheduler(FLEET, BeamPolicy(4, small_items=0), spaces=[sp])  # the arrays path
    for r in range(20):
        sched.add_request(r, sp)
    plan = sched.schedule(LoadVector.idle(FLEET))
    assert len(plan.assignments) == 16
    for a in plan.assignments:
        b = Assignment(*(getattr(a, f.name) for f in dataclasses.fields(Assignment)))
        assert list(vars(a)) == list(vars(b)) and vars(a) == vars(b)
        assert a == b and hash(a) == hash(b) and repr(a) == repr(b)
    twin = Plan(*(getattr(plan, f.name) for f in dataclasses.fields(Plan)))
    assert list(vars(twin)) == [f.name for f in dataclasses.fields(Plan)]
    assert repr(twin) == repr(plan) and twin.decision() == plan.decision()
    assert dataclasses.replace(plan, round_id=7).round_id == 7
    record = plan._record
    fields = [f.name for f in dataclasses.fields(RoundRecord)]
    assert list(vars(RoundRecord(*(getattr(record, f) for f in fields)))) == fields
    assert record.render() == plan.to_replay()


def test_valid_prefix_is_a_read_only_view_of_n_leading_trues():
    from aragog_jax.scheduler._tables import valid_prefix

    for size in (16, 64):
        for n in range(size + 1):
            got = valid_prefix(size, n)
            assert got.shape == (size,) and got.dtype == np.bool_ and not got.flags.writeable
            np.testing.assert_array_equal(got, np.arange(size) < n)


def test_loads_built_for_a_round_equal_the_checked_constructors():
    """``EngineLoad.of`` (no per-field checks) and ``LoadVector.ordered`` (names given)
    build what the checked constructors build: equal values, hashes and loads, and the
    scheduler takes the vector as it is when the names are its own."""
    fleet = engines({"a": ("7B", 100.0, 4), "b": ("14B", 60.0, 3)})
    fast = tuple(EngineLoad.of(e, 3, 1, 0.25, True, 2) for e in fleet)
    slow = tuple(
        EngineLoad(
            name=e.name,
            model=e.model,
            saturation_batch=e.saturation_batch,
            curve=e.curve,
            running=3,
            waiting=1,
            kv_usage=0.25,
            healthy=True,
            free_slots=2,
        )
        for e in fleet
    )
    assert fast == slow and [hash(x) for x in fast] == [hash(x) for x in slow]
    assert [x.load for x in fast] == [4, 4]
    names = tuple(e.name for e in fleet)
    vector = LoadVector.ordered(fast, names)
    assert vector == LoadVector(slow) and vector.names == names
    assert vector.in_order(names) is vector
    assert vector.in_order(names[::-1]).names == names[::-1]
    # Without free slots given, ``of`` derives them as the constructor does.
    derived_free = []
    for running, waiting, kv, healthy in (
        (1, 0, 0.1, True),
        (3, 1, 0.25, True),
        (90, 40, 0.97, True),
        (0, 0, 0.0, False),
    ):
        for e in fleet:
            derived = EngineLoad.of(e, running, waiting, kv, healthy)
            checked = EngineLoad.observe(
                e, running=running, waiting=waiting, kv_usage=kv, healthy=healthy
            )
            assert derived == checked and derived.free_slots == checked.free_slots
            derived_free.append(derived.free_slots)
    assert max(derived_free) > 0 and min(derived_free) == 0
