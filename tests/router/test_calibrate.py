"""Calibration: the Clopper-Pearson bound, threshold choice, and the guarantee on held-out data."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import beta, binom

from aragog_jax.errors import CheckpointError
from aragog_jax.router import (
    HashedNgramFeaturizer,
    Router,
    admitted_masks,
    calibrate,
    clopper_pearson_upper,
    fit_router,
)
from aragog_jax.router._calibrate import config_bounds, policy_losses, routing_report

from .conftest import make_dataset, small_config


def test_clopper_pearson_upper_known_values():
    delta = 0.1
    n = np.array([1, 10, 114, 1000])
    # zero errors: closed form 1 - delta^(1/n)
    np.testing.assert_allclose(clopper_pearson_upper(0, n, delta), 1 - delta ** (1 / n), rtol=1e-10)
    # defining property: P(Binom(n, ub) <= k) = delta
    for k, m in [(1, 50), (7, 300), (40, 2000)]:
        ub = float(clopper_pearson_upper(k, m, delta))
        assert binom.cdf(k, m, ub) == pytest.approx(delta, rel=1e-6)
    assert clopper_pearson_upper(0, 0, delta) == 1.0 and clopper_pearson_upper(5, 5, delta) == 1.0
    ks = np.arange(0, 30)
    assert np.all(np.diff(clopper_pearson_upper(ks, 100, delta)) > 0)


def _synthetic(num, num_cfg, seed, noise=1.0):
    """Logits that carry signal: accurate iff latent > 0; logit = latent * 4 + noise."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(loc=np.linspace(-1.5, 2.5, num_cfg)[None, :], size=(num, num_cfg))
    labels = latent > 0
    labels[:, -1] = True
    logits = (4 * latent + noise * rng.normal(size=latent.shape)).astype(np.float32)
    return logits, labels


def test_per_config_thresholds_meet_their_bound_on_calibration_data():
    logits, labels = _synthetic(3000, 8, 0)
    cal = calibrate(logits, labels, c_max=7, epsilon=0.05, confidence=0.9, guarantee="config")
    assert cal.thresholds[7] == -np.inf
    finite = np.isfinite(cal.thresholds[:7])
    assert finite.sum() >= 5  # signal is strong: most configurations are admissible
    for c in np.flatnonzero(finite):
        adm = logits[:, c] >= cal.thresholds[c]
        err = (~labels[adm, c]).mean()
        assert err <= cal.config_bound[c] <= 0.05
    # the threshold is the lowest passing grid point: one grid step lower fails the bound
    bounds = config_bounds(logits, labels, 0.1)
    grid = np.asarray(cal.info["grid"])
    for c in np.flatnonzero(finite):
        i = int(np.searchsorted(grid, cal.thresholds[c]))
        assert i == 0 or bounds[i - 1, c] > 0.05


def test_too_little_data_admits_only_cmax():
    logits, labels = _synthetic(40, 5, 1)
    cal = calibrate(logits, labels, c_max=4, epsilon=0.02, confidence=0.9)
    assert np.isinf(cal.thresholds[:4]).all() and cal.thresholds[4] == -np.inf
    mask = admitted_masks(logits, cal.thresholds, 4)
    assert mask[:, 4].all() and not mask[:, :4].any()


def test_policy_level_controls_cheapest_and_any():
    logits, labels = _synthetic(6000, 12, 2, noise=3.0)
    for guarantee in ("cheapest", "any"):
        cal = calibrate(logits, labels, c_max=11, epsilon=0.03, confidence=0.9, guarantee=guarantee)
        assert cal.policy_bound is not None and cal.policy_bound <= 0.03
        assert cal.num_policy_inputs == 2400
        assert 0 < cal.level <= 0.03 and np.all(
            cal.config_bound[np.isfinite(cal.thresholds)] <= cal.level
        )
        assert np.all(
            cal.thresholds[np.isfinite(cal.thresholds)]
            >= cal.base_thresholds[np.isfinite(cal.thresholds)]
        )
        # fresh data from the same distribution
        lt, yt = _synthetic(20000, 12, 3, noise=3.0)
        loss = policy_losses(admitted_masks(lt, cal.thresholds, 11), yt, guarantee).mean()
        assert loss <= 0.03
    with pytest.raises(CheckpointError, match="guarantee"):
        calibrate(logits, labels, 11, guarantee="sometimes")
    with pytest.raises(CheckpointError, match="epsilon"):
        calibrate(logits, labels, 11, epsilon=0.0)


def test_routing_report_on_oracle_and_cmax_only():
    rng = np.random.default_rng(4)
    scores = (rng.random((50, 6)) < 0.7).astype(np.float32)
    scores[:, 5] = (rng.random(50) < 0.8).astype(np.float32)
    labels = scores >= scores[:, 5:6]
    oracle = routing_report(labels, scores, labels, 5)
    assert oracle["flexibility_kept"] == 1.0 and oracle["false_admit_rate"] == 0.0
    assert oracle["delta_cheapest_points"] >= 0.0
    only = np.zeros_like(labels)
    only[:, 5] = True
    r = routing_report(only, scores, labels, 5)
    assert r["delta_cheapest_points"] == 0.0 and r["admitted_mean"] == 1.0
    assert r["flexibility_kept"] == pytest.approx(np.mean(1.0 / labels.sum(axis=1)))


def test_guarantee_holds_on_held_out_data_from_another_generator_seed():
    """Train + calibrate on seed 0 data; route fresh inputs generated with seed 1.

    The bounds hold with probability `confidence` over the calibration draw; 0.99 keeps
    this deterministic test far from the 1-in-10 failures a 0.9 bound allows.
    """
    eps = 0.05
    space, ds = make_dataset(num_inputs=8000, seed=0)
    res = fit_router(
        ds,
        space,
        HashedNgramFeaturizer(dim=512),
        small_config(
            hidden=(32,), max_epochs=8, epsilon=eps, confidence=0.99, sweep=(), guarantee="cheapest"
        ),
        progress=False,
    )
    cal = res.calibration
    admitted_cfgs = np.flatnonzero(np.isfinite(cal.thresholds))
    assert len(admitted_cfgs) > 3, "the router should admit more than c_max"
    _, held = make_dataset(num_inputs=8000, seed=1)
    assert held.texts[:50] != ds.texts[:50]
    router = Router(res.checkpoint, space).compile((4096,))
    mask = router.route_texts(held.texts).mask
    labels = held.labels(space.c_max)
    # per configuration: P(inaccurate | admitted) <= eps; the held-out data must not
    # refute it (99% Clopper-Pearson lower bound below eps), and the pooled rate is below eps
    errs = []
    for c in admitted_cfgs:
        if c == space.c_max:
            continue
        adm = mask[:, c]
        n, k = int(adm.sum()), int((adm & ~labels[:, c]).sum())
        if n == 0:
            continue
        lower = beta.ppf(0.01, k, n - k + 1) if k > 0 else 0.0
        assert lower <= eps, f"config {c}: {k}/{n} inaccurate"
        errs.append((k, n))
    k_all, n_all = map(sum, zip(*errs, strict=True))
    assert k_all / n_all <= eps
    # and the policy guarantee: the cheapest admitted configuration
    cheapest_err = policy_losses(mask, labels, "cheapest").mean()
    assert cheapest_err <= eps
