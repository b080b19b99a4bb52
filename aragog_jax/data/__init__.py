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
from aragog_jax.data._synth import (
    DEFAULT_TARGET_ACCURACY,
    SynthParams,
    generate,
    stage_roles,
    viability_stats,
)

__all__ = [
    "DEFAULT_TARGET_ACCURACY",
    "FORMAT",
    "SPLITS",
    "AccuracyDataset",
    "SynthParams",
    "accurate_labels",
    "generate",
    "load_dataset",
    "read_meta",
    "save_dataset",
    "stage_roles",
    "viability_stats",
]
