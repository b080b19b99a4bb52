"""Reading and writing the batch routing job's rows, shared by the local job
(:mod:`aragog_jax.route`) and the Ray job (:mod:`aragog_jax.route_ray`): input JSONL lines
and Parquet columns parsed into ids, texts and error lines, inputs cut into shards, output
rows encoded as JSONL or a ``pyarrow.Table``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import msgspec
import numpy as np

from aragog_jax.errors import DatasetError

_READ_BYTES = 1 << 24


class InputRow(msgspec.Struct):
    id: str | int
    text: str


_decode_row = msgspec.json.Decoder(InputRow).decode
_encoder = msgspec.json.Encoder()
_encode = _encoder.encode


def read_chunks(
    path: Path, start_line: int, chunk: int
) -> Iterator[tuple[list[tuple[int, bytes]], int]]:
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


def parse_lines(batch: list[tuple[int, bytes]]) -> tuple[list, list[str], list[bytes]]:
    """Split ``[(line_number, raw_line), ...]`` into ``(ids, texts, error_lines)``.

    Blank lines are skipped; a malformed line becomes one encoded
    ``{"line": N, "reason": ...}`` error line. Shared by the local and the Ray job.
    """
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


def jsonl_chunks(
    path: Path, start: int, chunk: int
) -> Iterator[tuple[list, list[str], list[bytes], int, int]]:
    """``(ids, texts, error_lines, lines_consumed, bytes_consumed)`` per chunk of a JSONL file."""
    for batch, nbytes in read_chunks(path, start, chunk):
        ids, texts, errors = parse_lines(batch)
        yield ids, texts, errors, len(batch), nbytes


def open_parquet(path: Path):
    """Open an input Parquet file and check its ``id`` and ``text`` columns (DatasetError if not)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise DatasetError(f"--input {path}: not a readable Parquet file: {exc}") from exc
    schema = pf.schema_arrow
    for col in ("id", "text"):
        if schema.get_field_index(col) < 0:
            raise DatasetError(f"--input {path}: no {col!r} column (columns: {schema.names})")
    text_t, id_t = schema.field("text").type, schema.field("id").type
    if not (pa.types.is_string(text_t) or pa.types.is_large_string(text_t)):
        raise DatasetError(f"--input {path}: column 'text' has type {text_t}, expected string")
    if not (
        pa.types.is_string(id_t) or pa.types.is_large_string(id_t) or pa.types.is_integer(id_t)
    ):
        raise DatasetError(
            f"--input {path}: column 'id' has type {id_t}, expected string or integer"
        )
    return pf


def parquet_chunks(
    pf, start: int, chunk: int, row_groups: Sequence[int] | None = None, first_row: int = 0
) -> Iterator[tuple[list, list[str], list[bytes], int, int]]:
    """Same as :func:`jsonl_chunks` for an open Parquet file (``line`` = 1-based row number).

    ``row_groups`` restricts the read to those row groups, whose first row is ``first_row``
    (the Ray job reads one shard of row groups per task).
    """
    row = first_row
    for rb in pf.iter_batches(batch_size=chunk, columns=["id", "text"], row_groups=row_groups):
        lo = row
        row += rb.num_rows
        if row <= start:
            continue
        skip = max(0, start - lo)
        cols = rb.slice(skip).to_pydict()
        ids, texts, errors = [], [], []
        for k, (i, t) in enumerate(zip(cols["id"], cols["text"], strict=True)):
            if i is None or t is None:
                what = "id" if i is None else "text"
                errors.append(
                    _encode({"line": lo + skip + k + 1, "reason": f"invalid row: {what} is null"})
                    + b"\n"
                )
                continue
            ids.append(i)
            texts.append(t)
        yield ids, texts, errors, rb.num_rows - skip, rb.num_rows - skip


def parquet_table(ids: list, mask: np.ndarray, admitted: str, router):
    """The output rows of one chunk as a ``pyarrow.Table`` (``id``, ``num_admitted``, ``admitted``)."""
    import pyarrow as pa

    counts = mask.sum(axis=1).astype(np.int32)
    _, cols = np.nonzero(mask)
    admitted_col = pa.ListArray.from_arrays(
        pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)),
        pa.array(cols.astype(np.int32)),
    )
    if admitted == "models":
        table_ = [router.space.config_to_models(c) for c in range(router.num_configs)]
        admitted_col = pa.array(
            [[table_[c] for c in row.values.to_numpy()] for row in admitted_col]
        )
    return pa.table(
        {"id": pa.array(ids), "num_admitted": pa.array(counts), "admitted": admitted_col}
    )


def encode_rows(ids: list, mask: np.ndarray, admitted: str, router) -> bytes:
    """The output rows of one chunk as newline-delimited JSON (one ``encode_lines`` call)."""
    if not ids:
        return b""
    counts = mask.sum(axis=1)
    _, cols = np.nonzero(mask)
    flat = cols.tolist()
    ends = np.cumsum(counts).tolist()
    starts = [0, *ends[:-1]]
    if admitted == "models":
        table = [router.space.config_to_models(c) for c in range(router.num_configs)]
        rows = [
            {"id": i, "num_admitted": b - a, "admitted": [table[c] for c in flat[a:b]]}
            for i, a, b in zip(ids, starts, ends, strict=True)
        ]
    else:
        rows = [
            {"id": i, "num_admitted": b - a, "admitted": flat[a:b]}
            for i, a, b in zip(ids, starts, ends, strict=True)
        ]
    return _encoder.encode_lines(rows)


def check_fresh_output(out: Path, progress: Path) -> None:
    """Refuse to write into a non-empty ``out`` that has no progress file (not ours to resume)."""
    if out.exists() and (any(out.iterdir()) if out.is_dir() else out.stat().st_size > 0):
        raise DatasetError(
            f"{out} exists but {progress.name} does not, so the job cannot resume safely; "
            f"remove {out} or choose another --output"
        )


class Shard(msgspec.Struct, frozen=True):
    """One unit of work: input lines ``first_line + 1 .. first_line + num_lines`` (1-based).

    ``start``/``stop`` are byte offsets (JSONL) or a row-group range (Parquet).
    """

    index: int
    first_line: int
    num_lines: int
    start: int
    stop: int


def plan_jsonl(path: Path, shard_rows: int) -> list[Shard]:
    """Cut a JSONL file into shards of ``shard_rows`` lines (the last may be shorter).

    One pass over the file counting newlines with NumPy; a last line without a newline
    counts as a line, as in the local job.
    """
    cuts = [(0, 0)]  # (byte offset, lines before it)
    lines = pos = 0
    next_cut = shard_rows
    last = b"\n"
    with open(path, "rb") as f:
        while buf := f.read(_READ_BYTES):
            newlines = np.flatnonzero(np.frombuffer(buf, np.uint8) == 10)
            while next_cut <= lines + len(newlines):
                cuts.append((pos + int(newlines[next_cut - lines - 1]) + 1, next_cut))
                next_cut += shard_rows
            lines += len(newlines)
            pos += len(buf)
            last = buf[-1:]
    if last != b"\n":
        lines += 1
    if cuts[-1] != (pos, lines):
        cuts.append((pos, lines))
    return [
        Shard(index=k, first_line=a_line, num_lines=b_line - a_line, start=a, stop=b)
        for k, ((a, a_line), (b, b_line)) in enumerate(zip(cuts, cuts[1:], strict=False))
    ]


def plan_parquet(path: Path, shard_rows: int) -> list[Shard]:
    """Cut a Parquet file into shards of whole row groups, about ``shard_rows`` rows each."""
    meta = open_parquet(path).metadata
    shards: list[Shard] = []
    first = rg = row = 0
    for g in range(meta.num_row_groups):
        row += meta.row_group(g).num_rows
        if row - first >= shard_rows or g == meta.num_row_groups - 1:
            shards.append(Shard(len(shards), first, row - first, rg, g + 1))
            first, rg = row, g + 1
    return shards
