"""What the server and the simulator ask of an accuracy router.

The trained, compiled :class:`~aragog_jax.router.Router` satisfies it; so does any object
with the same four members (a stand-in in tests, a yardstick router).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from aragog_jax.router._featurize import Featurizer
from aragog_jax.router._router import RouteResult


@runtime_checkable
class TextRouter(Protocol):
    """An accuracy router over one configuration space.

    Attributes:
      featurizer: maps texts to features (``aembed``/``aclose`` when it does async I/O).
      buckets: compiled batch sizes, ascending (the largest bounds one call).
    """

    featurizer: Featurizer
    buckets: tuple[int, ...]

    def route_texts(self, texts: Sequence[str], budget_s: float | None = None) -> RouteResult:
        """Admission masks bool[N, C] (and probabilities) for ``texts``."""
        ...

    def route_features(self, features: np.ndarray, budget_s: float | None = None) -> RouteResult:
        """The same from precomputed features float32[N, D]."""
        ...
