"""The yardstick router that bench/router_yardstick.py and bench/paper.py share
(``bench/_yardstick.py``): calibrated like a shipped router, applied to any draw of the
generator by regenerating its latents from the seed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from aragog_jax.data import generate, load_dataset, save_dataset, synth_latents
from aragog_jax.space import load_space
from aragog_jax.spec import load_workflow, resolve_workflow

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench._yardstick import (  # noqa: E402
    calibrate_yardstick,
    dataset_masks,
    shipped_settings,
)

WF, FAM = "self_refine_squad", "llama"
SETTINGS = {
    "epsilon": 0.05,
    "confidence": 0.9,
    "guarantee": "scheduled",
    "policy_fraction": 0.4,
    "seed": 0,
}


@pytest.fixture(scope="module")
def draw():
    workflow, space = load_workflow(resolve_workflow(WF)), load_space(WF, FAM)
    ds = generate(space, workflow, 4000, seed=21, family=FAM)
    lat = synth_latents(space, workflow, 4000, seed=21, family=FAM)
    return workflow, space, ds, lat


def test_calibrated_yardstick_keeps_its_bound_and_admits_more_than_c_max(draw):
    _, space, ds, lat = draw
    ys, logits = calibrate_yardstick(space, ds, lat, SETTINGS, num_samples=1 << 12)
    assert logits.shape == (ds.num_inputs, space.num_configs)
    assert ys.policy_bound <= SETTINGS["epsilon"] and ys.settings == SETTINGS
    mask = ys.masks(space, lat)
    assert mask[:, space.c_max].all() and mask.sum(axis=1).mean() > 2  # flexible, not c_max only
    # On the test split (never calibrated on) some admitted configuration is inaccurate on
    # at most about epsilon of the inputs.
    test = ds.split_index("test")
    risk = (mask[test] & ~ds.labels(space.c_max)[test]).any(axis=1).mean()
    assert risk <= SETTINGS["epsilon"] + 0.02
    assert "thresholds" not in ys.describe() and ys.describe()["level"] == ys.level


def test_dataset_masks_regenerate_the_latents_and_refuse_another_draw(draw, tmp_path):
    workflow, space, ds, lat = draw
    ys, _ = calibrate_yardstick(space, ds, lat, SETTINGS, num_samples=1 << 12)
    out = save_dataset(generate(space, workflow, 300, seed=4, family=FAM), tmp_path / "ds")
    saved = load_dataset(out, space)
    want = ys.masks(space, synth_latents(space, workflow, 300, seed=4, family=FAM))
    np.testing.assert_array_equal(dataset_masks(ys, space, workflow, saved), want)
    meta = json.loads((out / "meta.json").read_text())
    meta["generator"]["threshold"] += 0.1  # as if drawn with other knobs
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="other skills or threshold"):
        dataset_masks(ys, space, workflow, load_dataset(out, space), where="tampered")


def test_shipped_settings_are_the_checkpoints_calibration():
    s = shipped_settings(WF, FAM)
    assert s["guarantee"] == "scheduled" and s["epsilon"] == 0.02 and s["confidence"] == 0.95
