"""Scheduling policies: one enum, one factory, one tiny protocol (STYLE 10).

Every policy answers two questions: which configurations a request may use (``admit``,
once at arrival) and which engine each ready stage goes to this round (``assign``).
Decision rules:

* ``aragog`` — admit the router's mask; assign by the beam search of DESIGN §5 with
  width ``beam_width`` (default 4): items in FIFO order, every beam extended with every
  allowed engine that has a free slot, an item skipped only when none has; ranked by the
  forecast throughput gain U (resolution ``1 / utility_scale`` of fleet capacity,
  default 1e-5), then flexibility F (sum of kept shares, resolution 2**-14), then the
  lowest candidate index. The greedy line always survives, so it is never worse than
  ``greedy``. This is the paper's rule while ``SCARCITY_DEFAULT`` is False (it becomes
  ``aragog-scarce``'s once that wins on the calibrated world, issue 18).
* ``aragog-paper`` — always the paper's rule, so every report can compare the two.
* ``aragog-scarce`` — ``aragog`` with the *scarcity reservation* (beyond the paper): an
  item whose request can use only one model m at its stage is inflexible; a flexible
  item may take a slot of m only while m keeps more free slots than the inflexible-on-m
  items after it in the round (it is skipped when every allowed free slot is reserved),
  so scarce engines serve the work that needs them and flexible stages go to the other
  engines or wait for them. No parameter: the reservation is a count, and it never
  idles a slot the round could fill.
* ``greedy`` — ``aragog`` with ``beam_width = 1``.
* ``per_input`` — admit only the request's cheapest admitted configuration by FLOPs
  (the first admitted one: spaces sort configurations by ascending FLOPs); assign each
  stage FIFO to the engine of that configuration's model with the largest gain (B = 1).
* ``per_workflow`` — admit one configuration per workflow, fixed at construction
  (``configs = {workflow name: config index or {stage: model}}``), whatever the mask;
  assign as ``per_input``.
* ``brute_force`` — admit the mask; assign the exact optimum of the same search space
  (highest U, then F) by exhaustive search; at most ``max_items`` (default 10) ready
  items per round.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Protocol

import numpy as np

from aragog_jax.errors import SchedulerError, SpecError
from aragog_jax.kernels import BeamResult
from aragog_jax.scheduler._round import (
    COMPILED,
    COMPILED_PAPER,
    COMPILED_SCARCE,
    CompiledRounds,
    RoundArrays,
    twin_round,
)
from aragog_jax.scheduler._small import SMALL_ROUND_ITEMS, small_round
from aragog_jax.space import ConfigSpace

#: Default beam width (the paper's B).
DEFAULT_BEAM_WIDTH = 4
#: Largest round the brute-force policy accepts.
BRUTE_FORCE_MAX_ITEMS = 10


class PolicyName(enum.StrEnum):
    ARAGOG = "aragog"
    ARAGOG_PAPER = "aragog-paper"
    ARAGOG_SCARCE = "aragog-scarce"
    GREEDY = "greedy"
    PER_INPUT = "per_input"
    PER_WORKFLOW = "per_workflow"
    BRUTE_FORCE = "brute_force"


class Policy(Protocol):
    """What the scheduler asks a policy."""

    name: PolicyName

    def admit(self, space: ConfigSpace, mask: np.ndarray) -> np.ndarray:
        """Called once per request at ``add_request``: the configurations it may use.

        ``mask`` is the router's admitted mask restricted to configurations whose every
        model is served by some engine. Returns bool[C]; all False means "none".
        """
        ...

    def assign(self, arrays: RoundArrays) -> BeamResult:
        """Called once per round: the engine of every item (-1: not placed)."""
        ...


class BeamPolicy:
    """``aragog`` (and ``greedy`` with ``beam_width = 1``; ``aragog-paper`` with
    ``compiled=COMPILED_PAPER``, ``aragog-scarce`` with ``COMPILED_SCARCE``): the jitted
    beam search, or for a round of at most ``small_items`` ready items the same search on
    the host (``scheduler._small``: the same result without the compiled call's fixed
    cost; 0 turns it off)."""

    def __init__(
        self,
        beam_width: int = DEFAULT_BEAM_WIDTH,
        *,
        name: PolicyName = PolicyName.ARAGOG,
        compiled: CompiledRounds = COMPILED,
        small_items: int = SMALL_ROUND_ITEMS,
    ) -> None:
        if int(beam_width) < 1:
            raise SchedulerError(f"beam_width must be >= 1, got {beam_width}")
        self.name = name
        self.beam_width = int(beam_width)
        self.compiled = compiled
        self.small_items = int(small_items)

    def admit(self, space: ConfigSpace, mask: np.ndarray) -> np.ndarray:
        return mask

    def assign(self, arrays: RoundArrays) -> BeamResult:
        if arrays.num_items <= self.small_items:
            return small_round(arrays, self.beam_width, self.compiled.reserve)
        return self.compiled(arrays, self.beam_width)[1]


class PerInputPolicy(BeamPolicy):
    """``per_input``: the cheapest admitted configuration, fixed at arrival."""

    def __init__(self, *, compiled: CompiledRounds = COMPILED) -> None:
        super().__init__(1, name=PolicyName.PER_INPUT, compiled=compiled)

    def admit(self, space: ConfigSpace, mask: np.ndarray) -> np.ndarray:
        out = np.zeros_like(mask)
        hits = np.flatnonzero(mask)
        if hits.size:
            out[hits[0]] = True
        return out


class PerWorkflowPolicy(BeamPolicy):
    """``per_workflow``: one configuration per workflow, given at construction."""

    def __init__(
        self, configs: Mapping[str, int | Mapping[str, str]], *, compiled: CompiledRounds = COMPILED
    ) -> None:
        super().__init__(1, name=PolicyName.PER_WORKFLOW, compiled=compiled)
        self.configs = dict(configs)
        # id(space) -> (space, its admitted mask): the space is kept, so its id is not reused.
        self._admitted: dict[int, tuple[ConfigSpace, np.ndarray]] = {}

    def admit(self, space: ConfigSpace, mask: np.ndarray) -> np.ndarray:
        hit = self._admitted.get(id(space))
        if hit is not None and hit[0] is space:  # resolved once per space (a copy each time)
            return hit[1].copy()
        if space.workflow not in self.configs:
            raise SchedulerError(
                f"per_workflow policy has no configuration for workflow {space.workflow!r} "
                f"(given: {sorted(self.configs)})"
            )
        cfg = self.configs[space.workflow]
        if isinstance(cfg, Mapping):
            try:
                index = space.index_of(dict(cfg))
            except SpecError as exc:
                raise SchedulerError(
                    f"per_workflow configuration for {space.workflow!r}: {exc}"
                ) from exc
        else:
            index = int(cfg)
            if not 0 <= index < space.num_configs:
                raise SchedulerError(
                    f"per_workflow configuration for {space.workflow!r}: index {index} outside "
                    f"0..{space.num_configs - 1}"
                )
        out = np.zeros(space.num_configs, dtype=bool)
        out[index] = True
        self._admitted[id(space)] = (space, out.copy())
        return out


class BruteForcePolicy:
    """``brute_force``: exhaustive search (pure Python), for measuring optimality."""

    name = PolicyName.BRUTE_FORCE

    def __init__(self, max_items: int = BRUTE_FORCE_MAX_ITEMS) -> None:
        self.max_items = int(max_items)

    def admit(self, space: ConfigSpace, mask: np.ndarray) -> np.ndarray:
        return mask

    def assign(self, arrays: RoundArrays) -> BeamResult:
        if arrays.num_items > self.max_items:
            raise SchedulerError(
                f"brute_force policy handles at most {self.max_items} ready items per round (its search is "
                f"exhaustive), got {arrays.num_items}: replay this round with the aragog policy (beam search), "
                f"or use a round with at most {self.max_items} ready items"
            )
        return twin_round(arrays, None)[1]


def make_policy(
    name: str | PolicyName,
    *,
    beam_width: int = DEFAULT_BEAM_WIDTH,
    per_workflow: Mapping[str, int | Mapping[str, str]] | None = None,
    brute_force_max_items: int = BRUTE_FORCE_MAX_ITEMS,
) -> Policy:
    """Build a policy by name (see the module docstring for each rule).

    Args:
      name: one of :class:`PolicyName`'s values.
      beam_width: B of ``aragog``.
      per_workflow: the fixed configuration of every workflow (``per_workflow`` only).
      brute_force_max_items: largest round ``brute_force`` accepts.
    """
    if name == PolicyName.ARAGOG:
        return BeamPolicy(beam_width)
    if name == PolicyName.ARAGOG_PAPER:
        return BeamPolicy(beam_width, name=PolicyName.ARAGOG_PAPER, compiled=COMPILED_PAPER)
    if name == PolicyName.ARAGOG_SCARCE:
        return BeamPolicy(beam_width, name=PolicyName.ARAGOG_SCARCE, compiled=COMPILED_SCARCE)
    if name == PolicyName.GREEDY:
        return BeamPolicy(1, name=PolicyName.GREEDY)
    if name == PolicyName.PER_INPUT:
        return PerInputPolicy()
    if name == PolicyName.PER_WORKFLOW:
        if per_workflow is None:
            raise SchedulerError("per_workflow policy needs per_workflow={workflow: configuration}")
        return PerWorkflowPolicy(per_workflow)
    if name == PolicyName.BRUTE_FORCE:
        return BruteForcePolicy(brute_force_max_items)
    raise SchedulerError(f"unknown policy {name!r}; choose from {[p.value for p in PolicyName]}")
