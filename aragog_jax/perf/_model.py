"""Performance helpers shared by the simulator, the emulated engine and the scheduler.

Everything here reads an :class:`~aragog_jax.spec.EngineProfile`:

* ``curve_tokens_per_s`` / ``interp_curve``: generated tokens/s at n concurrent
  sequences, linear between curve points, from (0, 0) up to the first point, and flat
  past the last point.
* ``decode_iteration_s``: one continuous-batching decode iteration,
  ``t(b, ctx) = decode_base_s + decode_per_seq_s * b + decode_per_ctx_token_s * ctx``
  with ``ctx`` the total context tokens of the running batch.
* ``prefill_s``: compute-bound prefill of ``tokens`` prompt tokens.
* ``iteration_s``: one mixed iteration (chunked-prefill style): the decode step of the
  running batch plus the prefill of the tokens admitted in this iteration.
* ``profile_to_toml``: the one TOML writer for derived and measured profiles.
"""

from __future__ import annotations

import numpy as np

from aragog_jax.spec import EngineProfile


def curve_arrays(profile: EngineProfile) -> tuple[np.ndarray, np.ndarray]:
    """(concurrency float64[P], tokens_per_s float64[P]) with a (0, 0) point prepended.

    The prepended origin makes interpolation below the first point linear from zero;
    a curve that already starts at concurrency 0 is left as is.
    """
    xs = [float(p.concurrency) for p in profile.curve]
    ys = [float(p.tokens_per_s) for p in profile.curve]
    if xs[0] > 0:
        xs.insert(0, 0.0)
        ys.insert(0, 0.0)
    return np.asarray(xs), np.asarray(ys)


def interp_curve(xs: np.ndarray, ys: np.ndarray, n: np.ndarray | float) -> np.ndarray:
    """Tokens/s at concurrency ``n`` (array or scalar): linear, flat past the last point."""
    return np.interp(np.asarray(n, dtype=np.float64), xs, ys)


def curve_tokens_per_s(profile: EngineProfile, n: float) -> float:
    """Tokens/s of ``profile`` at ``n`` concurrent sequences (see :func:`interp_curve`)."""
    xs, ys = curve_arrays(profile)
    return float(interp_curve(xs, ys, n))


def decode_iteration_s(profile: EngineProfile, batch: int, ctx_tokens: float) -> float:
    """Seconds of one decode iteration for ``batch`` sequences holding ``ctx_tokens`` in total.

    Zero when the batch is empty.
    """
    if batch <= 0:
        return 0.0
    return (
        profile.decode_base_s
        + profile.decode_per_seq_s * batch
        + profile.decode_per_ctx_token_s * ctx_tokens
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
    t = (
        profile.decode_base_s
        + profile.decode_per_seq_s * max(batch, 0)
        + profile.decode_per_ctx_token_s * ctx_tokens
    )
    return t + prefill_tokens / profile.prefill_tokens_per_s


def steady_tokens_per_s(profile: EngineProfile, batch: int, ctx_per_seq: float) -> float:
    """Decode tokens/s at a steady batch of ``batch`` sequences of ``ctx_per_seq`` context each."""
    if batch <= 0:
        return 0.0
    return batch / decode_iteration_s(profile, batch, batch * ctx_per_seq)


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def profile_to_toml(p: EngineProfile, header: list[str]) -> str:
    """Render a profile as commented TOML after ``header`` comment lines.

    Deterministic, and loads back with ``load_profile``. ``date`` is written only when
    set (derived profiles have none).
    """
    lines = [
        *header,
        f"model = {_toml_str(p.model)}",
        f"hardware = {_toml_str(p.hardware)}",
        f"tensor_parallel = {p.tensor_parallel}",
        f"num_gpus = {p.num_gpus}",
        f'kind = "{p.kind}"',
        f"engine_version = {_toml_str(p.engine_version)}",
        *([f"date = {_toml_str(p.date)}"] if p.date else []),
        f"saturation_batch = {p.saturation_batch}",
        f"kv_capacity_tokens = {p.kv_capacity_tokens}",
        f"prefill_tokens_per_s = {p.prefill_tokens_per_s!r}",
        "# decode iteration seconds: t(b, ctx) = decode_base_s + decode_per_seq_s*b + decode_per_ctx_token_s*ctx",
        f"decode_base_s = {p.decode_base_s!r}",
        f"decode_per_seq_s = {p.decode_per_seq_s!r}",
        f"decode_per_ctx_token_s = {p.decode_per_ctx_token_s!r}",
        f"ttft_s = {p.ttft_s!r}",
        f"itl_s = {p.itl_s!r}",
        f"notes = {_toml_str(p.notes)}",
        "# [concurrent sequences, generated tokens/s]",
        "curve = [",
        *(f"  [{pt.concurrency}, {pt.tokens_per_s!r}]," for pt in p.curve),
        "]",
    ]
    return "\n".join(lines) + "\n"
