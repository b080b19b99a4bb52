"""Routing kernels against their NumPy twins (exact masks), chunking, dominance, padding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aragog_jax.kernels import routing as K
from aragog_jax.router import RouterModelConfig, init_params
from aragog_jax.space import load_space


@pytest.fixture(scope="module")
def ref():
    from aragog_jax.kernels import _reference

    return _reference


def _setup(seed, num_req, num_cfg, head="dense", dim=16, hidden=(8, 8), num_stages=3, num_models=3):
    key = jax.random.PRNGKey(seed)
    cfg = RouterModelConfig(dim, num_cfg, hidden, head, num_stages, num_models)
    params = init_params(cfg, key)
    # give biases and the head some spread so masks are mixed
    params = jax.tree.map(
        lambda a: a + 0.1 * jax.random.normal(jax.random.PRNGKey(seed + 1), a.shape, jnp.float32),
        params,
    )
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(num_req, dim)).astype(np.float32)
    configs = rng.integers(0, num_models, size=(num_cfg, num_stages)).astype(np.int32)
    return params, feats, configs


def _margin_thresholds(
    logits64: np.ndarray, rng: np.random.Generator, margin: float = 1e-3
) -> np.ndarray:
    """Per-column thresholds at least ``margin`` away from every logit (float32/64 rounding cannot flip a bit)."""
    thr = np.empty(logits64.shape[1], np.float32)
    for c in range(logits64.shape[1]):
        col = np.sort(logits64[:, c])
        for _ in range(100):
            t = rng.uniform(col[0] - 0.5, col[-1] + 0.5)
            if np.min(np.abs(col - t)) > margin:
                break
        thr[c] = t
    return thr


@pytest.mark.parametrize("head", ["dense", "factorised"])
@pytest.mark.parametrize("num_req,num_cfg", [(1, 1), (5, 27), (17, 243)])
def test_route_matches_twin_exactly(ref, head, num_req, num_cfg):
    params, feats, configs = _setup(num_req * 7 + num_cfg, num_req, num_cfg, head)
    cfg_arg = jnp.asarray(configs) if head == "factorised" else None
    logits64 = ref.router_logits(params, feats, configs if head == "factorised" else None)
    rng = np.random.default_rng(num_cfg)
    thr = _margin_thresholds(logits64, rng)
    always = np.zeros(num_cfg, bool)
    always[-1] = True
    mask, prob = jax.jit(K.route)(
        params, jnp.asarray(feats), jnp.asarray(thr), jnp.asarray(always), cfg_arg
    )
    mask_ref, prob_ref = ref.route(
        params, feats, thr, always, configs if head == "factorised" else None
    )
    assert mask.dtype == jnp.bool_ and mask.shape == (num_req, num_cfg)
    np.testing.assert_array_equal(np.asarray(mask), mask_ref)
    np.testing.assert_allclose(np.asarray(prob), prob_ref, rtol=0, atol=1e-5)
    assert mask_ref.any() and (num_cfg == 1 or not mask_ref.all()), (
        "instance should mix admitted and rejected"
    )


def test_route_eager_matches_jit_and_annotations_hold():
    """Eager calls go through the jaxtyping/beartype instrumentation of the test session."""
    params, feats, configs = _setup(3, 4, 27)
    thr = jnp.zeros((27,), jnp.float32)
    always = jnp.zeros((27,), jnp.bool_).at[26].set(True)
    m1, p1 = K.route(params, jnp.asarray(feats), thr, always)
    m2, p2 = jax.jit(K.route)(params, jnp.asarray(feats), thr, always)
    np.testing.assert_array_equal(np.asarray(m1), np.asarray(m2))
    assert bool(m1[:, 26].all())


def test_threshold_mask_twin(ref):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(9, 13)).astype(np.float32)
    thr = rng.normal(size=13).astype(np.float32)
    thr[3] = np.inf
    thr[4] = -np.inf
    always = rng.random(13) < 0.2
    got = np.asarray(K.threshold_mask(jnp.asarray(logits), jnp.asarray(thr), jnp.asarray(always)))
    np.testing.assert_array_equal(got, ref.threshold_mask(logits, thr, always))
    assert not (got[:, 3] & ~always[3]).any() and got[:, 4].all()


@pytest.mark.parametrize("head", ["dense", "factorised"])
def test_route_chunk_equals_slice_of_route(ref, head):
    params, feats, configs = _setup(11, 6, 81, head)
    cfg_arg = jnp.asarray(configs) if head == "factorised" else None
    thr = jnp.asarray(np.random.default_rng(1).normal(size=81).astype(np.float32))
    always = jnp.zeros((81,), jnp.bool_).at[80].set(True)
    full_mask, full_prob = jax.jit(K.route)(params, jnp.asarray(feats), thr, always, cfg_arg)
    hidden = jax.jit(K.mlp_trunk)(params["hidden"], jnp.asarray(feats))
    chunk_fn = jax.jit(K.route_chunk, static_argnums=(5,))
    for start in (0, 16, 65):
        m, p = chunk_fn(params["head"], hidden, thr, always, jnp.int32(start), 16, cfg_arg)
        np.testing.assert_allclose(
            np.asarray(p), np.asarray(full_prob)[:, start : start + 16], atol=1e-6
        )
        np.testing.assert_array_equal(np.asarray(m), np.asarray(full_mask)[:, start : start + 16])
        m_ref, p_ref = ref.route_chunk(
            params["head"],
            np.asarray(hidden),
            np.asarray(thr),
            np.asarray(always),
            start,
            16,
            configs if head == "factorised" else None,
        )
        np.testing.assert_allclose(np.asarray(p), p_ref, atol=1e-5)
        logit_ref = np.log(p_ref) - np.log1p(-p_ref)
        clear = np.abs(logit_ref - np.asarray(thr)[None, start : start + 16]) > 1e-4
        np.testing.assert_array_equal(np.asarray(m)[clear], m_ref[clear])


@pytest.mark.parametrize("workflow", ["self_refine_humaneval", "text_to_sql_bird"])
def test_dominance_complete_twin(ref, workflow):
    space = load_space(workflow, "qwen")
    dom = space.dominates()
    rng = np.random.default_rng(5)
    num_c = space.num_configs
    mask = rng.random((7, num_c)) < 0.15
    evaluated = np.zeros(num_c, bool)
    evaluated[: num_c // 3] = True
    got = np.asarray(
        K.dominance_complete(jnp.asarray(mask), jnp.asarray(evaluated), jnp.asarray(dom))
    )
    want = ref.dominance_complete(mask, evaluated, dom)
    np.testing.assert_array_equal(got, want)
    # evaluated bits are kept as they are; an unevaluated admission is justified by dominance
    np.testing.assert_array_equal(got[:, evaluated], mask[:, evaluated])
    assert got[:, ~evaluated].any()
    # nothing evaluated and admitted -> nothing unevaluated admitted
    none = np.asarray(
        K.dominance_complete(jnp.zeros_like(mask), jnp.asarray(evaluated), jnp.asarray(dom))
    )
    assert not none.any()


def test_config_embedding_twin(ref):
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(4, 3, 5)).astype(np.float32)
    configs = rng.integers(0, 3, size=(81, 4)).astype(np.int32)
    got = np.asarray(K.config_embedding(jnp.asarray(emb), jnp.asarray(configs)))
    np.testing.assert_allclose(got, ref.config_embedding(emb, configs), atol=1e-5)


@pytest.mark.parametrize("head", ["dense", "factorised"])
def test_padding_rows_never_change_real_rows(head):
    params, feats, configs = _setup(21, 64, 27, head)
    cfg_arg = jnp.asarray(configs) if head == "factorised" else None
    thr = jnp.zeros((27,), jnp.float32)
    always = jnp.zeros((27,), jnp.bool_).at[26].set(True)
    fn = jax.jit(K.route)
    real = feats[:10]
    a = np.concatenate([real, np.zeros((54, 16), np.float32)])
    b = np.concatenate(
        [real, np.random.default_rng(9).normal(size=(54, 16)).astype(np.float32) * 100]
    )
    ma, pa = fn(params, jnp.asarray(a), thr, always, cfg_arg)
    mb, pb = fn(params, jnp.asarray(b), thr, always, cfg_arg)
    np.testing.assert_array_equal(np.asarray(ma)[:10], np.asarray(mb)[:10])
    np.testing.assert_array_equal(np.asarray(pa)[:10], np.asarray(pb)[:10])
