"""Shared simulator fixtures: one small seeded self-refine/qwen dataset and its setup."""

from __future__ import annotations

import pytest

from aragog_jax.data import save_dataset
from aragog_jax.data._synth import generate
from aragog_jax.sim import load_setup
from aragog_jax.space import build_space
from aragog_jax.spec import family_pool, load_models, load_workflow
from aragog_jax.spec._load import WORKFLOWS_DIR

WF = "self_refine_humaneval"


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory):
    catalog = load_models()
    wf = load_workflow(WORKFLOWS_DIR / f"{WF}.toml", catalog)
    space = build_space(wf, family_pool(catalog, "qwen"))
    ds = generate(space, wf, num_inputs=120, seed=3, family="qwen")
    out = tmp_path_factory.mktemp("ds") / WF / "qwen"
    save_dataset(ds, out)
    return out


@pytest.fixture(scope="session")
def setup(dataset_dir):
    return load_setup(WF, "qwen", dataset=dataset_dir)
