"""Small synthetic datasets and trained routers shared by the router tests (built once per session)."""

from __future__ import annotations

import numpy as np
import pytest

from aragog_jax.data import generate, save_dataset
from aragog_jax.router import HashedNgramFeaturizer, TrainConfig, fit_router, save_checkpoint
from aragog_jax.space import load_space
from aragog_jax.spec import load_models, load_workflow, resolve_workflow

WORKFLOW = "self_refine_humaneval"
FAMILY = "qwen"


def make_dataset(
    workflow: str = WORKFLOW, family: str = FAMILY, num_inputs: int = 3000, seed: int = 0
):
    space = load_space(workflow, family)
    wf = load_workflow(resolve_workflow(workflow), load_models())
    return space, generate(space, wf, num_inputs=num_inputs, seed=seed, family=family)


def small_config(**kw) -> TrainConfig:
    base = dict(
        hidden=(16, 16), max_epochs=6, patience=3, batch_size=128, sweep=(0.05, 0.1), epsilon=0.1
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """(space, dataset, dataset_dir, checkpoint_path, fit_result) for a small router at epsilon 0.1."""
    root = tmp_path_factory.mktemp("router")
    space, ds = make_dataset()
    ds_dir = save_dataset(ds, root / "dataset")
    res = fit_router(
        ds, space, HashedNgramFeaturizer(dim=256), small_config(), family=FAMILY, progress=False
    )
    ckpt = save_checkpoint(res.checkpoint, root / "router.npz")
    return space, ds, ds_dir, ckpt, res


@pytest.fixture
def rng():
    return np.random.default_rng(0)
