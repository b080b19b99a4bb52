"""What one scheduling round decided, and how to render it for replay.

A :class:`Plan` is the scheduler's output of one round: the assignments (request id,
stage index, engine), the round's U, and a :class:`RoundRecord` holding references to
what the round saw. The round's F, its rendering as the round-replay CLI's input
(:meth:`Plan.to_replay`) and the skipped stages are built from the record only when
asked for, so a round that nobody inspects pays nothing for them.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from aragog_jax.scheduler._load import LoadVector
from aragog_jax.scheduler._round import RoundArrays
from aragog_jax.space import ConfigSpace


@dataclass(frozen=True, init=False)
class Assignment:
    """One ready stage sent to one engine (``stage`` is the index; ``stage_name`` and
    ``model`` are labels for people and receipts)."""

    request_id: Hashable
    stage: int
    stage_name: str
    engine: str
    model: str

    def __init__(
        self, request_id: Hashable, stage: int, stage_name: str, engine: str, model: str
    ) -> None:
        # The instance dict filled at once: a frozen dataclass's generated __init__ sets
        # each field through object.__setattr__ (a round builds one per dispatched stage).
        self.__dict__.update(
            request_id=request_id, stage=stage, stage_name=stage_name, engine=engine, model=model
        )


@dataclass(frozen=True)
class Skipped:
    """One ready stage left for a later round (none of its allowed engines had a slot)."""

    request_id: Hashable
    stage: int
    stage_name: str


class RecordedRequest(Protocol):
    """What a record reads from a request of the round (the state machine's request)."""

    request_id: Hashable

    @property
    def space(self) -> ConfigSpace: ...

    @property
    def configs(self) -> np.ndarray: ...


@dataclass(frozen=True, eq=False, init=False)
class RoundRecord:
    """What a plan needs to render its round: references, rendered only on demand.

    ``row_req`` is the row -> request list of the round's row tables; the tables never
    change an entry of it (compaction builds a new list), so ``row_req[rows[i]]`` stays
    item i's request. ``viable`` holds each item's request mask as it was before the
    round's commits (a per-round copy, zero-padded to the configuration bucket).
    """

    load: LoadVector
    model_names: tuple[str, ...]
    utility_scale: int
    row_req: Sequence[RecordedRequest]
    rows: np.ndarray  # int[n] row of each item's request
    stages: np.ndarray  # int[n]
    viable: np.ndarray  # bool[>= n, >= C]
    engine: np.ndarray  # int[n], -1 not placed

    def __init__(
        self,
        load: LoadVector,
        model_names: tuple[str, ...],
        utility_scale: int,
        row_req: Sequence[RecordedRequest],
        rows: np.ndarray,
        stages: np.ndarray,
        viable: np.ndarray,
        engine: np.ndarray,
    ) -> None:
        # Filled at once, as Assignment's (one record per round).
        self.__dict__.update(
            load=load,
            model_names=model_names,
            utility_scale=utility_scale,
            row_req=row_req,
            rows=rows,
            stages=stages,
            viable=viable,
            engine=engine,
        )

    @property
    def num_items(self) -> int:
        return int(self.rows.size)

    def flexibility(self) -> float:
        """:func:`round_flexibility` of the round, from the masks as they were before its
        commits and the placed items' requests' configurations."""
        placed = np.flatnonzero(self.engine >= 0)
        if not placed.size:
            return 1.0
        model_id = {name: m for m, name in enumerate(self.model_names)}
        engine_model = [model_id[e.model] for e in self.load.engines]
        rows = self.rows.take(placed)
        stages, engines = self.stages.take(placed).tolist(), self.engine.take(placed).tolist()
        uses = np.zeros((placed.size, self.viable.shape[1]), dtype=bool)
        for k, (row, s, e) in enumerate(zip(rows.tolist(), stages, engines, strict=True)):
            configs = self.row_req[row].configs  # int[C, S] model ids
            uses[k, : configs.shape[0]] = configs[:, s] == engine_model[e]
        return kept_share(self.viable.take(placed, axis=0), uses, rows)

    def skipped(self) -> tuple[Skipped, ...]:
        out = []
        for i in np.flatnonzero(self.engine < 0).tolist():
            req, s = self.row_req[self.rows[i]], int(self.stages[i])
            out.append(Skipped(req.request_id, s, req.space.stage_names[s]))
        return tuple(out)

    def render(self) -> dict[str, Any]:
        """The round-replay CLI's input (see :mod:`aragog_jax.scheduler._replay`)."""
        engines = [
            {
                "name": e.name,
                "model": e.model,
                "free_slots": e.free_slots,
                "load": e.load,
                "curve": [list(p) for p in e.curve],
            }
            for e in self.load.engines
        ]
        requests: list[dict[str, Any]] = []
        prev = None
        for i, (row, s) in enumerate(zip(self.rows.tolist(), self.stages.tolist(), strict=True)):
            req = self.row_req[row]
            if req is not prev:
                viable = self.viable[i, : req.space.num_configs]
                rows = req.configs[viable].tolist()
                requests.append(
                    {
                        "id": req.request_id,
                        "configs": [[self.model_names[m] for m in row] for row in rows],
                        "ready": [],
                    }
                )
                prev = req
            requests[-1]["ready"].append(s)
        return {"utility_scale": self.utility_scale, "engines": engines, "requests": requests}


@dataclass(frozen=True, eq=False, init=False)
class Plan:
    """The decision of one round.

    Attributes:
      assignments: stages dispatched this round, in FIFO item order.
      skipped: ready stages not dispatched, in FIFO item order (built on first access).
      utilization: U of DESIGN §5 — Σ_e [f_e(load_e + assigned_e) - f_e(load_e)] over
        Σ_e f_e(last curve point).
      flexibility: mean over the requests with an assignment of the share of their
        viable configurations kept (1.0 when nothing was assigned); a property, computed
        from the round's record when first read.
      policy: the policy's name.
      search_steps: items the policy's search looked at (the beam search's
        ``num_steps``; 0 when no kernel ran): what a round's cost grows with.
      round_id: the scheduler's round counter (0, 1, ...), for receipts and replay.
    """

    assignments: tuple[Assignment, ...]
    utilization: float
    policy: str
    _record: RoundRecord | None = field(default=None, repr=False)
    search_steps: int = 0
    round_id: int = 0

    def __init__(
        self,
        assignments: tuple[Assignment, ...],
        utilization: float,
        policy: str,
        _record: RoundRecord | None = None,
        search_steps: int = 0,
        round_id: int = 0,
    ) -> None:
        # Filled at once, as Assignment's (one plan per round).
        self.__dict__.update(
            assignments=assignments,
            utilization=utilization,
            policy=policy,
            _record=_record,
            search_steps=search_steps,
            round_id=round_id,
        )

    @functools.cached_property
    def flexibility(self) -> float:
        """F, computed from the record on first access (nothing on the serving path or
        in the simulator reads it; receipts and the replay format do)."""
        return self._record.flexibility() if self._record is not None else 1.0

    @property
    def num_items(self) -> int:
        """Ready stages the round looked at (assigned + skipped)."""
        return self._record.num_items if self._record is not None else len(self.assignments)

    @functools.cached_property
    def skipped(self) -> tuple[Skipped, ...]:
        return self._record.skipped() if self._record is not None else ()

    def decision(self) -> dict[str, Any]:
        """The round-replay CLI's output format for this plan."""
        return {
            "assignments": [
                {"request": a.request_id, "stage": a.stage, "engine": a.engine}
                for a in self.assignments
            ],
            "skipped": [{"request": s.request_id, "stage": s.stage} for s in self.skipped],
            "utilization": self.utilization,
            "flexibility": self.flexibility,
        }

    def to_replay(self) -> dict[str, Any]:
        """The round-replay CLI's input for this round (engines and requests).

        ``python -m aragog_jax.schedule`` on it reproduces :meth:`decision` (with the
        policy and beam width of this scheduler). Rendered on demand: it lists every
        viable configuration of every request in the round.
        """
        if self._record is None:
            return {"engines": [], "requests": []}
        return self._record.render()

    def dump(self) -> dict[str, Any]:
        """Round id, policy, the replay input and the decision (a receipt's round entry)."""
        return {
            "round_id": self.round_id,
            "policy": self.policy,
            "round": self.to_replay(),
            "decision": self.decision(),
        }


def round_flexibility(arrays: RoundArrays, engine: np.ndarray) -> float:
    """Mean over requests with an assignment of the viable share they keep this round."""
    placed = np.flatnonzero(engine[: arrays.num_items] >= 0)
    if placed.size == 0:
        return 1.0
    chosen_model = arrays.engine_model[engine[placed]].astype(arrays.item_cfg_model.dtype)
    uses = arrays.item_cfg_model[placed] == chosen_model[:, None]
    return kept_share(arrays.item_viable[placed], uses, arrays.item_req[placed])


def kept_share(viable: np.ndarray, uses: np.ndarray, keys: np.ndarray) -> float:
    """F of a round from its placed items (bool[p, C] each one's request's viable mask
    before the round, bool[p, C] the configurations that use the item's model at its
    stage, int[p] its request's key; a request's items are consecutive): per request, the
    viable configurations that every one of its placed items keeps over its viable ones;
    the mean over requests."""
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    after = np.logical_and.reduceat(viable & uses, starts, axis=0).sum(axis=1)
    before = viable[starts].sum(axis=1)
    return float(np.mean(after / np.maximum(before, 1)))
