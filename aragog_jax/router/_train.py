"""Training (optax AdamW, class-weighted BCE, early stopping), calibration and the report.

Pipeline of :func:`fit_router` (what ``python -m aragog_jax.train`` runs):

1. featurise every input; labels ``y[n, c] = accurate_labels(scores)[n, c]``;
2. train on the ``train`` split minus a seeded validation slice (early stopping on the
   validation loss, best parameters kept);
3. round parameters to the storage dtype;
4. calibrate thresholds on the ``calibration`` split (:mod:`._calibrate`);
5. report on the ``test`` split, with the epsilon sweep.

Everything is seeded: the same dataset, config and seed give the same checkpoint.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Protocol

import jax
import jax.numpy as jnp
import msgspec
import numpy as np
import optax

from aragog_jax._provenance import git_sha
from aragog_jax.errors import CheckpointError, DatasetError
from aragog_jax.kernels import routing as K
from aragog_jax.router._calibrate import (
    GUARANTEES,
    Calibration,
    admitted_masks,
    calibrate,
    routing_report,
)
from aragog_jax.router._checkpoint import CheckpointMeta, RouterCheckpoint
from aragog_jax.router._featurize import Featurizer
from aragog_jax.router._model import RouterModelConfig, cast_params, init_params
from aragog_jax.space import ConfigSpace

DEFAULT_SWEEP = (0.005, 0.01, 0.02, 0.05, 0.1)


class LabelledData(Protocol):
    """What training reads of an accuracy dataset (:class:`aragog_jax.data.AccuracyDataset`
    has it); a protocol, so the router never imports the data layer above it."""

    texts: list[str]
    scores: np.ndarray  # float[N, C]
    meta: dict

    def split_index(self, split: str) -> np.ndarray: ...

    def labels(self, c_max: int, tol: float = 0.0) -> np.ndarray: ...

    def check_space(self, space: ConfigSpace, where: str = "dataset") -> None: ...


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and calibration settings (all recorded in the checkpoint)."""

    hidden: tuple[int, ...] = (512,) * 6
    head: str = "dense"
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    max_epochs: int = 60
    patience: int = 6
    val_fraction: float = 0.15
    max_class_weight: float = 10.0
    seed: int = 0
    param_dtype: str = "float32"
    epsilon: float = 0.02
    confidence: float = 0.95
    guarantee: str = "scheduled"
    policy_fraction: float = 0.4
    sweep: tuple[float, ...] = field(default=DEFAULT_SWEEP)

    def __post_init__(self) -> None:
        # Validate at construction (STYLE 8): a bad setting fails before minutes of training.
        if not 0.0 < self.epsilon < 1.0:
            raise CheckpointError(f"epsilon must be in (0, 1), got {self.epsilon}")
        if not 0.0 < self.confidence < 1.0:
            raise CheckpointError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.guarantee not in GUARANTEES:
            raise CheckpointError(
                f"unknown guarantee {self.guarantee!r} (known: {', '.join(GUARANTEES)})"
            )
        if self.param_dtype not in ("float32", "float16"):
            raise CheckpointError(
                f"parameter dtype must be float32 or float16, got {self.param_dtype!r}"
            )
        if any(not 0.0 < e < 1.0 for e in self.sweep):
            raise CheckpointError(f"sweep epsilons must be in (0, 1), got {self.sweep}")
        if (
            self.batch_size < 1
            or self.max_epochs < 1
            or self.patience < 1
            or self.learning_rate <= 0
        ):
            raise CheckpointError(
                "batch_size, max_epochs, patience and learning_rate must be positive"
            )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        d["sweep"] = list(self.sweep)
        return d


def class_weights(
    labels: np.ndarray, max_weight: float, labelled: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-configuration weights so positives and negatives weigh equally (capped).

    ``labelled`` (bool[N, C]) restricts the class rates to the labelled pairs.

    Returns ``(w_pos float32[C], w_neg float32[C])``; a class absent from a column gets 0.
    """
    if labelled is None:
        p = labels.mean(axis=0)
    else:
        p = (labels & labelled).sum(axis=0) / np.maximum(labelled.sum(axis=0), 1)
    w_pos = np.where(p > 0, 0.5 / np.maximum(p, 1e-12), 0.0)
    w_neg = np.where(p < 1, 0.5 / np.maximum(1.0 - p, 1e-12), 0.0)
    return np.minimum(w_pos, max_weight).astype(np.float32), np.minimum(w_neg, max_weight).astype(
        np.float32
    )


def _loss(params, x, y, m, w_pos, w_neg, configs):
    """Class-weighted BCE averaged over the labelled pairs ``m`` (bool[N, C]) only: an
    unlabelled pair's placeholder score must not teach the router anything."""
    logits = K.router_logits(params, x, configs)
    yf = y.astype(jnp.float32)
    bce = optax.sigmoid_binary_cross_entropy(logits, yf)
    w = (yf * w_pos[None, :] + (1.0 - yf) * w_neg[None, :]) * m.astype(jnp.float32)
    return (bce * w).sum() / jnp.maximum(m.sum().astype(jnp.float32), 1.0)


def train_params(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    model_cfg: RouterModelConfig,
    cfg: TrainConfig,
    configs: np.ndarray | None = None,
    progress: bool = True,
    m_train: np.ndarray | None = None,
    m_val: np.ndarray | None = None,
) -> tuple[dict, dict]:
    """Train with AdamW on class-weighted BCE; stop when validation loss stalls.

    Args:
      x_train, x_val: float32[N, D] features; y_train, y_val: bool[N, C] labels.
      model_cfg: architecture; cfg: optimisation settings.
      configs: int32[C, S] for the factorised head.
      progress: show a tqdm bar on stderr.
      m_train, m_val: bool[N, C] labelled pairs (None: all); the loss and the class
        weights use labelled pairs only.

    Returns:
      ``(params, history)``: the best parameters (NumPy) and a dict with per-epoch losses,
      ``best_epoch``, ``best_val_loss``, ``epochs`` and ``seconds``.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    m_train = np.ones(y_train.shape, bool) if m_train is None else np.asarray(m_train, bool)
    m_val = np.ones(y_val.shape, bool) if m_val is None else np.asarray(m_val, bool)
    w_pos, w_neg = class_weights(y_train, cfg.max_class_weight, m_train)
    params = init_params(model_cfg, jax.random.PRNGKey(cfg.seed))
    opt = optax.adamw(cfg.learning_rate, weight_decay=cfg.weight_decay)
    opt_state = opt.init(params)
    cfg_arr = None if configs is None else jnp.asarray(configs, jnp.int32)
    w_pos_j, w_neg_j = jnp.asarray(w_pos), jnp.asarray(w_neg)

    def step(params, opt_state, xb, yb, mb):
        loss, grads = jax.value_and_grad(_loss)(params, xb, yb, mb, w_pos_j, w_neg_j, cfg_arr)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def step_standard(*args):
        # optax mixes its int32 step count with floats; that is its business, not ours, so
        # its update is traced under standard promotion even when a caller runs strict.
        with jax.numpy_dtype_promotion("standard"):
            return step(*args)

    step_standard = jax.jit(step_standard, donate_argnums=(0, 1))
    val_loss_fn = jax.jit(lambda p, x, y, m: _loss(p, x, y, m, w_pos_j, w_neg_j, cfg_arr))

    n = x_train.shape[0]
    bs = min(cfg.batch_size, n)
    num_batches = max(1, n // bs)
    rng = np.random.default_rng(cfg.seed)
    x_val_j, y_val_j, m_val_j = jnp.asarray(x_val), jnp.asarray(y_val), jnp.asarray(m_val)
    best = (np.inf, 0, jax.tree.map(np.asarray, params))
    history: dict = {"train_loss": [], "val_loss": []}
    bar = tqdm(
        range(cfg.max_epochs),
        desc="train",
        unit="epoch",
        disable=not progress,
        file=sys.stderr,
        leave=False,
    )
    for epoch in bar:
        perm = rng.permutation(n)[: num_batches * bs].reshape(num_batches, bs)
        losses = []
        for idx in perm:
            params, opt_state, loss = step_standard(
                params, opt_state, x_train[idx], y_train[idx], m_train[idx]
            )
            losses.append(loss)
        train_loss = float(np.mean([float(v) for v in losses]))
        val_loss = (
            float(val_loss_fn(params, x_val_j, y_val_j, m_val_j)) if x_val.shape[0] else train_loss
        )
        history["train_loss"].append(round(train_loss, 5))
        history["val_loss"].append(round(val_loss, 5))
        if val_loss < best[0] - 1e-5:
            best = (val_loss, epoch, jax.tree.map(np.asarray, params))
        bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}", best=best[1])
        if epoch - best[1] >= cfg.patience:
            break
    bar.close()
    history.update(
        best_epoch=int(best[1]),
        best_val_loss=float(best[0]),
        epochs=len(history["train_loss"]),
        seconds=round(time.perf_counter() - t0, 2),
    )
    return best[2], history


def logits_np(
    params: dict, x: np.ndarray, configs: np.ndarray | None = None, batch: int = 4096
) -> np.ndarray:
    """float32[N, C] logits, in batches, through one jitted function."""
    fn = jax.jit(K.router_logits)
    cfg_arr = None if configs is None else jnp.asarray(configs, jnp.int32)
    out = [
        np.asarray(fn(params, jnp.asarray(x[lo : lo + batch]), cfg_arr))
        for lo in range(0, x.shape[0], batch)
    ]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


@dataclass
class FitResult:
    checkpoint: RouterCheckpoint
    calibration: Calibration
    report: dict


def fit_router(
    dataset: LabelledData,
    space: ConfigSpace,
    featurizer: Featurizer,
    cfg: TrainConfig = TrainConfig(),
    *,
    family: str | None = None,
    progress: bool = True,
    dataset_path: str | None = None,
) -> FitResult:
    """Train, calibrate and evaluate a router for ``space`` on ``dataset``.

    Raises:
      DatasetError: the dataset belongs to another space or a split is empty.
    """
    dataset.check_space(space)
    t0 = time.perf_counter()
    idx = {s: dataset.split_index(s) for s in ("train", "calibration", "test")}
    for s, i in idx.items():
        if i.size == 0:
            raise DatasetError(
                f"dataset split {s!r} is empty; the router needs train, calibration and test inputs"
            )
    labels = dataset.labels(space.c_max)
    lab = dataset.labelled_mask()
    feats = featurizer(dataset.texts)
    t_feat = time.perf_counter() - t0

    rng = np.random.default_rng(cfg.seed)
    tr = rng.permutation(idx["train"])
    num_val = int(round(cfg.val_fraction * tr.size))
    val_i, tr_i = np.sort(tr[:num_val]), np.sort(tr[num_val:])
    model_cfg = RouterModelConfig(
        feature_dim=featurizer.dim,
        num_configs=space.num_configs,
        hidden=cfg.hidden,
        head=cfg.head,
        num_stages=space.num_stages,
        num_models=space.num_models,
    )
    configs = space.configs if cfg.head == "factorised" else None
    params, history = train_params(
        feats[tr_i],
        labels[tr_i],
        feats[val_i],
        labels[val_i],
        model_cfg,
        cfg,
        configs,
        progress,
        m_train=lab[tr_i],
        m_val=lab[val_i],
    )
    params = cast_params(params, cfg.param_dtype)

    cal_i = idx["calibration"]
    cal_logits = logits_np(params, feats[cal_i], configs)
    cal_kw = dict(
        confidence=cfg.confidence,
        guarantee=cfg.guarantee,
        policy_fraction=cfg.policy_fraction,
        seed=cfg.seed,
        labelled=lab[cal_i],
    )
    cal = calibrate(cal_logits, labels[cal_i], space.c_max, epsilon=cfg.epsilon, **cal_kw)
    test_logits = logits_np(params, feats[idx["test"]], configs)
    y_test, s_test = labels[idx["test"]], dataset.scores[idx["test"]]
    lab_test = lab[idx["test"]]
    test = routing_report(
        admitted_masks(test_logits, cal.thresholds, space.c_max),
        s_test,
        y_test,
        space.c_max,
        lab_test,
    )
    oracle = routing_report(y_test & lab_test, s_test, y_test, space.c_max, lab_test)
    sweep = []
    for eps in cfg.sweep:
        c2 = calibrate(cal_logits, labels[cal_i], space.c_max, epsilon=eps, **cal_kw)
        r = routing_report(
            admitted_masks(test_logits, c2.thresholds, space.c_max),
            s_test,
            y_test,
            space.c_max,
            lab_test,
        )
        sweep.append(
            {
                "epsilon": eps,
                **{
                    k: r[k]
                    for k in (
                        "flexibility_kept",
                        "delta_cheapest_points",
                        "delta_random_points",
                        "admitted_mean",
                    )
                },
            }
        )
    report = {
        "workflow": space.workflow,
        "family": family or dataset.meta.get("family"),
        "dataset": dataset_path,
        "num_configs": space.num_configs,
        "splits": {s: int(i.size) for s, i in idx.items()},
        "featurizer": {"name": featurizer.name, **featurizer.config()},
        "model": model_cfg.to_dict(),
        "train": {k: v for k, v in history.items() if k not in ("train_loss", "val_loss")},
        "calibration": cal.to_dict() | {"level_scan": cal.info["level_scan"][-3:]},
        "test": test,
        "oracle": {
            k: oracle[k] for k in ("admitted_mean", "acc_cheapest", "delta_cheapest_points")
        },
        "epsilon_sweep": sweep,
        "featurize_seconds": round(t_feat, 3),
        "seconds": round(time.perf_counter() - t0, 2),
        "git_sha": git_sha(),
    }
    meta = CheckpointMeta(
        workflow=space.workflow,
        family=family or dataset.meta.get("family"),
        fingerprint=space.fingerprint(),
        stage_names=list(space.stage_names),
        model_names=list(space.model_names),
        num_configs=space.num_configs,
        featurizer=featurizer.name,
        featurizer_config=featurizer.config(),
        model=model_cfg.to_dict(),
        param_dtype=cfg.param_dtype,
        calibration=cal.to_dict()
        | {
            "base_thresholds": cal.base_thresholds.tolist(),
            "config_bound": np.round(cal.config_bound, 5).tolist(),
        },
        training=cfg.to_dict() | {"history": history},
        report=report,
        git_sha=report["git_sha"],
        workflow_spec=msgspec.to_builtins(space.spec) if space.spec is not None else None,
        model_pool=[msgspec.to_builtins(m) for m in space.pool] if space.spec is not None else None,
    )
    ckpt = RouterCheckpoint(meta=meta, params=params, thresholds=cal.thresholds)
    return FitResult(checkpoint=ckpt, calibration=cal, report=report)


def plot_sweep(report: dict, path: str) -> None:
    """Epsilon vs flexibility kept (and realised accuracy change) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = report["epsilon_sweep"]
    eps = [r["epsilon"] for r in sweep]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    ax.plot(
        eps,
        [100 * r["flexibility_kept"] for r in sweep],
        "o-",
        label="flexibility kept (% of oracle)",
    )
    ax.set_xscale("log")
    ax.set_xlabel("target epsilon")
    ax.set_ylabel("flexibility kept (%)")
    ax2 = ax.twinx()
    ax2.plot(
        eps,
        [r["delta_cheapest_points"] for r in sweep],
        "s--",
        color="tab:red",
        label="accuracy vs c_max, cheapest (pts)",
    )
    ax2.plot(
        eps,
        [r["delta_random_points"] for r in sweep],
        "^:",
        color="tab:orange",
        label="accuracy vs c_max, random (pts)",
    )
    ax2.set_ylabel("accuracy change vs c_max (points)")
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=7, loc="lower right")
    ax.set_title(f"{report['workflow']} / {report['family']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
