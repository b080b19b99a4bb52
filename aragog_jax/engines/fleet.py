"""A fleet file's engines with their profiles: the one loader behind serve, simulate, label.

:func:`load_engine_fleet` reads a :class:`~aragog_jax.spec.FleetSpec`, its model catalog
(``models``, default the shipped one) and every engine's profile, and checks each engine:

* a ``vllm`` / ``sglang`` / ``openai`` engine needs a ``url`` (``kind = "emulated"`` or no
  url: the server emulates it on loopback from its profile);
* an emulated engine needs a ``profile``; a real engine without one gets
  :func:`~aragog_jax.engines.model.placeholder_profile` (``profiled = False``; the server
  sizes it from what the engine reports when it starts);
* with ``need_profiles`` (the simulator), every engine needs a profile.

:meth:`EngineFleet.check_family` checks that every engine serves a model of one family.

Errors are :class:`~aragog_jax.errors.SpecError`\\ s naming the file and the field.
(Workflow names become files through :func:`aragog_jax.spec.resolve_workflow`.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aragog_jax.engines.model import placeholder_profile
from aragog_jax.errors import SpecError
from aragog_jax.spec import (
    DEFAULT_MODELS,
    EngineProfile,
    EngineSpec,
    FleetSpec,
    ModelCatalog,
    ModelSpec,
    family_pool,
    load_fleet,
    load_models,
    load_profile,
    resolve,
)


@dataclass
class FleetEngine:
    """One engine of a fleet: its spec and the profile it behaves like."""

    spec: EngineSpec
    profile: EngineProfile
    profiled: bool  # False: a placeholder profile (no profile in the fleet file)

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

    @property
    def num_gpus(self) -> int:
        return max(self.spec.tensor_parallel, self.profile.num_gpus)


@dataclass(frozen=True)
class EngineFleet:
    """A loaded fleet file: the spec, its model catalog, its engines in file order."""

    spec: FleetSpec
    path: Path
    catalog: ModelCatalog
    engines: list[FleetEngine]

    @property
    def family(self) -> str:
        return self.spec.family

    def check_family(self, family: str) -> list[ModelSpec]:
        """The family's model pool; raises SpecError naming an engine whose model is not in it."""
        pool = family_pool(self.catalog, family)
        names = [m.name for m in pool]
        for i, e in enumerate(self.engines):
            if e.model not in names:
                raise SpecError(
                    f"{self.path}: engine[{i}].model: {e.model!r} is not in family {family!r} ({names})"
                )
        return pool


def load_engine_fleet(path: str | Path, *, need_profiles: str = "") -> EngineFleet:
    """Load a fleet file's catalog and engines (see the module docstring).

    Args:
      path: the fleet TOML.
      need_profiles: when given, every engine needs a profile; the text says who needs it.

    Raises:
      SpecError: naming the file, the engine's field and the problem.
    """
    path = Path(path)
    fleet = load_fleet(path)
    catalog = load_models(resolve(path, fleet.models) if fleet.models else DEFAULT_MODELS)
    engines: list[FleetEngine] = []
    for i, e in enumerate(fleet.engine):
        where = f"{path}: engine[{i}]"
        if not e.url and e.kind != "emulated":
            raise SpecError(f'{where}.url: a {e.kind} engine needs a url (or kind = "emulated")')
        if e.profile:
            engines.append(FleetEngine(e, load_profile(resolve(path, e.profile)), True))
        elif need_profiles:
            raise SpecError(f"{where}.profile: {need_profiles}")
        elif e.kind == "emulated" or not e.url:
            raise SpecError(f"{where}.profile: an emulated engine needs a profile")
        else:
            engines.append(FleetEngine(e, placeholder_profile(e.model), False))
    return EngineFleet(fleet, path, catalog, engines)


__all__ = ["EngineFleet", "FleetEngine", "load_engine_fleet"]
