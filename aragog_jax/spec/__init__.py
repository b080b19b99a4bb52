"""Specs: models, engines, stages, workflows and fleets, loaded from TOML and validated."""

from aragog_jax.spec._load import (
    DEFAULT_MODELS,
    PROFILES_DIR,
    WORKFLOWS_DIR,
    check_workflow,
    family_pool,
    load_fleet,
    load_models,
    load_profile,
    load_workflow,
    resolve,
    shipped_workflows,
)
from aragog_jax.spec._types import (
    CurvePoint,
    EngineProfile,
    EngineSpec,
    FleetSpec,
    ModelCatalog,
    ModelSpec,
    ServerSettings,
    StageSpec,
    WorkflowSpec,
)

__all__ = [
    "DEFAULT_MODELS",
    "PROFILES_DIR",
    "WORKFLOWS_DIR",
    "CurvePoint",
    "EngineProfile",
    "EngineSpec",
    "FleetSpec",
    "ModelCatalog",
    "ModelSpec",
    "ServerSettings",
    "StageSpec",
    "WorkflowSpec",
    "check_workflow",
    "family_pool",
    "load_fleet",
    "load_models",
    "load_profile",
    "load_workflow",
    "resolve",
    "shipped_workflows",
]
