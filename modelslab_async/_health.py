"""
Per-route health: a circuit breaker with a half-open probe, a cooldown that honours
Retry-After, and latency figures for routing and snapshots.

The breaker's rule: *consecutive* failures open it (a success while closed resets the count,
so sporadic errors never take a healthy server out); while it is open nothing goes through;
once ``reset_timeout`` has passed exactly one call, the probe, goes through, and only the
probe's outcome closes it (or opens it again). A late answer from a call that started before
the breaker opened changes nothing. What counts as a failure is decided in ``_decisions.py``.
"""

from __future__ import annotations

import enum
import statistics
from collections import deque

from attrs import field, frozen, validators

from ._decisions import Health, Verdict

__all__ = ["BreakerState", "CircuitBreaker", "HealthPolicy", "RouteHealth"]


class BreakerState(enum.StrEnum):
    """A circuit breaker's state."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@frozen(kw_only=True)
class HealthPolicy:
    """
    When a server is taken out of rotation, and for how long.

    Attributes:
        failure_threshold: Consecutive failures (connection errors, 5xx, malformed answers)
            that open the breaker.
        reset_timeout: Seconds an open breaker waits before letting one probe call through.
        rate_limit_cooldown: Cooldown after a 429 that gave no Retry-After.
        busy_cooldown: Cooldown after a "busy" answer (processing with no id).
        max_cooldown: Cap on any cooldown, whatever the server asked.
        probe_interval: Seconds between background ``system_details`` probes of each
            server, or None for no background probes.
    """

    failure_threshold: int = field(default=5, validator=validators.ge(1))
    reset_timeout: float = field(default=15.0, validator=validators.gt(0))
    rate_limit_cooldown: float = field(default=5.0, validator=validators.ge(0))
    busy_cooldown: float = field(default=1.0, validator=validators.ge(0))
    max_cooldown: float = field(default=300.0, validator=validators.ge(0))
    probe_interval: float | None = field(
        default=None, validator=validators.optional(validators.gt(0))
    )


class CircuitBreaker:
    """Closed → open after N consecutive failures → half-open (one probe) → closed or open."""

    __slots__ = ("_failures", "_opened_at", "_policy", "probe_in_flight", "state")

    def __init__(self, policy: HealthPolicy) -> None:
        self._policy = policy
        self.state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self.probe_in_flight = False

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.state} failures={self._failures}>"

    @property
    def failures(self) -> int:
        """Consecutive failures counted while closed."""
        return self._failures

    def reopens_at(self) -> float | None:
        """When an open breaker lets its probe through, else None."""
        if self.state is BreakerState.OPEN:
            return self._opened_at + self._policy.reset_timeout
        return None

    def allows(self, now: float) -> bool:
        """Whether a new call may go through now (moving open → half-open when it is time)."""
        if self.state is BreakerState.OPEN and now >= self._opened_at + self._policy.reset_timeout:
            self.state = BreakerState.HALF_OPEN
            self.probe_in_flight = False
        if self.state is BreakerState.HALF_OPEN:
            return not self.probe_in_flight
        return self.state is BreakerState.CLOSED

    def claim_probe(self, now: float) -> bool:
        """Take the half-open probe if it is free: True when the caller is the probe."""
        if self.allows(now) and self.state is BreakerState.HALF_OPEN:
            self.probe_in_flight = True
            return True
        return False

    def probe_abandoned(self) -> None:
        """The probe ended without an outcome (cancelled): let another call probe."""
        if self.state is BreakerState.HALF_OPEN:
            self.probe_in_flight = False

    def record_success(self, *, probe: bool) -> bool:
        """A call got a usable answer; returns True when this closed the breaker."""
        if self.state is BreakerState.CLOSED:
            self._failures = 0
            return False
        if probe and self.state is BreakerState.HALF_OPEN:
            self.state = BreakerState.CLOSED
            self._failures = 0
            self.probe_in_flight = False
            return True
        return False  # a late answer from before the breaker opened

    def record_failure(self, now: float, *, probe: bool, fatal: bool = False) -> bool:
        """A call failed; returns True when this opened the breaker."""
        if self.state is BreakerState.CLOSED:
            self._failures += 1
            if fatal or self._failures >= self._policy.failure_threshold:
                self._open(now)
                return True
            return False
        if probe and self.state is BreakerState.HALF_OPEN:
            self._open(now)
            return True
        return False  # open already: a late failure neither extends nor counts

    def _open(self, now: float) -> None:
        self.state = BreakerState.OPEN
        self._opened_at = now
        self._failures = 0
        self.probe_in_flight = False


class RouteHealth:
    """Everything the pool knows of one route's health."""

    __slots__ = (
        "breaker",
        "cooldown_until",
        "failures",
        "fetches",
        "last_error",
        "latencies",
        "policy",
        "service_time",
        "submits",
        "successes",
    )

    def __init__(self, policy: HealthPolicy) -> None:
        self.policy = policy
        self.breaker = CircuitBreaker(policy)
        self.cooldown_until = 0.0
        self.last_error: str | None = None
        self.latencies: deque[float] = deque(maxlen=256)
        self.service_time: float | None = None  # moving average of whole-job durations
        self.submits = 0
        self.fetches = 0
        self.successes = 0
        self.failures = 0

    def available(self, now: float) -> bool:
        """Not cooling down and the breaker lets a new call through."""
        return now >= self.cooldown_until and self.breaker.allows(now)

    def recovers_at(self, now: float) -> float | None:
        """
        Earliest time this route may take work again; None while it waits for its probe's
        outcome (only that can bring it back).
        """
        breaker = self.breaker
        if breaker.state is BreakerState.HALF_OPEN and breaker.probe_in_flight:
            return None
        reopen = breaker.reopens_at()
        return max(self.cooldown_until, reopen if reopen is not None else now, now)

    def cool_down(self, now: float, seconds: float) -> None:
        """Keep the route out for ``seconds``; a later deadline wins, an earlier one does not."""
        seconds = min(max(seconds, 0.0), self.policy.max_cooldown)
        self.cooldown_until = max(self.cooldown_until, now + seconds)

    def record_job(self, duration: float) -> None:
        """A job finished on this route after ``duration`` seconds."""
        self.successes += 1
        self.latencies.append(duration)
        previous = self.service_time
        self.service_time = duration if previous is None else 0.8 * previous + 0.2 * duration

    def record(self, now: float, verdict: Verdict, text: str, *, probe: bool) -> bool:
        """
        Account one failed call (submit, fetch or probe) by its verdict; returns True when
        the breaker opened because of it.
        """
        if verdict.health is Health.NONE:
            return False
        self.last_error = text
        self.failures += 1
        if verdict.health is Health.COOLDOWN:
            self.cool_down(
                now,
                self.policy.rate_limit_cooldown if verdict.cooldown is None else verdict.cooldown,
            )
            return False
        return self.breaker.record_failure(now, probe=probe, fatal=verdict.health is Health.FATAL)

    def percentiles(self) -> tuple[float | None, float | None]:
        """Median and 95th percentile of recent job durations."""
        if not self.latencies:
            return None, None
        ordered = sorted(self.latencies)
        p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
        return statistics.median(ordered), p95
