"""Accuracy datasets (format, label rule) and the synthetic generator."""

from aragog_jax.data._dataset import (
    FORMAT,
    SPLITS,
    AccuracyDataset,
    accurate_labels,
    load_dataset,
    save_dataset,
)

__all__ = ["FORMAT", "SPLITS", "AccuracyDataset", "accurate_labels", "load_dataset", "save_dataset"]
