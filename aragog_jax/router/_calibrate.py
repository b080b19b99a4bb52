"""Calibration with a finite-sample guarantee, and the routing quality report.

Guarantees, each at confidence ``1 - delta`` over the draw of the calibration data
(exchangeable with future inputs); ``guarantee=`` names one:

1. **Per configuration** (``config``; also part of ``cheapest`` and ``any``): for every
   admitted configuration c other than ``c_max``, ``P(c inaccurate | c admitted) <=
   epsilon``. Thresholds are searched on a fixed grid of G logit values; for each grid
   value the one-sided Clopper-Pearson upper bound of the error rate among the admitted
   calibration inputs is taken at level ``delta / G`` (Bonferroni over the grid, so the
   bound holds simultaneously for every grid value and therefore for the chosen one).
   The threshold is the lowest grid value whose bound is <= epsilon; a configuration
   with no such value (too few calibration inputs, or too many errors) is never admitted
   (threshold ``+inf``). This does *not* bound what the scheduler runs: which admitted
   configuration runs depends on the admitted set, and the set is small exactly on the
   hard inputs, so "each configuration is usually right when admitted" allows a run
   configuration that is wrong more often (issue 18 measured 2.07 points lost at epsilon
   0.02; ``bench/results/guarantee.md``: 3.5% of test inputs admit an inaccurate one).
2. **Per policy** (``cheapest`` or ``any``): on top of 1, the rate at which the
   *cheapest* admitted configuration (or *any* admitted configuration) is inaccurate is
   <= epsilon. The per-configuration level is tightened from epsilon to some alpha <=
   epsilon (thresholds: the lowest grid value whose bound is <= alpha, so guarantee 1
   still holds); alpha is chosen by fixed-sequence testing from the most conservative
   level up (Bates et al., "Distribution-free risk-controlling prediction sets", 2021;
   Angelopoulos et al., "Learn then Test", 2021): the scan stops at the first alpha whose
   Clopper-Pearson bound of the policy risk exceeds epsilon. Fixed-sequence testing needs
   no multiplicity correction. Step 2 runs on a disjoint part of the calibration split
   (``policy_fraction``), so the thresholds it tightens do not depend on the data that
   tests them.
3. **What the scheduler runs** (``scheduled``, the default): the rate at which the
   configuration the scheduler runs is inaccurate is <= epsilon, *whatever* admitted
   configuration it runs. The scheduler picks by load and never looks at correctness,
   but its pick depends on the admitted set, which depends on the input, so no
   assumption about its rule is safe; the loss bounded is therefore the worst case over
   the admitted set per input, ``L(x) = 1[some admitted configuration is inaccurate on
   x]``, which is at least the loss of every rule (load-driven, randomised, or changing
   between the stages of one request). Risk control over nested sets (Learn then Test):
   the sets ``A_t(x) = {c : logit_c(x) >= t} + {c_max}`` grow as the common threshold t
   falls from 16 to -8 in steps of 0.1 (fixed in advance); L is monotone in t, so the
   fixed-sequence scan from the top takes the lowest t whose Clopper-Pearson bound of
   ``sum L`` over *all* calibration inputs (binomial tail at level delta) is <= epsilon.
   No per-configuration bound is required and no calibration input is spent on one:
   the per-configuration step of 1-2 needs ~330 admitted, all-accurate calibration
   inputs per configuration at epsilon 0.02, so with 200-600 calibration inputs it
   admits almost only c_max (0.8-4.6% of the oracle's flexibility in
   ``bench/results/guarantee.md``) where this keeps 6-52% (26-67% with a one-layer
   network); at 6,000 inputs it keeps 55.7% against 39.5% for ``any``, the other
   guarantee that covers every choice. Because L bounds every selection, the realised
   accuracy drop of any scheduler is at most epsilon (in expectation over inputs, with
   the stated confidence): the drop in points is at most the inaccuracy rate (a score
   difference is at most 1).

Partially labelled data (``labelled``, e.g. ``python -m aragog_jax.label --sample K``):
every bound counts labelled pairs only; a policy whose pick (or, for 3, some admitted
configuration) is an unlabelled pair counts as inaccurate (nothing is known about it),
and a configuration with no labelled calibration input is never admitted.

``c_max`` is always admitted: its inaccuracy is 0 by definition of the label.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import beta

from aragog_jax.errors import CheckpointError

GUARANTEES = ("config", "cheapest", "any", "scheduled")
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
        (0 when even the most conservative level failed: only c_max is admitted); for
        ``scheduled`` the common logit threshold chosen (``+inf``: only c_max).
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
    logits: np.ndarray,
    labels: np.ndarray,
    delta: float,
    grid: tuple[float, ...] = DEFAULT_GRID,
    labelled: np.ndarray | None = None,
) -> np.ndarray:
    """Simultaneous upper bounds of ``P(c inaccurate | logit_c >= g)`` for every grid value g.

    Args:
      logits: float[N, C] router logits on calibration inputs.
      labels: bool[N, C] accurate labels.
      delta: 1 - confidence, split over the grid (Bonferroni).
      grid: ascending candidate logit thresholds.
      labelled: bool[N, C] labelled pairs (None: all); only they are counted, so a
        configuration never labelled gets bound 1 and is never admitted.

    Returns:
      float64[G, C] Clopper-Pearson bounds at level ``delta / G`` (1 where nothing is admitted).
    """
    g = np.asarray(grid, dtype=np.float64)
    ub = np.empty((len(g), logits.shape[1]))
    for i, t in enumerate(g):  # a loop keeps memory at N x C
        admitted = logits >= t
        if labelled is not None:
            admitted &= labelled
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


def policy_losses(
    mask: np.ndarray, labels: np.ndarray, guarantee: str, labelled: np.ndarray | None = None
) -> np.ndarray:
    """bool[N]: the policy picks an inaccurate configuration on input n.

    ``cheapest``: the first admitted configuration (configurations ascend in FLOPs).
    ``any``: some admitted configuration is inaccurate. An unlabelled pair (``labelled``
    False) counts as inaccurate.
    """
    ok = labels if labelled is None else labels & labelled
    if guarantee == "cheapest":
        first = np.argmax(mask, axis=1)
        return ~ok[np.arange(mask.shape[0]), first]
    if guarantee == "any":
        return (mask & ~ok).any(axis=1)
    raise CheckpointError(f"unknown guarantee {guarantee!r} (known: {', '.join(GUARANTEES)})")


def calibrate(
    logits: np.ndarray,
    labels: np.ndarray,
    c_max: int,
    *,
    epsilon: float = 0.02,
    confidence: float = 0.95,
    guarantee: str = "scheduled",
    policy_fraction: float = 0.4,
    seed: int = 0,
    grid: tuple[float, ...] = DEFAULT_GRID,
    num_levels: int = 33,
    labelled: np.ndarray | None = None,
) -> Calibration:
    """Choose thresholds on the calibration split (module docstring).

    Args:
      logits: float[N, C] router logits of the calibration inputs.
      labels: bool[N, C] accurate labels of the calibration inputs.
      c_max: index of c_max (always admitted).
      epsilon: target error rate in (0, 1).
      confidence: 1 - delta, in (0, 1).
      guarantee: ``config``, ``cheapest``, ``any`` or ``scheduled``.
      policy_fraction: share of calibration inputs held out for the policy test.
      seed: seeds the split of the calibration inputs.
      grid: ascending, evenly spaced candidate logit thresholds.
      num_levels: levels alpha tested, geometric from epsilon / 64 to epsilon.
      labelled: bool[N, C] labelled pairs (None: all). Only labelled pairs are counted; a
        policy's pick of an unlabelled pair counts as inaccurate.

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
    labelled = None if labelled is None else np.asarray(labelled, dtype=bool)
    num = logits.shape[0]
    delta = 1.0 - confidence
    if guarantee == "scheduled":
        return _calibrate_scheduled(logits, labels, labelled, c_max, epsilon, delta)
    if guarantee == "config":
        part_a, part_b = np.arange(num), np.arange(0)
    else:
        perm = np.random.default_rng(seed).permutation(num)
        num_b = int(round(policy_fraction * num))
        part_a, part_b = np.sort(perm[num_b:]), np.sort(perm[:num_b])
    lab_a = None if labelled is None else labelled[part_a]
    bounds = config_bounds(logits[part_a], labels[part_a], delta, grid, lab_a)

    def at(alpha: float) -> np.ndarray:
        thr = thresholds_at_level(bounds, alpha, grid)
        thr[c_max] = -np.inf
        return thr

    base = at(epsilon)
    level, policy_bound, scan = epsilon, None, []
    if guarantee != "config":
        lb, yb = logits[part_b], labels[part_b]
        mb = None if labelled is None else labelled[part_b]
        level, policy_bound = 0.0, 0.0  # level 0: nothing passes, only c_max is admitted
        # most conservative first; the last level is epsilon itself
        for alpha in epsilon * np.geomspace(1.0 / 64.0, 1.0, num_levels):
            mask = admitted_masks(lb, at(float(alpha)), c_max)
            k = int(policy_losses(mask, yb, guarantee, mb).sum())
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


#: Nested sets of ``scheduled``: common logit thresholds, most conservative first.
SCHEDULED_THRESHOLDS = tuple(float(x) for x in np.round(np.arange(16.0, -8.01, -0.1), 2))


def _calibrate_scheduled(
    logits: np.ndarray,
    labels: np.ndarray,
    labelled: np.ndarray | None,
    c_max: int,
    epsilon: float,
    delta: float,
    thresholds: tuple[float, ...] = SCHEDULED_THRESHOLDS,
) -> Calibration:
    """The ``scheduled`` guarantee (module docstring, 3): Learn-then-Test over nested sets."""
    num, num_cfg = logits.shape
    # A configuration with no labelled calibration input has no evidence: never admitted.
    never = np.zeros(num_cfg, bool) if labelled is None else ~labelled.any(axis=0)
    never[c_max] = False
    # Input n has a loss at common threshold t iff some admissible configuration that is
    # inaccurate (or unlabelled) on n has logit >= t: all thresholds in one pass.
    ok = labels if labelled is None else labels & labelled
    bad = ~ok
    bad[:, c_max] = False
    bad[:, never] = False
    worst = np.where(bad, logits, -np.inf).max(axis=1) if num_cfg else np.full(num, -np.inf)
    grid = np.asarray(thresholds, dtype=np.float32)
    errors = (worst[None, :] >= grid[:, None]).sum(axis=1)
    bounds = clopper_pearson_upper(errors, np.full_like(errors, num), delta)
    # fixed-sequence testing from the most conservative threshold: stop at the first failure
    failed = np.flatnonzero(bounds > epsilon)
    stop = int(failed[0]) if failed.size else len(grid)
    scan = [
        {"level": float(grid[i]), "errors": int(errors[i]), "bound": float(bounds[i])}
        for i in range(min(stop + 1, len(grid)))
    ]
    if stop == 0:
        level, policy_bound = np.inf, 0.0
        chosen = np.where(np.arange(num_cfg) == c_max, -np.inf, np.inf).astype(np.float32)
    else:
        level, policy_bound = float(grid[stop - 1]), float(bounds[stop - 1])
        chosen = np.where(never, np.inf, np.float32(level)).astype(np.float32)
        chosen[c_max] = -np.inf
    # Per-configuration bounds at the chosen threshold: reported, not guaranteed here.
    adm = logits >= chosen[None, :]
    if labelled is not None:
        adm &= labelled
    bound = clopper_pearson_upper((adm & ~labels).sum(axis=0), adm.sum(axis=0), delta)
    bound = np.where(np.isfinite(chosen), bound, 1.0)
    bound[c_max] = 0.0
    return Calibration(
        thresholds=chosen,
        base_thresholds=chosen.copy(),
        level=level,
        config_bound=bound,
        policy_bound=policy_bound,
        epsilon=float(epsilon),
        confidence=1.0 - delta,
        guarantee="scheduled",
        num_config_inputs=0,
        num_policy_inputs=int(num),
        info={
            "level_scan": scan,
            # fewest calibration inputs on which zero errors pass the bound
            "min_policy_inputs": int(np.ceil(np.log(delta) / np.log1p(-epsilon))),
        },
    )


def routing_report(
    mask: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    c_max: int,
    labelled: np.ndarray | None = None,
) -> dict:
    """Quality of admission masks on labelled inputs (the test split).

    Args:
      mask: bool[N, C] admitted configurations (c_max admitted).
      scores: float[N, C] per-configuration scores.
      labels: bool[N, C] accurate labels.
      labelled: bool[N, C] labelled pairs (None: all): flexibility and false admissions
        count labelled pairs only.

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
    if labelled is not None:
        labels = labels & labelled
        mask = mask & labelled
        mask[:, c_max] = True
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
