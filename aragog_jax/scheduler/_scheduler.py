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
import itertools
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aragog_jax.errors import NoViableConfigurationError, SchedulerError
from aragog_jax.scheduler._load import UTILITY_SCALE, EngineInfo, LoadVector
from aragog_jax.scheduler._policy import DEFAULT_BEAM_WIDTH, Policy, make_policy
from aragog_jax.scheduler._round import MIN_CONFIGS, MIN_ITEMS, MIN_SLOTS, RoundArrays, model_dtype
from aragog_jax.space import ConfigSpace, bucket_size

# Stage status.
WAITING, READY, RUNNING, DONE = 0, 1, 2, 3
_STATUS = ("waiting", "ready", "running", "done")
#: Finished requests remembered for ``is_done`` / ``realised_config``.
MAX_FINISHED = 65_536


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
    """

    assignments: tuple[Assignment, ...]
    utilization: float
    flexibility: float
    policy: str
    _record: _RoundRecord | None = field(default=None, repr=False)

    @functools.cached_property
    def skipped(self) -> tuple[Skipped, ...]:
        return self._record.skipped() if self._record is not None else ()

    def decision(self) -> dict[str, Any]:
        """The round-replay CLI's output format for this plan."""
        return {
            "assignments": [{"request": a.request_id, "stage": a.stage, "engine": a.engine} for a in self.assignments],
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

    ``viable`` holds each item's request mask as it was before the round's commits
    (commits replace a request's mask, never mutate it).
    """

    load: LoadVector
    model_names: tuple[str, ...]
    utility_scale: int
    reqs: list[_Request]
    stages: np.ndarray  # int[n]
    viable: list[np.ndarray]
    engine: np.ndarray  # int[n], -1 not placed

    def skipped(self) -> tuple[Skipped, ...]:
        return tuple(
            Skipped(self.reqs[i].request_id, int(self.stages[i]), self.reqs[i].info.space.stage_names[self.stages[i]])
            for i in np.flatnonzero(self.engine < 0).tolist()
        )

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
        for req, s, viable in zip(self.reqs, self.stages.tolist(), self.viable, strict=True):
            if req is not prev:
                rows = req.info.configs[viable].tolist()
                requests.append(
                    {"id": req.request_id, "configs": [[self.model_names[m] for m in row] for row in rows], "ready": []}
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
    starts = np.flatnonzero(np.concatenate([[True], req[1:] != req[:-1]]))  # a request's items are consecutive
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


class _Request:
    __slots__ = ("request_id", "info", "admitted", "viable", "status", "engine", "excluded", "ready", "num_done")

    def __init__(self, request_id: Hashable, info: _Space, admitted: np.ndarray) -> None:
        self.request_id = request_id
        self.info = info
        self.admitted = admitted
        self.viable = admitted.copy()
        space = info.space
        self.status = [READY if not ups else WAITING for ups in space.upstream]
        self.engine = [-1] * space.num_stages
        self.excluded: set[tuple[int, int]] = set()  # (stage, scheduler model id)
        self.ready = sorted((s for s in range(space.num_stages) if self.status[s] == READY), key=info.stage_rank.__getitem__)
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
        self.policy: Policy = make_policy(policy, beam_width=beam_width, per_workflow=per_workflow) if isinstance(policy, str) else policy
        self.utility_scale = int(utility_scale)
        self._spaces: dict[int, _Space] = {}
        self._queue: dict[Hashable, _Request] = {}  # insertion order = FIFO
        self._finished: collections.OrderedDict[Hashable, dict[str, str]] = collections.OrderedDict()
        self._cfg_bucket = MIN_CONFIGS
        self._slot_bucket = bucket_size(max(max(e.saturation_batch for e in engines), MIN_SLOTS))
        self._cfg_dtype = model_dtype(len(self.model_names))
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
        return sum(len(r.ready) for r in self._queue.values())

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
        return self._get(request_id).viable.copy()

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
            arrays = RoundArrays(
                item_viable=np.zeros((r_b, self._cfg_bucket), dtype=bool),
                item_cfg_model=np.full((r_b, self._cfg_bucket), -1, dtype=self._cfg_dtype),
                item_req=np.full(r_b, -1, dtype=np.int32),
                item_valid=np.zeros(r_b, dtype=bool),
                engine_model=self._engine_model,
                free_slots=np.zeros(num_engines, dtype=np.int32),
                gain=np.zeros((num_engines, self._slot_bucket), dtype=np.int32),
                num_models=len(self.model_names),
                num_items=0,
            )
            compiled.compile(arrays, self.policy.beam_width)
            buckets += 1
            if r_b >= max_items:
                return buckets
            r_b *= 2

    # ---- transitions -----------------------------------------------------------------

    def add_request(self, request_id: Hashable, space: ConfigSpace, mask: np.ndarray | None = None) -> None:
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
        admitted = np.asarray(self.policy.admit(space, mask & info.served), dtype=bool) & info.served
        if not admitted.any():
            raise NoViableConfigurationError(
                f"request {request_id!r}: no admitted configuration of {space.workflow!r} can run on engines "
                f"serving {list(self.model_names)}"
            )
        self._queue[request_id] = _Request(request_id, info, admitted)

    def schedule(self, load: LoadVector) -> Plan:
        """Plan one round: assign ready stages to engines with free slots.

        ``load`` must name exactly this scheduler's engines. Assigned stages are marked
        running and their models committed before this returns.
        """
        load = self._check_load(load)
        # Items: ready stages, FIFO across requests, ``ready`` order within one.
        reqs: list[_Request] = []
        stage_list: list[int] = []
        slot_list: list[int] = []
        num_slots = 0
        for req in self._queue.values():
            ready = req.ready
            if ready:
                k = len(ready)
                slot_list.extend(itertools.repeat(num_slots, k))
                reqs.extend(itertools.repeat(req, k))
                stage_list.extend(ready)
                num_slots += 1
        stages = np.array(stage_list, dtype=np.int32)
        if not reqs:
            empty = _RoundRecord(load, self.model_names, self.utility_scale, [], stages, [], stages)
            return Plan((), 0.0, 1.0, str(self.policy.name), empty)
        viable = [req.viable for req in reqs]
        arrays = self._round_arrays(reqs, stages, np.array(slot_list, dtype=np.int32), viable, load)
        if arrays.free_slots.any():
            engine = np.asarray(self.policy.assign(arrays).engine)[: len(reqs)]
        else:
            engine = np.full(len(reqs), -1, dtype=np.int32)
        flexibility = round_flexibility(arrays, engine)
        assignments = []
        for i in np.flatnonzero(engine >= 0).tolist():
            req, s, e = reqs[i], int(stages[i]), int(engine[i])
            self._commit(req, s, e)
            assignments.append(
                Assignment(req.request_id, s, req.info.space.stage_names[s], self.engine_names[e], self.engines[e].model)
            )
        counts = np.bincount(engine[engine >= 0], minlength=len(self.engines))
        record = _RoundRecord(load, self.model_names, self.utility_scale, reqs, stages, viable, engine)
        return Plan(tuple(assignments), load.utilization(counts), flexibility, str(self.policy.name), record)

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
            self._finished[request_id] = self._committed(req)
            while len(self._finished) > MAX_FINISHED:
                self._finished.popitem(last=False)
            return True
        for d in req.info.downstream[s]:
            if req.status[d] == WAITING and all(req.status[u] == DONE for u in space.upstream[d]):
                req.status[d] = READY
                req.ready.append(d)
        req.ready.sort(key=req.info.stage_rank.__getitem__)
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
            raise SchedulerError(f"on_stage_failed: unknown engine {engine!r}; engines are {list(self.engine_names)}")
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
        req.viable = self._recompute_viable(req)
        if not req.viable.any():
            del self._queue[request_id]
            raise NoViableConfigurationError(
                f"request {request_id!r}: no admitted configuration left after {self.model_names[model]!r} failed "
                f"at stage {req.info.space.stage_names[s]!r}"
            )

    def cancel(self, request_id: Hashable) -> None:
        """Remove a request from the meta-queue, whatever its state."""
        self._get(request_id)
        del self._queue[request_id]

    # ---- internals -------------------------------------------------------------------

    def _get(self, request_id: Hashable) -> _Request:
        req = self._queue.get(request_id)
        if req is None:
            raise SchedulerError(f"unknown request {request_id!r} (never added, finished, failed or cancelled)")
        return req

    def _stage(self, req: _Request, stage: int | str) -> int:
        names = req.info.space.stage_names
        if isinstance(stage, str):
            if stage not in names:
                raise SchedulerError(f"request {req.request_id!r}: unknown stage {stage!r}; stages are {list(names)}")
            return names.index(stage)
        s = int(stage)
        if not 0 <= s < len(names):
            raise SchedulerError(f"request {req.request_id!r}: stage index {s} outside 0..{len(names) - 1}")
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
            names[s]: self.engines[e].model for s, e in enumerate(req.engine) if e >= 0 and req.status[s] in (RUNNING, DONE)
        }

    def _commit(self, req: _Request, s: int, e: int) -> None:
        req.status[s] = RUNNING
        req.engine[s] = e
        req.ready.remove(s)
        req.viable = req.viable & (req.info.configs[:, s] == self._engine_model[e])

    def _recompute_viable(self, req: _Request) -> np.ndarray:
        configs = req.info.configs
        viable = req.admitted.copy()
        for s, e in enumerate(req.engine):
            if e >= 0:
                viable &= configs[:, s] == self._engine_model[e]
        for s, m in req.excluded:
            viable &= configs[:, s] != m
        return viable

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
        )
        self._spaces[id(space)] = info
        self._cfg_bucket = max(self._cfg_bucket, bucket_size(space.num_configs))
        return info

    def _check_load(self, load: LoadVector) -> LoadVector:
        if not isinstance(load, LoadVector):
            raise SchedulerError(f"schedule() needs a LoadVector, got {type(load).__name__}")
        names = load.names
        if names == self.engine_names:
            return load
        unknown = sorted(set(names) - set(self.engine_names))
        if unknown:
            raise SchedulerError(f"load vector names unknown engines {unknown}; engines are {list(self.engine_names)}")
        missing = sorted(set(self.engine_names) - set(names))
        if missing or len(names) != len(set(names)):
            raise SchedulerError(f"load vector must give each engine once; missing {missing}, got {list(names)}")
        by_name = {e.name: e for e in load.engines}
        return LoadVector(tuple(by_name[n] for n in self.engine_names))

    def _round_arrays(
        self, reqs: list[_Request], stages: np.ndarray, slots: np.ndarray, viable: list[np.ndarray], load: LoadVector
    ) -> RoundArrays:
        """Padded kernel inputs; ``slots`` numbers the requests of the round (items of one
        request are consecutive and share a slot)."""
        n = len(reqs)
        r_b = bucket_size(max(n, MIN_ITEMS))
        c_b = self._cfg_bucket
        item_viable = np.zeros((r_b, c_b), dtype=bool)
        item_cfg_model = np.full((r_b, c_b), -1, dtype=self._cfg_dtype)
        if len(self._spaces) == 1:  # one workflow: block copies (a list of rows assigns fastest)
            (info,) = self._spaces.values()
            c = info.space.num_configs
            item_viable[:n, :c] = viable
            item_cfg_model[:n, :c] = info.columns[stages]
        else:
            infos = [req.info for req in reqs]
            for info in dict.fromkeys(infos):
                idx = np.flatnonzero([x is info for x in infos])
                c = info.space.num_configs
                item_viable[idx, :c] = [viable[i] for i in idx.tolist()]
                item_cfg_model[idx, :c] = info.columns[stages[idx]]
        item_req = np.full(r_b, -1, dtype=np.int32)
        item_req[:n] = slots
        item_valid = np.zeros(r_b, dtype=bool)
        item_valid[:n] = True
        free = load.free_slots()
        k_b = max(self._slot_bucket, bucket_size(max(int(free.max()), MIN_SLOTS)))
        return RoundArrays(
            item_viable=item_viable,
            item_cfg_model=item_cfg_model,
            item_req=item_req,
            item_valid=item_valid,
            engine_model=self._engine_model,
            free_slots=free,
            gain=load.gain_table(k_b, self.utility_scale),
            num_models=len(self.model_names),
            num_items=n,
        )
