"""Stage-scheduling kernels (DESIGN §5): batched stage scoring and the beam search.

Pure ``jax.numpy`` functions; the scheduler (``aragog_jax.scheduler``) owns the jitted,
ahead-of-time compiled wrappers. Twins with the same names and semantics live in
``aragog_jax.kernels._reference``.

Axis names: ``item`` (ready stages of in-flight requests, FIFO order across requests,
deepest stage first within a request; padded to a bucket), ``cfg`` (configurations of
an item's workflow, padded), ``model`` (model ids of the configuration spaces),
``engine`` (engines; several may serve one model), ``slot`` (0-based index of the next
sequence added to an engine this round), ``beam``.

Scores are integers so that the kernel and its twin agree exactly:

* **Utility** U is measured in units of ``1 / utility_scale`` of fleet capacity. The
  caller passes ``gain[e, k]``, the quantised forecast throughput gained by adding the
  (k+1)-th sequence of the round to engine e (see
  :func:`aragog_jax.scheduler.gain_table`); a partial assignment's U is the sum of the
  gains of its assignments, so ties at that resolution are exact.
* **Flexibility** F is the sum over assigned items of the kept share of the item's
  request's viable configurations, in units of ``1 / SHARE_SCALE``
  (``kept * SHARE_SCALE // num_viable``, integer floor).

Candidates are ranked by U (higher first), then F (higher first), then by their index
``beam * (num_engines + 1) + engine`` (lower first; the skip candidate of a beam is
``engine = num_engines``). Beams are kept in rank order, so "lower index" means "the
better parent, then the lower engine id": the search is deterministic.

**Scarcity reservation** (``reserve=True``, policy ``aragog-scarce``; beyond the paper, DESIGN §5). An item is
*inflexible* on model m when every viable configuration of its request (with a served
model at its stage) uses m there: ``kept[i, m] == num_viable[i] > 0``; every other item
is *flexible*. A flexible item may take a slot of model m only while m keeps more free
slots in that partial assignment than there are inflexible-on-m items after it in the
round's FIFO order: those slots are reserved for the requests that cannot run anywhere
else, i.e. a flexible placement is charged the whole slot it would take from them. A
flexible item whose every allowed free slot is reserved is skipped this round (it waits
for an abundant engine instead of queueing scarce work behind it). The rule has no
parameter: the reservation is the count of inflexible items queued in the round, and it
never leaves a slot idle that the round could fill, because every item counted in it is
placed on m when its turn comes (its request's configurations all use m there, so no
narrowing by a sibling's choice removes m). Flexibility is judged on the request's mask
at the start of the round. ``reserve=False`` is the paper's rule (``aragog``, ``aragog-paper``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Bool, Int

#: Kept shares are integers in units of 1 / SHARE_SCALE. ``kept * SHARE_SCALE`` must fit
#: int32 for kept <= 65,536 configurations (the dense-enumeration limit), hence 2**14.
SHARE_SCALE = 1 << 14
#: Sort key of an infeasible candidate; every feasible -U is below it.
_INFEASIBLE = (1 << 31) - 1


class StageScores(NamedTuple):
    """Output of :func:`score_stages`.

    Attributes:
      kept: int32[item, model] viable configurations of the item's request that use the
        model at the item's stage (0: the model is not allowed there).
      num_viable: int32[item] viable configurations of the item's request whose model at
        the item's stage is one of the ``num_models`` (the sum of ``kept`` over models;
        the scheduler never admits a configuration with an unserved model).
    """

    kept: Int[Array, "item model"]
    num_viable: Int[Array, " item"]

    @property
    def allowed(self):
        """bool[item, model]: some viable configuration uses the model at the item's stage."""
        return self.kept > 0

    @property
    def share(self):
        """float[item, model]: share of the request's viable configurations kept."""
        return self.kept / self.num_viable[:, None].clip(1)


class BeamState(NamedTuple):
    """Loop state of :func:`beam_assign`'s ``while_loop`` (one step per compact item).

    Attributes:
      step: int32[] compact position of the next item.
      greedy: int32[] rank of the greedy line (the B = 1 search) among the beams.
      util: int32[beam] U of every beam.
      flex: int32[beam] F of every beam.
      alive: bool[beam] the beam exists (only beam 0 before the first step).
      used: int32[beam, engine] slots each beam has used on each engine.
      mask: bool[beam, cfg] running viable mask of the current request in each beam.
      hist: int32[item, 2, beam] per step: parent beam, engine (-1: none).
    """

    step: Int[Array, ""]
    greedy: Int[Array, ""]
    util: Int[Array, " beam"]
    flex: Int[Array, " beam"]
    alive: Bool[Array, " beam"]
    used: Int[Array, "beam engine"]
    mask: Bool[Array, "beam cfg"]
    hist: Int[Array, "item 2 beam"]


class BeamResult(NamedTuple):
    """Output of :func:`beam_assign`.

    Attributes:
      engine: int32[item] chosen engine id of every item, -1 when it is not placed
        (skipped, blocked or padding).
      utility: int32[] U of the best assignment, in units of 1 / utility_scale.
      flex: int32[] F of the best assignment, in units of 1 / SHARE_SCALE.
      num_steps: int32[] beam steps the search ran (items it looked at after the
        pre-filter); the search stops once no beam can place anything more.
    """

    engine: Int[Array, " item"]
    utility: Int[Array, ""]
    flex: Int[Array, ""]
    num_steps: Int[Array, ""]


def score_stages(
    item_viable: Bool[Array, "item cfg"],
    item_cfg_model: Int[Array, "item cfg"],
    num_models: int,
) -> StageScores:
    """Score every ready stage against every model in one batched call.

    Args:
      item_viable: bool[item, cfg] viable mask of the item's request over its workflow's
        configurations (padding configurations and padding items: False).
      item_cfg_model: int[item, cfg] (int8 or int32) model id that each configuration
        uses at the item's stage (padding: any value, typically -1).
      num_models: M, static.

    Returns:
      :class:`StageScores`: ``kept`` and ``num_viable``; its ``allowed`` (kept > 0) and
      ``share`` (kept / num_viable) are the allowed mask and the kept share of DESIGN §5.
    """
    model_ids = jnp.arange(num_models, dtype=item_cfg_model.dtype)
    hit = item_viable[:, None, :] & (item_cfg_model[:, None, :] == model_ids[None, :, None])
    # Narrow accumulators vectorise better on CPU (int32 sums of this shape run ~25x
    # slower with XLA:CPU); counts fit int16 below 2**15 columns.
    acc = jnp.int16 if item_viable.shape[1] < (1 << 15) else jnp.int32
    kept = jnp.sum(hit, axis=-1, dtype=acc).astype(jnp.int32)
    # From kept, not from a second pass over item_viable: XLA:CPU fuses two reductions
    # of the [item, cfg] input into one slow loop (15x slower at 1024 x 4096).
    num_viable = jnp.sum(kept, axis=-1, dtype=jnp.int32)
    return StageScores(kept=kept, num_viable=num_viable)


def beam_assign(
    kept: Int[Array, "item model"],
    num_viable: Int[Array, " item"],
    item_viable: Bool[Array, "item cfg"],
    item_cfg_model: Int[Array, "item cfg"],
    item_req: Int[Array, " item"],
    item_valid: Bool[Array, " item"],
    engine_model: Int[Array, " engine"],
    free_slots: Int[Array, " engine"],
    gain: Int[Array, "engine slot"],
    beam_width: int,
    reserve: bool = False,
) -> BeamResult:
    """Beam search over the ready items in FIFO order (DESIGN §5), width ``beam_width``.

    Every partial assignment is extended with every engine whose model is allowed for
    the item and that has a free slot left in that partial assignment; it skips the item
    only when there is none. The best ``beam_width`` candidates survive (ranking in the
    module docstring), except that the best extension of the greedy line (the line the
    B = 1 search follows) takes the last place when it is not among them, so the result
    is never worse than greedy's. Ready stages of one request (consecutive items with equal
    ``item_req``) stay jointly consistent: the second one's allowed models and kept
    shares are computed on the request's viable mask narrowed by the first one's choice
    in that beam.

    Work is bounded by what can still be placed: a vectorised pre-filter drops items
    with no allowed engine that has a free slot at the start of the round, and the loop
    over the remaining items stops as soon as no beam has a free slot on an engine that
    some remaining item allows. Both are exact: the dropped steps would skip in every
    beam and leave scores and ranks unchanged.

    Args:
      kept, num_viable: from :func:`score_stages`.
      item_viable: bool[item, cfg] viable mask of the item's request.
      item_cfg_model: int[item, cfg] model id per configuration at the item's stage
        (int8 or int32).
      item_req: int32[item] request slot of the item; items of one request are
        consecutive.
      item_valid: bool[item] real item (False: padding).
      engine_model: int32[engine] model id each engine serves.
      free_slots: int32[engine] free slots at the start of the round (0 for an unhealthy
        engine); at most ``gain.shape[1]``.
      gain: int32[engine, slot] quantised gain of adding the (k+1)-th sequence.
      beam_width: B, static.
      reserve: static; True applies the scarcity reservation of the module docstring
        (a flexible item never takes a slot an inflexible item after it in the round
        needs), False is the paper's rule.

    Returns:
      :class:`BeamResult` of the best beam.
    """
    num_items, num_cfg = item_cfg_model.shape
    num_models = kept.shape[1]
    num_engines = engine_model.shape[0]
    num_slots = gain.shape[1]
    width = beam_width
    num_cand = num_engines + 1

    # ---- vectorised pre-filter and compaction (FIFO order is kept) -------------------
    kept_e = jnp.take(kept, engine_model, axis=1)  # [item, engine]
    has_free = free_slots > 0
    placeable = item_valid & jnp.any((kept_e > 0) & has_free[None, :], axis=1)
    num_live = jnp.sum(placeable, dtype=jnp.int32)
    order = jnp.nonzero(placeable, size=num_items, fill_value=num_items)[0].astype(jnp.int32)
    safe_order = jnp.minimum(order, num_items - 1)
    pos = jnp.cumsum(placeable, dtype=jnp.int32) - 1
    # Last compact position that allows each engine: a beam whose free engines are all
    # past their last use can place nothing more.
    last_use = jnp.max(jnp.where(placeable[:, None] & (kept_e > 0), pos[:, None], -1), axis=0)
    req_c = item_req[safe_order]
    steps = jnp.arange(num_items, dtype=jnp.int32)
    first_c = jnp.concatenate([jnp.ones((1,), bool), req_c[1:] != req_c[:-1]])
    next_same_c = jnp.concatenate([~first_c[1:], jnp.zeros((1,), bool)]) & (steps + 1 < num_live)

    model_ids = jnp.arange(num_models, dtype=item_cfg_model.dtype)
    engine_ids = jnp.arange(num_engines, dtype=jnp.int32)

    # ---- scarcity reservation (module docstring): per compact position, the inflexible
    # items after it on each model, and whether the item itself is flexible.
    engine_of_model = (engine_model[:, None] == jnp.arange(num_models)[None, :]).astype(jnp.int32)
    free_model = jnp.sum(free_slots[:, None] * engine_of_model, axis=0)  # [model]
    only = (kept == num_viable[:, None]) & (num_viable[:, None] > 0)  # [item, model]
    inflex_c = (only[safe_order] & (steps < num_live)[:, None]).astype(jnp.int32)
    reserved_after = jnp.sum(inflex_c, axis=0)[None, :] - jnp.cumsum(inflex_c, axis=0)
    flexible_c = ~jnp.any(inflex_c > 0, axis=1)

    def cond(state: BeamState):
        can = (
            state.alive[:, None]
            & (free_slots[None, :] - state.used > 0)
            & (last_use[None, :] >= state.step)
        )
        return (state.step < num_live) & jnp.any(can)

    def body(state: BeamState) -> BeamState:
        j, greedy, util, flex, alive, used, mask, hist = state
        i = safe_order[j]
        # Slice rows here, not inside the cond branches: a branch that closes over a
        # whole [item, cfg] array makes XLA copy it on every step.
        cfgm = item_cfg_model[i]
        viable_row = item_viable[i]
        kept_row = kept_e[i]
        first = first_c[j]

        def kept_first():
            return jnp.broadcast_to(kept_row, (width, num_engines))

        def kept_joint():
            eq = cfgm[None, :] == model_ids[:, None]  # [model, cfg]
            per_model = jnp.sum(mask[:, None, :] & eq[None, :, :], axis=-1, dtype=jnp.int32)
            return jnp.take(per_model, engine_model, axis=1)

        kept_b = lax.cond(first, kept_first, kept_joint)  # [beam, engine]
        ok = alive[:, None] & (kept_b > 0) & (free_slots[None, :] - used > 0)
        if reserve:
            # Free slots of each model left in each beam, against the reservation of the
            # inflexible items after this one; inflexible items use the reserved slots.
            left = free_model[None, :] - jnp.sum(
                used[:, :, None] * engine_of_model[None, :, :], axis=1
            )  # [beam, model]
            unreserved = jnp.take(left > reserved_after[j][None, :], engine_model, axis=1)
            ok = ok & (unreserved | ~flexible_c[j])
        skip_ok = alive & ~jnp.any(ok, axis=1)
        step_gain = gain[engine_ids[None, :], jnp.minimum(used, num_slots - 1)]
        share = (kept_b * SHARE_SCALE) // jnp.maximum(num_viable[i], 1)
        cand_util = jnp.concatenate([util[:, None] + step_gain, util[:, None]], axis=1).reshape(-1)
        cand_flex = jnp.concatenate([flex[:, None] + share, flex[:, None]], axis=1).reshape(-1)
        cand_ok = jnp.concatenate([ok, skip_ok[:, None]], axis=1).reshape(-1)
        cand_ids = jnp.arange(width * num_cand, dtype=jnp.int32)
        key_util = jnp.where(cand_ok, -cand_util, _INFEASIBLE)
        key_flex = jnp.where(cand_ok, -cand_flex, 0)
        rank = _lexicographic_rank(key_util, key_flex)
        # The greedy line (best extension of the previous greedy line) always survives,
        # in the last place if it is not in the top ``width``: beam is never worse than
        # greedy (B = 1), which follows exactly this line.
        greedy_rank = jnp.min(jnp.where(cand_ids // num_cand == greedy, rank, width * num_cand))
        keep_rank = jnp.arange(width, dtype=jnp.int32)
        keep_rank = keep_rank.at[width - 1].set(jnp.maximum(keep_rank[width - 1], greedy_rank))
        hit = rank[None, :] == keep_rank[:, None]
        top = jnp.sum(jnp.where(hit, cand_ids[None, :], 0), axis=1, dtype=jnp.int32)
        new_greedy = jnp.minimum(greedy_rank, width - 1)
        parent = top // num_cand
        eng = top % num_cand
        new_alive = cand_ok[top]
        placed = new_alive & (eng < num_engines)
        new_used = used[parent] + ((engine_ids[None, :] == eng[:, None]) & placed[:, None]).astype(
            jnp.int32
        )
        new_hist = hist.at[j].set(jnp.stack([parent, jnp.where(placed, eng, -1)]))

        def narrow():
            base = jnp.where(first, viable_row[None, :], mask[parent])
            chosen_model = jnp.take(engine_model, jnp.minimum(eng, num_engines - 1)).astype(
                cfgm.dtype
            )
            keep = (cfgm[None, :] == chosen_model[:, None]) | ~placed[:, None]
            return base & keep

        new_mask = lax.cond(next_same_c[j], narrow, lambda: mask)
        return BeamState(
            step=j + 1,
            greedy=new_greedy,
            util=cand_util[top],
            flex=cand_flex[top],
            alive=new_alive,
            used=new_used,
            mask=new_mask,
            hist=new_hist,
        )

    zero = jnp.zeros((), jnp.int32)
    init = BeamState(
        step=zero,
        greedy=zero,
        util=jnp.zeros((width,), jnp.int32),
        flex=jnp.zeros((width,), jnp.int32),
        alive=jnp.arange(width) == 0,
        used=jnp.zeros((width, num_engines), jnp.int32),
        mask=jnp.zeros((width, num_cfg), bool),
        hist=jnp.zeros((num_items, 2, width), jnp.int32),
    )
    final = lax.while_loop(cond, body, init)
    num_steps, util, flex, hist = final.step, final.util, final.flex, final.hist

    # Back-pointers of the best beam (beam 0: beams are kept in rank order).
    def trace_back(t, carry):
        beam, choice = carry
        j = num_steps - 1 - t
        return hist[j, 0, beam], choice.at[j].set(hist[j, 1, beam])

    _, choice = lax.fori_loop(
        0, num_steps, trace_back, (jnp.zeros((), jnp.int32), jnp.full((num_items,), -1, jnp.int32))
    )
    engine = jnp.full((num_items,), -1, jnp.int32).at[order].set(choice, mode="drop")
    return BeamResult(engine=engine, utility=util[0], flex=flex[0], num_steps=num_steps)


def _lexicographic_rank(
    key_a: Int[Array, " cand"], key_b: Int[Array, " cand"]
) -> Int[Array, " cand"]:
    """Rank (0 = first) of every candidate by (key_a, key_b, index), a permutation.

    A pairwise comparison (cand^2 elementwise work, fused by XLA) instead of
    ``lax.sort``: with ~40 candidates it is about 15x cheaper per beam step on CPU.
    """
    ids = jnp.arange(key_a.shape[0], dtype=jnp.int32)
    a_lt = key_a[:, None] < key_a[None, :]
    a_eq = key_a[:, None] == key_a[None, :]
    b_lt = key_b[:, None] < key_b[None, :]
    b_eq = key_b[:, None] == key_b[None, :]
    before = a_lt | (
        a_eq & (b_lt | (b_eq & (ids[:, None] < ids[None, :])))
    )  # [x, y]: x ranks before y
    return jnp.sum(before, axis=0, dtype=jnp.int32)


def schedule_round(
    item_viable: Bool[Array, "item cfg"],
    item_cfg_model: Int[Array, "item cfg"],
    item_req: Int[Array, " item"],
    item_valid: Bool[Array, " item"],
    engine_model: Int[Array, " engine"],
    free_slots: Int[Array, " engine"],
    gain: Int[Array, "engine slot"],
    num_models: int,
    beam_width: int,
    reserve: bool = False,
) -> tuple[StageScores, BeamResult]:
    """One scheduling round: :func:`score_stages` then :func:`beam_assign`."""
    scores = score_stages(item_viable, item_cfg_model, num_models)
    result = beam_assign(
        scores.kept,
        scores.num_viable,
        item_viable,
        item_cfg_model,
        item_req,
        item_valid,
        engine_model,
        free_slots,
        gain,
        beam_width,
        reserve,
    )
    return scores, result
