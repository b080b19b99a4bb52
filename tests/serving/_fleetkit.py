"""Factories for small serving setups: a two-model catalog, a workflow, a fleet file."""

from __future__ import annotations

import textwrap
from pathlib import Path

from aragog_jax.serving import LoopbackServer
from aragog_jax.serving._client import EngineClient

CATALOG = """
[families]
t = ["small", "big"]

[[model]]
name = "small"
family = "t"
num_params = 1_000_000
num_layers = 2
hidden_size = 128
num_attention_heads = 2
num_kv_heads = 2
head_dim = 64

[[model]]
name = "big"
family = "t"
num_params = 9_000_000
num_layers = 2
hidden_size = 128
num_attention_heads = 2
num_kv_heads = 2
head_dim = 64
"""

CHAIN = """
name = "chain"
description = "two stages: draft then polish"

[[stage]]
name = "draft"
input_tokens = 10
output_tokens = 8
prompt = "Draft: {input}"

[[stage]]
name = "polish"
upstream = ["draft"]
input_tokens = 20
output_tokens = 8
prompt = "Polish {draft} for {input}"
"""

FAN = """
name = "fan"

[[stage]]
name = "a"
input_tokens = 10
output_tokens = 8
prompt = "A {input}"

[[stage]]
name = "b"
input_tokens = 10
output_tokens = 8
prompt = "B {input}"

[[stage]]
name = "join"
upstream = ["a", "b"]
input_tokens = 20
output_tokens = 8
prompt = "Join {a} and {b}"
"""


def write_fleet(
    tmp: Path,
    engines: list[tuple[str, ...]],
    *,
    server: dict | None = None,
    workflows: dict[str, str] | None = None,
    catalog: str = CATALOG,
    family: str = "t",
) -> Path:
    """``engines``: (name, model, url[, served_model_name]); url "" for an emulated engine."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "models.toml").write_text(catalog)
    workflows = workflows if workflows is not None else {"chain": CHAIN, "fan": FAN}
    for name, text in workflows.items():
        (tmp / f"{name}.toml").write_text(textwrap.dedent(text))
    lines = [f'family = "{family}"', 'models = "models.toml"', "workflows = [" + ", ".join(f'"{n}.toml"' for n in workflows) + "]"]
    for name, model, url, *served in engines:
        lines += ["", "[[engine]]", f'name = "{name}"', f'model = "{model}"']
        if served:
            lines.append(f'served_model_name = "{served[0]}"')
        if url:
            lines += [f'url = "{url}"', 'kind = "vllm"']
        else:
            lines += ['kind = "emulated"', 'profile = "profile.toml"']
    if server:
        lines += ["", "[server]"]
        for k, v in server.items():
            lines.append(f"{k} = {v!r}".replace("'", '"') if not isinstance(v, bool) else f"{k} = {str(v).lower()}")
    path = tmp / "fleet.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def with_fake_client(fake, fn):
    """``await fn(fake, client)`` with ``fake`` served on loopback and an open client to it."""
    srv = LoopbackServer(fake.app)
    client = EngineClient("e", await srv.start(), fake.served)
    await client.open()
    try:
        return await fn(fake, client)
    finally:
        await client.close()
        await srv.stop()
