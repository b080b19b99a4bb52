"""Accuracy router (DESIGN §4): featurisers, MLP model, training, calibration, batch routing.

Public names:

* :class:`Router` / :class:`RouteResult` -- load a checkpoint against a space, compile per
  bucket, route texts or features to admission masks; :class:`TextRouter` -- the protocol
  the server and the simulator use (``Router`` satisfies it).
* :class:`HashedNgramFeaturizer`, :class:`EmbeddingsFeaturizer`, :func:`make_featurizer`.
* :class:`RouterModelConfig`, :class:`TrainConfig`, :func:`fit_router` -- training.
* :func:`calibrate`, :func:`clopper_pearson_upper`, :func:`routing_report` -- calibration.
* :func:`load_checkpoint`, :func:`save_checkpoint`, :data:`CHECKPOINT_FORMAT`.
* :data:`ROUTERS_DIR`, :func:`shipped_router` -- the shipped checkpoints.
* :class:`BatchRouter` -- a NumPy batch function for Ray Data ``map_batches`` jobs.
"""

from pathlib import Path

from aragog_jax.router._batch import BatchRouter
from aragog_jax.router._calibrate import (
    GUARANTEES,
    Calibration,
    admitted_masks,
    calibrate,
    clopper_pearson_upper,
    routing_report,
)
from aragog_jax.router._checkpoint import FORMAT as CHECKPOINT_FORMAT
from aragog_jax.router._checkpoint import (
    CheckpointMeta,
    RouterCheckpoint,
    load_checkpoint,
    save_checkpoint,
    strict_json,
)
from aragog_jax.router._featurize import (
    EmbeddingsFeaturizer,
    Featurizer,
    HashedNgramFeaturizer,
    make_featurizer,
)
from aragog_jax.router._model import RouterModelConfig, init_params
from aragog_jax.router._protocol import TextRouter
from aragog_jax.router._router import DEFAULT_BUCKETS, Router, RouteResult
from aragog_jax.router._train import FitResult, TrainConfig, fit_router, plot_sweep

#: Shipped checkpoints: ``profiles/routers/<workflow>/<family>.npz``.
ROUTERS_DIR = Path(__file__).resolve().parents[2] / "profiles" / "routers"


def shipped_router(workflow: str, family: str) -> Path:
    """Path of the shipped checkpoint for a shipped workflow and family."""
    return ROUTERS_DIR / workflow / f"{family}.npz"


__all__ = [
    "BatchRouter",
    "CHECKPOINT_FORMAT",
    "DEFAULT_BUCKETS",
    "GUARANTEES",
    "ROUTERS_DIR",
    "Calibration",
    "CheckpointMeta",
    "EmbeddingsFeaturizer",
    "Featurizer",
    "FitResult",
    "HashedNgramFeaturizer",
    "RouteResult",
    "Router",
    "RouterCheckpoint",
    "RouterModelConfig",
    "TextRouter",
    "TrainConfig",
    "admitted_masks",
    "calibrate",
    "clopper_pearson_upper",
    "fit_router",
    "init_params",
    "load_checkpoint",
    "make_featurizer",
    "plot_sweep",
    "routing_report",
    "save_checkpoint",
    "strict_json",
    "shipped_router",
]
