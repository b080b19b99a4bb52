"""Load spec files from TOML and check them, naming the file, field and value on error."""

from __future__ import annotations

import string
from pathlib import Path
from typing import TypeVar

import msgspec

from aragog_jax.errors import SpecError
from aragog_jax.spec._types import (
    EngineProfile,
    FleetSpec,
    ModelCatalog,
    ModelSpec,
    WorkflowSpec,
)

#: The data shipped with the project (model cards, profiles, workflows, datasets, routers).
PROFILES_DIR = Path(__file__).resolve().parents[2] / "profiles"
DEFAULT_MODELS = PROFILES_DIR / "models.toml"
WORKFLOWS_DIR = PROFILES_DIR / "workflows"

T = TypeVar("T")


def decode_toml(path: str | Path, kind: type[T], what: str) -> T:
    """Decode and validate a TOML file into ``kind`` (a msgspec Struct).

    Raises ``SpecError`` with one line naming the file and, for invalid values, the
    field (``stage[1].input_tokens: Expected `int` >= 0``); ``what`` names the file's
    kind when it is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: {what} file not found")
    try:
        return msgspec.toml.decode(path.read_bytes(), type=kind)
    except msgspec.ValidationError as exc:
        # msgspec says e.g. "Expected `int` >= 0 - at `$.stage[1].input_tokens`".
        raise SpecError(f"{path}: {_field_first(str(exc))}") from exc
    except msgspec.DecodeError as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from exc


def _field_first(msg: str) -> str:
    """Reorder msgspec's "problem - at `$.a.b`" into "a.b: problem"."""
    problem, sep, where = msg.rpartition(" - at ")
    if not sep:
        return msg
    field = where.strip("`").removeprefix("$").removeprefix(".") or "(top level)"
    return f"{field}: {problem}"


def load_models(path: str | Path = DEFAULT_MODELS) -> ModelCatalog:
    """Load a model catalog and check names are unique and families name known models."""
    path = Path(path)
    catalog = decode_toml(path, ModelCatalog, "model catalog")
    seen: set[str] = set()
    for i, m in enumerate(catalog.model):
        if m.name in seen:
            raise SpecError(f"{path}: model[{i}].name: duplicate model name {m.name!r}")
        seen.add(m.name)
    for fam, names in catalog.families.items():
        if not names:
            raise SpecError(f"{path}: families.{fam}: a family needs at least one model")
        for n in names:
            if n not in seen:
                raise SpecError(
                    f"{path}: families.{fam}: unknown model {n!r} (known: {', '.join(sorted(seen))})"
                )
    return catalog


def family_pool(catalog: ModelCatalog, family: str) -> list[ModelSpec]:
    """Models of a named family, ascending by parameter count (ties: name)."""
    if family not in catalog.families:
        raise SpecError(f"unknown family {family!r} (known: {', '.join(sorted(catalog.families))})")
    by_name = {m.name: m for m in catalog.model}
    return sorted(
        (by_name[n] for n in catalog.families[family]), key=lambda m: (m.num_params, m.name)
    )


def load_workflow(path: str | Path, catalog: ModelCatalog | None = None) -> WorkflowSpec:
    """Load a workflow and check that its stages form a DAG over known models.

    Checks: duplicate stage names, unknown upstream stages, self loops and cycles,
    unknown models (against ``catalog``, default the shipped one), ties to unknown
    stages. Token counts are checked non-negative by the struct itself.
    """
    path = Path(path)
    wf = decode_toml(path, WorkflowSpec, "workflow")
    check_workflow(wf, catalog if catalog is not None else load_models(), where=str(path))
    return _anchor_functions(wf, path.parent)


def _anchor_functions(wf: WorkflowSpec, base: Path) -> WorkflowSpec:
    """Stage functions given as a relative ``file.py:function`` are relative to the
    workflow file; make them absolute so the spec means the same from any directory."""
    stages = []
    for s in wf.stage:
        mod, _, fn = s.function.rpartition(":")
        if mod.endswith(".py") and not Path(mod).is_absolute():
            s = msgspec.structs.replace(s, function=f"{(base / mod).resolve()}:{fn}")
        stages.append(s)
    return msgspec.structs.replace(wf, stage=stages)


def check_workflow(wf: WorkflowSpec, catalog: ModelCatalog, where: str = "workflow") -> None:
    if not wf.stage:
        raise SpecError(f"{where}: stage: a workflow needs at least one stage")
    known_models = {m.name for m in catalog.model}
    index: dict[str, int] = {}
    for i, s in enumerate(wf.stage):
        if s.name in index:
            raise SpecError(f"{where}: stage[{i}].name: duplicate stage name {s.name!r}")
        index[s.name] = i
    for i, s in enumerate(wf.stage):
        for up in s.upstream:
            if up not in index:
                raise SpecError(
                    f"{where}: stage[{i}].upstream: unknown stage {up!r} (stages: {', '.join(index)})"
                )
            if up == s.name:
                raise SpecError(f"{where}: stage[{i}].upstream: stage {s.name!r} lists itself")
        if len(set(s.upstream)) != len(s.upstream):
            raise SpecError(f"{where}: stage[{i}].upstream: repeated entries in {s.upstream!r}")
        for m in s.models:
            if m not in known_models:
                raise SpecError(
                    f"{where}: stage[{i}].models: unknown model {m!r} (known: {', '.join(sorted(known_models))})"
                )
        if len(set(s.models)) != len(s.models):
            raise SpecError(f"{where}: stage[{i}].models: repeated entries in {s.models!r}")
        for field in _placeholders(s.prompt, where, i):
            if field != "input" and field not in s.upstream:
                raise SpecError(
                    f"{where}: stage[{i}].prompt: placeholder {{{field}}} is neither 'input' nor "
                    f"an upstream stage of {s.name!r}"
                )
        if s.function:
            mod, sep, fn = s.function.rpartition(":")
            if not (sep and mod and fn.isidentifier()):
                raise SpecError(
                    f"{where}: stage[{i}].function: {s.function!r} is not module:function or path/to/file.py:function"
                )
        if s.same_model_as:
            if s.same_model_as not in index or s.same_model_as == s.name:
                raise SpecError(
                    f"{where}: stage[{i}].same_model_as: unknown stage {s.same_model_as!r}"
                )
            target = wf.stage[index[s.same_model_as]]
            if target.same_model_as:
                raise SpecError(
                    f"{where}: stage[{i}].same_model_as: {s.same_model_as!r} is itself tied; tie to its target"
                )
    cycle = _find_cycle(wf)
    if cycle:
        raise SpecError(f"{where}: stage.upstream: cycle {' -> '.join(cycle)}")


def _placeholders(template: str, where: str, i: int) -> list[str]:
    try:
        return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise SpecError(f"{where}: stage[{i}].prompt: bad template: {exc}") from exc


def _find_cycle(wf: WorkflowSpec) -> list[str]:
    ups = {s.name: s.upstream for s in wf.stage}
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(n: str) -> list[str]:
        state[n] = 1
        stack.append(n)
        for u in ups[n]:
            if state.get(u) == 1:
                return stack[stack.index(u) :] + [u]
            if u not in state:
                found = visit(u)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return []

    for s in wf.stage:
        if s.name not in state:
            found = visit(s.name)
            if found:
                return found
    return []


def load_profile(path: str | Path) -> EngineProfile:
    """Load an engine profile and check its curve is usable."""
    path = Path(path)
    prof = decode_toml(path, EngineProfile, "engine profile")
    if not prof.curve:
        raise SpecError(f"{path}: curve: needs at least one [concurrency, tokens_per_s] point")
    xs = [p.concurrency for p in prof.curve]
    if xs != sorted(set(xs)):
        raise SpecError(f"{path}: curve: concurrency values must be strictly increasing, got {xs}")
    return prof


def load_fleet(path: str | Path) -> FleetSpec:
    """Load a fleet file; relative paths inside it resolve against its directory."""
    path = Path(path)
    fleet = decode_toml(path, FleetSpec, "fleet")
    base = path.parent
    if not fleet.engine:
        raise SpecError(f"{path}: engine: a fleet needs at least one engine")
    names: set[str] = set()
    for i, e in enumerate(fleet.engine):
        if e.name in names:
            raise SpecError(f"{path}: engine[{i}].name: duplicate engine name {e.name!r}")
        names.add(e.name)
        if e.profile and not (base / e.profile).is_file():
            raise SpecError(f"{path}: engine[{i}].profile: file not found: {base / e.profile}")
    for i, w in enumerate(fleet.workflows):
        if not (base / w).is_file():
            raise SpecError(f"{path}: workflows[{i}]: file not found: {base / w}")
    for wf_name, r in fleet.routers.items():
        if not (base / r).exists():
            raise SpecError(f"{path}: routers.{wf_name}: file not found: {base / r}")
    if fleet.models and not (base / fleet.models).is_file():
        raise SpecError(f"{path}: models: file not found: {base / fleet.models}")
    return fleet


def resolve(fleet_path: str | Path, rel: str) -> Path:
    """Resolve a path written inside a fleet file."""
    return Path(fleet_path).parent / rel


def resolve_workflow(name_or_path: str | Path) -> Path:
    """A workflow file, or the name of a shipped workflow (``self_refine_humaneval``).

    Raises:
      SpecError: naming ``name_or_path`` (and the shipped names) when it is neither.
    """
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = WORKFLOWS_DIR / f"{name_or_path}.toml"
    if shipped.is_file():
        return shipped
    known = ", ".join(q.stem for q in shipped_workflows())
    raise SpecError(
        f"{name_or_path}: workflow file not found, and no shipped workflow has that name "
        f"(shipped: {known})"
    )


def shipped_workflows() -> list[Path]:
    """Paths of the workflow specs shipped under ``profiles/workflows``."""
    return sorted(WORKFLOWS_DIR.glob("*.toml"))
