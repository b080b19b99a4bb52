"""Everything about one engine: talking to it and modelling it, once.

Pure (no I/O; the scheduler may import these):

* :mod:`~aragog_jax.engines.model`: the performance model of an engine profile: the
  throughput curve, the decode iteration time, prefill, the free-slot rule, the
  placeholder profile of an engine nobody profiled.
* :mod:`~aragog_jax.engines.batching`: :class:`BatchingEngine`, a continuous-batching
  engine on a clock it is given (the simulator's virtual clock, the emulated engine's
  wall clock).
* :mod:`~aragog_jax.engines.gauges`: parsing what an engine reports (``/metrics``
  gauges, KV capacity, slot count).
* :mod:`~aragog_jax.engines.fleet`: a fleet file's engines with their profiles, and
  workflow names resolved to files.

I/O (the server, the labeller and the profiler; never the scheduler or the router):

* :mod:`~aragog_jax.engines.http`: one session per event loop, the one transport-error
  mapping.
* :mod:`~aragog_jax.engines.client`: :class:`~aragog_jax.engines.client.EngineClient`,
  chat completions (one stream parser), probes, reported capacity.
* :mod:`~aragog_jax.engines.stages`: how one stage runs on the chosen engine (a chat
  call of its rendered prompt, or the workflow's own coroutine).

This package imports only :mod:`aragog_jax.spec` and :mod:`aragog_jax.errors` of the
project; ``serving``, ``sim``, ``data`` and ``perf`` build on it. This ``__init__``
exports the pure part only, so importing it never loads an HTTP client.
"""

from aragog_jax.engines.batching import BatchingEngine, run_standalone
from aragog_jax.engines.model import (
    KV_FULL,
    UNPROFILED_SATURATION,
    Curve,
    check_curve,
    curve_arrays,
    curve_tokens_per_s,
    curve_value,
    decode_iteration_s,
    decode_step_s,
    free_slots,
    interp_curve,
    iteration_s,
    placeholder_profile,
    prefill_s,
    profile_curve,
    steady_tokens_per_s,
)

__all__ = [
    "KV_FULL",
    "UNPROFILED_SATURATION",
    "BatchingEngine",
    "Curve",
    "check_curve",
    "curve_arrays",
    "curve_tokens_per_s",
    "curve_value",
    "decode_iteration_s",
    "decode_step_s",
    "free_slots",
    "interp_curve",
    "iteration_s",
    "placeholder_profile",
    "prefill_s",
    "profile_curve",
    "run_standalone",
    "steady_tokens_per_s",
]
