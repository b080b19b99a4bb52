"""The yardstick router, shared by ``bench/router_yardstick.py`` and ``bench/paper.py``.

The yardstick is the best router the synthetic data allows: it knows each input's latent
difficulty and critical role exactly (never the luck terms) and scores a configuration
by ``P(accurate | difficulty, role)`` (``aragog_jax.data.latent_accuracy``). It is
calibrated with the same procedure, epsilon, confidence and guarantee as a shipped
router's checkpoint records, on the calibration split of the routers' own training draw
(60,000 inputs, seed 1000: ``scripts/train_routers.sh``; the latents are regenerated from
the seed). :func:`calibrated_yardstick` returns it; :meth:`Yardstick.masks` applies its
thresholds to any draw of the same generator (e.g. a shipped dataset, for the simulator).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from aragog_jax.router import ROUTERS_DIR, admitted_masks, calibrate, load_checkpoint

#: The routers' training draw (scripts/train_routers.sh).
NUM_INPUTS, SEED = 60000, 1000
#: Luck draws per role for the yardstick's probabilities.
NUM_SAMPLES = 1 << 15


def training_draw(
    workflow: str,
    family: str,
    num_inputs: int = NUM_INPUTS,
    seed: int = SEED,
    data_dir: Path | None = None,
):
    """``(space, dataset, latents)`` of the routers' training draw for one pair.

    With ``data_dir``, the dataset is read from ``data_dir/<workflow>/<family>`` when an
    earlier call wrote it there (drawing 60,000 inputs takes a while), else drawn and saved.
    """
    from aragog_jax.data import generate, load_dataset, save_dataset, synth_latents
    from aragog_jax.space import load_space

    space = load_space(workflow, family)
    wf = space.spec
    cached = None if data_dir is None else Path(data_dir) / workflow / family
    if cached is not None and (cached / "scores.npy").exists():
        ds = load_dataset(cached, space)
    else:
        ds = generate(space, wf, num_inputs=num_inputs, seed=seed, family=family)
        if cached is not None:
            save_dataset(ds, cached)
    if ds.num_inputs != num_inputs or ds.meta.get("seed") != seed:
        raise ValueError(f"{cached}: holds {ds.num_inputs} inputs of seed {ds.meta.get('seed')}")
    lat = synth_latents(space, wf, num_inputs=num_inputs, seed=seed, family=family)
    return space, ds, lat


def calibration_settings(meta) -> dict:
    """The calibration arguments a checkpoint was made with (``calibrate``'s keywords)."""
    cal, tr = meta.calibration, meta.training
    return {
        "epsilon": float(cal.get("epsilon", 0.02)),
        "confidence": float(cal.get("confidence", 0.95)),
        "guarantee": str(cal.get("guarantee", "cheapest")),
        "policy_fraction": float(tr.get("policy_fraction", 0.4)),
        "seed": int(tr.get("seed", 0)),
    }


def shipped_settings(workflow: str, family: str, root: Path = ROUTERS_DIR) -> dict:
    """:func:`calibration_settings` of the shipped router ``root/<workflow>/<family>.npz``."""
    return calibration_settings(load_checkpoint(root / workflow / f"{family}.npz").meta)


def yardstick_logits(prob: np.ndarray, num_samples: int) -> np.ndarray:
    """Logits of the yardstick's probabilities, kept finite (half a draw from 0 and 1)."""
    eps = 0.5 / num_samples
    p = np.clip(prob, eps, 1.0 - eps)
    return np.log(p / (1.0 - p)).astype(np.float32)


def latent_logits(space, latents, num_samples: int = NUM_SAMPLES) -> np.ndarray:
    """float32[N, C] the yardstick's logits for a draw's latents."""
    from aragog_jax.data import latent_accuracy

    return yardstick_logits(latent_accuracy(space, latents, num_samples=num_samples), num_samples)


@dataclass(frozen=True)
class Yardstick:
    """The calibrated yardstick of one workflow x family.

    ``thresholds``: float[C] logit thresholds (``calibrate``); ``settings``: the
    calibration keywords; ``level`` and ``policy_bound``: the calibration's outcome;
    ``num_samples``: luck draws per role of its probabilities.
    """

    workflow: str
    family: str
    thresholds: np.ndarray
    settings: dict
    level: float
    policy_bound: float
    num_samples: int

    def masks(self, space, latents) -> np.ndarray:
        """bool[N, C] the configurations the yardstick admits for every input of a draw."""
        logits = latent_logits(space, latents, self.num_samples)
        return admitted_masks(logits, self.thresholds, space.c_max)

    def describe(self) -> dict:
        """JSON-able summary (everything but the thresholds)."""
        return {k: v for k, v in asdict(self).items() if k != "thresholds"}


def calibrate_yardstick(
    space, ds, latents, settings: dict, num_samples: int = NUM_SAMPLES
) -> tuple[Yardstick, np.ndarray]:
    """The yardstick calibrated on ``ds``'s calibration split (``ds``, ``latents``: one
    draw, e.g. :func:`training_draw`), and its logits for every input of the draw."""
    cal_i = ds.split_index("calibration")
    logits = latent_logits(space, latents, num_samples)
    cal = calibrate(logits[cal_i], ds.labels(space.c_max)[cal_i], space.c_max, **settings)
    ys = Yardstick(
        space.workflow,
        str(ds.meta.get("family", "")),
        np.asarray(cal.thresholds),
        dict(settings),
        float(cal.level),
        float("nan") if cal.policy_bound is None else float(cal.policy_bound),
        num_samples,
    )
    return ys, logits


def calibrated_yardstick(
    workflow: str,
    family: str,
    settings: dict | None = None,
    num_samples: int = NUM_SAMPLES,
    data_dir: Path | None = None,
) -> Yardstick:
    """The yardstick of one pair, calibrated like the shipped router (``settings``:
    default the shipped checkpoint's, :func:`shipped_settings`) on the calibration split
    of the routers' training draw."""
    settings = settings if settings is not None else shipped_settings(workflow, family)
    space, ds, lat = training_draw(workflow, family, data_dir=data_dir)
    return calibrate_yardstick(space, ds, lat, settings, num_samples)[0]


def dataset_masks(ys: Yardstick, space, workflow_spec, ds, where: str = "dataset") -> np.ndarray:
    """bool[N, C] the yardstick's masks for every input of a dataset ``ds`` made by the
    synthetic generator with its default knobs (e.g. the shipped datasets): the latents
    are regenerated from the seed in its meta, and the draw's skills and threshold must
    match the ones the meta records."""
    from aragog_jax.data import synth_latents

    gen = ds.meta.get("generator") or {}
    seed = ds.meta.get("seed")
    if gen.get("name") != "aragog_jax.synth" or seed is None:
        raise ValueError(
            f"{where}: the yardstick needs a dataset made by aragog_jax.synth (seed in meta.json)"
        )
    lat = synth_latents(
        space, workflow_spec, num_inputs=ds.num_inputs, seed=int(seed), family=ds.meta.get("family")
    )
    skill = gen.get("skill") or {}
    recorded = np.array([skill.get(m, np.nan) for m in space.model_names], dtype=np.float64)
    same = np.allclose(lat.skill, recorded, atol=1e-5) and np.isclose(
        lat.threshold, float(gen.get("threshold", np.nan)), atol=1e-8
    )
    if not same:
        raise ValueError(
            f"{where}: regenerating its draw from seed {seed} gives other skills or threshold than its "
            "meta.json records (made with non-default generator knobs?)"
        )
    return ys.masks(space, lat)
