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


@pytest.fixture(scope="module")
def ray_cluster():
    """A real local Ray cluster (2 CPUs, loopback) for one test module, this process its driver."""
    import warnings

    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    with warnings.catch_warnings():
        # Ray 2.52 starts its processes with /dev/null files it never closes (ResourceWarning
        # as they are collected, inside init) and warns about a future GPU env var default;
        # JAX warns on the fork of each (subprocess with preexec_fn), which execs at once.
        warnings.simplefilter("ignore", ResourceWarning)
        warnings.filterwarnings(
            "ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning
        )
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"ray\.")
        ray.init(
            num_cpus=2,
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
        # Ray Data 2.52 sets its own deprecated fields when it builds its (cached) context.
        warnings.simplefilter("ignore", DeprecationWarning)
        ray.data.DataContext.get_current()
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            ray.shutdown()
