"""The synthetic generator's latent variables: one seeded draw of difficulties, critical
roles, skills and the threshold (see :mod:`aragog_jax.data._synth`, steps 1-4), and the
accuracy a router that knew them could at best reach."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from aragog_jax.data._scores import PublishedScores
from aragog_jax.data._synth_model import (
    CONFIG_CHUNK,
    SynthParams,
    calibrated_threshold,
    published_calibration,
    resolve_target,
    shipped_scores,
    stage_roles,
    stream_rng,
    uniform_configs,
    workflow_quality,
)
from aragog_jax.errors import DatasetError
from aragog_jax.space import ConfigSpace
from aragog_jax.spec import WorkflowSpec


@dataclass(frozen=True)
class SynthLatents:
    """The generator's latent variables for one draw, without the luck terms.

    What a router could at best know about an input: its difficulty and its critical
    role, plus the dataset's constants (every model's skill and the score threshold).
    The luck terms (:mod:`aragog_jax.data._synth`, step 2) are left out: they are the irreducible part.

    Attributes:
      difficulty: float64[N] ``d[n]``.
      critical_role: int64[N] ``r[n]``, a role id of ``stage_roles``.
      stage_roles: role id per stage (:func:`stage_roles`).
      skill: float64[M] ``a[m]`` per model of the space's pool.
      threshold: ``tau``, the quality above which the workflow's answer is right.
      params: the generator knobs of the draw.
    """

    difficulty: np.ndarray
    critical_role: np.ndarray
    stage_roles: tuple[int, ...]
    skill: np.ndarray
    threshold: float
    params: SynthParams

    @property
    def num_roles(self) -> int:
        return max(self.stage_roles) + 1

    def stage_difficulty_offset(self, role: int) -> np.ndarray:
        """float64[S] ``h[n, s] - d[n]`` of an input whose critical role is ``role``."""
        is_crit = (np.asarray(self.stage_roles) == role).astype(np.float64)
        return self.params.critical_offset * (is_crit - 1.0 / self.num_roles)


@dataclass(frozen=True)
class Draw:
    """Steps 1-3 of one draw: the latents plus what the scores and the texts need."""

    latents: SynthLatents
    length: np.ndarray
    k: np.ndarray  # float64[N, S, M] per-stage skills, luck included
    sinks: list[int]
    order: list[int]
    target: float
    num_right: int
    calib_meta: dict


def make_draw(
    space: ConfigSpace,
    workflow: WorkflowSpec,
    num_inputs: int,
    seed: int,
    family: str | None,
    target: float | None,
    p: SynthParams,
    published: PublishedScores | None,
) -> Draw:
    if space.workflow != workflow.name or list(space.stage_names) != workflow.stage_names:
        raise DatasetError(f"space is for workflow {space.workflow!r}, not {workflow.name!r}")
    n = int(num_inputs)
    if n < 1:
        raise DatasetError(f"num_inputs: need at least 1 input, got {num_inputs}")
    tgt = resolve_target(workflow, family, target)
    wf = workflow.name
    num_stages = space.num_stages

    roles = stage_roles(workflow)
    num_roles = max(roles) + 1
    role_key = {}
    for s, r in enumerate(roles):
        role_key.setdefault(r, workflow.stage[s].name)

    # 1. inputs
    difficulty = stream_rng(seed, wf, "difficulty").standard_normal(n)
    critical = stream_rng(seed, wf, "critical").integers(0, num_roles, size=n)
    length = stream_rng(seed, wf, "length").standard_normal(n)
    is_crit = (np.asarray(roles)[None, :] == critical[:, None]).astype(np.float64)  # [N, S]
    h = difficulty[:, None] + p.critical_offset * (is_crit - 1.0 / num_roles)

    # 2. skills: one luck stream per (model, role) and per (model, stage), keyed by names.
    # k0 is every model's quality at skill 0; the skill of model m is added below.
    k0 = np.empty((n, num_stages, space.num_models), dtype=np.float64)
    for m, name in enumerate(space.model_names):
        role_luck = {
            r: stream_rng(seed, wf, "luck", name, key).standard_normal(n)
            for r, key in role_key.items()
        }
        model_luck = p.model_luck_sd * stream_rng(seed, wf, "model-luck", name).standard_normal(n)
        for s in range(num_stages):
            own = stream_rng(seed, wf, "stage-luck", name, workflow.stage[s].name).standard_normal(
                n
            )
            k0[:, s, m] = (
                -h[:, s] + model_luck + p.role_luck_sd * role_luck[roles[s]] + p.stage_luck_sd * own
            )
    # 3-4. quality and calibrated threshold (c_max at skill 0), then the skills
    order = [int(s) for s in space.topo_order]
    sinks = [s for s in range(num_stages) if int(space.stage_depth[s]) == 0]
    cmax_cfg = space.configs[space.c_max : space.c_max + 1]
    num_right = int(np.floor(tgt * n + 0.5))
    calib = published_calibration(space, workflow, published)
    if calib is None:
        params_ = space.model_params
        skill = -p.skill_per_doubling * np.log2(params_.max() / params_) ** p.skill_exponent
        tau = calibrated_threshold(
            workflow_quality(space, k0 + skill[None, None, :], sinks, order, p, cmax_cfg)[:, 0],
            num_right,
        )
        calib_meta: dict = {"skill_source": "size_curve"}
    else:
        ratios = [r.ratio for r in calib]
        # c_max's model is the anchor with skill 0, so tau comes from k0.
        tau = calibrated_threshold(
            workflow_quality(space, k0, sinks, order, p, cmax_cfg)[:, 0], num_right
        )
        uniform = uniform_configs(space)
        skill = np.zeros(space.num_models)
        targets = {}
        for m, name in enumerate(space.model_names):
            t = min(1.0, tgt * ratios[m])
            targets[name] = t
            if uniform[m] == space.c_max:
                continue  # the anchor: skill 0 defines tau
            # Q of a uniform configuration shifts one for one with its model's skill
            # (every stage's k and u move together), so the skill is solved exactly.
            q0 = workflow_quality(
                space, k0, sinks, order, p, space.configs[uniform[m] : uniform[m] + 1]
            )[:, 0]
            skill[m] = tau - calibrated_threshold(q0, int(np.floor(t * n + 0.5)))
        calib_meta = {
            "skill_source": "published",
            "published_scores": {
                r.model: {
                    "benchmark": r.benchmark,
                    "score": round(r.score, 3),
                    "ratio": round(r.ratio, 6),
                    "how": r.how,
                }
                for r in calib
            },
            "uniform_target": {name: round(float(t), 6) for name, t in targets.items()},
        }
    latents = SynthLatents(
        difficulty=difficulty,
        critical_role=critical,
        stage_roles=tuple(roles),
        skill=skill,
        threshold=tau,
        params=p,
    )
    return Draw(
        latents=latents,
        length=length,
        k=k0 + skill[None, None, :],
        sinks=sinks,
        order=order,
        target=tgt,
        num_right=num_right,
        calib_meta=calib_meta,
    )


def synth_latents(
    space: ConfigSpace,
    workflow: WorkflowSpec,
    num_inputs: int = 200,
    seed: int = 0,
    *,
    family: str | None = None,
    target: float | None = None,
    params: SynthParams | None = None,
    published: PublishedScores | Literal["shipped"] | None = "shipped",
) -> SynthLatents:
    """The latent variables of the draw :func:`generate` makes with the same arguments.

    Regenerated from the seed (the draw is deterministic), so a dataset written earlier
    needs no extra file: its inputs ``i`` and the latents' row ``i`` are the same input.
    Skips the scores, texts and tokens, so it costs a fraction of :func:`generate`.
    """
    p = params or SynthParams()
    if published == "shipped":
        published = shipped_scores()
    return make_draw(space, workflow, num_inputs, seed, family, target, p, published).latents


def latent_accuracy(
    space: ConfigSpace,
    latents: SynthLatents,
    num_samples: int = 1 << 15,
    seed: int = 0,
) -> np.ndarray:
    """The Bayes-optimal router: ``P(y[n, c] = 1 | d[n], r[n])``, the luck integrated out.

    ``y[n, c]`` is the accurate label (c scores at least what c_max scores), so for
    binary scores ``y = 1`` iff ``Q_c > tau`` or ``Q_cmax <= tau``. The workflow quality
    is translation-equivariant (means, maxima and the repair rule commute with adding a
    constant to every skill), so ``Q_c(d) = Q_c(0) - d`` and, with ``A_c = Q_c(0) - tau``
    and ``B = Q_cmax(0) - tau`` per luck draw, ``y = 0`` iff ``A_c <= d < B``. One set of
    ``num_samples`` luck draws per critical role gives the empirical distribution of
    ``(A_c, B)``; every input's failure probability is then two binary searches per
    configuration, exact for that sample (no grid in d).

    Args:
      space: the configuration space the latents were drawn for.
      latents: from :func:`synth_latents`.
      num_samples: K luck draws per role (the probabilities are multiples of 1/K).
      seed: seeds the luck draws (independent of the dataset's seed).

    Returns:
      float64[N, C] probabilities; ``c_max``'s column is 1.
    """
    p = latents.params
    num_stages, num_models = space.num_stages, space.num_models
    if latents.skill.shape != (num_models,) or len(latents.stage_roles) != num_stages:
        raise DatasetError(
            f"latents are for {len(latents.stage_roles)} stages and {latents.skill.shape[0]} "
            f"models, the space has {num_stages} and {num_models}"
        )
    order = [int(s) for s in space.topo_order]
    sinks = [s for s in range(num_stages) if int(space.stage_depth[s]) == 0]
    roles = np.asarray(latents.stage_roles)
    d = latents.difficulty
    out = np.ones((d.shape[0], space.num_configs), dtype=np.float64)
    for role in range(latents.num_roles):
        rows = np.flatnonzero(latents.critical_role == role)
        if rows.size == 0:
            continue
        rng = stream_rng(seed, space.workflow, "latent-accuracy", str(role))
        model_luck = rng.standard_normal((num_samples, 1, num_models))
        role_luck = rng.standard_normal((num_samples, latents.num_roles, num_models))[:, roles]
        stage_luck = rng.standard_normal((num_samples, num_stages, num_models))
        k = (
            latents.skill[None, None, :]
            - latents.stage_difficulty_offset(role)[None, :, None]
            + p.model_luck_sd * model_luck
            + p.role_luck_sd * role_luck
            + p.stage_luck_sd * stage_luck
        )
        cmax_cfg = space.configs[space.c_max : space.c_max + 1]
        b = workflow_quality(space, k, sinks, order, p, cmax_cfg)[:, 0] - latents.threshold
        dr = d[rows]
        for lo in range(0, space.num_configs, CONFIG_CHUNK // 16):
            cfg = space.configs[lo : lo + CONFIG_CHUNK // 16]
            a = workflow_quality(space, k, sinks, order, p, cfg) - latents.threshold
            for j in range(cfg.shape[0]):
                # Draws with A_c > B are accurate at every d; the others fail on [A_c, B).
                can_fail = a[:, j] <= b
                fails = np.searchsorted(
                    np.sort(a[can_fail, j]), dr, side="right"
                ) - np.searchsorted(np.sort(b[can_fail]), dr, side="right")
                out[rows, lo + j] = 1.0 - fails / num_samples
    out[:, space.c_max] = 1.0
    return out


__all__ = ["Draw", "SynthLatents", "latent_accuracy", "make_draw", "synth_latents"]
