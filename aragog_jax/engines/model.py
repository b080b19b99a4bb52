"""The engine performance model: what an engine of a given profile does, as numbers.

Pure functions over an :class:`~aragog_jax.spec.EngineProfile` (no I/O, no clock), used
by the scheduler (curves, free slots), the simulator and the emulated engine (iteration
time, through :mod:`aragog_jax.engines.batching`), the profiler and the derivation:

* **Throughput curve** f(n): generated tokens/s at n concurrent sequences, linear
  between curve points, from (0, 0) up to the first point when that point is above 0
  sequences, and flat past the last point (:func:`curve_arrays`, :func:`curve_value`).
* **Decode iteration** of a continuous-batching engine:
  ``t(b, ctx) = decode_base_s + decode_per_seq_s * b + decode_per_ctx_token_s * ctx``
  with ``ctx`` the total context tokens of the running batch (:func:`decode_step_s`).
* **Prefill**: compute-bound, ``tokens / prefill_tokens_per_s`` (:func:`prefill_s`);
  a mixed iteration (chunked-prefill style) is the decode step of the running batch
  plus the prefill of the tokens admitted in it (:func:`iteration_s`).
* **Free slots**: ``max(0, saturation_batch - running - waiting)``, and 0 when the
  engine is unhealthy or its KV cache is at least :data:`KV_FULL` used
  (:func:`free_slots`).
* **Unprofiled engines** get :func:`placeholder_profile`: a concave curve over as many
  slots as the engine reports (see :mod:`aragog_jax.engines.gauges`), else
  :data:`UNPROFILED_SATURATION`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import numpy as np

from aragog_jax.errors import SchedulerError
from aragog_jax.spec import CurvePoint, EngineProfile

#: KV-cache usage at or above which an engine gets no new sequence.
KV_FULL = 0.99
#: Slots of an engine that has no profile and reports no capacity of its own.
UNPROFILED_SATURATION = 16

Curve = tuple[tuple[float, float], ...]


# -- throughput curve -----------------------------------------------------------------


def check_curve(curve: Iterable[Sequence[float]], where: str) -> Curve:
    """Validate curve points ``[[concurrency, tokens/s], ...]``; raise naming ``where``."""
    try:
        points = tuple((float(n), float(t)) for n, t in curve)
    except (TypeError, ValueError) as exc:
        raise SchedulerError(
            f"{where}: expected [[concurrency, tokens/s], ...], got {curve!r}"
        ) from exc
    if not points:
        raise SchedulerError(f"{where}: needs at least one point")
    xs = [p[0] for p in points]
    if any(not np.isfinite(v) or v < 0 for p in points for v in p):
        raise SchedulerError(f"{where}: points must be finite and >= 0, got {list(points)}")
    if any(b <= a for a, b in zip(xs, xs[1:], strict=False)):
        raise SchedulerError(f"{where}: concurrency must strictly increase, got {xs}")
    return points


def profile_curve(profile: EngineProfile) -> Curve:
    """A profile's curve as ``((concurrency, tokens/s), ...)`` floats."""
    return tuple((float(p.concurrency), float(p.tokens_per_s)) for p in profile.curve)


@functools.lru_cache(maxsize=1024)
def curve_arrays(curve: Curve) -> tuple[np.ndarray, np.ndarray]:
    """(xs, ys) float64 arrays ready for ``np.interp``, with (0, 0) prepended when the
    first point is above 0 sequences (interpolation below it is then linear from zero).

    Cached: engines keep their curve tuple across rounds. Do not mutate the results.
    """
    xs = np.array([p[0] for p in curve], dtype=np.float64)
    ys = np.array([p[1] for p in curve], dtype=np.float64)
    if xs[0] > 0:
        xs = np.concatenate([[0.0], xs])
        ys = np.concatenate([[0.0], ys])
    return xs, ys


def interp_curve(xs: np.ndarray, ys: np.ndarray, n: np.ndarray | float) -> np.ndarray:
    """Tokens/s at concurrency ``n`` (array or scalar): linear, flat past the last point."""
    return np.interp(np.asarray(n, dtype=np.float64), xs, ys)


def curve_value(curve: Curve, x: float) -> float:
    """f(x) of one throughput curve (tokens/s at x concurrent sequences)."""
    xs, ys = curve_arrays(curve)
    return np.interp(x, xs, ys)


def curve_tokens_per_s(profile: EngineProfile, n: float) -> float:
    """Tokens/s of ``profile`` at ``n`` concurrent sequences (see :func:`interp_curve`)."""
    xs, ys = curve_arrays(profile_curve(profile))
    return float(interp_curve(xs, ys, n))


# -- iteration time -------------------------------------------------------------------


def decode_step_s(
    base_s: float, per_seq_s: float, per_ctx_token_s: float, batch: float, ctx_tokens: float
) -> float:
    """``base_s + per_seq_s * batch + per_ctx_token_s * ctx_tokens``: the one formula of a
    decode iteration's seconds, for any batch (callers handle the empty batch)."""
    return base_s + per_seq_s * batch + per_ctx_token_s * ctx_tokens


def decode_iteration_s(profile: EngineProfile, batch: int, ctx_tokens: float) -> float:
    """Seconds of one decode iteration for ``batch`` sequences holding ``ctx_tokens`` in total.

    Zero when the batch is empty.
    """
    if batch <= 0:
        return 0.0
    return decode_step_s(
        profile.decode_base_s,
        profile.decode_per_seq_s,
        profile.decode_per_ctx_token_s,
        batch,
        ctx_tokens,
    )


def prefill_s(profile: EngineProfile, tokens: int) -> float:
    """Seconds of compute-bound prefill for ``tokens`` prompt tokens (no fixed overhead)."""
    return tokens / profile.prefill_tokens_per_s


def iteration_s(
    profile: EngineProfile, batch: int, ctx_tokens: float, prefill_tokens: float = 0
) -> float:
    """Seconds of one mixed iteration: decode of ``batch`` sequences plus ``prefill_tokens``.

    An iteration that only prefills still pays the fixed per-iteration cost
    ``decode_base_s`` (weights are streamed, kernels launched, one token is sampled).
    """
    if batch <= 0 and prefill_tokens <= 0:
        return 0.0
    t = decode_step_s(
        profile.decode_base_s,
        profile.decode_per_seq_s,
        profile.decode_per_ctx_token_s,
        max(batch, 0),
        ctx_tokens,
    )
    return t + prefill_tokens / profile.prefill_tokens_per_s


def steady_tokens_per_s(profile: EngineProfile, batch: int, ctx_per_seq: float) -> float:
    """Decode tokens/s at a steady batch of ``batch`` sequences of ``ctx_per_seq`` context each."""
    if batch <= 0:
        return 0.0
    return batch / decode_iteration_s(profile, batch, batch * ctx_per_seq)


# -- slots ----------------------------------------------------------------------------


def free_slots(
    saturation_batch: int, running: int, waiting: int, kv_usage: float, healthy: bool
) -> int:
    """New sequences an engine may take now (see the module docstring); an unknown (NaN)
    KV usage counts as full."""
    if healthy and kv_usage < KV_FULL:
        return max(0, int(saturation_batch) - int(running) - int(waiting))
    return 0


def placeholder_profile(
    model: str, slots: int = UNPROFILED_SATURATION, source: str = ""
) -> EngineProfile:
    """The profile of an engine nobody profiled: ``slots`` slots and a concave curve
    (tokens/s ~ sqrt(sequences)), so each extra sequence on a busy engine gains less than
    one on an idle engine and the scheduler spreads load. A linear curve would make every
    engine look the same and pile work on the first.

    ``source`` says where ``slots`` came from (empty: the fixed default).
    """
    n = max(1, int(slots))
    points = sorted({k for k in (1, 2, 4, 8) if k < n} | {n})
    note = "placeholder: engine has no profile"
    if source:
        note += f"; {n} slots from {source}"
    return EngineProfile(
        model=model,
        hardware="unknown",
        tensor_parallel=1,
        kind="derived",
        saturation_batch=n,
        kv_capacity_tokens=1 << 30,
        prefill_tokens_per_s=1e6,
        decode_base_s=0.01,
        decode_per_seq_s=0.0,
        decode_per_ctx_token_s=0.0,
        curve=[CurvePoint(k, 100.0 * k**0.5) for k in points],
        notes=note,
    )
