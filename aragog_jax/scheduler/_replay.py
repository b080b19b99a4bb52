"""Round replay: one scheduling round as JSON in, the decision as JSON out.

Input (``Plan.to_replay()`` writes it; server receipts use it too)::

    {
      "engines": [                                  # the scheduler's engine order
        {"name": "qwen7b-0", "model": "Qwen2.5-7B-Instruct",   # model: optional
         "free_slots": 16, "load": 48,
         "curve": [[1, 90.0], [16, 1200.0], [64, 3100.0]]},   # [sequences, tokens/s]
        ...
      ],
      "requests": [                                 # FIFO order
        {"id": "r1",
         "configs": [["qwen7b-0", "qwen14b-0"], ...],   # viable configurations, a name per stage
         "ready": [1, 0]},                           # ready stage indices, in scheduling order
        ...
      ],
      "utility_scale": 100000                       # optional, U resolution
    }

A name in ``configs`` is an engine name (standing for that engine's model) or, when
engines give ``model``, a model name. Without ``model`` every engine is its own model.
Curves interpolate linearly and are flat past the last point.

Output::

    {"assignments": [{"request": "r1", "stage": 1, "engine": "qwen7b-0"}, ...],
     "skipped": [{"request": "r2", "stage": 0}, ...],
     "utilization": 0.0123, "flexibility": 0.5}
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np

from aragog_jax.errors import SchedulerError
from aragog_jax.scheduler._load import UTILITY_SCALE, EngineLoad, LoadVector, check_curve
from aragog_jax.scheduler._plan import round_flexibility
from aragog_jax.scheduler._policy import Policy
from aragog_jax.scheduler._round import MIN_SLOTS, RoundArrays, pad_round
from aragog_jax.space import bucket_size

_ENGINE_FIELDS = {"name", "model", "free_slots", "load", "curve"}
_REQUEST_FIELDS = {"id", "configs", "ready"}
_TOP_FIELDS = {"engines", "requests", "utility_scale"}


def _int(value: Any, where: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SchedulerError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return value


def _fields(obj: Any, where: str, allowed: set[str], required: set[str]) -> dict:
    if not isinstance(obj, dict):
        raise SchedulerError(f"{where}: expected an object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise SchedulerError(f"{where}.{unknown[0]}: unknown field (allowed: {sorted(allowed)})")
    missing = sorted(required - set(obj))
    if missing:
        raise SchedulerError(f"{where}.{missing[0]}: missing")
    return obj


def parse_round(doc: Any) -> tuple[RoundArrays, LoadVector, list[tuple[Hashable, int]], int]:
    """Validate a round document; returns (arrays, load, items, utility_scale).

    ``items`` lists (request id, stage) per real item, in the order of ``arrays``.
    Raises :class:`SchedulerError` naming the offending field.
    """
    _fields(doc, "round", _TOP_FIELDS, {"engines", "requests"})
    scale = _int(doc.get("utility_scale", UTILITY_SCALE), "utility_scale", 1)
    raw_engines = doc["engines"]
    if not isinstance(raw_engines, list) or not raw_engines:
        raise SchedulerError("engines: expected a non-empty list")
    engines: list[EngineLoad] = []
    for e, raw in enumerate(raw_engines):
        where = f"engines[{e}]"
        _fields(raw, where, _ENGINE_FIELDS, {"name", "free_slots", "load", "curve"})
        name = raw["name"]
        if not isinstance(name, str) or not name:
            raise SchedulerError(f"{where}.name: expected a non-empty string, got {name!r}")
        if any(x.name == name for x in engines):
            raise SchedulerError(f"{where}.name: duplicate engine {name!r}")
        model = raw.get("model", name)
        if not isinstance(model, str) or not model:
            raise SchedulerError(f"{where}.model: expected a non-empty string, got {model!r}")
        free = _int(raw["free_slots"], f"{where}.free_slots")
        load = _int(raw["load"], f"{where}.load")
        curve = (
            check_curve(raw["curve"], f"{where}.curve") if isinstance(raw["curve"], list) else None
        )
        if curve is None:
            raise SchedulerError(f"{where}.curve: expected [[concurrency, tokens/s], ...]")
        engines.append(
            EngineLoad(
                name=name,
                model=model,
                saturation_batch=max(1, load + free),
                curve=curve,
                running=load,
                free_slots=free,
            )
        )
    model_names = list(dict.fromkeys(e.model for e in engines))
    resolve = {m: i for i, m in enumerate(model_names)}
    resolve.update({e.name: model_names.index(e.model) for e in engines})
    engine_model = np.array([resolve[e.model] for e in engines], dtype=np.int32)

    raw_requests = doc["requests"]
    if not isinstance(raw_requests, list):
        raise SchedulerError("requests: expected a list")
    viable_rows: list[np.ndarray] = []
    cfgm_rows: list[np.ndarray] = []
    req_slot: list[int] = []
    items: list[tuple[Hashable, int]] = []
    seen: set = set()
    for r, raw in enumerate(raw_requests):
        where = f"requests[{r}]"
        _fields(raw, where, _REQUEST_FIELDS, _REQUEST_FIELDS)
        rid = raw["id"]
        if isinstance(rid, bool) or not isinstance(rid, str | int):
            raise SchedulerError(f"{where}.id: expected a string or integer, got {rid!r}")
        if rid in seen:
            raise SchedulerError(f"{where}.id: duplicate request {rid!r}")
        seen.add(rid)
        configs = raw["configs"]
        if not isinstance(configs, list) or not configs:
            raise SchedulerError(f"{where}.configs: expected a non-empty list of configurations")
        rows = []
        for c, cfg in enumerate(configs):
            if not isinstance(cfg, list) or not cfg:
                raise SchedulerError(
                    f"{where}.configs[{c}]: expected a non-empty list of engine names"
                )
            if rows and len(cfg) != len(rows[0]):
                raise SchedulerError(
                    f"{where}.configs[{c}]: has {len(cfg)} stages, configs[0] has {len(rows[0])}"
                )
            row = []
            for s, name in enumerate(cfg):
                if not isinstance(name, str) or name not in resolve:
                    raise SchedulerError(
                        f"{where}.configs[{c}][{s}]: unknown engine or model {name!r}"
                    )
                row.append(resolve[name])
            rows.append(row)
        table = np.array(rows, dtype=np.int32)
        ready = raw["ready"]
        if not isinstance(ready, list):
            raise SchedulerError(f"{where}.ready: expected a list of stage indices")
        for k, s in enumerate(ready):
            _int(s, f"{where}.ready[{k}]")
            if s >= table.shape[1]:
                raise SchedulerError(
                    f"{where}.ready[{k}]: stage {s} outside 0..{table.shape[1] - 1}"
                )
            if s in ready[:k]:
                raise SchedulerError(f"{where}.ready[{k}]: stage {s} listed twice")
            viable_rows.append(np.ones(table.shape[0], dtype=bool))
            cfgm_rows.append(table[:, s])
            req_slot.append(r)
            items.append((rid, s))

    load = LoadVector(tuple(engines))
    free = load.free_slots()
    num_c = max((len(v) for v in viable_rows), default=1)
    viable = np.zeros((len(items), num_c), dtype=bool)
    cfgm = np.full((len(items), num_c), -1, dtype=np.int32)
    for i, (v, m) in enumerate(zip(viable_rows, cfgm_rows, strict=True)):
        viable[i, : len(v)] = v
        cfgm[i, : len(m)] = m
    num_slots = bucket_size(max(int(free.max()), MIN_SLOTS))
    arrays = pad_round(
        viable,
        cfgm,
        np.asarray(req_slot, dtype=np.int32),
        engine_model,
        free,
        load.gain_table(num_slots, scale),
        len(model_names),
    )
    return arrays, load, items, scale


def replay_round(doc: Any, policy: Policy) -> dict[str, Any]:
    """Decide one round given as a document (see the module docstring)."""
    arrays, load, items, _ = parse_round(doc)
    if items and arrays.free_slots.any():
        engine = np.asarray(policy.assign(arrays).engine)[: len(items)]
    else:
        engine = np.full(len(items), -1, dtype=np.int32)
    counts = np.bincount(engine[engine >= 0], minlength=len(load.engines))
    names = load.names
    return {
        "assignments": [
            {"request": rid, "stage": s, "engine": names[e]}
            for (rid, s), e in zip(items, engine.tolist(), strict=True)
            if e >= 0
        ],
        "skipped": [
            {"request": rid, "stage": s}
            for (rid, s), e in zip(items, engine.tolist(), strict=True)
            if e < 0
        ],
        "utilization": load.utilization(counts),
        "flexibility": round_flexibility(arrays, engine),
    }
