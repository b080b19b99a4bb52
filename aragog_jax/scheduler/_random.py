"""Seeded random scheduling rounds for tests, benchmarks and the replay CLI's examples.

A round has ``num_engines`` engines serving ``num_models`` models round-robin (engine e
serves model e % num_models), requests with 1 to ``max_ready`` ready stages each, and
random viable masks over ``num_configs`` random configurations. Curves are concave
(``peak * (1 - exp(-n / tau))`` sampled up to the saturation batch). ``total_free``
free slots are spread over the engines at random. With ``blocked_share > 0`` the
engines of model 0 are full (or have ``blocked_slots`` free slots each) and that share
of requests can only use model 0 at their ready stage (the adversarial rounds of the
benchmarks; such requests have one ready stage).
"""

from __future__ import annotations

import math

import numpy as np

from aragog_jax.scheduler._load import EngineLoad, LoadVector
from aragog_jax.scheduler._round import RoundArrays, pad_round


def random_engines(rng: np.random.Generator, num_engines: int, num_models: int) -> list[EngineLoad]:
    """Engines with random concave curves and loads; free slots filled in later."""
    out = []
    for e in range(num_engines):
        sat = int(rng.choice([32, 64, 128, 256]))
        peak = float(rng.uniform(1_000.0, 10_000.0))
        tau = float(rng.uniform(0.15, 0.6)) * sat
        ns = np.unique(np.geomspace(1, sat, num=8).astype(int))
        curve = tuple((float(n), round(peak * (1.0 - math.exp(-n / tau)), 3)) for n in ns)
        out.append(
            EngineLoad(
                name=f"e{e}",
                model=f"m{e % num_models}",
                saturation_batch=sat,
                curve=curve,
                running=int(rng.integers(0, sat)),
                free_slots=0,
            )
        )
    return out


def random_round(
    rng: np.random.Generator,
    *,
    num_items: int,
    num_configs: int,
    num_engines: int,
    num_models: int = 3,
    total_free: int = 64,
    max_ready: int = 3,
    blocked_share: float = 0.0,
    blocked_slots: int = 0,
    item_bucket: int | None = None,
    cfg_bucket: int | None = None,
    slot_bucket: int | None = None,
) -> tuple[RoundArrays, LoadVector]:
    """A random round with exactly ``num_items`` ready items (see module docstring)."""
    num_models = min(num_models, num_engines)
    num_stages = max(max_ready, 2, math.ceil(math.log(num_configs) / math.log(max(num_models, 2))))
    configs = rng.integers(0, num_models, size=(num_configs, num_stages), dtype=np.int32)

    engines = random_engines(rng, num_engines, num_models)
    open_engines = [
        e for e in range(num_engines) if not (blocked_share > 0 and e % num_models == 0)
    ]
    free = np.zeros(num_engines, dtype=np.int32)
    if open_engines and total_free > 0:
        share = rng.multinomial(total_free, np.full(len(open_engines), 1.0 / len(open_engines)))
        free[open_engines] = share
    if blocked_share > 0:
        free[[e for e in range(num_engines) if e not in open_engines]] = blocked_slots
    engines = [
        EngineLoad(
            name=e.name,
            model=e.model,
            saturation_batch=e.saturation_batch,
            curve=e.curve,
            running=e.running,
            free_slots=int(f),
        )
        for e, f in zip(engines, free, strict=True)
    ]
    load = LoadVector(tuple(engines))

    viable_rows, cfgm_rows, req_ids = [], [], []
    req = 0
    while len(req_ids) < num_items:
        blocked = blocked_share > 0 and rng.random() < blocked_share
        k = 1 if blocked else int(min(rng.integers(1, max_ready + 1), num_items - len(req_ids)))
        stages = rng.choice(num_stages, size=k, replace=False)
        viable = rng.random(num_configs) < rng.uniform(0.02, 0.5)
        if blocked:  # only model 0 (whose engines are full) at its ready stage
            on_full = configs[:, stages[0]] == 0
            viable = on_full & viable if (on_full & viable).any() else on_full
        if not viable.any():
            viable[rng.integers(num_configs)] = True
        for s in stages:
            viable_rows.append(viable)
            cfgm_rows.append(configs[:, s])
            req_ids.append(req)
        req += 1
    gain = load.gain_table(slot_bucket or max(int(free.max(initial=0)), 1))
    arrays = pad_round(
        np.stack(viable_rows),
        np.stack(cfgm_rows),
        np.asarray(req_ids, dtype=np.int32),
        np.arange(num_engines, dtype=np.int32) % num_models,
        free,
        gain,
        num_models,
        item_bucket=item_bucket,
        cfg_bucket=cfg_bucket,
    )
    return arrays, load


def random_replay(
    rng: np.random.Generator,
    *,
    num_requests: int = 6,
    num_engines: int = 4,
    num_models: int = 3,
    num_stages: int = 3,
    total_free: int = 8,
    num_items: int | None = None,
) -> dict:
    """A random round-replay document (the CLI's input format), small enough to read.

    With ``num_items`` the round has exactly that many ready items (stages), spread over
    as many requests as it takes (1 to 3 ready stages each), instead of ``num_requests``
    requests."""
    engines = random_engines(rng, num_engines, num_models)
    free = rng.multinomial(total_free, np.full(num_engines, 1.0 / num_engines))
    models = [f"m{m}" for m in range(min(num_models, num_engines))]
    doc_engines = [
        {
            "name": e.name,
            "model": e.model,
            "free_slots": int(f),
            "load": int(e.running),
            "curve": [[int(n), t] for n, t in e.curve],
        }
        for e, f in zip(engines, free, strict=True)
    ]
    requests = []
    left = num_items
    r = 0
    while (r < num_requests) if left is None else (left > 0):
        num_cfg = int(rng.integers(1, 6))
        configs = [[str(rng.choice(models)) for _ in range(num_stages)] for _ in range(num_cfg)]
        k = int(rng.integers(1, min(3, num_stages) + 1))
        if left is not None:
            k = min(k, left)
            left -= k
        r += 1
        ready = [int(s) for s in rng.choice(num_stages, size=k, replace=False)]
        requests.append({"id": f"r{r - 1}", "configs": configs, "ready": ready})
    return {"engines": doc_engines, "requests": requests}
