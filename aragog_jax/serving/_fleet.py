"""From a fleet file (or the embedded default) to what the server runs.

Loading is synchronous and happens before the event loop serves anything: specs,
spaces, engine profiles and routers (compiled ahead of time here). Emulated engines
are only *described* here; the server starts them on loopback when it opens.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np

from aragog_jax.errors import AragogError, SpecError
from aragog_jax.serving._stagefn import StageFunction, load_stage_functions
from aragog_jax.space import ConfigSpace, build_space
from aragog_jax.spec import (
    DEFAULT_MODELS,
    PROFILES_DIR,
    CurvePoint,
    EngineProfile,
    EngineSpec,
    FleetSpec,
    ServerSettings,
    WorkflowSpec,
    family_pool,
    load_fleet,
    load_models,
    load_profile,
    load_workflow,
    resolve,
)

log = logging.getLogger("aragog_jax.serving")

#: The embedded default: the paper's 4-GPU Qwen setup, emulated, every shipped workflow.
DEFAULT_FLEET = PROFILES_DIR / "fleets" / "qwen_4gpu.toml"
#: Emulated engines in the embedded default run this much faster than their profiles,
#: so a three-stage demo request returns in about a second.
DEFAULT_TIME_SCALE = 10.0
#: For an engine without a profile (e.g. a real vLLM engine nobody profiled): this many
#: slots and a concave curve (tokens/s ~ sqrt(sequences)), so each extra sequence on a
#: busy engine gains less than one on an idle engine and the scheduler spreads load.
#: A linear curve would make every engine look the same and pile work on the first.
UNPROFILED_SATURATION = 16


@dataclass
class EngineRuntime:
    spec: EngineSpec
    profile: EngineProfile
    profiled: bool  # False: the placeholder profile above

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def model(self) -> str:
        return self.spec.model

    @property
    def served_model(self) -> str:
        return self.spec.served_model_name or self.spec.model

    @property
    def emulated(self) -> bool:
        return self.spec.kind == "emulated" or not self.spec.url


@dataclass
class WorkflowRuntime:
    spec: WorkflowSpec
    space: ConfigSpace
    servable: np.ndarray  # bool[C]: every stage's model has at least one engine
    router: object | None = None  # aragog_jax.router.Router, compiled
    router_path: str = ""
    stage_index: dict[str, int] = field(default_factory=dict)
    stage_fns: dict[int, StageFunction] = field(
        default_factory=dict
    )  # stages that run a Python coroutine

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class FleetRuntime:
    settings: ServerSettings
    engines: list[EngineRuntime]
    workflows: dict[str, WorkflowRuntime]
    family: str
    source: str  # fleet file path or "embedded default"
    api_keys: frozenset[str] = frozenset()


def placeholder_profile(model: str) -> EngineProfile:
    n = UNPROFILED_SATURATION
    return EngineProfile(
        model=model,
        hardware="unknown",
        tensor_parallel=1,
        kind="derived",
        saturation_batch=n,
        kv_capacity_tokens=1 << 30,
        prefill_tokens_per_s=1e6,
        decode_base_s=0.01,
        decode_per_seq_s=0.0,
        decode_per_ctx_token_s=0.0,
        curve=[CurvePoint(k, 100.0 * k**0.5) for k in (1, 2, 4, 8, n)],
        notes="placeholder: engine has no profile",
    )


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
    fleet: FleetSpec = load_fleet(path)
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
    catalog = load_models(resolve(path, fleet.models) if fleet.models else DEFAULT_MODELS)
    family = fleet.family
    if not family:
        raise SpecError(
            f"{path}: family: the server needs the model family its workflows are routed over"
        )
    pool = family_pool(catalog, family)

    engines: list[EngineRuntime] = []
    for i, e in enumerate(fleet.engine):
        if e.model not in {m.name for m in pool}:
            raise SpecError(
                f"{path}: engine[{i}].model: {e.model!r} is not in family {family!r} ({[m.name for m in pool]})"
            )
        if not e.url and e.kind != "emulated":
            raise SpecError(
                f'{path}: engine[{i}].url: a {e.kind} engine needs a url (or kind = "emulated")'
            )
        if e.profile:
            prof = load_profile(resolve(path, e.profile))
            profiled = True
        elif e.kind == "emulated" or not e.url:
            raise SpecError(f"{path}: engine[{i}].profile: an emulated engine needs a profile")
        else:
            prof, profiled = placeholder_profile(e.model), False
        engines.append(EngineRuntime(e, prof, profiled))
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
    try:
        from aragog_jax.router import shipped_router
    except ImportError:  # the router package is not there yet
        return {}
    out = {}
    for w in workflows:
        p = shipped_router(w, family)
        if p.exists():
            out[w] = str(p.resolve())
    return out


def _stored_workflow(path: Path) -> WorkflowSpec | None:
    """The workflow a router checkpoint stores (None: it stores none)."""
    from aragog_jax.router import load_checkpoint

    spec = load_checkpoint(path).meta.workflow_spec
    try:
        return None if spec is None else msgspec.convert(spec, WorkflowSpec)
    except msgspec.ValidationError as exc:
        raise SpecError(
            f"router {path}: malformed workflow stored in the checkpoint: {exc}"
        ) from exc


def _load_router(
    path: Path, space: ConfigSpace, compile_now: bool, buckets: tuple[int, ...] | None
):
    try:
        from aragog_jax.router import Router
    except ImportError as exc:
        raise SpecError(f"router {path}: the router package is unavailable: {exc}") from exc
    try:
        router = Router.load(path, space)
        if compile_now:
            router.compile(buckets) if buckets else router.compile()
    except AragogError:
        raise
    except (OSError, ValueError) as exc:
        raise SpecError(f"router {path}: {exc}") from exc
    return router
