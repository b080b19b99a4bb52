"""From a fleet file (or the embedded default) to what the server runs.

Loading is synchronous and happens before the event loop serves anything: the engines
and their profiles (:func:`aragog_jax.engines.fleet.load_engine_fleet`, shared with the
simulator and the labeller), workflows, spaces and routers (compiled ahead of time
here). Emulated engines are only *described* here; the server starts them on loopback
when it opens, and sizes unprofiled real engines from what they report.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np

from aragog_jax.engines.client import ClientLimits, EngineClient
from aragog_jax.engines.fleet import FleetEngine, load_engine_fleet
from aragog_jax.engines.model import placeholder_profile
from aragog_jax.engines.stages import StageFunction, load_stage_functions
from aragog_jax.errors import AragogError, SpecError
from aragog_jax.router import Router, TextRouter, load_checkpoint, shipped_router
from aragog_jax.serving._emulated import EmulatedEngine
from aragog_jax.serving._loopback import LoopbackServer
from aragog_jax.space import ConfigSpace, build_space
from aragog_jax.spec import (
    PROFILES_DIR,
    ServerSettings,
    WorkflowSpec,
    load_workflow,
    resolve,
)

log = logging.getLogger("aragog_jax.serving")

#: The embedded default: the paper's 4-GPU Qwen setup, emulated, every shipped workflow.
DEFAULT_FLEET = PROFILES_DIR / "fleets" / "qwen_4gpu.toml"
#: Emulated engines in the embedded default run this much faster than their profiles,
#: so a three-stage demo request returns in about a second.
DEFAULT_TIME_SCALE = 10.0


@dataclass
class WorkflowRuntime:
    spec: WorkflowSpec
    space: ConfigSpace
    servable: np.ndarray  # bool[C]: every stage's model has at least one engine
    router: TextRouter | None = None  # compiled
    router_path: str = ""
    stage_index: dict[str, int] = field(default_factory=dict)
    # Stages that run a Python coroutine.
    stage_fns: dict[int, StageFunction] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class FleetRuntime:
    settings: ServerSettings
    engines: list[FleetEngine]
    workflows: dict[str, WorkflowRuntime]
    family: str
    source: str  # fleet file path or "embedded default"
    api_keys: frozenset[str] = frozenset()


async def start_engines(
    fleet: FleetRuntime,
) -> tuple[dict[str, str], dict[str, tuple[EmulatedEngine, LoopbackServer]]]:
    """Start the fleet's emulated engines on loopback and size its unprofiled real ones;
    returns every engine's URL and the emulated ones' (engine, server), to stop later."""
    urls: dict[str, str] = {}
    emulated: dict[str, tuple[EmulatedEngine, LoopbackServer]] = {}
    for e in fleet.engines:
        if e.emulated:
            eng = EmulatedEngine(
                e.name,
                e.model,
                e.profile,
                time_scale=fleet.settings.time_scale,
                served_model_name=e.served_model,
            )
            srv = LoopbackServer(eng.app)
            urls[e.name] = await srv.start()
            emulated[e.name] = (eng, srv)
        else:
            urls[e.name] = e.spec.url
    await size_unprofiled(fleet.engines)
    return urls, emulated


async def size_unprofiled(engines: list[FleetEngine], probe_timeout_s: float = 2.0) -> None:
    """Give every real engine without a profile as many slots as it reports running at
    once (:meth:`~aragog_jax.engines.client.EngineClient.reported_slots`), in a placeholder
    profile; one that reports nothing keeps the fixed placeholder
    (:data:`~aragog_jax.engines.model.UNPROFILED_SATURATION` slots). Asks all at once."""

    async def size(e: FleetEngine) -> None:
        limits = ClientLimits(probe_timeout_s=probe_timeout_s, orca=False, max_connections=4)
        client = EngineClient(e.name, e.spec.url, e.served_model, limits)
        await client.open()
        try:
            found = await client.reported_slots()
        finally:
            await client.close()
        if found is None:
            log.warning(
                "engine %s has no profile and reports no capacity: assuming %d slots",
                e.name,
                e.profile.saturation_batch,
            )
            return
        e.profile = placeholder_profile(e.model, found.slots, found.source)
        log.info("engine %s has no profile: %d slots from %s", e.name, found.slots, found.source)

    await asyncio.gather(*(size(e) for e in engines if not e.profiled and not e.emulated))


def _api_keys(settings: ServerSettings, source: Path) -> frozenset[str]:
    """The configured keys. Auth never fails open: a key source that is configured but
    yields no key (an unset or empty ``api_keys_env`` variable and no ``api_keys``) is a
    SpecError, not a server without auth."""
    keys = {k for k in settings.api_keys if k}
    if settings.api_keys_env:
        # Environment variables only name secrets (STYLE item 13); read at load, not import.
        raw = os.environ.get(settings.api_keys_env, "")
        from_env = {k.strip() for k in raw.split(",") if k.strip()}
        if not from_env and not keys:
            state = "is not set" if settings.api_keys_env not in os.environ else "holds no key"
            raise SpecError(
                f"{source}: server.api_keys_env: environment variable {settings.api_keys_env} {state} and "
                f"server.api_keys is empty; refusing to serve without the keys it asks for"
            )
        if not from_env:
            log.warning(
                "server.api_keys_env: environment variable %s holds no key; using server.api_keys only",
                settings.api_keys_env,
            )
        keys |= from_env
    return frozenset(keys)


def load_runtime(
    fleet_path: str | Path | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
    time_scale: float | None = None,
    compile_routers: bool = True,
    router_buckets: tuple[int, ...] | None = None,
) -> FleetRuntime:
    """Load a fleet file (default: the embedded default) and everything it names."""
    embedded = fleet_path is None
    path = Path(fleet_path) if fleet_path is not None else DEFAULT_FLEET
    loaded = load_engine_fleet(path)
    fleet, catalog, engines = loaded.spec, loaded.catalog, loaded.engines
    settings = fleet.server
    if embedded:
        settings = msgspec.structs.replace(settings, time_scale=DEFAULT_TIME_SCALE)
    overrides = {
        k: v
        for k, v in (("host", host), ("port", port), ("time_scale", time_scale))
        if v is not None
    }
    if overrides:
        settings = msgspec.structs.replace(settings, **overrides)
    family = fleet.family
    if not family:
        raise SpecError(
            f"{path}: family: the server needs the model family its workflows are routed over"
        )
    pool = loaded.check_family(family)
    served_models = {e.model for e in engines}
    workflows: dict[str, WorkflowRuntime] = {}

    def add_workflow(wf: WorkflowSpec, where: str) -> None:
        if wf.name in workflows:
            raise SpecError(f"{path}: {where}: two sources define workflow {wf.name!r}")
        space = build_space(wf, pool)
        has_engine = np.array([m in served_models for m in space.model_names], dtype=bool)
        servable = has_engine[space.configs].all(axis=1)
        if not servable.any():
            raise SpecError(
                f"{path}: workflow {wf.name!r}: no configuration can run on this fleet's engines "
                f"(models with engines: {sorted(served_models)})"
            )
        if not servable[space.c_max]:
            log.warning(
                "workflow %s: c_max needs a model without an engine; only %d of %d configurations are servable",
                wf.name,
                int(servable.sum()),
                space.num_configs,
            )
        workflows[wf.name] = WorkflowRuntime(
            wf,
            space,
            servable,
            stage_index={s: i for i, s in enumerate(space.stage_names)},
            stage_fns=load_stage_functions(wf),
        )

    for w in fleet.workflows:
        add_workflow(load_workflow(resolve(path, w), catalog), "workflows")

    routers = dict(fleet.routers)
    if embedded:
        routers.update(_shipped_routers(list(workflows), family))
    for name, rpath in routers.items():
        full = rpath if embedded and Path(rpath).is_absolute() else resolve(path, rpath)
        if name not in workflows:
            # Not listed: the workflow stored in the checkpoint (self-contained checkpoints).
            wf = _stored_workflow(Path(full))
            if wf is None or wf.name != name:
                raise SpecError(
                    f"{path}: routers.{name}: no such workflow in this fleet"
                    + (
                        ""
                        if wf is None
                        else f" (the checkpoint {full} is for workflow {wf.name!r})"
                    )
                )
            add_workflow(wf, f"routers.{name}")
        workflows[name].router = _load_router(
            Path(full), workflows[name].space, compile_routers, router_buckets
        )
        workflows[name].router_path = str(full)
    for wfr in workflows.values():
        if wfr.router is None:
            log.warning("workflow %s has no router: every configuration is admitted", wfr.name)

    return FleetRuntime(
        settings=settings,
        engines=engines,
        workflows=workflows,
        family=family,
        source="embedded default (" + str(path) + ")" if embedded else str(path),
        api_keys=_api_keys(settings, path),
    )


def _shipped_routers(workflows: list[str], family: str) -> dict[str, str]:
    out = {}
    for w in workflows:
        p = shipped_router(w, family)
        if p.exists():
            out[w] = str(p.resolve())
    return out


def _stored_workflow(path: Path) -> WorkflowSpec | None:
    """The workflow a router checkpoint stores (None: it stores none)."""
    spec = load_checkpoint(path).meta.workflow_spec
    try:
        return None if spec is None else msgspec.convert(spec, WorkflowSpec)
    except msgspec.ValidationError as exc:
        raise SpecError(
            f"router {path}: malformed workflow stored in the checkpoint: {exc}"
        ) from exc


def _load_router(
    path: Path, space: ConfigSpace, compile_now: bool, buckets: tuple[int, ...] | None
) -> Router:
    try:
        router = Router.load(path, space)
        if compile_now:
            router.compile(buckets) if buckets else router.compile()
    except AragogError:
        raise
    except (OSError, ValueError) as exc:
        raise SpecError(f"router {path}: {exc}") from exc
    return router
