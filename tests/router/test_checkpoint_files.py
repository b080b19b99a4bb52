"""Damaged router checkpoints: one line naming the file and the problem, exit status 2 in
``route``, ``serve`` and ``train --evaluate``, never a traceback or a silent load."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from aragog_jax import route as route_cli
from aragog_jax import serve as serve_cli
from aragog_jax import train as train_cli
from aragog_jax._cli import run_cli
from aragog_jax.errors import CheckpointError
from aragog_jax.router import load_checkpoint


def _arrays(path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _edit(arrays: dict, key: str, fn) -> dict:
    out = dict(arrays)
    if fn is None:
        del out[key]
    else:
        out[key] = fn(np.array(out[key]))
    return out


def _set(i: int, value: float):
    def fn(a):
        a[i] = value
        return a

    return fn


# name -> (how to damage the good file, what the message must say)
DAMAGE = {
    "truncated": ("truncate", r"truncated or corrupt \.npz archive: BadZipFile"),
    "text": ("text", r"not a \.npz \(zip\) archive \(it starts with b'rout'\)"),
    "bias_shape": (
        ("hidden/0/b", lambda a: np.zeros(a.shape[0] + 3, a.dtype)),
        r"array hidden/0/b has shape \(19,\), expected \(16,\)",
    ),
    "weight_shape": (
        ("hidden/1/w", lambda a: a[:, :-1]),
        r"array hidden/1/w has shape \(16, 15\), expected \(16, 16\)",
    ),
    "nan_threshold": (
        ("thresholds", _set(2, np.nan)),
        r"thresholds hold 1 invalid values \(NaN, or -inf before c_max\) at configurations \[2\]",
    ),
    "neginf_threshold": (
        ("thresholds", _set(0, -np.inf)),
        r"invalid values .* at configurations \[0\]",
    ),
    "nan_weight": (("head/w", _set(0, np.nan)), r"array head/w holds 27 NaN or infinite values"),
    "missing_bias": (("head/b", None), r"parameters are missing head/b"),
    "missing_thresholds": (("thresholds", None), r"array thresholds is missing"),
    "missing_meta": (("__meta__", None), r"no __meta__ entry"),
}


def _damaged(tmp_path, ckpt, name: str):
    how, _ = DAMAGE[name]
    bad = tmp_path / f"{name}.npz"
    if how == "truncate":
        raw = ckpt.read_bytes()
        bad.write_bytes(raw[: len(raw) // 2])
    elif how == "text":
        bad.write_text("router weights go here\n")
    else:
        np.savez(bad, **_edit(_arrays(ckpt), *how))
    return bad


@pytest.mark.parametrize("name", list(DAMAGE))
def test_damaged_checkpoint_is_one_line_naming_file_and_problem(tiny, tmp_path, name):
    bad = _damaged(tmp_path, tiny[3], name)
    with pytest.raises(CheckpointError, match=DAMAGE[name][1]) as info:
        load_checkpoint(bad)
    msg = str(info.value)
    assert msg.startswith(f"{bad}: ") and "\n" not in msg


def test_infinite_thresholds_mean_never_admitted_and_load(tiny, tmp_path):
    """+inf (never admitted) is a calibrated value, and c_max's -inf too: both load."""
    arrays = _edit(_arrays(tiny[3]), "thresholds", _set(0, np.inf))
    path = tmp_path / "inf.npz"
    np.savez(path, **arrays)
    ck = load_checkpoint(path)
    assert ck.thresholds[0] == np.inf and ck.thresholds[-1] == -np.inf


def _one_error_line(capsys, bad) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("name", ["truncated", "text", "bias_shape", "nan_threshold"])
def test_cli_tools_exit_2_on_a_damaged_checkpoint(tiny, tmp_path, capsys, name):
    _, ds, ds_dir, ckpt, _ = tiny
    bad = _damaged(tmp_path, ckpt, name)
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": 1, "text": ds.texts[0]}) + "\n")
    assert (
        run_cli(
            route_cli.main,
            [
                "--router",
                str(bad),
                "--input",
                str(inp),
                "--output",
                str(tmp_path / "o.jsonl"),
                "--quiet",
            ],
        )
        == 2
    )
    assert re.search(DAMAGE[name][1], _one_error_line(capsys, bad))
    assert run_cli(train_cli.main, ["--evaluate", str(bad), "--dataset", str(ds_dir)]) == 2
    _one_error_line(capsys, bad)

    from tests.serving._fleetkit import write_fleet

    fleet = write_fleet(tmp_path / "fleet", [("e", "small", "http://127.0.0.1:9")])
    fleet.write_text(fleet.read_text() + f'\n[routers]\nchain = "{bad}"\n')
    assert run_cli(serve_cli.main, ["--fleet", str(fleet)]) == 2
    _one_error_line(capsys, bad)
