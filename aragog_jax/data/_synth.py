"""Seeded synthetic accuracy data for any workflow over any model pool.

Real labels need real LLM runs. Until a user labels their own data, the router,
scheduler and simulator train and run on data from this generator. It reproduces what
the Aragog paper reports about real workflows, and no more:

* ``c_max`` (largest model everywhere) is right on a calibrated fraction of inputs (the
  workflow's ``target_accuracy[family]``), and each uniform configuration (one model
  everywhere) on that fraction times the model's published score ratio to c_max's model,
* many configurations are as accurate as ``c_max`` on an input, with easy inputs
  (nearly every configuration right) and hard ones (only large models right) in between,
* later stages repair earlier errors (a large refine/aggregate model fixes a weak draft),
* accuracy follows the models' published scores (not always their size),
* the input text carries learnable but noisy signal about difficulty and about which
  stage is critical.

The model (``profiles/datasets/README.md`` has the long version with the numbers):

1. **Inputs.** Input n has a latent difficulty ``d[n] ~ N(0, 1)`` and one critical
   *role* ``r[n]`` (stages with the same upstream stages and the same prompt up to
   digits, e.g. the four voters, form one role). Stage s of input n has difficulty
   ``h[n, s] = d[n] + critical_offset * ([role(s) == r[n]] - 1 / num_roles)``.
2. **Skills.** Model m at stage s does its part with quality
   ``k[n, s, m] = a[m] - h[n, s] + luck`` where ``luck`` sums three normals: per (input,
   model) (what this model happens to know), per (input, role, model) (the same model
   errs the same way in parallel voters) and per (input, stage, model). The router never
   sees luck; it is the irreducible part. The skill ``a[m]`` is solved so that the
   uniform configuration of m (m on every stage) is right on
   ``round(target * ratio(m) * N)`` inputs, ``ratio(m)`` being m's published score on
   the workflow's benchmark over c_max's model's (``profiles/datasets/published_scores.toml``,
   ``_scores.py``); c_max's model has ``a = 0``. A uniform configuration's quality moves
   one for one with its model's skill, so this is a closed form. Without published
   scores for the pool (custom workflows and models) the skill is version 1's size
   curve ``a[m] = -skill_per_doubling * log2(p_max / p[m]) ** skill_exponent``.
3. **Propagation (repair).** In topological order a stage's quality is
   ``q = u + repair_up * max(k - u, 0) - repair_down * max(u - k, 0)`` where ``u`` is the
   quality it receives (source stages: ``q = k``; several upstream stages:
   ``u = (1 - w) * mean + w * max`` of their qualities). A strong late model lifts a weak
   draft most of the way to its own level; a weak late model spoils a good draft only a
   little. ``q`` is monotone in every stage's skill.
4. **Scores.** The workflow's quality ``Q[n, c]`` is the mean over sink stages. The
   score is ``1[Q > tau]`` (binary metrics), with one threshold ``tau`` per dataset
   chosen between two sorted values of ``Q[:, c_max]`` so that ``c_max`` is right on
   exactly ``round(target * N)`` inputs.
5. **Text.** A bag of pseudo-words: difficulty words whose level is a noisy function of
   ``d[n]``, words of the critical role (mostly) or other roles, and Zipf-distributed
   filler words. The router can recover ``d`` and ``r`` roughly, never the luck terms.
6. **Tokens.** Per stage ``(input, output)`` tokens vary log-normally around the stage's
   expected counts; inputs share a length factor (also the text's length) and harder
   inputs produce longer outputs.
7. **Splits.** A seeded permutation: 60 % train, 20 % calibration, 20 % test.

Random streams are keyed by (seed, workflow name, purpose[, model, stage/role]), so the
same workflow and seed give the same texts, difficulties, tokens and splits for every
model family, and one model's luck on an input is the same in every pool it is part of.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Literal

import numpy as np

from aragog_jax.data._dataset import SPLITS, AccuracyDataset, accurate_labels
from aragog_jax.data._latents import make_draw
from aragog_jax.data._scores import PublishedScores
from aragog_jax.data._synth_model import (
    CONFIG_CHUNK,
    GENERATOR_NAME,
    GENERATOR_VERSION,
    SynthParams,
    shipped_scores,
    stream_rng,
    workflow_quality,
)
from aragog_jax.data._synth_text import synth_texts
from aragog_jax.space import ConfigSpace
from aragog_jax.spec import WorkflowSpec


def generate(
    space: ConfigSpace,
    workflow: WorkflowSpec,
    num_inputs: int = 200,
    seed: int = 0,
    *,
    family: str | None = None,
    target: float | None = None,
    params: SynthParams | None = None,
    published: PublishedScores | Literal["shipped"] | None = "shipped",
) -> AccuracyDataset:
    """A synthetic accuracy dataset for ``workflow`` over ``space``'s model pool.

    Args:
      space: the configuration space (``build_space(workflow, pool)``).
      workflow: the workflow the space was built from.
      num_inputs: N, number of inputs (>= 1).
      seed: seeds every random stream (with the workflow name).
      family: family name, used to look up ``workflow.target_accuracy`` and stored in meta.
      target: c_max accuracy to calibrate to; overrides the workflow's figure.
      params: generator knobs; default :class:`SynthParams()`.
      published: the published single-model scores that set each model's skill
        (``"shipped"``: ``profiles/datasets/published_scores.toml``; None: the size curve
        for every pool).

    Returns:
      An :class:`AccuracyDataset` with binary float32 scores[N, C] where ``c_max`` is right
      on exactly ``round(target * N)`` inputs.
    """
    p = params or SynthParams()
    if published == "shipped":
        published = shipped_scores()
    draw = make_draw(space, workflow, num_inputs, seed, family, target, p, published)
    lat, k, tgt, num_right = draw.latents, draw.k, draw.target, draw.num_right
    n, wf, num_stages = lat.difficulty.shape[0], workflow.name, space.num_stages
    difficulty, critical, length, tau = (
        lat.difficulty,
        lat.critical_role,
        draw.length,
        lat.threshold,
    )
    roles, num_roles, skill = list(lat.stage_roles), lat.num_roles, lat.skill
    scores = np.empty((n, space.num_configs), dtype=np.float32)
    for lo in range(0, space.num_configs, CONFIG_CHUNK):
        cfg = space.configs[lo : lo + CONFIG_CHUNK]
        scores[:, lo : lo + cfg.shape[0]] = (
            workflow_quality(space, k, draw.sinks, draw.order, p, cfg) > tau
        )

    # 5. text, 6. tokens, 7. splits
    texts = synth_texts(workflow, seed, difficulty, critical, length, num_roles, p)
    trng = stream_rng(seed, wf, "tokens")
    exp_tok = space.stage_tokens.astype(np.float64)  # [S, 2]
    tin = exp_tok[None, :, 0] * np.exp(
        p.length_sd * length[:, None] + p.stage_token_sd * trng.standard_normal((n, num_stages))
    )
    tout = exp_tok[None, :, 1] * np.exp(
        p.output_token_sd * trng.standard_normal((n, num_stages))
        + p.output_difficulty_slope * difficulty[:, None]
    )
    tokens = np.stack([tin, tout], axis=-1)
    tokens = np.where(exp_tok[None] > 0, np.maximum(np.rint(tokens), 1), 0).astype(np.int32)

    perm = stream_rng(seed, wf, "splits").permutation(n)
    num_train = int(np.floor(p.split_fractions[0] * n + 0.5))
    num_cal = int(np.floor(p.split_fractions[1] * n + 0.5))
    split_of = np.empty(n, dtype=object)
    split_of[perm[:num_train]] = SPLITS[0]
    split_of[perm[num_train : num_train + num_cal]] = SPLITS[1]
    split_of[perm[num_train + num_cal :]] = SPLITS[2]

    width = len(str(n - 1))
    meta = {
        "workflow": wf,
        "family": family or "",
        "fingerprint": space.fingerprint(),
        "stage_names": list(space.stage_names),
        "model_names": list(space.model_names),
        "source": "synthetic",
        "seed": int(seed),
        "generator": {
            "name": GENERATOR_NAME,
            "version": GENERATOR_VERSION,
            "params": {k_: list(v) if isinstance(v, tuple) else v for k_, v in asdict(p).items()},
            "target_accuracy": tgt,
            "threshold": tau,
            "c_max_accuracy": num_right / n,
            "stage_roles": roles,
            **draw.calib_meta,
            "skill": {
                name: round(float(a), 6) for name, a in zip(space.model_names, skill, strict=True)
            },
        },
    }
    return AccuracyDataset(
        ids=[f"{wf}-{i:0{width}d}" for i in range(n)],
        texts=texts,
        splits=[str(x) for x in split_of],
        tokens=tokens,
        scores=scores,
        meta=meta,
    )


# ----------------------------------------------------------------------------- statistics


def viability_stats(scores: np.ndarray, c_max: int, config_flops: np.ndarray | None = None) -> dict:
    """Summary of how many configurations are accurate per input (the router's headroom).

    Returns a dict with ``c_max_accuracy``; over inputs where c_max is right:
    ``viable_frac_mean`` and quartiles ``viable_frac_q10/q25/q50/q75/q90`` (fraction of
    configurations accurate), ``cheapest_not_cmax`` (fraction of those inputs whose
    cheapest accurate configuration is not c_max); ``all_accurate_frac`` (inputs where
    every configuration is accurate, c_max failures included); and, with
    ``config_flops``, ``oracle_flops_ratio`` (mean FLOPs of the cheapest accurate
    configuration over c_max's FLOPs, all inputs).
    """
    scores = np.asarray(scores, dtype=np.float32)
    lab = accurate_labels(scores, c_max)
    right = scores[:, c_max] > 0.5
    frac = lab.mean(axis=1)
    fr = frac[right] if right.any() else np.ones(1)
    first = lab.argmax(axis=1)  # configs ascend in FLOPs, so the first accurate one is the cheapest
    out = {
        "c_max_accuracy": float(right.mean()),
        "viable_frac_mean": float(fr.mean()),
        **{f"viable_frac_q{q}": float(np.quantile(fr, q / 100)) for q in (10, 25, 50, 75, 90)},
        "cheapest_not_cmax": float((first[right] != c_max).mean()) if right.any() else 0.0,
        "all_accurate_frac": float(lab.all(axis=1).mean()),
    }
    if config_flops is not None:
        f = np.asarray(config_flops, dtype=np.float64)
        out["oracle_flops_ratio"] = float((f[first] / f[c_max]).mean())
    return out


__all__ = ["generate", "viability_stats"]
