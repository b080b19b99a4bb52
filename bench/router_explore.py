"""What moves a router's flexibility: width, depth, featuriser n-grams and heads.

    python bench/router_explore.py [--pairs W/F,...] [--variants NAME,...] [--max-epochs N]
        [--out bench/results/router_explore.json] [--ckpt-dir DIR]

For each workflow/family pair it draws the shipped routers' training data (60,000 inputs,
seed 1000, the same draw as ``scripts/train_routers.sh``; ``bench/router_yardstick.py``), then trains, calibrates
(epsilon 0.02, confidence 0.95, guarantee ``cheapest``) and evaluates one router per
variant on the test split, and times one request's routing (featurise one text + the
compiled bucket-1 kernel, ``Router.route_texts``) as p50 over repeated calls. With the
yardstick (``bench/router_yardstick.py``) in the same output it reports each variant's
flexibility as a share of the yardstick's. Results go to JSON (git SHA) after every
variant, so an interrupted run keeps what it measured, and a plot of flexibility kept vs
routing p50 beside it.

The machine is shared: routing p50s from one run are comparable with each other only.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aragog_jax._provenance import git_sha  # noqa: E402
from aragog_jax.router import (  # noqa: E402
    HashedNgramFeaturizer,
    TrainConfig,
    fit_router,
    save_checkpoint,
)
from bench._yardstick import training_draw  # noqa: E402
from bench.router_yardstick import routing_p50_ms  # noqa: E402


@dataclass(frozen=True)
class Variant:
    """One router design: architecture, featuriser and learning rate."""

    hidden: tuple[int, ...] = (64,) * 6
    head: str = "dense"
    word_ngrams: tuple[int, ...] = (1,)
    char_ngrams: tuple[int, ...] = ()
    dim: int = 1024
    learning_rate: float = 3e-4
    max_class_weight: float = 10.0
    weight_decay: float = 1e-4
    seed: int = 0

    def featurizer(self) -> HashedNgramFeaturizer:
        return HashedNgramFeaturizer(
            dim=self.dim, word_ngrams=self.word_ngrams, char_ngrams=self.char_ngrams
        )

    def train_config(self, max_epochs: int, patience: int) -> TrainConfig:
        return TrainConfig(
            patience=patience,
            weight_decay=self.weight_decay,
            hidden=self.hidden,
            head=self.head,
            learning_rate=self.learning_rate,
            max_epochs=max_epochs,
            param_dtype="float16",
            max_class_weight=self.max_class_weight,
            epsilon=0.02,
            confidence=0.95,
            guarantee="cheapest",
            seed=self.seed,
        )

    def to_dict(self) -> dict:
        return {
            "hidden": list(self.hidden),
            "head": self.head,
            "word_ngrams": list(self.word_ngrams),
            "char_ngrams": list(self.char_ngrams),
            "feature_dim": self.dim,
            "learning_rate": self.learning_rate,
            "max_class_weight": self.max_class_weight,
            "weight_decay": self.weight_decay,
            "seed": self.seed,
        }


#: The shipped design first, then one change at a time.
VARIANTS = {
    "shipped_6x64": Variant(),
    "2x512": Variant(hidden=(512,) * 2),
    "6x128": Variant(hidden=(128,) * 6),
    "6x64_bigrams": Variant(word_ngrams=(1, 2)),
    "6x64_char4": Variant(char_ngrams=(4,)),
    "6x64_factorised": Variant(head="factorised"),
    "6x64_wd1e-2": Variant(weight_decay=1e-2),
    "6x64_unweighted": Variant(max_class_weight=1.0),
    "3x256": Variant(hidden=(256,) * 3),
    "2x128": Variant(hidden=(128,) * 2),
    "6x256": Variant(hidden=(256,) * 6),
    "6x64_lr1e-3": Variant(learning_rate=1e-3),
    # the shipped design with other seeds (initialisation, validation slice and calibration
    # split): how far apart two equally good routers land, the noise floor of this table
    "shipped_seed1": Variant(seed=1),
    "shipped_seed2": Variant(seed=2),
}
DEFAULT_PAIRS = ("voting_mmlu_pro/llama", "text_to_sql_bird/llama", "self_refine_squad/llama")


class CachedFeaturizer:
    """A featuriser whose output on one list of texts is computed once (many variants share it)."""

    def __init__(self, inner: HashedNgramFeaturizer) -> None:
        self.inner = inner
        self.name = inner.name
        self._texts: list[str] | None = None
        self._feats: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return self.inner.dim

    def config(self) -> dict:
        return self.inner.config()

    def __call__(self, texts):
        if self._texts is not texts:
            self._texts, self._feats = texts, self.inner(texts)
        return self._feats


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = sorted({r["pair"] for r in rows})
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 3.6), dpi=100, squeeze=False)
    for ax, pair in zip(axes[0], pairs, strict=True):
        sel = [r for r in rows if r["pair"] == pair]
        key = "share_of_yardstick" if all("share_of_yardstick" in r for r in sel) else None
        for r in sel:
            y = 100 * (r[key] if key else r["flexibility_kept"])
            ax.plot(r["routing_cpu_p50_ms"], y, "o")
            ax.annotate(r["variant"], (r["routing_cpu_p50_ms"], y), fontsize=6)
        ax.axvline(0.3, color="grey", ls=":", lw=1)
        if key:
            ax.axhline(85, color="grey", ls="--", lw=1)
        ax.set_xlabel("one request's routing, CPU p50 (ms)")
        ax.set_ylabel(
            "flexibility kept (% of yardstick)" if key else "flexibility kept (% of oracle)"
        )
        ax.set_title(pair, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown(rows: list[dict]) -> str:
    """One line per (pair, variant), with the routing cost relative to the shipped design."""
    base = {r["pair"]: r for r in rows if r["variant"] == "shipped_6x64"}
    lines = [
        "| pair | variant | flexibility kept (of oracle) | of yardstick | Δacc cheapest (pts) "
        "| epochs | MLP kFLOP / request | routing CPU p50 (ms) | vs shipped |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = base.get(r["pair"])
        share = f"{100 * r['share_of_yardstick']:.1f}%" if "share_of_yardstick" in r else ""
        cpu = r.get("routing_cpu_p50_ms")
        ratio = (
            f"x{cpu / b['routing_cpu_p50_ms']:.2f}"
            if cpu and b and b.get("routing_cpu_p50_ms")
            else ""
        )
        lines.append(
            f"| {r['pair']} | {r['variant']} | {100 * r['flexibility_kept']:.1f}% | {share} "
            f"| {r['delta_cheapest_points']:+.2f} | {r['epochs']} | {r.get('kflops_per_request', 0):.0f} "
            f"| {'' if cpu is None else f'{cpu:.3f}'} "
            f"| {ratio} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default=",".join(DEFAULT_PAIRS), help="workflow/family,...")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="variant names, comma-separated"
    )
    parser.add_argument("--max-epochs", type=int, default=60, help="default %(default)s")
    parser.add_argument("--patience", type=int, default=6, help="default %(default)s")
    parser.add_argument("--yardstick", help="router_yardstick.json, for shares of the yardstick")
    parser.add_argument(
        "--retime",
        action="store_true",
        help="only re-measure the routing p50 of the rows in --out from their checkpoints",
    )
    parser.add_argument("--data-dir", type=Path, help="dataset cache (bench/router_yardstick.py)")
    parser.add_argument("--out", default="bench/results/router_explore.json")
    parser.add_argument(
        "--ckpt-dir", help="keep the checkpoints here (default: a temporary folder)"
    )
    args = parser.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)} (known: {', '.join(VARIANTS)})")

    def yardsticks() -> dict[str, float]:
        """Yardstick flexibility per pair (re-read: a yardstick run may be filling the file)."""
        if not args.yardstick or not Path(args.yardstick).exists():
            return {}
        rows = json.loads(Path(args.yardstick).read_text())["rows"]
        return {f"{r['workflow']}/{r['family']}": r["yardstick"]["flexibility_kept"] for r in rows}

    out = Path(args.out)
    rows: list[dict] = []
    if out.exists():  # resume: keep rows already measured at this epoch budget
        prev = json.loads(out.read_text())
        if (prev.get("max_epochs"), prev.get("patience")) == (args.max_epochs, args.patience):
            rows = prev["rows"]
    tmp = tempfile.TemporaryDirectory()
    ckpt_dir = Path(args.ckpt_dir or tmp.name)
    if args.retime:
        probes: dict[str, str] = {}
        for r in rows:
            wf, fam = r["pair"].split("/")
            ckpt = Path(r.get("checkpoint") or ckpt_dir / wf / fam / f"{r['variant']}.npz")
            if r["pair"] not in probes:
                _, ds, _ = training_draw(wf, fam, data_dir=args.data_dir)
                probes[r["pair"]] = ds.texts[ds.split_index("test")[0]]
            p50 = routing_p50_ms(ckpt, probes[r["pair"]])
            r["routing_p50_ms"], r["routing_cpu_p50_ms"] = p50["wall"], p50["cpu"]
            print(
                f"{r['pair']:30s} {r['variant']:18s} {p50['wall']:.3f} ms wall, {p50['cpu']:.3f} ms CPU"
            )
        names = []
    done = {(r["pair"], r["variant"]) for r in rows}
    for pair in args.pairs.split(","):
        todo = [n for n in names if (pair, n) not in done]
        if not todo:
            continue
        wf, fam = pair.split("/")
        t0 = time.perf_counter()
        space, ds, _ = training_draw(wf, fam, data_dir=args.data_dir)
        print(f"== {pair}: dataset in {time.perf_counter() - t0:.1f} s", flush=True)
        feats: dict[HashedNgramFeaturizer, CachedFeaturizer] = {}
        probe = ds.texts[ds.split_index("test")[0]]
        for name in todo:
            v = VARIANTS[name]
            feat = feats.setdefault(v.featurizer(), CachedFeaturizer(v.featurizer()))
            res = fit_router(
                ds,
                space,
                feat,
                v.train_config(args.max_epochs, args.patience),
                family=fam,
                progress=False,
            )
            path = save_checkpoint(res.checkpoint, ckpt_dir / wf / fam / f"{name}.npz")
            t = res.report["test"]
            row = {
                "pair": pair,
                "variant": name,
                **v.to_dict(),
                "flexibility_kept": t["flexibility_kept"],
                "delta_cheapest_points": t["delta_cheapest_points"],
                "admitted_mean": t["admitted_mean"],
                "level": res.report["calibration"]["level"],
                "epochs": res.report["train"]["epochs"],
                "train_seconds": res.report["train"]["seconds"],
                "params_kib": round(path.stat().st_size / 1024, 1),
                "kflops_per_request": res.checkpoint.model_config.flops_per_request() / 1e3,
                "checkpoint": str(path),
            }
            p50 = routing_p50_ms(path, probe)
            row["routing_p50_ms"], row["routing_cpu_p50_ms"] = p50["wall"], p50["cpu"]
            yard = yardsticks()
            if pair in yard:
                row["share_of_yardstick"] = t["flexibility_kept"] / yard[pair]
            rows.append(row)
            print(
                f"{pair:30s} {name:18s} flex {100 * row['flexibility_kept']:5.1f}%"
                + (
                    f" ({100 * row['share_of_yardstick']:5.1f}% of yardstick)"
                    if pair in yard
                    else ""
                )
                + f"  d_cheapest {row['delta_cheapest_points']:+.2f}  epochs {row['epochs']:2d}"
                f"  train {row['train_seconds']:6.1f} s  routing p50 {row['routing_p50_ms']:.3f} ms wall,"
                f" {row['routing_cpu_p50_ms']:.3f} ms CPU",
                flush=True,
            )
            result = {
                "git_sha": git_sha(),
                "argv": sys.argv[1:],
                "max_epochs": args.max_epochs,
                "patience": args.patience,
                "machine": "shared 2-core CPU (other jobs running); p50s comparable within this run only",
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "rows": rows,
            }
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")
    yard = yardsticks()
    for r in rows:
        if r["pair"] in yard:
            r["share_of_yardstick"] = r["flexibility_kept"] / yard[r["pair"]]
    if rows:
        out.write_text(json.dumps(json.loads(out.read_text()) | {"rows": rows}, indent=2) + "\n")
        plot(rows, out.with_suffix(".png"))
        print(markdown(rows))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
