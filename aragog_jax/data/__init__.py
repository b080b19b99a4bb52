"""Accuracy datasets (format, label rule), the synthetic generator and the labeller."""

from aragog_jax.data._dataset import (
    FORMAT,
    SPLITS,
    AccuracyDataset,
    accurate_labels,
    load_dataset,
    read_meta,
    save_dataset,
)
from aragog_jax.data._inputs import load_inputs, load_scorer
from aragog_jax.data._label import Labeller, LabelSettings
from aragog_jax.data._label_state import EngineTarget
from aragog_jax.data._latents import SynthLatents, latent_accuracy, synth_latents
from aragog_jax.data._scores import (
    DEFAULT_PUBLISHED_SCORES,
    PublishedScores,
    Ratio,
    load_published_scores,
)
from aragog_jax.data._synth import generate, viability_stats
from aragog_jax.data._synth_model import DEFAULT_TARGET_ACCURACY, SynthParams, stage_roles

__all__ = [
    "DEFAULT_PUBLISHED_SCORES",
    "DEFAULT_TARGET_ACCURACY",
    "FORMAT",
    "SPLITS",
    "AccuracyDataset",
    "EngineTarget",
    "LabelSettings",
    "Labeller",
    "PublishedScores",
    "Ratio",
    "SynthLatents",
    "SynthParams",
    "accurate_labels",
    "generate",
    "latent_accuracy",
    "load_published_scores",
    "load_dataset",
    "load_inputs",
    "load_scorer",
    "read_meta",
    "save_dataset",
    "stage_roles",
    "synth_latents",
    "viability_stats",
]
