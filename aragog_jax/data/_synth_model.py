"""The synthetic generator's model: its knobs, random streams, stage roles, the workflow's
quality over configurations and the calibration to published scores (see
:mod:`aragog_jax.data._synth`, steps 2-4)."""

from __future__ import annotations

import functools
import re
import zlib
from dataclasses import dataclass

import numpy as np

from aragog_jax.data._scores import PublishedScores, Ratio, load_published_scores
from aragog_jax.errors import DatasetError
from aragog_jax.space import ConfigSpace
from aragog_jax.spec import WorkflowSpec

GENERATOR_NAME = "aragog_jax.synth"
GENERATOR_VERSION = 2
#: Accuracy of c_max used when the workflow has no ``target_accuracy`` for the family.
DEFAULT_TARGET_ACCURACY = 0.75
#: Configurations processed at once when computing scores (bounds memory at N x chunk).
CONFIG_CHUNK = 4096


@dataclass(frozen=True)
class SynthParams:
    """Knobs of the generator model (see :mod:`aragog_jax.data._synth`); defaults ship the data."""

    skill_per_doubling: float = 1.0
    skill_exponent: float = 0.4
    critical_offset: float = 0.6
    model_luck_sd: float = 0.2
    role_luck_sd: float = 0.18
    stage_luck_sd: float = 0.08
    repair_up: float = 0.6
    repair_down: float = 0.25
    upstream_max_weight: float = 0.5
    # text
    num_levels: int = 8
    words_per_level: int = 6
    words_per_role: int = 12
    num_filler_words: int = 300
    mean_words: float = 36.0
    difficulty_word_share: float = 0.5
    role_word_share: float = 0.12
    critical_role_word_prob: float = 0.75
    level_noise_sd: float = 0.4
    # tokens
    length_sd: float = 0.25
    stage_token_sd: float = 0.1
    output_token_sd: float = 0.25
    output_difficulty_slope: float = 0.1
    # splits
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)


@functools.cache
def shipped_scores() -> PublishedScores:
    return load_published_scores()


def _key(x: str) -> int:
    return zlib.crc32(x.encode("utf-8"))


def stream_rng(seed: int, *keys: str) -> np.random.Generator:
    return np.random.default_rng(
        np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *(_key(k) for k in keys)])
    )


def stage_roles(workflow: WorkflowSpec) -> list[int]:
    """Role id per stage: stages with equal upstream lists and prompts (digits ignored) share a role."""
    keys: dict[tuple, int] = {}
    roles = []
    for s in workflow.stage:
        k = (
            tuple(sorted(re.sub(r"\d+", "#", u) for u in s.upstream)),
            re.sub(r"\d+", "#", s.prompt),
        )
        roles.append(keys.setdefault(k, len(keys)))
    return roles


def resolve_target(workflow: WorkflowSpec, family: str | None, target: float | None) -> float:
    """The c_max accuracy to calibrate to: explicit ``target``, else the workflow's figure, else the default."""
    if target is not None:
        t = float(target)
    elif family is not None and family in workflow.target_accuracy:
        t = float(workflow.target_accuracy[family])
    else:
        t = DEFAULT_TARGET_ACCURACY
    if not 0.0 <= t <= 1.0:
        raise DatasetError(f"{workflow.name}: target accuracy {t} is not in [0, 1]")
    return t


# ----------------------------------------------------------------------------- scores


def workflow_quality(
    space: ConfigSpace,
    k: np.ndarray,
    sinks: list[int],
    order: list[int],
    p: SynthParams,
    configs: np.ndarray,
) -> np.ndarray:
    """float64[N, C'] workflow quality of ``configs`` (int32[C', S]) given per-stage skills k[N, S, M]."""
    q: dict[int, np.ndarray] = {}
    for s in order:
        ks = k[:, s, :][:, configs[:, s]]  # [N, C']
        ups = space.upstream[s]
        if not ups:
            q[s] = ks
            continue
        if len(ups) == 1:
            u = q[ups[0]]
        else:
            stack = np.stack([q[x] for x in ups])
            u = (1.0 - p.upstream_max_weight) * stack.mean(
                axis=0
            ) + p.upstream_max_weight * stack.max(axis=0)
        q[s] = u + p.repair_up * np.maximum(ks - u, 0.0) - p.repair_down * np.maximum(u - ks, 0.0)
    return np.mean(np.stack([q[s] for s in sinks]), axis=0)


def calibrated_threshold(q: np.ndarray, num_right: int) -> float:
    """A threshold with exactly ``num_right`` values of ``q`` above it (midpoint of neighbours)."""
    srt = np.sort(q)[::-1]
    if num_right <= 0:
        return float(srt[0]) + 1.0
    if num_right >= srt.shape[0]:
        return float(srt[-1]) - 1.0
    return float(0.5 * (srt[num_right - 1] + srt[num_right]))


def uniform_configs(space: ConfigSpace) -> list[int | None]:
    """Per model, the index of the configuration that runs it on every stage (None if absent)."""
    out: list[int | None] = []
    for m in range(space.num_models):
        hit = np.flatnonzero((space.configs == m).all(axis=1))
        out.append(int(hit[0]) if hit.size else None)
    return out


def published_calibration(
    space: ConfigSpace, workflow: WorkflowSpec, published: PublishedScores | None
) -> list[Ratio] | None:
    """Each pool model's score ratio to c_max's model when the data can be calibrated.

    Calibration needs: a published-scores table, c_max running one model everywhere, a
    uniform configuration for every model of the pool, and a ratio for every model
    (``PublishedScores.ratios``). Otherwise None: the size curve sets the skills.
    """
    if published is None or not workflow.dataset:
        return None
    cmax_models = set(space.configs[space.c_max].tolist())
    if len(cmax_models) != 1 or any(u is None for u in uniform_configs(space)):
        return None
    anchor = space.model_names[cmax_models.pop()]
    return published.ratios(
        workflow.dataset, list(space.model_names), [float(x) for x in space.model_params], anchor
    )


__all__ = [
    "CONFIG_CHUNK",
    "DEFAULT_TARGET_ACCURACY",
    "GENERATOR_NAME",
    "GENERATOR_VERSION",
    "SynthParams",
    "calibrated_threshold",
    "published_calibration",
    "resolve_target",
    "shipped_scores",
    "stage_roles",
    "stream_rng",
    "uniform_configs",
    "workflow_quality",
]
