"""Suite-wide settings: strict JAX numerics (STYLE item 7) and shared fixtures."""

from __future__ import annotations

import jax
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def catalog():
    from aragog_jax.spec import load_models

    return load_models()
