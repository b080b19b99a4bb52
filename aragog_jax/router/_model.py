"""Router model: architecture config, parameter initialisation, flat (de)serialisation."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from aragog_jax.errors import CheckpointError

HEADS = ("dense", "factorised")


@dataclass(frozen=True)
class RouterModelConfig:
    """Static, hashable description of the network (STYLE 4).

    Attributes:
      feature_dim: D, the featuriser's output dimension.
      num_configs: C, one logit per configuration.
      hidden: widths of the ReLU hidden layers (paper: six layers).
      head: ``dense`` (an [H, C] matrix) or ``factorised`` (sum of (stage, model)
        embeddings, for large spaces).
      num_stages, num_models: S and M, used by the factorised head.
    """

    feature_dim: int
    num_configs: int
    hidden: tuple[int, ...] = (512,) * 6
    head: str = "dense"
    num_stages: int = 0
    num_models: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.head not in HEADS:
            raise CheckpointError(f"router head must be one of {HEADS}, got {self.head!r}")
        if self.feature_dim <= 0 or self.num_configs <= 0 or any(h <= 0 for h in self.hidden):
            raise CheckpointError(f"router model dimensions must be positive: {self}")
        if self.head == "factorised" and (self.num_stages <= 0 or self.num_models <= 0):
            raise CheckpointError("the factorised head needs num_stages and num_models")

    @property
    def width(self) -> int:
        return self.hidden[-1] if self.hidden else self.feature_dim

    def to_dict(self) -> dict:
        return {
            "feature_dim": self.feature_dim,
            "num_configs": self.num_configs,
            "hidden": list(self.hidden),
            "head": self.head,
            "num_stages": self.num_stages,
            "num_models": self.num_models,
        }

    def flops_per_request(self) -> int:
        """Multiply-add FLOPs (2 per MAC) of one forward pass."""
        dims = (self.feature_dim, *self.hidden)
        macs = (
            sum(a * b for a, b in zip(dims[:-1], dims[1:], strict=True))
            + self.width * self.num_configs
        )
        return 2 * macs


def init_params(cfg: RouterModelConfig, key: jax.Array) -> dict:
    """He-normal hidden layers, small head, zero biases. Deterministic given ``key``."""
    dims = (cfg.feature_dim, *cfg.hidden)
    keys = jax.random.split(key, len(cfg.hidden) + 1)
    hidden = []
    for k, (d_in, d_out) in zip(keys[:-1], zip(dims[:-1], dims[1:], strict=True), strict=True):
        w = jax.random.normal(k, (d_in, d_out), jnp.float32) * jnp.float32(np.sqrt(2.0 / d_in))
        hidden.append({"w": w, "b": jnp.zeros((d_out,), jnp.float32)})
    scale = jnp.float32(np.sqrt(1.0 / cfg.width))
    if cfg.head == "dense":
        head = {"w": jax.random.normal(keys[-1], (cfg.width, cfg.num_configs), jnp.float32) * scale}
    else:
        # Sum of S embeddings: scale each by 1/sqrt(S) to keep the logit variance of the dense head.
        s = jnp.float32(1.0 / np.sqrt(cfg.num_stages))
        head = {
            "stage_model": jax.random.normal(
                keys[-1], (cfg.num_stages, cfg.num_models, cfg.width), jnp.float32
            )
            * scale
            * s
        }
    head["b"] = jnp.zeros((cfg.num_configs,), jnp.float32)
    return {"hidden": hidden, "head": head}


def flatten_params(params: dict) -> dict[str, np.ndarray]:
    """``{"hidden/0/w": ..., "head/b": ...}`` as NumPy arrays (npz keys)."""
    out = {}
    for i, layer in enumerate(params["hidden"]):
        for k, v in layer.items():
            out[f"hidden/{i}/{k}"] = np.asarray(v)
    for k, v in params["head"].items():
        out[f"head/{k}"] = np.asarray(v)
    return out


def unflatten_params(flat: dict[str, np.ndarray], cfg: RouterModelConfig) -> dict:
    """Inverse of :func:`flatten_params`, as float32 NumPy arrays, checked against ``cfg``.

    Raises:
      CheckpointError: an array is missing, unexpected, of the wrong shape, or holds NaN
        or infinite values; the message names the array and its actual shape.
    """
    dims = (cfg.feature_dim, *cfg.hidden)
    expected = {}
    for i in range(len(cfg.hidden)):
        expected[f"hidden/{i}/w"] = (dims[i], dims[i + 1])
        expected[f"hidden/{i}/b"] = (dims[i + 1],)
    if cfg.head == "dense":
        expected["head/w"] = (cfg.width, cfg.num_configs)
    else:
        expected["head/stage_model"] = (cfg.num_stages, cfg.num_models, cfg.width)
    expected["head/b"] = (cfg.num_configs,)
    missing = [k for k in expected if k not in flat]
    if missing:
        raise CheckpointError(f"checkpoint parameters are missing {', '.join(missing)}")
    extra = sorted(set(flat) - set(expected))
    if extra:
        raise CheckpointError(
            f"checkpoint has unexpected arrays {', '.join(extra)} for a {cfg.head} head with "
            f"{len(cfg.hidden)} hidden layers"
        )
    arrays = {}
    for k, shape in expected.items():
        a = flat[k]
        if a.shape != shape:
            raise CheckpointError(f"checkpoint array {k} has shape {a.shape}, expected {shape}")
        if not np.issubdtype(a.dtype, np.floating):
            raise CheckpointError(
                f"checkpoint array {k} has dtype {a.dtype}, expected a float type"
            )
        a = np.asarray(a, np.float32)
        if not np.isfinite(a).all():
            raise CheckpointError(
                f"checkpoint array {k} holds {int((~np.isfinite(a)).sum())} NaN or infinite values"
            )
        arrays[k] = a
    hidden = [
        {"w": arrays[f"hidden/{i}/w"], "b": arrays[f"hidden/{i}/b"]} for i in range(len(cfg.hidden))
    ]
    head = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("head/")}
    return {"hidden": hidden, "head": head}


def cast_params(params: dict, dtype: str) -> dict:
    """Round parameters through the storage dtype (``float32`` or ``float16``), back to float32.

    Calibration runs on the rounded parameters, so the stored thresholds match the
    stored weights exactly.
    """
    if dtype not in ("float32", "float16"):
        raise CheckpointError(f"parameter dtype must be float32 or float16, got {dtype!r}")
    return jax.tree.map(lambda a: np.asarray(np.asarray(a).astype(dtype), np.float32), params)
