"""Whether a dependency (the database, the limits backend) is away: one log line when an outage
begins, one when it ends with how long it lasted, and a count of each for /metrics.

Leaf module: standard library only; the clock is a parameter. The owner of the dependency's
connections reports `failed(reason)` on every failure and `recovered()` on the next success
after one (both cheap when nothing changes), so a flood of failing requests during an outage
writes one line, not one per request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


def _nothing(*_args: object) -> None:
    return None


class Outage:
    __slots__ = ("_clock", "_log", "_meanwhile", "_on_fault", "_on_recovery", "name", "since")

    def __init__(
        self,
        name: str,
        log: logging.Logger,
        *,
        meanwhile: str = "",
        on_fault: Callable[[], None] = _nothing,
        on_recovery: Callable[[float], None] = _nothing,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._log = log
        self._meanwhile = f"; {meanwhile}" if meanwhile else ""  # what happens until it is back
        self._on_fault = on_fault
        self._on_recovery = on_recovery
        self._clock = clock
        self.since: float | None = None  # when the current outage began; None while up

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, reason: str) -> None:
        if self.since is None:
            self.since = self._clock()
            self._log.warning("%s unavailable (%s)%s", self.name, reason, self._meanwhile)
            self._on_fault()

    def recovered(self) -> None:
        if self.since is not None:
            lasted = self._clock() - self.since
            self.since = None
            self._log.warning("%s available again after %.1f s", self.name, lasted)
            self._on_recovery(lasted)
