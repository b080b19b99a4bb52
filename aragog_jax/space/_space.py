"""The configuration space of a workflow as dense tensors (DESIGN §3).

A configuration assigns one model to every stage. Model ids index the space's model
pool (``model_names``), which is ascending by parameter count, so "larger model" is
"larger id" within a pool. Configurations are ordered by ascending FLOPs (ties broken
lexicographically on the model-id tuple), so any prefix is "cheapest first" and the
last configuration is ``c_max``, the largest model everywhere.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from aragog_jax.errors import SpaceTooLargeError, SpecError
from aragog_jax.spec import ModelSpec, WorkflowSpec

#: Default limit on dense enumeration. Larger spaces use the router's factorised head.
DEFAULT_MAX_CONFIGS = 65_536


@dataclass(frozen=True, eq=False)
class ConfigSpace:
    """Dense tensors of one workflow's configuration space over one model pool.

    Attributes:
      workflow: the workflow name.
      stage_names: S stage names, in the workflow file's order (stage ids).
      model_names: M model names, ascending by parameter count (model ids).
      model_params: float64[M] parameter counts.
      candidates: per stage, the tuple of allowed model ids.
      configs: int32[C, S] model id of every stage, ascending FLOPs.
      config_flops: float32[C] sum over stages of 2 * params * (input + output tokens).
      stage_model_onehot: bool[S, M, C], ``configs[c, s] == m``.
      c_max: index of the most expensive configuration (always C - 1).
      stage_depth: int32[S] longest path (in edges) from the stage to a sink.
      topo_order: int32[S] a topological order of stage ids (ties: file order).
      upstream: per stage, the tuple of upstream stage ids.
    """

    workflow: str
    stage_names: tuple[str, ...]
    model_names: tuple[str, ...]
    model_params: np.ndarray
    candidates: tuple[tuple[int, ...], ...]
    configs: np.ndarray
    config_flops: np.ndarray
    stage_model_onehot: np.ndarray
    c_max: int
    stage_depth: np.ndarray
    topo_order: np.ndarray
    upstream: tuple[tuple[int, ...], ...]
    stage_tokens: np.ndarray = field(repr=False)  # int32[S, 2] expected (input, output) tokens
    # What the space was built from (router checkpoints store both, so they rebuild it).
    spec: WorkflowSpec | None = field(default=None, repr=False)
    pool: tuple[ModelSpec, ...] = field(default=(), repr=False)

    @property
    def num_configs(self) -> int:
        return int(self.configs.shape[0])

    @property
    def num_stages(self) -> int:
        return len(self.stage_names)

    @property
    def num_models(self) -> int:
        return len(self.model_names)

    @cached_property  # (read per stage completion on the server's hot path)
    def output_stage(self) -> int:
        """The stage whose text is the workflow's output: the last sink in file order."""
        return max(s for s in range(self.num_stages) if int(self.stage_depth[s]) == 0)

    def fingerprint(self) -> str:
        """Stable hash of stage names, model names and the configuration order.

        Router checkpoints store it; loading one against another space fails.
        """
        h = hashlib.sha256()
        h.update(self.workflow.encode())
        h.update("\x00".join(self.stage_names).encode())
        h.update(b"\x01" + "\x00".join(self.model_names).encode())
        h.update(np.ascontiguousarray(self.configs, dtype="<i4").tobytes())
        return h.hexdigest()[:16]

    def config_to_models(self, c: int) -> dict[str, str]:
        """Stage name -> model name of configuration ``c``."""
        return {
            s: self.model_names[int(m)]
            for s, m in zip(self.stage_names, self.configs[c], strict=True)
        }

    def index_of(self, stage_to_model: dict[str, str]) -> int:
        """Index of the configuration given as stage name -> model name."""
        try:
            ids = [self.model_names.index(stage_to_model[s]) for s in self.stage_names]
        except (KeyError, ValueError) as exc:
            raise SpecError(
                f"{self.workflow}: not a configuration of this space: {stage_to_model}"
            ) from exc
        hits = np.flatnonzero((self.configs == np.asarray(ids, np.int32)).all(axis=1))
        if hits.size == 0:
            raise SpecError(
                f"{self.workflow}: configuration not allowed by the workflow: {stage_to_model}"
            )
        return int(hits[0])

    def model_rank(self) -> np.ndarray:
        """int32[C, S]: per stage, the rank of the chosen model by size (0 = smallest)."""
        order = np.argsort(np.argsort(self.model_params, kind="stable"), kind="stable")
        return order[self.configs].astype(np.int32)

    def dominates(self) -> np.ndarray:
        """bool[C, C]: ``d[a, b]`` when every stage of a uses a model at least as large as b's.

        Reflexive. Memory is C^2 bytes; the router uses it for C up to tens of thousands.
        """
        params = self.model_params[self.configs]  # [C, S]
        return (params[:, None, :] >= params[None, :, :]).all(axis=-1)


def build_space(
    workflow: WorkflowSpec,
    pool: list[ModelSpec],
    *,
    max_configs: int = DEFAULT_MAX_CONFIGS,
) -> ConfigSpace:
    """Enumerate the configuration space of ``workflow`` over the model ``pool``.

    A stage's candidates are its ``models`` list, or the whole pool when the list is
    empty. A stage with ``same_model_as`` copies its target's choice.

    Raises:
      SpecError: a stage names a model outside the pool or has no candidate.
      SpaceTooLargeError: the space has more than ``max_configs`` configurations.
    """
    pool = sorted(pool, key=lambda m: (m.num_params, m.name))
    model_names = tuple(m.name for m in pool)
    if len(set(model_names)) != len(model_names):
        raise SpecError(f"{workflow.name}: duplicate model in pool {model_names}")
    model_params = np.array([m.num_params for m in pool], dtype=np.float64)
    stage_index = {s.name: i for i, s in enumerate(workflow.stage)}

    candidates: list[tuple[int, ...]] = []
    for i, s in enumerate(workflow.stage):
        names = s.models or list(model_names)
        missing = [n for n in names if n not in model_names]
        if missing:
            raise SpecError(
                f"{workflow.name}: stage[{i}] {s.name!r}: models {missing} are not in the pool {list(model_names)}"
            )
        ids = tuple(sorted(model_names.index(n) for n in names))
        if not ids:
            raise SpecError(f"{workflow.name}: stage[{i}] {s.name!r}: no candidate model")
        candidates.append(ids)
    tied = [stage_index[s.same_model_as] if s.same_model_as else -1 for s in workflow.stage]
    for i, t in enumerate(tied):
        if t >= 0:
            shared = tuple(sorted(set(candidates[i]) & set(candidates[t])))
            if not shared:
                raise SpecError(
                    f"{workflow.name}: stage[{i}] {workflow.stage[i].name!r}: tied to "
                    f"{workflow.stage[t].name!r} but they share no candidate model"
                )
            candidates[i] = candidates[t] = shared

    free = [i for i, t in enumerate(tied) if t < 0]
    size = 1
    for i in free:
        size *= len(candidates[i])
    if size > max_configs:
        shape = " x ".join(str(len(candidates[i])) for i in free)
        raise SpaceTooLargeError(
            f"{workflow.name}: {size:,} configurations ({shape}) exceed the enumeration limit "
            f"{max_configs:,}; raise max_configs or use the router's factorised head"
        )

    grid = np.array(
        list(itertools.product(*(candidates[i] for i in free))), dtype=np.int32
    ).reshape(size, len(free))
    configs = np.empty((size, len(workflow.stage)), dtype=np.int32)
    configs[:, free] = grid
    for i, t in enumerate(tied):
        if t >= 0:
            configs[:, i] = configs[:, t]

    tokens = np.array([[s.input_tokens, s.output_tokens] for s in workflow.stage], dtype=np.int64)
    stage_flops = 2.0 * model_params[configs] * tokens.sum(axis=1)[None, :]  # [C, S]
    flops = stage_flops.sum(axis=1)
    # Ascending FLOPs; lexsort's last key is primary, earlier keys break ties lexicographically.
    order = np.lexsort(tuple(configs[:, s] for s in reversed(range(configs.shape[1]))) + (flops,))
    configs = configs[order]
    flops = flops[order]

    num_models = len(pool)
    onehot = (
        configs.T[:, None, :] == np.arange(num_models, dtype=np.int32)[None, :, None]
    )  # [S, M, C]
    upstream = tuple(tuple(stage_index[u] for u in s.upstream) for s in workflow.stage)
    return ConfigSpace(
        workflow=workflow.name,
        stage_names=tuple(workflow.stage_names),
        model_names=model_names,
        model_params=model_params,
        candidates=tuple(candidates),
        configs=configs,
        config_flops=flops.astype(np.float32),
        stage_model_onehot=onehot,
        c_max=int(configs.shape[0] - 1),
        stage_depth=stage_depth(upstream),
        topo_order=topo_order(upstream),
        upstream=upstream,
        stage_tokens=tokens.astype(np.int32),
        spec=workflow,
        pool=tuple(pool),
    )


def topo_order(upstream: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """Kahn's algorithm; among ready stages the lowest id goes first. Assumes a DAG."""
    remaining = [set(u) for u in upstream]
    done: list[int] = []
    while len(done) < len(upstream):
        ready = [i for i, r in enumerate(remaining) if not r and i not in done]
        if not ready:
            raise SpecError("stage graph has a cycle")
        i = ready[0]
        done.append(i)
        for r in remaining:
            r.discard(i)
    return np.array(done, dtype=np.int32)


def stage_depth(upstream: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """Longest path (in edges) from each stage to a sink; sinks have depth 0."""
    num_stages = len(upstream)
    downstream: list[list[int]] = [[] for _ in range(num_stages)]
    for i, ups in enumerate(upstream):
        for u in ups:
            downstream[u].append(i)
    depth = np.zeros(num_stages, dtype=np.int32)
    for i in reversed(topo_order(upstream).tolist()):
        if downstream[i]:
            depth[i] = 1 + max(int(depth[d]) for d in downstream[i])
    return depth


@dataclass(frozen=True, eq=False)
class PaddedSpaces:
    """Several spaces padded to one ``[W, C_bucket, S_max]`` shape for one compiled kernel.

    Attributes:
      configs: int32[W, C, S] (padding: -1).
      config_flops: float32[W, C] (padding: +inf, so padding sorts last).
      valid: bool[W, C] real configuration.
      stage_valid: bool[W, S] real stage.
      c_max: int32[W].
    """

    workflows: tuple[str, ...]
    configs: np.ndarray
    config_flops: np.ndarray
    valid: np.ndarray
    stage_valid: np.ndarray
    c_max: np.ndarray


def bucket_size(n: int, buckets: tuple[int, ...] | None = None) -> int:
    """Smallest bucket >= n; default buckets are powers of two."""
    if buckets:
        for b in sorted(buckets):
            if b >= n:
                return b
        raise SpecError(f"size {n} exceeds the largest bucket {max(buckets)}")
    return 1 << max(0, (n - 1).bit_length())


def pad_spaces(spaces: list[ConfigSpace], buckets: tuple[int, ...] | None = None) -> PaddedSpaces:
    """Pad spaces to a shared configuration bucket and stage count with validity masks."""
    if not spaces:
        raise SpecError("pad_spaces needs at least one space")
    num_c = bucket_size(max(s.num_configs for s in spaces), buckets)
    num_s = max(s.num_stages for s in spaces)
    w = len(spaces)
    configs = np.full((w, num_c, num_s), -1, dtype=np.int32)
    flops = np.full((w, num_c), np.inf, dtype=np.float32)
    valid = np.zeros((w, num_c), dtype=bool)
    stage_valid = np.zeros((w, num_s), dtype=bool)
    for i, sp in enumerate(spaces):
        configs[i, : sp.num_configs, : sp.num_stages] = sp.configs
        flops[i, : sp.num_configs] = sp.config_flops
        valid[i, : sp.num_configs] = True
        stage_valid[i, : sp.num_stages] = True
    return PaddedSpaces(
        workflows=tuple(s.workflow for s in spaces),
        configs=configs,
        config_flops=flops,
        valid=valid,
        stage_valid=stage_valid,
        c_max=np.array([s.c_max for s in spaces], dtype=np.int32),
    )
