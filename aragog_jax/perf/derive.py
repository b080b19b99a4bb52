"""Derive H100 engine profiles from model cards and hardware limits, fitted to published points.

The shipped profiles under ``profiles/engines/`` come from the formula below with five
efficiencies fitted to published H100 serving measurements
(``profiles/engines/published.toml``; ``fit_assumptions``). A profile is ``fitted`` when
the points include its model at its TP degree and ``derived`` otherwise (the formula
with efficiencies fitted on other engines). No GPU is needed. ``profiles/README.md``
explains every constant, the fit and its assumptions. Regenerate with::

    python -m aragog_jax.perf.derive --out profiles/engines     # --check, --report

Formula, for a model with P parameters (16-bit weights, W = 2P bytes), L layers,
hidden size H, KV bytes per token K (``ModelSpec.kv_bytes_per_token``), served with
tensor parallelism T on GPUs with HBM bandwidth B, dense peak F and memory G:

* **Decode iteration** (memory-bandwidth bound, plus per-sequence compute)::

      t(b, ctx) = base + per_seq * b + per_ctx * ctx
      base      = overhead + (W / T) / (B * eff_bw) + [T > 1] * 2 L * allreduce_latency
      per_seq   = seq_overhead + 2P / (F * mfu_decode * T)
                  + [T > 1] * 2 L * (2 H) * 2 (T - 1) / T / (nvlink * eff_nvlink)
      per_ctx   = (K / min(T, kv_heads)) / (B * eff_bw)

  Every iteration streams this GPU's shard of the weights once, reads the KV cache of
  every running sequence, and does 2P FLOPs per decoded token. The two terms are added
  (not maxed) so large batches slow down smoothly instead of hitting a hard roofline.
* **Prefill** (compute bound): ``tokens/s = F * mfu_prefill * T / (2P)``.
* **KV capacity**: ``(G * T * gpu_memory_utilization - W) / K`` tokens.
* **Throughput curve**: ``n / t(n, n * typical_context)`` at n = 1, 2, 4, ... up to
  ``max_batch = min(max_num_seqs, kv_capacity // typical_context)``.
* **Saturation batch**: the smallest n whose throughput is within
  ``saturation_margin`` (10%) of the throughput at ``max_batch``: past it, adding
  sequences raises throughput by less than the margin while every sequence slows down.
* **Fit**: a published max-load point (input I, output O, concurrency C as high as the
  KV cache and the engine's batch cap allow) is predicted as
  ``C * O / (O * t(C, C * (I + O/2)) + C * I / prefill)``; the efficiencies minimise
  the squared log errors plus a weak pull toward their documented values.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import numpy as np

from aragog_jax._cli import run_cli
from aragog_jax.errors import SpecError
from aragog_jax.perf._fit import sig
from aragog_jax.perf._formula import (
    Assumptions,
    Hardware,
    decode_model,
    derive_profile,
    kv_capacity_tokens,
    prefill_tokens_per_s,
)
from aragog_jax.perf._model import profile_to_toml as render_profile_toml
from aragog_jax.spec import (
    DEFAULT_MODELS,
    PROFILES_DIR,
    EngineProfile,
    ModelSpec,
    decode_toml,
    load_models,
)

ENGINES_DIR = PROFILES_DIR / "engines"


#: The shipped (model, tensor parallel) pairs: the paper's 8-GPU TP choices plus its
#: 4-GPU ablation (Qwen2.5-32B TP2, Qwen2.5-14B TP1) and Phi-4 for the mixed family.
SHIPPED: tuple[tuple[str, int], ...] = (
    ("Qwen2.5-7B-Instruct", 1),
    ("Qwen2.5-14B-Instruct", 1),
    ("Qwen2.5-14B-Instruct", 2),
    ("Qwen2.5-32B-Instruct", 2),
    ("Qwen2.5-32B-Instruct", 4),
    ("Llama-3.2-3B-Instruct", 1),
    ("Llama-3.1-8B-Instruct", 1),
    ("Llama-3.1-70B-Instruct", 4),
    ("Phi-4", 2),
)


PUBLISHED_POINTS = ENGINES_DIR / "published.toml"
#: The efficiencies the fit adjusts (Assumptions fields); everything else stays as documented.
FIT_FIELDS: tuple[str, ...] = (
    "bandwidth_efficiency",
    "mfu_decode",
    "mfu_prefill",
    "iteration_overhead_s",
    "per_seq_overhead_s",
)
#: Weight of the pull of each log-parameter toward its documented value (Assumptions()).
#: Small: it only decides directions the points do not constrain.
FIT_PRIOR_WEIGHT = 0.05
_PRECISION_BYTES = {"fp8": 1, "bf16": 2}  # per weight and per KV value


class PublishedPoint(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One published throughput figure (``profiles/engines/published.toml``)."""

    model: str
    tensor_parallel: Annotated[int, msgspec.Meta(ge=1)]
    precision: Literal["fp8", "bf16"]  # weights and KV cache
    input_tokens: Annotated[int, msgspec.Meta(ge=1)]
    output_tokens: Annotated[int, msgspec.Meta(ge=1)]
    max_batch: Annotated[int, msgspec.Meta(ge=1)]
    kv_memory_fraction: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]
    metric: Literal["output_tokens_per_s"]
    value: Annotated[float, msgspec.Meta(gt=0.0)]
    source: str
    measured_model: str = ""  # when the source measured an architecture twin


class PublishedPoints(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    sources: dict[str, str]
    point: list[PublishedPoint]


def load_published_points(
    path: str | Path = PUBLISHED_POINTS,
) -> tuple[list[PublishedPoint], dict[str, str]]:
    """(points, source key -> description); errors name the file, the point and the field."""
    raw = decode_toml(path, PublishedPoints, "published points")
    for i, pt in enumerate(raw.point):
        if pt.source not in raw.sources:
            raise SpecError(f"{path}: point[{i}].source: {pt.source!r} is not in [sources]")
    return list(raw.point), dict(raw.sources)


def _point_setting(
    pt: PublishedPoint, hw: Hardware, a: Assumptions
) -> tuple[Hardware, Assumptions]:
    """The hardware and engine settings of the point's run: its precision, batch cap and memory share."""
    b = _PRECISION_BYTES[pt.precision]
    hw_pt = replace(hw, peak_flops=hw.peak_flops_fp8) if pt.precision == "fp8" else hw
    a_pt = replace(
        a,
        bytes_per_param=b,
        kv_bytes_per_value=b,
        max_num_seqs=pt.max_batch,
        gpu_memory_utilization=pt.kv_memory_fraction,
    )
    return hw_pt, a_pt


def predict_point(
    pt: PublishedPoint, model: ModelSpec, hw: Hardware = Hardware(), a: Assumptions = Assumptions()
) -> float:
    """The formula's generated tokens/s for a published max-load point.

    Concurrency C is as high as the KV cache (each request reserves input + output
    tokens) and the engine's batch cap allow. In steady state C sequences generate
    O tokens each in O decode iterations at mean context I + O/2, and the replacements'
    C * I prompt tokens are prefilled alongside (the simulator's iteration model):
    ``C * O / (O * t(C, C * (I + O/2)) + C * I / prefill_tokens_per_s)``.
    """
    hw_pt, a_pt = _point_setting(pt, hw, a)
    i, o = pt.input_tokens, pt.output_tokens
    c = max(
        1, min(pt.max_batch, kv_capacity_tokens(model, pt.tensor_parallel, hw_pt, a_pt) // (i + o))
    )
    dm = decode_model(model, pt.tensor_parallel, hw_pt, a_pt)
    t = o * dm.iteration_s(c, c * (i + o / 2)) + c * i / prefill_tokens_per_s(
        model, pt.tensor_parallel, hw_pt, a_pt
    )
    return c * o / t


@dataclass(frozen=True)
class FitResult:
    assumptions: Assumptions  # the documented assumptions with FIT_FIELDS replaced by fitted values
    points: tuple[PublishedPoint, ...]
    predicted: tuple[float, ...]  # tokens/s per point under the fitted assumptions
    rms_log_error: float

    def ratio(self, i: int) -> float:
        return self.predicted[i] / self.points[i].value


def fit_assumptions(
    points: Sequence[PublishedPoint],
    catalog_models: Sequence[ModelSpec],
    hw: Hardware = Hardware(),
    a0: Assumptions = Assumptions(),
) -> FitResult:
    """Fit the efficiencies in ``FIT_FIELDS`` to published points (regularised log least squares).

    Minimises ``sum_i log(pred_i / value_i)^2 + FIT_PRIOR_WEIGHT * sum_j log(theta_j / theta0_j)^2``
    over theta = FIT_FIELDS (theta0: the documented values in ``a0``) with damped
    Gauss-Newton (Levenberg-Marquardt) steps on log theta; efficiencies are capped at 1.
    Deterministic; the result is rounded to 3 significant digits so files are stable.
    """
    by_name = {m.name: m for m in catalog_models}
    for pt in points:
        if pt.model not in by_name:
            raise SpecError(f"published point for unknown model {pt.model!r}")
    if not points:
        raise SpecError("no published points to fit")
    theta0 = np.log([float(getattr(a0, f)) for f in FIT_FIELDS])
    caps = np.array(
        [0.0 if "efficiency" in f or f.startswith("mfu") else np.inf for f in FIT_FIELDS]
    )
    values = np.log([pt.value for pt in points])

    def assumptions(theta: np.ndarray) -> Assumptions:
        return replace(a0, **{f: float(np.exp(v)) for f, v in zip(FIT_FIELDS, theta, strict=True)})

    def residuals(theta: np.ndarray) -> np.ndarray:
        a = assumptions(theta)
        pred = np.log([predict_point(pt, by_name[pt.model], hw, a) for pt in points])
        return np.concatenate([pred - values, math.sqrt(FIT_PRIOR_WEIGHT) * (theta - theta0)])

    theta, lam = theta0.copy(), 1e-2
    r = residuals(theta)
    for _ in range(200):
        jac = np.stack(
            [
                (residuals(theta + 1e-6 * np.eye(len(theta))[j]) - r) / 1e-6
                for j in range(len(theta))
            ],
            axis=1,
        )
        g, h = jac.T @ r, jac.T @ jac
        step = np.linalg.solve(h + lam * np.diag(np.diag(h) + 1e-12), -g)
        cand = np.minimum(theta + step, caps)
        rc = residuals(cand)
        if rc @ rc < r @ r:
            theta, r, lam = cand, rc, max(lam / 3, 1e-9)
            if np.abs(step).max() < 1e-9:
                break
        else:
            lam *= 4
            if lam > 1e9:
                break
    fitted = replace(
        a0, **{f: sig(float(np.exp(v)), 3) for f, v in zip(FIT_FIELDS, theta, strict=True)}
    )
    pred = tuple(predict_point(pt, by_name[pt.model], hw, fitted) for pt in points)
    err = np.log(np.asarray(pred) / np.exp(values))
    return FitResult(fitted, tuple(points), pred, float(np.sqrt(np.mean(err**2))))


def shipped_fit(
    models_path: str | Path = DEFAULT_MODELS, points_path: str | Path = PUBLISHED_POINTS
) -> FitResult:
    """The fit every shipped profile uses: the shipped published points, the shipped catalog."""
    points, _ = load_published_points(points_path)
    return fit_assumptions(points, load_models(models_path).model)


def profile_filename(model_name: str, tp: int, hw: Hardware = Hardware()) -> str:
    return f"{model_name.lower()}_{hw.name.split('-')[0].lower()}_tp{tp}.toml"


def profile_to_toml(
    p: EngineProfile,
    a: Assumptions = Assumptions(),
    hw: Hardware = Hardware(),
    fit_lines: Sequence[str] = (),
) -> str:
    """Render a derived or fitted profile as commented TOML (deterministic; loads back with ``load_profile``)."""
    if p.kind == "fitted":
        head = [
            "# FITTED engine profile: the formula below with efficiencies fitted to published H100",
            "# measurements that include this model at this tensor-parallel degree. Generated by",
        ]
    else:
        head = ["# DERIVED engine profile, not measured. Generated by"]
    header = [
        *head,
        "#   python -m aragog_jax.perf.derive --out profiles/engines",
        "# from the model card and hardware limits; formula, fit and constants: profiles/README.md.",
        *fit_lines,
        "# Hardware: " + ", ".join(f"{k}={v}" for k, v in asdict(hw).items()),
        "# Assumptions: " + ", ".join(f"{k}={v}" for k, v in asdict(a).items()),
    ]
    return render_profile_toml(p, header)


def fitted_profile(
    model: ModelSpec, tp: int, fit: FitResult, sources: dict[str, str], hw: Hardware = Hardware()
) -> str:
    """TOML of ``model`` on ``tp`` GPUs with the fitted efficiencies: ``fitted`` when the fit
    has points of this model at this TP (listed in the header), else ``derived``."""
    own = [
        i for i, pt in enumerate(fit.points) if pt.model == model.name and pt.tensor_parallel == tp
    ]
    used = sorted({pt.source for pt in fit.points})
    lines = [
        f"# Efficiencies ({', '.join(FIT_FIELDS)}) fitted to {len(fit.points)} published points "
        f"(profiles/engines/published.toml; RMS log error {fit.rms_log_error:.3f}); sources:",
        *(f"#   {k}: {sources[k]}" for k in used),
    ]
    for i in own:
        pt = fit.points[i]
        twin = f" (measured on {pt.measured_model})" if pt.measured_model else ""
        lines.append(
            f"# Point{twin}: {pt.precision} in/out {pt.input_tokens}/{pt.output_tokens}, published {pt.value:g} tok/s, "
            f"formula {fit.predicted[i]:.0f} ({fit.ratio(i):.3f}x)"
        )
    kind = "fitted" if own else "derived"
    ctx = fit.assumptions.typical_context_tokens
    if own:
        notes = (
            f"Fitted by aragog_jax.perf.derive: formula with efficiencies fitted to published {hw.name} points, "
            f"{len(own)} of them of this model at TP{tp}; curve at {ctx} context tokens per "
            "sequence. See profiles/README.md."
        )
    else:
        notes = (
            f"Derived by aragog_jax.perf.derive from the model card and {hw.name} limits with efficiencies fitted to "
            f"published points of other engines (none of this model at TP{tp}); curve at {ctx} context tokens per "
            "sequence. See profiles/README.md."
        )
    prof = derive_profile(model, tp, hw, fit.assumptions, kind=kind, notes=notes)
    return profile_to_toml(prof, fit.assumptions, hw, lines)


def shipped_profiles(
    models_path: str | Path = DEFAULT_MODELS, points_path: str | Path = PUBLISHED_POINTS
) -> dict[str, str]:
    """File name -> TOML text of every shipped profile (formula with the shipped fit)."""
    catalog = load_models(models_path)
    by_name = {m.name: m for m in catalog.model}
    points, sources = load_published_points(points_path)
    fit = fit_assumptions(points, catalog.model)
    out: dict[str, str] = {}
    for name, tp in SHIPPED:
        if name not in by_name:
            raise SpecError(f"{models_path}: model {name!r} missing from the catalog")
        out[profile_filename(name, tp)] = fitted_profile(by_name[name], tp, fit, sources)
    return out


def fit_report(fit: FitResult) -> str:
    """Markdown: the fitted efficiencies and every published point against the formula."""
    a0 = Assumptions()
    rows = [
        "| efficiency | documented | fitted |",
        "|---|---|---|",
        *(f"| `{f}` | {getattr(a0, f)} | {getattr(fit.assumptions, f)} |" for f in FIT_FIELDS),
        "",
        f"RMS log error {fit.rms_log_error:.3f} over {len(fit.points)} points.",
        "",
        "| model (measured) | TP | precision | in / out | published tok/s | formula tok/s | formula / published |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, pt in enumerate(fit.points):
        name = pt.model + (f" ({pt.measured_model})" if pt.measured_model else "")
        rows.append(
            f"| {name} | {pt.tensor_parallel} | {pt.precision} | {pt.input_tokens} / "
            f"{pt.output_tokens} | {pt.value:,.0f} "
            f"| {fit.predicted[i]:,.0f} | {fit.ratio(i):.3f} |"
        )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aragog_jax.perf.derive",
        description="Derive H100 engine profiles (decode iteration time, prefill rate, KV capacity, "
        "throughput curve, saturation batch) from model cards, with efficiencies fitted to published "
        "measurements. Without --model, writes every shipped profile.",
    )
    parser.add_argument(
        "--out", type=Path, default=ENGINES_DIR, help="output directory (default: profiles/engines)"
    )
    parser.add_argument(
        "--models",
        type=Path,
        default=DEFAULT_MODELS,
        help="model catalog TOML (default: the shipped one)",
    )
    parser.add_argument("--model", help="derive only this model (name from the catalog)")
    parser.add_argument(
        "--tp", type=int, default=1, help="tensor parallel degree for --model (default 1)"
    )
    parser.add_argument(
        "--points",
        type=Path,
        default=PUBLISHED_POINTS,
        help="published measurements to fit (default: profiles/engines/published.toml)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="compare with the files in --out instead of writing; exit 1 on a difference",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="print the fit (efficiencies, every point against the formula) as markdown and exit",
    )
    args = parser.parse_args(argv)
    if args.report:
        points, _ = load_published_points(args.points)
        print(fit_report(fit_assumptions(points, load_models(args.models).model)))
        return 0

    if args.model:
        catalog = load_models(args.models)
        by_name = {m.name: m for m in catalog.model}
        if args.model not in by_name:
            raise SpecError(f"unknown model {args.model!r} (known: {', '.join(sorted(by_name))})")
        points, sources = load_published_points(args.points)
        fit = fit_assumptions(points, catalog.model)
        files = {
            profile_filename(args.model, args.tp): fitted_profile(
                by_name[args.model], args.tp, fit, sources
            )
        }
    else:
        files = shipped_profiles(args.models, args.points)

    if args.check:
        stale = [
            n
            for n, text in files.items()
            if not (args.out / n).is_file() or (args.out / n).read_text() != text
        ]
        for n in stale:
            print(f"differs: {args.out / n}")
        print(f"{len(files) - len(stale)}/{len(files)} profiles up to date")
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for n, text in files.items():
        (args.out / n).write_text(text)
        print(f"wrote {args.out / n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
