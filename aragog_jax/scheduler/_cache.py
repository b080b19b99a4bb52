"""Per-engine curve values and gain tables, remembered across rounds.

A round needs each engine's quantised gain row (:func:`gain_row`) and, after the search,
f_e(load_e) and f_e(load_e + assigned_e) for U. Both depend only on the engines' curves,
their loads and the round's slot bucket, which repeat from round to round, so a round's
tables are computed once per (loads, slot bucket) and looked up afterwards. The cache
holds each engine's curve and forgets everything when a load vector brings a different
one (compared by value: the fleet's capacity, which every gain divides by, changes with
it), so a lookup always equals the direct computation.

One array of values serves both: ``values[e, k] = f_e(load_e + k)`` is the ``np.interp``
that :func:`gain_row` differences, and U's f_e(load_e + a_e) is the same ``np.interp`` at
the same point (``curve_value``), so U is read off the row instead of recomputed.
"""

from __future__ import annotations

import numpy as np

from aragog_jax.engines.model import Curve, curve_arrays
from aragog_jax.scheduler._load import LoadVector

#: Entries remembered per table (rows, round tables) before that table is cleared.
CACHE_SIZE = 16_384


class RoundCurves:
    """The curve side of one round (read-only arrays shared with later rounds).

    Attributes:
      gain: int32[E, K] ``LoadVector.gain_table(K, utility_scale)``.
      values: float64[E, K + 1] f_e(load_e + k).
      capacity: ``LoadVector.capacity()``.
    """

    __slots__ = ("gain", "values", "capacity", "_utilization")

    def __init__(self, gain: np.ndarray, values: np.ndarray, capacity: float) -> None:
        self.gain = gain
        self.values = values
        self.capacity = capacity
        self._utilization: dict[tuple[int, ...], float] = {}

    def utilization(self, counts: tuple[int, ...]) -> float:
        """``LoadVector.utilization(counts)`` for counts (per engine) of at most K: the
        same per-engine differences (an engine with none adds f(load) - f(load) = 0.0
        exactly), summed in engine order by the same ``ndarray.sum``; remembered per
        counts."""
        u = self._utilization.get(counts)
        if u is None:
            if len(self._utilization) >= CACHE_SIZE:
                self._utilization.clear()
            u = self._utilization[counts] = self._compute(np.array(counts, dtype=np.int64))
        return u

    def _compute(self, counts: np.ndarray) -> float:
        if self.capacity <= 0:
            return 0.0
        values = self.values
        gain = values[np.arange(values.shape[0]), counts] - values[:, 0]
        return float(gain.sum() / self.capacity)


class CurveCache:
    """``load.gain_table`` and ``load.utilization`` with memory across rounds.

    Args:
      num_engines: engines of the scheduler (load vectors come in its engine order).
      utility_scale: U resolution of the gain rows.
    """

    def __init__(self, num_engines: int, utility_scale: int) -> None:
        self.utility_scale = int(utility_scale)
        self._curves: list[Curve | None] = [None] * num_engines
        self._capacity = 0.0
        self._rows: dict[tuple[int, int, int], np.ndarray] = {}  # (engine, load, K) -> values
        self._rounds: dict[tuple[tuple[int, ...], int], RoundCurves] = {}  # (loads, K)

    def _loads(self, load: LoadVector) -> tuple[int, ...]:
        """The engines' loads, after taking on any curve that changed."""
        curves = self._curves
        changed = False
        loads = []
        for e, eng in enumerate(load.engines):
            curve = eng.curve
            if curve is not curves[e]:
                if curve != curves[e]:
                    changed = True
                curves[e] = curve
            loads.append(eng.load)
        if changed:
            self._rows.clear()
            self._rounds.clear()
            self._capacity = load.capacity()
        return tuple(loads)

    def round(self, load: LoadVector, num_slots: int) -> RoundCurves:
        """The gain table and curve values of ``load`` for ``num_slots`` slots."""
        loads = self._loads(load)
        key = (loads, num_slots)
        hit = self._rounds.get(key)
        if hit is not None:
            return hit
        if len(self._rounds) >= CACHE_SIZE:
            self._rounds.clear()
        values = np.stack([self._values(e, ld, num_slots) for e, ld in enumerate(loads)])
        cap = self._capacity
        if cap <= 0:
            gain = np.zeros((len(loads), num_slots), dtype=np.int32)
        else:  # gain_row's expression, row by row (elementwise: the same integers)
            gain = np.rint(np.diff(values, axis=1) / cap * self.utility_scale).astype(np.int32)
        values.flags.writeable = False
        gain.flags.writeable = False
        hit = self._rounds[key] = RoundCurves(gain, values, cap)
        return hit

    def _values(self, e: int, load: int, num_slots: int) -> np.ndarray:
        """float64[num_slots + 1] f_e(load + k), ``gain_row``'s ``np.interp``."""
        key = (e, load, num_slots)
        row = self._rows.get(key)
        if row is None:
            if len(self._rows) >= CACHE_SIZE:
                self._rows.clear()
            xs, ys = curve_arrays(self._curves[e])
            row = self._rows[key] = np.interp(
                load + np.arange(num_slots + 1, dtype=np.float64), xs, ys
            )
        return row

    def gain_table(self, load: LoadVector, num_slots: int) -> np.ndarray:
        """int32[E, num_slots]: ``load.gain_table(num_slots, utility_scale)`` (read-only)."""
        return self.round(load, num_slots).gain

    def utilization(self, load: LoadVector, counts: np.ndarray) -> float:
        """``load.utilization(counts)``: U of the engines' assigned counts."""
        counts = tuple(np.asarray(counts, dtype=np.int64).tolist())
        return self.round(load, max(max(counts, default=0), 1)).utilization(counts)
