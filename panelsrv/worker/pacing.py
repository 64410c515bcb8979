"""How fast, and whether, a provider is called: a reserving token bucket and a circuit breaker.

Pure: imports nothing from panelsrv, does no I/O and never reads a clock (times are passed in),
so both are tested by feeding times. `providers.py` holds one of each per provider.
"""

from __future__ import annotations

import enum


class TokenBucket:
    """GCRA with reservations: `reserve(now)` takes a slot and says how long to wait for it.

    Waiters are spaced `1/rate` apart after a burst of `burst`, in call order, so a queue of
    callers never exceeds the rate however they interleave.
    """

    __slots__ = ("_interval", "_tat", "_tolerance")

    def __init__(self, rate: float, burst: int = 1):
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self._interval = 1.0 / rate
        self._tolerance = (burst - 1) * self._interval
        self._tat = float("-inf")

    def reserve(self, now: float) -> float:
        tat = max(self._tat, now)
        self._tat = tat + self._interval
        return max(0.0, tat - self._tolerance - now)


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    """Open after `threshold` consecutive unavailable answers; after `cooldown` seconds let one
    probe through (half-open): its success closes the circuit, its failure reopens it."""

    __slots__ = ("cooldown", "failures", "opened_at", "opens", "probing", "state", "threshold")

    def __init__(self, threshold: int = 5, cooldown: float = 30.0):
        self.threshold = threshold
        self.cooldown = cooldown
        self.state = BreakerState.CLOSED
        self.failures = 0  # consecutive
        self.opened_at = 0.0
        self.opens = 0  # how many times it opened, for metrics
        self.probing = False

    def admit(self, now: float) -> float | None:
        """None when a call may go now, else the seconds until one may."""
        if self.state is BreakerState.CLOSED:
            return None
        remaining = self.opened_at + self.cooldown - now
        if self.state is BreakerState.OPEN and remaining <= 0:
            self.state = BreakerState.HALF_OPEN
        if self.state is BreakerState.HALF_OPEN and not self.probing:
            self.probing = True
            return None
        return max(remaining, 0.0) or self.cooldown

    def succeeded(self) -> None:
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.probing = False

    def failed(self, now: float) -> bool:
        """Record an unavailable answer; True when this one opened the circuit."""
        self.failures += 1
        reopen = self.state is BreakerState.HALF_OPEN
        if reopen or (self.state is BreakerState.CLOSED and self.failures >= self.threshold):
            self.state = BreakerState.OPEN
            self.opened_at = now
            self.opens += 1
            self.probing = False
            return True
        return False

    def abandoned(self) -> None:
        """A call ended with no verdict (cancelled): free the half-open probe slot."""
        self.probing = False
