"""Engines and their live load (DESIGN §5 "Load vector").

An :class:`EngineInfo` is the static description of one engine (name, the model it
serves, saturation batch, throughput curve). An :class:`EngineLoad` adds what was
observed at the start of a round; a :class:`LoadVector` is one per engine, in the
scheduler's engine order.

Free slots and the throughput curve f(n) are the engine model's
(:func:`aragog_jax.engines.model.free_slots`, :func:`~aragog_jax.engines.model.curve_arrays`):
``max(0, saturation_batch - running - waiting)``, 0 when the engine is unhealthy or its
KV cache is at least ``KV_FULL`` (0.99) used; f linear between points, flat past the last, and
linear from (0, 0) to the first point when that point is above 0 sequences.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from aragog_jax.engines.model import (
    Curve,
    check_curve,
    curve_arrays,
    curve_value,
    free_slots,
    profile_curve,
)
from aragog_jax.errors import SchedulerError
from aragog_jax.spec import EngineProfile

#: Default resolution of the utility U: 1 / UTILITY_SCALE of fleet capacity. Plans whose
#: U differs by less are near-ties, broken by flexibility and then by index.
UTILITY_SCALE = 100_000


@dataclass(frozen=True)
class EngineInfo:
    """Static description of one engine.

    Attributes:
      name: unique engine name.
      model: name of the model it serves (the ConfigSpace model name).
      saturation_batch: concurrent sequences at which throughput saturates.
      curve: ((concurrency, tokens/s), ...) throughput curve.
    """

    name: str
    model: str
    saturation_batch: int
    curve: Curve

    def __post_init__(self) -> None:
        if not self.name:
            raise SchedulerError("engine name must not be empty")
        if int(self.saturation_batch) < 1:
            raise SchedulerError(
                f"engine {self.name!r}: saturation_batch must be >= 1, got {self.saturation_batch}"
            )
        object.__setattr__(self, "curve", check_curve(self.curve, f"engine {self.name!r}: curve"))

    @classmethod
    def from_profile(cls, name: str, profile: EngineProfile, model: str = "") -> EngineInfo:
        """An engine named ``name`` that behaves like ``profile``, serving ``model``
        (default: the profile's model)."""
        return cls(
            name=name,
            model=model or profile.model,
            saturation_batch=int(profile.saturation_batch),
            curve=profile_curve(profile),
        )


@dataclass(frozen=True)
class EngineLoad:
    """One engine's state at the start of a round.

    Attributes:
      name, model, saturation_batch, curve: as in :class:`EngineInfo`.
      running, waiting: sequences the engine is running / has queued.
      kv_usage: KV-cache usage in [0, 1].
      healthy: False when health checks fail (the engine then has no free slot).
      free_slots: new sequences the scheduler may send this round.
    """

    name: str
    model: str
    saturation_batch: int
    curve: Curve
    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0
    healthy: bool = True
    free_slots: int = field(default=-1)

    def __post_init__(self) -> None:
        if self.running < 0 or self.waiting < 0:
            raise SchedulerError(f"engine {self.name!r}: running and waiting must be >= 0")
        if self.free_slots < 0:  # derive from the observations
            free = free_slots(
                self.saturation_batch, self.running, self.waiting, self.kv_usage, self.healthy
            )
            object.__setattr__(self, "free_slots", free)

    @property
    def load(self) -> int:
        """Sequences on the engine (running + waiting), the x of its curve."""
        return int(self.running) + int(self.waiting)

    @classmethod
    def of(
        cls,
        engine: EngineInfo,
        running: int,
        waiting: int,
        kv_usage: float,
        healthy: bool,
        free: int = -1,
    ) -> EngineLoad:
        """An engine's load from observations the caller has checked (counts >= 0):
        what a live server builds for every engine every round, without the dataclass's
        per-field ``object.__setattr__`` and checks. ``free`` < 0 derives the free slots
        from the observations, as the constructor does."""
        if free < 0:
            free = free_slots(engine.saturation_batch, running, waiting, kv_usage, healthy)
        load = object.__new__(cls)
        load.__dict__.update(
            name=engine.name,
            model=engine.model,
            saturation_batch=engine.saturation_batch,
            curve=engine.curve,
            running=running,
            waiting=waiting,
            kv_usage=kv_usage,
            healthy=healthy,
            free_slots=free,
        )
        return load

    @classmethod
    def observe(
        cls,
        engine: EngineInfo,
        *,
        running: int = 0,
        waiting: int = 0,
        kv_usage: float = 0.0,
        healthy: bool = True,
    ) -> EngineLoad:
        """Live observations on top of an engine's static description."""
        return cls(
            name=engine.name,
            model=engine.model,
            saturation_batch=engine.saturation_batch,
            curve=engine.curve,
            running=int(running),
            waiting=int(waiting),
            kv_usage=float(kv_usage),
            healthy=bool(healthy),
        )


@dataclass(frozen=True)
class LoadVector:
    """The load of every engine at the start of a round, in the scheduler's engine order."""

    engines: tuple[EngineLoad, ...]

    @classmethod
    def idle(cls, engines: Sequence[EngineInfo]) -> LoadVector:
        """Every engine healthy and empty."""
        return cls(tuple(EngineLoad.observe(e) for e in engines))

    @classmethod
    def observe(
        cls,
        engines: Sequence[EngineInfo],
        observations: Mapping[str, Mapping[str, float | int | bool]],
    ) -> LoadVector:
        """Build from static descriptions plus ``{engine name: {running, waiting, kv_usage, healthy}}``.

        Engines missing from ``observations`` are taken as idle and healthy.
        """
        unknown = sorted(set(observations) - {e.name for e in engines})
        if unknown:
            raise SchedulerError(f"load observations for unknown engines {unknown}")
        return cls(tuple(EngineLoad.observe(e, **observations.get(e.name, {})) for e in engines))

    @classmethod
    def ordered(cls, engines: tuple[EngineLoad, ...], names: tuple[str, ...]) -> LoadVector:
        """A load vector of ``engines``, which the caller built in the order ``names`` (a
        scheduler's ``engine_names``, one per engine): that scheduler's ``in_order`` takes
        it as it is, without comparing names."""
        vector = cls(engines)
        vector.__dict__["names"] = names  # what the cached property would compute
        return vector

    @functools.cached_property
    def names(self) -> tuple[str, ...]:
        """The engines' names, in order (computed once: a round asks every time)."""
        return tuple(e.name for e in self.engines)

    def in_order(self, names: tuple[str, ...]) -> LoadVector:
        """This load with its engines in the order ``names`` (a scheduler's engines).

        Raises :class:`SchedulerError` when it does not give each of them exactly once.
        """
        have = self.names
        if have == names:
            return self
        unknown = sorted(set(have) - set(names))
        if unknown:
            raise SchedulerError(
                f"load vector names unknown engines {unknown}; engines are {list(names)}"
            )
        missing = sorted(set(names) - set(have))
        if missing or len(have) != len(set(have)):
            raise SchedulerError(
                f"load vector must give each engine once; missing {missing}, got {list(have)}"
            )
        by_name = {e.name: e for e in self.engines}
        return LoadVector(tuple(by_name[n] for n in names))

    def free_slots(self) -> np.ndarray:
        """int32[E]."""
        return np.array([e.free_slots for e in self.engines], dtype=np.int32)

    def loads(self) -> np.ndarray:
        """int64[E] running + waiting."""
        return np.array([e.load for e in self.engines], dtype=np.int64)

    def throughput(self, extra: np.ndarray | None = None) -> np.ndarray:
        """float64[E] f_e(load_e + extra_e)."""
        extra = (
            np.zeros(len(self.engines)) if extra is None else np.asarray(extra, dtype=np.float64)
        )
        out = np.empty(len(self.engines))
        for e, (eng, x) in enumerate(zip(self.engines, extra, strict=True)):
            out[e] = curve_value(eng.curve, eng.load + x)
        return out

    def capacity(self) -> float:
        """Σ_e f_e at its last curve point (tokens/s of the whole fleet at saturation)."""
        return float(sum(e.curve[-1][1] for e in self.engines))

    def utilization(self, assigned: np.ndarray) -> float:
        """U of DESIGN §5: Σ_e [f_e(load_e + assigned_e) - f_e(load_e)] / capacity."""
        cap = self.capacity()
        if cap <= 0:
            return 0.0
        gain = self.throughput(assigned) - self.throughput()
        return float(gain.sum() / cap)

    def gain_table(self, num_slots: int, utility_scale: int = UTILITY_SCALE) -> np.ndarray:
        """int32[E, num_slots]: quantised gain of the (k+1)-th sequence added this round.

        ``gain[e, k] = rint((f_e(load_e + k + 1) - f_e(load_e + k)) / capacity * utility_scale)``.
        Computed once per round on the host in float64 so kernel and twin see the same
        integers.
        """
        cap = self.capacity()
        out = np.zeros((len(self.engines), num_slots), dtype=np.int32)
        if cap <= 0:
            return out
        for e, eng in enumerate(self.engines):
            out[e] = gain_row(eng.curve, eng.load, num_slots, cap, utility_scale)
        return out


def gain_row(
    curve: Curve, load: int, num_slots: int, capacity: float, utility_scale: int
) -> np.ndarray:
    """int32[num_slots]: one engine's row of :meth:`LoadVector.gain_table` (``capacity`` > 0)."""
    xs, ys = curve_arrays(curve)
    f = np.interp(load + np.arange(num_slots + 1, dtype=np.float64), xs, ys)
    return np.rint(np.diff(f) / capacity * utility_scale).astype(np.int32)
