"""Seeded arrival processes and request sampling over a dataset split.

* ``poisson``: exponential inter-arrival gaps with mean 1 / rate.
* ``gamma``: gamma-distributed gaps with mean 1 / rate and coefficient of variation
  ``cv`` (shape 1 / cv^2): cv > 1 is burstier than Poisson, cv = 1 is Poisson.

Requests draw inputs from a split (the test split by default) in a seeded random order,
cycling through the split as often as ``num_requests`` needs.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from aragog_jax.errors import AragogError

ArrivalKind = Literal["poisson", "gamma"]


def arrival_times(
    num: int, rate: float, kind: ArrivalKind = "poisson", *, cv: float = 2.0, seed: int = 0
) -> np.ndarray:
    """float64[num] arrival times (seconds, ascending, the first gap included)."""
    if rate <= 0:
        raise AragogError(f"arrival rate must be > 0, got {rate}")
    if num < 0:
        raise AragogError(f"number of requests must be >= 0, got {num}")
    rng = np.random.default_rng(seed)
    if kind == "poisson":
        gaps = rng.exponential(1.0 / rate, size=num)
    elif kind == "gamma":
        if cv <= 0:
            raise AragogError(f"gamma arrivals need cv > 0, got {cv}")
        shape = 1.0 / (cv * cv)
        gaps = rng.gamma(shape, 1.0 / (rate * shape), size=num)
    else:
        raise AragogError(f"unknown arrival process {kind!r} (known: poisson, gamma)")
    return np.cumsum(gaps)


def sample_inputs(rows: np.ndarray, num: int, *, seed: int = 0) -> np.ndarray:
    """int64[num] dataset rows: seeded shuffles of ``rows``, concatenated until ``num``."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        raise AragogError("the dataset split has no inputs")
    rng = np.random.default_rng(seed)
    reps = -(-num // rows.size)
    return np.concatenate([rng.permutation(rows) for _ in range(max(reps, 1))])[:num]
