"""The server's lock-free counters and histograms expose exactly what
prometheus_client's own Counter and Histogram would (less the ``_created`` series)."""

from __future__ import annotations

import prometheus_client as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aragog_jax.serving import _metrics


@settings(max_examples=40, deadline=None)
@given(
    seconds=st.lists(
        st.one_of(st.floats(0.0, 3.0, allow_nan=False), st.sampled_from(_metrics._FAST)),
        max_size=30,
    ),  # the bounds themselves too: a value equal to a bound is in that bucket (le)
    configs=st.lists(
        st.one_of(st.integers(0, 100_000), st.sampled_from(_metrics._CONFIGS)), max_size=30
    ),
    statuses=st.lists(st.sampled_from(["ok", "failed", "expired"]), max_size=10),
)
def test_exposition_matches_prometheus_client(seconds, configs, statuses):
    ref = pc.CollectorRegistry()
    ref_runs = pc.Counter(
        "aragog_requests",
        "Workflow runs by workflow and final status",
        ["workflow", "status"],
        registry=ref,
    )
    ref_s = pc.Histogram(
        "aragog_stage_queue_seconds",
        "Stage ready -> dispatched",
        buckets=_metrics._FAST,
        registry=ref,
    )
    ref_n = pc.Histogram(
        "aragog_admitted_configurations",
        "Configurations admitted per request",
        buckets=_metrics._CONFIGS,
        registry=ref,
    )
    ours = _metrics.ServerMetrics()
    for v in seconds:
        ref_s.observe(v)
        ours.queue_s.observe(v)
    for v in configs:
        ref_n.observe(v)
        ours.admitted.observe(v)
    for status in statuses:
        ref_runs.labels("wf", status).inc()
        ours.requests.labels("wf", status).inc()
    want = [
        line for line in pc.generate_latest(ref).decode().splitlines() if "_created" not in line
    ]
    got = set(ours.render().decode().splitlines())
    assert [line for line in want if line not in got] == []


def test_a_counter_refuses_the_wrong_number_of_labels():
    m = _metrics.ServerMetrics()
    with pytest.raises(ValueError, match="aragog_requests: labels"):
        m.requests.labels("only-one")
