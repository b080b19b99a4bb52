"""The host path for small rounds returns exactly what the compiled round returns."""

from __future__ import annotations

import collections
import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aragog_jax.errors import NoViableConfigurationError
from aragog_jax.kernels import SHARE_SCALE
from aragog_jax.scheduler import (
    COMPILED_PAPER,
    COMPILED_SCARCE,
    SMALL_ROUND_ITEMS,
    BeamPolicy,
    LoadVector,
    RoundArrays,
    Scheduler,
    make_policy,
    pad_round,
    replay_round,
    small_round,
)
from aragog_jax.scheduler._random import random_round
from tests.scheduler._kit import engines, space


def _assert_same(arrays: RoundArrays, beam: int, reserve: bool) -> None:
    compiled = COMPILED_SCARCE if reserve else COMPILED_PAPER
    _, want = compiled(arrays, beam)
    got = small_round(arrays, beam, reserve)
    np.testing.assert_array_equal(got.engine, np.asarray(want.engine))
    assert (int(got.utility), int(got.flex), int(got.num_steps)) == (
        int(want.utility),
        int(want.flex),
        int(want.num_steps),
    )


@pytest.mark.slow
@settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    seed=st.integers(0, 2**31 - 1),
    num_items=st.integers(1, 32),
    num_configs=st.sampled_from((1, 4, 27, 100)),
    num_engines=st.sampled_from((3, 9)),
    beam=st.sampled_from((1, 2, 4)),
    reserve=st.booleans(),
    blocked=st.sampled_from((0.0, 0.0, 0.5, 0.9)),
    free_per_item=st.sampled_from((0.0, 0.3, 1.0, 3.0)),
    max_ready=st.integers(1, 3),
)
def test_small_round_equals_compiled_round(
    seed,
    num_items,
    num_configs,
    num_engines,
    beam,
    reserve,
    blocked,
    free_per_item,
    max_ready,
):
    """Random loads (free slots, curves, engine loads), masks and configurations, with
    and without scarce blocked models, several ready stages per request (joint
    narrowing), both ranking rules: engines, U, F and steps equal the kernel's. (Three
    models, fixed buckets: a dozen executables, shared with tests/kernels.)"""
    rng = np.random.default_rng(seed)
    arrays, _ = random_round(
        rng,
        num_items=num_items,
        num_configs=num_configs,
        num_engines=num_engines,
        total_free=int(rng.poisson(free_per_item * num_items)),
        max_ready=max_ready,
        blocked_share=blocked,
        blocked_slots=int(rng.integers(0, 3)),
        item_bucket=32,
        cfg_bucket=128,
        slot_bucket=128,
    )
    _assert_same(arrays, beam, reserve)


@pytest.mark.parametrize("seed", range(24))
def test_one_item_rounds_equal_the_compiled_round(seed):
    """``host_search``'s one-item shortcut (every live request's round at low load): the
    best allowed engine with a free slot, U, F and steps as the kernel's, none placed when
    no allowed engine is free (same buckets as the tie test: no extra executables)."""
    rng = np.random.default_rng(seed)
    arrays, _ = random_round(
        rng,
        num_items=1,
        num_configs=int(rng.choice((1, 4, 27, 100))),
        num_engines=3,
        total_free=int(rng.integers(0, 7)),
        max_ready=1,
        blocked_share=float(rng.choice((0.0, 0.5))),
        blocked_slots=int(rng.integers(0, 3)),
        item_bucket=32,
        cfg_bucket=128,
        slot_bucket=128,
    )
    for beam, reserve in itertools.product((1, 2, 4), (False, True)):
        _assert_same(arrays, beam, reserve)


def test_ties_break_as_the_kernel_does():
    """Equal gains and shares everywhere: only the candidate index orders them, and the
    greedy line's replacement of the last survivor decides (same buckets as the random
    rounds: no extra executables)."""
    viable = np.ones((5, 4), dtype=bool)
    cfgm = np.array([[0, 0, 1, 1]] * 5, dtype=np.int8)
    arrays = pad_round(
        viable,
        cfgm,
        np.array([0, 0, 1, 2, 2], dtype=np.int32),
        np.array([0, 1, 0], dtype=np.int32),
        np.array([2, 1, 1], dtype=np.int32),
        np.full((3, 128), 7, dtype=np.int32),
        3,
        item_bucket=32,
        cfg_bucket=128,
    )
    for beam, reserve in itertools.product((1, 2, 4), (False, True)):
        _assert_same(arrays, beam, reserve)


def test_padding_and_unknown_model_ids_count_for_nothing():
    """Viable cells whose model id is outside 0..M-1 (junk in padding columns) are not
    counted, as in score_stages."""
    viable = np.ones((3, 6), dtype=bool)
    cfgm = np.array([[0, 1, -1, 5, 1, 0]] * 3, dtype=np.int8)
    arrays = pad_round(
        viable,
        cfgm,
        np.array([0, 1, 1], dtype=np.int32),
        np.array([0, 1, 2], dtype=np.int32),
        np.array([1, 1, 0], dtype=np.int32),
        np.array([[3] * 128, [5] * 128, [1] * 128], dtype=np.int32),
        3,
        item_bucket=32,
        cfg_bucket=128,
    )
    for reserve in (False, True):
        _assert_same(arrays, 4, reserve)


def test_extreme_gains_and_shares_rank_as_the_kernel_does():
    """The host search packs (-U, -F, index) into one integer: negative gains (a
    falling curve), gains near the int32 range of the kernel's U, and F at its bound
    (every item keeps all its configurations: a share of SHARE_SCALE each) rank exactly
    as the compiled round ranks them (its own buckets: no extra executables)."""
    n = 20
    viable = np.ones((n, 4), dtype=bool)
    cfgm = np.tile(np.array([0, 0, 1, 2], dtype=np.int8), (n, 1))
    req = np.repeat(np.arange(n // 2), 2).astype(np.int32)
    base = np.array([0, 1, 2, 0, 1, 2], dtype=np.int32)
    k = np.arange(128)
    for gains in (
        np.stack([-(k % 7) - 1, -(k % 5) - 2, -k - 3, -(k % 3), 5 - k, -np.ones_like(k)]),
        np.stack([(10**8 - k), 10**8 - 2 * k, k, 10**8 + k % 9, np.full_like(k, 10**8), -k]),
    ):
        for free in ([3, 2, 9, 1, 4, 2], [1, 1, 1, 0, 0, 1]):
            arrays = pad_round(
                viable,
                cfgm,
                req,
                base,
                np.array(free, dtype=np.int32),
                gains.astype(np.int32),
                3,
                item_bucket=32,
                cfg_bucket=128,
            )
            for beam, reserve in itertools.product((1, 4), (False, True)):
                _assert_same(arrays, beam, reserve)
    single = pad_round(  # one item per request, every one kept whole: F = n * SHARE_SCALE
        np.ones((n, 4), dtype=bool),
        np.zeros((n, 4), dtype=np.int8),
        np.arange(n, dtype=np.int32),
        base,
        np.full(6, 10, dtype=np.int32),
        np.tile(-np.arange(128, dtype=np.int32), (6, 1)),
        3,
        item_bucket=32,
        cfg_bucket=128,
    )
    _assert_same(single, 4, False)
    assert int(small_round(single, 4).flex) == n * SHARE_SCALE


FANOUT = [
    ("plan", ()),
    ("a", ("plan",)),
    ("b", ("plan",)),
    ("c", ("plan",)),
    ("join", ("a", "b", "c")),
]


@pytest.mark.parametrize("policy", ["aragog-paper", "aragog-scarce"])
def test_scheduler_plans_equal_with_and_without_the_host_path(policy):
    """Two schedulers in lockstep (host path for rounds <= SMALL_ROUND_ITEMS vs never): the same
    plans, steps and masks through arrivals, finishes, failures and cancels."""
    sp = space(FANOUT)
    fleet = engines({"e7": ("7B", 100.0, 4), "e14": ("14B", 60.0, 3), "e32": ("32B", 30.0, 2)})
    scheds = []
    for small in (SMALL_ROUND_ITEMS, 0):
        base = Scheduler(fleet, policy, spaces=[sp]).policy
        beam = BeamPolicy(
            base.beam_width, name=base.name, compiled=base.compiled, small_items=small
        )
        scheds.append(Scheduler(fleet, beam, spaces=[sp]))
    rng = np.random.default_rng(3)
    running: list[tuple[int, str, str]] = []
    ids = itertools.count()
    host_rounds = 0
    for _ in range(60):
        for _ in range(int(rng.integers(0, 3))):
            r = next(ids)
            mask = rng.random(sp.num_configs) < 0.4
            mask[int(rng.integers(sp.num_configs))] = True
            for s in scheds:
                s.add_request(r, sp, mask)
        busy = {e.name: 0 for e in fleet}
        for _, _, e in running:
            busy[e] += 1
        load = LoadVector.observe(fleet, {n: {"running": b} for n, b in busy.items()})
        host_rounds += 0 < scheds[0].num_ready <= SMALL_ROUND_ITEMS
        a, b = (s.schedule(load) for s in scheds)
        assert a.assignments == b.assignments
        assert (a.search_steps, a.utilization, a.flexibility) == (
            b.search_steps,
            b.utilization,
            b.flexibility,
        )
        assert a.skipped == b.skipped
        running = _finish_some(scheds, a, running, rng, 0.15)
    assert host_rounds > 20


def _finish_some(scheds, plan, running: list, rng, fail_rate: float) -> list:
    """Dispatch ``plan`` in every scheduler (lockstep), then finish or fail a random part
    of what runs in all of them alike (same outcomes, same masks); returns what still
    runs."""
    running = running + [(x.request_id, x.stage_name, x.engine) for x in plan.assignments]
    rng.shuffle(running)
    cut = int(rng.integers(0, len(running) + 1))
    done, running = running[:cut], running[cut:]
    for r, stage, e in done:
        if not scheds[0].is_queued(r):
            continue  # its request failed for good earlier in this loop
        fail = rng.random() < fail_rate
        outcomes = [_report(s, r, stage, e, fail) for s in scheds]
        assert outcomes[0] == outcomes[1]
        if outcomes[0] == "gone":
            running = [x for x in running if x[0] != r]
    for r in scheds[0].request_ids():
        np.testing.assert_array_equal(scheds[0].viable_mask(r), scheds[1].viable_mask(r))
    assert scheds[0].num_ready == scheds[1].num_ready
    return running


def _report(sched: Scheduler, r, stage: str, engine: str, fail: bool) -> str:
    if not fail:
        return "done" if sched.on_stage_finished(r, stage) else "finished"
    try:
        sched.on_stage_failed(r, stage, engine)
    except NoViableConfigurationError:
        return "gone"
    return "failed"


class _ViaArrays(BeamPolicy):
    """A BeamPolicy with its own ``assign``: schedule() builds the round's padded arrays
    and commits from them, as for any policy (no host round straight from the tables)."""

    def assign(self, arrays):
        return super().assign(arrays)


def _lockstep_against_arrays(policy: str, seed: int, max_arrivals: int) -> collections.Counter:
    """Run a scheduler with schedule()'s host rounds straight from the tables against the
    same scheduler through the padded arrays (``_ViaArrays``), round after round on two
    workflows and busy engines, asserting the same plans, U, F, steps, skipped, records
    and masks, and both equal to the replay of the round (U and F recomputed from
    scratch). Returns counts of the kinds of rounds that occurred."""
    chain = space([("draft", ()), ("polish", ("draft",))], name="chain")
    fan = space(FANOUT, name="fan")
    fleet = engines(
        {
            "e7": ("7B", 100.0, 3),
            "e7b": ("7B", 80.0, 2),
            "e14": ("14B", 60.0, 3),
            "e32": ("32B", 30.0, 2),
        }
    )
    base = make_policy(policy)
    scheds = [
        Scheduler(fleet, cls(4, name=base.name, compiled=base.compiled), spaces=[chain, fan])
        for cls in (BeamPolicy, _ViaArrays)
    ]
    rng = np.random.default_rng(seed)
    running: list[tuple[int, str, str]] = []
    ids = itertools.count()
    seen: collections.Counter = collections.Counter()
    for _ in range(150):
        for _ in range(int(rng.integers(0, max_arrivals + 1))):
            r, sp = next(ids), (chain, fan)[int(rng.integers(2))]
            mask = rng.random(sp.num_configs) < 0.5
            mask[int(rng.integers(sp.num_configs))] = True
            for s in scheds:
                s.add_request(r, sp, mask)
        busy = {e.name: int(rng.integers(0, e.saturation_batch + 1)) for e in fleet}
        for _, _, e in running:
            busy[e] += 1
        load = LoadVector.observe(fleet, {n: {"running": b} for n, b in busy.items()})
        one = scheds[0].num_ready == 1
        a, b = (s.schedule(load) for s in scheds)
        assert (a.assignments, a.utilization, a.flexibility, a.search_steps) == (
            b.assignments,
            b.utilization,
            b.flexibility,
            b.search_steps,
        )
        assert a.skipped == b.skipped and a.to_replay() == b.to_replay()
        if a.assignments:
            assert replay_round(a.to_replay(), make_policy(policy)) == a.decision()
        per_request = collections.Counter(x.request_id for x in a.assignments)
        seen["grouped"] += any(k > 1 for k in per_request.values())
        seen["shared"] += len(per_request) > 1
        if one:
            seen["one placed" if a.assignments else "one skipped"] += 1
        running = _finish_some(scheds, a, running, rng, 0.1)
    return seen


@pytest.mark.parametrize("policy", ["aragog-paper", "aragog-scarce"])
def test_host_rounds_from_the_tables_equal_the_arrays_path_and_the_replay(policy):
    """schedule()'s small rounds straight from the tables (``host_search`` + a commit one
    request at a time, cached U) against the same scheduler through the padded arrays
    (``small_round`` + the vectorised commit): see ``_lockstep_against_arrays``. Rounds
    where one request places several stages, and several requests each place some, both
    occur."""
    seen = _lockstep_against_arrays(policy, 11, 2)
    assert seen["grouped"] > 5 and seen["shared"] > 5


@pytest.mark.parametrize("policy", ["aragog-paper", "aragog-scarce"])
def test_one_item_rounds_from_the_tables_equal_the_arrays_path_and_the_replay(policy):
    """A round with one ready stage (every round of a lightly loaded server) takes its own
    scalar path (``Scheduler._one_item_round``): the same plans, records, commits and
    masks as the arrays path and the replay, with the stage placed and with no engine of
    its models free."""
    seen = _lockstep_against_arrays(policy, 5, 1)
    assert seen["one placed"] > 20 and seen["one skipped"] > 2
