"""One scheduling round as padded arrays, and the jitted, bucketed round function.

:class:`RoundArrays` is what a policy sees: the kernel inputs of one round on the host,
already padded to buckets. The state machine and the round-replay CLI both build one.
:class:`CompiledRounds` owns the jitted wrapper of ``score_stages`` + ``beam_assign``:
one executable per (items, configurations, slots, engines, dtype, beam) bucket,
compiled ahead of time with ``jax.jit(f).lower(...).compile()`` and cached, so the hot
path never traces.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from aragog_jax.errors import SchedulerError
from aragog_jax.kernels import BeamResult, StageScores, reference, schedule_round
from aragog_jax.space import bucket_size

#: Smallest item / configuration / slot buckets (powers of two above them).
MIN_ITEMS = 16
MIN_CONFIGS = 32
MIN_SLOTS = 64


def model_dtype(num_models: int) -> type[np.signedinteger]:
    """Narrowest id dtype: int8 keeps the per-round copies and the scoring pass small."""
    return np.int8 if num_models < 127 else np.int32


@dataclass(frozen=True, eq=False, init=False)
class RoundArrays:
    """Kernel inputs of one round, padded (see ``aragog_jax.kernels.beam_assign``).

    Attributes:
      item_viable: bool[R, C] viable mask of each item's request (padding: False).
      item_cfg_model: int[R, C] model id per configuration at the item's stage (-1 pad).
      item_req: int32[R] request key (the scheduler's: the request's row); items of a
        request are consecutive, and only neighbours' keys are compared (-1 pad).
      item_valid: bool[R] real item.
      engine_model: int32[E] model id of each engine.
      free_slots: int32[E] free slots of each engine.
      gain: int32[E, K] quantised gain of the (k+1)-th sequence per engine.
      num_models: number of model ids.
      num_items: real items (a prefix of the R rows).
    """

    item_viable: np.ndarray
    item_cfg_model: np.ndarray
    item_req: np.ndarray
    item_valid: np.ndarray
    engine_model: np.ndarray
    free_slots: np.ndarray
    gain: np.ndarray
    num_models: int
    num_items: int

    def __init__(
        self,
        item_viable: np.ndarray,
        item_cfg_model: np.ndarray,
        item_req: np.ndarray,
        item_valid: np.ndarray,
        engine_model: np.ndarray,
        free_slots: np.ndarray,
        gain: np.ndarray,
        num_models: int,
        num_items: int,
    ) -> None:
        # The instance dict filled at once (a frozen dataclass's generated __init__ sets
        # each field through object.__setattr__; one per round), as the scheduler's Plan.
        self.__dict__.update(
            item_viable=item_viable,
            item_cfg_model=item_cfg_model,
            item_req=item_req,
            item_valid=item_valid,
            engine_model=engine_model,
            free_slots=free_slots,
            gain=gain,
            num_models=num_models,
            num_items=num_items,
        )

    def kernel_args(self) -> tuple[Any, ...]:
        """Positional arguments of ``schedule_round`` (without the static ones)."""
        return (
            self.item_viable,
            self.item_cfg_model,
            self.item_req,
            self.item_valid,
            self.engine_model,
            self.free_slots,
            self.gain,
        )

    def bucket_key(self, beam_width: int, reserve: bool = False) -> tuple:
        # The dtype object itself (hashable, equal for equal dtypes): its ``str`` runs
        # NumPy's Python-level name lookup on every round.
        return (
            self.item_viable.shape,
            self.gain.shape,
            self.item_cfg_model.dtype,
            self.num_models,
            beam_width,
            reserve,
        )


def pad_round(
    item_viable: np.ndarray,
    item_cfg_model: np.ndarray,
    item_req: np.ndarray,
    engine_model: np.ndarray,
    free_slots: np.ndarray,
    gain: np.ndarray,
    num_models: int,
    *,
    item_bucket: int | None = None,
    cfg_bucket: int | None = None,
) -> RoundArrays:
    """Pad unpadded per-item arrays (``n`` real items) to power-of-two buckets."""
    n, c = item_viable.shape
    r_b = item_bucket or bucket_size(max(n, MIN_ITEMS))
    c_b = cfg_bucket or bucket_size(max(c, MIN_CONFIGS))
    k_b = bucket_size(max(gain.shape[1], MIN_SLOTS))
    if r_b < n or c_b < c:
        raise SchedulerError(
            f"round of {n} items x {c} configurations exceeds bucket {r_b} x {c_b}"
        )
    viable = np.zeros((r_b, c_b), dtype=bool)
    viable[:n, :c] = item_viable
    cfgm = np.full((r_b, c_b), -1, dtype=model_dtype(num_models))
    cfgm[:n, :c] = item_cfg_model
    req = np.full(r_b, -1, dtype=np.int32)
    req[:n] = item_req
    valid = np.zeros(r_b, dtype=bool)
    valid[:n] = True
    g = np.zeros((gain.shape[0], k_b), dtype=np.int32)
    g[:, : gain.shape[1]] = gain
    return RoundArrays(
        item_viable=viable,
        item_cfg_model=cfgm,
        item_req=req,
        item_valid=valid,
        engine_model=np.asarray(engine_model, dtype=np.int32),
        free_slots=np.minimum(np.asarray(free_slots, dtype=np.int32), k_b),
        gain=g,
        num_models=int(num_models),
        num_items=n,
    )


class CompiledRounds:
    """Ahead-of-time compiled ``schedule_round`` executables, one per bucket.

    ``reserve`` fixes the ranking rule of every executable it holds: True is the
    scarcity reservation (``aragog-scarce``), False the paper's rule (``aragog``,
    ``aragog-paper``); see ``aragog_jax.kernels.scheduling``. ``num_traces`` counts traces of the wrapped
    function; tests assert that a second round in a bucket does not add one.
    """

    def __init__(self, *, reserve: bool = False) -> None:
        self.reserve = bool(reserve)
        self._cache: dict[tuple, Any] = {}
        self._lock = threading.Lock()
        self.num_traces = 0

    def _fn(self, *args, num_models: int, beam_width: int):
        self.num_traces += 1  # runs at trace time only
        return schedule_round(*args, num_models, beam_width, self.reserve)

    def compile(self, arrays: RoundArrays, beam_width: int):
        """The executable for ``arrays``' bucket, compiling it on first use."""
        key = arrays.bucket_key(beam_width, self.reserve)
        exe = self._cache.get(key)
        if exe is None:
            with self._lock:
                exe = self._cache.get(key)
                if exe is None:
                    jitted = jax.jit(self._fn, static_argnames=("num_models", "beam_width"))
                    exe = jitted.lower(
                        *arrays.kernel_args(), num_models=arrays.num_models, beam_width=beam_width
                    ).compile()
                    self._cache[key] = exe
        return exe

    def warm(
        self,
        beam_width: int,
        engine_model: np.ndarray,
        num_models: int,
        *,
        cfg_bucket: int,
        slot_bucket: int,
        item_buckets: tuple[int, int],
    ) -> int:
        """Compile every item bucket from ``item_buckets[0]`` to ``item_buckets[1]`` (powers
        of two from MIN_ITEMS) for rounds of these engines; returns the number of buckets."""
        lo, hi = item_buckets
        num_engines = len(engine_model)
        r_b = bucket_size(max(lo, MIN_ITEMS))
        buckets = 0
        while True:
            arrays = pad_round(
                np.zeros((0, cfg_bucket), dtype=bool),
                np.zeros((0, cfg_bucket), dtype=model_dtype(num_models)),
                np.zeros(0, dtype=np.int32),
                engine_model,
                np.zeros(num_engines, dtype=np.int32),
                np.zeros((num_engines, slot_bucket), dtype=np.int32),
                num_models,
                item_bucket=r_b,
                cfg_bucket=cfg_bucket,
            )
            self.compile(arrays, beam_width)
            buckets += 1
            if r_b >= hi:
                return buckets
            r_b *= 2

    @property
    def buckets(self) -> tuple[tuple, ...]:
        return tuple(self._cache)

    def __call__(self, arrays: RoundArrays, beam_width: int) -> tuple[StageScores, BeamResult]:
        """Run one round; returns the kernels' outputs (device arrays: convert what you use)."""
        return self.compile(arrays, beam_width)(*arrays.kernel_args())


#: Whether the default ``aragog`` policy applies the scarcity reservation. It stays the
#: paper's rule until the reservation wins on the calibrated world in every case of
#: ``bench/results/paper.md`` (issue 18's bar); ``aragog-scarce`` runs it meanwhile.
SCARCITY_DEFAULT = False
#: Shared by every scheduler in the process: executables depend only on the bucket and
#: the rule. COMPILED_PAPER runs the paper's rule, COMPILED_SCARCE the reservation, and
#: COMPILED (the default policy's) is one of the two.
COMPILED_PAPER = CompiledRounds(reserve=False)
COMPILED_SCARCE = CompiledRounds(reserve=True)
COMPILED = COMPILED_SCARCE if SCARCITY_DEFAULT else COMPILED_PAPER


def twin_round(
    arrays: RoundArrays, beam_width: int | None, *, reserve: bool = SCARCITY_DEFAULT
) -> tuple[StageScores, BeamResult]:
    """The same round with the kernels' twins (``aragog_jax.kernels._reference``).

    ``beam_width=None`` runs the exhaustive search instead of the beam; ``reserve`` as
    :class:`CompiledRounds`.
    """
    scores = reference.score_stages(arrays.item_viable, arrays.item_cfg_model, arrays.num_models)
    args = (
        scores.kept,
        scores.num_viable,
        arrays.item_viable,
        arrays.item_cfg_model,
        arrays.item_req,
        arrays.item_valid,
        arrays.engine_model,
        arrays.free_slots,
        arrays.gain,
    )
    if beam_width is None:
        return scores, reference.brute_force_assign(*args, reserve=reserve)
    return scores, reference.beam_assign(*args, beam_width, reserve)
