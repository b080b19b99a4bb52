"""Pure ``jax.numpy`` kernels (STYLE 1): no jit, I/O or state; the caller jits.

Twins with the same names and semantics live in ``aragog_jax.kernels._reference``, exported
as ``aragog_jax.kernels.reference`` (NumPy; the integer scores are bit-exact).
"""

from aragog_jax.kernels import _reference as reference
from aragog_jax.kernels.routing import (
    config_embedding,
    dominance_complete,
    mlp_trunk,
    route,
    route_chunk,
    router_logits,
    threshold_mask,
)
from aragog_jax.kernels.scheduling import (
    SHARE_SCALE,
    BeamResult,
    StageScores,
    beam_assign,
    schedule_round,
    score_stages,
)

__all__ = [
    "SHARE_SCALE",
    "BeamResult",
    "StageScores",
    "beam_assign",
    "config_embedding",
    "dominance_complete",
    "mlp_trunk",
    "reference",
    "route",
    "route_chunk",
    "router_logits",
    "schedule_round",
    "score_stages",
    "threshold_mask",
]
