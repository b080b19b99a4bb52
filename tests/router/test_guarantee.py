"""The ``scheduled`` guarantee (what actually runs) and partially labelled data.

Truth is known in the synthetic world of these tests: every configuration c is accurate
on input x with a known probability p_c(x), independently given x, so the true risk of
a threshold (the probability that some admitted configuration is inaccurate) is an
expectation over x alone, computed on a large fixed sample of inputs.
"""

from __future__ import annotations

import numpy as np
import pytest

from aragog_jax.data import load_dataset, save_dataset
from aragog_jax.errors import DatasetError
from aragog_jax.router import HashedNgramFeaturizer, admitted_masks, calibrate, fit_router
from aragog_jax.router._calibrate import policy_losses, routing_report
from aragog_jax.router._model import flatten_params

from .conftest import make_dataset, small_config

NUM_CFG = 10
C_MAX = NUM_CFG - 1


def _world(num: int, seed: int):
    """(logits float32[N, C], p_accurate float64[N, C]) of ``num`` inputs.

    p_c(x) = sigmoid(z_c(x)): cheap configurations are right less often, an easy input
    (u large) helps every configuration; the router sees z plus noise (not the truth).
    """
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(num, 1))
    z = np.linspace(0.5, 5.0, NUM_CFG)[None, :] + 2.0 * u + 0.7 * rng.normal(size=(num, NUM_CFG))
    p = 1.0 / (1.0 + np.exp(-z))
    p[:, C_MAX] = 1.0
    logits = (z + 0.8 * rng.normal(size=z.shape)).astype(np.float32)
    return logits, p


def _draw_labels(p: np.ndarray, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(p.shape) < p


@pytest.fixture(scope="module")
def truth():
    return _world(50_000, 12345)


def _true_any_risk(thresholds: np.ndarray, truth) -> float:
    logits, p = truth
    mask = admitted_masks(logits, thresholds, C_MAX)
    return float(np.mean(1.0 - np.prod(np.where(mask, p, 1.0), axis=1)))


def test_scheduled_risk_exceeds_epsilon_at_most_at_the_stated_rate(truth):
    """Over many calibration draws the true risk of what may run exceeds epsilon in at most
    ~delta of them; a plug-in threshold (empirical risk <= epsilon, no bound) fails far
    more often, so the test can tell the two apart."""
    eps, conf, num_seeds, n = 0.05, 0.9, 200, 600
    violations = naive_violations = 0
    risks = []
    for seed in range(num_seeds):
        logits, p = _world(n, seed)
        labels = _draw_labels(p, 10_000 + seed)
        cal = calibrate(logits, labels, C_MAX, epsilon=eps, confidence=conf, guarantee="scheduled")
        assert cal.policy_bound <= eps and cal.num_policy_inputs == n  # every input tested
        risk = _true_any_risk(cal.thresholds, truth)
        risks.append(risk)
        violations += risk > eps
        # plug-in: the lowest common threshold whose empirical any-risk is <= eps (input n
        # has a loss at threshold t iff t <= the largest logit of its inaccurate configurations)
        worst = np.where(labels, -np.inf, logits)[:, :C_MAX].max(axis=1)
        t = np.sort(worst)[::-1][int(np.floor(eps * n))]  # eps * n inputs lie above it
        naive = np.full(NUM_CFG, np.nextafter(np.float32(t), np.float32(np.inf)), np.float32)
        naive_violations += _true_any_risk(naive, truth) > eps
    rate = violations / num_seeds
    print(
        f"violations {rate:.3f}, plug-in {naive_violations / num_seeds:.3f}, mean risk {np.mean(risks):.4f}"
    )
    # delta = 0.1; three binomial standard deviations of slack over 200 draws
    assert rate <= 0.1 + 3 * np.sqrt(0.1 * 0.9 / num_seeds), f"violation rate {rate}"
    assert naive_violations / num_seeds > 0.3, "the plug-in rule should violate often"
    # the bound is not vacuous: it spends a good part of the budget
    assert 0.5 * eps < float(np.mean(risks)) <= eps


def test_every_selection_rule_stays_within_epsilon_on_fresh_data(truth):
    """Cheapest, most expensive, random and a load-like ranking of what was admitted: each
    runs an inaccurate configuration at most as often as the bounded worst case."""
    logits, p = _world(3000, 7)
    labels = _draw_labels(p, 8)
    cal = calibrate(logits, labels, C_MAX, epsilon=0.03, confidence=0.95)
    assert cal.guarantee == "scheduled"
    # the scan's figures are the calibration inputs' worst-case losses; one step lower fails
    scan = {round(r["level"], 2): r for r in cal.info["level_scan"]}
    chosen = scan[round(cal.level, 2)]
    k = int(policy_losses(admitted_masks(logits, cal.thresholds, C_MAX), labels, "any").sum())
    assert chosen["errors"] == k and chosen["bound"] == cal.policy_bound <= 0.03
    lower = np.where(np.isfinite(cal.thresholds), cal.thresholds - 0.1, cal.thresholds)
    k2 = int(policy_losses(admitted_masks(logits, lower, C_MAX), labels, "any").sum())
    assert cal.info["level_scan"][-1]["errors"] == k2 and cal.info["level_scan"][-1]["bound"] > 0.03
    lt, pt = truth
    yt = _draw_labels(pt, 9)
    mask = admitted_masks(lt, cal.thresholds, C_MAX)
    rows = np.arange(mask.shape[0])
    rng = np.random.default_rng(0)
    picks = {
        "cheapest": np.argmax(mask, axis=1),
        "largest": NUM_CFG - 1 - np.argmax(mask[:, ::-1], axis=1),
        "random": np.argmax(mask * rng.random(mask.shape), axis=1),
        "ranked": np.argmax(mask * rng.permutation(NUM_CFG)[None, :], axis=1),
    }
    worst = policy_losses(mask, yt, "any").mean()
    assert worst <= 0.03
    for name, pick in picks.items():
        assert mask[rows, pick].all(), name
        assert (~yt[rows, pick]).mean() <= worst, name
    assert mask[:, :C_MAX].sum(axis=1).mean() > 2, "the router should admit more than c_max"


def test_scheduled_keeps_more_than_cheapest_and_any_with_few_inputs(truth):
    """At 1,200 calibration inputs the per-configuration step starves cheapest and any."""
    logits, p = _world(1200, 3)
    labels = _draw_labels(p, 4)
    lt, pt = truth
    yt = _draw_labels(pt, 5)
    scores = yt.astype(np.float32)
    kept = {}
    for g in ("scheduled", "cheapest", "any"):
        cal = calibrate(logits, labels, C_MAX, epsilon=0.02, confidence=0.95, guarantee=g)
        r = routing_report(admitted_masks(lt, cal.thresholds, C_MAX), scores, yt, C_MAX)
        kept[g] = r["flexibility_kept"]
        assert r["any_inaccurate_rate"] <= 0.02 or g == "cheapest"
    assert kept["scheduled"] > kept["cheapest"] > 0 and kept["scheduled"] > kept["any"]


def test_scheduled_counts_labelled_pairs_only():
    logits, p = _world(2000, 11)
    labels = _draw_labels(p, 12)
    full = calibrate(logits, labels, C_MAX, epsilon=0.05, confidence=0.9)
    # configuration 6 was never labelled: never admitted, whatever its logits say
    labelled = np.ones_like(labels)
    labelled[:, 6] = False
    cal = calibrate(logits, labels, C_MAX, epsilon=0.05, confidence=0.9, labelled=labelled)
    assert np.isinf(cal.thresholds[6]) and np.isfinite(full.thresholds[6])
    # an unlabelled pair inside the admitted set counts as an error (conservative)
    some = np.ones_like(labels)
    some[::5, 2] = False
    mask = admitted_masks(logits, full.thresholds, C_MAX)
    assert policy_losses(mask, labels, "any", some).sum() > policy_losses(mask, labels, "any").sum()
    # per-configuration bounds ignore unlabelled pairs: flipping their labels changes nothing
    flipped = labels.copy()
    flipped[~some] = ~flipped[~some]
    for g in ("config", "scheduled"):
        a = calibrate(logits, labels, C_MAX, epsilon=0.05, guarantee=g, labelled=some)
        b = calibrate(logits, flipped, C_MAX, epsilon=0.05, guarantee=g, labelled=some)
        np.testing.assert_array_equal(a.thresholds, b.thresholds)


def _partially_labelled(tmp_path, garbage_seed: int):
    """A dataset on disk where 40% of the (input, configuration) pairs were not labelled
    and hold placeholder scores drawn with ``garbage_seed`` (c_max always labelled)."""
    space, ds = make_dataset(num_inputs=800, seed=0)
    rng = np.random.default_rng(0)
    labelled = rng.random(ds.scores.shape) < 0.6
    labelled[:, space.c_max] = True
    scores = ds.scores.copy()
    junk = np.random.default_rng(garbage_seed).random(scores.shape) < 0.5
    scores[~labelled] = junk[~labelled]
    ds.scores = scores
    out = save_dataset(ds, tmp_path / f"d{garbage_seed}", extra={"labelled": labelled})
    return space, load_dataset(out, space), labelled


def test_training_learns_from_labelled_pairs_only(tmp_path):
    """Regression: with ``label --sample K`` data, training used every pair (an unlabelled
    pair's placeholder score made a label), so what sat in unlabelled pairs changed the
    router. Now the placeholders do not matter: same checkpoint either way."""
    space, a, labelled = _partially_labelled(tmp_path, 1)
    _, b, _ = _partially_labelled(tmp_path, 2)
    assert (a.scores != b.scores).any()
    cfg = small_config(hidden=(16,), max_epochs=2, sweep=(), epsilon=0.2)
    feat = HashedNgramFeaturizer(dim=128)
    ra = fit_router(a, space, feat, cfg, progress=False)
    rb = fit_router(b, space, feat, cfg, progress=False)
    pa, pb = flatten_params(ra.checkpoint.params), flatten_params(rb.checkpoint.params)
    assert pa.keys() == pb.keys()
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k])
    np.testing.assert_array_equal(ra.checkpoint.thresholds, rb.checkpoint.thresholds)
    assert ra.report["test"] == rb.report["test"]
    assert np.isfinite(ra.checkpoint.thresholds).sum() > 1, "it should admit more than c_max"
    assert (a.labelled == labelled).all()


def test_load_dataset_checks_labelled(tmp_path):
    space, ds = make_dataset(num_inputs=20, seed=0)
    out = save_dataset(ds, tmp_path / "d")
    assert load_dataset(out, space).labelled is None
    np.save(out / "labelled.npy", np.ones((20, 3), bool))
    with pytest.raises(
        DatasetError, match=r"labelled\.npy: bool\[20, 3\], expected bool\[20, 27\]"
    ):
        load_dataset(out, space)
    ds.labelled = np.ones(ds.scores.shape, bool)
    ds.labelled[3, 0] = False
    again = load_dataset(save_dataset(ds, tmp_path / "e"), space)
    assert again.labelled is not None and not again.labelled[3, 0] and again.labelled.sum() == 539
    ds.labelled = None
    assert (
        load_dataset(save_dataset(ds, tmp_path / "e"), space).labelled is None
    )  # stale file removed


def test_train_summary_names_the_scheduled_threshold_and_what_to_do():
    from aragog_jax.train import summary_lines

    logits, p = _world(100, 21)
    cal = calibrate(logits, _draw_labels(p, 22), C_MAX, epsilon=0.02, confidence=0.95)
    assert np.isinf(cal.level) and not np.isfinite(cal.thresholds[:C_MAX]).any()
    test = {
        "delta_cheapest_points": 0.0,
        "delta_random_points": 0.0,
        "acc_cmax": 0.8,
        "flexibility_kept": 0.1,
        "admitted_mean": 1.0,
        "oracle_mean": 8.0,
    }
    report = {
        "workflow": "w",
        "family": "f",
        "num_configs": NUM_CFG,
        "splits": {"train": 300, "calibration": 100, "test": 100},
        "model": {"hidden": [64, 64]},
        "train": {"epochs": 3, "best_epoch": 1, "best_val_loss": 0.5, "seconds": 1.0},
        "calibration": cal.to_dict(),
        "test": test,
        "epsilon_sweep": [],
    }
    text = "\n".join(summary_lines(report))
    assert "guarantee=scheduled" in text and "logit threshold inf" in text
    assert "needs at least 149 inputs (it has 100)" in text
    assert "--hidden 64" in text
