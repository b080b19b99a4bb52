"""Calibration with a finite-sample guarantee, and the routing quality report.

Two guarantees, each at confidence ``1 - delta`` over the draw of the calibration data
(exchangeable with future inputs):

1. **Per configuration** (always): for every admitted configuration c other than
   ``c_max``, ``P(c inaccurate | c admitted) <= epsilon``. Thresholds are searched on a
   fixed grid of G logit values; for each grid value the one-sided Clopper-Pearson upper
   bound of the error rate among the admitted calibration inputs is taken at level
   ``delta / G`` (Bonferroni over the grid, so the bound holds simultaneously for every
   grid value and therefore for the chosen one). The threshold is the lowest grid value
   whose bound is <= epsilon; a configuration with no such value (too few calibration
   inputs, or too many errors) is never admitted (threshold ``+inf``).
2. **Per policy** (``guarantee="cheapest"`` or ``"any"``): the rate at which the
   *cheapest* admitted configuration (or *any* admitted configuration, which covers every
   choice a scheduler can make) is inaccurate is <= epsilon. The per-configuration level
   is tightened from epsilon to some alpha <= epsilon (thresholds: the lowest grid value
   whose bound is <= alpha, so guarantee 1 still holds); alpha is chosen by
   fixed-sequence testing from the most conservative level up (Bates et al.,
   "Distribution-free risk-controlling prediction sets", 2021; Angelopoulos et al.,
   "Learn then Test", 2021): the scan stops at the first alpha whose Clopper-Pearson
   bound of the policy risk exceeds epsilon. Fixed-sequence testing needs no
   multiplicity correction. (Tightening alpha keeps 5-10% more flexibility than raising
   every threshold by a common logit shift, because configurations whose precision
   rises steeply lose little.)

Step 2 runs on a disjoint part of the calibration split (``policy_fraction``), so the
thresholds it tightens do not depend on the data that tests them.

``c_max`` is always admitted: its inaccuracy is 0 by definition of the label.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import beta

from aragog_jax.errors import CheckpointError

GUARANTEES = ("config", "cheapest", "any")
#: Ascending logit grid searched for thresholds (fixed in advance: Bonferroni over it).
DEFAULT_GRID = tuple(float(x) for x in np.round(np.arange(-2.0, 16.01, 0.5), 2))


def clopper_pearson_upper(k: np.ndarray, n: np.ndarray, delta: float) -> np.ndarray:
    """One-sided upper confidence bound on a binomial rate: ``P(p <= ub) >= 1 - delta``.

    Args:
      k: errors; n: trials (broadcastable int arrays). ``n == 0`` gives 1.

    Returns:
      float64 array of upper bounds in [0, 1].
    """
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    k, n = np.broadcast_arrays(k, n)
    out = np.ones(k.shape, dtype=np.float64)
    ok = (n > 0) & (k < n)
    out[ok] = beta.ppf(1.0 - delta, k[ok] + 1.0, n[ok] - k[ok])
    return out


@dataclass
class Calibration:
    """Result of :func:`calibrate`.

    Attributes:
      thresholds: float32[C] logit thresholds (``+inf`` never admits; ``c_max`` gets
        ``-inf`` and is always admitted anyway).
      base_thresholds: float32[C] the per-configuration thresholds at level epsilon.
      level: the per-configuration level alpha <= epsilon the policy test settled on
        (0 when even the most conservative level failed: only c_max is admitted).
      config_bound: float64[C] the per-configuration upper bound at the chosen threshold
        (1 for configurations never admitted).
      policy_bound: the Clopper-Pearson bound of the policy risk at the chosen level (or
        None for ``guarantee="config"``).
    """

    thresholds: np.ndarray
    base_thresholds: np.ndarray
    level: float
    config_bound: np.ndarray
    policy_bound: float | None
    epsilon: float
    confidence: float
    guarantee: str
    num_config_inputs: int
    num_policy_inputs: int
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "epsilon": self.epsilon,
            "confidence": self.confidence,
            "guarantee": self.guarantee,
            "level": self.level,
            "policy_bound": self.policy_bound,
            "num_config_inputs": self.num_config_inputs,
            "num_policy_inputs": self.num_policy_inputs,
            "num_admissible_configs": int(np.isfinite(self.base_thresholds).sum()),
            **self.info,
        }


def config_bounds(
    logits: np.ndarray, labels: np.ndarray, delta: float, grid: tuple[float, ...] = DEFAULT_GRID
) -> np.ndarray:
    """Simultaneous upper bounds of ``P(c inaccurate | logit_c >= g)`` for every grid value g.

    Args:
      logits: float[N, C] router logits on calibration inputs.
      labels: bool[N, C] accurate labels.
      delta: 1 - confidence, split over the grid (Bonferroni).
      grid: ascending candidate logit thresholds.

    Returns:
      float64[G, C] Clopper-Pearson bounds at level ``delta / G`` (1 where nothing is admitted).
    """
    g = np.asarray(grid, dtype=np.float64)
    ub = np.empty((len(g), logits.shape[1]))
    for i, t in enumerate(g):  # a loop keeps memory at N x C
        admitted = logits >= t
        n = admitted.sum(axis=0)
        k = (admitted & ~labels).sum(axis=0)
        ub[i] = clopper_pearson_upper(k, n, delta / len(g))
    return ub


def thresholds_at_level(
    bounds: np.ndarray, alpha: float, grid: tuple[float, ...] = DEFAULT_GRID
) -> np.ndarray:
    """Per configuration, the lowest grid threshold whose bound is <= alpha (``+inf`` if none).

    Args:
      bounds: float[G, C] from :func:`config_bounds`.
      alpha: the level.
      grid: the ascending grid ``bounds`` was computed on.

    Returns:
      float32[C].
    """
    g = np.asarray(grid, dtype=np.float64)
    ok = bounds <= alpha
    first = np.argmax(ok, axis=0)
    return np.where(ok.any(axis=0), g[first], np.inf).astype(np.float32)


def admitted_masks(logits: np.ndarray, thresholds: np.ndarray, c_max: int) -> np.ndarray:
    """bool[N, C] host-side admission rule (same as the kernel)."""
    mask = logits >= thresholds[None, :]
    mask[:, c_max] = True
    return mask


def policy_losses(mask: np.ndarray, labels: np.ndarray, guarantee: str) -> np.ndarray:
    """bool[N]: the policy picks an inaccurate configuration on input n.

    ``cheapest``: the first admitted configuration (configurations ascend in FLOPs).
    ``any``: some admitted configuration is inaccurate.
    """
    if guarantee == "cheapest":
        first = np.argmax(mask, axis=1)
        return ~labels[np.arange(mask.shape[0]), first]
    if guarantee == "any":
        return (mask & ~labels).any(axis=1)
    raise CheckpointError(f"unknown guarantee {guarantee!r} (known: {', '.join(GUARANTEES)})")


def calibrate(
    logits: np.ndarray,
    labels: np.ndarray,
    c_max: int,
    *,
    epsilon: float = 0.02,
    confidence: float = 0.95,
    guarantee: str = "cheapest",
    policy_fraction: float = 0.4,
    seed: int = 0,
    grid: tuple[float, ...] = DEFAULT_GRID,
    num_levels: int = 33,
) -> Calibration:
    """Choose thresholds on the calibration split (module docstring).

    Args:
      logits: float[N, C] router logits of the calibration inputs.
      labels: bool[N, C] accurate labels of the calibration inputs.
      c_max: index of c_max (always admitted).
      epsilon: target error rate in (0, 1).
      confidence: 1 - delta, in (0, 1).
      guarantee: ``config``, ``cheapest`` or ``any``.
      policy_fraction: share of calibration inputs held out for the policy test.
      seed: seeds the split of the calibration inputs.
      grid: ascending, evenly spaced candidate logit thresholds.
      num_levels: levels alpha tested, geometric from epsilon / 64 to epsilon.

    Returns:
      :class:`Calibration`.
    """
    if not 0.0 < epsilon < 1.0:
        raise CheckpointError(f"epsilon must be in (0, 1), got {epsilon}")
    if not 0.0 < confidence < 1.0:
        raise CheckpointError(f"confidence must be in (0, 1), got {confidence}")
    if guarantee not in GUARANTEES:
        raise CheckpointError(f"unknown guarantee {guarantee!r} (known: {', '.join(GUARANTEES)})")
    logits = np.asarray(logits, dtype=np.float32)
    labels = np.asarray(labels, dtype=bool)
    num = logits.shape[0]
    delta = 1.0 - confidence
    if guarantee == "config":
        part_a, part_b = np.arange(num), np.arange(0)
    else:
        perm = np.random.default_rng(seed).permutation(num)
        num_b = int(round(policy_fraction * num))
        part_a, part_b = np.sort(perm[num_b:]), np.sort(perm[:num_b])
    bounds = config_bounds(logits[part_a], labels[part_a], delta, grid)

    def at(alpha: float) -> np.ndarray:
        thr = thresholds_at_level(bounds, alpha, grid)
        thr[c_max] = -np.inf
        return thr

    base = at(epsilon)
    level, policy_bound, scan = epsilon, None, []
    if guarantee != "config":
        lb, yb = logits[part_b], labels[part_b]
        level, policy_bound = 0.0, 0.0  # level 0: nothing passes, only c_max is admitted
        # most conservative first; the last level is epsilon itself
        for alpha in epsilon * np.geomspace(1.0 / 64.0, 1.0, num_levels):
            mask = admitted_masks(lb, at(float(alpha)), c_max)
            k = int(policy_losses(mask, yb, guarantee).sum())
            ub = float(clopper_pearson_upper(k, len(part_b), delta))
            scan.append({"level": float(alpha), "errors": k, "bound": ub})
            if ub > epsilon:
                break
            level, policy_bound = float(alpha), ub
    thresholds = (
        at(level)
        if level > 0
        else np.where(np.arange(logits.shape[1]) == c_max, -np.inf, np.inf).astype(np.float32)
    )
    cols = np.arange(logits.shape[1])
    idx = np.searchsorted(np.asarray(grid), thresholds)
    bound = np.where(np.isfinite(thresholds), bounds[np.minimum(idx, len(grid) - 1), cols], 1.0)
    bound[c_max] = 0.0
    return Calibration(
        thresholds=thresholds.astype(np.float32),
        base_thresholds=base.astype(np.float32),
        level=level,
        config_bound=bound,
        policy_bound=policy_bound,
        epsilon=float(epsilon),
        confidence=float(confidence),
        guarantee=guarantee,
        num_config_inputs=int(len(part_a)),
        num_policy_inputs=int(len(part_b)),
        info={
            "grid": list(grid),
            "level_scan": scan,
            # fewest admitted calibration inputs (all accurate) that can pass the bound
            "min_admitted_inputs": int(np.ceil(np.log(delta / len(grid)) / np.log1p(-epsilon))),
        },
    )


def routing_report(mask: np.ndarray, scores: np.ndarray, labels: np.ndarray, c_max: int) -> dict:
    """Quality of admission masks on labelled inputs (the test split).

    Args:
      mask: bool[N, C] admitted configurations (c_max admitted).
      scores: float[N, C] per-configuration scores.
      labels: bool[N, C] accurate labels.

    Returns:
      ``acc_cmax``; ``acc_cheapest`` / ``acc_random`` (scheduler picks the cheapest / a
      uniformly random admitted configuration; the random one is the exact expectation);
      ``delta_cheapest`` / ``delta_random`` in accuracy points (negative: worse than
      c_max); ``flexibility_kept`` (mean over inputs of |admitted and accurate| /
      |accurate|, the oracle has 1); ``admitted_mean`` and ``oracle_mean`` set sizes;
      ``false_admit_rate`` (share of admitted configurations that are inaccurate);
      ``any_inaccurate`` (share of inputs with some inaccurate admitted configuration).
    """
    n = mask.shape[0]
    rows = np.arange(n)
    first = np.argmax(mask, axis=1)
    acc_cmax = float(scores[:, c_max].mean())
    acc_cheapest = float(scores[rows, first].mean())
    num_adm = mask.sum(axis=1)
    acc_random = float(((scores * mask).sum(axis=1) / num_adm).mean())
    kept = (mask & labels).sum(axis=1) / np.maximum(labels.sum(axis=1), 1)
    return {
        "num_inputs": int(n),
        "acc_cmax": acc_cmax,
        "acc_cheapest": acc_cheapest,
        "acc_random": acc_random,
        "delta_cheapest_points": 100.0 * (acc_cheapest - acc_cmax),
        "delta_random_points": 100.0 * (acc_random - acc_cmax),
        "flexibility_kept": float(kept.mean()),
        "admitted_mean": float(num_adm.mean()),
        "oracle_mean": float(labels.sum(axis=1).mean()),
        "false_admit_rate": float((mask & ~labels).sum() / max(int(num_adm.sum()), 1)),
        "cheapest_inaccurate_rate": float((~labels[rows, first]).mean()),
        "any_inaccurate_rate": float((mask & ~labels).any(axis=1).mean()),
    }
