"""``python -m aragog_jax.dspy export``, and the exported workflow in the other CLIs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from aragog_jax._cli import run_cli
from aragog_jax.dspy.__main__ import main as dspy_main
from aragog_jax.inspect import main as inspect_main
from aragog_jax.label import main as label_main
from aragog_jax.spec import load_workflow
from aragog_jax.synth import main as synth_main

from ..serving._fleetkit import CATALOG, write_fleet
from ._dspykit import EXAMPLE_REF, EXAMPLES, ROOT, FakesInThread

KIT = ROOT / "tests" / "dspy" / "_dspykit.py"


def _export(tmp_path, ref=EXAMPLE_REF, examples=EXAMPLES, *extra):
    argv = ["export", ref, "--out", str(tmp_path / "w.toml"), *extra]
    for e in examples:
        argv += ["--example", e]
    return run_cli(dspy_main, argv)


def test_help_exits_zero():
    proc = subprocess.run(
        [sys.executable, "-m", "aragog_jax.dspy", "export", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "--example" in proc.stdout and "--out" in proc.stdout


def test_export_writes_a_workflow_every_tool_reads(tmp_path, capsys):
    assert _export(tmp_path, EXAMPLE_REF, EXAMPLES, "--name", "sr") == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "refine <- generate, critique" in out
    wf = load_workflow(tmp_path / "w.toml")
    assert wf.name == "sr" and [s.upstream for s in wf.stage] == [
        [],
        ["generate"],
        ["generate", "critique"],
    ]
    assert all(s.function == f"{tmp_path / 'w_stages.py'}:{s.name}" for s in wf.stage)
    # The export is deterministic: the same program and examples give the same files.
    first = ((tmp_path / "w.toml").read_text(), (tmp_path / "w_stages.py").read_text())
    assert _export(tmp_path, EXAMPLE_REF, EXAMPLES, "--name", "sr") == 0
    assert ((tmp_path / "w.toml").read_text(), (tmp_path / "w_stages.py").read_text()) == first
    capsys.readouterr()
    assert inspect_main([str(tmp_path / "w.toml"), "--family", "qwen", "--json"]) in (0, None)
    info = json.loads(capsys.readouterr().out)
    assert info["num_stages"] == 3 and info["num_configs"] == 27
    synth_main(
        [
            "--workflow",
            str(tmp_path / "w.toml"),
            "--family",
            "qwen",
            "--num-inputs",
            "60",
            "--out",
            str(tmp_path / "syn"),
        ]
    )
    assert np.load(tmp_path / "syn" / "scores.npy").shape == (60, 27)


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        (
            f"{KIT}:Branchy",
            "traces diverged after predictor 'draft' (call 1): call 2 runs predictor 'rewrite'",
        ),
        (f"{KIT}:Shouty", "input field 'context' is computed"),
        ("no_such_module_xyz:p", "cannot import 'no_such_module_xyz'"),
        (f"{KIT}:not_a_program", "expected a dspy.Module"),
    ],
)
def test_refused_programs_are_one_line_errors(tmp_path, capsys, ref, message):
    code = _export(tmp_path, ref, ["2+2?", "Why is the sky blue during the day but red at sunset?"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and err.startswith("error: ")
    assert not (tmp_path / "w.toml").exists()


SCORER = "def refined_by_big(row, output):\n    return 1.0 if output.startswith(row['answer']) else 0.0\n"


def test_label_runs_the_programs_predictors_on_every_configuration_and_resumes(tmp_path, capsys):
    assert _export(tmp_path) == 0
    (tmp_path / "scorer.py").write_text(SCORER)
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(
            json.dumps({"id": f"q{i}", "input": f"question {i}?", "answer": "big-"}) + "\n"
            for i in range(4)
        )
    )
    with FakesInThread({"e-small": "small", "e-big": "big"}) as fakes:
        fleet = write_fleet(
            tmp_path,
            fakes.urls,
            workflows={"w": (tmp_path / "w.toml").read_text()},
            catalog=CATALOG,
        )
        argv = [
            "--workflow",
            str(tmp_path / "w.toml"),
            "--fleet",
            str(fleet),
            "--dataset",
            str(data),
            "--scorer",
            f"{tmp_path / 'scorer.py'}:refined_by_big",
            "--out",
            str(tmp_path / "ds"),
            "--quiet",
        ]
        assert label_main(argv) == 0
        out = capsys.readouterr().out
        calls = sum(f.num_requests for f in fakes.fakes.values())
        assert label_main(argv) == 0
        again = capsys.readouterr().out
        calls_again = sum(f.num_requests for f in fakes.fakes.values()) - calls
    assert (
        "engine calls: 56 (per input 14)" in out and calls == 56
    )  # 2 + 4 + 8 predictor calls per input
    assert "0 calls made, 56 cached" in again and calls_again == 0
    from aragog_jax.data import load_dataset
    from aragog_jax.space import build_space
    from aragog_jax.spec import family_pool, load_models

    cat = load_models(tmp_path / "models.toml")
    space = build_space(load_workflow(tmp_path / "w.toml", cat), family_pool(cat, "t"))
    ds = load_dataset(tmp_path / "ds", space)
    # Accurate exactly when DSPy parsed an answer from the big model's refine call.
    refine_big = np.array([space.model_names[m] == "big" for m in space.configs[:, 2]])
    assert ds.num_inputs == 4 and (ds.scores == refine_big[None, :]).all()


def test_export_traced_on_a_real_engine_takes_token_counts_from_its_usage(tmp_path, capsys):
    with FakesInThread({"e-small": "small"}) as fakes:
        url = fakes.urls[0][2]
        code = _export(
            tmp_path, EXAMPLE_REF, EXAMPLES, "--lm", "openai/small", "--api-base", f"{url}/v1"
        )
        prompts = list(fakes.fakes["e-small"].prompts)
    assert code == 0, capsys.readouterr().err
    wf = load_workflow(tmp_path / "w.toml")
    assert [s.upstream for s in wf.stage] == [[], ["generate"], ["generate", "critique"]]
    assert len(prompts) == 6  # 3 predictor calls x 2 examples, nothing else
    # The fake engine reports len(prompt) // 4 prompt tokens: the counts are its usage, averaged.
    gen = [len(p) // 4 for p in prompts[0::3]]
    assert wf.stage[0].input_tokens == round(sum(gen) / 2) and all(
        s.output_tokens > 0 for s in wf.stage
    )
    assert "Token counts: the LM's reported usage" in (tmp_path / "w.toml").read_text()
