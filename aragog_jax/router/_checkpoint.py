"""Router checkpoints: one ``.npz`` file, versioned, tied to one configuration space.

Layout (NumPy ``.npz``, loaded with ``allow_pickle=False``)::

    __meta__            uint8[...]  UTF-8 JSON of :class:`CheckpointMeta` (below)
    thresholds          float32[C]  logit thresholds in the space's configuration order
                                    (+inf: never admitted; c_max: -inf)
    hidden/<i>/w, /b    the MLP layers, stored in ``meta.param_dtype``
    head/w, head/b      dense head   (or head/stage_model, head/b: factorised head)

The metadata names the workflow, the family, the model pool, the stage names and the
space fingerprint (:meth:`ConfigSpace.fingerprint`); :func:`check_space` refuses a space
that differs in any of them, saying which. It also records the featuriser (name and
config), the architecture, the calibration (epsilon, confidence, guarantee, shift), the
training history and the evaluation report, and the git SHA that produced it.
"""

from __future__ import annotations

import datetime as _dt
import json
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np

from aragog_jax._files import atomic_writer
from aragog_jax.errors import CheckpointError
from aragog_jax.router._model import RouterModelConfig, flatten_params, unflatten_params
from aragog_jax.space import ConfigSpace, build_space, load_space
from aragog_jax.spec import ModelSpec, WorkflowSpec, family_pool, load_models

FORMAT = "aragog-router/1"


class CheckpointMeta(msgspec.Struct, kw_only=True):
    """Everything in a checkpoint except the arrays."""

    format: str = FORMAT
    workflow: str
    family: str | None = None
    fingerprint: str
    stage_names: list[str]
    model_names: list[str]
    num_configs: int
    featurizer: str
    featurizer_config: dict
    model: dict
    param_dtype: str = "float32"
    calibration: dict = {}
    training: dict = {}
    report: dict = {}
    git_sha: str = "unknown"
    created: str = ""
    # The workflow and model pool the space was built from, so the checkpoint is
    # self-contained (absent in checkpoints written before: their workflow and family
    # are looked up among the shipped ones).
    workflow_spec: dict | None = None
    model_pool: list[dict] | None = None


@dataclass(eq=False)
class RouterCheckpoint:
    """A checkpoint in memory; ``params`` are float32 NumPy arrays."""

    meta: CheckpointMeta
    params: dict
    thresholds: np.ndarray

    @property
    def model_config(self) -> RouterModelConfig:
        return model_config_from_dict(self.meta.model)

    def space(self, workflow: str | Path | None = None, family: str | None = None) -> ConfigSpace:
        """The configuration space the checkpoint was trained for.

        Without arguments it is rebuilt from the workflow and model pool stored in the
        checkpoint (older checkpoints: the shipped workflow and family it names).
        ``workflow`` (a TOML path or a shipped name) and ``family`` override the stored
        ones; the caller checks the result with :meth:`check_space`.

        Raises:
          CheckpointError: the stored specs are malformed, or nothing names a family.
          SpecError: the workflow or family given cannot be loaded.
        """
        m = self.meta
        stored = None
        if m.workflow_spec is not None and workflow is None:
            try:
                stored = msgspec.convert(m.workflow_spec, WorkflowSpec)
                pool = [msgspec.convert(x, ModelSpec) for x in m.model_pool or []]
            except msgspec.ValidationError as exc:
                raise CheckpointError(
                    f"malformed workflow or model pool stored in the checkpoint: {exc}"
                ) from exc
            if family is None:
                return build_space(stored, pool)
        family = family or m.family
        if not family:
            raise CheckpointError("the checkpoint names no family; pass one")
        if stored is not None:
            return build_space(stored, family_pool(load_models(), family))
        return load_space(workflow or m.workflow, family)

    def check_space(self, space: ConfigSpace, where: str = "router checkpoint") -> None:
        """Raise :class:`CheckpointError` unless the checkpoint was trained for ``space``."""
        m = self.meta
        problems = []
        if m.workflow != space.workflow:
            problems.append(f"workflow {m.workflow!r}, not {space.workflow!r}")
        if list(m.model_names) != list(space.model_names):
            problems.append(f"model pool {m.model_names}, not {list(space.model_names)}")
        if list(m.stage_names) != list(space.stage_names):
            problems.append(f"stages {m.stage_names}, not {list(space.stage_names)}")
        if m.num_configs != space.num_configs:
            problems.append(f"{m.num_configs} configurations, not {space.num_configs}")
        if not problems and m.fingerprint != space.fingerprint():
            problems.append(
                f"configuration order fingerprint {m.fingerprint}, not {space.fingerprint()}"
            )
        if problems:
            raise CheckpointError(
                f"{where} was trained for a different configuration space: " + "; ".join(problems)
            )


def model_config_from_dict(d: dict) -> RouterModelConfig:
    try:
        return RouterModelConfig(
            feature_dim=int(d["feature_dim"]),
            num_configs=int(d["num_configs"]),
            hidden=tuple(int(h) for h in d["hidden"]),
            head=str(d["head"]),
            num_stages=int(d.get("num_stages", 0)),
            num_models=int(d.get("num_models", 0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint model description is malformed: {d!r}") from exc


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def strict_json(obj):
    """Replace non-finite floats by None so the JSON is strict."""
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict_json(v) for v in obj]
    return obj


def meta_to_json(meta: CheckpointMeta) -> bytes:
    d = msgspec.to_builtins(meta, builtin_types=(), enc_hook=_json_default)
    return json.dumps(
        strict_json(d), indent=1, sort_keys=True, default=_json_default, allow_nan=False
    ).encode()


def save_checkpoint(ckpt: RouterCheckpoint, path: str | Path) -> Path:
    """Write ``ckpt`` to ``path`` (a ``.npz`` file; parent directories are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not ckpt.meta.created:
        ckpt.meta.created = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    dtype = ckpt.meta.param_dtype
    arrays = {k: v.astype(dtype) for k, v in flatten_params(ckpt.params).items()}
    arrays["thresholds"] = np.asarray(ckpt.thresholds, np.float32)
    arrays["__meta__"] = np.frombuffer(meta_to_json(ckpt.meta), dtype=np.uint8)
    with atomic_writer(path) as f:
        np.savez(f, **arrays)
    return path


_NPZ_MAGIC = (
    b"PK\x03\x04",
    b"PK\x05\x06",
)  # a zip archive's first bytes (an empty one: the second)


def load_checkpoint(path: str | Path) -> RouterCheckpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
      CheckpointError: one line naming ``path`` and the problem: missing, not a ``.npz``,
        truncated or corrupt, unknown format version, malformed metadata, a missing or
        misshapen array, NaN or infinite parameters, NaN thresholds (``+inf`` means never
        admitted; ``-inf`` is allowed only for ``c_max``, the last configuration).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such router checkpoint")
    try:
        return _read(path)
    except CheckpointError as exc:
        msg = str(exc)
        raise CheckpointError(msg if msg.startswith(f"{path}: ") else f"{path}: {msg}") from exc


def _read(path: Path) -> RouterCheckpoint:
    # Opened here, not by np.load, which leaks the handle when the archive is corrupt.
    with open(path, "rb") as f:
        head = f.read(4)
        if head not in _NPZ_MAGIC:
            raise CheckpointError(
                f"not a router checkpoint: not a .npz (zip) archive (it starts with {head!r})"
            )
        f.seek(0)
        try:
            with np.load(f, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise CheckpointError(
                f"truncated or corrupt .npz archive: {type(exc).__name__}: {exc}"
            ) from exc
    if "__meta__" not in arrays:
        raise CheckpointError("not a router checkpoint (no __meta__ entry)")
    try:
        meta = msgspec.json.decode(arrays.pop("__meta__").tobytes(), type=CheckpointMeta)
    except msgspec.ValidationError as exc:
        raise CheckpointError(f"malformed checkpoint metadata: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise CheckpointError(f"checkpoint metadata is not JSON: {exc}") from exc
    if meta.format != FORMAT:
        raise CheckpointError(f"checkpoint format {meta.format!r}, this version reads {FORMAT!r}")
    cfg = model_config_from_dict(meta.model)
    thresholds = arrays.pop("thresholds", None)
    if thresholds is None:
        raise CheckpointError("checkpoint array thresholds is missing")
    if thresholds.shape != (meta.num_configs,):
        raise CheckpointError(
            f"checkpoint array thresholds has shape {thresholds.shape}, expected ({meta.num_configs},)"
        )
    thresholds = np.asarray(thresholds, np.float32)
    bad = np.flatnonzero(
        np.isnan(thresholds)
        | (np.isneginf(thresholds) & (np.arange(thresholds.size) != thresholds.size - 1))
    )
    if bad.size:
        raise CheckpointError(
            f"checkpoint thresholds hold {bad.size} invalid values (NaN, or -inf before c_max) "
            f"at configurations {bad[:5].tolist()}{' ...' if bad.size > 5 else ''}"
        )
    params = unflatten_params(arrays, cfg)
    return RouterCheckpoint(meta=meta, params=params, thresholds=thresholds)
