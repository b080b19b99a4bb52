"""Derive H100 engine profiles from model cards and hardware limits (no GPU needed).

The shipped profiles under ``profiles/engines/`` are *derived*, not measured. This
module is the formula; ``profiles/README.md`` explains every constant. Regenerate with::

    python -m aragog_jax.perf.derive --out profiles/engines

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
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from aragog_jax._cli import run_cli
from aragog_jax.errors import SpecError
from aragog_jax.perf._model import profile_to_toml as render_profile_toml
from aragog_jax.spec import DEFAULT_MODELS, PROFILES_DIR, CurvePoint, EngineProfile, ModelSpec, load_models

ENGINES_DIR = PROFILES_DIR / "engines"


@dataclass(frozen=True)
class Hardware:
    """Datasheet limits of one GPU (NVIDIA H100 SXM5 80GB)."""

    name: str = "H100-80GB"
    hbm_bytes_per_s: float = 3.35e12  # HBM3, 3.35 TB/s
    peak_flops: float = 989e12  # dense BF16 tensor-core FLOP/s (1979 with sparsity)
    memory_bytes: float = 80e9  # 80 GB HBM3
    nvlink_bytes_per_s: float = 450e9  # NVLink 4: 900 GB/s bidirectional, 450 per direction


@dataclass(frozen=True)
class Assumptions:
    """Efficiencies and serving-engine settings; see profiles/README.md for the sources."""

    bytes_per_param: int = 2  # BF16 weights
    bandwidth_efficiency: float = 0.80  # achieved / peak HBM bandwidth in decode GEMVs
    mfu_prefill: float = 0.50  # model FLOPs utilisation of prefill GEMMs
    mfu_decode: float = 0.50  # utilisation of the per-token decode FLOPs at large batch
    gpu_memory_utilization: float = 0.90  # vLLM's default --gpu-memory-utilization
    iteration_overhead_s: float = 1.0e-3  # scheduling, sampling, launch per iteration
    per_seq_overhead_s: float = 10e-6  # host-side bookkeeping per running sequence
    allreduce_latency_s: float = 8e-6  # one small NVLink all-reduce (2 per layer)
    nvlink_efficiency: float = 0.70
    typical_context_tokens: int = 1024  # context per sequence for the curve
    typical_prompt_tokens: int = 512  # prompt length for ttft_s
    max_num_seqs: int = 256  # vLLM's default --max-num-seqs
    saturation_margin: float = 0.10


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


@dataclass(frozen=True)
class DecodeModel:
    base_s: float
    per_seq_s: float
    per_ctx_token_s: float

    def iteration_s(self, batch: int, ctx_tokens: float) -> float:
        return self.base_s + self.per_seq_s * batch + self.per_ctx_token_s * ctx_tokens


def decode_model(model: ModelSpec, tp: int, hw: Hardware = Hardware(), a: Assumptions = Assumptions()) -> DecodeModel:
    """The per-iteration decode time coefficients (see the module docstring)."""
    weight_bytes = model.num_params * a.bytes_per_param
    bw = hw.hbm_bytes_per_s * a.bandwidth_efficiency
    comm_base = 2 * model.num_layers * a.allreduce_latency_s if tp > 1 else 0.0
    comm_per_seq = 0.0
    if tp > 1:
        act_bytes = 2 * model.hidden_size  # one BF16 hidden vector per sequence per all-reduce
        ring = 2 * (tp - 1) / tp
        comm_per_seq = 2 * model.num_layers * act_bytes * ring / (hw.nvlink_bytes_per_s * a.nvlink_efficiency)
    base = a.iteration_overhead_s + (weight_bytes / tp) / bw + comm_base
    per_seq = a.per_seq_overhead_s + 2 * model.num_params / (hw.peak_flops * a.mfu_decode * tp) + comm_per_seq
    kv_shards = min(tp, model.num_kv_heads)
    per_ctx = (model.kv_bytes_per_token / kv_shards) / bw
    return DecodeModel(base, per_seq, per_ctx)


def kv_capacity_tokens(model: ModelSpec, tp: int, hw: Hardware = Hardware(), a: Assumptions = Assumptions()) -> int:
    """Tokens of KV cache that fit next to the weights; raises if the weights do not fit."""
    free = hw.memory_bytes * tp * a.gpu_memory_utilization - model.num_params * a.bytes_per_param
    if free <= 0:
        raise SpecError(f"{model.name}: weights do not fit on {tp} x {hw.name} (tensor_parallel too small)")
    return int(free // model.kv_bytes_per_token)


def prefill_tokens_per_s(model: ModelSpec, tp: int, hw: Hardware = Hardware(), a: Assumptions = Assumptions()) -> float:
    return hw.peak_flops * a.mfu_prefill * tp / (2 * model.num_params)


def _sig(x: float, digits: int = 6) -> float:
    """Round to significant digits so files are stable and readable."""
    return float(f"{x:.{digits}g}")


def derive_profile(model: ModelSpec, tp: int, hw: Hardware = Hardware(), a: Assumptions = Assumptions()) -> EngineProfile:
    """Derive one engine profile (``kind = "derived"``) for ``model`` on ``tp`` GPUs."""
    if tp < 1:
        raise SpecError(f"tensor_parallel must be >= 1, got {tp}")
    dm = decode_model(model, tp, hw, a)
    dm = DecodeModel(_sig(dm.base_s), _sig(dm.per_seq_s), _sig(dm.per_ctx_token_s))
    kv_cap = kv_capacity_tokens(model, tp, hw, a)
    prefill = _sig(prefill_tokens_per_s(model, tp, hw, a))
    ctx = a.typical_context_tokens
    max_batch = min(a.max_num_seqs, kv_cap // ctx)
    if max_batch < 1:
        raise SpecError(f"{model.name} TP{tp}: KV cache holds {kv_cap} tokens, less than one {ctx}-token sequence")

    def tput(n: int) -> float:
        return n / dm.iteration_s(n, n * ctx)

    peak = tput(max_batch)
    sat = next(n for n in range(1, max_batch + 1) if tput(n) >= (1.0 - a.saturation_margin) * peak)
    points = sorted({2**k for k in range(int(math.log2(max_batch)) + 1)} | {sat, max_batch})
    curve = [CurvePoint(n, _sig(tput(n))) for n in points]
    ttft = dm.iteration_s(1, a.typical_prompt_tokens) + a.typical_prompt_tokens / prefill
    notes = (
        f"Derived by aragog_jax.perf.derive from the model card (profiles/models.toml) and {hw.name} "
        f"datasheet limits; curve at {ctx} context tokens per sequence; max batch {max_batch}. "
        "See profiles/README.md."
    )
    return EngineProfile(
        model=model.name,
        hardware=hw.name,
        tensor_parallel=tp,
        kind="derived",
        saturation_batch=sat,
        kv_capacity_tokens=kv_cap,
        prefill_tokens_per_s=prefill,
        decode_base_s=dm.base_s,
        decode_per_seq_s=dm.per_seq_s,
        decode_per_ctx_token_s=dm.per_ctx_token_s,
        curve=curve,
        num_gpus=tp,
        ttft_s=_sig(ttft),
        itl_s=_sig(dm.iteration_s(1, ctx)),
        engine_version="derived",
        notes=notes,
    )


def profile_filename(model_name: str, tp: int, hw: Hardware = Hardware()) -> str:
    return f"{model_name.lower()}_{hw.name.split('-')[0].lower()}_tp{tp}.toml"


def profile_to_toml(p: EngineProfile, a: Assumptions = Assumptions(), hw: Hardware = Hardware()) -> str:
    """Render a derived profile as commented TOML (deterministic; loads back with ``load_profile``)."""
    header = [
        "# DERIVED engine profile, not measured. Generated by",
        "#   python -m aragog_jax.perf.derive --out profiles/engines",
        "# from the model card and hardware limits; formula and constants: profiles/README.md.",
        "# Hardware: " + ", ".join(f"{k}={v}" for k, v in asdict(hw).items()),
        "# Assumptions: " + ", ".join(f"{k}={v}" for k, v in asdict(a).items()),
    ]
    return render_profile_toml(p, header)


def shipped_profiles(models_path: str | Path = DEFAULT_MODELS) -> dict[str, str]:
    """File name -> TOML text of every shipped profile."""
    catalog = load_models(models_path)
    by_name = {m.name: m for m in catalog.model}
    out: dict[str, str] = {}
    for name, tp in SHIPPED:
        if name not in by_name:
            raise SpecError(f"{models_path}: model {name!r} missing from the catalog")
        out[profile_filename(name, tp)] = profile_to_toml(derive_profile(by_name[name], tp))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aragog_jax.perf.derive",
        description="Derive H100 engine profiles (decode iteration time, prefill rate, KV capacity, "
        "throughput curve, saturation batch) from model cards. Without --model, writes every shipped profile.",
    )
    parser.add_argument("--out", type=Path, default=ENGINES_DIR, help="output directory (default: profiles/engines)")
    parser.add_argument("--models", type=Path, default=DEFAULT_MODELS, help="model catalog TOML (default: the shipped one)")
    parser.add_argument("--model", help="derive only this model (name from the catalog)")
    parser.add_argument("--tp", type=int, default=1, help="tensor parallel degree for --model (default 1)")
    parser.add_argument("--check", action="store_true", help="compare with the files in --out instead of writing; exit 1 on a difference")
    args = parser.parse_args(argv)

    if args.model:
        catalog = load_models(args.models)
        by_name = {m.name: m for m in catalog.model}
        if args.model not in by_name:
            raise SpecError(f"unknown model {args.model!r} (known: {', '.join(sorted(by_name))})")
        files = {profile_filename(args.model, args.tp): profile_to_toml(derive_profile(by_name[args.model], args.tp))}
    else:
        files = shipped_profiles(args.models)

    if args.check:
        stale = [n for n, text in files.items() if not (args.out / n).is_file() or (args.out / n).read_text() != text]
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
