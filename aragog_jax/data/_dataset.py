"""Accuracy datasets: per input, a text, per-stage token counts and every configuration's score.

On disk a dataset is a directory::

    meta.json      {"format": "aragog-accuracy-dataset/1", "workflow", "family",
                    "fingerprint" (ConfigSpace.fingerprint()), "stage_names",
                    "model_names", "num_inputs", "num_configs", "splits": {name: count},
                    "source": "synthetic" | "labelled", "generator": {...}, "seed"}
    inputs.jsonl   one object per input, in row order:
                   {"id": str, "text": str, "split": "train"|"calibration"|"test",
                    "tokens": [[input, output], ...]   (one pair per stage)}
    scores.npy     float16[N, C]: score in [0, 1] of configuration c (the space's
                   documented order, ascending FLOPs) on input n. Binary metrics use 0/1.
    labelled.npy   optional bool[N, C]: which (input, configuration) pairs were labelled
                   (``python -m aragog_jax.label --sample K`` labels a sample of the
                   configurations; a failed call leaves a pair unlabelled). Absent: every
                   pair is labelled. Training learns from labelled pairs only and
                   calibration counts only them (:mod:`aragog_jax.router`).

Every file is written atomically (:mod:`aragog_jax._files`) and ``meta.json`` last, after
removing the old one first: a directory whose writer was killed has either its old
complete content or no ``meta.json``, which :func:`load_dataset` reports as an
incomplete dataset in one line.

The label rule (accurate = as good as c_max) lives in :func:`accurate_labels` only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aragog_jax._files import atomic_write, atomic_writer, remove_durably
from aragog_jax.errors import DatasetError
from aragog_jax.space import ConfigSpace

FORMAT = "aragog-accuracy-dataset/1"
SPLITS = ("train", "calibration", "test")


def accurate_labels(scores: np.ndarray, c_max: int, tol: float = 0.0) -> np.ndarray:
    """bool[N, C]: configuration c is accurate on input n when it scores at least c_max's score.

    ``score[n, c] >= score[n, c_max] - tol``. With ``tol = 0`` and binary scores this is
    exact match with c_max's outcome or better; when c_max fails an input every
    configuration counts as accurate (nothing is lost relative to c_max).
    """
    scores = np.asarray(scores, dtype=np.float32)
    return scores >= scores[:, c_max : c_max + 1] - np.float32(tol)


@dataclass(eq=False)
class AccuracyDataset:
    """An accuracy dataset in memory. Row order is the file order.

    Attributes:
      ids: N input ids.
      texts: N input texts.
      splits: N split names.
      tokens: int32[N, S, 2] per-stage (input, output) tokens.
      scores: float32[N, C] per-configuration score.
      meta: the meta.json dict.
      labelled: bool[N, C] pairs that were labelled, or None when every pair was (the
        score of an unlabelled pair is a placeholder, not a measurement).
    """

    ids: list[str]
    texts: list[str]
    splits: list[str]
    tokens: np.ndarray
    scores: np.ndarray
    meta: dict = field(default_factory=dict)
    labelled: np.ndarray | None = None

    @property
    def num_inputs(self) -> int:
        return len(self.ids)

    def split_index(self, split: str) -> np.ndarray:
        """int64 row indices of one split, in file order."""
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
        return np.flatnonzero(np.asarray(self.splits) == split)

    def labels(self, c_max: int, tol: float = 0.0) -> np.ndarray:
        return accurate_labels(self.scores, c_max, tol)

    def labelled_mask(self) -> np.ndarray:
        """bool[N, C]: the labelled pairs (all True when the dataset labels every pair)."""
        if self.labelled is None:
            return np.ones(self.scores.shape, dtype=bool)
        return self.labelled

    def check_space(self, space: ConfigSpace, where: str = "dataset") -> None:
        """Raise DatasetError unless this dataset was made for ``space``."""
        fp = self.meta.get("fingerprint")
        if fp != space.fingerprint():
            raise DatasetError(
                f"{where}: made for workflow {self.meta.get('workflow')!r} / family {self.meta.get('family')!r} "
                f"(space fingerprint {fp}), not for {space.workflow!r} over {list(space.model_names)} "
                f"(fingerprint {space.fingerprint()})"
            )


def save_dataset(
    ds: AccuracyDataset, out: str | Path, extra: dict[str, np.ndarray] | None = None
) -> Path:
    """Write ``ds`` as a dataset directory; byte-identical for identical content.

    ``extra`` arrays are saved as ``NAME.npy`` with the dataset, before ``meta.json``
    marks it complete; ``ds.labelled`` is saved as ``labelled.npy`` unless ``extra``
    names one.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_durably(
        out / "meta.json"
    )  # from here until the new one lands, the directory is incomplete
    meta = dict(ds.meta)
    meta.update(
        format=FORMAT,
        num_inputs=ds.num_inputs,
        num_configs=int(ds.scores.shape[1]),
        splits={s: int(sum(1 for x in ds.splits if x == s)) for s in SPLITS},
    )
    lines = []
    for i in range(ds.num_inputs):
        row = {
            "id": ds.ids[i],
            "text": ds.texts[i],
            "split": ds.splits[i],
            "tokens": ds.tokens[i].tolist(),
        }
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    atomic_write(out / "inputs.jsonl", "".join(lines))
    arrays = {"scores": ds.scores.astype(np.float16)}
    if ds.labelled is not None:
        arrays["labelled"] = np.asarray(ds.labelled, dtype=bool)
    else:
        remove_durably(out / "labelled.npy")  # a stale one would mark pairs unlabelled
    arrays.update(extra or {})
    for name, arr in arrays.items():
        with atomic_writer(out / f"{name}.npy") as f:
            np.save(f, arr)
    atomic_write(out / "meta.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def read_meta(path: str | Path) -> dict:
    """A dataset directory's ``meta.json``, checked (DatasetError naming the directory and the problem)."""
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        if not path.is_dir():
            raise DatasetError(f"{path}: not an accuracy dataset (no meta.json: no such directory)")
        if (path / "inputs.jsonl").exists() or (path / "scores.npy").exists():
            raise DatasetError(
                f"{path}: incomplete accuracy dataset (no meta.json: the run writing it was "
                "interrupted); rerun it to finish"
            )
        raise DatasetError(f"{path}: not an accuracy dataset (no meta.json)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{meta_path}: not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise DatasetError(f"{meta_path}: format {got!r}, expected {FORMAT!r}")
    return meta


def load_dataset(path: str | Path, space: ConfigSpace | None = None) -> AccuracyDataset:
    """Read a dataset directory; with ``space`` also check it belongs to that space.

    Raises:
      DatasetError: one line naming the file and the problem (not a dataset, incomplete,
        unreadable, inconsistent, or made for another space).
    """
    path = Path(path)
    meta = read_meta(path)
    ids, texts, splits, tokens = [], [], [], []
    inputs_path, scores_path = path / "inputs.jsonl", path / "scores.npy"
    for p in (inputs_path, scores_path):
        if not p.is_file():
            raise DatasetError(f"{path}: incomplete accuracy dataset: {p.name} is missing")
    with open(inputs_path) as f:
        for lineno, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                ids.append(str(row["id"]))
                texts.append(str(row["text"]))
                if row["split"] not in SPLITS:
                    raise DatasetError(
                        f"{inputs_path}:{lineno}: split: unknown split {row['split']!r}"
                    )
                splits.append(row["split"])
                tokens.append(row["tokens"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DatasetError(f"{inputs_path}:{lineno}: bad row: {exc!r}") from exc
    try:
        scores = np.load(scores_path, allow_pickle=False).astype(np.float32)
    except (ValueError, EOFError, OSError) as exc:
        raise DatasetError(
            f"{scores_path}: not a readable .npy array ({type(exc).__name__}: {exc})"
        ) from exc
    if scores.ndim != 2 or scores.shape[0] != len(ids):
        raise DatasetError(
            f"{scores_path}: shape {scores.shape}, expected ({len(ids)}, num_configs)"
        )
    if scores.shape[1] != meta.get("num_configs", scores.shape[1]) or len(ids) != meta.get(
        "num_inputs", len(ids)
    ):
        raise DatasetError(
            f"{path}: meta.json says {meta.get('num_inputs')} inputs x {meta.get('num_configs')} "
            f"configurations, the files hold {len(ids)} x {scores.shape[1]}"
        )
    try:
        tok = np.asarray(tokens, dtype=np.int32)
    except ValueError as exc:
        raise DatasetError(
            f"{inputs_path}: tokens: every row needs one [input, output] pair per stage"
        ) from exc
    labelled = None
    labelled_path = path / "labelled.npy"
    if labelled_path.is_file():
        try:
            labelled = np.load(labelled_path, allow_pickle=False)
        except (ValueError, EOFError, OSError) as exc:
            raise DatasetError(
                f"{labelled_path}: not a readable .npy array ({type(exc).__name__}: {exc})"
            ) from exc
        if labelled.dtype != np.bool_ or labelled.shape != scores.shape:
            raise DatasetError(
                f"{labelled_path}: {labelled.dtype}{list(labelled.shape)}, expected "
                f"bool{list(scores.shape)} (one flag per input and configuration)"
            )
    ds = AccuracyDataset(
        ids=ids, texts=texts, splits=splits, tokens=tok, scores=scores, meta=meta, labelled=labelled
    )
    if space is not None:
        ds.check_space(space, where=str(path))
    return ds
