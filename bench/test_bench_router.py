"""pytest-benchmark: router kernel path (features -> mask) per bucket and C, jitted vs NumPy twin.

    .venv/bin/python -m pytest bench/test_bench_router.py --benchmark-group-by=param:num_configs

Compilation is excluded (compiled before timing); each jitted call ends with
block_until_ready. ``bench/router.py`` prints the same table with the matmul baseline,
single-request latency and the end-to-end job.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from router import FEATURE_DIM, compiled_route, make_router_arrays  # noqa: E402

from aragog_jax.kernels import _reference as R  # noqa: E402

BUCKETS = (1, 8, 64, 512, 4096)
CONFIGS = (27, 243, 4096)


@pytest.fixture(scope="module", params=CONFIGS, ids=lambda c: f"C{c}")
def arrays(request):
    return request.param, make_router_arrays(request.param)


@pytest.mark.parametrize("bucket", BUCKETS)
def test_route_jit(benchmark, arrays, bucket):
    num_c, (cfg, params, thr, always) = arrays
    feats = jnp.asarray(
        np.random.default_rng(0).normal(size=(bucket, FEATURE_DIM)).astype(np.float32)
    )
    fn = compiled_route(params, thr, always, bucket)
    jax.block_until_ready(fn(params, feats, thr, always))
    benchmark.group = f"C={num_c}"
    benchmark.extra_info.update(
        num_configs=num_c, bucket=bucket, impl="jit", flops_per_request=cfg.flops_per_request()
    )
    mask, _ = benchmark(lambda: jax.block_until_ready(fn(params, feats, thr, always)))
    assert mask.shape == (bucket, num_c) and bool(mask[:, -1].all())
    benchmark.extra_info["req_per_s"] = bucket / benchmark.stats.stats.median


@pytest.mark.parametrize("bucket", BUCKETS)
def test_route_numpy_twin(benchmark, arrays, bucket):
    num_c, (cfg, params, thr, always) = arrays
    np_params = jax.tree.map(np.asarray, params)
    feats = np.random.default_rng(0).normal(size=(bucket, FEATURE_DIM)).astype(np.float32)
    benchmark.group = f"C={num_c}"
    benchmark.extra_info.update(num_configs=num_c, bucket=bucket, impl="numpy")
    rounds = 3 if bucket >= 512 else 10
    mask, _ = benchmark.pedantic(
        R.route,
        args=(np_params, feats, np.asarray(thr), np.asarray(always)),
        rounds=rounds,
        warmup_rounds=1,
    )
    assert mask.shape == (bucket, num_c)
    benchmark.extra_info["req_per_s"] = bucket / benchmark.stats.stats.median


@pytest.mark.parametrize("shape", [(4096, 1024, 512), (4096, 512, 512)])
def test_plain_matmul(benchmark, shape):
    """The machine's practical FLOP/s for the router's layer sizes (compare GFLOP/s, not time)."""
    m, k, n = shape
    rng = np.random.default_rng(1)
    a = jnp.asarray(rng.normal(size=(m, k)).astype(np.float32))
    w = jnp.asarray(rng.normal(size=(k, n)).astype(np.float32))
    fn = jax.jit(jnp.matmul).lower(a, w).compile()
    benchmark.group = "matmul"
    benchmark(lambda: jax.block_until_ready(fn(a, w)))
    benchmark.extra_info["gflops"] = 2 * m * k * n / benchmark.stats.stats.median / 1e9
