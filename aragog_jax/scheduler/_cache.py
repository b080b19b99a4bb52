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
#: Loads 0..LINE_POINTS-1 of an engine's curve are computed at once for host rounds (a
#: row at a load past them is computed alone).
LINE_POINTS = 4096


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


class HostCurves:
    """The curve side of a round that runs on the host (``Scheduler``'s small rounds):
    per engine its gain row and curve values as Python lists (read-only, shared with
    later rounds).

    Attributes:
      gains: per engine, its row of ``LoadVector.gain_table(K, utility_scale)``.
      values: per engine, f_e(load_e + k) for k = 0..K.
      capacity: ``LoadVector.capacity()``.
    """

    __slots__ = ("gains", "values", "capacity")

    def __init__(self, gains: list[list[int]], values: list[list[float]], capacity: float):
        self.gains = gains
        self.values = values
        self.capacity = capacity

    def utilization(self, counts: list[int]) -> float:
        """:meth:`RoundCurves.utilization` of ``counts`` (per engine, at most K): the same
        float64 differences, summed by ``ndarray.sum`` over an array of the same length
        and order, divided by the same capacity. An engine with no count adds exactly
        0.0, so with at most two engines assigned the sum is the one rounded addition of
        their differences whatever the order, done here in Python."""
        if self.capacity <= 0:
            return 0.0
        values = self.values
        terms = [values[e][c] - values[e][0] for e, c in enumerate(counts) if c]
        if len(terms) > 2:
            gain = np.array([row[c] - row[0] for row, c in zip(values, counts, strict=True)])
            return float(gain.sum() / self.capacity)
        return sum(terms, 0.0) / self.capacity


class CurveCache:
    """``load.gain_table`` and ``load.utilization`` with memory across rounds.

    Args:
      num_engines: engines of the scheduler (load vectors come in its engine order).
      utility_scale: U resolution of the gain rows.
    """

    def __init__(self, num_engines: int, utility_scale: int) -> None:
        self.utility_scale = int(utility_scale)
        self._curves: list[Curve | None] = [None] * num_engines  # the last load's
        self._capacity = 0.0
        self._rows: dict[tuple[int, int, int], np.ndarray] = {}  # (engine, load, K) -> values
        self._rounds: dict[tuple[tuple[int, ...], int], RoundCurves] = {}  # (loads, K)
        self._host_rows: dict[tuple[int, int, int], tuple[list[int], list[float]]] = {}
        self._hosts: dict[tuple[tuple[int, ...], int], HostCurves] = {}  # (loads, K)
        self._lines: dict[int, tuple[list[int], list[float]]] = {}  # engine -> from load 0

    def _loads(self, load: LoadVector) -> tuple[int, ...]:
        """The engines' loads, after taking on any curve that changed."""
        engines = load.engines
        curves = [eng.curve for eng in engines]
        if curves != self._curves:  # element by element: the same object, or equal values
            for table in (self._rows, self._rounds, self._host_rows, self._hosts, self._lines):
                table.clear()
            self._capacity = load.capacity()
        self._curves = curves
        return tuple([eng.load for eng in engines])

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

    def host(self, load: LoadVector, num_slots: int) -> HostCurves:
        """:meth:`round`'s gain rows and curve values as Python lists, engine by engine
        (each row remembered per (engine, load, K): a round with other loads on a few
        engines computes only theirs)."""
        loads = self._loads(load)
        key = (loads, num_slots)
        hit = self._hosts.get(key)
        if hit is not None:
            return hit
        if len(self._hosts) >= CACHE_SIZE:
            self._hosts.clear()
        rows = self._host_rows
        gains, values = [], []
        for e, ld in enumerate(loads):
            row = rows.get((e, ld, num_slots))
            if row is None:
                if len(rows) >= CACHE_SIZE:
                    rows.clear()
                row = rows[(e, ld, num_slots)] = self._host_row(e, ld, num_slots)
            gains.append(row[0])
            values.append(row[1])
        hit = self._hosts[key] = HostCurves(gains, values, self._capacity)
        return hit

    def _host_row(self, e: int, load: int, num_slots: int) -> tuple[list[int], list[float]]:
        """One engine's (gain row, values) for :meth:`host`: :meth:`round`'s expression on
        its one row (elementwise: the same integers), cut from the engine's line."""
        end = load + num_slots + 1
        if end > LINE_POINTS:  # a load past the line: this row alone
            return self._gain_values(e, load + np.arange(end - load, dtype=np.float64))
        line = self._lines.get(e)
        if line is None or len(line[1]) < end:
            size = min(LINE_POINTS, max(end, 2 * len(line[1]) if line else 256))
            line = self._lines[e] = self._gain_values(e, np.arange(size, dtype=np.float64))
        gains, values = line
        return gains[load : end - 1], values[load:end]

    def _gain_values(self, e: int, xs: np.ndarray) -> tuple[list[int], list[float]]:
        """(gains, values) of engine e at the consecutive loads ``xs``: ``np.interp`` and
        the gain expression are elementwise, so a row cut from a longer line equals the
        row computed alone."""
        cx, cy = curve_arrays(self._curves[e])
        values = np.interp(xs, cx, cy)
        cap = self._capacity
        if cap <= 0:
            return [0] * (xs.size - 1), values.tolist()
        gain = np.rint(np.diff(values) / cap * self.utility_scale).astype(np.int32)
        return gain.tolist(), values.tolist()

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
