"""Published single-model benchmark scores and the score ratios the generator uses.

``profiles/datasets/published_scores.toml`` lists, per model and benchmark, a score in
percent and the source it is copied from. The synthetic generator does not use the
absolute scores: the paper's own harness gives ``c_max`` a different accuracy than a
publisher's single call. It uses each model's *ratio* to the pool's ``c_max`` model,

    ratio(m) = score(m, benchmark) / score(c_max model, benchmark)

when both scores are published, else the same ratio on the table's ``proxy_benchmark``
(MMLU, which every model card in the shipped pools reports). The uniform configuration
of model m is then calibrated to ``target * ratio(m)`` (``profiles/datasets/README.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import msgspec

from aragog_jax.errors import DatasetError, SpecError
from aragog_jax.spec import PROFILES_DIR, decode_toml

DEFAULT_PUBLISHED_SCORES = PROFILES_DIR / "datasets" / "published_scores.toml"


@dataclass(frozen=True)
class Ratio:
    """One model's score estimate on a benchmark and its ratio to the pool's c_max model."""

    model: str
    benchmark: str  # the benchmark the estimate is on (the proxy when the pool has no score)
    score: float  # percent
    ratio: float
    how: str  # "published" or "imputed from <model> by the <proxy> ratio"


@dataclass(frozen=True)
class PublishedScores:
    """(model, benchmark) -> score in percent, with a source key per score."""

    scores: dict[tuple[str, str], float]
    sources: dict[tuple[str, str], str]
    source_text: dict[str, str]
    proxy_benchmark: str

    def score(self, model: str, benchmark: str) -> float | None:
        return self.scores.get((model, benchmark))

    def ratios(
        self, benchmark: str, models: list[str], params: list[float], anchor: str
    ) -> list[Ratio] | None:
        """Score ratio of every model in ``models`` to ``anchor`` on ``benchmark``.

        A model without a published score on ``benchmark`` gets one imputed from the
        pool model with a published score that is nearest in parameter count, scaled by
        the two models' proxy-benchmark ratio: ``S(m) = S(m') * P(m) / P(m')``. When no
        model of the pool has a score on ``benchmark``, every ratio is the proxy ratio.
        None when a needed proxy score is missing (the caller falls back to its default).
        """
        by_name = dict(zip(models, params, strict=True))
        if anchor not in by_name:
            raise DatasetError(f"anchor {anchor!r} is not in the pool {models}")
        known = [m for m in models if self.score(m, benchmark) is not None]
        bench = benchmark if known else self.proxy_benchmark
        if not known:
            known = [m for m in models if self.score(m, bench) is not None]
            if len(known) != len(models):
                return None

        def estimate(m: str) -> tuple[float, str] | None:
            s = self.score(m, bench)
            if s is not None:
                return s, "published"
            ref = min(known, key=lambda k: (abs(math.log(by_name[m] / by_name[k])), k))
            pm, pr = self.score(m, self.proxy_benchmark), self.score(ref, self.proxy_benchmark)
            if pm is None or pr is None:
                return None
            return self.score(
                ref, bench
            ) * pm / pr, f"imputed from {ref} by the {self.proxy_benchmark} ratio"

        est = {m: estimate(m) for m in models}
        if any(v is None for v in est.values()):
            return None
        a = est[anchor][0]
        return [Ratio(m, bench, est[m][0], est[m][0] / a, est[m][1]) for m in models]


class _ScoreRow(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    model: str
    benchmark: str
    value: Annotated[float, msgspec.Meta(gt=0.0, le=100.0)]  # percent
    source: str


class _ScoresFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    proxy_benchmark: Annotated[str, msgspec.Meta(min_length=1)]
    sources: dict[str, str]
    score: list[_ScoreRow]


def load_published_scores(path: str | Path = DEFAULT_PUBLISHED_SCORES) -> PublishedScores:
    """Load and validate a published-scores table; errors name the file and the field."""
    raw = decode_toml(path, _ScoresFile, "published scores")
    scores: dict[tuple[str, str], float] = {}
    sources: dict[tuple[str, str], str] = {}
    for i, row in enumerate(raw.score):
        key = (row.model, row.benchmark)
        if row.source not in raw.sources:
            raise SpecError(f"{path}: score[{i}].source: {row.source!r} is not in [sources]")
        if key in scores:
            raise SpecError(
                f"{path}: score[{i}]: duplicate score for {row.model} on {row.benchmark}"
            )
        scores[key] = row.value
        sources[key] = row.source
    return PublishedScores(scores, sources, dict(raw.sources), raw.proxy_benchmark)
