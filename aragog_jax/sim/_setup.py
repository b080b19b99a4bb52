"""What a simulation runs on: a fleet of engines, a workflow's space, its dataset, masks.

* Fleet: a FleetSpec file (default: the shipped ``profiles/fleets/<family>_<gpus>gpu.toml``),
  loaded by :func:`aragog_jax.engines.fleet.load_engine_fleet` like the server's; every
  engine needs a ``profile``.
* Dataset: ``profiles/datasets/<workflow>/<family>/`` (or ``--dataset DIR``).
* Masks: per dataset row, the configurations a policy may use.
  - ``oracle``: the accurate set from the dataset's scores (``accurate_labels``).
  - ``router``: a trained checkpoint's admitted set (see :mod:`aragog_jax.sim._masks`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aragog_jax.data import AccuracyDataset, accurate_labels, load_dataset
from aragog_jax.engines.fleet import FleetEngine, load_engine_fleet
from aragog_jax.errors import AragogError, SpecError
from aragog_jax.space import ConfigSpace, build_space
from aragog_jax.spec import (
    PROFILES_DIR,
    WorkflowSpec,
    family_pool,
    load_workflow,
    resolve_workflow,
)

DATASETS_DIR = PROFILES_DIR / "datasets"
FLEETS_DIR = PROFILES_DIR / "fleets"
ROUTERS_DIR = PROFILES_DIR / "routers"


@dataclass(eq=False)
class Setup:
    """Everything one simulated workflow × family × fleet needs."""

    workflow: WorkflowSpec
    family: str
    space: ConfigSpace
    dataset: AccuracyDataset
    engines: list[FleetEngine]
    fleet_path: Path
    rows: np.ndarray  # dataset rows requests draw from (the test split)
    labels: np.ndarray  # bool[N, C] oracle accurate sets of every dataset row
    tolerance: float = 0.0
    meta: dict = field(default_factory=dict)
    base_space: ConfigSpace | None = None  # the file workflow's space (differs for a variant)
    variant_index: np.ndarray | None = None  # int64[C]: variant config -> base config index

    @property
    def num_gpus(self) -> int:
        return sum(e.num_gpus for e in self.engines)


def default_fleet(family: str, gpus: int) -> Path:
    path = FLEETS_DIR / f"{family}_{gpus}gpu.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in FLEETS_DIR.glob("*.toml")))
        raise AragogError(
            f"no shipped fleet for family {family!r} on {gpus} GPUs (shipped: {known}); pass --fleet"
        )
    return path


def load_setup(
    workflow: str | Path,
    family: str,
    *,
    gpus: int = 8,
    fleet: str | Path | None = None,
    dataset: str | Path | None = None,
    split: str = "test",
    workflow_spec: WorkflowSpec | None = None,
) -> Setup:
    """Load fleet, workflow space and dataset; check they fit together.

    ``workflow_spec`` replaces the file's spec (e.g. a constrained variant) while the
    dataset stays the file workflow's: its scores are re-indexed onto the variant's space.
    """
    fleet_path = Path(fleet) if fleet else default_fleet(family, gpus)
    fl = load_engine_fleet(
        fleet_path, need_profiles="the simulator needs a profile for every engine"
    )
    engines = fl.engines
    catalog = fl.catalog
    wf_path = resolve_workflow(workflow)
    base_wf = load_workflow(wf_path, catalog)
    pool = family_pool(catalog, family)
    base_space = build_space(base_wf, pool)
    ds_path = Path(dataset) if dataset else DATASETS_DIR / base_wf.name / family
    if not (ds_path / "meta.json").is_file():
        raise AragogError(
            f"no accuracy dataset at {ds_path}; generate one with python -m aragog_jax.synth "
            f"--workflow {wf_path} --family {family} --out {ds_path}"
        )
    ds = load_dataset(ds_path, base_space)
    wf = base_wf
    space = base_space
    variant_index = None
    if workflow_spec is not None:
        wf = workflow_spec
        space = build_space(wf, pool)
        variant_index = _sub_index(base_space, space)
        ds = AccuracyDataset(
            ids=ds.ids,
            texts=ds.texts,
            splits=ds.splits,
            tokens=ds.tokens,
            scores=ds.scores[:, variant_index],
            meta=dict(ds.meta),
        )
    served = {e.model for e in engines}
    missing = [m for m in space.model_names if m not in served]
    if missing:
        raise SpecError(
            f"{fleet_path}: no engine serves {missing}, which workflow {wf.name!r} / family {family!r} needs"
        )
    rows = ds.split_index(split)
    tol = float(wf.accuracy_tolerance)
    labels = accurate_labels(ds.scores, space.c_max, tol)
    return Setup(
        workflow=wf,
        family=family,
        space=space,
        dataset=ds,
        engines=engines,
        fleet_path=fleet_path,
        rows=rows,
        labels=labels,
        tolerance=tol,
        meta={
            "dataset": str(ds_path),
            "workflow_file": str(wf_path),
            "variant": workflow_spec is not None,
        },
        base_space=base_space,
        variant_index=variant_index,
    )


def _sub_index(base: ConfigSpace, sub: ConfigSpace) -> np.ndarray:
    """int64[C_sub]: index in ``base`` of every configuration of a sub-space (same stages
    and models, fewer configurations)."""
    if sub.stage_names != base.stage_names or sub.model_names != base.model_names:
        raise SpecError(
            f"{sub.workflow}: a variant must keep the stages and models of {base.workflow}"
        )
    lookup = {tuple(int(m) for m in row): i for i, row in enumerate(base.configs)}
    return np.array([lookup[tuple(int(m) for m in row)] for row in sub.configs], dtype=np.int64)


def per_workflow_config(scores: np.ndarray, c_max: int, tolerance: float = 0.0) -> int:
    """The cheapest configuration whose mean score matches c_max's within ``tolerance``.

    ``scores`` are the rows the choice is made on (:func:`selection_rows`: never the
    test split the simulation draws requests from). Configurations are in ascending
    FLOPs order, so "cheapest" is the lowest index.
    """
    acc = np.asarray(scores, dtype=np.float64).mean(axis=0)
    ok = np.flatnonzero(acc >= acc[c_max] - tolerance - 1e-12)
    return int(ok[0])


#: per_workflow picks its configuration on at least this many inputs where the dataset
#: has them (the calibration split, topped up from the training split).
MIN_SELECTION_INPUTS = 500


def selection_rows(
    ds: AccuracyDataset, min_inputs: int = MIN_SELECTION_INPUTS
) -> tuple[np.ndarray, str]:
    """The rows per_workflow picks its configuration on, and a note saying which.

    The calibration split when it has ``min_inputs`` rows; otherwise the calibration
    split plus the training split (every row that is not test), so the choice never sees
    the test split the requests are drawn from. A dataset without either split raises.
    """
    cal = ds.split_index("calibration")
    if cal.size >= min_inputs:
        return cal, f"calibration split ({cal.size} inputs)"
    train = ds.split_index("train")
    rows = np.concatenate([cal, train])
    if rows.size == 0:
        raise AragogError(
            "per_workflow needs a calibration or train split to pick its configuration on"
        )
    return (
        rows,
        f"calibration + train splits ({cal.size} + {train.size} inputs; calibration alone has < {min_inputs})",
    )


def constrained_variant(wf: WorkflowSpec) -> WorkflowSpec | None:
    """The paper's constrained space, for every shipped workflow shape (None when a
    workflow has none of them):

    * parallel siblings share one model: every ``voter_*`` ties to the first voter,
      every ``solver_*`` to the first solver (voting, decomposition);
    * a reviewer uses the model it reviews: ``critique`` ties to ``refine``
      (self-refine), and a ``refine`` stage with a single upstream stage ties to it
      (text-to-SQL's refine reuses the SQL writer's model).
    """
    import msgspec

    names = wf.stage_names
    by_name = {s.name: s for s in wf.stage}
    ties: dict[str, str] = {}
    for prefix in ("voter_", "solver_"):
        group = [n for n in names if n.startswith(prefix)]
        for n in group[1:]:
            ties[n] = group[0]
    if "critique" in by_name and "refine" in by_name:
        ties["critique"] = "refine"
    elif "refine" in by_name and len(by_name["refine"].upstream) == 1:
        ties["refine"] = by_name["refine"].upstream[0]
    if not ties:
        return None
    stages = [
        msgspec.structs.replace(s, same_model_as=ties[s.name]) if s.name in ties else s
        for s in wf.stage
    ]
    return msgspec.structs.replace(wf, stage=stages, name=wf.name)
