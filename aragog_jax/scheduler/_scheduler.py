"""The scheduler: a synchronous state machine over the FIFO meta-queue (DESIGN §5).

Lifecycle of a request, and who calls what (the server and the simulator drive the same
object; no method awaits or blocks on I/O):

1. ``add_request(request_id, space, mask)`` — once, when the router has produced the
   request's admitted mask. The request joins the back of the meta-queue; its source
   stages become ready.
2. ``schedule(load) -> Plan`` — whenever some engine may have free slots and some stage
   is ready (after arrivals and stage completions). It assigns ready stages to engines;
   each assignment commits the stage's model into the request's viable mask and marks
   the stage running. The caller dispatches every ``plan.assignments`` entry and counts
   it in the next load vector.
3. ``on_stage_finished(request_id, stage)`` — when a dispatched stage returns. Its
   downstream stages become ready once all their upstream stages are done; after the
   last stage the request leaves the queue (``is_done`` turns True).
4. ``on_stage_failed(request_id, stage, engine)`` — when a dispatched stage errors or
   times out. The stage's model is excluded for that stage, the stage is ready again
   and re-enters planning with the configurations that remain; when none remains the
   request leaves the queue and :class:`NoViableConfigurationError` is raised.
5. ``cancel(request_id)`` — the client went away or its deadline passed; the request
   leaves the queue. Stages of a cancelled request must not be reported afterwards.

A request keeps its FIFO position until it finishes. Ready stages are ordered FIFO
across requests and deepest first within a request (depth = longest path to a sink;
ties: lower stage index). Invalid calls raise :class:`SchedulerError` saying why.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aragog_jax.errors import NoViableConfigurationError, SchedulerError
from aragog_jax.scheduler._load import UTILITY_SCALE, EngineInfo, LoadVector, curve_value, gain_row
from aragog_jax.scheduler._policy import DEFAULT_BEAM_WIDTH, Policy, make_policy
from aragog_jax.scheduler._round import (
    MIN_CONFIGS,
    MIN_ITEMS,
    MIN_SLOTS,
    RoundArrays,
    model_dtype,
    pad_round,
)
from aragog_jax.space import ConfigSpace, bucket_size

# Stage status.
WAITING, READY, RUNNING, DONE = 0, 1, 2, 3
_STATUS = ("waiting", "ready", "running", "done")
#: Finished requests remembered for ``is_done`` / ``realised_config``.
MAX_FINISHED = 65_536
#: Smallest row-table capacity (rows are per in-flight request).
_MIN_ROWS = 256
#: Per-engine gain rows and curve values remembered across rounds (each cache).
_CURVE_CACHE_SIZE = 16_384


@dataclass(frozen=True)
class Assignment:
    """One ready stage sent to one engine."""

    request_id: Hashable
    stage: int
    stage_name: str
    engine: str
    model: str


@dataclass(frozen=True)
class Skipped:
    """One ready stage left for a later round (none of its allowed engines had a slot)."""

    request_id: Hashable
    stage: int
    stage_name: str


@dataclass(frozen=True, eq=False)
class Plan:
    """The decision of one round.

    Attributes:
      assignments: stages dispatched this round, in FIFO item order.
      skipped: ready stages not dispatched, in FIFO item order (built on first access).
      utilization: U of DESIGN §5 — Σ_e [f_e(load_e + assigned_e) - f_e(load_e)] over
        Σ_e f_e(last curve point).
      flexibility: mean over the requests with an assignment of the share of their
        viable configurations kept (1.0 when nothing was assigned).
      policy: the policy's name.
      search_steps: items the policy's search looked at (the beam search's
        ``num_steps``; 0 when no kernel ran): what a round's cost grows with.
    """

    assignments: tuple[Assignment, ...]
    utilization: float
    flexibility: float
    policy: str
    _record: _RoundRecord | None = field(default=None, repr=False)
    search_steps: int = 0

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


@dataclass(frozen=True, eq=False)
class _RoundRecord:
    """What a plan needs to render its round: references, rendered only on demand.

    ``row_req`` is the scheduler's row -> request list of the round; the scheduler never
    changes an entry of it (compaction builds a new list), so ``row_req[rows[i]]`` stays
    item i's request. ``viable`` holds each item's request mask as it was before the
    round's commits (a per-round copy, zero-padded to the configuration bucket).
    """

    load: LoadVector
    model_names: tuple[str, ...]
    utility_scale: int
    row_req: list[_Request]
    rows: np.ndarray  # int[n] scheduler row of each item's request
    stages: np.ndarray  # int[n]
    viable: np.ndarray  # bool[>= n, >= C]
    engine: np.ndarray  # int[n], -1 not placed

    def skipped(self) -> tuple[Skipped, ...]:
        out = []
        for i in np.flatnonzero(self.engine < 0).tolist():
            req, s = self.row_req[self.rows[i]], int(self.stages[i])
            out.append(Skipped(req.request_id, s, req.info.space.stage_names[s]))
        return tuple(out)

    def render(self) -> dict[str, Any]:
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
                viable = self.viable[i, : req.info.space.num_configs]
                rows = req.info.configs[viable].tolist()
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


def round_flexibility(arrays: RoundArrays, engine: np.ndarray) -> float:
    """Mean over requests with an assignment of the viable share they keep this round."""
    placed = np.flatnonzero(engine[: arrays.num_items] >= 0)
    if placed.size == 0:
        return 1.0
    chosen_model = arrays.engine_model[engine[placed]].astype(arrays.item_cfg_model.dtype)
    kept = arrays.item_viable[placed] & (arrays.item_cfg_model[placed] == chosen_model[:, None])
    req = arrays.item_req[placed]
    starts = np.flatnonzero(
        np.concatenate([[True], req[1:] != req[:-1]])
    )  # a request's items are consecutive
    after = np.logical_and.reduceat(kept, starts, axis=0).sum(axis=1)
    before = arrays.item_viable[placed[starts]].sum(axis=1)
    return float(np.mean(after / np.maximum(before, 1)))


@dataclass(eq=False)
class _Space:
    """A registered configuration space, with model ids mapped to the scheduler's."""

    space: ConfigSpace
    configs: np.ndarray  # int[C, S] scheduler model ids (-1: model served by no engine)
    columns: np.ndarray  # int[S, C] the same, one contiguous row per stage
    served: np.ndarray  # bool[C] every stage's model has an engine
    downstream: tuple[tuple[int, ...], ...]
    stage_rank: np.ndarray  # int[S] position in "deepest first, then lower index"
    num_configs: int
    space_id: int  # row of the scheduler's rank -> stage table
    stage_base: int  # row of stage 0 in the scheduler's configuration-column table


class _Request:
    """One in-flight request. Its viable mask and ready flags live in the scheduler's
    row tables (row ``row``; -1 once it left the queue)."""

    __slots__ = (
        "request_id",
        "info",
        "admitted",
        "row",
        "status",
        "engine",
        "excluded",
        "ready",
        "num_done",
    )

    def __init__(self, request_id: Hashable, info: _Space, admitted: np.ndarray) -> None:
        self.request_id = request_id
        self.info = info
        self.admitted = admitted
        self.row = -1
        space = info.space
        self.status = [READY if not ups else WAITING for ups in space.upstream]
        self.engine = [-1] * space.num_stages
        self.excluded: set[tuple[int, int]] = set()  # (stage, scheduler model id)
        self.ready = sorted(
            (s for s in range(space.num_stages) if self.status[s] == READY),
            key=info.stage_rank.__getitem__,
        )
        self.num_done = 0


class Scheduler:
    """Synchronous meta-queue scheduler; see the module docstring for the call protocol.

    Args:
      engines: every engine the scheduler may assign to, in a fixed order. Several
        engines may serve one model (replicas).
      policy: a :class:`Policy` or a policy name (``aragog``, ``greedy``, ``per_input``,
        ``per_workflow``, ``brute_force``).
      beam_width: B of the ``aragog`` policy (when ``policy`` is a name).
      per_workflow: fixed configuration per workflow (``per_workflow`` policy).
      spaces: configuration spaces to register up front (others register on first use).
      utility_scale: U resolution, ``1 / utility_scale`` of fleet capacity.
    """

    def __init__(
        self,
        engines: Sequence[EngineInfo],
        policy: Policy | str = "aragog",
        *,
        beam_width: int = DEFAULT_BEAM_WIDTH,
        per_workflow: dict | None = None,
        spaces: Sequence[ConfigSpace] = (),
        utility_scale: int = UTILITY_SCALE,
    ) -> None:
        engines = tuple(engines)
        if not engines:
            raise SchedulerError("a scheduler needs at least one engine")
        names = [e.name for e in engines]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise SchedulerError(f"duplicate engine names {dup}")
        self.engines = engines
        self.engine_names = tuple(names)
        self._engine_index = {n: i for i, n in enumerate(names)}
        self.model_names = tuple(dict.fromkeys(e.model for e in engines))
        self._model_index = {m: i for i, m in enumerate(self.model_names)}
        self._engine_model = np.array([self._model_index[e.model] for e in engines], dtype=np.int32)
        self._engine_model_ids = self._engine_model.tolist()  # Python ints for per-commit compares
        self.policy: Policy = (
            make_policy(policy, beam_width=beam_width, per_workflow=per_workflow)
            if isinstance(policy, str)
            else policy
        )
        self.utility_scale = int(utility_scale)
        self._spaces: dict[int, _Space] = {}
        self._queue: dict[Hashable, _Request] = {}  # insertion order = FIFO
        self._finished: collections.OrderedDict[Hashable, dict[str, str]] = (
            collections.OrderedDict()
        )
        self._cfg_bucket = MIN_CONFIGS
        self._slot_bucket = bucket_size(max(max(e.saturation_batch for e in engines), MIN_SLOTS))
        self._cfg_dtype = model_dtype(len(self.model_names))
        # Per-request row tables, kept up to date by every transition so that a round
        # gathers its items with a few vectorised NumPy calls instead of a Python pass
        # over the queue. Rows are handed out in arrival order and never reused before a
        # compaction (which keeps their order), so row order is FIFO order.
        self._infos: list[_Space] = []
        self._max_stages = 1
        self._num_rows = 0
        self._row_req: list[
            _Request
        ] = []  # row -> request (entries never change; see _RoundRecord)
        self._viable_tab = np.zeros((_MIN_ROWS, self._cfg_bucket), dtype=bool)  # row -> viable mask
        self._ready_tab = np.zeros(
            (_MIN_ROWS, self._max_stages), dtype=bool
        )  # row, rank position -> ready
        self._row_space = np.zeros(_MIN_ROWS, dtype=np.int32)  # row -> _Space.space_id
        self._rank_stage = np.zeros(
            (0, self._max_stages), dtype=np.int32
        )  # space id, rank position -> stage
        self._stage_base = np.zeros(
            0, dtype=np.int32
        )  # space id -> row of its stage 0 in _column_tab
        self._column_tab = np.zeros(
            (0, self._cfg_bucket), dtype=self._cfg_dtype
        )  # (space, stage) -> model per config
        self._gain_cache: dict[
            tuple, tuple[Any, np.ndarray]
        ] = {}  # (curve id, load, slots, capacity) -> row
        self._value_cache: dict[
            tuple, tuple[Any, float]
        ] = {}  # (curve id, load, extra) -> f(load + extra)
        for sp in spaces:
            self._register(sp)

    # ---- queries ---------------------------------------------------------------------

    @property
    def num_in_flight(self) -> int:
        """Requests in the meta-queue (waiting, ready or running stages)."""
        return len(self._queue)

    @property
    def num_ready(self) -> int:
        """Ready stages over all in-flight requests."""
        return int(np.count_nonzero(self._ready_tab[: self._num_rows]))

    def request_ids(self) -> Iterator[Hashable]:
        """In-flight request ids in FIFO order."""
        return iter(self._queue)

    def is_done(self, request_id: Hashable) -> bool:
        """True once every stage of the request finished (remembered for the last
        ``MAX_FINISHED`` requests)."""
        if request_id in self._finished:
            return True
        self._get(request_id)
        return False

    def realised_config(self, request_id: Hashable) -> dict[str, str]:
        """Stage name -> model name of every stage committed so far (all, once done)."""
        if request_id in self._finished:
            return dict(self._finished[request_id])
        return self._committed(self._get(request_id))

    def stage_status(self, request_id: Hashable) -> dict[str, str]:
        """Stage name -> waiting / ready / running / done."""
        req = self._get(request_id)
        return {n: _STATUS[s] for n, s in zip(req.info.space.stage_names, req.status, strict=True)}

    def viable_mask(self, request_id: Hashable) -> np.ndarray:
        """bool[C] configurations the request can still realise (a copy)."""
        return self._viable(self._get(request_id)).copy()

    def warmup(self, max_items: int = 1024) -> int:
        """Compile the round for every item bucket up to ``max_items`` (call at start-up).

        Uses the configuration bucket of the spaces registered so far (pass ``spaces``
        to the constructor). Later rounds in these buckets never trace or compile.
        Returns the number of buckets ready; 0 for policies without a compiled kernel.
        """
        compiled = getattr(self.policy, "compiled", None)
        if compiled is None:
            return 0
        num_engines = len(self.engines)
        buckets = 0
        r_b = MIN_ITEMS
        while True:
            arrays = pad_round(
                np.zeros((0, self._cfg_bucket), dtype=bool),
                np.zeros((0, self._cfg_bucket), dtype=self._cfg_dtype),
                np.zeros(0, dtype=np.int32),
                self._engine_model,
                np.zeros(num_engines, dtype=np.int32),
                np.zeros((num_engines, self._slot_bucket), dtype=np.int32),
                len(self.model_names),
                item_bucket=r_b,
                cfg_bucket=self._cfg_bucket,
            )
            compiled.compile(arrays, self.policy.beam_width)
            buckets += 1
            if r_b >= max_items:
                return buckets
            r_b *= 2

    # ---- transitions -----------------------------------------------------------------

    def add_request(
        self, request_id: Hashable, space: ConfigSpace, mask: np.ndarray | None = None
    ) -> None:
        """Append a request to the meta-queue with its admitted mask (bool[C]; None: all).

        Configurations that use a model no engine serves are dropped. Raises
        :class:`SchedulerError` for a duplicate id or a malformed mask and
        :class:`NoViableConfigurationError` when nothing admitted can run.
        """
        if request_id in self._queue or request_id in self._finished:
            raise SchedulerError(f"request {request_id!r} was already added")
        info = self._register(space)
        if mask is None:
            mask = np.ones(space.num_configs, dtype=bool)
        mask = np.asarray(mask)
        if mask.shape != (space.num_configs,) or mask.dtype != np.bool_:
            raise SchedulerError(
                f"request {request_id!r}: mask must be bool[{space.num_configs}] for workflow "
                f"{space.workflow!r}, got {mask.dtype}{list(mask.shape)}"
            )
        admitted = (
            np.asarray(self.policy.admit(space, mask & info.served), dtype=bool) & info.served
        )
        if not admitted.any():
            raise NoViableConfigurationError(
                f"request {request_id!r}: no admitted configuration of {space.workflow!r} can run on engines "
                f"serving {list(self.model_names)}"
            )
        req = _Request(request_id, info, admitted)
        self._attach(req)
        self._queue[request_id] = req

    def schedule(self, load: LoadVector) -> Plan:
        """Plan one round: assign ready stages to engines with free slots.

        ``load`` must name exactly this scheduler's engines. Assigned stages are marked
        running and their models committed before this returns.
        """
        load = self._check_load(load)
        # Items: ready stages, FIFO across requests (row order), ``ready`` order within
        # one (rank position order): the row-major nonzeros of the ready table.
        rows, pos = np.nonzero(self._ready_tab[: self._num_rows])
        n = rows.size
        space_ids = self._row_space[rows]
        stages = self._rank_stage[space_ids, pos]
        if n == 0:
            none = np.zeros((0, 0), dtype=bool)
            empty = _RoundRecord(
                load,
                self.model_names,
                self.utility_scale,
                self._row_req,
                rows,
                stages,
                none,
                stages,
            )
            return Plan((), 0.0, 1.0, str(self.policy.name), empty)
        item_viable = self._gather_viable(rows)
        free = load.free_slots()
        if free.any():
            arrays = self._round_arrays(rows, space_ids, stages, item_viable, free, load)
            result = self.policy.assign(arrays)
            engine = np.asarray(result.engine)[:n]
            steps = int(result.num_steps)
        else:  # nothing can be placed: no kernel, no commit
            engine = np.full(n, -1, dtype=np.int32)
            steps = 0
        assignments = []
        row_req = self._row_req
        first_placed: dict[
            _Request, int
        ] = {}  # requests with an assignment -> their first placed item
        for i in np.flatnonzero(engine >= 0).tolist():
            req, s, e = row_req[rows[i]], int(stages[i]), int(engine[i])
            self._commit(req, s, e)
            first_placed.setdefault(req, i)
            assignments.append(
                Assignment(
                    req.request_id,
                    s,
                    req.info.space.stage_names[s],
                    self.engine_names[e],
                    self.engines[e].model,
                )
            )
        if assignments:
            counts = np.bincount(engine[engine >= 0], minlength=len(self.engines))
            utilization = self._utilization(load, counts)
            # round_flexibility(arrays, engine) without re-deriving the narrowed masks: a
            # request's committed mask is its round mask narrowed by every placed item's
            # model, which is what round_flexibility computes (same counts, same order).
            before = item_viable[list(first_placed.values())].sum(axis=1)
            after = self._viable_tab[[req.row for req in first_placed]].sum(axis=1)
            flexibility = float(np.mean(after / np.maximum(before, 1)))
        else:  # Σ_e [f_e(load_e + 0) - f_e(load_e)] is exactly 0.0
            utilization, flexibility = 0.0, 1.0
        record = _RoundRecord(
            load, self.model_names, self.utility_scale, row_req, rows, stages, item_viable, engine
        )
        return Plan(
            tuple(assignments), utilization, flexibility, str(self.policy.name), record, steps
        )

    def on_stage_finished(self, request_id: Hashable, stage: int | str) -> bool:
        """A dispatched stage returned. Returns True when the request is now done."""
        req = self._get(request_id)
        s = self._stage(req, stage)
        self._expect_running(req, s, "finish")
        req.status[s] = DONE
        req.num_done += 1
        space = req.info.space
        if req.num_done == space.num_stages:
            del self._queue[request_id]
            self._detach(req)
            self._finished[request_id] = self._committed(req)
            while len(self._finished) > MAX_FINISHED:
                self._finished.popitem(last=False)
            return True
        rank = req.info.stage_rank
        for d in req.info.downstream[s]:
            if req.status[d] == WAITING and all(req.status[u] == DONE for u in space.upstream[d]):
                req.status[d] = READY
                req.ready.append(d)
                self._ready_tab[req.row, rank[d]] = True
        req.ready.sort(key=rank.__getitem__)
        return False

    def on_stage_failed(self, request_id: Hashable, stage: int | str, engine: str) -> None:
        """A dispatched stage failed on ``engine``: exclude its model there and replan.

        Raises:
          NoViableConfigurationError: no admitted configuration avoids the failed
            (stage, model) pairs; the request has left the queue.
        """
        req = self._get(request_id)
        s = self._stage(req, stage)
        self._expect_running(req, s, "fail")
        e = self._engine_index.get(engine)
        if e is None:
            raise SchedulerError(
                f"on_stage_failed: unknown engine {engine!r}; engines are {list(self.engine_names)}"
            )
        if req.engine[s] != e:
            raise SchedulerError(
                f"request {request_id!r} stage {req.info.space.stage_names[s]!r} runs on "
                f"{self.engine_names[req.engine[s]]!r}, not {engine!r}"
            )
        model = int(self._engine_model[e])
        req.excluded.add((s, model))
        req.status[s] = READY
        req.engine[s] = -1
        req.ready.append(s)
        req.ready.sort(key=req.info.stage_rank.__getitem__)
        self._ready_tab[req.row, req.info.stage_rank[s]] = True
        viable = self._recompute_viable(req)
        self._viable(req)[:] = viable
        if not viable.any():
            del self._queue[request_id]
            self._detach(req)
            raise NoViableConfigurationError(
                f"request {request_id!r}: no admitted configuration left after {self.model_names[model]!r} failed "
                f"at stage {req.info.space.stage_names[s]!r}"
            )

    def cancel(self, request_id: Hashable) -> None:
        """Remove a request from the meta-queue, whatever its state."""
        req = self._get(request_id)
        del self._queue[request_id]
        self._detach(req)

    # ---- internals -------------------------------------------------------------------

    def _get(self, request_id: Hashable) -> _Request:
        req = self._queue.get(request_id)
        if req is None:
            raise SchedulerError(
                f"unknown request {request_id!r} (never added, finished, failed or cancelled)"
            )
        return req

    def _stage(self, req: _Request, stage: int | str) -> int:
        names = req.info.space.stage_names
        if isinstance(stage, str):
            if stage not in names:
                raise SchedulerError(
                    f"request {req.request_id!r}: unknown stage {stage!r}; stages are {list(names)}"
                )
            return names.index(stage)
        s = int(stage)
        if not 0 <= s < len(names):
            raise SchedulerError(
                f"request {req.request_id!r}: stage index {s} outside 0..{len(names) - 1}"
            )
        return s

    def _expect_running(self, req: _Request, s: int, verb: str) -> None:
        if req.status[s] != RUNNING:
            raise SchedulerError(
                f"cannot {verb} stage {req.info.space.stage_names[s]!r} of request {req.request_id!r}: "
                f"it is {_STATUS[req.status[s]]}, not running"
            )

    def _committed(self, req: _Request) -> dict[str, str]:
        names = req.info.space.stage_names
        return {
            names[s]: self.engines[e].model
            for s, e in enumerate(req.engine)
            if e >= 0 and req.status[s] in (RUNNING, DONE)
        }

    def _viable(self, req: _Request) -> np.ndarray:
        """bool[C] view of the request's viable mask in the row table (valid until the
        next add_request or register, which may reallocate the table)."""
        return self._viable_tab[req.row, : req.info.space.num_configs]

    def _commit(self, req: _Request, s: int, e: int) -> None:
        req.status[s] = RUNNING
        req.engine[s] = e
        req.ready.remove(s)
        info = req.info
        self._ready_tab[req.row, info.stage_rank[s]] = False
        viable = self._viable_tab[req.row, : info.num_configs]
        viable &= info.columns[s] == self._engine_model_ids[e]

    def _recompute_viable(self, req: _Request) -> np.ndarray:
        configs = req.info.configs
        viable = req.admitted.copy()
        for s, e in enumerate(req.engine):
            if e >= 0:
                viable &= configs[:, s] == self._engine_model[e]
        for s, m in req.excluded:
            viable &= configs[:, s] != m
        return viable

    # ---- row tables ------------------------------------------------------------------

    def _attach(self, req: _Request) -> None:
        """Give a new request the next row (the back of the FIFO order) and fill it."""
        if self._num_rows == self._viable_tab.shape[0]:
            self._compact()
        row = self._num_rows
        self._num_rows += 1
        req.row = row
        self._row_req.append(req)
        info = req.info
        self._viable_tab[row] = False
        self._viable_tab[row, : info.space.num_configs] = req.admitted
        self._ready_tab[row] = False
        self._ready_tab[row, info.stage_rank[req.ready]] = True
        self._row_space[row] = info.space_id

    def _detach(self, req: _Request) -> None:
        """The request left the queue: its row never yields an item again."""
        self._ready_tab[req.row] = False
        req.row = -1

    def _compact(self) -> None:
        """Move the rows of in-flight requests to the front, in order, into tables sized
        for twice as many (rows are only handed out at the back)."""
        live = [r.row for r in self._queue.values()]  # queue order is row order
        keep = np.array(live, dtype=np.int64)
        cap = max(_MIN_ROWS, 2 * bucket_size(len(live) + 1))
        self._viable_tab = self._resized(self._viable_tab, keep, cap)
        self._ready_tab = self._resized(self._ready_tab, keep, cap)
        self._row_space = self._resized(self._row_space, keep, cap)
        self._row_req = list(self._queue.values())  # a new list: records keep the old one
        for i, req in enumerate(self._row_req):
            req.row = i
        self._num_rows = len(live)

    @staticmethod
    def _resized(table: np.ndarray, keep: np.ndarray, cap: int) -> np.ndarray:
        out = np.zeros((cap, *table.shape[1:]), dtype=table.dtype)
        out[: keep.size] = table[keep]
        return out

    def _gather_viable(self, rows: np.ndarray) -> np.ndarray:
        """bool[R, C] padded viable masks of the round's items (a fresh array: the plan's
        record keeps it)."""
        r_b = bucket_size(max(rows.size, MIN_ITEMS))
        out = np.zeros((r_b, self._viable_tab.shape[1]), dtype=bool)
        np.take(self._viable_tab, rows, axis=0, out=out[: rows.size], mode="clip")
        return out

    def _register(self, space: ConfigSpace) -> _Space:
        info = self._spaces.get(id(space))
        if info is not None and info.space is space:
            return info
        lookup = np.array([self._model_index.get(m, -1) for m in space.model_names], dtype=np.int32)
        configs = lookup[space.configs]
        downstream: list[list[int]] = [[] for _ in range(space.num_stages)]
        for d, ups in enumerate(space.upstream):
            for u in ups:
                downstream[u].append(d)
        order = sorted(range(space.num_stages), key=lambda s: (-int(space.stage_depth[s]), s))
        rank = np.empty(space.num_stages, dtype=np.int64)
        rank[order] = np.arange(space.num_stages)
        info = _Space(
            space=space,
            configs=configs.astype(self._cfg_dtype),
            columns=np.ascontiguousarray(configs.T.astype(self._cfg_dtype)),
            served=(configs >= 0).all(axis=1),
            downstream=tuple(tuple(d) for d in downstream),
            stage_rank=rank,
            num_configs=space.num_configs,
            space_id=len(self._infos),
            stage_base=self._column_tab.shape[0],
        )
        self._spaces[id(space)] = info
        self._infos.append(info)
        self._cfg_bucket = max(self._cfg_bucket, bucket_size(space.num_configs))
        self._max_stages = max(self._max_stages, space.num_stages)
        # Widen the row tables to the new bucket / stage count (new cells: False).
        rows, c_b, s_max = self._viable_tab.shape[0], self._cfg_bucket, self._max_stages
        if self._viable_tab.shape[1] != c_b:
            wide = np.zeros((rows, c_b), dtype=bool)
            wide[:, : self._viable_tab.shape[1]] = self._viable_tab
            self._viable_tab = wide
        if self._ready_tab.shape[1] != s_max:
            wide = np.zeros((rows, s_max), dtype=bool)
            wide[:, : self._ready_tab.shape[1]] = self._ready_tab
            self._ready_tab = wide
        rank_stage = np.zeros((len(self._infos), s_max), dtype=np.int32)
        rank_stage[: self._rank_stage.shape[0], : self._rank_stage.shape[1]] = self._rank_stage
        rank_stage[info.space_id, : space.num_stages] = order
        self._rank_stage = rank_stage
        self._stage_base = np.append(self._stage_base, np.int32(info.stage_base)).astype(np.int32)
        columns = np.full(
            (self._column_tab.shape[0] + space.num_stages, c_b), -1, dtype=self._cfg_dtype
        )
        columns[: self._column_tab.shape[0], : self._column_tab.shape[1]] = self._column_tab
        columns[info.stage_base :, : space.num_configs] = info.columns
        self._column_tab = columns
        return info

    def _check_load(self, load: LoadVector) -> LoadVector:
        if not isinstance(load, LoadVector):
            raise SchedulerError(f"schedule() needs a LoadVector, got {type(load).__name__}")
        names = load.names
        if names == self.engine_names:
            return load
        unknown = sorted(set(names) - set(self.engine_names))
        if unknown:
            raise SchedulerError(
                f"load vector names unknown engines {unknown}; engines are {list(self.engine_names)}"
            )
        missing = sorted(set(self.engine_names) - set(names))
        if missing or len(names) != len(set(names)):
            raise SchedulerError(
                f"load vector must give each engine once; missing {missing}, got {list(names)}"
            )
        by_name = {e.name: e for e in load.engines}
        return LoadVector(tuple(by_name[n] for n in self.engine_names))

    def _gain_table(self, load: LoadVector, num_slots: int) -> np.ndarray:
        """``load.gain_table(num_slots, utility_scale)`` from rows remembered across
        rounds: each engine's row depends only on its curve and load, which repeat."""
        cap = load.capacity()
        out = np.zeros((len(load.engines), num_slots), dtype=np.int32)
        if cap <= 0:
            return out
        cache = self._gain_cache
        for e, eng in enumerate(load.engines):
            curve = eng.curve
            key = (id(curve), eng.load, num_slots, cap)
            hit = cache.get(key)
            if hit is None or hit[0] is not curve:
                if len(cache) >= _CURVE_CACHE_SIZE:
                    cache.clear()
                # Holding the curve keeps its id from being reused while the entry lives.
                hit = cache[key] = (
                    curve,
                    gain_row(curve, eng.load, num_slots, cap, self.utility_scale),
                )
            out[e] = hit[1]
        return out

    def _utilization(self, load: LoadVector, counts: np.ndarray) -> float:
        """``load.utilization(counts)`` from curve values remembered across rounds."""
        cap = load.capacity()
        if cap <= 0:
            return 0.0
        cache = self._value_cache
        extra = np.asarray(counts, dtype=np.float64)
        after = np.empty(len(load.engines))
        before = np.empty(len(load.engines))
        for e, (eng, x) in enumerate(zip(load.engines, extra.tolist(), strict=True)):
            curve = eng.curve
            for out, dx in ((after, x), (before, 0.0)):
                key = (id(curve), eng.load, dx)
                hit = cache.get(key)
                if hit is None or hit[0] is not curve:
                    if len(cache) >= _CURVE_CACHE_SIZE:
                        cache.clear()
                    hit = cache[key] = (curve, curve_value(curve, eng.load + np.float64(dx)))
                out[e] = hit[1]
        gain = after - before
        return float(gain.sum() / cap)

    def _round_arrays(
        self,
        rows: np.ndarray,
        space_ids: np.ndarray,
        stages: np.ndarray,
        item_viable: np.ndarray,
        free: np.ndarray,
        load: LoadVector,
    ) -> RoundArrays:
        """Padded kernel inputs from the row tables; items of one request are consecutive
        and share a request slot."""
        n = rows.size
        r_b, c_b = item_viable.shape
        item_cfg_model = np.full((r_b, c_b), -1, dtype=self._cfg_dtype)
        np.take(
            self._column_tab,
            self._stage_base[space_ids] + stages,
            axis=0,
            out=item_cfg_model[:n],
            mode="clip",
        )
        first = np.ones(n, dtype=bool)
        first[1:] = rows[1:] != rows[:-1]
        item_req = np.full(r_b, -1, dtype=np.int32)
        np.cumsum(first, dtype=np.int32, out=item_req[:n])
        item_req[:n] -= 1
        item_valid = np.zeros(r_b, dtype=bool)
        item_valid[:n] = True
        k_b = max(self._slot_bucket, bucket_size(max(int(free.max()), MIN_SLOTS)))
        return RoundArrays(
            item_viable=item_viable,
            item_cfg_model=item_cfg_model,
            item_req=item_req,
            item_valid=item_valid,
            engine_model=self._engine_model,
            free_slots=free,
            gain=self._gain_table(load, k_b),
            num_models=len(self.model_names),
            num_items=n,
        )
