"""Configuration spaces as dense tensors (DESIGN §3)."""

from aragog_jax.space._load import load_space
from aragog_jax.space._space import (
    DEFAULT_MAX_CONFIGS,
    ConfigSpace,
    PaddedSpaces,
    bucket_size,
    build_space,
    pad_spaces,
    stage_depth,
    topo_order,
)

__all__ = [
    "DEFAULT_MAX_CONFIGS",
    "ConfigSpace",
    "PaddedSpaces",
    "bucket_size",
    "build_space",
    "load_space",
    "pad_spaces",
    "stage_depth",
    "topo_order",
]
