"""Serving: the asyncio HTTP server, executor, load monitor, emulated engine.

The scheduler is reached through one entry point in the executor; engines through one
:class:`~aragog_jax.engines.client.EngineClient` each (the engine side of the I/O lives
in :mod:`aragog_jax.engines`).
"""

from aragog_jax.serving._breaker import BreakerState, CircuitBreaker
from aragog_jax.serving._emulated import EmulatedEngine, deterministic_text
from aragog_jax.serving._fake import FakeEngine
from aragog_jax.serving._fleet import DEFAULT_FLEET, FleetRuntime, load_runtime
from aragog_jax.serving._loopback import LoopbackServer
from aragog_jax.serving._monitor import EngineLoadState, EngineReading, LoadMonitor
from aragog_jax.serving._remote import (
    LEASE_S,
    ExchangeServer,
    HttpLink,
    Latencies,
    LocalLink,
    RemotePort,
    Reply,
    SchedulerHost,
    SchedulerLink,
    SchedulerUnavailable,
)
from aragog_jax.serving._server import ServeOptions, Server
from aragog_jax.serving._status import status_of

__all__ = [
    "DEFAULT_FLEET",
    "BreakerState",
    "CircuitBreaker",
    "EmulatedEngine",
    "EngineReading",
    "EngineLoadState",
    "ExchangeServer",
    "FakeEngine",
    "FleetRuntime",
    "HttpLink",
    "Latencies",
    "LoadMonitor",
    "LoopbackServer",
    "LEASE_S",
    "LocalLink",
    "RemotePort",
    "Reply",
    "SchedulerHost",
    "SchedulerLink",
    "SchedulerUnavailable",
    "ServeOptions",
    "Server",
    "deterministic_text",
    "load_runtime",
    "status_of",
]
