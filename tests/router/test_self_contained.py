"""A checkpoint stores the workflow and model pool it was trained for: a router trained on
your own workflow file works in ``route``, ``train --evaluate`` and ``serve`` from any
directory without the file; ``--workflow`` stays an override checked against it; older
checkpoints (no stored workflow) still load through the shipped workflow they name."""

from __future__ import annotations

import dataclasses
import json
import shutil

import msgspec
import pytest

from aragog_jax import route as route_cli
from aragog_jax import train as train_cli
from aragog_jax._cli import run_cli
from aragog_jax.data import generate, save_dataset
from aragog_jax.router import (
    HashedNgramFeaturizer,
    Router,
    fit_router,
    load_checkpoint,
    save_checkpoint,
    shipped_router,
)
from aragog_jax.space import load_space
from aragog_jax.spec import WORKFLOWS_DIR, load_workflow

from .conftest import small_config


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """A router trained on a workflow file that is not shipped, the file then deleted."""
    root = tmp_path_factory.mktemp("own")
    wf_path = root / "my_flow.toml"
    wf_path.write_text(
        (WORKFLOWS_DIR / "self_refine_humaneval.toml")
        .read_text()
        .replace('name = "self_refine_humaneval"', 'name = "my_flow"', 1)
    )
    space = load_space(wf_path, "qwen")
    ds = generate(space, load_workflow(wf_path), num_inputs=1500, seed=0, family="qwen")
    ds_dir = save_dataset(ds, root / "dataset")
    res = fit_router(
        ds,
        space,
        HashedNgramFeaturizer(dim=128),
        small_config(hidden=(8,)),
        family="qwen",
        progress=False,
    )
    ckpt = save_checkpoint(res.checkpoint, root / "trained" / "my_flow.npz")
    moved = root / "kept-workflow.toml"
    shutil.move(wf_path, moved)  # the checkpoint must not need it
    return space, ds, ds_dir, ckpt, moved


def test_checkpoint_rebuilds_its_space_without_the_workflow_file(own):
    space, *_, ckpt, _ = own
    ck = load_checkpoint(ckpt)
    assert ck.meta.workflow_spec["name"] == "my_flow" and [
        m["name"] for m in ck.meta.model_pool
    ] == list(space.model_names)
    rebuilt = ck.space()
    assert rebuilt.fingerprint() == space.fingerprint() == ck.meta.fingerprint
    assert Router.load(ckpt).space.workflow == "my_flow"


def test_route_and_evaluate_from_another_directory_without_workflow(
    own, tmp_path, monkeypatch, capsys
):
    _, ds, ds_dir, ckpt, moved = own
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(ds.texts[:5]))
    )
    assert (
        run_cli(
            route_cli.main,
            ["--router", str(ckpt), "--input", "in.jsonl", "--output", "out.jsonl", "--quiet"],
        )
        == 0
    )
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(5)) and all(r["num_admitted"] >= 1 for r in rows)
    capsys.readouterr()
    assert (
        run_cli(
            train_cli.main, ["--evaluate", str(ckpt), "--dataset", str(ds_dir), "--split", "test"]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["num_inputs"] > 0
    # --workflow stays an override, checked against the stored fingerprint.
    assert (
        run_cli(
            route_cli.main,
            [
                "--router",
                str(ckpt),
                "--input",
                "in.jsonl",
                "--output",
                "o2.jsonl",
                "--workflow",
                str(moved),
            ],
        )
        == 0
    )
    capsys.readouterr()
    assert (
        run_cli(
            route_cli.main,
            [
                "--router",
                str(ckpt),
                "--input",
                "in.jsonl",
                "--output",
                "o3.jsonl",
                "--workflow",
                "self_refine_squad",
            ],
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        err.startswith("error: ")
        and "different configuration space" in err
        and err.count("\n") == 1
    )
    assert (
        run_cli(
            route_cli.main,
            [
                "--router",
                str(ckpt),
                "--input",
                "in.jsonl",
                "--output",
                "o4.jsonl",
                "--family",
                "llama",
            ],
        )
        == 2
    )
    assert "different configuration space" in capsys.readouterr().err


def test_serve_takes_an_unlisted_workflow_from_its_router_checkpoint(own, tmp_path):
    from aragog_jax.serving import load_runtime
    from tests.serving._fleetkit import write_fleet

    _, _, _, ckpt, _ = own
    fleet = write_fleet(
        tmp_path,
        [("e", "Qwen2.5-7B-Instruct", "http://127.0.0.1:9")],
        workflows={},
        catalog="",
        family="qwen",
    )
    fleet.write_text(
        fleet.read_text().replace('models = "models.toml"\n', "")
        + f'\n[routers]\nmy_flow = "{ckpt}"\n'
    )
    rt = load_runtime(fleet, compile_routers=False)
    assert list(rt.workflows) == ["my_flow"] and rt.workflows["my_flow"].router is not None
    assert rt.workflows["my_flow"].space.fingerprint() == load_checkpoint(ckpt).meta.fingerprint


def test_old_checkpoints_without_a_stored_workflow_still_load(tmp_path):
    # The shipped routers store their workflow since the scheduled-guarantee retrain; an
    # old checkpoint is the same file without it.
    shipped = load_checkpoint(shipped_router("self_refine_humaneval", "qwen"))
    old = dataclasses.replace(
        shipped, meta=msgspec.structs.replace(shipped.meta, workflow_spec=None)
    )
    path = save_checkpoint(old, tmp_path / "old.npz")
    ck = load_checkpoint(path)
    assert ck.meta.workflow_spec is None  # written before workflows were stored
    assert ck.space().fingerprint() == ck.meta.fingerprint
    assert Router.load(path).space.workflow == "self_refine_humaneval"
