"""Per-engine gain rows and curve values, remembered across rounds.

A round needs each engine's quantised gain row (:func:`gain_row`) and, after the search,
f_e(load_e) and f_e(load_e + assigned_e) for U. Both depend only on the engine's curve,
its load and the round's slot bucket, which repeat from round to round, so they are
computed once per (engine, load, ...) and looked up afterwards. Entries are keyed by the
engine's position in the scheduler's engine order; the cache holds each engine's curve
and drops that engine's entries when a load vector brings a different one (compared by
value), so a lookup always equals the direct computation.
"""

from __future__ import annotations

import numpy as np

from aragog_jax.scheduler._load import Curve, LoadVector, curve_value, gain_row

#: Entries remembered per engine and table before that table is cleared.
CACHE_SIZE = 16_384


class CurveCache:
    """``load.gain_table`` and ``load.utilization`` with per-engine memory.

    Args:
      num_engines: engines of the scheduler (load vectors come in its engine order).
      utility_scale: U resolution of the gain rows.
    """

    def __init__(self, num_engines: int, utility_scale: int) -> None:
        self.utility_scale = int(utility_scale)
        self._curves: list[Curve | None] = [None] * num_engines
        self._gains: list[dict[tuple[int, int, float], np.ndarray]] = [
            {} for _ in range(num_engines)
        ]
        self._values: list[dict[tuple[int, float], float]] = [{} for _ in range(num_engines)]

    def _engine(self, e: int, curve: Curve) -> None:
        """Make engine ``e``'s entries those of ``curve``."""
        known = self._curves[e]
        if known is not curve:
            if known != curve:
                self._gains[e].clear()
                self._values[e].clear()
            self._curves[e] = curve

    def gain_table(self, load: LoadVector, num_slots: int) -> np.ndarray:
        """int32[E, num_slots]: ``load.gain_table(num_slots, utility_scale)``."""
        cap = load.capacity()
        out = np.zeros((len(load.engines), num_slots), dtype=np.int32)
        if cap <= 0:
            return out
        for e, eng in enumerate(load.engines):
            self._engine(e, eng.curve)
            table = self._gains[e]
            key = (eng.load, num_slots, cap)
            row = table.get(key)
            if row is None:
                if len(table) >= CACHE_SIZE:
                    table.clear()
                row = table[key] = gain_row(eng.curve, eng.load, num_slots, cap, self.utility_scale)
            out[e] = row
        return out

    def utilization(self, load: LoadVector, counts: np.ndarray) -> float:
        """``load.utilization(counts)``: U of the engines' assigned counts.

        An engine with no assignment adds f(load + 0.0) - f(load) = 0.0 exactly, so only
        the engines with one are looked up; the sum runs over all of them in engine
        order, as ``load.utilization`` does.
        """
        cap = load.capacity()
        if cap <= 0:
            return 0.0
        gain = np.zeros(len(load.engines))
        engines = load.engines
        for e, x in zip(np.flatnonzero(counts).tolist(), counts[counts > 0].tolist(), strict=True):
            eng = engines[e]
            self._engine(e, eng.curve)
            table = self._values[e]
            ld = eng.load
            gain[e] = self._value(table, eng.curve, ld, float(x)) - self._value(
                table, eng.curve, ld, 0.0
            )
        return float(gain.sum() / cap)

    @staticmethod
    def _value(table: dict, curve: Curve, load: int, dx: float) -> float:
        key = (load, dx)
        value = table.get(key)
        if value is None:
            if len(table) >= CACHE_SIZE:
                table.clear()
            value = table[key] = curve_value(curve, load + np.float64(dx))
        return value
