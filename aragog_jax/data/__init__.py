"""Accuracy datasets (format, label rule) and the synthetic generator."""

from aragog_jax.data._dataset import (
    FORMAT,
    SPLITS,
    AccuracyDataset,
    accurate_labels,
    load_dataset,
    read_meta,
    save_dataset,
)
from aragog_jax.data._scores import (
    DEFAULT_PUBLISHED_SCORES,
    PublishedScores,
    Ratio,
    load_published_scores,
)
from aragog_jax.data._synth import (
    DEFAULT_TARGET_ACCURACY,
    SynthParams,
    generate,
    stage_roles,
    viability_stats,
)

__all__ = [
    "DEFAULT_PUBLISHED_SCORES",
    "DEFAULT_TARGET_ACCURACY",
    "FORMAT",
    "SPLITS",
    "AccuracyDataset",
    "PublishedScores",
    "Ratio",
    "SynthParams",
    "accurate_labels",
    "generate",
    "load_published_scores",
    "load_dataset",
    "read_meta",
    "save_dataset",
    "stage_roles",
    "viability_stats",
]
