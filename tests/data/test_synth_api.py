"""Quick checks of the generator API (the full suite is in test_synth.py)."""

from __future__ import annotations

import numpy as np

from aragog_jax.data import AccuracyDataset, generate
from aragog_jax.space import load_space
from aragog_jax.space._load import resolve_workflow
from aragog_jax.spec import load_workflow


def test_generate_small_dataset():
    wf = load_workflow(resolve_workflow("self_refine_humaneval"))
    space = load_space("self_refine_humaneval", "qwen")
    ds = generate(space, wf, num_inputs=200, seed=0, family="qwen")
    assert isinstance(ds, AccuracyDataset)
    assert ds.scores.shape == (200, space.num_configs)
    assert ds.tokens.shape == (200, space.num_stages, 2)
    assert abs(ds.scores[:, space.c_max].mean() - 0.90) <= 0.005
    assert set(np.unique(ds.scores).tolist()) <= {0.0, 1.0}
