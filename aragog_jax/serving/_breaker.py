"""Circuit breaker per engine: closed -> open -> half-open -> closed.

* **closed**: traffic flows. ``failure_threshold`` consecutive engine faults
  (connection error, 5xx, timeout, malformed reply) open it.
* **open**: the engine gets no traffic (zero slots in the load vector) for
  ``cooldown_s``; each re-opening doubles the cooldown up to ``max_cooldown_s``.
* **half-open**: after the cooldown, probes are allowed: the monitor's health check
  and at most ``half_open_probes`` real requests at a time. A success closes it (the
  engine recovered, cooldown resets); a failure opens it again.

Time is passed in (``now``), so the state machine is deterministic in tests.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class BreakerState(enum.IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass
class CircuitBreaker:
    failure_threshold: int = 1
    cooldown_s: float = 0.5
    max_cooldown_s: float = 10.0
    half_open_probes: int = 1

    def __post_init__(self) -> None:
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.opened_at = 0.0
        self.current_cooldown_s = self.cooldown_s
        self.probes_in_flight = 0
        self.num_opened = 0
        self.last_error = ""

    def _maybe_half_open(self, now: float) -> None:
        if self.state is BreakerState.OPEN and now - self.opened_at >= self.current_cooldown_s:
            self.state = BreakerState.HALF_OPEN
            self.probes_in_flight = 0

    def poll(self, now: float) -> BreakerState:
        """The state at ``now`` (moves open -> half-open when the cooldown is over)."""
        self._maybe_half_open(now)
        return self.state

    def slots(self, now: float) -> int | None:
        """Requests the breaker lets through now: None (no limit), or a count."""
        state = self.poll(now)
        if state is BreakerState.CLOSED:
            return None
        if state is BreakerState.OPEN:
            return 0
        return max(0, self.half_open_probes - self.probes_in_flight)

    def on_dispatch(self, now: float) -> None:
        if self.poll(now) is BreakerState.HALF_OPEN:
            self.probes_in_flight += 1

    def on_success(self, now: float) -> bool:
        """Record a success; returns True when this closed an open/half-open breaker."""
        self._maybe_half_open(now)
        recovered = self.state is not BreakerState.CLOSED
        if self.state is BreakerState.OPEN:
            # A request dispatched before the breaker opened came back fine: not proof
            # enough while open; wait for the half-open probe.
            return False
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.current_cooldown_s = self.cooldown_s
        self.probes_in_flight = 0
        return recovered

    def on_failure(self, now: float, error: str = "") -> bool:
        """Record an engine fault; returns True when this opened the breaker."""
        self._maybe_half_open(now)
        self.last_error = error
        self.consecutive_failures += 1
        if self.state is BreakerState.HALF_OPEN:
            self.current_cooldown_s = min(self.max_cooldown_s, self.current_cooldown_s * 2)
            self._open(now)
            return True
        if (
            self.state is BreakerState.CLOSED
            and self.consecutive_failures >= self.failure_threshold
        ):
            self._open(now)
            return True
        if self.state is BreakerState.OPEN:
            self.opened_at = now  # still failing: restart the cooldown
        return False

    def _open(self, now: float) -> None:
        self.state = BreakerState.OPEN
        self.opened_at = now
        self.probes_in_flight = 0
        self.num_opened += 1
