"""The derivation formula against hand-computed numbers, and the perf helpers."""

from __future__ import annotations

import math

import pytest

from aragog_jax.engines import (
    curve_tokens_per_s,
    decode_iteration_s,
    iteration_s,
    prefill_s,
    steady_tokens_per_s,
)
from aragog_jax.errors import SpecError
from aragog_jax.perf.derive import (
    FIT_FIELDS,
    Assumptions,
    Hardware,
    PublishedPoint,
    derive_profile,
    load_published_points,
    main,
    predict_point,
    shipped_fit,
)
from aragog_jax.spec import CurvePoint, EngineProfile


def _model(catalog, name):
    return next(m for m in catalog.model if m.name == name)


def test_llama8b_tp1_by_hand(catalog):
    m = _model(catalog, "Llama-3.1-8B-Instruct")
    p = derive_profile(m, 1)
    # KV bytes per token: 2 (K,V) * 32 layers * 8 kv heads * 128 dims * 2 bytes.
    assert m.kv_bytes_per_token == 131_072
    bw = 3.35e12 * 0.80
    assert p.decode_base_s == pytest.approx(1e-3 + 2 * 8_030_261_248 / bw, rel=1e-5)
    assert p.decode_per_seq_s == pytest.approx(10e-6 + 2 * 8_030_261_248 / (989e12 * 0.5), rel=1e-5)
    assert p.decode_per_ctx_token_s == pytest.approx(131_072 / bw, rel=1e-5)
    assert p.kv_capacity_tokens == int((80e9 * 0.9 - 2 * 8_030_261_248) // 131_072)
    assert p.prefill_tokens_per_s == pytest.approx(989e12 * 0.5 / (2 * 8_030_261_248), rel=1e-5)
    assert p.kind == "derived" and p.tensor_parallel == 1 and p.num_gpus == 1


def test_tensor_parallel_shards_weights_and_kv(catalog):
    m = _model(catalog, "Qwen2.5-32B-Instruct")
    p2, p4 = derive_profile(m, 2), derive_profile(m, 4)
    assert p4.decode_base_s < p2.decode_base_s
    assert p4.decode_per_ctx_token_s == pytest.approx(p2.decode_per_ctx_token_s / 2, rel=1e-4)
    assert p4.prefill_tokens_per_s == pytest.approx(2 * p2.prefill_tokens_per_s, rel=1e-4)
    assert p4.kv_capacity_tokens > 2 * p2.kv_capacity_tokens  # weights take a smaller share
    # TP adds an all-reduce latency term: 2 per layer.
    weights_s = 2 * m.num_params / 4 / (3.35e12 * 0.8)
    assert p4.decode_base_s == pytest.approx(1e-3 + weights_s + 2 * 64 * 8e-6, rel=1e-5)


def test_saturation_batch_definition(catalog):
    a = Assumptions()
    for name in ("Qwen2.5-7B-Instruct", "Llama-3.1-70B-Instruct"):
        tp = 4 if "70B" in name else 1
        p = derive_profile(_model(catalog, name), tp)
        ctx = a.typical_context_tokens
        peak = p.curve[-1].tokens_per_s
        sat = p.saturation_batch
        assert steady_tokens_per_s(p, sat, ctx) >= 0.9 * peak * (1 - 1e-5)
        assert steady_tokens_per_s(p, sat - 1, ctx) < 0.9 * peak
        assert any(pt.concurrency == sat for pt in p.curve)
        ys = [pt.tokens_per_s for pt in p.curve]
        assert ys == sorted(ys)  # throughput rises with concurrency


def test_kv_limit_caps_the_curve(catalog):
    # A tiny GPU: the KV cache holds few 1024-token sequences, so the curve stops there.
    m = _model(catalog, "Qwen2.5-14B-Instruct")
    hw = Hardware(memory_bytes=36e9)
    p = derive_profile(m, 1, hw=hw)
    assert p.curve[-1].concurrency == p.kv_capacity_tokens // 1024
    assert p.curve[-1].concurrency < 256
    with pytest.raises(SpecError, match="do not fit"):
        derive_profile(m, 1, hw=Hardware(memory_bytes=20e9))


def _toy_profile(**kw) -> EngineProfile:
    base = dict(
        model="toy",
        hardware="x",
        tensor_parallel=1,
        kind="derived",
        saturation_batch=4,
        kv_capacity_tokens=10_000,
        prefill_tokens_per_s=1000.0,
        decode_base_s=0.01,
        decode_per_seq_s=0.001,
        decode_per_ctx_token_s=1e-6,
        curve=[CurvePoint(2, 100.0), CurvePoint(4, 300.0)],
    )
    base.update(kw)
    return EngineProfile(**base)


def test_curve_interpolation():
    p = _toy_profile()
    assert curve_tokens_per_s(p, 0) == 0.0
    assert curve_tokens_per_s(p, 1) == pytest.approx(50.0)  # linear from the origin
    assert curve_tokens_per_s(p, 3) == pytest.approx(200.0)
    assert curve_tokens_per_s(p, 4) == pytest.approx(300.0)
    assert curve_tokens_per_s(p, 100) == pytest.approx(300.0)  # flat past the last point


def test_iteration_times():
    p = _toy_profile()
    assert decode_iteration_s(p, 0, 0) == 0.0
    assert decode_iteration_s(p, 3, 1000) == pytest.approx(0.01 + 0.003 + 0.001)
    assert prefill_s(p, 500) == pytest.approx(0.5)
    assert iteration_s(p, 0, 0, 0) == 0.0
    assert iteration_s(p, 0, 0, 100) == pytest.approx(0.01 + 0.1)
    assert iteration_s(p, 2, 2000, 100) == pytest.approx(0.01 + 0.002 + 0.002 + 0.1)
    assert math.isclose(steady_tokens_per_s(p, 2, 500), 2 / (0.01 + 0.002 + 0.001))


def test_cli_unknown_model_is_user_error(capsys, tmp_path):
    from aragog_jax._cli import run_cli

    assert run_cli(main, ["--model", "GPT-9", "--out", str(tmp_path)]) == 2
    assert "unknown model" in capsys.readouterr().err


# ----------------------------------------------------------------------------- fit to published points

#: Tolerance of the fitted formula on every published point it was fitted to
#: (profiles/README.md, "Fit to published measurements").
POINT_TOLERANCE = 0.15


def test_fitted_formula_reproduces_every_published_point():
    fit = shipped_fit()
    points, _ = load_published_points()
    assert len(fit.points) == len(points) >= 18
    for i, pt in enumerate(fit.points):
        assert abs(fit.ratio(i) - 1.0) <= POINT_TOLERANCE, (pt, fit.predicted[i])
    assert fit.rms_log_error <= 0.08


def test_fit_beats_the_documented_round_efficiencies(catalog):
    """The fit moves the efficiencies where the measurements say (not a no-op)."""
    points, _ = load_published_points()
    by_name = {m.name: m for m in catalog.model}
    before = [math.log(predict_point(pt, by_name[pt.model]) / pt.value) for pt in points]
    fit = shipped_fit()
    assert math.sqrt(sum(e * e for e in before) / len(before)) > 2 * fit.rms_log_error
    assert fit.assumptions != Assumptions()
    untouched = {f for f in Assumptions.__dataclass_fields__ if f not in FIT_FIELDS}
    assert all(getattr(fit.assumptions, f) == getattr(Assumptions(), f) for f in untouched)
    assert all(
        0 < getattr(fit.assumptions, f) <= 1.0
        for f in FIT_FIELDS
        if "efficiency" in f or f.startswith("mfu")
    )


def test_predict_point_by_hand(catalog):
    """An FP8 max-load point: 1-byte weights and KV, FP8 peak FLOPs, KV-limited concurrency."""
    m = _model(catalog, "Llama-3.1-8B-Instruct")
    pt = PublishedPoint(
        m.name, 1, "fp8", 1000, 1000, 2048, 0.9, "output_tokens_per_s", 15220.0, "x"
    )
    a = Assumptions()
    kv = (80e9 * 0.9 - 8_030_261_248) // (131_072 // 2)
    c = int(kv // 2000)
    bw = 3.35e12 * 0.8
    t_iter = (
        1e-3
        + 8_030_261_248 / bw
        + c * (10e-6 + 2 * 8_030_261_248 / (1979e12 * 0.5))
        + c * 1500 * (131_072 / 2) / bw
    )
    prefill = 1979e12 * 0.5 / (2 * 8_030_261_248)
    want = c * 1000 / (1000 * t_iter + c * 1000 / prefill)
    assert predict_point(pt, m, Hardware(), a) == pytest.approx(want, rel=1e-6)


def test_published_points_errors_name_the_field(tmp_path):
    base = (
        '[sources]\nx = "somewhere"\n[[point]]\nmodel = "Llama-3.1-8B-Instruct"\ntensor_parallel = '
        '1\nprecision = "fp8"\n'
        'input_tokens = 1\noutput_tokens = 1\nmax_batch = 8\nkv_memory_fraction = 0.9\nmetric = "output_tokens_per_s"\n'
        'value = 10.0\nsource = "x"\n'
    )
    path = tmp_path / "p.toml"
    path.write_text(base)
    assert len(load_published_points(path)[0]) == 1
    for old, new, needle in [
        ('precision = "fp8"', 'precision = "int4"', r"point\[0\]\.precision"),
        ('metric = "output_tokens_per_s"', 'metric = "ttft"', r"point\[0\]\.metric"),
        ('source = "x"', 'source = "y"', r"point\[0\]\.source: 'y' is not in \[sources\]"),
        ("value = 10.0", "value = -1.0", r"point\[0\]\.value"),
        ("max_batch = 8\n", "", "max_batch"),
    ]:
        path.write_text(base.replace(old, new))
        with pytest.raises(SpecError, match=needle):
            load_published_points(path)


def test_cli_check_and_report(capsys):
    from aragog_jax._cli import run_cli

    assert run_cli(main, ["--check"]) == 0
    assert "9/9 profiles up to date" in capsys.readouterr().out
    assert run_cli(main, ["--report"]) == 0
    out = capsys.readouterr().out
    assert "| `mfu_decode` |" in out and "Llama-3.3-70B-Instruct" in out
