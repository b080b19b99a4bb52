"""The derivation formula: an engine profile from a model card and hardware limits.

Decode iteration time, prefill rate, KV capacity, throughput curve and saturation batch,
as written out in :mod:`aragog_jax.perf.derive` (which fits the efficiencies here to
published points and writes the shipped profiles).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aragog_jax.engines.model import decode_step_s
from aragog_jax.errors import SpecError
from aragog_jax.perf._fit import sig
from aragog_jax.spec import (
    CurvePoint,
    EngineProfile,
    ModelSpec,
)


@dataclass(frozen=True)
class Hardware:
    """Datasheet limits of one GPU (NVIDIA H100 SXM5 80GB)."""

    name: str = "H100-80GB"
    hbm_bytes_per_s: float = 3.35e12  # HBM3, 3.35 TB/s
    peak_flops: float = 989e12  # dense BF16 tensor-core FLOP/s (1979 with sparsity)
    memory_bytes: float = 80e9  # 80 GB HBM3
    nvlink_bytes_per_s: float = 450e9  # NVLink 4: 900 GB/s bidirectional, 450 per direction
    peak_flops_fp8: float = 1979e12  # dense FP8 tensor-core FLOP/s (for FP8 measurements)


@dataclass(frozen=True)
class Assumptions:
    """Efficiencies and serving-engine settings; see profiles/README.md for the sources."""

    bytes_per_param: int = 2  # BF16 weights
    kv_bytes_per_value: int = 2  # BF16 KV cache
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


@dataclass(frozen=True)
class DecodeModel:
    base_s: float
    per_seq_s: float
    per_ctx_token_s: float

    def iteration_s(self, batch: int, ctx_tokens: float) -> float:
        return decode_step_s(self.base_s, self.per_seq_s, self.per_ctx_token_s, batch, ctx_tokens)


def decode_model(
    model: ModelSpec, tp: int, hw: Hardware = Hardware(), a: Assumptions = Assumptions()
) -> DecodeModel:
    """The per-iteration decode time coefficients (see the module docstring)."""
    weight_bytes = model.num_params * a.bytes_per_param
    bw = hw.hbm_bytes_per_s * a.bandwidth_efficiency
    comm_base = 2 * model.num_layers * a.allreduce_latency_s if tp > 1 else 0.0
    comm_per_seq = 0.0
    if tp > 1:
        act_bytes = 2 * model.hidden_size  # one BF16 hidden vector per sequence per all-reduce
        ring = 2 * (tp - 1) / tp
        comm_per_seq = (
            2 * model.num_layers * act_bytes * ring / (hw.nvlink_bytes_per_s * a.nvlink_efficiency)
        )
    base = a.iteration_overhead_s + (weight_bytes / tp) / bw + comm_base
    per_seq = (
        a.per_seq_overhead_s
        + 2 * model.num_params / (hw.peak_flops * a.mfu_decode * tp)
        + comm_per_seq
    )
    kv_shards = min(tp, model.num_kv_heads)
    per_ctx = (_kv_bytes_per_token(model, a) / kv_shards) / bw
    return DecodeModel(base, per_seq, per_ctx)


def kv_capacity_tokens(
    model: ModelSpec, tp: int, hw: Hardware = Hardware(), a: Assumptions = Assumptions()
) -> int:
    """Tokens of KV cache that fit next to the weights; raises if the weights do not fit."""
    free = hw.memory_bytes * tp * a.gpu_memory_utilization - model.num_params * a.bytes_per_param
    if free <= 0:
        raise SpecError(
            f"{model.name}: weights do not fit on {tp} x {hw.name} (tensor_parallel too small)"
        )
    return int(free // _kv_bytes_per_token(model, a))


def _kv_bytes_per_token(model: ModelSpec, a: Assumptions) -> int:
    """KV bytes per token at the assumed KV precision (the model card's figure is 16-bit)."""
    return model.kv_bytes_per_token * a.kv_bytes_per_value // 2


def prefill_tokens_per_s(
    model: ModelSpec, tp: int, hw: Hardware = Hardware(), a: Assumptions = Assumptions()
) -> float:
    return hw.peak_flops * a.mfu_prefill * tp / (2 * model.num_params)


def derive_profile(
    model: ModelSpec,
    tp: int,
    hw: Hardware = Hardware(),
    a: Assumptions = Assumptions(),
    *,
    kind: str = "derived",
    notes: str = "",
) -> EngineProfile:
    """One engine profile for ``model`` on ``tp`` GPUs from the formula and assumptions ``a``.

    ``kind`` is ``"derived"`` (nothing measured of this engine) or ``"fitted"`` (``a``
    holds efficiencies fitted to published points that include this model at this TP).
    """
    if tp < 1:
        raise SpecError(f"tensor_parallel must be >= 1, got {tp}")
    dm = decode_model(model, tp, hw, a)
    dm = DecodeModel(sig(dm.base_s), sig(dm.per_seq_s), sig(dm.per_ctx_token_s))
    kv_cap = kv_capacity_tokens(model, tp, hw, a)
    prefill = sig(prefill_tokens_per_s(model, tp, hw, a))
    ctx = a.typical_context_tokens
    max_batch = min(a.max_num_seqs, kv_cap // ctx)
    if max_batch < 1:
        raise SpecError(
            f"{model.name} TP{tp}: KV cache holds {kv_cap} tokens, less than one {ctx}-token sequence"
        )

    def tput(n: int) -> float:
        return n / dm.iteration_s(n, n * ctx)

    peak = tput(max_batch)
    sat = next(n for n in range(1, max_batch + 1) if tput(n) >= (1.0 - a.saturation_margin) * peak)
    points = sorted({2**k for k in range(int(math.log2(max_batch)) + 1)} | {sat, max_batch})
    curve = [CurvePoint(n, sig(tput(n))) for n in points]
    ttft = dm.iteration_s(1, a.typical_prompt_tokens) + a.typical_prompt_tokens / prefill
    notes = notes or (
        f"Derived by aragog_jax.perf.derive from the model card (profiles/models.toml) and {hw.name} "
        f"datasheet limits; curve at {ctx} context tokens per sequence; max batch {max_batch}. "
        "See profiles/README.md."
    )
    return EngineProfile(
        model=model.name,
        hardware=hw.name,
        tensor_parallel=tp,
        kind=kind,
        saturation_batch=sat,
        kv_capacity_tokens=kv_cap,
        prefill_tokens_per_s=prefill,
        decode_base_s=dm.base_s,
        decode_per_seq_s=dm.per_seq_s,
        decode_per_ctx_token_s=dm.per_ctx_token_s,
        curve=curve,
        num_gpus=tp,
        ttft_s=sig(ttft),
        itl_s=sig(dm.iteration_s(1, ctx)),
        engine_version=kind,
        notes=notes,
    )


# ----------------------------------------------------------------------------- fit to published points
