"""Scheduling kernels against their twins, and the properties of DESIGN §5."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from aragog_jax.scheduler import COMPILED, RoundArrays
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


def _brute(arrays: RoundArrays):
    return twin_round(arrays, None)[1]


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


@pytest.mark.parametrize(("num_items", "num_configs", "num_engines", "beam"), GRID)
def test_beam_never_worse_than_greedy(num_items, num_configs, num_engines, beam):
    for seed in range(3):
        arrays = _instance(seed, num_items, num_configs, num_engines)
        _, wide = COMPILED(arrays, beam)
        _, greedy = COMPILED(arrays, 1)
        assert (int(wide.utility), int(wide.flex)) >= (int(greedy.utility), int(greedy.flex))


@pytest.mark.parametrize("seed", range(40))
def test_beam_never_better_than_brute_force(seed):
    rng = np.random.default_rng(seed)
    arrays = _instance(
        seed,
        int(rng.integers(1, 6)),
        12,
        int(rng.integers(1, 4)),
        total_free=int(rng.integers(1, 6)),
    )
    _, beam = COMPILED(arrays, 4)
    brute = _brute(arrays)
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
    round, so a free slot at the end was free when the item was considered.
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
        _, result = COMPILED(arrays, beam)
        _check_fifo(arrays, result.engine)


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


def test_search_stops_once_nothing_can_be_placed():
    arrays = _instance(1, 512, 27, 9, total_free=8, blocked_share=0.0, max_ready=1)
    _, result = COMPILED(arrays, 4)
    assert int((result.engine >= 0).sum()) == 8
    assert int(result.num_steps) < 64  # far fewer than the 512 items


def test_blocked_items_are_filtered_before_the_search():
    arrays = _instance(2, 512, 27, 9, total_free=16, blocked_share=0.9)
    scores, result = COMPILED(arrays, 4)
    allowed = np.asarray(scores.kept)[:, arrays.engine_model] > 0
    placeable = int((arrays.item_valid & (allowed & (arrays.free_slots > 0)).any(axis=1)).sum())
    assert placeable < 100
    assert 0 < int(result.num_steps) <= placeable
