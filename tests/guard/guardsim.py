"""Deterministic multi-process simulator for the guard: P coordinators share one MemoryStore.

Time is simulated: each process syncs every `interval` seconds at its own phase (zero round
trip), and attempts are (time, process, key) events. Used by test_guard_coord.py.
"""

from __future__ import annotations

from collections.abc import Iterable

from panelsrv.guard.blocklist import Blocklist
from panelsrv.guard.coord import Coordinator, Limiter
from panelsrv.guard.hub import MemoryStore


def coordinator(
    pid: str, rate: float = 100, burst: int = 100, interval: float = 0.1, **bl: object
) -> Coordinator:
    return Coordinator(
        pid,
        Limiter("ip", rate, burst, interval),
        Limiter("user", 50, 100, interval, int),
        Blocklist(**bl),  # type: ignore[arg-type]
        interval,
    )


class Cluster:
    def __init__(
        self,
        procs: int,
        rate: float = 100,
        burst: int = 100,
        interval: float = 0.1,
        phases: list[float] | None = None,
        **bl: object,
    ) -> None:
        self.store = MemoryStore()
        self.interval = interval
        self.nodes = [coordinator(f"p{i}", rate, burst, interval, **bl) for i in range(procs)]
        self.now = 0.0
        for node in self.nodes:  # every process registers, so each knows P
            self.sync(node)
        self.next = phases or [interval * (i + 1) / procs for i in range(procs)]

    def sync(self, node: Coordinator) -> None:
        node.apply(self.store.sync(node.collect(), self.now), self.now)

    def advance(self, t: float) -> None:
        while True:
            i = min(range(len(self.nodes)), key=self.next.__getitem__)
            if self.next[i] > t:
                break
            self.now = self.next[i]
            self.sync(self.nodes[i])
            self.next[i] += self.interval
        self.now = t

    def attempts(self, events: Iterable[tuple[float, int]], key: str = "k") -> list[float]:
        """Run (time, process) attempts on one key; the times that were admitted."""
        admitted = []
        for t, i in sorted(events):
            self.advance(t)
            if self.nodes[i].ip.take(key, t) == 0.0:
                admitted.append(t)
        return admitted


def max_in_window(times: list[float], width: float) -> int:
    """The most admissions in any half-open window of `width` seconds."""
    best = start = 0
    for end in range(len(times)):
        while times[end] - times[start] >= width:
            start += 1
        best = max(best, end - start + 1)
    return best
