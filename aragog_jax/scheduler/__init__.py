"""Stage scheduler (DESIGN §5): meta-queue state machine, load vector, policies.

The serving front door and the simulator drive one :class:`Scheduler`::

    sched = Scheduler(engines, policy="aragog", beam_width=4)
    sched.add_request(rid, space, mask)          # at arrival, after routing
    plan = sched.schedule(load_vector)           # whenever an engine may have free slots
    for a in plan.assignments: dispatch(a)       # a.request_id, a.stage_name, a.engine
    sched.on_stage_finished(rid, stage)          # or on_stage_failed(rid, stage, engine)

See :mod:`aragog_jax.scheduler._scheduler` for the full call protocol.
"""

from aragog_jax.engines.model import KV_FULL
from aragog_jax.scheduler._load import (
    UTILITY_SCALE,
    EngineInfo,
    EngineLoad,
    LoadVector,
)
from aragog_jax.scheduler._plan import Assignment, Plan, RoundRecord, Skipped, round_flexibility
from aragog_jax.scheduler._policy import (
    BRUTE_FORCE_MAX_ITEMS,
    DEFAULT_BEAM_WIDTH,
    BeamPolicy,
    BruteForcePolicy,
    PerInputPolicy,
    PerWorkflowPolicy,
    Policy,
    PolicyName,
    make_policy,
)
from aragog_jax.scheduler._random import random_replay
from aragog_jax.scheduler._replay import replay_round
from aragog_jax.scheduler._round import (
    COMPILED,
    COMPILED_PAPER,
    COMPILED_SCARCE,
    SCARCITY_DEFAULT,
    CompiledRounds,
    RoundArrays,
    pad_round,
)
from aragog_jax.scheduler._scheduler import Scheduler
from aragog_jax.scheduler._small import SMALL_ROUND_ITEMS, small_round

__all__ = [
    "BRUTE_FORCE_MAX_ITEMS",
    "COMPILED",
    "COMPILED_PAPER",
    "COMPILED_SCARCE",
    "DEFAULT_BEAM_WIDTH",
    "KV_FULL",
    "SCARCITY_DEFAULT",
    "SMALL_ROUND_ITEMS",
    "UTILITY_SCALE",
    "Assignment",
    "BeamPolicy",
    "BruteForcePolicy",
    "CompiledRounds",
    "EngineInfo",
    "EngineLoad",
    "LoadVector",
    "PerInputPolicy",
    "PerWorkflowPolicy",
    "Plan",
    "Policy",
    "PolicyName",
    "RoundArrays",
    "RoundRecord",
    "Scheduler",
    "Skipped",
    "make_policy",
    "pad_round",
    "random_replay",
    "replay_round",
    "round_flexibility",
    "small_round",
]
