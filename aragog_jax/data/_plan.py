"""The labelling plan: which engine calls label which configurations (the configuration tree).

See :mod:`aragog_jax.data._label` for why one call per distinct call key suffices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aragog_jax.errors import AragogError
from aragog_jax.space import ConfigSpace


def _ancestors(space: ConfigSpace) -> list[tuple[int, ...]]:
    """Per stage, its ancestors and itself, ascending stage ids."""
    out: list[set[int]] = [set() for _ in range(space.num_stages)]
    for s in (int(x) for x in space.topo_order):
        out[s] = {s}.union(*(out[u] for u in space.upstream[s]))
    return [tuple(sorted(a)) for a in out]


@dataclass(frozen=True)
class LabelPlan:
    """Which calls label which configurations (the same for every input).

    Attributes:
      config_ids: int[K] labelled configurations (ascending; always includes c_max).
      call_keys: distinct call keys ``(stage, ((stage', model), ...))`` in topological order.
      config_calls: int[K, S] per configuration and stage, the index into ``call_keys``.
      num_prefixes: distinct topological-order model prefixes over the labelled configurations.
      output_stage: the stage whose output is scored (the last sink, as in serving).
    """

    config_ids: np.ndarray
    call_keys: list[tuple[int, tuple[tuple[int, int], ...]]]
    config_calls: np.ndarray
    num_prefixes: int
    output_stage: int
    ancestors: list[tuple[int, ...]]

    @property
    def num_calls(self) -> int:
        return len(self.call_keys)

    @property
    def num_naive(self) -> int:
        return int(self.config_calls.size)

    def upstream_calls(self, space: ConfigSpace) -> list[tuple[int, ...]]:
        """Per call, the calls of its upstream stages (same configuration branch)."""
        index = {k: i for i, k in enumerate(self.call_keys)}
        out: list[tuple[int, ...]] = [()] * len(self.call_keys)
        for k, (s, models) in enumerate(self.call_keys):
            m = dict(models)
            ups = []
            for u in space.upstream[s]:
                anc = self.ancestors[u]
                ups.append(index[(u, tuple((a, m[a]) for a in anc))])
            out[k] = tuple(ups)
        return out


def make_plan(space: ConfigSpace, config_ids: np.ndarray | None = None) -> LabelPlan:
    """The configuration tree of ``config_ids`` (default: every configuration)."""
    ids = (
        np.arange(space.num_configs)
        if config_ids is None
        else np.unique(np.asarray(config_ids, np.int64))
    )
    anc = _ancestors(space)
    topo = [int(x) for x in space.topo_order]
    keys: dict[tuple, int] = {}
    prefixes: set[tuple[int, ...]] = set()
    calls = np.zeros((ids.size, space.num_stages), np.int64)
    for pos in range(len(topo)):
        s = topo[pos]
        for r, c in enumerate(ids):
            row = space.configs[c]
            prefixes.add(tuple(int(row[t]) for t in topo[: pos + 1]))
            key = (s, tuple((a, int(row[a])) for a in anc[s]))
            calls[r, s] = keys.setdefault(key, len(keys))
    return LabelPlan(ids, list(keys), calls, len(prefixes), space.output_stage, anc)


def sample_configs(space: ConfigSpace, k: int | None, seed: int) -> np.ndarray:
    """A seeded sample of ``k`` configurations that always includes ``c_max`` (all when k is None)."""
    c = space.num_configs
    if k is None or k >= c:
        return np.arange(c)
    if k < 1:
        raise AragogError(f"--sample must be >= 1, got {k}")
    rng = np.random.default_rng(seed)
    others = rng.choice(c - 1, size=k - 1, replace=False) if k > 1 else np.zeros(0, np.int64)
    others = np.where(others >= space.c_max, others + 1, others)  # skip c_max, then add it
    return np.unique(np.concatenate([others, [space.c_max]]).astype(np.int64))


__all__ = ["LabelPlan", "make_plan", "sample_configs"]
