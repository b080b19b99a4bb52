"""Small factories for scheduler tests: toy model pools, workflows, engines."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aragog_jax.scheduler import EngineInfo
from aragog_jax.space import ConfigSpace, build_space
from aragog_jax.spec import ModelSpec, StageSpec, WorkflowSpec

SIZES = {"7B": 7, "14B": 14, "32B": 32}


def model(name: str, billions: int) -> ModelSpec:
    return ModelSpec(
        name=name,
        family="t",
        num_params=billions * 1_000_000_000,
        num_layers=1,
        hidden_size=1,
        num_attention_heads=1,
        num_kv_heads=1,
        head_dim=1,
    )


POOL = [model(n, b) for n, b in SIZES.items()]


def space(stages: Sequence[tuple[str, Sequence[str]]], name: str = "wf", pool=POOL) -> ConfigSpace:
    """A workflow from (stage name, upstream names) pairs over the toy pool."""
    spec = WorkflowSpec(
        name=name,
        stage=[
            StageSpec(name=s, prompt="{input}", input_tokens=10, output_tokens=10, upstream=list(ups))
            for s, ups in stages
        ],
    )
    return build_space(spec, list(pool))


def linear_curve(per_seq: float, sat: int) -> tuple[tuple[float, float], ...]:
    return ((0.0, 0.0), (float(sat), per_seq * sat))


def engines(spec: dict[str, tuple[str, float, int]]) -> list[EngineInfo]:
    """{engine name: (model, tokens/s per sequence, saturation batch)}."""
    return [EngineInfo(n, m, sat, linear_curve(g, sat)) for n, (m, g, sat) in spec.items()]


def mask_where(sp: ConfigSpace, **stage_models: Sequence[str]) -> np.ndarray:
    """Configurations whose stage uses one of the given models, for every given stage."""
    mask = np.ones(sp.num_configs, dtype=bool)
    for stage, models in stage_models.items():
        s = sp.stage_names.index(stage)
        ids = [sp.model_names.index(m) for m in models]
        mask &= np.isin(sp.configs[:, s], ids)
    return mask
