"""Bring your own workflow, end to end on the two real vLLM CPU engines (``-m vllm``).

Profile ``tiny-a``; label a three-stage self-refine workflow over 36 inputs on both
engines with a deterministic scorer; train a small router on the result; serve it with
the measured profile. Every step's artefact is checked, and the labeller's engine calls
must equal the number of distinct model prefixes (2 + 4 + 8 = 14 per input, not 3 x 8).

This file lives next to ``test_vllm.py`` so it shares that module's session fixture
(one pair of engines per session); its name sorts before ``test_vllm.py``, whose last
test kills an engine.
"""

from __future__ import annotations

import asyncio
import json
import textwrap

import aiohttp
import numpy as np
import pytest

from aragog_jax.data import load_dataset
from aragog_jax.perf._measure import Profiler, ProfileSettings, measured_profile_to_toml
from aragog_jax.serving import ServeOptions, Server, load_runtime
from aragog_jax.spec import load_profile

from ._fleetkit import CATALOG

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

SELF_REFINE = """
name = "refine"
description = "self-refine: generate, critique, refine"

[[stage]]
name = "generate"
input_tokens = 12
output_tokens = 6
prompt = "Answer briefly: {input}"

[[stage]]
name = "critique"
upstream = ["generate"]
input_tokens = 24
output_tokens = 6
prompt = "Critique the answer {generate} to {input}"

[[stage]]
name = "refine"
upstream = ["generate", "critique"]
input_tokens = 36
output_tokens = 6
prompt = "Improve {generate} using {critique} for {input}"
"""


#: A user's scorer file: deterministic for random-weight outputs (parity of the normalised length).
SCORER = """
from aragog_jax.data.scorers import normalize


def score(row, output):
    return float(len(normalize(output)) % 2)
"""


def test_profile_label_train_serve_on_real_engines(vllm_engines, tmp_path):
    engines, _ = vllm_engines
    a, b = engines
    # 1. Profile tiny-a (short levels: this checks the path, fidelity is bench/fidelity.py).
    settings = ProfileSettings(
        concurrency=(1, 2, 4),
        prompt_tokens=32,
        output_tokens=16,
        level_s=1.5,
        level_requests=40,
        probe_repeats=2,
        hardware="cpu",
    )
    profile, report = asyncio.run(
        asyncio.wait_for(Profiler(a.url, a.name, model="small", settings=settings).run(), 120)
    )
    (tmp_path / "small.toml").write_text(measured_profile_to_toml(profile, "test"))
    prof = load_profile(tmp_path / "small.toml")
    print(
        f"profile: curve {[(p.concurrency, p.tokens_per_s) for p in prof.curve]}, saturation {prof.saturation_batch}, "
        f"{prof.engine_version}, kv {prof.kv_capacity_tokens} ({report.kv_capacity_source})"
    )
    assert prof.kind == "measured" and prof.engine_version.startswith("vllm") and prof.date
    assert report.kv_capacity_source == "vllm:cache_config_info" and prof.kv_capacity_tokens > 0
    assert all(p.tokens_per_s > 0 for p in prof.curve) and 1 <= prof.saturation_batch <= 4

    # 2. Label: the fleet names both real engines.
    (tmp_path / "models.toml").write_text(CATALOG)
    (tmp_path / "refine.toml").write_text(textwrap.dedent(SELF_REFINE))
    fleet = textwrap.dedent(f"""
        family = "t"
        models = "models.toml"
        workflows = ["refine.toml"]
        ROUTERS

        [[engine]]
        name = "vllm-a"
        model = "small"
        url = "{a.url}"
        served_model_name = "{a.name}"
        profile = "small.toml"

        [[engine]]
        name = "vllm-b"
        model = "big"
        url = "{b.url}"
        served_model_name = "{b.name}"

        [server]
        port = 0
        engine_timeout_s = 30.0
    """)
    (tmp_path / "fleet.toml").write_text(fleet.replace("ROUTERS", ""))
    with open(tmp_path / "data.jsonl", "w") as f:
        for i in range(36):
            f.write(
                json.dumps(
                    {"id": f"q{i}", "input": f"what is {i} plus {i % 7}?", "answer": str(i + i % 7)}
                )
                + "\n"
            )
    (tmp_path / "my_scorer.py").write_text(SCORER)
    from aragog_jax.label import main as label_main

    out = tmp_path / "labelled"
    argv = [
        "--workflow",
        str(tmp_path / "refine.toml"),
        "--fleet",
        str(tmp_path / "fleet.toml"),
        "--dataset",
        str(tmp_path / "data.jsonl"),
        "--scorer",
        f"{tmp_path / 'my_scorer.py'}:score",
        "--out",
        str(out),
        "--concurrency",
        "8",
        "--seed",
        "3",
        "--quiet",
    ]
    assert label_main(argv) == 0
    rep = json.loads((out / "label_report.json").read_text())
    print(
        "labeller:",
        json.dumps({k: rep[k] for k in ("per_input", "total", "this_run", "config_failures")}),
    )
    assert rep["total"]["calls"] == rep["total"]["distinct_prefixes"] == 36 * 14
    assert rep["this_run"]["calls_made"] == 36 * 14 and rep["this_run"]["calls_failed"] == 0
    assert rep["total"]["naive_calls"] == 36 * 24
    assert len((out / "calls.jsonl").read_text().splitlines()) == 36 * 14
    from aragog_jax.space import build_space
    from aragog_jax.spec import family_pool, load_models, load_workflow

    cat = load_models(tmp_path / "models.toml")
    space = build_space(load_workflow(tmp_path / "refine.toml", cat), family_pool(cat, "t"))
    ds = load_dataset(out, space)
    assert ds.num_inputs == 36 and np.load(out / "labelled.npy").all()
    assert set(np.unique(ds.scores)) <= {0.0, 1.0}
    assert (ds.tokens[:, :, 1] > 0).all() and (ds.tokens[:, :, 0] > 0).all()
    # Rerun resumes: nothing recomputed.
    assert label_main(argv) == 0
    assert json.loads((out / "label_report.json").read_text())["this_run"]["calls_made"] == 0

    # 3. Train a tiny router on it.
    from aragog_jax.train import main as train_main

    ckpt = tmp_path / "router.npz"
    assert (
        train_main(
            [
                "--workflow",
                str(tmp_path / "refine.toml"),
                "--models",
                str(tmp_path / "models.toml"),
                "--family",
                "t",
                "--dataset",
                str(out),
                "--out",
                str(ckpt),
                "--hidden",
                "16,16",
                "--max-epochs",
                "3",
                "--feature-dim",
                "64",
                "--quiet",
            ]
        )
        == 0
    )
    assert ckpt.is_file() and ckpt.with_suffix(".report.json").is_file()

    # 4. Serve the workflow with the trained router and the measured profile.
    (tmp_path / "fleet.toml").write_text(
        fleet.replace("ROUTERS", 'routers = { refine = "router.npz" }')
    )

    async def serve():
        s = Server(
            load_runtime(tmp_path / "fleet.toml", router_buckets=(1, 8)), ServeOptions(drain_s=5)
        )
        url = await s.start()
        try:
            async with aiohttp.ClientSession(base_url=url) as http:

                async def one(i):
                    async with http.post(
                        "/v1/workflows/refine/runs", json={"input": f"what is {i}?"}
                    ) as r:
                        return r.status, await r.json()

                return await asyncio.gather(*(one(i) for i in range(6)))
        finally:
            await s.stop(drain_s=1)

    res = asyncio.run(asyncio.wait_for(serve(), 180))
    assert [st for st, _ in res] == [200] * 6, res
    for _, body in res:
        rc = body["receipt"]
        assert rc["router"] == "trained" and 1 <= rc["num_admitted"] <= space.num_configs
        assert len(rc["stages"]) == 3
