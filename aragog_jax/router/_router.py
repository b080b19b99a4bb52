"""The batch router: a checkpoint + a space, compiled ahead of time per request bucket.

Usage::

    router = Router.load("profiles/routers/self_refine_humaneval/qwen.npz")  # space from meta
    router.compile()                                # every bucket, at start-up
    res = router.route_texts(["def f(x): ..."])     # RouteResult(mask bool[R, C], prob, ...)

Requests are padded up to the smallest bucket that holds them (batches larger than the
largest bucket are split). Each bucket's function is lowered and compiled once
(``jax.jit(...).lower(...).compile()``); calls go straight to the compiled executables,
so the hot path never traces. Parameters, thresholds and the always-admitted mask are
arguments, not constants, so recalibrating does not recompile.

With a time budget, configurations are scored cheapest-first in chunks; when the
budget runs out the remaining ones are admitted only if they dominate an admitted one
(``kernels.routing.dominance_complete``), and ``fraction_completed`` says how much of
the space was scored.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from aragog_jax.errors import CheckpointError
from aragog_jax.kernels import routing as K
from aragog_jax.router._checkpoint import RouterCheckpoint, load_checkpoint
from aragog_jax.router._featurize import Featurizer, make_featurizer
from aragog_jax.space import ConfigSpace

DEFAULT_BUCKETS = (1, 8, 64, 512, 4096)
#: Configurations scored per chunk in budgeted routing.
DEFAULT_CHUNK = 64
#: Rows per block inside big buckets on CPU (see :func:`route_blocked`); accelerators
#: want the whole bucket at once, so blocking is off there by default.
DEFAULT_ROW_BLOCK = 512


def route_blocked(params, features, thresholds, always, configs=None, row_block: int = 0):
    """``kernels.routing.route`` over blocks of ``row_block`` rows (``lax.map``), for big buckets.

    A 4096-row bucket of a 512-wide MLP has 8 MiB activations per layer, more than the
    CPU caches; blocks of 512 rows keep every layer in cache and run about twice as fast.
    Each row's result is the same as unblocked (rows never mix). Used when the bucket is
    a multiple of ``row_block`` larger than it; ``row_block=0`` disables blocking.
    """
    num_rows = features.shape[0]
    if row_block <= 0 or num_rows <= row_block or num_rows % row_block:
        return K.route(params, features, thresholds, always, configs)
    blocks = features.reshape(num_rows // row_block, row_block, features.shape[1])
    mask, prob = jax.lax.map(lambda x: K.route(params, x, thresholds, always, configs), blocks)
    return mask.reshape(num_rows, -1), prob.reshape(num_rows, -1)


@dataclass(frozen=True)
class RouteResult:
    """Output of one routing call.

    Attributes:
      mask: bool[R, C] admitted configurations in the space's order (c_max always set).
      prob: float32[R, C] predicted probability that each configuration is accurate
        (NaN where a budget left it unscored).
      fraction_completed: share of configurations scored (1.0 without a budget).
      elapsed: seconds spent in this call (featurisation included for ``route_texts``).
    """

    mask: np.ndarray
    prob: np.ndarray
    fraction_completed: float
    elapsed: float

    @property
    def num_admitted(self) -> np.ndarray:
        return self.mask.sum(axis=1)


class Router:
    """A calibrated accuracy router for one workflow over one model pool."""

    def __init__(
        self,
        checkpoint: RouterCheckpoint,
        space: ConfigSpace,
        featurizer: Featurizer | None = None,
        *,
        chunk: int = DEFAULT_CHUNK,
        row_block: int | None = None,
    ) -> None:
        checkpoint.check_space(space)
        self.checkpoint = checkpoint
        self.space = space
        self.model_config = checkpoint.model_config
        self.featurizer = featurizer or make_featurizer(
            checkpoint.meta.featurizer, checkpoint.meta.featurizer_config
        )
        if self.featurizer.dim != self.model_config.feature_dim:
            raise CheckpointError(
                f"featuriser {self.featurizer.name} has dimension {self.featurizer.dim}, "
                f"the checkpoint expects {self.model_config.feature_dim}"
            )
        # Device-agnostic: everything lives on JAX's default device (a GPU when present).
        put = jax.device_put
        self._params = jax.tree.map(put, checkpoint.params)
        always = np.zeros(space.num_configs, dtype=bool)
        always[space.c_max] = True
        self._thresholds = put(np.asarray(checkpoint.thresholds, np.float32))
        self._always = put(always)
        self._configs = put(space.configs) if self.model_config.head == "factorised" else None
        self._dominates: jax.Array | None = None
        self.chunk = max(1, min(int(chunk), space.num_configs))
        if row_block is None:
            row_block = DEFAULT_ROW_BLOCK if jax.default_backend() == "cpu" else 0
        self.row_block = int(row_block)
        self.buckets: tuple[int, ...] = ()
        self._full: dict[int, object] = {}
        self._trunk: dict[int, object] = {}
        self._chunk_fn: dict[int, object] = {}
        self._complete: dict[int, object] = {}
        #: Python-level traces of the routing functions (diagnostic; tests assert it stays put).
        self.num_traces = 0

    # -- construction ----------------------------------------------------------------

    @classmethod
    def load(
        cls,
        path: str | Path,
        space: ConfigSpace | None = None,
        *,
        featurizer: Featurizer | None = None,
        chunk: int = DEFAULT_CHUNK,
        row_block: int | None = None,
        **featurizer_overrides,
    ) -> Router:
        """Load a checkpoint; without ``space``, the space stored in it (:meth:`RouterCheckpoint.space`).

        ``featurizer_overrides`` (e.g. ``base_url=...``) replace recorded featuriser fields.

        Raises:
          CheckpointError: unreadable checkpoint, or one trained for another space.
        """
        ckpt = load_checkpoint(path)
        if space is None:
            try:
                space = ckpt.space()
            except CheckpointError as exc:
                raise CheckpointError(f"{path}: {exc}") from exc
        if featurizer is None and featurizer_overrides:
            featurizer = make_featurizer(
                ckpt.meta.featurizer, ckpt.meta.featurizer_config, **featurizer_overrides
            )
        try:
            return cls(ckpt, space, featurizer, chunk=chunk, row_block=row_block)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from exc

    @property
    def num_configs(self) -> int:
        return self.space.num_configs

    @property
    def thresholds(self) -> np.ndarray:
        return np.asarray(self._thresholds)

    def set_thresholds(self, thresholds: np.ndarray) -> None:
        """Swap thresholds (e.g. another epsilon); compiled functions are reused."""
        thresholds = np.asarray(thresholds, np.float32)
        if thresholds.shape != (self.num_configs,):
            raise CheckpointError(
                f"thresholds must have shape ({self.num_configs},), got {thresholds.shape}"
            )
        self._thresholds = jax.device_put(thresholds)

    # -- compilation -----------------------------------------------------------------

    def _route_fn(self, params, features, thresholds, always, configs):
        self.num_traces += 1
        return route_blocked(params, features, thresholds, always, configs, self.row_block)

    def _trunk_fn(self, hidden, features):
        self.num_traces += 1
        return K.mlp_trunk(hidden, features)

    def _chunk_route_fn(self, head, hidden, thresholds, always, start, configs):
        self.num_traces += 1
        return K.route_chunk(head, hidden, thresholds, always, start, self.chunk, configs)

    def _complete_fn(self, mask, evaluated, dominates):
        self.num_traces += 1
        return K.dominance_complete(mask, evaluated, dominates)

    def compile(
        self, buckets: Sequence[int] = DEFAULT_BUCKETS, *, budgeted: bool = False
    ) -> Router:
        """Compile the routing function for every bucket (and the budgeted path if asked).

        Returns ``self``. Calling it again with more buckets compiles only the new ones.
        """
        buckets = tuple(sorted({int(b) for b in buckets}))
        if not buckets or buckets[0] < 1:
            raise CheckpointError(f"buckets must be positive sizes, got {buckets}")
        dim = self.model_config.feature_dim
        c = self.num_configs
        sds = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype)  # noqa: E731
        for b in buckets:
            feats = sds((b, dim), jnp.float32)
            if b not in self._full:
                self._full[b] = (
                    jax.jit(self._route_fn)
                    .lower(self._params, feats, self._thresholds, self._always, self._configs)
                    .compile()
                )
            if budgeted and b not in self._trunk:
                self._trunk[b] = (
                    jax.jit(self._trunk_fn).lower(self._params["hidden"], feats).compile()
                )
                hid = sds((b, self.model_config.width), jnp.float32)
                start = sds((), jnp.int32)
                self._chunk_fn[b] = (
                    jax.jit(self._chunk_route_fn)
                    .lower(
                        self._params["head"],
                        hid,
                        self._thresholds,
                        self._always,
                        start,
                        self._configs,
                    )
                    .compile()
                )
                if self._dominates is None:
                    self._dominates = jax.device_put(self.space.dominates())
                self._complete[b] = (
                    jax.jit(self._complete_fn)
                    .lower(sds((b, c), jnp.bool_), sds((c,), jnp.bool_), self._dominates)
                    .compile()
                )
        self.buckets = tuple(sorted(set(self.buckets) | set(buckets)))
        return self

    def _bucket(self, n: int) -> int:
        for b in self.buckets:
            if b >= n:
                return b
        return self.buckets[-1]

    # -- routing ---------------------------------------------------------------------

    def route_features_async(self, features: np.ndarray) -> list[tuple[int, jax.Array, jax.Array]]:
        """Dispatch routing of ``features`` without waiting; returns ``[(rows, mask, prob), ...]``.

        The arrays are device arrays of bucket size; the first ``rows`` rows are real.
        Lets a caller overlap host work with device work (the offline job does).
        """
        if not self.buckets:
            self.compile()
        features = np.asarray(features, np.float32)
        if features.ndim != 2 or features.shape[1] != self.model_config.feature_dim:
            raise CheckpointError(
                f"features must have shape [R, {self.model_config.feature_dim}], got {features.shape}"
            )
        out = []
        largest = self.buckets[-1]
        for lo in range(0, max(features.shape[0], 1), largest):
            part = features[lo : lo + largest]
            n = part.shape[0]
            if n == 0:
                break
            b = self._bucket(n)
            if b != n:
                part = np.concatenate([part, np.zeros((b - n, part.shape[1]), np.float32)])
            mask, prob = self._full[b](
                self._params, part, self._thresholds, self._always, self._configs
            )
            out.append((n, mask, prob))
        return out

    def route_features(self, features: np.ndarray, budget_s: float | None = None) -> RouteResult:
        """Route a batch of feature rows.

        Args:
          features: float32[R, D].
          budget_s: optional time budget in seconds for cheapest-first chunked scoring.

        Returns:
          :class:`RouteResult` with ``mask`` bool[R, C] and ``prob`` float32[R, C].
        """
        t0 = time.perf_counter()
        if budget_s is not None:
            return self._route_budgeted(features, budget_s, t0)
        parts = self.route_features_async(features)
        num_c = self.num_configs
        if not parts:
            return RouteResult(
                np.zeros((0, num_c), bool), np.zeros((0, num_c), np.float32), 1.0, 0.0
            )
        masks = [np.asarray(m)[:n] for n, m, _ in parts]
        probs = [np.asarray(p)[:n] for n, _, p in parts]
        mask = masks[0] if len(masks) == 1 else np.concatenate(masks)
        prob = probs[0] if len(probs) == 1 else np.concatenate(probs)
        return RouteResult(mask, prob, 1.0, time.perf_counter() - t0)

    def route_progressive(self, features: np.ndarray) -> Iterator[RouteResult]:
        """Route ``features`` cheapest-first in chunks, yielding the admitted set found so far.

        Monotone pruning without a fill-in: after each chunk of configurations (``chunk``,
        ascending FLOPs) the mask is ``c_max`` plus every scored configuration the router
        admits, so each yielded mask contains the previous one, every one is a subset of
        :meth:`route_features`' mask, and the last (``fraction_completed`` 1.0) equals it.
        A caller may stop after any step and use what it has: under the ``scheduled``
        and ``any`` guarantees (``calibrate``) a subset of an admitted set that keeps
        ``c_max`` is covered, since the loss bounded is "some admitted configuration is
        inaccurate", which a smaller set never raises. The first step is yielded before
        any chunk is scored (``c_max`` only, fraction 0), so a consumer has a mask at once.

        Args:
          features: float32[R, D], R at most the largest bucket.

        Yields:
          :class:`RouteResult` per step (``prob`` NaN where not scored yet; the arrays are
          fresh copies a consumer may keep).
        """
        t0 = time.perf_counter()
        if not self._trunk:
            self.compile(self.buckets or DEFAULT_BUCKETS, budgeted=True)
        features = np.asarray(features, np.float32)
        num_r, num_c = features.shape[0], self.num_configs
        largest = self.buckets[-1]
        if num_r > largest:
            raise CheckpointError(
                f"budgeted routing takes at most {largest} requests per call, got {num_r}"
            )
        b = self._bucket(num_r)
        padded = np.zeros((b, features.shape[1]), np.float32)
        padded[:num_r] = features
        mask = np.zeros((num_r, num_c), bool)
        mask[:, self.space.c_max] = True
        prob = np.full((num_r, num_c), np.nan, np.float32)
        scored = 0
        yield RouteResult(mask.copy(), prob.copy(), 0.0, time.perf_counter() - t0)
        hidden = self._trunk[b](self._params["hidden"], padded)
        for lo in range(0, num_c, self.chunk):
            # the last chunk overlaps instead of running off the end
            start = min(lo, num_c - self.chunk)
            m, p = self._chunk_fn[b](
                self._params["head"],
                hidden,
                self._thresholds,
                self._always,
                np.int32(start),
                self._configs,
            )
            mask[:, start : start + self.chunk] |= np.asarray(m)[:num_r]
            prob[:, start : start + self.chunk] = np.asarray(p)[:num_r]
            scored = min(num_c, lo + self.chunk)
            yield RouteResult(mask.copy(), prob.copy(), scored / num_c, time.perf_counter() - t0)

    def _route_budgeted(self, features: np.ndarray, budget_s: float, t0: float) -> RouteResult:
        deadline = t0 + budget_s
        steps = self.route_progressive(features)
        next(steps)  # c_max only
        res = next(steps)  # at least one chunk is always scored
        while res.fraction_completed < 1.0 and time.perf_counter() < deadline:
            res = next(steps)
        mask = res.mask
        if res.fraction_completed < 1.0:
            evaluated = np.zeros(self.num_configs, bool)
            evaluated[: round(res.fraction_completed * self.num_configs)] = True
            b = self._bucket(mask.shape[0])
            padded = np.zeros((b, mask.shape[1]), bool)
            padded[: mask.shape[0]] = mask
            mask = np.array(self._complete[b](padded, evaluated, self._dominates))[: mask.shape[0]]
            mask[:, self.space.c_max] = True
        return RouteResult(mask, res.prob, res.fraction_completed, time.perf_counter() - t0)

    def route_texts(self, texts: Sequence[str], budget_s: float | None = None) -> RouteResult:
        """Featurise and route; ``elapsed`` includes featurisation."""
        t0 = time.perf_counter()
        features = self.featurizer(texts)
        res = self.route_features(
            features,
            budget_s=None if budget_s is None else max(0.0, budget_s - (time.perf_counter() - t0)),
        )
        return RouteResult(res.mask, res.prob, res.fraction_completed, time.perf_counter() - t0)

    def admitted_models(self, mask_row: np.ndarray) -> list[dict[str, str]]:
        """The admitted configurations of one request as stage -> model mappings."""
        return [self.space.config_to_models(int(c)) for c in np.flatnonzero(mask_row)]
