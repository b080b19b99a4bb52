"""DSPy programs as workflows (the optional extra ``dspy``).

Trace a DSPy program once on example inputs: every predictor call becomes a stage, the
data flow between calls the DAG's edges, and token counts come from the trace
(:func:`trace_program`). :func:`export_workflow` writes it as a workflow TOML whose stages
run the program's own predictors on the engines the scheduler chooses
(:class:`ProgramStages`), so ``inspect``, ``synth``, ``label``, ``train``, ``simulate`` and
``serve --fleet`` use it like any workflow. CLI: ``python -m aragog_jax.dspy export``.

Importing this package imports DSPy (``import aragog_jax`` and ``aragog_jax.serve`` never
do). DSPy's model metadata and LiteLLM's model-cost map are fetched from GitHub on first
use unless ``LITELLM_LOCAL_MODEL_COST_MAP`` is true: it is set here, before DSPy loads,
so tracing and serving never reach the network (tests/dspy/test_offline.py checks it).
The stage LMs never use DSPy's response cache (``cache=False``): every call reaches the
engine the scheduler chose.
"""

import os

# Not a tunable read at import (STYLE 13): a setting this package forces on DSPy and
# LiteLLM, which read it lazily, so it must be in place before either loads.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

from aragog_jax.dspy._export import export_workflow  # noqa: E402
from aragog_jax.dspy._run import ProgramStages, load_program  # noqa: E402
from aragog_jax.dspy._trace import Binding, Source, TracedCall, TracedProgram, trace_program  # noqa: E402

__all__ = [
    "Binding",
    "ProgramStages",
    "Source",
    "TracedCall",
    "TracedProgram",
    "export_workflow",
    "load_program",
    "trace_program",
]
