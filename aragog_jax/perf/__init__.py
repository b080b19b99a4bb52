"""Engine profiles: derivation from model cards (``derive``) and measurement of a running
engine (``_measure``, the profiler behind ``python -m aragog_jax.profile``).

The performance model over profiles lives in :mod:`aragog_jax.engines.model`.
"""

from aragog_jax.perf._measure import ProfileSettings, measured_profile_to_toml, profile_engine
from aragog_jax.perf._model import profile_to_toml

__all__ = ["ProfileSettings", "measured_profile_to_toml", "profile_engine", "profile_to_toml"]
