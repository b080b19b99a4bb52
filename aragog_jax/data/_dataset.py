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

The label rule (accurate = as good as c_max) lives in :func:`accurate_labels` only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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
    """

    ids: list[str]
    texts: list[str]
    splits: list[str]
    tokens: np.ndarray
    scores: np.ndarray
    meta: dict = field(default_factory=dict)

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

    def check_space(self, space: ConfigSpace, where: str = "dataset") -> None:
        """Raise DatasetError unless this dataset was made for ``space``."""
        fp = self.meta.get("fingerprint")
        if fp != space.fingerprint():
            raise DatasetError(
                f"{where}: made for workflow {self.meta.get('workflow')!r} / family {self.meta.get('family')!r} "
                f"(space fingerprint {fp}), not for {space.workflow!r} over {list(space.model_names)} "
                f"(fingerprint {space.fingerprint()})"
            )


def save_dataset(ds: AccuracyDataset, out: str | Path) -> Path:
    """Write ``ds`` as a dataset directory; byte-identical for identical content."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(ds.meta)
    meta.update(
        format=FORMAT,
        num_inputs=ds.num_inputs,
        num_configs=int(ds.scores.shape[1]),
        splits={s: int(sum(1 for x in ds.splits if x == s)) for s in SPLITS},
    )
    (out / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    with open(out / "inputs.jsonl", "w") as f:
        for i in range(ds.num_inputs):
            row = {"id": ds.ids[i], "text": ds.texts[i], "split": ds.splits[i], "tokens": ds.tokens[i].tolist()}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    np.save(out / "scores.npy", ds.scores.astype(np.float16))
    return out


def load_dataset(path: str | Path, space: ConfigSpace | None = None) -> AccuracyDataset:
    """Read a dataset directory; with ``space`` also check it belongs to that space."""
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise DatasetError(f"{path}: not an accuracy dataset (no meta.json)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{meta_path}: not valid JSON: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise DatasetError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    ids, texts, splits, tokens = [], [], [], []
    with open(path / "inputs.jsonl") as f:
        for lineno, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                ids.append(str(row["id"]))
                texts.append(str(row["text"]))
                if row["split"] not in SPLITS:
                    raise DatasetError(f"{path / 'inputs.jsonl'}:{lineno}: split: unknown split {row['split']!r}")
                splits.append(row["split"])
                tokens.append(row["tokens"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DatasetError(f"{path / 'inputs.jsonl'}:{lineno}: bad row: {exc!r}") from exc
    scores = np.load(path / "scores.npy").astype(np.float32)
    if scores.ndim != 2 or scores.shape[0] != len(ids):
        raise DatasetError(f"{path / 'scores.npy'}: shape {scores.shape}, expected ({len(ids)}, num_configs)")
    try:
        tok = np.asarray(tokens, dtype=np.int32)
    except ValueError as exc:
        raise DatasetError(f"{path / 'inputs.jsonl'}: tokens: every row needs one [input, output] pair per stage") from exc
    ds = AccuracyDataset(ids=ids, texts=texts, splits=splits, tokens=tok, scores=scores, meta=meta)
    if space is not None:
        ds.check_space(space, where=str(path))
    return ds
