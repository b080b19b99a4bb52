"""Train, calibrate and evaluate an accuracy router.

    python -m aragog_jax.train --workflow W --dataset DIR --out CKPT [--family F] [options]
    python -m aragog_jax.train --evaluate CKPT --dataset DIR [--split test]

Reads an accuracy dataset directory (``aragog_jax.data`` format), trains the MLP router
on its ``train`` split (early stopping on a validation slice of it), calibrates the
thresholds on the ``calibration`` split for the target ``--epsilon`` and evaluates on the
``test`` split. Writes:

* ``CKPT`` (``.npz``): parameters, featuriser, space fingerprint, thresholds, calibration
  and training metadata (``aragog_jax.router`` documents the format);
* ``CKPT`` with ``.report.json``: the report (also embedded in the checkpoint);
* ``CKPT`` with ``.sweep.png``: epsilon vs flexibility kept and realised accuracy.

Prints progress on stderr and a summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from aragog_jax._cli import run_cli
from aragog_jax._files import atomic_write
from aragog_jax.errors import DatasetError


def _ints(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from exc
    return vals


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def summary_lines(report: dict) -> list[str]:
    """Human-readable summary of a training report."""
    t, c = report["test"], report["calibration"]
    lines = [
        f"router    {report['workflow']} / {report['family']}: {report['num_configs']} configurations, "
        f"splits {report['splits']}",
        f"training  {report['train']['epochs']} epochs (best {report['train']['best_epoch']}, "
        f"val loss {report['train']['best_val_loss']:.4f}) in {report['train']['seconds']:.1f} s",
        f"calibrate eps={c['epsilon']} confidence={c['confidence']} guarantee={c['guarantee']}: "
        f"{c['num_admissible_configs']} admissible configurations, "
        f"{'logit threshold' if c['guarantee'] == 'scheduled' else 'level'} {c['level']:.4g}, policy bound "
        f"{c['policy_bound'] if c['policy_bound'] is None else round(c['policy_bound'], 4)}",
        f"test      accuracy vs c_max: cheapest admitted {t['delta_cheapest_points']:+.2f} pts, random admitted "
        f"{t['delta_random_points']:+.2f} pts (c_max {100 * t['acc_cmax']:.1f}%)",
        f"          flexibility kept {100 * t['flexibility_kept']:.1f}% of the oracle; admitted "
        f"{t['admitted_mean']:.1f} / oracle {t['oracle_mean']:.1f} configurations on average",
        "sweep     "
        + "  ".join(
            f"eps={r['epsilon']}: flex {100 * r['flexibility_kept']:.0f}% / {r['delta_cheapest_points']:+.2f} pts"
            for r in report["epsilon_sweep"]
        ),
    ]
    hidden = report["model"].get("hidden") or []
    if report["splits"]["train"] < 6000 and len(hidden) > 1:
        lines.append(
            f"hint      {report['splits']['train']:,} training inputs: one hidden layer (--hidden 64) kept "
            "more flexibility than six below 10k labelled inputs (bench/results/guarantee.md)"
        )
    if c["num_admissible_configs"] == 0 and c["guarantee"] == "scheduled":
        lines.append(
            f"warning   no configuration besides c_max passed the bound: at eps={c['epsilon']} the "
            f"calibration split needs at least {c['min_policy_inputs']} inputs (it has {c['num_policy_inputs']}) "
            f"and few enough errors; use a larger dataset or a larger --epsilon"
        )
    elif c["num_admissible_configs"] == 0:
        lines.append(
            f"warning   no configuration besides c_max passed the bound: at eps={c['epsilon']} a configuration needs "
            f"at least {c['min_admitted_inputs']} admitted, all-accurate calibration inputs among "
            f"{c['num_config_inputs']}; use a larger dataset (e.g. python -m aragog_jax.synth --num-inputs 60000) "
            f"or a larger --epsilon"
        )
    return lines


def evaluate(ckpt: str | Path, dataset_dir: str | Path, split: str = "all") -> dict:
    """Route a labelled dataset through a checkpoint; the routing report of its rows."""
    import numpy as np

    from aragog_jax.data import load_dataset
    from aragog_jax.router import Router, routing_report

    router = Router.load(ckpt)
    ds = load_dataset(dataset_dir, router.space)
    rows = np.arange(ds.num_inputs) if split == "all" else ds.split_index(split)
    mask = router.compile((512,)).route_texts([ds.texts[i] for i in rows]).mask
    labels = ds.labels(router.space.c_max)[rows]
    report = routing_report(mask, ds.scores[rows], labels, router.space.c_max)
    return {"router": str(ckpt), "dataset": str(dataset_dir), "split": split, **report}


def main(argv: Sequence[str] | None = None) -> int:
    from aragog_jax.router import GUARANTEES, TrainConfig

    d = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="python -m aragog_jax.train",
        description=(
            "Train an accuracy router on an accuracy dataset, calibrate its thresholds for a target error "
            "rate epsilon with a finite-sample guarantee, evaluate on the test split, and write a versioned "
            "checkpoint plus a JSON report and an epsilon-sweep plot."
        ),
    )
    parser.add_argument(
        "--workflow",
        help="workflow TOML file, or the name of a shipped workflow (required to train)",
    )
    parser.add_argument(
        "--dataset",
        required=True,
        help="accuracy dataset directory (meta.json, inputs.jsonl, scores.npy)",
    )
    parser.add_argument(
        "--out",
        help="checkpoint path (.npz); the report and plot are written beside it (required to train)",
    )
    parser.add_argument(
        "--evaluate",
        metavar="CKPT",
        help="instead of training, evaluate an existing checkpoint on --dataset (every split, or --split) and print "
        "its report as JSON",
    )
    parser.add_argument(
        "--split",
        choices=("train", "calibration", "test", "all"),
        default="all",
        help="--evaluate: rows to use (default %(default)s)",
    )
    parser.add_argument("--family", help="model family (default: the dataset's family)")
    parser.add_argument("--models", help="model catalog TOML (default: the shipped one)")
    g = parser.add_argument_group("featuriser")
    g.add_argument(
        "--featurizer",
        choices=("hashed-ngram", "openai-embeddings"),
        default="hashed-ngram",
        help="default %(default)s",
    )
    g.add_argument(
        "--feature-dim",
        type=int,
        default=1024,
        help="hashed-ngram dimension / expected embedding dimension (default %(default)s)",
    )
    g.add_argument(
        "--word-ngrams",
        type=_ints,
        default=(1,),
        help="hashed-ngram word n-gram orders, 1 and/or 2 (default 1)",
    )
    g.add_argument(
        "--char-ngrams",
        type=_ints,
        default=(),
        help="hashed-ngram character n-gram orders, e.g. 3,5 (default none)",
    )
    g.add_argument(
        "--embeddings-url", help="openai-embeddings: base URL, e.g. http://localhost:8000/v1"
    )
    g.add_argument("--embeddings-model", help="openai-embeddings: model name")
    g = parser.add_argument_group("model and optimisation")
    g.add_argument(
        "--hidden",
        type=_ints,
        default=d.hidden,
        help="hidden widths, comma-separated (default six layers of 512)",
    )
    g.add_argument(
        "--head",
        choices=("dense", "factorised"),
        default=d.head,
        help="output head (default %(default)s)",
    )
    g.add_argument(
        "--lr",
        type=float,
        default=d.learning_rate,
        help="AdamW learning rate (default %(default)s)",
    )
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="default %(default)s")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="default %(default)s")
    g.add_argument("--max-epochs", type=int, default=d.max_epochs, help="default %(default)s")
    g.add_argument(
        "--patience",
        type=int,
        default=d.patience,
        help="early-stopping patience in epochs (default %(default)s)",
    )
    g.add_argument(
        "--param-dtype",
        choices=("float32", "float16"),
        default=d.param_dtype,
        help="stored parameter dtype (default %(default)s)",
    )
    g.add_argument("--seed", type=int, default=d.seed, help="default %(default)s")
    g = parser.add_argument_group("calibration")
    g.add_argument(
        "--epsilon", type=float, default=d.epsilon, help="target error rate (default %(default)s)"
    )
    g.add_argument(
        "--confidence",
        type=float,
        default=d.confidence,
        help="confidence of the bound (default %(default)s)",
    )
    g.add_argument(
        "--guarantee",
        choices=GUARANTEES,
        default=d.guarantee,
        help="scheduled: whatever admitted configuration the scheduler runs (every admitted one at once, "
        "risk control over nested sets on the whole calibration split); config: each admitted configuration "
        "alone; cheapest: config plus the cheapest admitted one; any: config plus every admitted one "
        "(default %(default)s)",
    )
    g.add_argument(
        "--sweep",
        type=_floats,
        default=d.sweep,
        help="epsilons of the report's sweep (default %(default)s)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    from aragog_jax.data import load_dataset, read_meta
    from aragog_jax.router import (
        EmbeddingsFeaturizer,
        HashedNgramFeaturizer,
        fit_router,
        plot_sweep,
        save_checkpoint,
        strict_json,
    )
    from aragog_jax.space import load_space
    from aragog_jax.spec import DEFAULT_MODELS

    dataset_dir = Path(args.dataset)
    meta = read_meta(dataset_dir)  # one line for a missing, incomplete or unreadable dataset
    if args.evaluate:
        report = evaluate(args.evaluate, dataset_dir, args.split)
        print(json.dumps(report, indent=2))
        return 0
    if not args.workflow or not args.out:
        raise DatasetError("training needs --workflow and --out (or pass --evaluate CKPT)")
    family = args.family or meta.get("family")
    if not family:
        raise DatasetError(f"--dataset {dataset_dir}: meta.json names no family; pass --family")
    space = load_space(args.workflow, family, models=args.models or DEFAULT_MODELS)
    ds = load_dataset(dataset_dir, space)
    if args.featurizer == "hashed-ngram":
        feat = HashedNgramFeaturizer(
            dim=args.feature_dim, word_ngrams=args.word_ngrams, char_ngrams=args.char_ngrams
        )
    else:
        if not args.embeddings_url or not args.embeddings_model:
            raise DatasetError(
                "--featurizer openai-embeddings needs --embeddings-url and --embeddings-model"
            )
        feat = EmbeddingsFeaturizer(
            base_url=args.embeddings_url, model=args.embeddings_model, dim=args.feature_dim
        )
    cfg = TrainConfig(
        hidden=args.hidden,
        head=args.head,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        max_epochs=args.max_epochs,
        patience=args.patience,
        seed=args.seed,
        param_dtype=args.param_dtype,
        epsilon=args.epsilon,
        confidence=args.confidence,
        guarantee=args.guarantee,
        sweep=args.sweep,
    )
    result = fit_router(
        ds, space, feat, cfg, family=family, progress=not args.quiet, dataset_path=str(dataset_dir)
    )
    out = save_checkpoint(result.checkpoint, args.out)
    stem = out.with_suffix("")
    report_path = stem.with_name(stem.name + ".report.json")
    atomic_write(
        report_path,
        json.dumps(strict_json(result.report), indent=2, sort_keys=True, allow_nan=False) + "\n",
    )
    plot_path = stem.with_name(stem.name + ".sweep.png")
    plot_sweep(result.report, str(plot_path))
    for line in summary_lines(result.report):
        print(line)
    print(
        f"wrote     {out} ({out.stat().st_size / 1024:.0f} KiB), {report_path.name}, {plot_path.name}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
