"""Prometheus metrics of one server (its own registry, so several servers can coexist).

The counters and histograms that move per request or per round are plain numbers read
when ``/metrics`` is scraped (a custom collector, prometheus_client's way to expose
values it does not hold). Updated through ``prometheus_client.Counter`` and
``Histogram`` they cost 5-10 us each (a lock per value, label checks, a Python loop
over the buckets); five of them per request were 4% of the live server's CPU at 128
clients (``bench/request_profile.py``). The event loop is their only writer and the
scrape runs on it too, so they need no lock. Gauges are set at scrape time already.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

_FAST = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_CONFIGS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096, 65536)


class _Value:
    """One counter (one label set): a plain number."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class Counter(Collector):
    """A labelled counter exposed as ``<name>_total`` (same name, labels and output as
    ``prometheus_client.Counter`` without its ``_created`` series)."""

    def __init__(
        self, name: str, documentation: str, labelnames: list[str], registry: CollectorRegistry
    ):
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self._children: dict[tuple[str, ...], _Value] = {}
        registry.register(self)

    def labels(self, *values: str) -> _Value:
        found = self._children.get(values)
        if found is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: labels {self.labelnames}, got {values!r}")
            found = self._children[values] = _Value()
        return found

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self._children.items():
            family.add_metric(list(values), child.value)
        yield family


class Histogram(Collector):
    """An unlabelled histogram (``_bucket``, ``_count``, ``_sum`` like
    ``prometheus_client.Histogram``): a count per bucket, cumulated at scrape time."""

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: tuple[float, ...],
        registry: CollectorRegistry,
    ):
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(float(b) for b in buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # first bucket with value <= le
        self.sum += value

    def collect(self) -> Iterator[HistogramMetricFamily]:
        cumulative, running = [], 0
        for le, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            cumulative.append((floatToGoString(le), running))
        yield HistogramMetricFamily(
            self.name, self.documentation, buckets=cumulative, sum_value=self.sum
        )


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

    def render(self) -> bytes:
        return generate_latest(self.registry)
