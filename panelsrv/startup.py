"""Opening the database for a long-running process, and waiting for it when it is away.

Imports store (db, pool), metrics and outages. `open_pool` migrates then pools; `when_reachable`
retries an opening until the database answers, with one log line when it is away and one when
it is back (through an `outages.Outage`); `counted_outage` makes such trackers count in /metrics.
Used by the API processes (server.py) and `panelsrv worker` (workerproc.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from panelsrv import metrics
from panelsrv.outages import Outage
from panelsrv.store import db
from panelsrv.store.pool import Pool

log = logging.getLogger("panelsrv.server")
T = TypeVar("T")

# Seconds between attempts to reach a database that was away at start: doubling up to a cap low
# enough that a process serves within about a second of the database being back.
RECONNECT_FIRST = 0.1
RECONNECT_MAX = 0.5


async def open_pool(url: str, size: int, outage: Outage) -> Pool:
    """Pending migrations first (every process does it when it connects: a no-op but for the
    first, under the migrations' advisory lock), then the pool, which reports to `outage`."""
    conn = await db.open_migrated(url)
    await conn.close()
    return await db.create_pool(url, size, outage)


async def when_reachable(what: str, outage: Outage, attempt: Callable[[], Awaitable[T]]) -> T:
    """`attempt()` until it succeeds, about every RECONNECT_MAX seconds at most, the database's
    absence reported to `outage` (one line when it begins, one when it ends). An error that is
    not the database being away is logged each time it changes, and retried as well: the
    operator may be fixing it."""
    delay = RECONNECT_FIRST
    last = ""
    while True:
        await asyncio.sleep(delay)
        delay = min(delay * 2, RECONNECT_MAX)
        try:
            result = await attempt()
        except Exception as exc:
            if db.unavailable(exc):
                outage.failed(str(exc))
            elif str(exc) != last:
                log.error("%s cannot start: %s; retrying", what, exc)
            last = str(exc)
            continue
        outage.recovered()
        return result


def counted_outage(registry: metrics.Registry) -> Callable[[str, str], Outage]:
    """Outage trackers whose faults, recoveries and downtime /metrics counts per dependency."""
    labels = ("dependency",)
    faults = registry.counter(
        "panelsrv_dependency_outages_total", "Outages begun, by dependency", labels
    )
    recoveries = registry.counter(
        "panelsrv_dependency_recoveries_total", "Outages ended, by dependency", labels
    )
    downtime = registry.counter(
        "panelsrv_dependency_outage_seconds_total", "Length of the ended outages", labels
    )

    def outage(name: str, meanwhile: str) -> Outage:
        def recovered(seconds: float) -> None:
            recoveries.inc((name,))
            downtime.inc((name,), seconds)

        return Outage(
            name, log, meanwhile=meanwhile, on_fault=lambda: faults.inc((name,)),
            on_recovery=recovered,
        )  # fmt: skip

    return outage
