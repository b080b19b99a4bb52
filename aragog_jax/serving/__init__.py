"""Serving: the asyncio HTTP server, engine clients, load monitor, emulated engine.

This package owns all async I/O (STYLE item 11). The scheduler is reached through one
entry point in the executor; engines through one client each.
"""

from aragog_jax.serving._breaker import BreakerState, CircuitBreaker
from aragog_jax.serving._client import (
    ChatResult,
    ClientLimits,
    EngineClient,
    EngineRejected,
    OrcaReport,
    parse_orca,
)
from aragog_jax.serving._emulated import EmulatedEngine, deterministic_text
from aragog_jax.serving._fake import FakeEngine
from aragog_jax.serving._fleet import DEFAULT_FLEET, FleetRuntime, load_runtime
from aragog_jax.serving._loopback import LoopbackServer
from aragog_jax.serving._monitor import EngineLoad, EngineLoadState, LoadMonitor, parse_gauges
from aragog_jax.serving._server import ServeOptions, Server, status_of

__all__ = [
    "DEFAULT_FLEET",
    "BreakerState",
    "ChatResult",
    "CircuitBreaker",
    "ClientLimits",
    "EmulatedEngine",
    "EngineClient",
    "EngineLoad",
    "EngineLoadState",
    "EngineRejected",
    "FakeEngine",
    "FleetRuntime",
    "LoadMonitor",
    "LoopbackServer",
    "OrcaReport",
    "ServeOptions",
    "Server",
    "deterministic_text",
    "load_runtime",
    "parse_gauges",
    "parse_orca",
    "status_of",
]
