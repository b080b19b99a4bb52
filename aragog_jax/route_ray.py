"""Batch offline routing on a Ray cluster (Ray Data): the route job past one machine.

    python -m aragog_jax.route --ray [--ray-address ADDR] --router CKPT --input IN --output OUT

or from Python::

    from aragog_jax.route_ray import route_on_ray
    summary = route_on_ray("profiles/routers/voting_mmlu_pro/qwen.npz", "in.jsonl", "out.parquet",
                           concurrency=8, batch_size=4096)

Same inputs, outputs, errors and exit statuses as the local job (:mod:`aragog_jax.route`):
the same output rows in the same order, malformed lines reported in ``OUT.errors.jsonl``
with the same line numbers and reasons.

How it runs. The driver splits the input into *shards* of about ``shard_rows`` input
lines (JSONL: byte ranges cut at line ends, found by one pass over the file; Parquet:
runs of whole row groups). The shards are a Ray Dataset (one block each), mapped with
``map_batches(ShardRouter, compute=ActorPoolStrategy(size=N), batch_size=1)``: each of
the N actors loads the checkpoint and compiles one :class:`~aragog_jax.router.BatchRouter`
once, in its constructor, then for each shard it reads its lines, parses them with the
local job's parser, routes them ``batch_size`` rows per device call and writes the
shard's output under a name fixed by the shard's index. Ray's progress bars show the
shards going through; the job ends with a throughput line.

Why shards and not ``ray.data.read_json``: the error file names input line numbers, and
Ray's readers neither keep line numbers nor name their output blocks deterministically;
shards cut by the driver give both, and make the job resumable.

Files. ``OUT.parts/`` holds, per shard ``k``, ``errors-k.jsonl`` then the part (JSONL:
``part-k.jsonl`` there; Parquet: ``OUT.parquet/part-k.parquet``, the same directory layout
the local job writes) and last ``done-k.json`` (its row and error counts), each written
atomically (temp file + rename). When every shard is done the driver concatenates the
error parts into ``OUT.errors.jsonl`` and, for JSONL, the parts into ``OUT.jsonl``, then
marks ``OUT.progress.json`` done and removes ``OUT.parts/``.

Failures. A shard that raises (an unreadable file, a full disk) is returned by its actor
as a failure, not raised: the other shards run on, and the driver then raises
:class:`~aragog_jax.errors.JobError` naming every failed shard, its input lines and the
exception (the CLI: one ``error:`` line, exit status 1). An actor that dies (a crash, the
OOM killer, a lost node) is restarted and the shard it was routing retried at most
``max_retries`` times (Ray Data's default, forever, hangs the job on a shard that kills
its actor every time); then Ray aborts the job and the driver names the shard that was
started ``max_retries + 1`` times (each actor counts its starts of a shard in
``attempts-k``).

Resumability. A shard counts as written only once its ``done-k.json`` exists, so a rerun
of the same command after any failure (a failed shard, a killed actor, a lost node, the
driver interrupted) skips the finished shards and rewrites the others from the start: no
row is lost or written twice. ``OUT.progress.json`` records the router, the input and
the shard size, and a rerun with another shard size or router is refused (exit 2).

The cluster needs ``aragog_jax`` importable on every node (``pip install 'aragog_jax[ray]'``)
and the checkpoint, input and output paths visible at the same paths on every node (a
shared file system), since actors read and write them directly.
"""

from __future__ import annotations

import logging
import re
import shutil
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from aragog_jax._files import atomic_write, atomic_writer
from aragog_jax._routeio import (
    Shard,
    check_fresh_output,
    encode_rows,
    open_parquet,
    parquet_chunks,
    parquet_table,
    parse_lines,
    plan_jsonl,
    plan_parquet,
)
from aragog_jax.errors import DatasetError, JobError

_log = logging.getLogger(__name__)

PROGRESS_FORMAT = "aragog-route-ray/1"
#: Default input lines per shard (the unit of work, of output files and of resumption).
DEFAULT_SHARD_ROWS = 65536
#: Default restarts of a dead routing actor, and retries of the shard it was routing.
DEFAULT_MAX_RETRIES = 3


class RayProgress(msgspec.Struct):
    format: str
    router: str
    input: str
    shard_rows: int
    admitted: str
    num_shards: int
    rows: int = 0
    errors: int = 0
    done: bool = False


class ShardDone(msgspec.Struct):
    rows: int
    errors: int


class ShardFailure(msgspec.Struct, frozen=True):
    """A shard that did not finish: its index, its input lines (1-based, inclusive) and why."""

    index: int
    first_line: int
    last_line: int
    reason: str

    def describe(self, unit: str) -> str:
        return (
            f"shard {self.index} (input {unit} {self.first_line}-{self.last_line}): {self.reason}"
        )


class RaySummary(msgspec.Struct):
    """What :func:`route_on_ray` did: rows routed and malformed lines in the whole output,
    shards run by this call (the rest were already done), and its wall time."""

    rows: int
    errors: int
    num_shards: int
    shards_run: int
    rows_run: int
    seconds: float
    output: str
    errors_path: str


class _Paths:
    """Where a job's files live, derived from ``--output`` as in the local job."""

    def __init__(self, output: Path):
        self.out = output
        self.parquet = output.suffix == ".parquet"
        stem = output.name.removesuffix(".parquet" if self.parquet else ".jsonl")
        self.errors = output.with_name(stem + ".errors.jsonl")
        self.progress = output.with_name(stem + ".progress.json")
        self.parts = output.with_name(stem + ".parts")

    def part(self, k: int) -> Path:
        if self.parquet:
            return self.out / f"part-{k:05d}.parquet"
        return self.parts / f"part-{k:05d}.jsonl"

    def shard_errors(self, k: int) -> Path:
        return self.parts / f"errors-{k:05d}.jsonl"

    def done(self, k: int) -> Path:
        return self.parts / f"done-{k:05d}.json"

    def attempts(self, k: int) -> Path:
        return self.parts / f"attempts-{k:05d}"


class ShardRouter:
    """The Ray Data actor: one compiled router per actor, then one shard per call.

    ``__call__`` takes a batch of shard rows (``index``, ``first_line``, ``num_lines``,
    ``start``, ``stop`` columns) and returns ``index``, ``rows``, ``errors`` and
    ``failure`` per shard, after writing the shard's files. A shard that raises is
    returned with ``failure`` set to the exception's one-line description (and no done
    mark) instead of raising: Ray Data would abort the whole job and drop the shard's
    name; the other shards still run and the driver reports every failed one.
    """

    def __init__(
        self,
        router: str,
        input: str,
        output: str,
        batch_size: int,
        admitted: str,
        workflow: str | None,
        family: str | None,
        overrides: dict,
    ) -> None:
        from aragog_jax.router import BatchRouter

        # Compiled once here, never per batch (the point of a callable class in map_batches).
        self.batch = BatchRouter(
            router, batch_size, admitted="mask", workflow=workflow, family=family, **overrides
        )
        self.input, self.paths = Path(input), _Paths(Path(output))
        self.batch_size, self.admitted = batch_size, admitted

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shards = [
            Shard(*(int(batch[f][i]) for f in Shard.__struct_fields__))
            for i in range(len(batch["index"]))
        ]
        done, failures = [], []
        for s in shards:
            try:
                done.append(self._run(s))
                failures.append("")
            except Exception as exc:  # any failure is the shard's, reported by the driver
                # The traceback stays in this worker's Ray log; the driver gets one line.
                _log.exception("shard %d failed", s.index)
                done.append(ShardDone(rows=0, errors=0))
                failures.append(f"{type(exc).__name__}: {_first_line(exc)}")
        return {
            "index": np.array([s.index for s in shards], np.int64),
            "rows": np.array([d.rows for d in done], np.int64),
            "errors": np.array([d.errors for d in done], np.int64),
            "failure": np.array(failures, dtype=object),
        }

    def _chunks(self, shard: Shard):
        if self.input.suffix == ".parquet":
            rgs = list(range(shard.start, shard.stop))
            pf = open_parquet(self.input)
            for ids, texts, errors, _, _ in parquet_chunks(
                pf, 0, self.batch_size, rgs, shard.first_line
            ):
                yield ids, texts, errors
            return
        with open(self.input, "rb") as f:
            f.seek(shard.start)
            lineno, pos, raw_batch = shard.first_line, shard.start, []
            while pos < shard.stop:
                raw = f.readline()
                if not raw:
                    break
                pos += len(raw)
                lineno += 1
                raw_batch.append((lineno, raw))
                if len(raw_batch) >= self.batch_size:
                    yield parse_lines(raw_batch)
                    raw_batch = []
            if raw_batch:
                yield parse_lines(raw_batch)

    def _run(self, shard: Shard) -> ShardDone:
        # Counted before any work, so a shard that kills its actor (a crash, the OOM
        # killer) is named by the driver once Ray stops retrying it.
        count = self.paths.attempts(shard.index)
        atomic_write(count, str(int(count.read_text()) + 1 if count.exists() else 1))
        router = self.batch.router
        rows, error_lines, pieces = 0, [], []
        for ids, texts, errors in self._chunks(shard):
            error_lines.extend(errors)
            if not ids:
                continue
            mask = self.batch({"id": ids, "text": texts})["admitted"]
            rows += len(ids)
            if self.paths.parquet:
                pieces.append(parquet_table(ids, mask, self.admitted, router))
            else:
                pieces.append(encode_rows(ids, mask, self.admitted, router))
        k = shard.index
        atomic_write(self.paths.shard_errors(k), b"".join(error_lines))
        if self.paths.parquet:
            import pyarrow as pa
            import pyarrow.parquet as pq

            if pieces:  # a shard of malformed lines only writes no part, as locally
                with atomic_writer(self.paths.part(k)) as f:
                    pq.write_table(pa.concat_tables(pieces), f)
        else:
            atomic_write(self.paths.part(k), b"".join(pieces))
        done = ShardDone(rows=rows, errors=len(error_lines))
        atomic_write(self.paths.done(k), msgspec.json.encode(done))
        return done


def _check_progress(paths: _Paths, want: RayProgress) -> RayProgress:
    if not paths.progress.exists():
        check_fresh_output(paths.out, paths.progress)
        return want
    try:
        prog = msgspec.json.decode(paths.progress.read_bytes(), type=RayProgress)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise DatasetError(
            f"{paths.progress}: not the progress file of a Ray routing job ({exc}); "
            f"remove it and {paths.out} to start over"
        ) from exc
    mine = (want.format, want.router, want.input, want.shard_rows, want.admitted)
    theirs = (prog.format, prog.router, prog.input, prog.shard_rows, prog.admitted)
    if mine != theirs:
        raise DatasetError(
            f"{paths.progress}: belongs to a job with router {prog.router!r}, input "
            f"{prog.input!r}, shard rows {prog.shard_rows}, admitted {prog.admitted!r}; "
            f"remove it and {paths.out} to start over"
        )
    return prog


def _assemble(paths: _Paths, shards: Sequence[Shard], prog: RayProgress) -> None:
    """Concatenate the shards' error parts (and JSONL parts) in input order; mark done."""
    rows = errors = 0
    for s in shards:
        d = msgspec.json.decode(paths.done(s.index).read_bytes(), type=ShardDone)
        rows, errors = rows + d.rows, errors + d.errors
    sources = [(paths.errors, [paths.shard_errors(s.index) for s in shards])]
    if not paths.parquet:
        sources.append((paths.out, [paths.part(s.index) for s in shards]))
    for target, parts in sources:
        with atomic_writer(target) as f:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, f, 1 << 20)
    prog.rows, prog.errors, prog.done = rows, errors, True
    atomic_write(paths.progress, msgspec.json.encode(prog))
    shutil.rmtree(paths.parts)


def route_on_ray(
    router: str | Path,
    input: str | Path,
    output: str | Path,
    *,
    concurrency: int | None = None,
    batch_size: int = 4096,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    admitted: str = "indices",
    workflow: str | None = None,
    family: str | None = None,
    embeddings_url: str | None = None,
    address: str | None = None,
    progress_bars: bool = True,
    max_retries: int = DEFAULT_MAX_RETRIES,
    ray_remote_args: Mapping[str, Any] | None = None,
) -> RaySummary:
    """Route ``input`` (JSONL or ``.parquet``) to ``output`` on Ray Data; resumable.

    Args:
      router: router checkpoint (.npz).
      input: JSONL file (``{"id", "text"}`` per line) or Parquet file (``id``, ``text``).
      output: JSONL file, or a ``.parquet`` path written as a directory of part files.
      concurrency: routing actors (default: the cluster's CPUs); one compiled router each.
      batch_size: rows per device call (the one bucket each actor compiles).
      shard_rows: input lines per shard (the unit of output files and of resumption).
      admitted: ``indices`` or ``models``, as ``--admitted``.
      workflow, family, embeddings_url: as the local job's flags.
      address: Ray cluster address when Ray is not initialised yet (default: start a
        local one, or join ``RAY_ADDRESS``); an already initialised Ray is used as it is.
      progress_bars: Ray Data's progress bars on stderr.
      max_retries: how many times a routing actor that dies (a crash, the OOM killer, a
        lost node) is restarted, and a shard it was routing retried on it; past that the
        job fails naming the shard. 0: the first death fails the job.
      ray_remote_args: extra options for each routing actor, as ``map_batches`` takes
        them (``num_gpus``, ``resources``, ``memory``, ``runtime_env``, ...).

    Returns:
      :class:`RaySummary`; ``errors > 0`` means malformed lines (see ``errors_path``).

    Raises:
      DatasetError: user mistakes (missing input, a progress file of another job, bad
        sizes).
      JobError: the cluster cannot be joined (``failures`` empty), or shards failed:
        ``failures`` holds a :class:`ShardFailure` per shard that raised or kept killing
        its actor; every finished shard is kept, and the same call again resumes.
    """
    try:
        import ray
    except ImportError as exc:
        raise DatasetError("--ray needs Ray: pip install 'aragog_jax[ray]'") from exc
    from aragog_jax.router import load_checkpoint

    if batch_size < 1 or shard_rows < 1:
        raise DatasetError(
            f"--chunk-size and --shard-rows must be positive, got {batch_size} and {shard_rows}"
        )
    if concurrency is not None and concurrency < 1:
        raise DatasetError(f"--concurrency must be positive, got {concurrency}")
    if max_retries < 0:
        raise DatasetError(f"--max-retries must be 0 or more, got {max_retries}")
    if admitted not in ("indices", "models"):
        raise DatasetError(f"admitted must be 'indices' or 'models', got {admitted!r}")
    inp, out = Path(input).resolve(), Path(output).resolve()
    if not inp.is_file():
        raise DatasetError(f"--input {input}: no such file")
    paths = _Paths(out)
    if (inp.suffix == ".parquet" or paths.parquet) and not _has_pyarrow():
        raise DatasetError("Parquet input/output needs pyarrow: pip install 'aragog_jax[parquet]'")
    ckpt = Path(router).resolve()
    # The checkpoint (and the space asked for) is checked here, once, before any actor starts.
    meta = load_checkpoint(ckpt)
    if workflow or family:
        meta.space(workflow, family)
    want = RayProgress(
        format=PROGRESS_FORMAT,
        router=str(ckpt),
        input=str(inp),
        shard_rows=shard_rows,
        admitted=admitted,
        num_shards=0,
    )
    prog = _check_progress(paths, want)
    if prog.done:
        shutil.rmtree(paths.parts, ignore_errors=True)  # if a crash came between the two
        return RaySummary(
            prog.rows, prog.errors, prog.num_shards, 0, 0, 0.0, str(out), str(paths.errors)
        )

    t0 = time.perf_counter()
    shards = (plan_parquet if inp.suffix == ".parquet" else plan_jsonl)(inp, shard_rows)
    prog.num_shards = len(shards)
    paths.parts.mkdir(parents=True, exist_ok=True)
    if paths.parquet:
        paths.out.mkdir(parents=True, exist_ok=True)
    atomic_write(paths.progress, msgspec.json.encode(prog))
    todo = [s for s in shards if not paths.done(s.index).exists()]
    rows_run = 0
    if todo:
        for s in todo:  # attempts count from this run on
            paths.attempts(s.index).unlink(missing_ok=True)
        _join(ray, address)
        if concurrency is None:
            concurrency = max(1, int(ray.cluster_resources().get("CPU", 1)))
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = progress_bars
        ds = ray.data.from_items(
            [msgspec.structs.asdict(s) for s in todo], override_num_blocks=len(todo)
        )
        overrides = {"base_url": embeddings_url} if embeddings_url else {}
        routed = ds.map_batches(
            ShardRouter,
            fn_constructor_args=(
                str(ckpt),
                str(inp),
                str(out),
                batch_size,
                admitted,
                workflow,
                family,
                overrides,
            ),
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=min(concurrency, len(todo))),
            **{
                "num_cpus": 1,
                # Ray Data restarts a dead actor and retries its task forever by default:
                # a shard that kills its actor every time would hang the job. Bounded.
                "max_restarts": max_retries,
                "max_task_retries": max_retries,
                **(ray_remote_args or {}),
            },
        )
        failures = []
        try:
            for batch in routed.iter_batches(batch_size=None, batch_format="numpy"):
                ok = batch["failure"] == ""
                rows_run += int(batch["rows"][ok].sum())
                failures += [
                    _failure(shards[int(k)], str(why))
                    for k, why in zip(batch["index"][~ok], batch["failure"][~ok], strict=True)
                ]
        except ray.exceptions.RayError as exc:
            failures += _died(paths, shards, todo, max_retries, exc)
        if failures:
            raise _job_error(paths, shards, failures, inp.suffix == ".parquet")
    _assemble(paths, shards, prog)
    return RaySummary(
        rows=prog.rows,
        errors=prog.errors,
        num_shards=len(shards),
        shards_run=len(todo),
        rows_run=rows_run,
        seconds=time.perf_counter() - t0,
        output=str(out),
        errors_path=str(paths.errors),
    )


def _join(ray, address: str | None) -> None:
    """Start or join Ray (an already initialised Ray is used as it is)."""
    if ray.is_initialized():
        return
    _check_reachable(address)
    try:
        ray.init(address=address, log_to_driver=False, include_dashboard=False)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"--ray-address {address}" if address else "RAY_ADDRESS or a local Ray"
        raise JobError(
            f"{where}: cannot start or join the Ray cluster: {_first_line(exc)}"
        ) from exc


def _check_reachable(address: str | None) -> None:
    """Refuse a ``HOST:PORT`` address nothing listens on at once (``ray.init`` would retry
    for minutes); ``auto``, ``ray://`` and other forms are left to Ray."""
    m = re.fullmatch(r"([\w.-]+):(\d+)", address or "")
    if m is None:
        return
    try:
        socket.create_connection((m.group(1), int(m.group(2))), timeout=10).close()
    except OSError as exc:
        raise JobError(
            f"--ray-address {address}: no Ray cluster there ({exc}); start one with "
            "ray start --head, or give the address it printed"
        ) from exc


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _lines(exc: BaseException) -> list[str]:
    return [ln.strip() for ln in _ANSI.sub("", str(exc)).splitlines() if ln.strip()]


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_line(exc: BaseException) -> str:
    return _clip((_lines(exc) or [""])[0])


def _ray_reason(exc: BaseException) -> str:
    """A Ray error on one line: its last line, which names the remote exception
    (``module.Error: message``) when there is one, else the error's own."""
    text = (_lines(exc) or [""])[-1]
    if not re.match(r"[\w.]+: ", text):
        text = f"{type(exc).__name__}: {text}"
    return _clip(text)


def _failure(shard: Shard, reason: str) -> ShardFailure:
    return ShardFailure(
        shard.index, shard.first_line + 1, shard.first_line + shard.num_lines, reason
    )


def _died(paths: _Paths, shards, todo, max_retries: int, exc: Exception) -> list[ShardFailure]:
    """The shards to blame when Ray aborted the job (an actor died past its retries, or
    could not start): those started ``max_retries + 1`` times, else every unfinished one."""
    why = _ray_reason(exc)
    started = {}
    for s in todo:
        count = paths.attempts(s.index)
        if not paths.done(s.index).exists() and count.exists():
            started[s.index] = int(count.read_text())
    killers = [k for k, n in started.items() if n > max_retries]
    if killers:
        return [
            _failure(shards[k], f"killed its routing actor {started[k]} times (last: {why})")
            for k in killers
        ]
    return [_failure(s, why) for s in todo if not paths.done(s.index).exists()]


def _job_error(paths: _Paths, shards, failures: list[ShardFailure], parquet: bool) -> JobError:
    failures.sort(key=lambda f: f.index)
    kept = sum(paths.done(s.index).exists() for s in shards)
    first = failures[0].describe("rows" if parquet else "lines")
    more = (
        f" (and {len(failures) - 1} more: shards {', '.join(str(f.index) for f in failures[1:])})"
    )
    return JobError(
        f"{len(failures)} of {len(shards)} shards failed: {first}"
        f"{more if len(failures) > 1 else ''}; the {kept} finished shards are kept in "
        f"{paths.parts}: run the same command again to resume",
        failures,
    )


def _has_pyarrow() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def main_ray(args) -> int:
    """``python -m aragog_jax.route --ray``: run :func:`route_on_ray` from parsed flags.

    Failed shards: one ``error:`` line naming the first and why, exit status 1 (the rest
    of the job is kept for the rerun); user mistakes raise for ``run_cli`` (status 2).
    """
    try:
        summary = _route_from_args(args)
    except JobError as exc:
        if not exc.failures:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return _report(summary)


def _route_from_args(args) -> RaySummary:
    return route_on_ray(
        args.router,
        args.input,
        args.output,
        concurrency=args.concurrency,
        batch_size=args.chunk_size,
        shard_rows=args.shard_rows,
        admitted=args.admitted,
        workflow=args.workflow,
        family=args.family,
        embeddings_url=args.embeddings_url,
        address=args.ray_address,
        progress_bars=not args.quiet,
        max_retries=args.max_retries,
    )


def _report(summary: RaySummary) -> int:
    if summary.shards_run == 0 and summary.seconds == 0.0:
        print(
            f"already complete: {summary.rows:,} rows routed, {summary.errors:,} malformed lines "
            f"in {summary.errors_path}",
            file=sys.stderr,
        )
    else:
        dt = summary.seconds
        print(
            f"routed {summary.rows_run:,} rows in {dt:.2f} s "
            f"({summary.rows_run / max(dt, 1e-9):,.0f} rows/s) on Ray, {summary.shards_run} of "
            f"{summary.num_shards} shards, to {summary.output}",
            file=sys.stderr,
        )
    if summary.errors:
        print(
            f"error: {summary.errors:,} malformed input lines (see {summary.errors_path}); "
            f"{summary.rows:,} valid rows were routed",
            file=sys.stderr,
        )
        return 1
    return 0


__all__ = [
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_SHARD_ROWS",
    "RaySummary",
    "Shard",
    "ShardFailure",
    "ShardRouter",
    "plan_jsonl",
    "plan_parquet",
    "route_on_ray",
]
