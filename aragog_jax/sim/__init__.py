"""Discrete-event fleet simulator driving the real scheduler on a virtual clock (DESIGN §7).

Engines are :class:`aragog_jax.engines.BatchingEngine` (continuous batching from an
engine profile), the same model the emulated engine drives in real time.

* :func:`arrival_times`, :func:`sample_inputs` — seeded workloads.
* :func:`load_setup` — fleet + workflow space + dataset (+ masks).
* :func:`simulate` — one policy at one rate; :func:`run_sweep` — policies × rates, the
  summary dict; :func:`run_dense` — sweeps of several (setup, policies) arms on one rate
  grid, dense around every policy's knee; :func:`write_summary` — ``summary.json`` and plots.
"""

from aragog_jax.sim._driver import RunConfig, RunResult, simulate
from aragog_jax.sim._experiment import (
    POLICIES,
    SweepConfig,
    auto_rates,
    build_masks,
    merge_sweeps,
    refine_rates,
    run_dense,
    run_sweep,
)
from aragog_jax.sim._setup import (
    Setup,
    constrained_variant,
    load_setup,
    per_workflow_config,
    selection_rows,
)
from aragog_jax.sim._summary import latency_at_rates, summarize_run, write_summary
from aragog_jax.sim._workload import arrival_times, sample_inputs

__all__ = [
    "POLICIES",
    "RunConfig",
    "RunResult",
    "Setup",
    "SweepConfig",
    "arrival_times",
    "auto_rates",
    "build_masks",
    "constrained_variant",
    "latency_at_rates",
    "load_setup",
    "merge_sweeps",
    "per_workflow_config",
    "refine_rates",
    "run_dense",
    "run_sweep",
    "sample_inputs",
    "selection_rows",
    "simulate",
    "summarize_run",
    "write_summary",
]
