"""Scheduling kernels against their twins, and the properties of DESIGN §5."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aragog_jax.kernels import reference
from aragog_jax.scheduler import (
    COMPILED,
    COMPILED_PAPER,
    COMPILED_SCARCE,
    RoundArrays,
    pad_round,
)
from aragog_jax.scheduler._random import random_round
from aragog_jax.scheduler._round import twin_round

# (items, configurations, engines, beam): a grid of sizes, each with a few seeds.
GRID = list(itertools.product((1, 6, 23), (4, 27, 100), (1, 3, 9), (1, 2, 4, 8)))


def _instance(seed: int, num_items: int, num_configs: int, num_engines: int, **kw) -> RoundArrays:
    """A random round padded to fixed buckets (one compile per engines x beam)."""
    rng = np.random.default_rng(seed)
    kw.setdefault("total_free", int(rng.integers(0, 3 * num_items + 2)))
    kw.setdefault("item_bucket", max(32, num_items))
    kw.setdefault("cfg_bucket", 128)
    kw.setdefault("slot_bucket", 128)
    kw.setdefault("blocked_share", float(rng.choice([0.0, 0.0, 0.7])))
    arrays, _ = random_round(
        rng, num_items=num_items, num_configs=num_configs, num_engines=num_engines, **kw
    )
    return arrays


def _twin(arrays: RoundArrays, beam_width: int):
    return twin_round(arrays, beam_width)


@pytest.mark.parametrize(("num_items", "num_configs", "num_engines", "beam"), GRID)
def test_kernels_equal_twins(num_items, num_configs, num_engines, beam):
    for seed in range(3):
        arrays = _instance(seed, num_items, num_configs, num_engines)
        scores, result = COMPILED(arrays, beam)
        twin_scores, twin = _twin(arrays, beam)
        np.testing.assert_array_equal(scores.kept, twin_scores.kept)
        np.testing.assert_array_equal(scores.num_viable, twin_scores.num_viable)
        np.testing.assert_array_equal(scores.allowed, twin_scores.allowed)
        np.testing.assert_allclose(
            np.asarray(scores.share), twin_scores.share, rtol=1e-6
        )  # float32 vs float64
        np.testing.assert_array_equal(result.engine, twin.engine)
        assert int(result.utility) == int(twin.utility)
        assert int(result.flex) == int(twin.flex)


@pytest.mark.parametrize(("num_items", "num_configs", "num_engines", "beam"), GRID[::3])
def test_scarce_rule_kernel_equals_its_twin(num_items, num_configs, num_engines, beam):
    for seed in range(3):
        arrays = _instance(seed, num_items, num_configs, num_engines)
        _, result = COMPILED_SCARCE(arrays, beam)
        _, twin = twin_round(arrays, beam, reserve=True)
        np.testing.assert_array_equal(result.engine, twin.engine)
        assert int(result.utility) == int(twin.utility)
        assert int(result.flex) == int(twin.flex)


@pytest.mark.parametrize(("num_items", "num_configs", "num_engines", "beam"), GRID)
def test_beam_never_worse_than_greedy(num_items, num_configs, num_engines, beam):
    for seed in range(3):
        arrays = _instance(seed, num_items, num_configs, num_engines)
        _, wide = COMPILED(arrays, beam)
        _, greedy = COMPILED(arrays, 1)
        assert (int(wide.utility), int(wide.flex)) >= (int(greedy.utility), int(greedy.flex))


@pytest.mark.parametrize("reserve", [False, True], ids=["paper", "scarce"])
@pytest.mark.parametrize("seed", range(40))
def test_beam_never_better_than_brute_force(seed, reserve):
    rng = np.random.default_rng(seed)
    arrays = _instance(
        seed,
        int(rng.integers(1, 6)),
        12,
        int(rng.integers(1, 4)),
        total_free=int(rng.integers(1, 6)),
    )
    _, beam = (COMPILED_SCARCE if reserve else COMPILED_PAPER)(arrays, 4)
    brute = twin_round(arrays, None, reserve=reserve)[1]
    assert (int(beam.utility), int(beam.flex)) <= (int(brute.utility), int(brute.flex))
    # Brute force's assignment is feasible under the same rules: its U is what it claims.
    placed = brute.engine >= 0
    used = np.zeros(arrays.gain.shape[0], dtype=np.int64)
    util = 0
    for e in brute.engine[placed]:
        util += int(arrays.gain[e, used[e]])
        used[e] += 1
    assert util == int(brute.utility)
    assert (used <= arrays.free_slots).all()


def _check_fifo(arrays: RoundArrays, engine: np.ndarray) -> None:
    """No item is skipped while one of its allowed engines still has a slot.

    "Allowed" is judged on the request's viable mask narrowed by the choices made for
    its earlier items in this round (joint consistency); slots only shrink during a
    round, so a free slot at the end was free when the item was considered. Holds for
    the scarcity reservation too: a slot reserved for an inflexible item is taken by it
    later in the round, so it is not free at the end.
    """
    left = arrays.free_slots.astype(np.int64) - np.bincount(
        engine[engine >= 0], minlength=len(arrays.free_slots)
    )
    assert (left >= 0).all()
    mask = None
    prev = None
    for i in range(arrays.num_items):
        if arrays.item_req[i] != prev:
            mask, prev = arrays.item_viable[i].copy(), arrays.item_req[i]
        models = {int(m) for m in np.unique(arrays.item_cfg_model[i][mask])}
        allowed = [e for e, m in enumerate(arrays.engine_model) if int(m) in models]
        if engine[i] < 0:
            assert all(left[e] == 0 for e in allowed), (
                f"item {i} skipped with a free allowed engine"
            )
        else:
            assert engine[i] in allowed, f"item {i} assigned to an engine its request cannot use"
            mask &= arrays.item_cfg_model[i] == arrays.engine_model[engine[i]]
            assert mask.any()


@pytest.mark.parametrize(("num_items", "num_configs", "num_engines", "beam"), GRID[::5])
def test_fifo_skip_rule_and_consistency(num_items, num_configs, num_engines, beam):
    for seed in range(4):
        arrays = _instance(seed, num_items, num_configs, num_engines, max_ready=4)
        for compiled in (COMPILED_PAPER, COMPILED_SCARCE):
            _, result = compiled(arrays, beam)
            _check_fifo(arrays, result.engine)


def _check_reservation(arrays: RoundArrays, engine: np.ndarray) -> None:
    """The scarcity reservation of ``aragog_jax.kernels.scheduling``, checked from outside.

    Walking the items in FIFO order: a flexible item (its request can use more than one
    model at its stage, judged on the round-start mask) is placed on model m only while m
    has more free slots left than inflexible-on-m items after it, and an inflexible item
    is placed whenever its model has a slot left. That a reservation never idles a slot
    is :func:`_check_fifo` (a skipped item's allowed engines are all full at the end).
    """
    n = arrays.num_items
    scores = reference.score_stages(arrays.item_viable, arrays.item_cfg_model, arrays.num_models)
    kept, num_viable = np.asarray(scores.kept)[:n], np.asarray(scores.num_viable)[:n]
    only = np.where(
        (kept == num_viable[:, None]) & (num_viable[:, None] > 0),
        np.arange(arrays.num_models)[None, :],
        -1,
    ).max(axis=1)
    em = np.asarray(arrays.engine_model)
    left = np.array(
        [int(arrays.free_slots[em == m].sum()) for m in range(arrays.num_models)], dtype=np.int64
    )
    for i in range(n):
        after = np.bincount(only[i + 1 :][only[i + 1 :] >= 0], minlength=arrays.num_models)
        if engine[i] >= 0:
            m = int(em[engine[i]])
            if only[i] < 0:
                assert left[m] > after[m], f"flexible item {i} took a slot reserved on model {m}"
            left[m] -= 1
        elif only[i] >= 0:
            assert left[only[i]] == 0, f"inflexible item {i} skipped with a slot left"


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**31 - 1),
    num_items=st.integers(1, 24),
    num_configs=st.sampled_from((4, 9, 27)),
    num_engines=st.integers(1, 6),
    beam=st.sampled_from((1, 2, 4)),
    scarce=st.sampled_from((0.0, 0.5)),
)
def test_reservation_property(seed, num_items, num_configs, num_engines, beam, scarce):
    """Random rounds (half of them with a scarce model 0 that some requests need):
    kernel and twin agree exactly, the reservation holds, and the paper's rule differs
    only by it (with no inflexible item in the round both rules give the same plan)."""
    rng = np.random.default_rng(seed)
    arrays = _instance(
        seed,
        num_items,
        num_configs,
        num_engines,
        total_free=int(rng.integers(1, num_items + 2)),
        blocked_share=scarce,
        blocked_slots=int(rng.integers(0, 3)),
        max_ready=2,
    )
    scores, result = COMPILED_SCARCE(arrays, beam)
    _, twin = twin_round(arrays, beam, reserve=True)
    np.testing.assert_array_equal(result.engine, twin.engine)
    assert (int(result.utility), int(result.flex)) == (int(twin.utility), int(twin.flex))
    _check_reservation(arrays, np.asarray(result.engine))
    _check_fifo(arrays, np.asarray(result.engine))
    kept, nv = np.asarray(scores.kept), np.asarray(scores.num_viable)
    if not ((kept == nv[:, None]) & (nv[:, None] > 0) & arrays.item_valid[:, None]).any():
        _, paper = COMPILED_PAPER(arrays, beam)
        np.testing.assert_array_equal(result.engine, paper.engine)


def test_scarce_slot_goes_to_the_request_that_needs_it():
    """Regression (issue 18): the paper's rule gives the last slot of a scarce engine to
    the first item in FIFO order even when it could run elsewhere, and the request
    that can only use that engine waits; the reservation gives it to that request."""
    # Two engines: e0 serves model 0 (one free slot), e1 model 1 (full). Request 0 may
    # use model 0 or 1 at its stage; request 1 only model 0.
    arrays = pad_round(
        np.array([[True, True], [True, False]]),
        np.array([[0, 1], [0, 1]], dtype=np.int8),
        np.array([0, 1], dtype=np.int32),
        np.array([0, 1], dtype=np.int32),
        np.array([1, 0], dtype=np.int32),
        np.array([[5], [9]], dtype=np.int32),
        2,
    )
    for beam in (1, 4):
        _, paper = COMPILED_PAPER(arrays, beam)
        assert paper.engine[:2].tolist() == [0, -1]
        _, scarce = COMPILED_SCARCE(arrays, beam)
        assert scarce.engine[:2].tolist() == [-1, 0]
        assert int(scarce.utility) == int(paper.utility) == 5  # the same slot, filled
    for rule in (True, False):
        brute = twin_round(arrays, None, reserve=rule)[1]
        assert brute.engine[:2].tolist() == ([-1, 0] if rule else [0, -1])


def test_padding_rows_never_change_real_rows():
    arrays = _instance(7, 20, 27, 6, total_free=12, cfg_bucket=32, slot_bucket=16)
    padded = _instance(7, 20, 27, 6, total_free=12, item_bucket=128)
    assert padded.item_viable.shape == (128, 128) and arrays.item_viable.shape == (32, 32)
    s1, r1 = COMPILED(arrays, 4)
    s2, r2 = COMPILED(padded, 4)
    n = arrays.num_items
    np.testing.assert_array_equal(s1.kept[:n], s2.kept[:n])
    np.testing.assert_array_equal(r1.engine[:n], r2.engine[:n])
    assert (r2.engine[n:] == -1).all()
    # Junk in padding rows is ignored too.
    junk = RoundArrays(
        item_viable=np.where(padded.item_valid[:, None], padded.item_viable, True),
        item_cfg_model=np.where(padded.item_valid[:, None], padded.item_cfg_model, 0).astype(
            padded.item_cfg_model.dtype
        ),
        item_req=padded.item_req,
        item_valid=padded.item_valid,
        engine_model=padded.engine_model,
        free_slots=padded.free_slots,
        gain=padded.gain,
        num_models=padded.num_models,
        num_items=padded.num_items,
    )
    _, r3 = COMPILED(junk, 4)
    np.testing.assert_array_equal(r3.engine, r2.engine)


@pytest.mark.parametrize("compiled", [COMPILED_PAPER, COMPILED_SCARCE], ids=["paper", "scarce"])
def test_search_stops_once_nothing_can_be_placed(compiled):
    arrays = _instance(1, 512, 27, 9, total_free=8, blocked_share=0.0, max_ready=1)
    _, result = compiled(arrays, 4)
    assert int((result.engine >= 0).sum()) == 8
    # Far fewer than the 512 items; the reservation skips flexible items while the slots
    # they could take are reserved, so it looks at a few more before the slots are gone.
    assert int(result.num_steps) < (64 if compiled is COMPILED_PAPER else 128)


def test_blocked_items_are_filtered_before_the_search():
    arrays = _instance(2, 512, 27, 9, total_free=16, blocked_share=0.9)
    scores, result = COMPILED(arrays, 4)
    allowed = np.asarray(scores.kept)[:, arrays.engine_model] > 0
    placeable = int((arrays.item_valid & (allowed & (arrays.free_slots > 0)).any(axis=1)).sum())
    assert placeable < 100
    assert 0 < int(result.num_steps) <= placeable
