"""The scheduler's row tables: every in-flight request's viable mask and ready flags as
rows of packed NumPy arrays, so a round gathers its items with a few vectorised calls
instead of a Python pass over the queue.

Rows are handed out in arrival order and never reused before a compaction (which keeps
their order), so row order is FIFO order. Within a row, ready flags are stored by rank
position (deepest stage first, then lower index), so the row-major nonzeros of the ready
table are the round's items in scheduling order. Registered configuration spaces map
their model ids to the scheduler's and add one row per stage to the column table
(model per configuration at that stage), which a round gathers per item.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from aragog_jax.scheduler._round import MIN_CONFIGS, MIN_ITEMS, RoundArrays
from aragog_jax.scheduler._small import _model_masks
from aragog_jax.space import ConfigSpace, bucket_size

#: Smallest row-table capacity (rows are per in-flight request).
MIN_ROWS = 256


@dataclass(eq=False)
class SpaceInfo:
    """A registered configuration space, with model ids mapped to the scheduler's."""

    space: ConfigSpace
    configs: np.ndarray  # int[C, S] scheduler model ids (-1: model served by no engine)
    columns: np.ndarray  # int[S, C] the same, one contiguous row per stage
    served: np.ndarray  # bool[C] every stage's model has an engine
    downstream: tuple[tuple[int, ...], ...]
    stage_rank: np.ndarray  # int[S] position in "deepest first, then lower index"
    stage_names: tuple[str, ...]
    num_configs: int
    space_id: int  # row of the tables' rank -> stage table
    stage_base: int  # row of stage 0 in the tables' configuration-column table


class RowTables:
    """Row allocator and packed per-request tables (see the module docstring).

    ``row_req[row]`` is the object attached at ``row`` (the scheduler's request); a
    compaction builds a new list, so a plan's record can keep the old one.
    """

    def __init__(
        self,
        model_index: dict[str, int],
        cfg_dtype: type[np.signedinteger],
        engine_model: Sequence[int] = (),
    ) -> None:
        self.model_index = model_index
        self.cfg_dtype = cfg_dtype
        # The scheduler's engines' model ids (``engine_masks``' middle axis).
        self.engine_model = np.asarray(engine_model, dtype=np.intp)
        self.cfg_bucket = MIN_CONFIGS
        self.max_stages = 1
        self.num_rows = 0
        self.num_ready = 0  # True cells of ``ready``, kept by every write below
        self.row_req: list[Any] = []
        self.infos: list[SpaceInfo] = []
        self._by_space: dict[int, SpaceInfo] = {}
        self.viable = np.zeros((MIN_ROWS, self.cfg_bucket), dtype=bool)  # row -> viable mask
        self.ready = np.zeros((MIN_ROWS, 1), dtype=bool)  # row, rank position -> ready
        self.row_space = np.zeros(MIN_ROWS, dtype=np.int32)  # row -> SpaceInfo.space_id
        # space id -> (stage, row of that stage in ``columns``) per rank position
        self.space_cells = np.zeros((0, 2, 1), dtype=np.int32)
        # (row, rank position, stage, column row, flat index) of every cell of ``ready``,
        # flattened row-major: a round's items are one take of it at the ready table's
        # nonzeros; ``ready_flat`` is ``ready`` as one row (a view: cleared by flat index).
        self.cells = _cell_table(self.ready.shape, self.space_cells, self.row_space)
        self.ready_flat = self.ready.reshape(-1)
        # (column row, model) -> bool[C]: the configurations using the model there, and the
        # same per engine (its model's row).
        self.model_masks = np.zeros((0, len(model_index), self.cfg_bucket), dtype=bool)
        self.engine_masks = self.model_masks[:, self.engine_model]
        self.stage_base = np.zeros(0, dtype=np.int32)  # space id -> row of its stage 0
        self.columns = np.zeros((0, self.cfg_bucket), dtype=cfg_dtype)  # (space, stage) -> models

    # ---- spaces ----------------------------------------------------------------------

    def register(self, space: ConfigSpace) -> SpaceInfo:
        """The space's info, registering it (and widening the tables) on first use."""
        info = self._by_space.get(id(space))
        if info is not None and info.space is space:
            return info
        lookup = np.array([self.model_index.get(m, -1) for m in space.model_names], dtype=np.int32)
        configs = lookup[space.configs]
        downstream: list[list[int]] = [[] for _ in range(space.num_stages)]
        for d, ups in enumerate(space.upstream):
            for u in ups:
                downstream[u].append(d)
        order = sorted(range(space.num_stages), key=lambda s: (-int(space.stage_depth[s]), s))
        rank = np.empty(space.num_stages, dtype=np.int64)
        rank[order] = np.arange(space.num_stages)
        info = SpaceInfo(
            space=space,
            configs=configs.astype(self.cfg_dtype),
            columns=np.ascontiguousarray(configs.T.astype(self.cfg_dtype)),
            served=(configs >= 0).all(axis=1),
            downstream=tuple(tuple(d) for d in downstream),
            stage_rank=rank,
            stage_names=tuple(space.stage_names),
            num_configs=space.num_configs,
            space_id=len(self.infos),
            stage_base=self.columns.shape[0],
        )
        self._by_space[id(space)] = info
        self.infos.append(info)
        self.cfg_bucket = max(self.cfg_bucket, bucket_size(space.num_configs))
        self.max_stages = max(self.max_stages, space.num_stages)
        # Widen the row tables to the new bucket / stage count (new cells: False).
        self.viable = _widened(self.viable, self.cfg_bucket, False)
        self.ready = _widened(self.ready, self.max_stages, False)
        rank_stage = np.zeros((len(self.infos), self.max_stages), dtype=np.int32)
        old = self.space_cells[:, 0]
        rank_stage[: old.shape[0], : old.shape[1]] = old
        rank_stage[info.space_id, : space.num_stages] = order
        self.stage_base = np.append(self.stage_base, np.int32(info.stage_base)).astype(np.int32)
        rank_column = rank_stage + self.stage_base[:, None]
        self.space_cells = np.stack([rank_stage, rank_column], axis=1)
        self.cells = _cell_table(self.ready.shape, self.space_cells, self.row_space)
        columns = np.full(
            (self.columns.shape[0] + space.num_stages, self.cfg_bucket), -1, dtype=self.cfg_dtype
        )
        columns[: self.columns.shape[0], : self.columns.shape[1]] = self.columns
        columns[info.stage_base :, : space.num_configs] = info.columns
        self.columns = columns
        self.model_masks = _model_masks(columns, len(self.model_index))
        self.engine_masks = self.model_masks[:, self.engine_model]
        self.ready_flat = self.ready.reshape(-1)
        return info

    # ---- rows ------------------------------------------------------------------------

    def attach(
        self,
        req: Any,
        info: SpaceInfo,
        admitted: np.ndarray,
        ready: Sequence[int],
        live: Iterable[Any],
    ) -> int:
        """Give ``req`` the next row (the back of the FIFO order) and fill it; returns the
        row. ``live`` lists the attached requests in FIFO order, each with a ``row``
        attribute (used when the tables are full and compact)."""
        if self.num_rows == self.viable.shape[0]:
            self.compact(live)
        row = self.num_rows
        self.num_rows += 1
        self.row_req.append(req)
        self.viable[row] = False
        self.viable[row, : info.num_configs] = admitted
        ready_row = self.ready[row]
        ready_row[:] = False
        for s in ready:  # (a stage or two: scalar writes beat a fancy index)
            ready_row[info.stage_rank[s]] = True
        self.num_ready += len(ready)
        self.row_space[row] = info.space_id
        width = ready_row.size
        self.cells[2:4, row * width : (row + 1) * width] = self.space_cells[info.space_id]
        return row

    def detach(self, row: int) -> None:
        """The request at ``row`` left the queue: its row never yields an item again."""
        self.num_ready -= int(np.count_nonzero(self.ready[row]))
        self.ready[row] = False

    def mark_ready(self, row: int, pos: int) -> None:
        """Rank position ``pos`` of ``row`` became ready (it was not)."""
        self.ready[row, pos] = True
        self.num_ready += 1

    def commit(self, cells: np.ndarray, engines: np.ndarray) -> None:
        """Placed items leave the ready table and their requests' masks narrow to the
        configurations that use each placed item's model at its stage.

        Args:
          cells: int32[5, p] the placed items' columns of :meth:`items` (row, rank
            position, stage, column row, flat index).
          engines: int[p] engine each placed item runs on (an index of ``engine_model``).

        A request with several placed items is narrowed by each in turn (one unbuffered
        AND per item: :func:`_narrow`). The round's F is computed from its record when asked
        (:meth:`RoundRecord.flexibility`), not here.
        """
        # (column row, engine) -> its mask
        _narrow(self.viable, cells[0], self.engine_masks[cells[3], engines])
        self.ready_flat[cells[4]] = False
        self.num_ready -= cells.shape[1]

    def commit_host(
        self,
        model_masks: np.ndarray,
        rows: list[int],
        pos: list[int],
        items: list[int],
        models: list[int],
    ) -> None:
        """:meth:`commit` for a round of a few items, from the host search's inputs.

        Args:
          model_masks: bool[n, M, C] configuration c uses model m at item i's stage.
          rows, pos: every item's row and rank position.
          items, models: the placed items (ascending) and the model each runs on.
        """
        if len(items) == 1:
            i = items[0]
            self.commit_one(rows[i], pos[i], model_masks[i, models[0]])
            return
        p_rows = [rows[i] for i in items]
        _narrow(self.viable, p_rows, model_masks[items, models])
        self.ready[p_rows, [pos[i] for i in items]] = False
        self.num_ready -= len(items)

    def commit_one(self, row: int, pos: int, mask: np.ndarray) -> None:
        """:meth:`commit` of one placed item: rank position ``pos`` of ``row`` leaves the
        ready table and the row's mask narrows by ``mask`` (bool[C], the configurations
        that use the item's model at its stage)."""
        self.viable[row] &= mask
        self.ready[row, pos] = False
        self.num_ready -= 1

    def compact(self, live: Iterable[Any]) -> None:
        """Move the rows of the ``live`` requests (FIFO order, each with a ``row``
        attribute, updated here) to the front, in order, into tables sized for twice as
        many (rows are only handed out at the back)."""
        reqs = list(live)
        keep = np.array([r.row for r in reqs], dtype=np.int64)
        cap = max(MIN_ROWS, 2 * bucket_size(len(reqs) + 1))
        self.viable = _resized(self.viable, keep, cap)
        self.ready = _resized(self.ready, keep, cap)
        self.row_space = _resized(self.row_space, keep, cap)
        self.cells = _cell_table(self.ready.shape, self.space_cells, self.row_space)
        self.ready_flat = self.ready.reshape(-1)
        self.row_req = reqs  # a new list: records keep the old one
        for i, req in enumerate(reqs):
            req.row = i
        self.num_rows = len(reqs)

    def viable_row(self, row: int, num_configs: int) -> np.ndarray:
        """bool[C] view of a row's viable mask (valid until the next attach or register,
        which may reallocate the table)."""
        return self.viable[row, :num_configs]

    # ---- a round's items -------------------------------------------------------------

    def items(self) -> np.ndarray:
        """int32[5, n]: (rows, rank positions, stages, column rows, flat indices in
        ``ready_flat``) of every ready stage: FIFO
        across requests (row order), rank order within one (the row-major nonzeros of the
        ready table); an item's column row is the row of ``columns`` of its (space, stage).
        One take of the cell table at the flat nonzeros: after a garbage collection every
        NumPy call of a round starts cold, so fewer calls cost less than cheaper ones."""
        flat = self.ready_flat[: self.num_rows * self.ready.shape[1]].nonzero()[0]
        return self.cells.take(flat, axis=1)

    def one_item(self) -> tuple[int, int, int, int]:
        """:meth:`items` of a round with one ready stage (``num_ready == 1``), as Python
        ints: (row, rank position, stage, column row)."""
        flat = int(self.ready_flat[: self.num_rows * self.ready.shape[1]].argmax())  # first True
        row, pos, stage, col = self.cells[:4, flat].tolist()
        return row, pos, stage, col

    def gather_viable(self, rows: np.ndarray) -> np.ndarray:
        """bool[R, C] padded viable masks of the items (a fresh array: the plan's record
        keeps it)."""
        n = rows.size
        out = np.empty((bucket_size(max(n, MIN_ITEMS)), self.viable.shape[1]), dtype=bool)
        self.viable.take(rows, axis=0, out=out[:n], mode="clip")
        out[n:] = False
        return out

    def round_arrays(
        self,
        rows: np.ndarray,
        cols: np.ndarray,
        item_viable: np.ndarray,
        engine_model: np.ndarray,
        free: np.ndarray,
        gain: np.ndarray,
    ) -> RoundArrays:
        """Padded kernel inputs of the items (rows and column rows from :meth:`items`,
        viable masks from :meth:`gather_viable`). Items of one request are consecutive;
        an item's request key is its row (the kernels compare neighbours' keys only)."""
        n = rows.size
        r_b, c_b = item_viable.shape
        # Model per configuration at each item's stage: one row of ``columns`` per item.
        item_cfg_model = np.empty((r_b, c_b), dtype=self.cfg_dtype)
        self.columns.take(cols, axis=0, out=item_cfg_model[:n], mode="clip")
        item_cfg_model[n:] = -1
        item_req = np.empty(r_b, dtype=np.int32)
        item_req[:n] = rows
        item_req[n:] = -1
        return RoundArrays(
            item_viable=item_viable,
            item_cfg_model=item_cfg_model,
            item_req=item_req,
            item_valid=valid_prefix(r_b, n),
            engine_model=engine_model,
            free_slots=free,
            gain=gain,
            num_models=len(self.model_index),
            num_items=n,
        )


@functools.cache
def _valid_template(size: int) -> np.ndarray:
    """``size`` True then ``size`` False (read-only)."""
    out = np.zeros(2 * size, dtype=bool)
    out[:size] = True
    out.flags.writeable = False
    return out


def valid_prefix(size: int, n: int) -> np.ndarray:
    """bool[size], the first ``n`` True: a read-only view of a cached array, so a round
    builds no ``item_valid`` of its own."""
    return _valid_template(size)[size - n : 2 * size - n]


def _narrow(table: np.ndarray, rows: np.ndarray | list[int], masks: np.ndarray) -> None:
    """``table[rows[k]] &= masks[k]`` for every k in order, a row listed twice narrowed
    twice (``ufunc.at`` is unbuffered). Bools are bytes 0/1, so AND-ing the rows eight
    bytes at a time as uint64 words gives the same bytes as ``np.logical_and.at``."""
    if table.shape[1] % 8 or not (table.flags.c_contiguous and masks.flags.c_contiguous):
        np.logical_and.at(table, rows, masks)
    else:
        np.bitwise_and.at(table.view(np.uint64), rows, masks.view(np.uint64))


def _cell_table(
    shape: tuple[int, int], space_cells: np.ndarray, row_space: np.ndarray
) -> np.ndarray:
    """int32[5, rows * width]: row, rank position, stage, column row and flat index of every
    cell of a ready table of ``shape`` (stage and column row from the row's space; rows not
    attached yet get those of space 0 or zeros, and are never ready)."""
    cap, width = shape
    flat = np.arange(cap * width, dtype=np.int32)
    cells = np.zeros((5, cap * width), dtype=np.int32)
    cells[0] = flat // width
    cells[1] = flat % width
    cells[4] = flat
    if space_cells.shape[0]:
        cells[2:4] = space_cells[row_space[:cap]].transpose(1, 0, 2).reshape(2, -1)
    return cells


def _widened(table: np.ndarray, width: int, fill: Any) -> np.ndarray:
    if table.shape[1] == width:
        return table
    wide = np.full((table.shape[0], width), fill, dtype=table.dtype)
    wide[:, : table.shape[1]] = table
    return wide


def _resized(table: np.ndarray, keep: np.ndarray, cap: int) -> np.ndarray:
    out = np.zeros((cap, *table.shape[1:]), dtype=table.dtype)
    out[: keep.size] = table[keep]
    return out
