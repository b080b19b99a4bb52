"""The one timing loop of the benchmark scripts (``bench/router.py``, ``bench/scheduler.py``)."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable


def time_fn(
    fn: Callable[[], object], min_time: float = 0.3, min_reps: int = 3, max_reps: int = 5000
) -> list[float]:
    """Per-call seconds of ``fn()`` after one warm-up call, until ``min_time`` seconds and
    ``min_reps`` calls have passed (at most ``max_reps``); garbage collection is paused
    while timing, as ``timeit`` does."""
    fn()
    times: list[float] = []
    end = time.perf_counter() + min_time
    gc.disable()
    try:
        while (len(times) < min_reps or time.perf_counter() < end) and len(times) < max_reps:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    finally:
        gc.enable()
    return times
