"""Convenience: workflow file + family name -> ConfigSpace."""

from __future__ import annotations

from pathlib import Path

from aragog_jax.space._space import DEFAULT_MAX_CONFIGS, ConfigSpace, build_space
from aragog_jax.spec import (
    DEFAULT_MODELS,
    family_pool,
    load_models,
    load_workflow,
    resolve_workflow,
)


def load_space(
    workflow: str | Path,
    family: str,
    *,
    models: str | Path = DEFAULT_MODELS,
    max_configs: int = DEFAULT_MAX_CONFIGS,
) -> ConfigSpace:
    """Load a workflow (path or shipped name) and build its space over a family's pool."""
    catalog = load_models(models)
    wf = load_workflow(resolve_workflow(workflow), catalog)
    return build_space(wf, family_pool(catalog, family), max_configs=max_configs)
