"""The shipped routers load against the shipped spaces and meet the accuracy target in their reports.

If a workflow or the model catalog changes (a new token count reorders configurations),
this fails: regenerate with ``scripts/train_routers.sh``.
"""

from __future__ import annotations

import numpy as np
import pytest

from aragog_jax.router import load_checkpoint, shipped_router
from aragog_jax.space import load_space
from aragog_jax.spec import shipped_workflows

FAMILIES = ("qwen", "llama", "mixed")


def _workflow_names():
    return sorted(p.stem for p in shipped_workflows())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("workflow", _workflow_names())
def test_shipped_router_matches_space_and_target(workflow, family):
    path = shipped_router(workflow, family)
    assert path.is_file(), f"missing {path}; run scripts/train_routers.sh"
    ck = load_checkpoint(path)
    space = load_space(workflow, family)
    ck.check_space(space)
    assert ck.thresholds[space.c_max] == -np.inf
    assert np.isfinite(ck.thresholds).sum() > 1  # admits more than c_max
    test = ck.meta.report["test"]
    assert test["delta_cheapest_points"] >= -2.0
    assert ck.meta.calibration["epsilon"] == 0.02 and ck.meta.calibration["policy_bound"] <= 0.02
    assert path.stat().st_size < 400_000
