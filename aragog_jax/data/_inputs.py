"""The labeller's inputs: reading a JSONL dataset file, and loading and checking a scorer."""

from __future__ import annotations

import hashlib
import inspect
import json
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aragog_jax._imports import load_callable
from aragog_jax.data._dataset import SPLITS
from aragog_jax.errors import AragogError, DatasetError

Scorer = Callable[[dict, str], float]


@dataclass
class InputRow:
    id: str
    text: str
    split: str
    row: dict
    line: int = 0  # 1-based line in the dataset file


@dataclass
class InputFile:
    """The usable rows of a dataset file and the lines that were not (``{"line", "reason"}``)."""

    path: Path
    rows: list[InputRow]
    bad: list[dict]

    def digest(self) -> str:
        """sha256 of the rows as labelled (id, text, the whole row), in order."""
        h = hashlib.sha256()
        for r in self.rows:
            h.update(
                json.dumps(
                    [r.id, r.text, r.row], sort_keys=True, ensure_ascii=False, default=repr
                ).encode()
                + b"\n"
            )
        return h.hexdigest()


def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


def _parse_row(line: str, lineno: int, fields: list[str], seen: dict[str, int]) -> InputRow | str:
    """One dataset line -> an InputRow, or the reason it cannot be used."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        return f"bad JSON: {exc}"
    if not isinstance(row, dict):
        return f"expected a JSON object, got {_type_name(row)}"
    name = next((k for k in fields if k in row), None)
    if name is None:
        return f"no {' / '.join(repr(k) for k in fields)} field with the input text"
    text = row[name]
    if not isinstance(text, str):
        return f"{name}: expected a string, got {_type_name(text)}"
    rid = row.get("id", lineno)
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        return f"id: expected a string or an integer, got {_type_name(rid)}"
    rid = str(rid)
    if rid in seen:
        return f"id: duplicate id {rid!r} (first on line {seen[rid]})"
    seen[rid] = lineno
    split = row.get("split", "")
    return InputRow(rid, text, split if split in SPLITS else "", row, lineno)


def load_inputs(
    path: str | Path,
    *,
    text_field: str = "",
    split_fractions=(0.6, 0.2, 0.2),
    seed: int = 0,
    limit: int | None = None,
) -> InputFile:
    """Read a JSONL dataset: text from ``text_field`` (default ``input``, else ``text``,
    ``question``; it must be a string), id from ``id`` (a string or an integer; default:
    the line number), split from ``split`` when it names one of train/calibration/test,
    else a seeded assignment by ``split_fractions``. ``limit`` counts usable rows.

    A line that cannot be used (bad JSON, not an object, no text or a non-string one, a
    bad or duplicate id) goes to ``bad`` with its line number; the others are kept.

    Raises:
      DatasetError: no such file, or no usable row in it.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: dataset file not found")
    fr = np.asarray(split_fractions, dtype=np.float64)
    if fr.shape != (3,) or (fr < 0).any() or fr.sum() <= 0:
        raise AragogError(
            f"split fractions must be three non-negative numbers, got {list(split_fractions)}"
        )
    fields = [text_field] if text_field else ["input", "text", "question"]
    rows: list[InputRow] = []
    bad: list[dict] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parsed = _parse_row(line, lineno, fields, seen)
            if isinstance(parsed, str):
                bad.append({"line": lineno, "reason": parsed})
                continue
            rows.append(parsed)
            if limit is not None and len(rows) >= limit:
                break
    if not rows:
        first = f" (line {bad[0]['line']}: {bad[0]['reason']})" if bad else ""
        raise DatasetError(f"{path}: no usable inputs: {len(bad)} bad lines{first}")
    todo = [r for r in rows if not r.split]
    if todo:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(todo))
        bounds = np.round(np.cumsum(fr / fr.sum()) * len(todo)).astype(int)
        for rank, i in enumerate(order):
            todo[i].split = SPLITS[
                min(int(np.searchsorted(bounds, rank, side="right")), len(SPLITS) - 1)
            ]
    return InputFile(path, rows, bad)


def load_scorer(spec: str) -> Scorer:
    """``module:function`` or ``path/to/file.py:function`` -> the function (AragogError naming what is wrong)."""
    return load_callable(spec, f"scorer {spec!r}", "aragog_jax.data.scorers:exact_match")


def score_value(value) -> float:
    """A scorer's return value as a float; ValueError saying why it is not a score in [0, 1]."""
    if not isinstance(value, numbers.Real):
        raise ValueError(
            f"scorer returned {_type_name(value)} {value!r:.60}, expected a number in [0, 1]"
        )
    val = float(value)
    if not 0.0 <= val <= 1.0:  # NaN fails too
        raise ValueError(f"scorer returned {val!r}, not in [0, 1]")
    return val


def check_scorer(scorer: Scorer, name: str, first: InputRow) -> None:
    """Refuse a scorer that cannot score: checked on the first input before any engine call.

    Its signature must accept ``(input_row, output_text)``; called with the first input's
    row and an empty output it must return a number in [0, 1] or raise something other
    than ``TypeError`` (a scorer may reject an empty output; that is decided per output
    later).

    Raises:
      AragogError: one line naming the scorer, the input and the problem.
    """
    what = f"scorer {name or getattr(scorer, '__qualname__', repr(scorer))}"
    try:
        inspect.signature(scorer).bind(first.row, "")
    except TypeError as exc:
        raise AragogError(
            f"{what}: cannot be called as scorer(input_row, output_text): {exc}"
        ) from exc
    except ValueError:
        pass  # no introspectable signature (some builtins): the call below tells
    try:
        val = scorer(first.row, "")
    except TypeError as exc:
        raise AragogError(
            f"{what}: calling it with (input_row, output_text) on input {first.id!r} raised TypeError: {exc}"
        ) from exc
    except Exception:  # noqa: BLE001 - may reject an empty output; real outputs decide
        return
    try:
        score_value(val)
    except ValueError as exc:
        raise AragogError(f"{what}: on input {first.id!r}: {exc}") from exc


__all__ = [
    "InputFile",
    "InputRow",
    "Scorer",
    "check_scorer",
    "load_inputs",
    "load_scorer",
    "score_value",
]
