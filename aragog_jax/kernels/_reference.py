"""Twins of the kernels: the obvious NumPy / pure-Python loops, same names and semantics.

Tests compare every kernel in ``aragog_jax.kernels`` with its twin here on seeded random
instances; benchmarks time them side by side. Keep these simple rather than fast.
"""

from __future__ import annotations

import numpy as np

from aragog_jax.kernels.scheduling import SHARE_SCALE, BeamResult, StageScores

# ----------------------------------------------------------------------------------------
# Scheduling twins (aragog_jax.kernels.scheduling)
# ----------------------------------------------------------------------------------------


def score_stages(item_viable, item_cfg_model, num_models: int) -> StageScores:
    """NumPy twin of :func:`aragog_jax.kernels.score_stages`."""
    item_viable = np.asarray(item_viable, dtype=bool)
    item_cfg_model = np.asarray(item_cfg_model)
    kept = np.zeros((item_viable.shape[0], num_models), dtype=np.int32)
    for m in range(num_models):
        kept[:, m] = np.count_nonzero(item_viable & (item_cfg_model == m), axis=1)
    num_viable = kept.sum(axis=1, dtype=np.int32)  # viable configurations with a known model here
    return StageScores(kept=kept, num_viable=num_viable)


def _round_items(item_req, item_valid):
    """(item, first) over the real items; ``first`` when the request changes."""
    prev = None
    for i in range(len(item_req)):
        if not item_valid[i]:
            continue
        req = int(item_req[i])
        yield i, req != prev
        prev = req


def _inflexible_model(kept, num_viable, i):
    """The model item i's request must use at its stage (-1: it has a choice)."""
    n = int(num_viable[i])
    for m in range(len(kept[i])):
        if n > 0 and int(kept[i][m]) == n:
            return m
    return -1


def _reservations(kept, num_viable, items, num_models):
    """Per (item, first) of ``items``: inflexible items after it in the round, per model."""
    only = [_inflexible_model(kept, num_viable, i) for i, _ in items]
    out = []
    for t in range(len(items)):
        after = [0] * num_models
        for m in only[t + 1 :]:
            if m >= 0:
                after[m] += 1
        out.append((after, only[t] < 0))
    return out


def _extensions(
    beam,
    i,
    first,
    kept,
    num_viable,
    item_viable,
    item_cfg_model,
    engine_model,
    free_slots,
    gain,
    reservation=None,
):
    """Feasible (engine, util, flex, mask) extensions of one partial assignment at item i.

    ``beam`` is (util, flex, used, mask, choice); ``mask`` is the request's running
    viable mask (None: not narrowed yet in this round). ``reservation`` is (inflexible
    items after i per model, i is flexible), or None for the paper's rule: a flexible
    item may use model m only while m has more free slots left than that count.
    """
    util, flex, used, mask, _ = beam
    cfgm = item_cfg_model[i]
    if first or mask is None:
        mask = item_viable[i]
        kept_row = kept[i]
    else:
        kept_row = [int(np.count_nonzero(mask & (cfgm == m))) for m in range(len(kept[i]))]
    left = {}
    for e, m in enumerate(engine_model):
        left[m] = left.get(m, 0) + free_slots[e] - used[e]
    out = []
    for e, m in enumerate(engine_model):
        k = int(kept_row[m])
        if reservation is not None and reservation[1] and left[m] <= reservation[0][m]:
            continue  # the slot is reserved for an inflexible item later in the round
        if k > 0 and free_slots[e] - used[e] > 0:
            share = (k * SHARE_SCALE) // max(int(num_viable[i]), 1)
            out.append((e, util + int(gain[e][used[e]]), flex + share, mask & (cfgm == m)))
    return out, mask


def beam_assign(
    kept,
    num_viable,
    item_viable,
    item_cfg_model,
    item_req,
    item_valid,
    engine_model,
    free_slots,
    gain,
    beam_width: int,
    reserve: bool = False,
) -> BeamResult:
    """Pure-Python twin of :func:`aragog_jax.kernels.beam_assign` (same ranking rule).

    Walks every real item in order; a beam's candidates are its feasible extensions, or
    a skip when it has none. Candidates rank by (-util, -flex, beam * (E + 1) + engine);
    the best ``beam_width`` survive, except that the best candidate of the greedy line
    (the beam that follows the B = 1 search) replaces the last survivor when it is not
    among them.
    """
    kept = np.asarray(kept)
    item_viable = np.asarray(item_viable, dtype=bool)
    item_cfg_model = np.asarray(item_cfg_model)
    engine_model = [int(m) for m in np.asarray(engine_model)]
    free_slots = [int(f) for f in np.asarray(free_slots)]
    gain = np.asarray(gain).tolist()
    num_engines = len(engine_model)
    beams = [(0, 0, [0] * num_engines, None, {})]
    greedy = 0  # index of the greedy line in ``beams``
    steps = 0
    items = list(_round_items(item_req, item_valid))
    reservations = _reservations(kept, num_viable, items, kept.shape[1])
    for (i, first), res in zip(items, reservations, strict=True):
        cands = []
        for b, beam in enumerate(beams):
            ext, mask = _extensions(
                beam,
                i,
                first,
                kept,
                num_viable,
                item_viable,
                item_cfg_model,
                engine_model,
                free_slots,
                gain,
                res if reserve else None,
            )
            util, flex, used, _, choice = beam
            if not ext:
                cands.append(
                    (
                        -util,
                        -flex,
                        b * (num_engines + 1) + num_engines,
                        (util, flex, used, mask, choice),
                    )
                )
            for e, u, f, m in ext:
                new_used = list(used)
                new_used[e] += 1
                cands.append(
                    (-u, -f, b * (num_engines + 1) + e, (u, f, new_used, m, {**choice, i: e}))
                )
        if all(c[2] % (num_engines + 1) == num_engines for c in cands):
            beams = [c[3] for c in cands]  # every beam skips: nothing changes
            continue
        steps += 1
        cands.sort(key=lambda c: c[:3])
        pos = next(p for p, c in enumerate(cands) if c[2] // (num_engines + 1) == greedy)
        kept_cands = cands[:beam_width]
        if pos >= beam_width:
            kept_cands[-1] = cands[pos]
        greedy = min(pos, beam_width - 1)
        beams = [c[3] for c in kept_cands]
    util, flex, _, _, choice = beams[0]
    engine = np.full(len(item_req), -1, dtype=np.int32)
    for i, e in choice.items():
        engine[i] = e
    return BeamResult(
        engine=engine, utility=np.int32(util), flex=np.int32(flex), num_steps=np.int32(steps)
    )


def brute_force_assign(
    kept,
    num_viable,
    item_viable,
    item_cfg_model,
    item_req,
    item_valid,
    engine_model,
    free_slots,
    gain,
    reserve: bool = False,
) -> BeamResult:
    """Exhaustive search over the same space as the beam (skip only when nothing fits).

    Returns the assignment with the highest (util, flex); among equals the
    lexicographically smallest engine sequence. Exponential: small instances only.
    ``num_steps`` counts the complete assignments examined.
    """
    kept = np.asarray(kept)
    item_viable = np.asarray(item_viable, dtype=bool)
    item_cfg_model = np.asarray(item_cfg_model)
    engine_model = [int(m) for m in np.asarray(engine_model)]
    free_slots = [int(f) for f in np.asarray(free_slots)]
    gain = np.asarray(gain).tolist()
    items = list(_round_items(item_req, item_valid))
    reservations = _reservations(kept, num_viable, items, kept.shape[1])
    best: list = [None]
    leaves = [0]

    def walk(t, beam):
        if t == len(items):
            leaves[0] += 1
            key = (-beam[0], -beam[1])
            if best[0] is None or key < best[0][0]:
                best[0] = (key, beam)
            return
        i, first = items[t]
        ext, mask = _extensions(
            beam,
            i,
            first,
            kept,
            num_viable,
            item_viable,
            item_cfg_model,
            engine_model,
            free_slots,
            gain,
            reservations[t] if reserve else None,
        )
        util, flex, used, _, choice = beam
        if not ext:
            walk(t + 1, (util, flex, used, mask, choice))
        for e, u, f, m in ext:
            new_used = list(used)
            new_used[e] += 1
            walk(t + 1, (u, f, new_used, m, {**choice, i: e}))

    walk(0, (0, 0, [0] * len(engine_model), None, {}))
    util, flex, _, _, choice = best[0][1]
    engine = np.full(len(item_req), -1, dtype=np.int32)
    for i, e in choice.items():
        engine[i] = e
    return BeamResult(
        engine=engine, utility=np.int32(util), flex=np.int32(flex), num_steps=np.int32(leaves[0])
    )


# --- routing twins (aragog_jax.kernels.routing) -------------------------------------


def _routing_relu_mlp(hidden, features):
    h = np.asarray(features, dtype=np.float64)
    for layer in hidden:
        h = np.maximum(
            h @ np.asarray(layer["w"], np.float64) + np.asarray(layer["b"], np.float64), 0.0
        )
    return h


def mlp_trunk(hidden, features):
    """Twin of routing.mlp_trunk, in float64."""
    return _routing_relu_mlp(hidden, features)


def config_embedding(stage_model, configs):
    """Twin of routing.config_embedding: an explicit loop over configurations and stages."""
    stage_model = np.asarray(stage_model, np.float64)
    configs = np.asarray(configs)
    out = np.zeros((configs.shape[0], stage_model.shape[2]))
    for c in range(configs.shape[0]):
        for s in range(configs.shape[1]):
            out[c] += stage_model[s, configs[c, s]]
    return out


def router_logits(params, features, configs=None):
    """Twin of routing.router_logits, in float64."""
    h = _routing_relu_mlp(params["hidden"], features)
    head = params["head"]
    if "w" in head:
        return h @ np.asarray(head["w"], np.float64) + np.asarray(head["b"], np.float64)
    return h @ config_embedding(head["stage_model"], configs).T + np.asarray(head["b"], np.float64)


def threshold_mask(logits, thresholds, always):
    """Twin of routing.threshold_mask."""
    logits = np.asarray(logits)
    out = np.zeros(logits.shape, dtype=bool)
    for r in range(logits.shape[0]):
        for c in range(logits.shape[1]):
            out[r, c] = bool(always[c]) or bool(logits[r, c] >= thresholds[c])
    return out


def route(params, features, thresholds, always, configs=None):
    """Twin of routing.route: (mask, prob) in float64."""
    logits = router_logits(params, features, configs)
    mask = (logits >= np.asarray(thresholds, np.float64)[None, :]) | np.asarray(always, bool)[
        None, :
    ]
    return mask, 1.0 / (1.0 + np.exp(-logits))


def route_chunk(head, hidden, thresholds, always, start, chunk, configs=None):
    """Twin of routing.route_chunk."""
    start = int(start)
    sl = slice(start, start + chunk)
    if "w" in head:
        w = np.asarray(head["w"], np.float64)[:, sl]
    else:
        w = config_embedding(head["stage_model"], np.asarray(configs)[sl]).T
    logits = np.asarray(hidden, np.float64) @ w + np.asarray(head["b"], np.float64)[sl]
    mask = (logits >= np.asarray(thresholds, np.float64)[sl]) | np.asarray(always, bool)[sl]
    return mask, 1.0 / (1.0 + np.exp(-logits))


def dominance_complete(mask, evaluated, dominates):
    """Twin of routing.dominance_complete: a plain loop over requests and configurations."""
    mask = np.asarray(mask, bool)
    evaluated = np.asarray(evaluated, bool)
    dominates = np.asarray(dominates, bool)
    out = np.zeros_like(mask)
    for r in range(mask.shape[0]):
        for a in range(mask.shape[1]):
            if evaluated[a]:
                out[r, a] = mask[r, a]
            else:
                out[r, a] = any(
                    mask[r, b] and evaluated[b] and dominates[a, b] for b in range(mask.shape[1])
                )
    return out
