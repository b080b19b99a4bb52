"""The route job on Ray Data (``--ray``): same rows and errors as the local job, resumable by shard.

Runs on a real local Ray cluster (2 CPUs, loopback), one per module (``ray_cluster``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import ray

from aragog_jax import route as route_cli
from aragog_jax._cli import run_cli
from aragog_jax.errors import DatasetError, JobError
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


@contextlib.contextmanager
def _deadline(seconds: float):
    """Fail (instead of hanging CI) if the block runs past ``seconds``: SIGALRM raises in
    the main thread, which unwinds Ray Data's iterator and so stops its execution."""

    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: the job hangs")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def _ray_data_log():
    """The messages Ray Data logs (it logs deprecations; it does not warn)."""
    records: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda r: records.append(r.getMessage())
    logger = logging.getLogger("ray.data")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


#: Kills the routing actor (``os._exit``, as a crash or the OOM killer would) when it
#: starts routing the shard ``DIE_ON_SHARD`` names; loaded by the actor's interpreter at
#: start-up from the PYTHONPATH given in its runtime_env, so only that run's actors die.
_DIE_ON_SHARD = """
import os

import aragog_jax.route_ray as route_ray

_chunks = route_ray.ShardRouter._chunks


def _die_on_shard(self, shard):
    if shard.index == int(os.environ["DIE_ON_SHARD"]):
        os._exit(1)
    return _chunks(self, shard)


route_ray.ShardRouter._chunks = _die_on_shard
"""


def _killing_shard(tmp_path, index: int) -> dict:
    """``ray_remote_args`` whose actors die when they start routing shard ``index``."""
    hook = tmp_path / "die_on_shard"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_DIE_ON_SHARD)
    env = {"DIE_ON_SHARD": str(index), "PYTHONPATH": f"{hook}{os.pathsep}${{PYTHONPATH}}"}
    return {"runtime_env": {"env_vars": env}}


def test_ray_job_matches_the_local_job_on_50k_rows(tiny, ray_cluster, tmp_path, capsys):
    _, ds, _, ckpt, _ = tiny
    texts = [ds.texts[i % len(ds.texts)] + f" #{i}" for i in range(50_000)]
    inp = _write_input(tmp_path / "in.jsonl", texts, bad_every=997)
    local, on_ray = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    common = ("--router", ckpt, "--input", inp)
    assert _route(*common, "--output", local) == 1
    capsys.readouterr()
    ray_args = ("--ray", "--concurrency", 2, "--shard-rows", 12_000)
    with _ray_data_log() as logged:
        assert _route(*common, "--output", on_ray, *ray_args) == 1
    assert not [
        m for m in logged if "deprecated" in m
    ]  # map_batches(compute=...), not concurrency=
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


def test_failed_shards_are_named_kept_and_a_rerun_finishes(tiny, ray_cluster, tmp_path, capsys):
    """A shard that kills its actor fails the job naming it (Ray Data 2.52 alone would
    restart the actor and retry the shard forever); one that raises is named on one line
    (exit 1) while the others finish; each rerun skips the finished shards, and the output
    is the local job's, no row lost or doubled."""
    _, ds, _, ckpt, _ = tiny
    inp = _write_input(tmp_path / "in.jsonl", ds.texts[:1000])
    assert _route("--router", ckpt, "--input", inp, "--output", tmp_path / "local.jsonl") == 0
    out, parts = tmp_path / "out.jsonl", tmp_path / "out.parts"
    kw = dict(concurrency=1, batch_size=64, shard_rows=300, progress_bars=False)

    # 1. shard 2 (lines 601-900) kills its actor: with no retries the job fails at once
    with _deadline(120), pytest.raises(JobError) as failed:
        route_on_ray(
            ckpt, inp, out, **kw, max_retries=0, ray_remote_args=_killing_shard(tmp_path, 2)
        )
    assert [(f.index, f.first_line, f.last_line) for f in failed.value.failures] == [(2, 601, 900)]
    assert "shard 2 (input lines 601-900): killed its routing actor 1 times" in str(failed.value)
    done = sorted(p.name for p in parts.glob("done-*.json"))
    assert "done-00002.json" not in done and not out.exists()
    assert f"the {len(done)} finished shards are kept" in str(failed.value)
    kept = {p: os.stat(p) for p in parts.glob("part-*.jsonl")}  # of the finished shards

    # 2. rerun from the CLI: shard 3's part cannot be written (a directory where its
    # temporary file goes), a stale part of shard 2 (written, never marked done) is redone
    (parts / "part-00003.jsonl.tmp").mkdir()
    (parts / "part-00002.jsonl").write_bytes(b'{"id": "stale"}\n')
    ray_args = ("--ray", "--concurrency", 1, "--shard-rows", 300, "--chunk-size", 64)
    capsys.readouterr()
    assert _route("--router", ckpt, "--input", inp, "--output", out, *ray_args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: 1 of 4 shards failed: shard 3 (input lines 901-1000): ")
    assert "IsADirectoryError" in err and "the 3 finished shards are kept" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert (parts / "done-00002.json").exists() and not (parts / "done-00003.json").exists()
    for p, st in kept.items():  # not routed again: the same file, untouched
        assert (os.stat(p).st_ino, os.stat(p).st_mtime_ns) == (st.st_ino, st.st_mtime_ns)

    # 3. fixed, the same command finishes the last shard only; the first two never reran
    (parts / "part-00003.jsonl.tmp").rmdir()
    assert _route("--router", ckpt, "--input", inp, "--output", out, *ray_args) == 0
    assert "routed 100 rows" in capsys.readouterr().err
    assert out.read_bytes() == (tmp_path / "local.jsonl").read_bytes()
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
        compute=ray.data.ActorPoolStrategy(size=1),
        batch_format="numpy",
    )
    got = {r["id"]: np.asarray(r["admitted"]) for r in routed.take_all()}
    want = Router.load(ckpt, space).route_texts(texts).mask
    assert len(got) == len(texts)
    for i, m in enumerate(want):
        np.testing.assert_array_equal(got[f"q{i}"], m)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """A Ray cluster started the README's way, ``ray start --head`` (loopback, 2 CPUs, its
    own temp dir and ports), in the foreground (``--block``) so that signalling that one
    process stops it: ``ray stop`` would stop every Ray cluster on the machine."""
    tmp = tempfile.mkdtemp(prefix="rayhead", dir="/tmp")  # short: Ray's socket paths
    log = open(os.path.join(tmp, "start.log"), "w+")  # noqa: SIM115
    cmd = [
        sys.executable,
        "-c",
        "from ray.scripts.scripts import main; main()",
        "start",
        "--head",
        "--block",
        "--port=0",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=2",
        "--include-dashboard=false",
        f"--ray-client-server-port={_free_port()}",
        f"--temp-dir={tmp}",
        "--disable-usage-stats",
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        started = Path(log.name)
        while not (m := re.search(r"--address='[^':]+:(\d+)'", started.read_text())):
            assert proc.poll() is None, started.read_text()[-2000:]
            assert time.monotonic() < deadline, "ray start did not come up in 120 s"
            time.sleep(0.5)
        yield f"127.0.0.1:{m.group(1)}"
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
def test_ray_address_joins_a_cluster_started_with_ray_start(tiny, ray_head, tmp_path):
    """The README's commands: the CLI, its own driver process, joins ``ray start --head``
    with ``--ray-address``; JSONL in, Parquet out, the local job's rows and error lines. A
    wrong address is one line and exit 2 at once (``ray.init`` alone retries for minutes)."""
    pq = pytest.importorskip("pyarrow.parquet")
    _, ds, _, ckpt, _ = tiny
    inp = _write_input(tmp_path / "in.jsonl", ds.texts[:1000], bad_every=300)
    assert _route("--router", ckpt, "--input", inp, "--output", tmp_path / "local.parquet") == 1
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}

    def cli(address, out):
        args = ["--ray", "--ray-address", address, "--concurrency", "2", "--shard-rows", "400"]
        cmd = [sys.executable, "-m", "aragog_jax.route", *args, "--router", str(ckpt)]
        cmd += ["--input", str(inp), "--output", str(out), "--quiet"]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)

    run = cli(ray_head, tmp_path / "ray.parquet")
    assert run.returncode == 1, run.stderr[-3000:]  # 1: the malformed lines
    assert "rows/s) on Ray, 3 of 3 shards" in run.stderr
    got, want = pq.read_table(tmp_path / "ray.parquet"), pq.read_table(tmp_path / "local.parquet")
    assert got.equals(want) and got.num_rows == 1000
    errors = (tmp_path / "ray.errors.jsonl").read_bytes()
    assert errors == (tmp_path / "local.errors.jsonl").read_bytes() and errors.count(b"\n") == 3

    closed = f"127.0.0.1:{_free_port()}"
    run = cli(closed, tmp_path / "nowhere.parquet")
    assert run.returncode == 2
    assert run.stderr.startswith(f"error: --ray-address {closed}: no Ray cluster there (")
    assert len(run.stderr.splitlines()) == 1
