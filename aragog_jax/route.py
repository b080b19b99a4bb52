"""Batch offline routing: stream JSONL through a router checkpoint.

    python -m aragog_jax.route --router CKPT --input IN.jsonl --output OUT.jsonl

Each input line is a JSON object with ``id`` (string or integer) and ``text`` (string);
other fields are ignored. Each output line is::

    {"id": ..., "num_admitted": K, "admitted": [c, ...]}

with ``admitted`` the indices of the admitted configurations in the documented
configuration order (ascending FLOPs, ``c_max`` last; ``python -m aragog_jax.inspect``
prints it), or with ``--admitted models`` a list of stage -> model mappings.

Inputs are read and routed in chunks of ``--chunk-size`` rows (one device call each;
featurising the next chunk overlaps the device work of the current one). After every
chunk the output files are flushed and ``OUT.progress.json`` records how many input
lines and output bytes are done, so an interrupted job resumes where it stopped when the
same command is run again: rows are neither lost nor duplicated (output written after
the last progress record is truncated away).

Parquet (with the ``parquet`` extra, i.e. pyarrow): an input path ending in ``.parquet``
is read as a Parquet file with ``id`` (string or integer) and ``text`` (string) columns
(``line`` in the error file is then the 1-based row number; null values are malformed
rows); an output path ending in ``.parquet`` is written as a directory of
``part-NNNNN.parquet`` files (columns ``id``, ``num_admitted``, ``admitted``), one per
chunk, and resumes by part.

Malformed lines (bad JSON, missing ``text``, wrong types) go to ``OUT.errors.jsonl`` as
``{"line": N, "reason": "..."}``; every valid line is still routed; the job then exits
with status 1 and a one-line summary. Blank lines are skipped. User mistakes (missing
files, a checkpoint for another space) exit with status 2.

Past one machine, ``--ray [--ray-address ADDR] [--concurrency N]`` runs the same job on a
Ray cluster with Ray Data (the ``ray`` extra): same output rows and error lines, resumable
by shard of ``--shard-rows`` input lines; a failed shard is one ``error:`` line naming it
(exit status 1) and the rerun resumes (:mod:`aragog_jax.route_ray`, whose
:func:`~aragog_jax.route_ray.route_on_ray` is the Python API).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec
import numpy as np

from aragog_jax._cli import run_cli
from aragog_jax._files import atomic_write, atomic_writer
from aragog_jax._routeio import (
    check_fresh_output,
    encode_rows,
    jsonl_chunks,
    open_parquet,
    parquet_chunks,
    parquet_table,
)
from aragog_jax.errors import DatasetError
from aragog_jax.route_ray import DEFAULT_MAX_RETRIES, DEFAULT_SHARD_ROWS

PROGRESS_FORMAT = "aragog-route-progress/1"


class Progress(msgspec.Struct):
    format: str
    router: str
    input: str
    input_lines: int = 0
    output_bytes: int = 0
    output_parts: int = 0
    errors_bytes: int = 0
    rows: int = 0
    errors: int = 0
    done: bool = False


class _JsonlOut:
    """Appends encoded rows to OUT.jsonl; progress counts bytes."""

    def __init__(self, path: Path, prog: Progress, router, admitted: str):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as f:  # drop anything written after the last progress record
            f.truncate(prog.output_bytes)
        self.f = open(path, "ab")  # noqa: SIM115
        self.router, self.admitted = router, admitted

    def write(self, ids: list, mask: np.ndarray, prog: Progress) -> None:
        data = encode_rows(ids, mask, self.admitted, self.router)
        self.f.write(data)
        self.f.flush()
        os.fsync(self.f.fileno())
        prog.output_bytes += len(data)

    def close(self) -> None:
        self.f.close()


class _ParquetOut:
    """OUT.parquet is a directory of ``part-NNNNN.parquet`` files, one per chunk; progress counts parts."""

    def __init__(self, path: Path, prog: Progress, router, admitted: str):
        path.mkdir(parents=True, exist_ok=True)
        for part in path.iterdir():  # parts (or temporary parts) after the last progress record
            m = re.fullmatch(r"part-(\d{5})\.parquet(\.tmp)?", part.name)
            if m and (m.group(2) or int(m.group(1)) >= prog.output_parts):
                part.unlink()
        self.path, self.router, self.admitted = path, router, admitted

    def write(self, ids: list, mask: np.ndarray, prog: Progress) -> None:
        import pyarrow.parquet as pq

        if not ids:
            return
        table = parquet_table(ids, mask, self.admitted, self.router)
        with atomic_writer(
            self.path / f"part-{prog.output_parts:05d}.parquet"
        ) as f:  # via part-NNNNN.parquet.tmp
            pq.write_table(table, f)
        prog.output_parts += 1

    def close(self) -> None:
        pass


def _load_progress(path: Path, out: Path, err: Path, router: str, inp: str) -> Progress:
    fresh = Progress(format=PROGRESS_FORMAT, router=router, input=inp)
    if not path.exists():
        check_fresh_output(out, path)
        return fresh
    try:
        prog = msgspec.json.decode(path.read_bytes(), type=Progress)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise DatasetError(
            f"{path}: unreadable progress file ({exc}); remove it and {out} to start over"
        ) from exc
    if prog.format != PROGRESS_FORMAT or prog.router != router or prog.input != inp:
        raise DatasetError(
            f"{path}: belongs to a job with router {prog.router!r} and input {prog.input!r}; "
            f"remove it and {out} to start over"
        )
    return prog


def _write_progress(path: Path, prog: Progress) -> None:
    atomic_write(path, msgspec.json.encode(prog))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aragog_jax.route",
        description=(
            "Route a JSONL file of inputs ({'id', 'text'} per line) through a router checkpoint and write "
            "one line per input with the admitted configurations. Resumable: rerun the same command after "
            "an interruption. Malformed lines go to OUT.errors.jsonl (exit status 1)."
        ),
    )
    parser.add_argument(
        "--router",
        required=True,
        help="router checkpoint (.npz), e.g. profiles/routers/<workflow>/<family>.npz",
    )
    parser.add_argument(
        "--input",
        required=True,
        help="input JSONL, one {'id': str|int, 'text': str} object per line; "
        "or a .parquet file with id and text columns",
    )
    parser.add_argument(
        "--output",
        required=True,
        help="output JSONL, or a .parquet path (written as a directory of part files); OUT.errors.jsonl and "
        "OUT.progress.json are written beside it",
    )
    parser.add_argument(
        "--workflow",
        help="workflow TOML or shipped name (default: the one stored in the checkpoint; older checkpoints: the shipped "
        "one it names); must match the checkpoint's configuration space",
    )
    parser.add_argument(
        "--family",
        help="model family (default: the checkpoint's); must match its configuration space",
    )
    parser.add_argument(
        "--admitted",
        choices=("indices", "models"),
        default="indices",
        help="write admitted configurations as indices into the configuration order (default) or as stage->model maps",
    )
    parser.add_argument(
        "--chunk-size", type=int, default=4096, help="rows per device call (default %(default)s)"
    )
    parser.add_argument(
        "--embeddings-url", help="override the embeddings endpoint of an openai-embeddings router"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    ray = parser.add_argument_group(
        "Ray", "run the job on a Ray cluster with Ray Data (pip install 'aragog_jax[ray]')"
    )
    ray.add_argument(
        "--ray",
        action="store_true",
        help="route on Ray Data: shards of the input go to --concurrency actors, one compiled router "
        "each; same output rows and errors as the local job; resumable by shard",
    )
    ray.add_argument(
        "--ray-address",
        help="Ray cluster to join (e.g. ray://head:10001 or auto; default: RAY_ADDRESS, else a local one)",
    )
    ray.add_argument(
        "--concurrency", type=int, help="routing actors with --ray (default: the cluster's CPUs)"
    )
    ray.add_argument(
        "--shard-rows",
        type=int,
        default=DEFAULT_SHARD_ROWS,
        help="input lines per shard with --ray: the unit of work, output files and resumption "
        "(default %(default)s)",
    )
    ray.add_argument(
        "--max-retries",
        type=int,
        default=DEFAULT_MAX_RETRIES,
        help="with --ray: restarts of a routing actor that dies (a crash, the OOM killer, a lost node) "
        "and retries of the shard it was routing, before the job fails naming the shard "
        "(default %(default)s)",
    )
    args = parser.parse_args(argv)
    if not args.ray and (args.ray_address or args.concurrency is not None):
        raise DatasetError("--ray-address and --concurrency need --ray")
    if args.ray:
        from aragog_jax.route_ray import main_ray

        return main_ray(args)

    from tqdm.auto import tqdm

    from aragog_jax.router import Router

    if args.chunk_size < 1:
        raise DatasetError(f"--chunk-size must be positive, got {args.chunk_size}")
    inp = Path(args.input)
    if not inp.is_file():
        raise DatasetError(f"--input {inp}: no such file")
    out = Path(args.output)
    parquet_in = inp.suffix == ".parquet"
    parquet_out = out.suffix == ".parquet"
    stem = out.name.removesuffix(".parquet" if parquet_out else ".jsonl")
    err = out.with_name(stem + ".errors.jsonl")
    prog_path = out.with_name(stem + ".progress.json")
    if parquet_in or parquet_out:
        try:
            import pyarrow  # noqa: F401
        except ImportError as exc:
            raise DatasetError(
                "Parquet input/output needs pyarrow: pip install 'aragog_jax[parquet]'"
            ) from exc
    parquet_file = open_parquet(inp) if parquet_in else None  # bad input: fail before any write

    space = None
    if args.workflow or args.family:
        from aragog_jax.router import load_checkpoint

        space = load_checkpoint(args.router).space(args.workflow, args.family)
    overrides = {"base_url": args.embeddings_url} if args.embeddings_url else {}
    router = Router.load(args.router, space, **overrides)
    prog = _load_progress(prog_path, out, err, str(Path(args.router).resolve()), str(inp.resolve()))
    if prog.done:
        print(
            f"already complete: {prog.rows:,} rows routed, {prog.errors:,} malformed lines in {err}",
            file=sys.stderr,
        )
        return 1 if prog.errors else 0

    # One bucket: the last, partial chunk is padded up to it (one wasted call beats compiling more).
    router.compile((args.chunk_size,))
    fout = (_ParquetOut if parquet_out else _JsonlOut)(out, prog, router, args.admitted)
    err.parent.mkdir(parents=True, exist_ok=True)
    with open(err, "ab") as f:  # drop error lines written after the last progress record
        f.truncate(prog.errors_bytes)
    ferr = open(err, "ab")  # noqa: SIM115
    t0 = time.perf_counter()
    rows0 = prog.rows
    if parquet_in:
        chunks = parquet_chunks(parquet_file, prog.input_lines, args.chunk_size)
        bar_total, bar_unit, bar_done = (
            parquet_file.metadata.num_rows,
            "row",
            prog.input_lines,
        )
    else:
        chunks = jsonl_chunks(inp, prog.input_lines, args.chunk_size)
        bar_total, bar_unit, bar_done = inp.stat().st_size, "B", 0
    bar = tqdm(
        total=bar_total,
        initial=bar_done,
        unit=bar_unit,
        unit_scale=True,
        desc="route",
        disable=args.quiet,
        file=sys.stderr,
    )
    try:
        pending = None  # (ids, errors, lines, progress units, device parts) of the chunk in flight
        for ids, texts, errors, num_lines, units in chunks:
            parts = router.route_features_async(router.featurizer(texts)) if texts else []
            if pending is not None:
                _commit(pending, fout, ferr, prog, prog_path, bar)
            pending = (ids, errors, num_lines, units, parts)
        if pending is not None:
            _commit(pending, fout, ferr, prog, prog_path, bar)
        prog.done = True
        _write_progress(prog_path, prog)
    finally:
        bar.close()
        fout.close()
        ferr.close()
    dt = time.perf_counter() - t0
    rows = prog.rows - rows0
    print(
        f"routed {rows:,} rows in {dt:.2f} s ({rows / max(dt, 1e-9):,.0f} rows/s) to {out}",
        file=sys.stderr,
    )
    if prog.errors:
        print(
            f"error: {prog.errors:,} malformed input lines (see {err}); {prog.rows:,} valid rows were routed",
            file=sys.stderr,
        )
        return 1
    return 0


def _commit(pending, fout, ferr, prog: Progress, prog_path: Path, bar) -> None:
    """Write one routed chunk and its error lines, fsync, then record progress."""
    ids, errors, num_lines, units, parts = pending
    if parts:
        mask = np.concatenate([np.asarray(m)[:n] for n, m, _ in parts])
        fout.write(ids, mask, prog)
    if errors:
        ferr.write(b"".join(errors))
        ferr.flush()
    os.fsync(ferr.fileno())
    prog.input_lines += num_lines
    prog.errors_bytes += sum(len(e) for e in errors)
    prog.rows += len(ids)
    prog.errors += len(errors)
    _write_progress(prog_path, prog)
    bar.update(units)


if __name__ == "__main__":
    sys.exit(run_cli(main))
