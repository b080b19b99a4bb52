"""The synthetic inputs' texts: bags of pseudo-words carrying noisy signal about an input's
difficulty and critical role (see :mod:`aragog_jax.data._synth`, step 5)."""

from __future__ import annotations

import numpy as np

from aragog_jax.data._synth_model import SynthParams, stream_rng
from aragog_jax.spec import WorkflowSpec

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
    rng = stream_rng(0, "vocabulary", workflow.name)
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


def synth_texts(
    workflow: WorkflowSpec,
    seed: int,
    difficulty: np.ndarray,
    critical: np.ndarray,
    length: np.ndarray,
    num_roles: int,
    p: SynthParams,
) -> list[str]:
    levels, role_words, filler = _vocabulary(workflow, num_roles, p)
    rng = stream_rng(seed, workflow.name, "text")
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


__all__ = ["synth_texts"]
