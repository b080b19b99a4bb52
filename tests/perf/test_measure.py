"""Engine profiler: pure helpers, a profile of the emulated engine, the CLI."""

from __future__ import annotations

import asyncio
import json

import pytest

from aragog_jax.engines import BatchingEngine, curve_tokens_per_s, run_standalone
from aragog_jax.errors import AragogError
from aragog_jax.perf._measure import (
    LevelResult,
    Profiler,
    ProfileSettings,
    Timed,
    fit_decode,
    iteration_points,
    kv_capacity_from_metrics,
    measured_profile_to_toml,
    saturation_batch,
    window_tokens,
)
from aragog_jax.profile import main as profile_main
from aragog_jax.serving import EmulatedEngine, LoopbackServer
from aragog_jax.spec import CurvePoint, EngineProfile, load_profile


def _level(n, tput):
    return LevelResult(n, 10, 1.0, tput, 0.01, 0.001, 0.1, 100.0, 50.0)


def test_window_tokens_spreads_tokens_over_decode_span():
    r = Timed(start=0.0, first=1.0, end=3.0, prompt_tokens=10, completion_tokens=21)
    assert window_tokens([r], 0.0, 10.0) == pytest.approx(21)
    assert window_tokens([r], 2.0, 10.0) == pytest.approx(10.5)
    # A burst (all tokens at the end) is spread over the whole request instead.
    burst = Timed(start=0.0, first=3.9, end=4.0, prompt_tokens=10, completion_tokens=40)
    assert not burst.incremental and burst.itl == 0.0
    assert window_tokens([burst], 0.0, 2.0) == pytest.approx(20)


def _lat_level(n, latency, tput=100.0, running=-1.0, waiting=-1.0):
    return LevelResult(
        n,
        10,
        1.0,
        tput,
        0.01,
        0.001,
        latency,
        100.0,
        51.0,
        max_running=running,
        max_waiting=waiting,
    )


def test_iteration_time_from_latency_minus_the_probe_recovers_a_line():
    base, per_seq, rate, probe = 0.01, 0.002, 1e5, 0.05
    # L(n) = probe + (G - 1) t(n) + (n - 1) P / rate with G = 51, P = 100.
    levels = [
        _lat_level(n, probe + 50 * (base + per_seq * n) + (n - 1) * 100 / rate, running=n)
        for n in (1, 2, 4, 8)
    ]
    pts = iteration_points(levels, probe, rate)
    b, s = fit_decode(pts)
    assert b == pytest.approx(base, rel=1e-6) and s == pytest.approx(per_seq, rel=1e-6)


def test_queued_levels_are_left_out_and_the_fit_never_goes_negative():
    levels = [
        _lat_level(1, 0.1, running=1, waiting=0),
        _lat_level(2, 0.12, running=1, waiting=0),
        _lat_level(4, 0.9, running=2, waiting=2),
    ]
    assert levels[2].queued and [n for n, _ in iteration_points(levels, 0.0, 1e9)] == [1, 2]
    # No gauge: stop at the first level at peak throughput.
    nog = [_lat_level(1, 0.1, 100.0), _lat_level(2, 0.12, 300.0), _lat_level(4, 0.5, 300.0)]
    assert [n for n, _ in iteration_points(nog, 0.0, 1e9)] == [1, 2]
    b, s = fit_decode([(1, 0.01), (2, 0.005), (4, 0.002)])  # falling: constant model
    assert s == 0.0 and b > 0
    b, s = fit_decode(
        [(1, 0.001), (2, 0.004), (4, 0.010)]
    )  # negative intercept: through the origin
    assert b == 0.0 and s > 0
    with pytest.raises(AragogError):
        fit_decode([])


def test_saturation_batch_is_the_first_level_within_the_margin():
    levels = [
        _level(1, 100.0),
        _level(2, 190.0),
        _level(4, 360.0),
        _level(8, 380.0),
        _level(16, 390.0),
    ]
    assert saturation_batch(levels, 0.10) == 4
    assert saturation_batch(levels, 0.01) == 16
    capped = [
        LevelResult(
            n,
            10,
            1.0,
            t,
            0.01,
            0.001,
            0.1,
            100.0,
            50.0,
            max_running=min(n, 4),
            max_waiting=max(0, n - 4),
        )
        for n, t in ((1, 100.0), (2, 190.0), (4, 300.0), (8, 380.0), (16, 390.0))
    ]
    assert saturation_batch(capped, 0.01) == 4  # never more than the engine batches


def test_kv_capacity_from_vllm_cache_config_info():
    text = (
        "# TYPE vllm:cache_config_info gauge\n"
        'vllm:cache_config_info{block_size="128",engine="0",num_gpu_blocks="512",x="y"} 1.0\n'
    )
    assert kv_capacity_from_metrics(text) == 65536
    assert kv_capacity_from_metrics("vllm:num_requests_running 0\n") == 0


def test_settings_are_checked():
    with pytest.raises(AragogError, match="strictly increasing"):
        ProfileSettings(concurrency=(4, 2)).check()
    with pytest.raises(AragogError, match="saturation margin"):
        ProfileSettings(saturation_margin=1.5).check()


def _truth(scale: float) -> EngineProfile:
    return EngineProfile(
        model="M",
        hardware="H",
        tensor_parallel=1,
        kind="derived",
        saturation_batch=8,
        kv_capacity_tokens=1_000_000,
        prefill_tokens_per_s=2e5,
        decode_base_s=0.02 / scale,
        decode_per_seq_s=0.004 / scale,
        decode_per_ctx_token_s=0.0,
        curve=[CurvePoint(1, 1.0)],
    )


async def _profile_emulated(settings: ProfileSettings, time_scale: float):
    # The emulated engine runs the profile `time_scale` times faster; `truth` is what it
    # should look like on the wall clock.
    eng = EmulatedEngine("e", "M", _truth(1.0), time_scale=time_scale)
    srv = LoopbackServer(eng.app)
    url = await srv.start()
    try:
        return await Profiler(url, "M", settings=settings).run()
    finally:
        await srv.stop()


def test_profiles_the_emulated_engine_and_the_profile_loads_back(tmp_path):
    scale = 10.0
    settings = ProfileSettings(
        concurrency=(1, 2, 4, 8),
        prompt_tokens=40,
        output_tokens=20,
        level_s=0.6,
        level_requests=60,
        probe_repeats=2,
        seed=1,
    )
    profile, report = asyncio.run(asyncio.wait_for(_profile_emulated(settings, scale), 120))
    assert profile.kind == "measured" and profile.date and profile.engine_version
    assert [p.concurrency for p in profile.curve] == [1, 2, 4, 8]
    assert (
        report.num_requests
        == sum(lv.num_requests for lv in report.levels) + 1 + 2 * settings.probe_repeats
    )
    assert "placeholder" in report.kv_capacity_source  # the emulated engine exports no cache info
    # Loose recovery of what the emulated engine does (this is not a timing benchmark:
    # only the shape is judged, within a factor that survives a loaded machine).
    truth = _truth(scale)
    tput = [p.tokens_per_s for p in profile.curve]
    assert tput[-1] > tput[0] * 2  # batching raises throughput
    expected_8 = 8 / (truth.decode_base_s + 8 * truth.decode_per_seq_s)
    assert expected_8 / 3 < tput[-1] < expected_8 * 1.5
    out = tmp_path / "p.toml"
    out.write_text(measured_profile_to_toml(profile, "test"))
    loaded = load_profile(out)
    assert loaded == profile
    # The simulator accepts it.
    sim = BatchingEngine("x", "M", loaded)
    done = run_standalone(sim, [(0.0, 40, 20), (0.0, 40, 20)])
    assert all(t > 0 for t in done) and curve_tokens_per_s(loaded, 3) > 0


def test_cli_writes_profile_and_report(tmp_path, capsys):
    async def serve_and_run():
        eng = EmulatedEngine("e", "M", _truth(1.0), time_scale=20.0)
        srv = LoopbackServer(eng.app)
        url = await srv.start()
        try:
            out = tmp_path / "m.toml"
            argv = [
                "--engine",
                url,
                "--model",
                "M",
                "--profile-model",
                "Qwen2.5-7B-Instruct",
                "--out",
                str(out),
                "--concurrency",
                "1,4",
                "--level-seconds",
                "0.3",
                "--prompt-tokens",
                "16",
                "--output-tokens",
                "8",
                "--probe-repeats",
                "1",
                "--hardware",
                "cpu",
                "--quiet",
            ]
            return await asyncio.to_thread(profile_main, argv), out
        finally:
            await srv.stop()

    code, out = asyncio.run(serve_and_run())
    assert code == 0
    prof = load_profile(out)
    assert (
        prof.model == "Qwen2.5-7B-Instruct" and prof.hardware == "cpu" and prof.kind == "measured"
    )
    rep = json.loads(out.with_suffix(".report.json").read_text())
    assert rep["git_sha"] and len(rep["levels"]) == 2
    assert "saturation batch" in capsys.readouterr().out


def test_cli_unreachable_engine_is_a_one_line_error(tmp_path, capsys):
    from aragog_jax._cli import run_cli

    code = run_cli(
        profile_main,
        [
            "--engine",
            "http://127.0.0.1:9",
            "--model",
            "m",
            "--out",
            str(tmp_path / "x.toml"),
            "--quiet",
        ],
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "x.toml").exists()
