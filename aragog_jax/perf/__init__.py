"""Engine performance: profile derivation (``derive``) and shared helpers over profiles."""

from aragog_jax.perf._model import (
    curve_arrays,
    curve_tokens_per_s,
    decode_iteration_s,
    interp_curve,
    iteration_s,
    prefill_s,
    steady_tokens_per_s,
)

__all__ = [
    "curve_arrays",
    "curve_tokens_per_s",
    "decode_iteration_s",
    "interp_curve",
    "iteration_s",
    "prefill_s",
    "steady_tokens_per_s",
]
