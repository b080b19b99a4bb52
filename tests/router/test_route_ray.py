"""The route job on Ray Data (``--ray``): same rows and errors as the local job, resumable by shard.

Runs on a real local Ray cluster (2 CPUs, loopback), one per module (``ray_cluster``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import ray

from aragog_jax import route as route_cli
from aragog_jax._cli import run_cli
from aragog_jax.errors import DatasetError
from aragog_jax.route_ray import route_on_ray
from aragog_jax.router import BatchRouter, Router

pytestmark = pytest.mark.ray


def _write_input(path, texts, bad_every=0):
    """One ``{"id", "text"}`` line per text; every ``bad_every`` rows, four malformed lines."""
    bad = [b"{not json\n", b'{"id": "no-text"}\n', b"\n", b'{"id": [1], "text": "wrong id"}\n']
    with open(path, "wb") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": f"q{i}", "text": t, "extra": 1}).encode() + b"\n")
            if bad_every and i % bad_every == 3:
                f.write(bad[(i // bad_every) % len(bad)])
    return path


def _route(*args):
    return run_cli(route_cli.main, [*map(str, args), "--quiet"])


def test_ray_job_matches_the_local_job_on_50k_rows(tiny, ray_cluster, tmp_path, capsys):
    _, ds, _, ckpt, _ = tiny
    texts = [ds.texts[i % len(ds.texts)] + f" #{i}" for i in range(50_000)]
    inp = _write_input(tmp_path / "in.jsonl", texts, bad_every=997)
    local, on_ray = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    common = ("--router", ckpt, "--input", inp)
    assert _route(*common, "--output", local) == 1
    capsys.readouterr()
    ray_args = ("--ray", "--concurrency", 2, "--shard-rows", 12_000)
    assert _route(*common, "--output", on_ray, *ray_args) == 1
    err = capsys.readouterr().err
    assert "routed 50,000 rows" in err and "rows/s) on Ray, 5 of 5 shards" in err
    assert "malformed input lines" in err
    assert on_ray.read_bytes() == local.read_bytes()
    errors = (tmp_path / "ray.errors.jsonl").read_bytes()
    assert errors == (tmp_path / "local.errors.jsonl").read_bytes()
    assert len(errors.splitlines()) == 38  # 51 bad insertions, 13 of them blank lines
    assert not (tmp_path / "ray.parts").exists()
    # a finished job run again does nothing and keeps its status
    assert _route(*common, "--output", on_ray, *ray_args) == 1
    assert "already complete: 50,000 rows routed" in capsys.readouterr().err


def test_ray_job_parquet_in_and_out_matches_the_local_job(tiny, ray_cluster, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    space, ds, _, ckpt, _ = tiny
    n = 3000
    col = [t if i % 500 != 7 else None for i, t in enumerate(ds.texts[:n])]
    inp = tmp_path / "in.parquet"
    table = pa.table({"id": pa.array(range(n)), "text": pa.array(col, pa.string())})
    pq.write_table(table, inp, row_group_size=400)
    common = ("--router", ckpt, "--input", inp)
    ray_args = ("--ray", "--concurrency", 2, "--shard-rows", 1000, "--chunk-size", 512)
    assert _route(*common, "--output", tmp_path / "local.parquet") == 1
    assert _route(*common, "--output", tmp_path / "ray.parquet", *ray_args) == 1
    got, want = pq.read_table(tmp_path / "ray.parquet"), pq.read_table(tmp_path / "local.parquet")
    assert got.equals(want) and got.num_rows == n - 6
    assert sorted(p.name for p in (tmp_path / "ray.parquet").iterdir()) == [
        f"part-{k:05d}.parquet" for k in range(3)
    ]  # three shards of 1,200, 1,200 and 600 rows (whole row groups of 400)
    errors = (tmp_path / "ray.errors.jsonl").read_bytes()
    assert errors == (tmp_path / "local.errors.jsonl").read_bytes()
    assert [json.loads(x)["line"] for x in errors.splitlines()] == [8, 508, 1008, 1508, 2008, 2508]

    # --admitted models to JSONL: the same bytes as the local job
    models = ("--admitted", "models")
    assert _route(*common, *models, "--output", tmp_path / "local_m.jsonl") == 1
    assert _route(*common, *models, "--output", tmp_path / "ray_m.jsonl", *ray_args) == 1
    assert (tmp_path / "ray_m.jsonl").read_bytes() == (tmp_path / "local_m.jsonl").read_bytes()
    first = json.loads((tmp_path / "ray_m.jsonl").read_text().splitlines()[0])
    assert first["admitted"][-1] == space.config_to_models(space.c_max)


def test_ray_job_resumes_skipping_finished_shards_only(tiny, ray_cluster, tmp_path):
    _, ds, _, ckpt, _ = tiny
    inp = _write_input(tmp_path / "in.jsonl", ds.texts[:1000])
    out = tmp_path / "out.jsonl"
    kw = dict(concurrency=1, batch_size=64, shard_rows=300, progress_bars=False)
    first = route_on_ray(ckpt, inp, out, **kw)
    assert (first.rows, first.errors, first.num_shards, first.shards_run) == (1000, 0, 4, 4)
    ref = out.read_bytes()
    out.unlink()
    (tmp_path / "out.progress.json").unlink()
    parts = tmp_path / "out.parts"
    parts.mkdir()  # as a crash leaves it: shard 1 done (its part a sentinel row), no others
    sentinel = b'{"id":"kept","num_admitted":0,"admitted":[]}\n'
    (parts / "part-00001.jsonl").write_bytes(sentinel)
    (parts / "errors-00001.jsonl").write_bytes(b"")
    (parts / "done-00001.json").write_bytes(b'{"rows": 1, "errors": 0}')
    # and what a shard killed mid-write leaves: a torn temporary part, a part without its mark
    (parts / "part-00002.jsonl.tmp").write_bytes(b'{"id": "q1", "num_adm')
    (parts / "part-00003.jsonl").write_bytes(b'{"id": "stale"}\n')
    again = route_on_ray(ckpt, inp, out, **kw)
    assert (again.shards_run, again.rows_run, again.rows) == (3, 700, 701)
    lines = out.read_bytes().splitlines(keepends=True)
    assert lines[300] == sentinel  # shard 1 was not routed again
    assert b"".join(lines[:300] + lines[301:]) == b"".join(
        ref.splitlines(keepends=True)[:300] + ref.splitlines(keepends=True)[600:]
    )  # the other shards routed once each, the stale part replaced
    assert not parts.exists()
    # the same command again does nothing; another shard size on this output is refused
    assert route_on_ray(ckpt, inp, out, **kw).shards_run == 0
    with pytest.raises(DatasetError, match="belongs to a job"):
        route_on_ray(ckpt, inp, out, **{**kw, "shard_rows": 100})


def test_batch_router_in_map_batches_over_read_json(tiny, ray_cluster, tmp_path):
    """The documented plain Ray Data usage of BatchRouter: read_json -> map_batches -> rows."""
    space, ds, _, ckpt, _ = tiny
    texts = list(ds.texts[:700])
    inp = _write_input(tmp_path / "in.jsonl", texts)
    routed = ray.data.read_json(str(inp)).map_batches(
        BatchRouter,
        fn_constructor_args=(str(ckpt),),
        fn_constructor_kwargs={"batch_size": 256, "admitted": "mask"},
        batch_size=256,
        concurrency=1,
        batch_format="numpy",
    )
    got = {r["id"]: np.asarray(r["admitted"]) for r in routed.take_all()}
    want = Router.load(ckpt, space).route_texts(texts).mask
    assert len(got) == len(texts)
    for i, m in enumerate(want):
        np.testing.assert_array_equal(got[f"q{i}"], m)
