"""The continuous-batching engine model against closed-form cases."""

from __future__ import annotations

import numpy as np
import pytest

from aragog_jax.engines import BatchingEngine, run_standalone
from aragog_jax.sim._workload import arrival_times, sample_inputs
from aragog_jax.spec import CurvePoint, EngineProfile


def toy(
    sat=4, kv=100_000, base=0.01, per_seq=0.001, per_ctx=1e-6, prefill=10_000.0
) -> EngineProfile:
    return EngineProfile(
        model="toy",
        hardware="x",
        tensor_parallel=1,
        kind="derived",
        saturation_batch=sat,
        kv_capacity_tokens=kv,
        prefill_tokens_per_s=prefill,
        decode_base_s=base,
        decode_per_seq_s=per_seq,
        decode_per_ctx_token_s=per_ctx,
        curve=[CurvePoint(1, 1.0)],
    )


def test_single_sequence_closed_form():
    p, o = 300, 50
    e = BatchingEngine("e", "toy", toy())
    (t,) = run_standalone(e, [(2.0, p, o)])
    # Iteration q (0-based) holds p + q context tokens; the first also prefills p.
    expected = 2.0 + p / 10_000.0 + o * (0.01 + 0.001) + 1e-6 * (o * p + o * (o - 1) / 2)
    assert t == pytest.approx(expected, rel=1e-12)
    assert e.tokens_out == o and e.b == 0 and e.kv_reserved == 0


def test_identical_batch_finishes_together():
    b, p, o = 4, 100, 20
    e = BatchingEngine("e", "toy", toy(sat=4))
    times = run_standalone(e, [(0.0, p, o)] * b)
    expected = b * p / 10_000.0 + sum(0.01 + 0.001 * b + 1e-6 * b * (p + q) for q in range(o))
    assert times == pytest.approx([expected] * b, rel=1e-12)


def test_join_at_next_boundary_and_batch_limit():
    # sat=1: the second job waits for the first to finish (no overlap).
    e = BatchingEngine("e", "toy", toy(sat=1, per_ctx=0.0, prefill=1e12))
    t1, t2 = run_standalone(e, [(0.0, 10, 10), (0.005, 10, 10)])
    assert t1 == pytest.approx(10 * 0.011)
    assert t2 == pytest.approx(t1 + 10 * 0.011)
    # sat=2: the second job joins at the first boundary after it arrives (t=0.011).
    e = BatchingEngine("e", "toy", toy(sat=2, per_ctx=0.0, prefill=1e12))
    t1, t2 = run_standalone(e, [(0.0, 10, 10), (0.005, 10, 10)])
    assert t1 == pytest.approx(0.011 + 9 * 0.012)
    assert t2 == pytest.approx(t1 + 0.011)


def test_kv_capacity_limits_admission():
    # KV holds one 60-token sequence at a time although the batch could hold 4.
    e = BatchingEngine("e", "toy", toy(sat=4, kv=100, per_ctx=0.0, prefill=1e12))
    t1, t2 = run_standalone(e, [(0.0, 50, 10), (0.0, 50, 10)])
    assert t2 == pytest.approx(2 * t1)
    with pytest.raises(Exception, match="KV capacity"):
        e.submit(0.0, 9, 95, 10)


def test_md1_waiting_time_matches_pollaczek_khinchine():
    # One slot, constant service D, Poisson arrivals: mean wait = rho D / (2 (1 - rho)).
    e = BatchingEngine("e", "toy", toy(sat=1, per_ctx=0.0, prefill=1e12, base=0.009, per_seq=0.001))
    d = 10 * 0.010
    lam = 6.0  # rho = 0.6
    n = 20_000
    arr = arrival_times(n, lam, "poisson", seed=3)
    done = np.asarray(run_standalone(e, [(float(t), 1, 10) for t in arr]))
    wait = done - arr - d
    # Continuous batching starts service at the arrival instant when idle, so the
    # queue is exactly M/D/1.
    rho = lam * d
    assert wait.mean() == pytest.approx(rho * d / (2 * (1 - rho)), rel=0.06)
    assert (wait > -1e-9).all()


def test_gamma_arrivals_mean_and_burstiness():
    a = arrival_times(50_000, 10.0, "gamma", cv=3.0, seed=1)
    gaps = np.diff(np.concatenate([[0.0], a]))
    assert gaps.mean() == pytest.approx(0.1, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(3.0, rel=0.1)
    p = np.diff(np.concatenate([[0.0], arrival_times(50_000, 10.0, "poisson", seed=1)]))
    assert p.std() / p.mean() == pytest.approx(1.0, rel=0.05)
    assert np.array_equal(arrival_times(100, 2.0, seed=7), arrival_times(100, 2.0, seed=7))


def test_sample_inputs_cycles_every_row():
    rows = np.array([3, 5, 9])
    s = sample_inputs(rows, 7, seed=0)
    assert sorted(s[:3]) == [3, 5, 9] and sorted(s[3:6]) == [3, 5, 9] and len(s) == 7


def test_random_load_conserves_jobs_and_tokens():
    rng = np.random.default_rng(0)
    n = 3000
    arr = np.sort(rng.uniform(0, 20, n))
    prompts = rng.integers(1, 2000, n)
    outs = rng.integers(1, 400, n)
    e = BatchingEngine("e", "toy", toy(sat=32, kv=40_000))
    done = np.asarray(
        run_standalone(e, list(zip(arr.tolist(), prompts.tolist(), outs.tolist(), strict=True)))
    )
    assert np.isfinite(done).all() and (done > arr).all()
    assert e.tokens_out == outs.sum() and e.completed == n
    assert e.b == 0 and e.kv_reserved == 0 and not e.waiting
