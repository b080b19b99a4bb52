"""Small factories for scheduler tests: toy model pools, workflows, engines, the twin policy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aragog_jax.kernels import BeamResult
from aragog_jax.scheduler import (
    DEFAULT_BEAM_WIDTH,
    EngineInfo,
    LoadVector,
    PolicyName,
    RoundArrays,
    Scheduler,
)
from aragog_jax.scheduler._round import twin_round
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
            StageSpec(
                name=s, prompt="{input}", input_tokens=10, output_tokens=10, upstream=list(ups)
            )
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


class TwinPolicy:
    """The ``aragog`` policy with the NumPy / pure-Python twins of the kernels instead of
    the jitted round (``beam_width=1``: ``greedy``)."""

    def __init__(self, beam_width: int = DEFAULT_BEAM_WIDTH) -> None:
        self.name = PolicyName.ARAGOG if beam_width > 1 else PolicyName.GREEDY
        self.beam_width = beam_width

    def admit(self, space: ConfigSpace, mask: np.ndarray) -> np.ndarray:
        return mask

    def assign(self, arrays: RoundArrays) -> BeamResult:
        return twin_round(arrays, self.beam_width)[1]


def full_load(fleet: Sequence[EngineInfo]) -> LoadVector:
    """Every engine saturated: a round places nothing, and ``plan.skipped`` lists every
    ready stage in the scheduler's item order."""
    return LoadVector.observe(fleet, {e.name: {"running": e.saturation_batch} for e in fleet})


def ready_items(sched: Scheduler, fleet: Sequence[EngineInfo]) -> list[tuple]:
    """(request id, stage) of every ready stage in round order, without committing any."""
    return [(s.request_id, s.stage) for s in sched.schedule(full_load(fleet)).skipped]


def expected_order(sched: Scheduler, spaces_by_id: dict) -> list[tuple]:
    """The documented item order from public queries only: FIFO across requests, deepest
    stage first within one (ties: lower stage index)."""
    out = []
    for rid in sched.request_ids():
        sp = spaces_by_id[rid]
        ready = [s for s, st in enumerate(sched.stage_status(rid).values()) if st == "ready"]
        out += [(rid, s) for s in sorted(ready, key=lambda s: (-int(sp.stage_depth[s]), s))]
    return out
