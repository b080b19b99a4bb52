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

import functools
import re
import zlib
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from aragog_jax.data._dataset import SPLITS, AccuracyDataset, accurate_labels
from aragog_jax.data._scores import PublishedScores, Ratio, load_published_scores
from aragog_jax.errors import DatasetError
from aragog_jax.space import ConfigSpace
from aragog_jax.spec import WorkflowSpec

GENERATOR_NAME = "aragog_jax.synth"
GENERATOR_VERSION = 2
#: Accuracy of c_max used when the workflow has no ``target_accuracy`` for the family.
DEFAULT_TARGET_ACCURACY = 0.75
#: Configurations processed at once when computing scores (bounds memory at N x chunk).
_CONFIG_CHUNK = 4096


@dataclass(frozen=True)
class SynthParams:
    """Knobs of the generator model (see the module docstring); defaults ship the data."""

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
def _shipped_scores() -> PublishedScores:
    return load_published_scores()


def _key(x: str) -> int:
    return zlib.crc32(x.encode("utf-8"))


def _rng(seed: int, *keys: str) -> np.random.Generator:
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


# ----------------------------------------------------------------------------- text


_ONSETS = (
    "b",
    "d",
    "f",
    "g",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "ch",
    "sh",
    "tr",
    "pl",
    "gr",
    "st",
)
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")


def _vocabulary(
    workflow: WorkflowSpec, num_roles: int, p: SynthParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct pseudo-words: (levels[L, W], roles[R, W], filler[F]); fixed per workflow name, not per seed."""
    rng = _rng(0, "vocabulary", workflow.name)
    need = p.num_levels * p.words_per_level + num_roles * p.words_per_role + p.num_filler_words
    words: dict[str, None] = {}
    while len(words) < need:
        n_syl = int(rng.integers(2, 4))
        w = "".join(
            _ONSETS[int(rng.integers(len(_ONSETS)))] + _VOWELS[int(rng.integers(len(_VOWELS)))]
            for _ in range(n_syl)
        )
        if rng.random() < 0.3:
            w += "n"
        words.setdefault(w, None)
    arr = np.array(list(words), dtype=object)
    a = p.num_levels * p.words_per_level
    b = a + num_roles * p.words_per_role
    return (
        arr[:a].reshape(p.num_levels, p.words_per_level),
        arr[a:b].reshape(num_roles, p.words_per_role),
        arr[b:],
    )


def _texts(
    workflow: WorkflowSpec,
    seed: int,
    difficulty: np.ndarray,
    critical: np.ndarray,
    length: np.ndarray,
    num_roles: int,
    p: SynthParams,
) -> list[str]:
    levels, role_words, filler = _vocabulary(workflow, num_roles, p)
    rng = _rng(seed, workflow.name, "text")
    n = difficulty.shape[0]
    num_words = np.clip(np.rint(p.mean_words * np.exp(0.3 * length)), 8, 80).astype(np.int64)
    # Difficulty level centre: the input's difficulty quantile under N(0, 1), mapped onto [0, L-1].
    centre = (np.clip(difficulty, -2.5, 2.5) + 2.5) / 5.0 * (p.num_levels - 1)
    zipf = 1.0 / np.arange(1, filler.shape[0] + 1, dtype=np.float64)
    zipf /= zipf.sum()
    texts = []
    for i in range(n):
        k = int(num_words[i])
        kind = rng.random(k)
        lv = np.clip(
            np.rint(centre[i] + p.level_noise_sd * rng.standard_normal(k)), 0, p.num_levels - 1
        ).astype(np.int64)
        which = rng.integers(0, p.words_per_level, size=k)
        other_role = rng.integers(0, num_roles, size=k)
        role = np.where(rng.random(k) < p.critical_role_word_prob, critical[i], other_role)
        rw = rng.integers(0, p.words_per_role, size=k)
        fw = rng.choice(filler.shape[0], size=k, p=zipf)
        out = []
        for j in range(k):
            if kind[j] < p.difficulty_word_share:
                out.append(levels[lv[j], which[j]])
            elif kind[j] < p.difficulty_word_share + p.role_word_share:
                out.append(role_words[role[j], rw[j]])
            else:
                out.append(filler[fw[j]])
        texts.append(" ".join(out).capitalize() + "?")
    return texts


# ----------------------------------------------------------------------------- scores


def _quality(
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


def _threshold(q: np.ndarray, num_right: int) -> float:
    """A threshold with exactly ``num_right`` values of ``q`` above it (midpoint of neighbours)."""
    srt = np.sort(q)[::-1]
    if num_right <= 0:
        return float(srt[0]) + 1.0
    if num_right >= srt.shape[0]:
        return float(srt[-1]) - 1.0
    return float(0.5 * (srt[num_right - 1] + srt[num_right]))


def _uniform_configs(space: ConfigSpace) -> list[int | None]:
    """Per model, the index of the configuration that runs it on every stage (None if absent)."""
    out: list[int | None] = []
    for m in range(space.num_models):
        hit = np.flatnonzero((space.configs == m).all(axis=1))
        out.append(int(hit[0]) if hit.size else None)
    return out


def _published_calibration(
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
    if len(cmax_models) != 1 or any(u is None for u in _uniform_configs(space)):
        return None
    anchor = space.model_names[cmax_models.pop()]
    return published.ratios(
        workflow.dataset, list(space.model_names), [float(x) for x in space.model_params], anchor
    )


@dataclass(frozen=True)
class SynthLatents:
    """The generator's latent variables for one draw, without the luck terms.

    What a router could at best know about an input: its difficulty and its critical
    role, plus the dataset's constants (every model's skill and the score threshold).
    The luck terms (module docstring, step 2) are left out: they are the irreducible part.

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
class _Draw:
    """Steps 1-3 of one draw: the latents plus what the scores and the texts need."""

    latents: SynthLatents
    length: np.ndarray
    k: np.ndarray  # float64[N, S, M] per-stage skills, luck included
    sinks: list[int]
    order: list[int]
    target: float
    num_right: int
    calib_meta: dict


def _draw(
    space: ConfigSpace,
    workflow: WorkflowSpec,
    num_inputs: int,
    seed: int,
    family: str | None,
    target: float | None,
    p: SynthParams,
    published: PublishedScores | None,
) -> _Draw:
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
    difficulty = _rng(seed, wf, "difficulty").standard_normal(n)
    critical = _rng(seed, wf, "critical").integers(0, num_roles, size=n)
    length = _rng(seed, wf, "length").standard_normal(n)
    is_crit = (np.asarray(roles)[None, :] == critical[:, None]).astype(np.float64)  # [N, S]
    h = difficulty[:, None] + p.critical_offset * (is_crit - 1.0 / num_roles)

    # 2. skills: one luck stream per (model, role) and per (model, stage), keyed by names.
    # k0 is every model's quality at skill 0; the skill of model m is added below.
    k0 = np.empty((n, num_stages, space.num_models), dtype=np.float64)
    for m, name in enumerate(space.model_names):
        role_luck = {
            r: _rng(seed, wf, "luck", name, key).standard_normal(n) for r, key in role_key.items()
        }
        model_luck = p.model_luck_sd * _rng(seed, wf, "model-luck", name).standard_normal(n)
        for s in range(num_stages):
            own = _rng(seed, wf, "stage-luck", name, workflow.stage[s].name).standard_normal(n)
            k0[:, s, m] = (
                -h[:, s] + model_luck + p.role_luck_sd * role_luck[roles[s]] + p.stage_luck_sd * own
            )
    # 3-4. quality and calibrated threshold (c_max at skill 0), then the skills
    order = [int(s) for s in space.topo_order]
    sinks = [s for s in range(num_stages) if int(space.stage_depth[s]) == 0]
    cmax_cfg = space.configs[space.c_max : space.c_max + 1]
    num_right = int(np.floor(tgt * n + 0.5))
    calib = _published_calibration(space, workflow, published)
    if calib is None:
        params_ = space.model_params
        skill = -p.skill_per_doubling * np.log2(params_.max() / params_) ** p.skill_exponent
        tau = _threshold(
            _quality(space, k0 + skill[None, None, :], sinks, order, p, cmax_cfg)[:, 0], num_right
        )
        calib_meta: dict = {"skill_source": "size_curve"}
    else:
        ratios = [r.ratio for r in calib]
        # c_max's model is the anchor with skill 0, so tau comes from k0.
        tau = _threshold(_quality(space, k0, sinks, order, p, cmax_cfg)[:, 0], num_right)
        uniform = _uniform_configs(space)
        skill = np.zeros(space.num_models)
        targets = {}
        for m, name in enumerate(space.model_names):
            t = min(1.0, tgt * ratios[m])
            targets[name] = t
            if uniform[m] == space.c_max:
                continue  # the anchor: skill 0 defines tau
            # Q of a uniform configuration shifts one for one with its model's skill
            # (every stage's k and u move together), so the skill is solved exactly.
            q0 = _quality(space, k0, sinks, order, p, space.configs[uniform[m] : uniform[m] + 1])[
                :, 0
            ]
            skill[m] = tau - _threshold(q0, int(np.floor(t * n + 0.5)))
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
    return _Draw(
        latents=latents,
        length=length,
        k=k0 + skill[None, None, :],
        sinks=sinks,
        order=order,
        target=tgt,
        num_right=num_right,
        calib_meta=calib_meta,
    )


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
        published = _shipped_scores()
    draw = _draw(space, workflow, num_inputs, seed, family, target, p, published)
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
    for lo in range(0, space.num_configs, _CONFIG_CHUNK):
        cfg = space.configs[lo : lo + _CONFIG_CHUNK]
        scores[:, lo : lo + cfg.shape[0]] = _quality(space, k, draw.sinks, draw.order, p, cfg) > tau

    # 5. text, 6. tokens, 7. splits
    texts = _texts(workflow, seed, difficulty, critical, length, num_roles, p)
    trng = _rng(seed, wf, "tokens")
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

    perm = _rng(seed, wf, "splits").permutation(n)
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
        published = _shipped_scores()
    return _draw(space, workflow, num_inputs, seed, family, target, p, published).latents


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
        rng = _rng(seed, space.workflow, "latent-accuracy", str(role))
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
        b = _quality(space, k, sinks, order, p, cmax_cfg)[:, 0] - latents.threshold
        dr = d[rows]
        for lo in range(0, space.num_configs, _CONFIG_CHUNK // 16):
            cfg = space.configs[lo : lo + _CONFIG_CHUNK // 16]
            a = _quality(space, k, sinks, order, p, cfg) - latents.threshold
            for j in range(cfg.shape[0]):
                # Draws with A_c > B are accurate at every d; the others fail on [A_c, B).
                can_fail = a[:, j] <= b
                fails = np.searchsorted(
                    np.sort(a[can_fail, j]), dr, side="right"
                ) - np.searchsorted(np.sort(b[can_fail]), dr, side="right")
                out[rows, lo + j] = 1.0 - fails / num_samples
    out[:, space.c_max] = 1.0
    return out


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
