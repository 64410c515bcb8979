"""The background task of each worker process: reconcile the guard with its backend.

Imports asyncio, logging and `guard.coord`; no backend library (Redis lives in
`guard/shared.py`, the host-local hub in `guard/hub.py`, both satisfy `Backend`).

Every `interval` seconds: sweep idle state (about once a second), `collect` the coordinator's
deltas, send them in one backend call bounded by `timeout`, `apply` the reply. Without a backend
the task only sweeps, so memory still goes back down after a burst of addresses.

Invariants:
- Requests never wait for this task; at most one backend call is in flight.
- Any backend failure puts the coordinator in local mode (each process enforces every limit by
  itself) and is logged once, on the transition; `up` turns False (the /metrics gauge).
  Attempts continue with exponential backoff (interval * 2^n, at most `max_backoff`); the
  first success logs once (a warning after an outage, an info line at start), re-shares the
  limits and resets the backoff.
- An unexpected exception (a bug, not an outage) is logged with its traceback and handled like
  an outage: the server keeps answering with local limits instead of losing its sync task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

from panelsrv.guard.coord import Coordinator, SyncReply, SyncRequest
from panelsrv.outages import Outage

log = logging.getLogger("panelsrv.guard")
MEANWHILE = "enforcing limits per process until it returns"

SWEEP_EVERY = 1.0


class BackendUnavailable(Exception):
    """The backend could not be reached or answered garbage; the message says which and why."""


class Backend(Protocol):
    async def sync(self, req: SyncRequest) -> SyncReply: ...

    async def close(self) -> None: ...


class Syncer:
    __slots__ = (
        "_clock",
        "_failures",
        "_task",
        "backend",
        "coord",
        "interval",
        "max_backoff",
        "outage",
        "timeout",
        "up",
    )

    def __init__(
        self,
        coord: Coordinator,
        backend: Backend | None,
        interval: float = 0.1,
        timeout: float = 0.5,
        max_backoff: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        outage: Outage | None = None,
    ) -> None:
        self.coord = coord
        self.outage = outage or Outage("limits backend", log, meanwhile=MEANWHILE, clock=clock)
        self.backend = backend
        self.interval = interval
        self.timeout = timeout
        self.max_backoff = max_backoff
        self._clock = clock
        self.up = False
        self._failures = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="guard-sync")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.backend is not None:
            await self.backend.close()

    async def run(self) -> None:
        next_sweep = self._clock() + SWEEP_EVERY
        while True:
            started = self._clock()
            if started >= next_sweep:
                self.coord.sweep(started)
                next_sweep = started + SWEEP_EVERY
            if self.backend is None:
                await asyncio.sleep(SWEEP_EVERY)
                continue
            delay = await self.sync_once()
            await asyncio.sleep(max(0.0, delay - (self._clock() - started)))

    async def sync_once(self) -> float:
        """One exchange with the backend; returns the delay before the next one."""
        assert self.backend is not None
        req = self.coord.collect()
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for returns the exchange's result when
            # close()'s cancel lands just as the exchange completes, and this loop never ended
            async with asyncio.timeout(self.timeout):
                reply = await self.backend.sync(req)
        except (BackendUnavailable, TimeoutError) as exc:
            self._fail(exc, bug=False)
        except Exception as exc:
            self._fail(exc, bug=True)
        else:
            self.coord.apply(reply, self._clock())
            if not self.up:
                self.outage.recovered()
                log.info(
                    "limits shared through the backend (%d %s)",
                    reply.procs,
                    "process" if reply.procs == 1 else "processes",
                )
            self.up = True
            self._failures = 0
            return self.interval
        self._failures += 1
        return min(self.interval * 2 ** min(self._failures, 16), self.max_backoff)

    def _fail(self, exc: BaseException, *, bug: bool) -> None:
        self.coord.fail(self._clock())
        if bug and not self.outage.down:
            log.error("limits sync failed unexpectedly", exc_info=exc)
        self.outage.failed(str(exc) or type(exc).__name__)
        self.up = False
