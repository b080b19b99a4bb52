"""The train and route CLIs: outputs, user errors (exit 2), malformed lines (exit 1), resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aragog_jax import route as route_cli
from aragog_jax import train as train_cli
from aragog_jax._cli import run_cli
from aragog_jax.router import Router, load_checkpoint


def test_train_cli_writes_checkpoint_report_and_plot(tiny, tmp_path, capsys):
    _, _, ds_dir, _, _ = tiny
    out = tmp_path / "r" / "ck.npz"
    code = run_cli(
        train_cli.main,
        [
            "--workflow",
            "self_refine_humaneval",
            "--dataset",
            str(ds_dir),
            "--out",
            str(out),
            "--hidden",
            "8",
            "--feature-dim",
            "128",
            "--max-epochs",
            "2",
            "--epsilon",
            "0.1",
            "--sweep",
            "0.1",
            "--quiet",
        ],
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "flexibility kept" in printed and "accuracy vs c_max" in printed
    report = json.loads((tmp_path / "r" / "ck.report.json").read_text())
    assert report["workflow"] == "self_refine_humaneval" and report["family"] == "qwen"
    assert {
        "delta_cheapest_points",
        "delta_random_points",
        "flexibility_kept",
        "admitted_mean",
    } <= set(report["test"])
    assert report["epsilon_sweep"][0]["epsilon"] == 0.1
    assert (tmp_path / "r" / "ck.sweep.png").stat().st_size > 1000
    ck = load_checkpoint(out)
    assert ck.meta.model["hidden"] == [8] and ck.meta.featurizer_config["dim"] == 128


def test_train_cli_evaluate_mode(tiny, capsys):
    _, _, ds_dir, ckpt, res = tiny
    assert (
        run_cli(
            train_cli.main, ["--evaluate", str(ckpt), "--dataset", str(ds_dir), "--split", "test"]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["num_inputs"] == res.report["test"]["num_inputs"]
    assert report["flexibility_kept"] == pytest.approx(
        res.report["test"]["flexibility_kept"], abs=1e-3
    )
    assert run_cli(train_cli.main, ["--dataset", str(ds_dir)]) == 2
    assert "training needs --workflow and --out" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--dataset", "/nonexistent"], "not an accuracy dataset"),
        (["--workflow", "self_refine_squad"], "made for workflow 'self_refine_humaneval'"),
        (["--epsilon", "1.5"], "epsilon must be in (0, 1)"),
    ],
)
def test_train_cli_user_errors_exit_2(tiny, tmp_path, capsys, args, message):
    _, _, ds_dir, _, _ = tiny
    base = {
        "--workflow": "self_refine_humaneval",
        "--dataset": str(ds_dir),
        "--out": str(tmp_path / "x.npz"),
    }
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    argv = [a for kv in base.items() for a in kv] + [
        "--hidden",
        "4",
        "--max-epochs",
        "1",
        "--feature-dim",
        "64",
        "--quiet",
    ]
    assert run_cli(train_cli.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def _write_input(path, texts, bad=True):
    with open(path, "w") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": f"q{i}", "text": t, "extra": 1}) + "\n")
            if bad and i == 3:
                f.write("{not json\n")
                f.write(json.dumps({"id": "no-text"}) + "\n")
                f.write("\n")
                f.write(json.dumps({"id": [1], "text": "id has the wrong type"}) + "\n")
    return path


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_route_cli_outputs_errors_and_exit_status(tiny, tmp_path, capsys):
    space, ds, _, ckpt, _ = tiny
    texts = ds.texts[:30]
    inp = _write_input(tmp_path / "in.jsonl", texts)
    out = tmp_path / "out.jsonl"
    code = run_cli(
        route_cli.main,
        [
            "--router",
            str(ckpt),
            "--input",
            str(inp),
            "--output",
            str(out),
            "--chunk-size",
            "8",
            "--quiet",
        ],
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "routed 30 rows" in err and "rows/s" in err and "3 malformed input lines" in err
    rows = _rows(out)
    assert [r["id"] for r in rows] == [f"q{i}" for i in range(30)]
    want = Router.load(ckpt, space).route_texts(texts).mask
    for r, m in zip(rows, want, strict=True):
        assert r["admitted"] == np.flatnonzero(m).tolist() and r["num_admitted"] == int(m.sum())
        assert r["admitted"][-1] == space.c_max
    errors = _rows(tmp_path / "out.errors.jsonl")
    assert [e["line"] for e in errors] == [5, 6, 8]
    assert (
        "bad JSON" in errors[0]["reason"]
        and "text" in errors[1]["reason"]
        and "$.id" in errors[2]["reason"]
    )


def test_route_cli_models_format(tiny, tmp_path):
    space, ds, _, ckpt, _ = tiny
    inp = _write_input(tmp_path / "in.jsonl", ds.texts[:3], bad=False)
    out = tmp_path / "o.jsonl"
    assert (
        run_cli(
            route_cli.main,
            [
                "--router",
                str(ckpt),
                "--input",
                str(inp),
                "--output",
                str(out),
                "--admitted",
                "models",
                "--quiet",
            ],
        )
        == 0
    )
    rows = _rows(out)
    assert rows[0]["admitted"][-1] == space.config_to_models(space.c_max)


def test_route_cli_resumes_without_duplicates_or_losses(tiny, tmp_path, monkeypatch):
    space, ds, _, ckpt, _ = tiny
    texts = ds.texts[:50]
    inp = _write_input(tmp_path / "in.jsonl", texts)
    ref = tmp_path / "ref.jsonl"
    argv = ["--router", str(ckpt), "--input", str(inp), "--chunk-size", "7", "--quiet"]
    assert run_cli(route_cli.main, argv + ["--output", str(ref)]) == 1

    out = tmp_path / "out.jsonl"
    real_commit = route_cli._commit
    calls = {"n": 0}

    def flaky_commit(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # interrupted between chunks
        return real_commit(*a, **k)

    monkeypatch.setattr(route_cli, "_commit", flaky_commit)
    assert run_cli(route_cli.main, argv + ["--output", str(out)]) == 130
    monkeypatch.setattr(route_cli, "_commit", real_commit)
    partial = _rows(out)
    assert 0 < len(partial) < 50
    with open(out, "ab") as f:  # a torn write after the last progress record
        f.write(b'{"id": "q99", "num_adm')
    assert run_cli(route_cli.main, argv + ["--output", str(out)]) == 1
    assert out.read_bytes() == ref.read_bytes()
    assert (tmp_path / "out.errors.jsonl").read_bytes() == (
        tmp_path / "ref.errors.jsonl"
    ).read_bytes()
    # a finished job run again does nothing and keeps its status
    assert run_cli(route_cli.main, argv + ["--output", str(out)]) == 1
    assert out.read_bytes() == ref.read_bytes()


def test_route_cli_user_errors_exit_2(tiny, tmp_path, capsys):
    _, ds, _, ckpt, _ = tiny
    inp = _write_input(tmp_path / "in.jsonl", ds.texts[:2], bad=False)
    assert (
        run_cli(
            route_cli.main,
            [
                "--router",
                str(tmp_path / "nope.npz"),
                "--input",
                str(inp),
                "--output",
                str(tmp_path / "o.jsonl"),
            ],
        )
        == 2
    )
    assert "no such router checkpoint" in capsys.readouterr().err
    assert (
        run_cli(
            route_cli.main,
            [
                "--router",
                str(ckpt),
                "--input",
                str(inp),
                "--output",
                str(tmp_path / "o.jsonl"),
                "--family",
                "llama",
            ],
        )
        == 2
    )
    assert "different configuration space" in capsys.readouterr().err
    existing = tmp_path / "existing.jsonl"
    existing.write_text('{"id": 1}\n')
    assert (
        run_cli(
            route_cli.main, ["--router", str(ckpt), "--input", str(inp), "--output", str(existing)]
        )
        == 2
    )
    assert "cannot resume safely" in capsys.readouterr().err


def test_route_cli_parquet_in_and_out_with_resume(tiny, tmp_path, monkeypatch, capsys):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    space, ds, _, ckpt, _ = tiny
    texts = list(ds.texts[:40])
    col = [t if i not in (3, 17) else None for i, t in enumerate(texts)]  # two null texts
    inp = tmp_path / "in.parquet"
    pq.write_table(
        pa.table(
            {"id": pa.array([f"q{i}" for i in range(40)]), "text": pa.array(col, pa.string())}
        ),
        inp,
        row_group_size=9,
    )
    out = tmp_path / "out.parquet"
    argv = [
        "--router",
        str(ckpt),
        "--input",
        str(inp),
        "--output",
        str(out),
        "--chunk-size",
        "8",
        "--quiet",
    ]

    real_commit = route_cli._commit
    calls = {"n": 0}

    def flaky_commit(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_commit(*a, **k)

    monkeypatch.setattr(route_cli, "_commit", flaky_commit)
    assert run_cli(route_cli.main, argv) == 130
    monkeypatch.setattr(route_cli, "_commit", real_commit)
    (out / "part-00099.parquet.tmp").write_bytes(
        b"torn"
    )  # a part written after the last progress record
    assert run_cli(route_cli.main, argv) == 1
    assert "2 malformed input lines" in capsys.readouterr().err
    table = pq.read_table(out)  # the directory reads as one dataset
    keep = [i for i in range(40) if i not in (3, 17)]
    assert table.column("id").to_pylist() == [f"q{i}" for i in keep]
    want = Router.load(ckpt, space).route_texts([texts[i] for i in keep]).mask
    for got, m in zip(table.column("admitted").to_pylist(), want, strict=True):
        assert got == np.flatnonzero(m).tolist()
    assert table.column("num_admitted").to_pylist() == want.sum(axis=1).tolist()
    errors = _rows(tmp_path / "out.errors.jsonl")
    assert [e["line"] for e in errors] == [4, 18] and "text is null" in errors[0]["reason"]

    # a Parquet input written to JSONL gives the same rows
    jout = tmp_path / "j.jsonl"
    assert (
        run_cli(
            route_cli.main,
            ["--router", str(ckpt), "--input", str(inp), "--output", str(jout), "--quiet"],
        )
        == 1
    )
    assert [r["admitted"] for r in _rows(jout)] == table.column("admitted").to_pylist()

    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"id": [1, 2], "text": [1, 2]}), bad)
    assert (
        run_cli(
            route_cli.main,
            ["--router", str(ckpt), "--input", str(bad), "--output", str(tmp_path / "b.jsonl")],
        )
        == 2
    )
    assert "column 'text' has type int64, expected string" in capsys.readouterr().err
