"""The one TOML writer for derived and measured engine profiles.

The performance model the profiles feed (curves, iteration time) is
:mod:`aragog_jax.engines.model`.
"""

from __future__ import annotations

from aragog_jax.spec import EngineProfile


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def profile_to_toml(p: EngineProfile, header: list[str]) -> str:
    """Render a profile as commented TOML after ``header`` comment lines.

    Deterministic, and loads back with ``load_profile``. ``date`` is written only when
    set (derived profiles have none).
    """
    lines = [
        *header,
        f"model = {_toml_str(p.model)}",
        f"hardware = {_toml_str(p.hardware)}",
        f"tensor_parallel = {p.tensor_parallel}",
        f"num_gpus = {p.num_gpus}",
        f'kind = "{p.kind}"',
        f"engine_version = {_toml_str(p.engine_version)}",
        *([f"date = {_toml_str(p.date)}"] if p.date else []),
        f"saturation_batch = {p.saturation_batch}",
        f"kv_capacity_tokens = {p.kv_capacity_tokens}",
        f"prefill_tokens_per_s = {p.prefill_tokens_per_s!r}",
        "# decode iteration seconds: t(b, ctx) = decode_base_s + decode_per_seq_s*b + decode_per_ctx_token_s*ctx",
        f"decode_base_s = {p.decode_base_s!r}",
        f"decode_per_seq_s = {p.decode_per_seq_s!r}",
        f"decode_per_ctx_token_s = {p.decode_per_ctx_token_s!r}",
        f"ttft_s = {p.ttft_s!r}",
        f"itl_s = {p.itl_s!r}",
        f"notes = {_toml_str(p.notes)}",
        "# [concurrent sequences, generated tokens/s]",
        "curve = [",
        *(f"  [{pt.concurrency}, {pt.tokens_per_s!r}]," for pt in p.curve),
        "]",
    ]
    return "\n".join(lines) + "\n"
