"""Router benchmarks: kernel throughput per bucket and C, vs the NumPy twin and a plain matmul,
single-request latency, and the end-to-end offline routing job.

    python bench/router.py [--quick] [--out bench/results/router.json]

Compilation is excluded (every function is compiled before timing); every timed call ends
with ``block_until_ready``. Numbers from one run are comparable with each other; the
machine is shared, so compare ratios, not absolute figures across runs.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from aragog_jax._provenance import git_sha
from aragog_jax.kernels import _reference as R
from aragog_jax.router import RouterModelConfig, init_params
from aragog_jax.router._router import DEFAULT_ROW_BLOCK, route_blocked

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._timing import time_fn  # noqa: E402

HIDDEN = (512,) * 6
FEATURE_DIM = 1024
BUCKETS = (1, 8, 64, 512, 4096)
CONFIGS = (27, 243, 4096)


def make_router_arrays(num_configs: int, hidden=HIDDEN, dim=FEATURE_DIM, seed=0):
    cfg = RouterModelConfig(dim, num_configs, hidden)
    params = init_params(cfg, jax.random.PRNGKey(seed))
    thresholds = jnp.zeros((num_configs,), jnp.float32)
    always = jnp.zeros((num_configs,), jnp.bool_).at[num_configs - 1].set(True)
    return cfg, params, thresholds, always


def compiled_route(
    params, thresholds, always, bucket, dim=FEATURE_DIM, row_block=DEFAULT_ROW_BLOCK
):
    """The Router's compiled kernel path for one bucket (features -> mask, prob)."""
    feats = jax.ShapeDtypeStruct((bucket, dim), jnp.float32)
    fn = functools.partial(route_blocked, row_block=row_block)
    return jax.jit(fn).lower(params, feats, thresholds, always).compile()


def kernel_table(quick: bool) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    for num_c in CONFIGS:
        cfg, params, thr, always = make_router_arrays(num_c)
        np_params = jax.tree.map(np.asarray, params)
        flops = cfg.flops_per_request()
        for b in BUCKETS:
            feats = jnp.asarray(rng.normal(size=(b, FEATURE_DIM)).astype(np.float32))
            fn = compiled_route(params, thr, always, b)
            jit_t = time_fn(
                lambda: jax.block_until_ready(fn(params, feats, thr, always)),
                min_time=0.2 if quick else 0.5,
            )
            row = {
                "num_configs": num_c,
                "bucket": b,
                "jit_median_s": statistics.median(jit_t),
                "jit_req_per_s": b / statistics.median(jit_t),
                "jit_gflops": flops * b / statistics.median(jit_t) / 1e9,
            }
            if not (quick and b > 512):
                f_np, t_np, a_np = np.asarray(feats), np.asarray(thr), np.asarray(always)
                np_t = time_fn(
                    lambda: R.route(np_params, f_np, t_np, a_np),
                    min_time=0.1,
                    min_reps=2,
                    max_reps=50,
                )
                row["numpy_median_s"] = statistics.median(np_t)
                row["speedup_vs_numpy"] = row["numpy_median_s"] / row["jit_median_s"]
            rows.append(row)
            print(
                f"C={num_c:<5} bucket={b:<5} jit {row['jit_req_per_s']:>12,.0f} req/s  {row['jit_gflops']:7.1f} GFLOP/s"
                + (
                    f"   numpy twin x{row['speedup_vs_numpy']:.1f} slower"
                    if "speedup_vs_numpy" in row
                    else ""
                ),
                flush=True,
            )
    return rows


def matmul_baseline(bucket: int = 4096) -> dict:
    """FLOP/s of plain jitted matmuls the size of the router's layers."""
    out = {}
    rng = np.random.default_rng(1)
    for k, n in ((FEATURE_DIM, 512), (512, 512), (512, 243)):
        a = jnp.asarray(rng.normal(size=(bucket, k)).astype(np.float32))
        w = jnp.asarray(rng.normal(size=(k, n)).astype(np.float32))
        fn = jax.jit(jnp.matmul).lower(a, w).compile()
        t = statistics.median(time_fn(lambda: jax.block_until_ready(fn(a, w)), min_time=0.5))
        out[f"{bucket}x{k}x{n}"] = 2 * bucket * k * n / t / 1e9
    # the same total FLOPs as the router in one chain of matmuls, no bias/activation/threshold
    ws = [
        jnp.asarray(rng.normal(size=s).astype(np.float32) * 0.03)
        for s in [(FEATURE_DIM, 512)] + [(512, 512)] * 5 + [(512, 243)]
    ]
    a = jnp.asarray(rng.normal(size=(bucket, FEATURE_DIM)).astype(np.float32))

    def chain(a, ws):
        for w in ws:
            a = a @ w
        return a

    fn = jax.jit(chain).lower(a, ws).compile()
    t = statistics.median(time_fn(lambda: jax.block_until_ready(fn(a, ws)), min_time=0.5))
    flops = RouterModelConfig(FEATURE_DIM, 243, HIDDEN).flops_per_request() * bucket
    out["chain_same_flops"] = flops / t / 1e9
    return out


def single_request_latency() -> dict:
    """p50/p99 of one request through the compiled bucket-1 kernel and through Router.route_features."""
    _, params, thr, always = make_router_arrays(243)
    fn = compiled_route(params, thr, always, 1)
    x = np.random.default_rng(2).normal(size=(1, FEATURE_DIM)).astype(np.float32)
    kernel_t = time_fn(
        lambda: jax.block_until_ready(fn(params, x, thr, always)), min_time=1.0, max_reps=5000
    )
    return {
        "kernel_p50_ms": 1e3 * float(np.percentile(kernel_t, 50)),
        "kernel_p99_ms": 1e3 * float(np.percentile(kernel_t, 99)),
    }


def end_to_end(num_rows: int, hidden=HIDDEN, chunk: int = 4096) -> dict:
    """Throughput of ``python -m aragog_jax.route`` (in-process) with a C=243 router of the given width."""
    from aragog_jax import route as route_cli
    from aragog_jax.data import generate
    from aragog_jax.router import (
        CheckpointMeta,
        HashedNgramFeaturizer,
        RouterCheckpoint,
        save_checkpoint,
    )
    from aragog_jax.space import load_space
    from aragog_jax.spec import load_models, load_workflow, resolve_workflow

    space = load_space("voting_mmlu_pro", "qwen")
    wf = load_workflow(resolve_workflow("voting_mmlu_pro"), load_models())
    ds = generate(space, wf, num_inputs=min(num_rows, 20000), seed=3, family="qwen")
    feat = HashedNgramFeaturizer(dim=FEATURE_DIM)
    cfg = RouterModelConfig(FEATURE_DIM, space.num_configs, hidden)
    params = jax.tree.map(np.asarray, init_params(cfg, jax.random.PRNGKey(0)))
    thr = np.zeros(space.num_configs, np.float32)
    meta = CheckpointMeta(
        workflow=space.workflow,
        family="qwen",
        fingerprint=space.fingerprint(),
        stage_names=list(space.stage_names),
        model_names=list(space.model_names),
        num_configs=space.num_configs,
        featurizer=feat.name,
        featurizer_config=feat.config(),
        model=cfg.to_dict(),
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = save_checkpoint(
            RouterCheckpoint(meta=meta, params=params, thresholds=thr), tmp / "r.npz"
        )
        inp = tmp / "in.jsonl"
        with open(inp, "w") as f:
            for i in range(num_rows):
                f.write(json.dumps({"id": i, "text": ds.texts[i % len(ds.texts)]}) + "\n")
        out = tmp / "out.jsonl"
        t = time.perf_counter()
        code = route_cli.main(
            [
                "--router",
                str(ckpt),
                "--input",
                str(inp),
                "--output",
                str(out),
                "--quiet",
                "--chunk-size",
                str(chunk),
            ]
        )
        dt = time.perf_counter() - t
        assert code == 0
        lines = sum(1 for _ in open(out))
        mean_adm = float(
            np.mean(
                [
                    len(json.loads(x)["admitted"])
                    for x, _ in zip(open(out), range(1000), strict=False)
                ]
            )
        )
    return {
        "rows": lines,
        "seconds_incl_compile": dt,
        "rows_per_s_incl_compile": lines / dt,
        "hidden": list(hidden),
        "mean_admitted": mean_adm,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="shorter timings; skip the NumPy twin above bucket 512"
    )
    parser.add_argument(
        "--rows", type=int, default=100_000, help="rows of the end-to-end job (default %(default)s)"
    )
    parser.add_argument(
        "--out", default="bench/results/router.json", help="results JSON (default %(default)s)"
    )
    args = parser.parse_args(argv)
    print(
        f"device: {jax.devices()[0]}  jax {jax.__version__}  {platform.processor() or platform.machine()}",
        flush=True,
    )
    base = matmul_baseline()
    print("plain jitted matmul GFLOP/s:", {k: round(v, 1) for k, v in base.items()}, flush=True)
    rows = kernel_table(args.quick)
    big = next(r for r in rows if r["num_configs"] == 243 and r["bucket"] == 4096)
    ref = max(base.values())
    print(
        f"C=243 bucket=4096: {big['jit_req_per_s']:,.0f} req/s = {big['jit_gflops']:.1f} GFLOP/s = "
        f"{100 * big['jit_gflops'] / ref:.0f}% of the best plain matmul ({ref:.1f} GFLOP/s)",
        flush=True,
    )
    lat = single_request_latency()
    print(
        f"single request (bucket 1, C=243, 6x512): kernel p50 {lat['kernel_p50_ms']:.3f} ms, p99 "
        f"{lat['kernel_p99_ms']:.3f} ms",
        flush=True,
    )
    e2e = end_to_end(args.rows)
    print(
        f"end-to-end route job, 6x512 C=243: {e2e['rows']:,} rows in {e2e['seconds_incl_compile']:.2f} s "
        f"= {e2e['rows_per_s_incl_compile']:,.0f} rows/s (compile + featurise + route + write)",
        flush=True,
    )
    result = {
        "git_sha": git_sha(),
        "device": str(jax.devices()[0]),
        "jax": jax.__version__,
        "model": {"feature_dim": FEATURE_DIM, "hidden": list(HIDDEN)},
        "matmul_gflops": base,
        "kernel": rows,
        "c243_b4096_fraction_of_matmul": big["jit_gflops"] / ref,
        "single_request": lat,
        "end_to_end": e2e,
        "argv": sys.argv[1:],
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
