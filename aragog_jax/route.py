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

Malformed lines (bad JSON, missing ``text``, wrong types) go to ``OUT.errors.jsonl`` as
``{"line": N, "reason": "..."}``; every valid line is still routed; the job then exits
with status 1 and a one-line summary. Blank lines are skipped. User mistakes (missing
files, a checkpoint for another space) exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgspec
import numpy as np

from aragog_jax._cli import run_cli
from aragog_jax.errors import DatasetError

PROGRESS_FORMAT = "aragog-route-progress/1"


class InputRow(msgspec.Struct):
    id: str | int
    text: str


class Progress(msgspec.Struct):
    format: str
    router: str
    input: str
    input_lines: int = 0
    output_bytes: int = 0
    errors_bytes: int = 0
    rows: int = 0
    errors: int = 0
    done: bool = False


_decode_row = msgspec.json.Decoder(InputRow).decode
_encode = msgspec.json.Encoder().encode


def _read_chunks(path: Path, start_line: int, chunk: int) -> Iterator[tuple[list[tuple[int, bytes]], int]]:
    """Yield ``([(line_number, raw_line), ...], bytes_read)``, skipping ``start_line`` lines."""
    with open(path, "rb") as f:
        lineno = 0
        for _ in range(start_line):
            if not f.readline():
                return
            lineno += 1
        batch: list[tuple[int, bytes]] = []
        nbytes = 0
        for raw in f:
            lineno += 1
            nbytes += len(raw)
            batch.append((lineno, raw))
            if len(batch) >= chunk:
                yield batch, nbytes
                batch, nbytes = [], 0
        if batch:
            yield batch, nbytes


def _parse(batch: list[tuple[int, bytes]]) -> tuple[list, list[str], list[bytes]]:
    """Split a raw batch into (ids, texts) of valid rows and error lines (encoded)."""
    ids, texts, errors = [], [], []
    for lineno, raw in batch:
        if not raw.strip():
            continue
        try:
            row = _decode_row(raw)
        except msgspec.ValidationError as exc:
            errors.append(_encode({"line": lineno, "reason": f"invalid row: {exc}"}) + b"\n")
            continue
        except msgspec.DecodeError as exc:
            errors.append(_encode({"line": lineno, "reason": f"bad JSON: {exc}"}) + b"\n")
            continue
        ids.append(row.id)
        texts.append(row.text)
    return ids, texts, errors


def _encode_rows(ids: list, mask: np.ndarray, admitted: str, router) -> bytes:
    if not ids:
        return b""
    counts = mask.sum(axis=1)
    _, cols = np.nonzero(mask)
    per_row = np.split(cols, np.cumsum(counts)[:-1])
    out = []
    if admitted == "models":
        table = [router.space.config_to_models(c) for c in range(router.num_configs)]
        for i, cs in zip(ids, per_row, strict=True):
            out.append(_encode({"id": i, "num_admitted": len(cs), "admitted": [table[c] for c in cs.tolist()]}))
    else:
        for i, cs in zip(ids, per_row, strict=True):
            out.append(_encode({"id": i, "num_admitted": len(cs), "admitted": cs.tolist()}))
    return b"\n".join(out) + b"\n"


def _load_progress(path: Path, out: Path, err: Path, router: str, inp: str) -> Progress:
    fresh = Progress(format=PROGRESS_FORMAT, router=router, input=inp)
    if not path.exists():
        if out.exists() and out.stat().st_size > 0:
            raise DatasetError(
                f"{out} exists but {path.name} does not, so the job cannot resume safely; "
                f"remove {out} or choose another --output"
            )
        return fresh
    try:
        prog = msgspec.json.decode(path.read_bytes(), type=Progress)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise DatasetError(f"{path}: unreadable progress file ({exc}); remove it and {out} to start over") from exc
    if prog.format != PROGRESS_FORMAT or prog.router != router or prog.input != inp:
        raise DatasetError(
            f"{path}: belongs to a job with router {prog.router!r} and input {prog.input!r}; "
            f"remove it and {out} to start over"
        )
    return prog


def _write_progress(path: Path, prog: Progress) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(msgspec.json.encode(prog))
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aragog_jax.route",
        description=(
            "Route a JSONL file of inputs ({'id', 'text'} per line) through a router checkpoint and write "
            "one line per input with the admitted configurations. Resumable: rerun the same command after "
            "an interruption. Malformed lines go to OUT.errors.jsonl (exit status 1)."
        ),
    )
    parser.add_argument("--router", required=True, help="router checkpoint (.npz), e.g. profiles/routers/<workflow>/<family>.npz")
    parser.add_argument("--input", required=True, help="input JSONL, one {'id': str|int, 'text': str} object per line")
    parser.add_argument("--output", required=True, help="output JSONL (OUT.errors.jsonl and OUT.progress.json are written beside it)")
    parser.add_argument("--workflow", help="workflow TOML or shipped name (default: the one the checkpoint names)")
    parser.add_argument("--family", help="model family (default: the one the checkpoint names)")
    parser.add_argument(
        "--admitted", choices=("indices", "models"), default="indices",
        help="write admitted configurations as indices into the configuration order (default) or as stage->model maps",
    )
    parser.add_argument("--chunk-size", type=int, default=4096, help="rows per device call (default %(default)s)")
    parser.add_argument("--embeddings-url", help="override the embeddings endpoint of an openai-embeddings router")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    from tqdm.auto import tqdm

    from aragog_jax.router import Router
    from aragog_jax.space import load_space

    if args.chunk_size < 1:
        raise DatasetError(f"--chunk-size must be positive, got {args.chunk_size}")
    inp = Path(args.input)
    if not inp.is_file():
        raise DatasetError(f"--input {inp}: no such file")
    out = Path(args.output)
    err = out.with_name(out.name.removesuffix(".jsonl") + ".errors.jsonl")
    prog_path = out.with_name(out.name.removesuffix(".jsonl") + ".progress.json")

    space = None
    if args.workflow or args.family:
        from aragog_jax.router import load_checkpoint

        meta = load_checkpoint(args.router).meta
        space = load_space(args.workflow or meta.workflow, args.family or meta.family)
    overrides = {"base_url": args.embeddings_url} if args.embeddings_url else {}
    router = Router.load(args.router, space, **overrides)
    prog = _load_progress(prog_path, out, err, str(Path(args.router).resolve()), str(inp.resolve()))
    if prog.done:
        print(f"already complete: {prog.rows:,} rows routed, {prog.errors:,} malformed lines in {err}", file=sys.stderr)
        return 1 if prog.errors else 0

    # One bucket: the last, partial chunk is padded up to it (one wasted call beats compiling more).
    router.compile((args.chunk_size,))
    out.parent.mkdir(parents=True, exist_ok=True)
    # Drop anything written after the last progress record (a torn or unrecorded chunk).
    for path, size in ((out, prog.output_bytes), (err, prog.errors_bytes)):
        with open(path, "ab") as f:
            f.truncate(size)
    fout = open(out, "ab")  # noqa: SIM115
    ferr = open(err, "ab")  # noqa: SIM115
    t0 = time.perf_counter()
    rows0, errors0 = prog.rows, prog.errors
    bar = tqdm(
        total=inp.stat().st_size, unit="B", unit_scale=True, desc="route", disable=args.quiet, file=sys.stderr
    )
    try:
        pending = None  # (ids, errors, lines, nbytes, device parts) of the chunk in flight
        for batch, nbytes in _read_chunks(inp, prog.input_lines, args.chunk_size):
            ids, texts, errors = _parse(batch)
            parts = router.route_features_async(router.featurizer(texts)) if texts else []
            if pending is not None:
                _commit(pending, router, args.admitted, fout, ferr, prog, prog_path, bar)
            pending = (ids, errors, len(batch), nbytes, parts)
        if pending is not None:
            _commit(pending, router, args.admitted, fout, ferr, prog, prog_path, bar)
        prog.done = True
        _write_progress(prog_path, prog)
    finally:
        bar.close()
        fout.close()
        ferr.close()
    dt = time.perf_counter() - t0
    rows, errs = prog.rows - rows0, prog.errors - errors0
    print(f"routed {rows:,} rows in {dt:.2f} s ({rows / max(dt, 1e-9):,.0f} rows/s) to {out}", file=sys.stderr)
    if prog.errors:
        print(
            f"error: {prog.errors:,} malformed input lines (see {err}); {prog.rows:,} valid rows were routed",
            file=sys.stderr,
        )
        return 1
    return 0


def _commit(pending, router, admitted: str, fout, ferr, prog: Progress, prog_path: Path, bar) -> None:
    ids, errors, num_lines, nbytes, parts = pending
    if parts:
        mask = np.concatenate([np.asarray(m)[:n] for n, m, _ in parts])
        data = _encode_rows(ids, mask, admitted, router)
    else:
        data = b""
    fout.write(data)
    fout.flush()
    if errors:
        ferr.write(b"".join(errors))
        ferr.flush()
    os.fsync(fout.fileno())
    os.fsync(ferr.fileno())
    prog.input_lines += num_lines
    prog.output_bytes += len(data)
    prog.errors_bytes += sum(len(e) for e in errors)
    prog.rows += len(ids)
    prog.errors += len(errors)
    _write_progress(prog_path, prog)
    bar.update(nbytes)


if __name__ == "__main__":
    sys.exit(run_cli(main))

