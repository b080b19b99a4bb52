"""Fitting a measured profile: throughput in a window, decode iteration times, saturation.

Pure functions over the profiler's timed requests and per-level results (see
:mod:`aragog_jax.perf._measure` for the sweep that produces them).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import numpy as np

from aragog_jax.errors import AragogError


@dataclass
class Timed:
    """One streamed request: monotonic start, first token, end; token counts."""

    start: float
    first: float
    end: float
    prompt_tokens: int
    completion_tokens: int
    chunk_times: list[float] = field(default_factory=list, repr=False)

    @property
    def ttft(self) -> float:
        return self.first - self.start

    @property
    def incremental(self) -> bool:
        """Did tokens arrive spread over time (a real stream) or in one burst at the end?"""
        return (self.end - self.first) > 0.2 * (
            self.end - self.start
        ) and self.completion_tokens > 1

    @property
    def itl(self) -> float:
        """Mean seconds between output tokens (0 when the stream arrived in one burst)."""
        if not self.incremental:
            return 0.0
        return (self.end - self.first) / (self.completion_tokens - 1)


@dataclass
class LevelResult:
    concurrency: int
    num_requests: int
    window_s: float
    tokens_per_s: float
    ttft_p50_s: float
    itl_p50_s: float
    latency_p50_s: float
    mean_prompt_tokens: float
    mean_completion_tokens: float
    streamed_share: float = (
        0.0  # share of requests whose tokens arrived spread out (not in one burst)
    )
    max_running: float = -1.0  # engine gauge (vLLM/SGLang) seen during the level; -1: not exported
    max_waiting: float = -1.0

    @property
    def queued(self) -> bool:
        """The engine's waiting gauge went above zero: it queued requests instead of batching them.

        Positive evidence only: a running gauge below n is no proof (vLLM's API server
        answers ``/metrics`` between bursts, so polls tend to land when little runs).
        """
        return self.max_waiting > 0


def window_tokens(reqs: list[Timed], t0: float, t1: float) -> float:
    """Generated tokens inside ``[t0, t1]``, each request's spread over its decode span."""
    total = 0.0
    for r in reqs:
        a, b = (r.first, r.end) if r.incremental else (r.start, r.end)
        if b <= a:
            total += r.completion_tokens if t0 <= b <= t1 else 0.0
            continue
        overlap = max(0.0, min(b, t1) - max(a, t0))
        total += r.completion_tokens * overlap / (b - a)
    return total


def median(xs: list[float]) -> float:
    """The median, 0 for no values."""
    return float(statistics.median(xs)) if xs else 0.0


def iteration_points(
    levels: list[LevelResult], probe_latency_s: float, prefill_rate: float
) -> list[tuple[int, float]]:
    """(n, decode iteration seconds at batch n) from each level's median latency.

    A level's request (prompt P, G output tokens) takes ``L(n) = overhead + P / rate + G
    iterations + the prefills of the n - 1 other requests interleaved with it``, and the
    prefill probe (same prompt, one token) took ``overhead + P / rate + 1 iteration``:
    ``t(n) = (L(n) - L_probe - (n - 1) P / rate) / (G - 1)``. Measuring from latency,
    not from closed-loop throughput, keeps the fixed per-request overhead (HTTP,
    tokenisation; outside the engine loop) out of the iteration time. Levels where the
    engine queued (its waiting gauge rose above zero) or past the first level at peak
    throughput (when the engine exports no gauge) are left out.
    """
    best = max(lv.tokens_per_s for lv in levels)
    pts = []
    for lv in levels:
        if lv.queued or lv.mean_completion_tokens < 2:
            continue
        t = (
            lv.latency_p50_s
            - probe_latency_s
            - (lv.concurrency - 1) * lv.mean_prompt_tokens / prefill_rate
        )
        pts.append((lv.concurrency, max(t / (lv.mean_completion_tokens - 1), 1e-6)))
        if lv.max_running < 0 and lv.tokens_per_s >= best * 0.999:
            break  # no gauge: the first level at peak ends the batching regime
    return pts


def fit_decode(points: list[tuple[int, float]]) -> tuple[float, float]:
    """(decode_base_s, decode_per_seq_s) >= 0: least squares ``t(n) = base + per_seq * n``."""
    if not points:
        raise AragogError("no concurrency level produced tokens; is the engine generating?")
    if len(points) == 1:
        return points[0][1], 0.0
    x = np.array([p[0] for p in points], dtype=np.float64)
    y = np.array([p[1] for p in points], dtype=np.float64)
    slope, intercept = np.polyfit(x, y, 1)
    if slope < 0:  # iteration time cannot fall with the batch: constant model
        return float(y.mean()), 0.0
    if intercept < 0:  # through the origin
        return 0.0, float((x * y).sum() / (x * x).sum())
    return float(intercept), float(slope)


def saturation_batch(levels: list[LevelResult], margin: float) -> int:
    """Smallest level within ``margin`` of the best throughput, capped by the most sequences
    the engine was seen running (its batch limit, when it exports the gauge)."""
    peak = max(lv.tokens_per_s for lv in levels)
    sat = next(lv.concurrency for lv in levels if lv.tokens_per_s >= (1.0 - margin) * peak)
    if not any(lv.queued for lv in levels):
        return sat
    # The engine queued somewhere: its batch limit is at least every level that did not
    # queue and at least what it was seen running.
    limit = max(
        [lv.concurrency for lv in levels if not lv.queued]
        + [int(max(lv.max_running for lv in levels))]
    )
    return max(1, min(sat, limit))


def sig(x: float, digits: int = 6) -> float:
    """Round to significant digits so profile files are stable and readable."""
    return float(f"{x:.{digits}g}")
