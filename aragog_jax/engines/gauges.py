"""What an engine reports about itself, parsed: ``/metrics`` gauges and its capacity.

Pure text and JSON parsing (the requests are :class:`~aragog_jax.engines.client.EngineClient`'s):

* :func:`parse_gauges`: vLLM ``vllm:num_requests_running``, ``vllm:num_requests_waiting``,
  ``vllm:kv_cache_usage_perc`` (falling back to the older ``vllm:gpu_cache_usage_perc``);
  SGLang ``sglang:num_running_reqs``, ``sglang:num_queue_reqs``, ``sglang:token_usage``.
  Values are summed over label sets (data-parallel ranks).
* :func:`kv_capacity_from_metrics`: KV-cache tokens from vLLM's ``vllm:cache_config_info``
  labels (``num_gpu_blocks`` x ``block_size``).
* Slots (most sequences the engine runs at once), for engines without a profile, first
  found of: vLLM's ``scheduler_config.max_num_seqs`` (``GET /server_info?config_format=json``,
  served when vLLM runs with ``VLLM_SERVER_DEV_MODE=1``); SGLang's
  ``max_running_requests`` (``GET /get_server_info``); vLLM's KV capacity divided by the
  served model's ``max_model_len`` (``GET /v1/models``): the sequences that fit at full
  context, the only capacity a default vLLM 0.32 reports.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

RUNNING_NAMES = ("vllm:num_requests_running", "sglang:num_running_reqs")
WAITING_NAMES = ("vllm:num_requests_waiting", "sglang:num_queue_reqs")
KV_NAMES = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage")
_WANTED = RUNNING_NAMES + WAITING_NAMES + KV_NAMES


def parse_gauges(text: str) -> dict[str, float]:
    """Sum the wanted gauges over their label sets from a Prometheus text exposition."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#" or not line.startswith(("vllm:", "sglang:")):
            continue
        brace = line.find("{")
        if brace >= 0:
            name = line[:brace]
            rest = line[line.rfind("}") + 1 :]
        else:
            name, _, rest = line.partition(" ")
        if name not in _WANTED:
            continue
        fields = rest.split()
        if not fields:
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue
        out[name] = out.get(name, 0.0) + value
    return out


def first_gauge(gauges: Mapping[str, float], names: tuple[str, ...]) -> float | None:
    """The first of ``names`` present in ``gauges`` (engines name one gauge differently)."""
    for n in names:
        if n in gauges:
            return gauges[n]
    return None


_CACHE_INFO = re.compile(r"^vllm:cache_config_info\{([^}]*)\}", re.M)


def kv_capacity_from_metrics(text: str) -> int:
    """KV tokens from vLLM's ``cache_config_info`` labels (0 when absent)."""
    m = _CACHE_INFO.search(text)
    if not m:
        return 0
    labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
    try:
        return int(float(labels["num_gpu_blocks"])) * int(float(labels["block_size"]))
    except (KeyError, ValueError):
        return 0


@dataclass(frozen=True)
class ReportedSlots:
    """Slots an engine reported, and where they came from (for the profile's notes)."""

    slots: int
    source: str


def _positive_int(value: object) -> int:
    try:
        n = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0
    return n if n > 0 else 0


def slots_from_vllm_server_info(info: object) -> ReportedSlots | None:
    """``scheduler_config.max_num_seqs`` of vLLM's ``/server_info?config_format=json``."""
    if not isinstance(info, dict):
        return None
    config = info.get("vllm_config")
    sched = config.get("scheduler_config") if isinstance(config, dict) else None
    n = _positive_int(sched.get("max_num_seqs")) if isinstance(sched, dict) else 0
    return ReportedSlots(n, "vLLM max_num_seqs (/server_info)") if n else None


def slots_from_sglang_server_info(info: object) -> ReportedSlots | None:
    """``max_running_requests`` of SGLang's ``/get_server_info``."""
    if not isinstance(info, dict):
        return None
    n = _positive_int(info.get("max_running_requests"))
    return ReportedSlots(n, "SGLang max_running_requests (/get_server_info)") if n else None


def max_model_len(models: object, served_model: str) -> int:
    """``max_model_len`` of ``served_model`` in a ``/v1/models`` reply (vLLM; 0 when absent)."""
    data = models.get("data") if isinstance(models, dict) else None
    for entry in data if isinstance(data, list) else []:
        if isinstance(entry, dict) and entry.get("id") == served_model:
            return _positive_int(entry.get("max_model_len"))
    return 0


def slots_from_kv(kv_tokens: int, context_tokens: int) -> ReportedSlots | None:
    """Sequences of ``context_tokens`` that fit in ``kv_tokens`` of KV cache (at least 1)."""
    if kv_tokens <= 0 or context_tokens <= 0:
        return None
    n = max(1, kv_tokens // context_tokens)
    return ReportedSlots(
        n, f"vLLM KV capacity {kv_tokens} tokens / max_model_len {context_tokens} (/metrics)"
    )


__all__ = [
    "KV_NAMES",
    "RUNNING_NAMES",
    "WAITING_NAMES",
    "ReportedSlots",
    "first_gauge",
    "kv_capacity_from_metrics",
    "max_model_len",
    "parse_gauges",
    "slots_from_kv",
    "slots_from_sglang_server_info",
    "slots_from_vllm_server_info",
]
