"""Routing kernels: MLP trunk, dense and factorised heads, threshold masks, dominance.

Pure array functions (STYLE 1): no jit, no I/O. :class:`aragog_jax.router.Router` jits
and compiles them per request bucket. Every function has a NumPy twin of the same name in
:mod:`aragog_jax.kernels._reference`.

Parameters are a plain pytree (dict of arrays)::

    {"hidden": [{"w": f32[feat, hid], "b": f32[hid]}, ...],          # ReLU layers
     "head": {"w": f32[hid, cfg], "b": f32[cfg]}}                      # dense head
     "head": {"stage_model": f32[stage, model, hid], "b": f32[cfg]}}   # factorised head

The factorised head scores configuration c as ``<h(x), sum_s E[s, configs[c, s]]> + b_c``,
so its parameters grow with S*M instead of C.

A configuration is admitted when its logit is at least its threshold (thresholds are in
logit space; ``+inf`` never admits) or when ``always`` is set (``c_max``); so no real
row is ever empty. Padding configurations carry threshold ``+inf`` and ``always=False``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

__all__ = [
    "config_embedding",
    "dominance_complete",
    "mlp_trunk",
    "router_logits",
    "route",
    "route_chunk",
    "threshold_mask",
]


def mlp_trunk(
    hidden: list[dict[str, Array]], features: Float[Array, "req feat"]
) -> Float[Array, "req hid"]:
    """ReLU MLP over the features.

    Args:
      hidden: the ``params["hidden"]`` list; layer i maps ``[.., d_i] -> [.., d_{i+1}]``.
      features: float32[R, D].

    Returns:
      float32[R, H] the last hidden layer (the features themselves when ``hidden`` is empty).
    """
    h = features
    for layer in hidden:
        h = jax.nn.relu(h @ layer["w"] + layer["b"][None, :])
    return h


def config_embedding(
    stage_model: Float[Array, "stage model hid"], configs: Int[Array, "cfg stage"]
) -> Float[Array, "cfg hid"]:
    """Factorised configuration embeddings: ``e_c = sum_s stage_model[s, configs[c, s]]``.

    Args:
      stage_model: float32[S, M, H] learned (stage, model) embeddings.
      configs: int32[C, S] model id of every stage (the space's order).

    Returns:
      float32[C, H].
    """
    num_stages = stage_model.shape[0]
    stage_ids = jnp.arange(num_stages, dtype=jnp.int32)[None, :]
    return stage_model[stage_ids, configs].sum(axis=1)


def router_logits(
    params: dict, features: Float[Array, "req feat"], configs: Int[Array, "cfg stage"] | None = None
) -> Float[Array, "req cfg"]:
    """One logit per (request, configuration).

    Args:
      params: router parameters (module docstring).
      features: float32[R, D].
      configs: int32[C, S], needed by the factorised head only.

    Returns:
      float32[R, C] logits of "configuration c is as accurate as c_max on this input".
    """
    h = mlp_trunk(params["hidden"], features)
    head = params["head"]
    if "w" in head:
        return h @ head["w"] + head["b"][None, :]
    emb = config_embedding(head["stage_model"], configs)
    return h @ emb.T + head["b"][None, :]


def threshold_mask(
    logits: Float[Array, "req cfg"], thresholds: Float[Array, " cfg"], always: Bool[Array, " cfg"]
) -> Bool[Array, "req cfg"]:
    """Admit c when ``logits[r, c] >= thresholds[c]`` or ``always[c]``.

    Args:
      logits: float32[R, C].
      thresholds: float32[C] in logit space; ``+inf`` never admits.
      always: bool[C] configurations admitted unconditionally (``c_max``).

    Returns:
      bool[R, C] admission mask.
    """
    return (logits >= thresholds[None, :]) | always[None, :]


def route(
    params: dict,
    features: Float[Array, "req feat"],
    thresholds: Float[Array, " cfg"],
    always: Bool[Array, " cfg"],
    configs: Int[Array, "cfg stage"] | None = None,
) -> tuple[Bool[Array, "req cfg"], Float[Array, "req cfg"]]:
    """Features to admission mask, the whole router in one kernel.

    Args:
      params: router parameters.
      features: float32[R, D] (padding rows: anything; rows never mix).
      thresholds: float32[C] logit thresholds.
      always: bool[C] always-admitted configurations.
      configs: int32[C, S] for the factorised head.

    Returns:
      ``(mask bool[R, C], prob float32[R, C])`` with prob the sigmoid of the logits.
    """
    logits = router_logits(params, features, configs)
    return threshold_mask(logits, thresholds, always), jax.nn.sigmoid(logits)


def route_chunk(
    head: dict,
    hidden: Float[Array, "req hid"],
    thresholds: Float[Array, " cfg"],
    always: Bool[Array, " cfg"],
    start: Int[Array, ""],
    chunk: int,
    configs: Int[Array, "cfg stage"] | None = None,
) -> tuple[Bool[Array, "req chunk"], Float[Array, "req chunk"]]:
    """Score configurations ``[start, start + chunk)`` only (cheapest-first budgeted routing).

    ``start`` is traced (one compile serves every chunk); it must satisfy
    ``0 <= start <= C - chunk``, which the caller guarantees by clamping the last chunk.

    Args:
      head: ``params["head"]``.
      hidden: float32[R, H] the trunk output.
      thresholds: float32[C]; always: bool[C].
      start: int32 scalar, first configuration of the chunk.
      chunk: static chunk width.
      configs: int32[C, S] for the factorised head.

    Returns:
      ``(mask bool[R, chunk], prob float32[R, chunk])``.
    """
    thr = jax.lax.dynamic_slice_in_dim(thresholds, start, chunk)
    alw = jax.lax.dynamic_slice_in_dim(always, start, chunk)
    b = jax.lax.dynamic_slice_in_dim(head["b"], start, chunk)
    if "w" in head:
        w = jax.lax.dynamic_slice_in_dim(head["w"], start, chunk, axis=1)
    else:
        cfg = jax.lax.dynamic_slice_in_dim(configs, start, chunk, axis=0)
        w = config_embedding(head["stage_model"], cfg).T
    logits = hidden @ w + b[None, :]
    return threshold_mask(logits, thr, alw), jax.nn.sigmoid(logits)


def dominance_complete(
    mask: Bool[Array, "req cfg"], evaluated: Bool[Array, " cfg"], dominates: Bool[Array, "cfg cfg"]
) -> Bool[Array, "req cfg"]:
    """Fill in configurations the budget left unevaluated, by dominance.

    An evaluated configuration keeps its mask bit. An unevaluated configuration ``a`` is
    admitted iff some evaluated, admitted ``b`` is dominated by it (``dominates[a, b]``:
    every stage of ``a`` uses a model at least as large as ``b``'s).

    Args:
      mask: bool[R, C] admission of the evaluated configurations (others: ignored).
      evaluated: bool[C] configurations the router scored.
      dominates: bool[C, C] the space's dominance relation.

    Returns:
      bool[R, C].
    """
    support = (mask & evaluated[None, :]).astype(jnp.float32)
    # via[r, a] = sum_b support[r, b] * dominates[a, b]; exact in f32 (integer counts <= C).
    via = support @ dominates.astype(jnp.float32).T > 0
    return jnp.where(evaluated[None, :], mask, via)
