"""The scheduler: a synchronous state machine over the FIFO meta-queue (DESIGN §5).

Lifecycle of a request, and who calls what (the server and the simulator drive the same
object; no method awaits or blocks on I/O):

1. ``add_request(request_id, space, mask)`` — once, when the router has produced the
   request's admitted mask. The request joins the back of the meta-queue; its source
   stages become ready. With ``held=True`` (routing overlapped with queueing: the request
   joins at arrival with the admitted set found so far, at least ``c_max``) its stages
   wait until ``release(request_id)``; ``widen_mask(request_id, mask)`` grows its admitted
   set as the router finds more, before or after release, whatever stages have started.
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
from collections.abc import Hashable, Iterator, Sequence

import numpy as np

from aragog_jax.errors import NoViableConfigurationError, SchedulerError
from aragog_jax.scheduler._cache import CurveCache, HostCurves
from aragog_jax.scheduler._load import UTILITY_SCALE, EngineInfo, LoadVector
from aragog_jax.scheduler._plan import Assignment, Plan, RoundRecord
from aragog_jax.scheduler._policy import DEFAULT_BEAM_WIDTH, BeamPolicy, Policy, make_policy
from aragog_jax.scheduler._round import MIN_ITEMS, MIN_SLOTS, model_dtype
from aragog_jax.scheduler._small import (
    _count,
    host_inputs,
    host_search,
    one_item_choice,
)
from aragog_jax.scheduler._tables import RowTables, SpaceInfo
from aragog_jax.space import ConfigSpace, bucket_size

# Stage status.
WAITING, READY, RUNNING, DONE = 0, 1, 2, 3
_STATUS = ("waiting", "ready", "running", "done")
#: Finished requests remembered for ``is_done`` / ``realised_config``.
MAX_FINISHED = 65_536
_BOOL = np.dtype(np.bool_)
_new_assignment = object.__new__  # an Assignment without its __init__ (``_start``)


class _Shape:
    """What the per-request bookkeeping reads of a registered space, as plain Python (a
    request's lists start as copies of these; NumPy scalars cost more than the work)."""

    __slots__ = ("info", "num_stages", "rank", "downstream", "status", "ready", "num_upstream")

    def __init__(self, info: SpaceInfo) -> None:
        space = info.space
        self.info = info
        self.num_stages = space.num_stages
        self.rank = [int(r) for r in info.stage_rank]  # stage -> rank position
        self.downstream = info.downstream
        self.status = [READY if not ups else WAITING for ups in space.upstream]
        self.ready = sorted(
            (s for s, st in enumerate(self.status) if st == READY), key=self.rank.__getitem__
        )
        self.num_upstream = [len(ups) for ups in space.upstream]


class _Request:
    """One in-flight request. Its viable mask and ready flags live in the scheduler's
    row tables (row ``row``; -1 once it left the queue)."""

    __slots__ = (
        "request_id",
        "info",
        "shape",
        "admitted",
        "row",
        "status",
        "engine",
        "excluded",
        "num_done",
        "ups_left",
        "routed",
        "held",
    )

    def __init__(
        self, request_id: Hashable, shape: _Shape, admitted: np.ndarray, routed: np.ndarray
    ) -> None:
        self.request_id = request_id
        self.info = shape.info
        self.shape = shape
        self.admitted = admitted
        self.routed = routed  # the router's mask as given (widen_mask only grows it)
        self.held = False  # stages wait for release() (they are not in the ready table)
        self.row = -1
        self.status = shape.status.copy()
        self.engine = [-1] * shape.num_stages
        self.excluded: set[tuple[int, int]] = set()  # (stage, scheduler model id)
        self.num_done = 0
        self.ups_left = shape.num_upstream.copy()  # per stage: upstream stages not done

    @property
    def space(self) -> ConfigSpace:
        return self.info.space

    def ready(self) -> list[int]:
        """The ready stages, ascending (read off ``status``: a round marks 64 stages
        running without a list to update per request)."""
        return [s for s, st in enumerate(self.status) if st == READY]

    @property
    def configs(self) -> np.ndarray:
        return self.info.configs

    def stage_index(self, stage: int | str) -> int:
        """A stage index from an index or a name (SchedulerError when unknown)."""
        names = self.space.stage_names
        if isinstance(stage, str):
            if stage not in names:
                raise SchedulerError(
                    f"request {self.request_id!r}: unknown stage {stage!r}; stages are {list(names)}"
                )
            return names.index(stage)
        s = int(stage)
        if not 0 <= s < len(names):
            raise SchedulerError(
                f"request {self.request_id!r}: stage index {s} outside 0..{len(names) - 1}"
            )
        return s

    def expect_running(self, s: int, verb: str) -> None:
        if self.status[s] != RUNNING:
            raise SchedulerError(
                f"cannot {verb} stage {self.space.stage_names[s]!r} of request {self.request_id!r}: "
                f"it is {_STATUS[self.status[s]]}, not running"
            )

    def expect_engine(self, s: int, engine: str, engine_index: dict[str, int]) -> int:
        """The index of ``engine``, which must be the one stage ``s`` runs on."""
        names = list(engine_index)
        e = engine_index.get(engine)
        if e is None:
            raise SchedulerError(f"on_stage_failed: unknown engine {engine!r}; engines are {names}")
        if self.engine[s] != e:
            raise SchedulerError(
                f"request {self.request_id!r} stage {self.space.stage_names[s]!r} runs on "
                f"{names[self.engine[s]]!r}, not {engine!r}"
            )
        return e

    def committed(self, engines: Sequence[EngineInfo]) -> dict[str, str]:
        """Stage name -> model of every running or done stage."""
        names = self.space.stage_names
        return {
            names[s]: engines[e].model
            for s, e in enumerate(self.engine)
            if e >= 0 and self.status[s] in (RUNNING, DONE)
        }

    def recompute_viable(self, engine_model: np.ndarray) -> np.ndarray:
        """bool[C]: admitted, narrowed by every committed model, minus failed pairs."""
        configs = self.info.configs
        viable = self.admitted.copy()
        for s, e in enumerate(self.engine):
            if e >= 0:
                viable &= configs[:, s] == engine_model[e]
        for s, m in self.excluded:
            viable &= configs[:, s] != m
        return viable


def _checked_engines(engines: Sequence[EngineInfo]) -> tuple[EngineInfo, ...]:
    engines = tuple(engines)
    if not engines:
        raise SchedulerError("a scheduler needs at least one engine")
    names = [e.name for e in engines]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SchedulerError(f"duplicate engine names {dup}")
    return engines


def _checked_mask(request_id: Hashable, space: ConfigSpace, mask: np.ndarray | None) -> np.ndarray:
    if mask is None:
        return np.ones(space.num_configs, dtype=bool)
    if type(mask) is np.ndarray and mask.dtype is _BOOL and mask.shape == (space.num_configs,):
        return mask
    mask = np.asarray(mask)
    if mask.shape != (space.num_configs,) or mask.dtype != np.bool_:
        raise SchedulerError(
            f"request {request_id!r}: mask must be bool[{space.num_configs}] for workflow "
            f"{space.workflow!r}, got {mask.dtype}{list(mask.shape)}"
        )
    return mask


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
        engines = _checked_engines(engines)
        names = [e.name for e in engines]
        self.engines = engines
        self.engine_names = tuple(names)
        self._engine_index = {n: i for i, n in enumerate(names)}
        self.model_names = tuple(dict.fromkeys(e.model for e in engines))
        model_index = {m: i for i, m in enumerate(self.model_names)}
        self._engine_model = np.array([model_index[e.model] for e in engines], dtype=np.int32)
        self._engine_models = tuple(e.model for e in engines)
        self.policy: Policy = (
            make_policy(policy, beam_width=beam_width, per_workflow=per_workflow)
            if isinstance(policy, str)
            else policy
        )
        self.utility_scale = int(utility_scale)
        self._queue: dict[Hashable, _Request] = {}  # insertion order = FIFO
        # Finished request -> (stage names, engine per stage); its ids oldest first.
        self._finished: dict[Hashable, tuple[tuple[str, ...], tuple[int, ...]]] = {}
        self._finished_order: collections.deque[Hashable] = collections.deque()
        self._shapes: dict[int, _Shape] = {}  # SpaceInfo.space_id -> its shape
        self._slot_bucket = bucket_size(max(max(e.saturation_batch for e in engines), MIN_SLOTS))
        self.tables = RowTables(
            model_index, model_dtype(len(self.model_names)), self._engine_model.tolist()
        )
        self._engine_model_list = self._engine_model.tolist()
        self._curves = CurveCache(len(engines), self.utility_scale)
        self._num_rounds = 0
        for sp in spaces:
            self.tables.register(sp)

    # ---- queries ---------------------------------------------------------------------

    @property
    def num_in_flight(self) -> int:
        """Requests in the meta-queue (waiting, ready or running stages)."""
        return len(self._queue)

    @property
    def num_ready(self) -> int:
        """Ready stages over all in-flight requests."""
        return self.tables.num_ready

    def is_queued(self, request_id: Hashable) -> bool:
        """True while the request is in the meta-queue."""
        return request_id in self._queue

    def space_of(self, request_id: Hashable) -> ConfigSpace:
        """The configuration space the request was added with."""
        return self._get(request_id).space

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
        done = self._finished.get(request_id)
        if done is not None:
            names, engines = done
            return {n: self._engine_models[e] for n, e in zip(names, engines, strict=True)}
        return self._get(request_id).committed(self.engines)

    def stage_status(self, request_id: Hashable) -> dict[str, str]:
        """Stage name -> waiting / ready / running / done (for people; code uses
        :meth:`ready_stages` and :meth:`unstarted_stages`)."""
        req = self._get(request_id)
        return {n: _STATUS[s] for n, s in zip(req.space.stage_names, req.status, strict=True)}

    def ready_stages(self, request_id: Hashable) -> list[int]:
        """Indices of the request's ready stages, ascending (none while it is held)."""
        req = self._get(request_id)
        return [] if req.held else req.ready()

    def is_held(self, request_id: Hashable) -> bool:
        """True while the request's stages wait for :meth:`release`."""
        return self._get(request_id).held

    def unstarted_stages(self, request_id: Hashable) -> list[int]:
        """Indices of the request's stages that are waiting or ready."""
        return [s for s, st in enumerate(self._get(request_id).status) if st <= READY]

    def viable_mask(self, request_id: Hashable) -> np.ndarray:
        """bool[C] configurations the request can still realise (a copy)."""
        return self._viable(self._get(request_id)).copy()

    def warmup(self, max_items: int = 1024, *, min_items: int = MIN_ITEMS) -> int:
        """Compile the round for the item buckets ``min_items``..``max_items`` in the
        configuration bucket of the spaces registered so far (start-up: later rounds in
        them never trace); returns how many (0: the policy has no compiled kernel)."""
        compiled = getattr(self.policy, "compiled", None)
        if compiled is None:
            return 0
        return compiled.warm(
            self.policy.beam_width,
            self._engine_model,
            len(self.model_names),
            cfg_bucket=self.tables.cfg_bucket,
            slot_bucket=self._slot_bucket,
            item_buckets=(min_items, max_items),
        )

    # ---- transitions -----------------------------------------------------------------

    def add_request(
        self,
        request_id: Hashable,
        space: ConfigSpace,
        mask: np.ndarray | None = None,
        *,
        held: bool = False,
    ) -> None:
        """Append a request to the meta-queue with its admitted mask (bool[C]; None: all).

        Configurations that use a model no engine serves are dropped. With ``held`` the
        request keeps its FIFO position but none of its stages is scheduled until
        :meth:`release`. Raises :class:`SchedulerError` for a duplicate id or a malformed
        mask and :class:`NoViableConfigurationError` when nothing admitted can run.
        """
        if request_id in self._queue or request_id in self._finished:
            raise SchedulerError(f"request {request_id!r} was already added")
        info = self.tables.register(space)
        shape = self._shapes.get(info.space_id)
        if shape is None:
            shape = self._shapes[info.space_id] = _Shape(info)
        mask = _checked_mask(request_id, space, mask)
        served = info.served
        given = mask & served
        admitted = self.policy.admit(space, given)
        if admitted is not given:  # (a policy that passes the mask on keeps it: a subset)
            admitted = np.asarray(admitted, dtype=bool) & served
        if not np.count_nonzero(admitted):
            raise NoViableConfigurationError(
                f"request {request_id!r}: no admitted configuration of {space.workflow!r} can run on engines "
                f"serving {list(self.model_names)}"
            )
        req = _Request(request_id, shape, admitted, mask.copy())
        req.held = bool(held)
        ready = () if req.held else shape.ready
        req.row = self.tables.attach(req, info, admitted, ready, self._queue.values())
        self._queue[request_id] = req

    def release(self, request_id: Hashable) -> list[int]:
        """A held request's ready stages become schedulable (at its FIFO position); returns
        them. A request that is not held is left as it is (returns [])."""
        req = self._get(request_id)
        if not req.held:
            return []
        req.held = False
        rank = req.shape.rank
        ready = req.ready()
        for s in ready:
            self.tables.mark_ready(req.row, rank[s])
        return ready

    def widen_mask(self, request_id: Hashable, mask: np.ndarray) -> None:
        """Grow a queued request's router mask to ``mask`` (routing found more).

        ``mask`` must contain every configuration of the mask the request was added (or
        last widened) with, else :class:`SchedulerError`: widening never removes one. The
        viable mask is recomputed from the new admitted set and the models already chosen
        for started stages (and the failed pairs), exactly as after a failure, so it only
        grows and stays consistent with what runs. A policy that admits one configuration
        (``per_input``) re-picks it from the wider set only while no stage has started;
        after that its configuration is fixed, as it would be once routed.
        """
        req = self._get(request_id)
        space, info = req.space, req.info
        mask = _checked_mask(request_id, space, mask)
        dropped = np.flatnonzero(req.routed & ~mask)
        if dropped.size:
            raise SchedulerError(
                f"widen_mask: request {request_id!r}: the new mask drops configurations "
                f"{dropped[:8].tolist()} it was admitted with (a mask may only grow)"
            )
        req.routed = mask.copy()
        widened = np.asarray(self.policy.admit(space, mask & info.served), dtype=bool) & info.served
        if (req.admitted & ~widened).any():  # a re-pick, not a superset (per_input)
            if any(e >= 0 for e in req.engine):
                return
        else:
            widened |= req.admitted
        req.admitted = widened
        self._viable(req)[:] = req.recompute_viable(self._engine_model)

    def schedule(self, load: LoadVector) -> Plan:
        """Plan one round: assign ready stages to engines with free slots.

        ``load`` must name exactly this scheduler's engines. Assigned stages are marked
        running and their models committed before this returns.
        """
        if not isinstance(load, LoadVector):
            raise SchedulerError(f"schedule() needs a LoadVector, got {type(load).__name__}")
        load = load.in_order(self.engine_names)
        round_id = self._num_rounds
        self._num_rounds += 1
        tables = self.tables
        free_list = [e.free_slots for e in load.engines]
        top = max(free_list)
        host = self.policy
        on_host = type(host).assign is BeamPolicy.assign
        if top > 0 and on_host and tables.num_ready == 1 and host.small_items >= 1:
            k_b = max(self._slot_bucket, bucket_size(max(top, MIN_SLOTS)))
            return self._one_item_round(load, round_id, free_list, self._curves.host(load, k_b))
        item = tables.items()
        rows, stages, cols = item[0], item[2], item[3]
        n = rows.size
        policy = str(host.name)
        if n == 0:
            none = np.zeros((0, 0), dtype=bool)
            empty = self._record(load, rows, stages, none, stages)
            return Plan((), 0.0, policy, empty, round_id=round_id)
        if top > 0:
            k_b = max(self._slot_bucket, bucket_size(max(top, MIN_SLOTS)))
            if on_host and n <= host.small_items:
                return self._host_round(
                    load, round_id, item, free_list, self._curves.host(load, k_b)
                )
            curves = self._curves.round(load, k_b)
        item_viable = tables.gather_viable(rows)
        if top > 0:
            free = np.array(free_list, dtype=np.int32)
            arrays = tables.round_arrays(
                rows, cols, item_viable, self._engine_model, free, curves.gain
            )
            result = self.policy.assign(arrays)
            engine = np.asarray(result.engine)[:n]
            steps = int(np.asarray(result.num_steps))
            placed = (engine >= 0).nonzero()[0]
        else:  # nothing can be placed: no kernel, no commit
            engine = np.full(n, -1, dtype=np.int32)
            steps, placed = 0, None
        if placed is not None and placed.size:
            assignments, counts = self._commit(item, engine, placed)
            utilization = curves.utilization(tuple(counts))
        else:  # Σ_e [f_e(load_e + 0) - f_e(load_e)] is exactly 0.0
            assignments, utilization = (), 0.0
        record = self._record(load, rows, stages, item_viable, engine)
        return Plan(assignments, utilization, policy, record, steps, round_id)

    def on_stage_finished(self, request_id: Hashable, stage: int | str) -> bool:
        """A dispatched stage returned. Returns True when the request is now done."""
        req = self._queue.get(request_id)
        if req is None:
            req = self._get(request_id)  # raises
        shape = req.shape
        s = stage
        if type(s) is not int or not 0 <= s < shape.num_stages:
            s = req.stage_index(stage)
        status = req.status
        if status[s] != RUNNING:
            req.expect_running(s, "finish")
        status[s] = DONE
        req.num_done += 1
        if req.num_done == shape.num_stages:
            # Every stage is done, so none is ready: its row holds no ready flag and
            # ``_detach``'s clearing would find none.
            del self._queue[request_id]
            req.row = -1
            finished = self._finished
            finished[request_id] = (req.info.stage_names, tuple(req.engine))
            order = self._finished_order
            order.append(request_id)
            while len(order) > MAX_FINISHED:
                del finished[order.popleft()]
            return True
        ups_left = req.ups_left
        rank = shape.rank
        for d in shape.downstream[s]:
            left = ups_left[d] - 1
            ups_left[d] = left
            if not left and status[d] == WAITING:  # its last upstream stage finished
                status[d] = READY
                self.tables.mark_ready(req.row, rank[d])
        return False

    def on_stage_failed(self, request_id: Hashable, stage: int | str, engine: str) -> None:
        """A dispatched stage failed on ``engine``: exclude its model there and replan.

        Raises:
          NoViableConfigurationError: no admitted configuration avoids the failed
            (stage, model) pairs; the request has left the queue.
        """
        req = self._get(request_id)
        s = req.stage_index(stage)
        req.expect_running(s, "fail")
        e = req.expect_engine(s, engine, self._engine_index)
        model = int(self._engine_model[e])
        req.excluded.add((s, model))
        req.status[s] = READY
        req.engine[s] = -1
        self.tables.mark_ready(req.row, req.shape.rank[s])
        viable = req.recompute_viable(self._engine_model)
        self._viable(req)[:] = viable
        if not viable.any():
            del self._queue[request_id]
            self._detach(req)
            raise NoViableConfigurationError(
                f"request {request_id!r}: no admitted configuration left after {self.model_names[model]!r} failed "
                f"at stage {req.space.stage_names[s]!r}"
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

    def _viable(self, req: _Request) -> np.ndarray:
        return self.tables.viable_row(req.row, req.info.num_configs)

    def _detach(self, req: _Request) -> None:
        self.tables.detach(req.row)
        req.row = -1

    def _commit(
        self, item: np.ndarray, engine: np.ndarray, placed: np.ndarray
    ) -> tuple[tuple[Assignment, ...], list[int]]:
        """Mark the placed items running, narrow their requests' masks (in the tables,
        vectorised); returns the assignments and the placed count per engine. ``item`` is
        the round's :meth:`RowTables.items`."""
        cells = item.take(placed, axis=1)  # the placed items' rows, positions, ...: one take
        p_engines = engine.take(placed)
        self.tables.commit(cells, p_engines)
        rows_l, _, stages_l, _, _ = cells.tolist()
        return self._start(rows_l, stages_l, p_engines.tolist())

    def _start(
        self, rows: list[int], stages: list[int], engines: list[int]
    ) -> tuple[tuple[Assignment, ...], list[int]]:
        """Mark the placed items (row, stage, engine) running in their requests; returns
        their assignments and the count per engine."""
        row_req = self.tables.row_req
        names, models = self.engine_names, self._engine_models  # per engine
        counts = [0] * len(names)
        new = _new_assignment
        out = []
        for row, s, e in zip(rows, stages, engines, strict=True):
            req = row_req[row]
            req.status[s] = RUNNING
            req.engine[s] = e
            counts[e] += 1
            a = new(Assignment)
            d = a.__dict__  # Assignment's fields in order, as its __init__ sets them
            d["request_id"] = req.request_id
            d["stage"] = s
            d["stage_name"] = req.info.stage_names[s]
            d["engine"] = names[e]
            d["model"] = models[e]
            out.append(a)
        return tuple(out), counts

    def _host_round(
        self,
        load: LoadVector,
        round_id: int,
        items: np.ndarray,
        free: list[int],
        curves: HostCurves,
    ) -> Plan:
        """A small round of a :class:`BeamPolicy` on the host, straight from the tables:
        what ``schedule`` gets from ``policy.assign`` (``small_round``) on the round's
        padded arrays and commits from them, without building them (``host_search`` on the
        items' rows; :meth:`RowTables.commit_host`)."""
        rows, pos, stages, cols, _ = items
        policy = self.policy
        tables = self.tables
        n = rows.size
        viable = tables.viable[rows]  # bool[n, C] (a fresh copy: the record keeps it)
        cfgm = tables.columns[cols]
        model_masks, kept = host_inputs(viable, cfgm, len(self.model_names))
        rows_l = rows.tolist()
        choice, _, _, steps = host_search(
            viable,
            model_masks,
            kept,
            rows_l,  # a request's key: its row
            [True] * n,
            self._engine_model_list,
            free,
            curves.gains,  # K >= every free count: a search reads gain[e][k] for k < free[e]
            policy.beam_width,
            policy.compiled.reserve,
        )
        engine = [-1] * n
        for i, e in choice:
            engine[i] = e
        if choice:
            items = [i for i, _ in choice]
            models = [self._engine_model_list[e] for _, e in choice]
            tables.commit_host(model_masks, rows_l, pos.tolist(), items, models)
            stages_l = stages.tolist()
            assignments, counts = self._start(
                [rows_l[i] for i in items], [stages_l[i] for i in items], [e for _, e in choice]
            )
            utilization = curves.utilization(counts)
        else:
            assignments, utilization = (), 0.0
        record = self._record(load, rows, stages, viable, np.array(engine, dtype=np.int32))
        return Plan(assignments, utilization, str(policy.name), record, steps, round_id)

    def _one_item_round(
        self, load: LoadVector, round_id: int, free: list[int], curves: HostCurves
    ) -> Plan:
        """:meth:`_host_round` of a round with one ready item (every round at light load),
        in scalar Python: ``host_search``'s one-item step and ``commit_host``'s one-item
        commit, on the item's row. The same plan, record and commit."""
        tables = self.tables
        row, pos, stage, col = tables.one_item()
        viable = tables.viable[row : row + 1].copy()  # bool[1, C] (the record keeps it)
        masks = tables.model_masks[col]  # bool[M, C]: configuration c uses model m here
        kept = _count(masks & viable[0]).tolist()  # viable configurations per model
        best = one_item_choice(kept, self._engine_model_list, free, curves.gains)
        rows = np.array([row], dtype=np.intp)
        stages = np.array([stage], dtype=np.int32)
        policy = str(self.policy.name)
        if best is None:
            record = self._record(load, rows, stages, viable, np.array([-1], dtype=np.int32))
            return Plan((), 0.0, policy, record, 0, round_id)
        e = best[2]
        tables.commit_one(row, pos, masks[self._engine_model_list[e]])
        assignments, counts = self._start([row], [stage], [e])
        record = self._record(load, rows, stages, viable, np.array([e], dtype=np.int32))
        return Plan(assignments, curves.utilization(counts), policy, record, 1, round_id)

    def _record(self, load, rows, stages, viable, engine) -> RoundRecord:
        tables, names, scale = self.tables, self.model_names, self.utility_scale
        return RoundRecord(load, names, scale, tables.row_req, rows, stages, viable, engine)
