"""Prometheus metrics of one server (its own registry, so several servers can coexist)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_FAST = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_CONFIGS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096, 65536)


class ServerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "aragog_requests",
            "Workflow runs by workflow and final status",
            ["workflow", "status"],
            registry=r,
        )
        self.rejected = Counter(
            "aragog_requests_rejected",
            "Requests answered with an error before a run was admitted, by HTTP status and error type",
            ["status", "reason"],
            registry=r,
        )
        self.dispatches = Counter(
            "aragog_stage_dispatches",
            "Stage dispatches by engine and outcome",
            ["engine", "model", "outcome"],
            registry=r,
        )
        self.failovers = Counter(
            "aragog_failovers", "Stages rescheduled after an engine fault", ["workflow"], registry=r
        )
        self.routing_s = Histogram(
            "aragog_routing_seconds", "Routing time per request", buckets=_FAST, registry=r
        )
        self.scheduling_s = Histogram(
            "aragog_scheduling_seconds", "Scheduling time per round", buckets=_FAST, registry=r
        )
        self.queue_s = Histogram(
            "aragog_stage_queue_seconds", "Stage ready -> dispatched", buckets=_FAST, registry=r
        )
        self.admitted = Histogram(
            "aragog_admitted_configurations",
            "Configurations admitted per request",
            buckets=_CONFIGS,
            registry=r,
        )
        self.meta_queue = Gauge(
            "aragog_meta_queue_depth", "Ready stages waiting for an engine", registry=r
        )
        self.in_flight = Gauge(
            "aragog_requests_in_flight", "Accepted requests not yet finished", registry=r
        )
        self.engine_running = Gauge(
            "aragog_engine_running",
            "Engine running sequences (as monitored)",
            ["engine"],
            registry=r,
        )
        self.engine_waiting = Gauge(
            "aragog_engine_waiting",
            "Engine waiting sequences (as monitored)",
            ["engine"],
            registry=r,
        )
        self.engine_in_flight = Gauge(
            "aragog_engine_in_flight",
            "This server's requests on the engine",
            ["engine"],
            registry=r,
        )
        self.engine_kv = Gauge(
            "aragog_engine_kv_usage",
            "Engine KV-cache usage (0-1, -1 unknown)",
            ["engine"],
            registry=r,
        )
        self.engine_healthy = Gauge(
            "aragog_engine_healthy",
            "1 when the engine's circuit breaker is not open",
            ["engine"],
            registry=r,
        )

        self._children: dict[tuple, object] = {}

    def child(self, metric: Counter, *values: str) -> Counter:
        """``metric.labels(*values)``, looked up once per label set (the hot path counts
        every request and dispatch; ``labels`` validates and hashes its arguments each call)."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def render(self) -> bytes:
        return generate_latest(self.registry)
