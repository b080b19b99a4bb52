"""Factories for small serving setups: a two-model catalog, a workflow, a fleet file, and
a server in front of loopback fake engines."""

from __future__ import annotations

import textwrap
from pathlib import Path

import aiohttp

from aragog_jax.engines.client import EngineClient
from aragog_jax.serving import FakeEngine, LoopbackServer, ServeOptions, Server, load_runtime

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
    lines = [
        f'family = "{family}"',
        'models = "models.toml"',
        "workflows = [" + ", ".join(f'"{n}.toml"' for n in workflows) + "]",
    ]
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
            lines.append(
                f"{k} = {v!r}".replace("'", '"')
                if not isinstance(v, bool)
                else f"{k} = {str(v).lower()}"
            )
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


async def serve_fakes(
    tmp_path: Path,
    engines: dict[str, tuple[str, FakeEngine]],
    fn,
    *,
    server: dict | None = None,
    options: ServeOptions = ServeOptions(drain_s=2.0, warm_up=False),
    workflows: dict[str, str] | None = None,
):
    """Run ``await fn(server, http)`` against a Server in front of ``engines`` (name ->
    (model, fake)), each on its own loopback port (handlers cancelled when the server
    hangs up, as vLLM aborts); ``server`` overrides [server] settings."""
    fakes = []
    urls = []
    for name, (model, fake) in engines.items():
        srv = LoopbackServer(fake.app, handler_cancellation=True)
        fakes.append(srv)
        urls.append((name, model, await srv.start()))
    settings = {"port": 0, "metrics_poll_s": 0.05, "engine_timeout_s": 2.0, **(server or {})}
    path = write_fleet(tmp_path, urls, server=settings, workflows=workflows)
    fleet = load_runtime(path)
    s = Server(fleet, options)
    url = await s.start()
    try:
        async with aiohttp.ClientSession(base_url=url) as http:
            return await fn(s, http)
    finally:
        await s.stop(drain_s=0.5)
        for f in fakes:
            await f.stop()


def fake_pair(
    mode_small: str = "ok", mode_big: str = "ok", **kw
) -> dict[str, tuple[str, FakeEngine]]:
    """Engines e-small and e-big (models small and big) for :func:`serve_fakes`."""
    return {
        "e-small": ("small", FakeEngine("small", mode=mode_small, **kw)),
        "e-big": ("big", FakeEngine("big", mode=mode_big, **kw)),
    }


async def post_json(http: aiohttp.ClientSession, path: str, body, **kw):
    """(status, JSON body, headers) of a POST."""
    async with http.post(path, json=body, **kw) as r:
        return r.status, await r.json(content_type=None), r.headers
