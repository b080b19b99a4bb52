"""Dataset format: the label rule, save/load round trip, malformed directories."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aragog_jax.data import (
    FORMAT,
    AccuracyDataset,
    accurate_labels,
    generate,
    load_dataset,
    save_dataset,
)
from aragog_jax.errors import DatasetError
from aragog_jax.space import load_space
from aragog_jax.spec import load_workflow, resolve_workflow


def test_label_rule_binary():
    scores = np.array([[0, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 1]], dtype=np.float32)
    labels = accurate_labels(scores, c_max=2)
    np.testing.assert_array_equal(
        labels, [[False, True, True], [True, True, True], [True, True, True], [True, True, True]]
    )  # row 1 and 2: c_max fails, so every configuration is as good as c_max


def test_label_rule_graded_with_tolerance():
    scores = np.array([[0.5, 0.78, 0.8]], dtype=np.float32)
    np.testing.assert_array_equal(accurate_labels(scores, 2), [[False, False, True]])
    np.testing.assert_array_equal(accurate_labels(scores, 2, tol=0.05), [[False, True, True]])


def _small(n: int = 30) -> tuple[AccuracyDataset, object]:
    wf = load_workflow(resolve_workflow("self_refine_squad"))
    space = load_space("self_refine_squad", "qwen")
    return generate(space, wf, n, seed=11, family="qwen"), space


def test_round_trip(tmp_path):
    ds, space = _small()
    out = save_dataset(ds, tmp_path / "d")
    back = load_dataset(out, space)
    assert back.ids == ds.ids and back.texts == ds.texts and back.splits == ds.splits
    np.testing.assert_array_equal(back.tokens, ds.tokens)
    np.testing.assert_array_equal(back.scores, ds.scores)
    assert back.scores.dtype == np.float32 and np.load(out / "scores.npy").dtype == np.float16
    assert back.meta["format"] == FORMAT and back.meta["num_inputs"] == 30
    assert back.meta["splits"] == {s: ds.splits.count(s) for s in ("train", "calibration", "test")}
    np.testing.assert_array_equal(back.labels(space.c_max), ds.labels(space.c_max))
    # saving again gives the same bytes
    out2 = save_dataset(back, tmp_path / "d2")
    for name in ("meta.json", "inputs.jsonl", "scores.npy"):
        assert (out / name).read_bytes() == (out2 / name).read_bytes()


def test_split_index():
    ds, _ = _small(50)
    idx = np.concatenate([ds.split_index(s) for s in ("train", "calibration", "test")])
    assert sorted(idx.tolist()) == list(range(50))
    with pytest.raises(DatasetError, match="unknown split"):
        ds.split_index("dev")


@pytest.fixture
def saved(tmp_path):
    ds, space = _small()
    return save_dataset(ds, tmp_path / "d"), space


def test_missing_dir(tmp_path):
    with pytest.raises(DatasetError, match="no meta.json"):
        load_dataset(tmp_path / "nowhere")


def test_bad_meta_json(saved):
    path, _ = saved
    (path / "meta.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_dataset(path)


def test_wrong_format(saved):
    path, _ = saved
    meta = json.loads((path / "meta.json").read_text())
    meta["format"] = "something/9"
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="format 'something/9'"):
        load_dataset(path)


def test_bad_split_and_bad_row(saved):
    path, _ = saved
    lines = (path / "inputs.jsonl").read_text().splitlines()
    row = json.loads(lines[3])
    row["split"] = "dev"
    lines[3] = json.dumps(row)
    (path / "inputs.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"inputs.jsonl:4: split"):
        load_dataset(path)
    lines[3] = "{}"
    (path / "inputs.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"inputs.jsonl:4: bad row"):
        load_dataset(path)


def test_scores_shape_mismatch(saved):
    path, _ = saved
    np.save(path / "scores.npy", np.zeros((5, 27), np.float16))
    with pytest.raises(DatasetError, match="shape"):
        load_dataset(path)


def test_ragged_tokens(saved):
    path, _ = saved
    lines = (path / "inputs.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    row["tokens"] = row["tokens"][:1]
    lines[0] = json.dumps(row)
    (path / "inputs.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match="one \\[input, output\\] pair per stage"):
        load_dataset(path)


def test_wrong_space(saved):
    path, _ = saved
    with pytest.raises(DatasetError, match="made for workflow 'self_refine_squad'"):
        load_dataset(path, load_space("self_refine_squad", "llama"))


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        ("empty scores.npy", "scores.npy: not a readable .npy array"),
        ("truncated scores.npy", "scores.npy: not a readable .npy array"),
        ("no scores.npy", "incomplete accuracy dataset: scores.npy is missing"),
        ("no inputs.jsonl", "incomplete accuracy dataset: inputs.jsonl is missing"),
        ("no meta.json", "incomplete accuracy dataset (no meta.json"),
    ],
)
def test_train_on_an_incomplete_or_corrupt_dataset_says_so_in_one_line(saved, damage, says, capsys):
    """A killed writer left these; train died with EOFError / ValueError / FileNotFoundError tracebacks."""
    from aragog_jax._cli import run_cli
    from aragog_jax.train import main as train_main

    path, _ = saved
    scores = path / "scores.npy"
    if damage == "empty scores.npy":
        scores.write_bytes(b"")
    elif damage == "truncated scores.npy":
        scores.write_bytes(scores.read_bytes()[:200])
    else:
        (path / damage.removeprefix("no ")).unlink()
    code = run_cli(
        train_main,
        [
            "--workflow",
            "self_refine_squad",
            "--family",
            "qwen",
            "--dataset",
            str(path),
            "--out",
            str(path / "r.npz"),
            "--quiet",
        ],
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and says in err, err


def test_save_dataset_replaces_a_dataset_atomically_and_meta_last(saved, monkeypatch):
    """A writer that fails mid-way leaves no meta.json (incomplete, said in one line), never
    a new meta.json over old arrays."""
    path, space = saved
    ds = load_dataset(path, space)
    import aragog_jax.data._dataset as mod

    real = mod.atomic_write

    def failing(p, data):
        if p.name == "meta.json":
            raise OSError("disk full")
        real(p, data)

    monkeypatch.setattr(mod, "atomic_write", failing)
    with pytest.raises(OSError, match="disk full"):
        save_dataset(ds, path)
    assert not (path / "meta.json").exists() and not list(path.glob("*.tmp"))
    with pytest.raises(DatasetError, match="incomplete accuracy dataset"):
        load_dataset(path)
