"""Serving: the asyncio HTTP server, engine clients, load monitor, emulated engine.

This package owns all async I/O (STYLE item 11). The scheduler is reached through one
entry point in the executor; engines through one client each.
"""

from aragog_jax.serving._breaker import BreakerState, CircuitBreaker
from aragog_jax.serving._client import ChatResult, ClientLimits, EngineClient, EngineRejected, OrcaReport, parse_orca
from aragog_jax.serving._emulated import EmulatedEngine, deterministic_text
from aragog_jax.serving._fake import FakeEngine
from aragog_jax.serving._loopback import LoopbackServer
from aragog_jax.serving._monitor import EngineLoad, EngineLoadState, LoadMonitor, parse_gauges

__all__ = [
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
    "LoadMonitor",
    "LoopbackServer",
    "OrcaReport",
    "deterministic_text",
    "parse_gauges",
    "parse_orca",
]
