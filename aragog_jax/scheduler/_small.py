"""Small rounds on the host: the compiled round's decision in plain Python.

A jitted round costs about half a millisecond on CPU even with nothing to place (XLA's
dispatch, argument transfer and result copy), while a round with a few ready stages is a
few dozen candidate comparisons. :func:`small_round` runs ``score_stages`` +
``beam_assign`` (``aragog_jax.kernels.scheduling``) for such a round with NumPy counts
and Python integers and returns exactly what the compiled round returns: the same
engine per item, utility, flexibility and ``num_steps`` (the vectorised pre-filter, the
compaction, the ``while_loop``'s stop rule, the ranking by (-U, -F, candidate index),
the greedy line's survival, the joint narrowing of a request's later stages and, with
``reserve``, the scarcity reservation). ``tests/scheduler/test_small.py`` checks the
equality against the compiled round on random rounds (hypothesis).

The search itself is :func:`host_search` on host inputs (per-item rows, Python lists):
``small_round`` feeds it from a round's padded arrays, and ``Scheduler.schedule`` feeds it
straight from its row tables for a :class:`BeamPolicy`'s small rounds (no padded arrays;
``tests/scheduler/test_small.py`` checks both against each other and the round's replay).

``BeamPolicy`` takes this path for rounds of at most ``SMALL_ROUND_ITEMS`` items, a
threshold measured on the simulator's rounds by ``bench/sim_speed.py --crossover``
(schedule()'s process CPU per round size with every round on the host path against every
round compiled, the same rounds paired) and by ``bench/scheduler.py`` (``small_rounds``).
"""

from __future__ import annotations

import numpy as np

from aragog_jax.kernels import SHARE_SCALE, BeamResult
from aragog_jax.scheduler._round import RoundArrays

#: Largest round (ready items) that :class:`BeamPolicy` runs on the host instead of the
#: compiled kernel: the crossover measured in ``bench/results/sim_speed_crossover.json``
#: (the host round is the cheaper one up to 25-28 items, the compiled one from 29-32;
#: process CPU, which counts XLA's worker threads too).
SMALL_ROUND_ITEMS = 28


_UNPLACED: dict[int, np.ndarray] = {}


def _unplaced(num_rows: int) -> np.ndarray:
    """A fresh int32[num_rows] of -1 (a copy of a kept one: cheaper than ``np.full``)."""
    row = _UNPLACED.get(num_rows)
    if row is None:
        row = _UNPLACED[num_rows] = np.full(num_rows, -1, dtype=np.int32)
    return row.copy()


_MODEL_IDS: dict[tuple[np.dtype, int], np.ndarray] = {}


def _model_masks(cfgm: np.ndarray, num_models: int) -> np.ndarray:
    """bool[n, M, C]: configuration c uses model m at item i's stage (an id outside
    0..M-1 matches no model)."""
    key = (cfgm.dtype, num_models)
    ids = _MODEL_IDS.get(key)
    if ids is None:  # int[M, 1] model ids, in the configurations' dtype when they fit
        fits = num_models - 1 <= np.iinfo(cfgm.dtype).max
        ids = _MODEL_IDS[key] = np.arange(num_models, dtype=cfgm.dtype if fits else None)[:, None]
    return cfgm[:, None, :] == ids


def _count(masks: np.ndarray) -> np.ndarray:
    """int64[...]: True cells along the last axis (an exact count; a uint8 view summed
    in int64 is the fast way to count bools)."""
    return np.add.reduce(masks.view(np.uint8), axis=-1, dtype=np.int64)


def _reservations(reserve, kept, num_viable, order):
    """Per compact item: inflexible items after it per model, and whether it is
    flexible (the scarcity reservation; ([], []) for the paper's rule)."""
    if not reserve:
        return [], []
    num_models = len(kept[0]) if kept else 0
    inflex = [
        [num_viable[i] > 0 and kept[i][m] == num_viable[i] for m in range(num_models)]
        for i in order
    ]
    after = [sum(col) for col in zip(*inflex, strict=True)] if inflex else []
    reserved_after, flexible = [], []
    for row in inflex:
        after = [a - int(x) for a, x in zip(after, row, strict=True)]
        reserved_after.append(after)
        flexible.append(not any(row))
    return reserved_after, flexible


def host_inputs(viable: np.ndarray, cfgm: np.ndarray, num_models: int):
    """(model masks bool[n, M, C], kept[i][m]) of ``n`` items: ``score_stages`` on the
    host (kept = viable configurations of item i's request with model m at its stage)."""
    model_masks = _model_masks(cfgm, num_models)
    return model_masks, _count(model_masks & viable[:, None, :]).tolist()


def host_gains(gain: np.ndarray, n: int) -> list[list[int]]:
    """The first ``n`` gains per engine as lists: a search adds at most n sequences to an
    engine (past the last slot the kernel reads the last one)."""
    rows = gain[:, :n].tolist()
    if len(rows[0]) < n:
        rows = [row + row[-1:] * (n - len(row)) for row in rows]
    return rows


def small_round(arrays: RoundArrays, beam_width: int, reserve: bool = False) -> BeamResult:
    """The compiled round's :class:`BeamResult` for ``arrays`` (any item count; meant for
    a few items), computed on the host. ``reserve`` as ``CompiledRounds``."""
    n = arrays.num_items
    viable = arrays.item_viable[:n]
    model_masks, kept = host_inputs(viable, arrays.item_cfg_model[:n], arrays.num_models)
    choice, util, flex, steps = host_search(
        viable,
        model_masks,
        kept,
        arrays.item_req[:n].tolist(),
        arrays.item_valid[:n].tolist(),
        arrays.engine_model.tolist(),
        arrays.free_slots.tolist(),
        host_gains(arrays.gain, n),
        beam_width,
        reserve,
    )
    engine = _unplaced(arrays.item_viable.shape[0])
    for i, e in choice:
        engine[i] = e
    return BeamResult(
        engine=engine, utility=np.int32(util), flex=np.int32(flex), num_steps=np.int32(steps)
    )


def one_item_choice(
    kept: list[int], em: list[int], free: list[int], gain: list[list[int]]
) -> tuple[int, int, int] | None:
    """The search of a round with one item, whose request keeps ``kept[m]`` viable
    configurations with model m at its stage: (-U, -F, engine) of the best engine with a
    free slot whose model keeps some (the kernel's rank), or None when there is none."""
    share = max(sum(kept), 1)
    best = None
    for e, m in enumerate(em):
        k = kept[m]
        if k > 0 and free[e] > 0:
            cand = (-gain[e][0], -(k * SHARE_SCALE // share), e)
            if best is None or cand < best:
                best = cand
    return best


def host_search(
    viable: np.ndarray,
    model_masks: np.ndarray,
    kept: list[list[int]],
    req: list,
    valid: list[bool],
    em: list[int],
    free: list[int],
    gain: list[list[int]],
    beam_width: int,
    reserve: bool,
) -> tuple[tuple[tuple[int, int], ...], int, int, int]:
    """The beam search of :func:`small_round` on host inputs: ``viable`` bool[n, C] and
    ``model_masks``, ``kept`` from :func:`host_inputs`; per item its request key ``req``
    (equal for the consecutive items of one request) and ``valid``; per engine its model
    ``em``, ``free`` slots and gains (``gain[e][k]`` for every ``k < min(free[e], n)``:
    :func:`host_gains`, or a round's :class:`HostCurves` rows). Returns the best beam's
    ((item, engine), ...) in item order, its U and F, and the steps run.

    A beam is kept as (-U, -F, ...) and a candidate's rank is the tuple (-U, -F,
    candidate index), which sorts as the kernel ranks."""
    n = len(kept)
    if n == 1:  # the loop below for one item: one step, the best candidate of one beam
        best = one_item_choice(kept[0], em, free, gain) if valid[0] else None
        if best is None:
            return (), 0, 0, 0
        neg_util, neg_flex, e = best
        return ((0, e),), -neg_util, -neg_flex, 1
    num_models = model_masks.shape[1]
    num_engines = len(em)
    num_cand = num_engines + 1
    engines = range(num_engines)
    width = beam_width
    num_viable = [sum(row) for row in kept]
    kept_e = [[row[m] for m in em] for row in kept]
    allows = [[e for e, k in enumerate(row) if k > 0] for row in kept_e]  # engines per item
    # Pre-filter and compaction: items with an allowed engine that has a free slot.
    is_open = [f > 0 for f in free]
    order = [i for i in range(n) if valid[i] and any(map(is_open.__getitem__, allows[i]))]
    num_live = len(order)
    last_use = [-1] * num_engines
    for j, i in enumerate(order):
        for e in allows[i]:
            last_use[e] = j
    first_c = [j == 0 or req[order[j]] != req[order[j - 1]] for j in range(num_live)]
    next_same = [j + 1 < num_live and not first_c[j + 1] for j in range(num_live)]
    reserved_after, flexible = _reservations(reserve, kept, num_viable, order)

    # A beam: (-util, -flex, used per engine, running mask of the request, choices).
    beams: list[tuple[int, int, list[int], np.ndarray | None, tuple]] = [
        (0, 0, [0] * num_engines, None, ())
    ]
    greedy = 0
    j = 0
    open_engines = list(engines)
    open_until = -1  # open_engines holds the engines with last_use >= j while j <= this
    while j < num_live:
        # The compiled loop's stop rule: some beam has a free slot on an engine that a
        # remaining item allows.
        if j > open_until:
            open_engines = [e for e in open_engines if last_use[e] >= j]
            open_until = min([last_use[e] for e in open_engines], default=num_live)
        for beam in beams:
            used = beam[2]
            for e in open_engines:
                if free[e] > used[e]:
                    break
            else:
                continue
            break
        else:
            break
        i = order[j]
        first = first_c[j]
        nv = max(num_viable[i], 1)
        if first:  # (engine, -share) of every allowed engine
            row = kept_e[i]
            allowed = [(e, -(row[e] * SHARE_SCALE // nv)) for e in allows[i]]
        else:
            masks = model_masks[i]  # bool[M, C]
        check = reserve and flexible[j]
        cands = []
        append = cands.append
        base = 0
        for neg_util, neg_flex, used, mask, _ in beams:
            if not first:  # the request's mask as this beam narrowed it
                per_model = _count(masks & mask).tolist()
                allowed = [
                    (e, -(k * SHARE_SCALE // nv)) for e in engines if (k := per_model[em[e]]) > 0
                ]
            extended = False
            if check:  # free slots per model left in this beam, against the reservation
                left = [f - u for f, u in zip(free, used, strict=True)]
                left = [sum(left[e] for e in engines if em[e] == m) for m in range(num_models)]
                res = reserved_after[j]
                for e, share in allowed:
                    u = used[e]
                    if free[e] > u and left[em[e]] > res[em[e]]:
                        append((neg_util - gain[e][u], neg_flex + share, base + e))
                        extended = True
            else:
                for e, share in allowed:
                    u = used[e]
                    if free[e] > u:
                        append((neg_util - gain[e][u], neg_flex + share, base + e))
                        extended = True
            if not extended:
                append((neg_util, neg_flex, base + num_engines))
            base += num_cand
        cands.sort()
        pos = 0
        while cands[pos][2] // num_cand != greedy:
            pos += 1
        top = cands[:width]
        if pos >= width:
            top[-1] = cands[pos]
        greedy = min(pos, width - 1)
        narrow = next_same[j]
        if narrow:
            masks = model_masks[i]
            viable_row = viable[i] if first else None
        new_beams = []
        for neg_util, neg_flex, cand in top:
            parent, e = divmod(cand, num_cand)
            _, _, used, mask, choice = beams[parent]
            if e < num_engines:
                used = used.copy()
                used[e] += 1
                choice = (choice, i, e)  # a chain: unrolled into pairs at the end
            if narrow:
                mask = viable_row if first else mask
                if e < num_engines:
                    mask = mask & masks[em[e]]
            new_beams.append((neg_util, neg_flex, used, mask, choice))
        beams = new_beams
        j += 1
    neg_util, neg_flex, _, _, chain = beams[0]
    choice = []
    while chain:
        chain, i, e = chain
        choice.append((i, e))
    return tuple(reversed(choice)), -neg_util, -neg_flex, j
