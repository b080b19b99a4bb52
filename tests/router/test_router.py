"""Router: load/compile/route, retrace-freedom, twin equality, padding and bucket invariance, budget."""

from __future__ import annotations

import numpy as np
import pytest

from aragog_jax.errors import CheckpointError
from aragog_jax.kernels import _reference as R
from aragog_jax.router import Router, load_checkpoint
from aragog_jax.space import load_space

BUCKETS = (1, 8, 64)


@pytest.fixture(scope="module")
def router(tiny):
    space, _, _, ckpt, _ = tiny
    return Router.load(ckpt, space).compile(BUCKETS)


def test_second_call_of_each_bucket_does_not_trace(tiny):
    space, ds, _, ckpt, _ = tiny
    router = Router.load(ckpt, space)
    router.compile(BUCKETS)
    assert router.num_traces == len(BUCKETS)  # one trace per bucket, at compile time
    for n in (1, 3, 8, 9, 64, 65, 150):  # every bucket, padding, and splitting past the largest
        router.route_texts(ds.texts[:n])
        router.route_texts(ds.texts[:n])
    assert router.num_traces == len(BUCKETS)
    router.set_thresholds(
        np.zeros(space.num_configs, np.float32)
    )  # new thresholds: arguments, no retrace
    router.route_texts(ds.texts[:5])
    assert router.num_traces == len(BUCKETS)


def test_mask_matches_numpy_twin_and_cmax_always_admitted(router, tiny):
    space, ds, _, _, _ = tiny
    texts = ds.texts[:150]
    res = router.route_texts(texts)
    assert res.mask.shape == (150, space.num_configs) and res.mask.dtype == bool
    assert res.mask[:, space.c_max].all()
    assert res.fraction_completed == 1.0 and res.elapsed > 0
    feats = router.featurizer(texts)
    ck = router.checkpoint
    always = np.zeros(space.num_configs, bool)
    always[space.c_max] = True
    mask_ref, prob_ref = R.route(ck.params, feats, ck.thresholds, always)
    logits_ref = R.router_logits(ck.params, feats)
    # exact equality wherever float32 rounding cannot decide (the margin is 1e-4 in logit space)
    clear = np.abs(logits_ref - ck.thresholds[None, :]) > 1e-4
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(res.mask[clear], mask_ref[clear])
    np.testing.assert_allclose(res.prob, prob_ref, atol=1e-5)
    assert 1 < res.num_admitted.mean() < space.num_configs  # the instance is not trivial


def test_bucket_and_padding_invariance(router, tiny):
    space, ds, _, _, _ = tiny
    texts = ds.texts[:64]
    full = router.route_texts(texts)
    for n in (1, 5, 8, 33):
        part = router.route_texts(texts[:n])  # other bucket / other padding rows
        np.testing.assert_array_equal(part.mask, full.mask[:n])
        np.testing.assert_allclose(part.prob, full.prob[:n], atol=1e-6)
    empty = router.route_texts([])
    assert empty.mask.shape == (0, space.num_configs)


def test_row_blocked_big_bucket_equals_small_buckets(tiny):
    space, ds, _, ckpt, _ = tiny
    router = Router.load(ckpt, space, row_block=64).compile((64, 256))
    texts = ds.texts[:250]
    big = router.route_texts(texts)  # bucket 256 = 4 blocks of 64 through lax.map
    for lo in range(0, 250, 64):
        small = router.route_texts(texts[lo : lo + 64])  # bucket 64, unblocked
        np.testing.assert_array_equal(big.mask[lo : lo + 64], small.mask)
        np.testing.assert_allclose(big.prob[lo : lo + 64], small.prob, atol=1e-6)


def test_budget_zero_scores_one_chunk_and_completes_by_dominance(tiny):
    space, ds, _, ckpt, _ = tiny
    router = Router.load(ckpt, space, chunk=8).compile(BUCKETS, budgeted=True)
    texts = ds.texts[:20]
    full = router.route_texts(texts)
    part = router.route_features(router.featurizer(texts), budget_s=0.0)
    assert part.fraction_completed == pytest.approx(8 / space.num_configs)
    evaluated = np.zeros(space.num_configs, bool)
    evaluated[:8] = True
    np.testing.assert_array_equal(part.mask[:, :8], full.mask[:, :8])
    want = R.dominance_complete(full.mask, evaluated, space.dominates())
    want[:, space.c_max] = True
    np.testing.assert_array_equal(part.mask, want)
    assert np.isnan(part.prob[:, 8:]).all()
    done = router.route_features(router.featurizer(texts), budget_s=60.0)
    assert done.fraction_completed == 1.0
    np.testing.assert_array_equal(done.mask, full.mask)
    traces = router.num_traces
    router.route_features(router.featurizer(texts[:3]), budget_s=0.0)
    assert router.num_traces == traces


def test_progressive_routing_grows_from_cmax_to_the_full_mask(tiny):
    """Each step's admitted set contains the previous one and is inside the full mask (no
    dominance fill-in): a consumer may stop after any step and stay within what the
    router admits."""
    space, ds, _, ckpt, _ = tiny
    router = Router.load(ckpt, space, chunk=8).compile(BUCKETS, budgeted=True)
    texts = ds.texts[:20]
    full = router.route_texts(texts)
    steps = list(router.route_progressive(router.featurizer(texts)))
    assert len(steps) == 1 + -(-space.num_configs // 8)
    only_cmax = np.zeros_like(full.mask)
    only_cmax[:, space.c_max] = True
    np.testing.assert_array_equal(steps[0].mask, only_cmax)
    assert steps[0].fraction_completed == 0.0
    for prev, cur in zip(steps[:-1], steps[1:], strict=True):
        assert (cur.mask >= prev.mask).all() and (cur.mask <= full.mask).all()
        assert cur.fraction_completed > prev.fraction_completed
    assert steps[-1].fraction_completed == 1.0
    np.testing.assert_array_equal(steps[-1].mask, full.mask)
    sizes = [int(s.mask.sum()) for s in steps]
    assert len(set(sizes)) > 2  # some step is strictly between c_max alone and the full set


def test_checkpoint_round_trip(tiny, tmp_path):
    space, _, _, ckpt_path, res = tiny
    ck = load_checkpoint(ckpt_path)
    assert ck.meta.format == "aragog-router/1"
    assert ck.meta.fingerprint == space.fingerprint()
    assert ck.meta.featurizer == "hashed-ngram" and ck.meta.featurizer_config["dim"] == 256
    np.testing.assert_array_equal(ck.thresholds, res.checkpoint.thresholds)
    np.testing.assert_array_equal(ck.params["head"]["w"], res.checkpoint.params["head"]["w"])
    assert ck.meta.calibration["epsilon"] == 0.1 and ck.meta.report["test"]["num_inputs"] > 0
    assert len(ck.meta.git_sha) >= 7


def test_loading_against_another_space_says_so(tiny):
    _, _, _, ckpt, _ = tiny
    with pytest.raises(
        CheckpointError, match="workflow 'self_refine_humaneval', not 'self_refine_squad'"
    ):
        Router.load(ckpt, load_space("self_refine_squad", "qwen"))
    with pytest.raises(CheckpointError, match="model pool"):
        Router.load(ckpt, load_space("self_refine_humaneval", "llama"))
    with pytest.raises(CheckpointError, match="configurations"):
        Router.load(ckpt, load_space("text_to_sql_bird", "qwen"))


def test_bad_checkpoint_files(tmp_path, tiny):
    with pytest.raises(CheckpointError, match="no such router checkpoint"):
        load_checkpoint(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a router checkpoint"):
        load_checkpoint(junk)
    # a future format version is refused
    _, _, _, ckpt, _ = tiny
    with np.load(ckpt) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["__meta__"] = np.frombuffer(
        arrays["__meta__"].tobytes().replace(b"aragog-router/1", b"aragog-router/9"), np.uint8
    )
    future = tmp_path / "future.npz"
    np.savez(future, **arrays)
    with pytest.raises(CheckpointError, match="aragog-router/9"):
        load_checkpoint(future)


def test_load_without_space_uses_checkpoint_workflow_and_family(tiny):
    space, ds, _, ckpt, _ = tiny
    router = Router.load(ckpt)
    assert router.space.fingerprint() == space.fingerprint()
    assert router.admitted_models(router.route_texts(ds.texts[:1]).mask[0])[
        -1
    ] == space.config_to_models(space.c_max)


def test_factorised_head_trains_saves_and_routes(tiny, tmp_path):
    from aragog_jax.router import HashedNgramFeaturizer, fit_router, save_checkpoint

    from .conftest import small_config

    space, ds, _, _, _ = tiny
    res = fit_router(
        ds,
        space,
        HashedNgramFeaturizer(dim=128),
        small_config(head="factorised", max_epochs=1, sweep=()),
        progress=False,
    )
    ck = load_checkpoint(save_checkpoint(res.checkpoint, tmp_path / "f.npz"))
    assert ck.meta.model["head"] == "factorised"
    assert ck.params["head"]["stage_model"].shape == (space.num_stages, space.num_models, 16)
    router = Router(ck, space).compile((8,))
    res2 = router.route_texts(ds.texts[:5])
    assert res2.mask.shape == (5, space.num_configs) and res2.mask[:, space.c_max].all()
    feats = router.featurizer(ds.texts[:5])
    np.testing.assert_allclose(
        res2.prob,
        R.route(ck.params, feats, ck.thresholds, res2.mask[0] & False, space.configs)[1],
        atol=1e-5,
    )


def test_batch_router_for_map_batches(tiny):
    from aragog_jax.errors import DatasetError
    from aragog_jax.router import BatchRouter

    space, ds, _, ckpt, _ = tiny
    fn = BatchRouter(ckpt, batch_size=16)
    batch = {"id": np.arange(5), "text": np.asarray(ds.texts[:5], dtype=object)}
    out = fn(batch)
    want = Router.load(ckpt).route_texts(ds.texts[:5]).mask
    np.testing.assert_array_equal(out["num_admitted"], want.sum(axis=1))
    for row, m in zip(out["admitted"], want, strict=True):
        np.testing.assert_array_equal(row, np.flatnonzero(m))
    assert BatchRouter(ckpt, batch_size=8, admitted="mask")(batch)["admitted"].shape == (
        5,
        space.num_configs,
    )
    with pytest.raises(DatasetError, match="'id' and 'text'"):
        fn({"text": batch["text"]})
