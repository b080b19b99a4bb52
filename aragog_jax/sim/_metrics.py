"""Per-run statistics: throughput, latency percentiles, accuracy, overheads."""

from __future__ import annotations

import numpy as np


def latency_stats(lat: np.ndarray) -> dict[str, float]:
    """mean / p25 / p50 / p95 / p99 of finite latencies (NaN when there are none)."""
    lat = np.asarray(lat, dtype=np.float64)
    lat = lat[np.isfinite(lat)]
    if lat.size == 0:
        nan = float("nan")
        return {"mean": nan, "p25": nan, "p50": nan, "p95": nan, "p99": nan}
    p25, p50, p95, p99 = np.percentile(lat, [25, 50, 95, 99])
    return {
        "mean": float(lat.mean()),
        "p25": float(p25),
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
    }


def completion_rate(arrival: np.ndarray, finish: np.ndarray) -> float:
    """Completed requests per second between the first arrival and the last completion."""
    done = np.isfinite(finish)
    if not done.any():
        return 0.0
    span = float(finish[done].max() - arrival.min())
    return float(done.sum()) / span if span > 0 else float("inf")


def pct_change(new: float, base: float) -> float:
    """(new - base) / base in percent (NaN when base is 0 or not finite)."""
    if not np.isfinite(base) or base == 0 or not np.isfinite(new):
        return float("nan")
    return 100.0 * (new - base) / base
