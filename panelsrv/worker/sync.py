"""Status and refill sync: poll every provider in batches of 100, least recently checked first.

Imports store.jobs and the provider client. Each claimed batch is marked checked before the
call, so concurrent workers poll disjoint batches and a provider that fails is asked again only
after the poll interval. Reports are applied in one statement per batch through the forward-only
SQL functions, which refund Partial/Canceled/Refunded exactly once.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from panelsrv.store import jobs
from panelsrv.worker.providers import Provider
from panelsrv.worker.registry import Registry
from panelsrv.worker.upstream import MAX_BATCH, OrderStatus, ProviderFailure

log = logging.getLogger("panelsrv.worker")


class Syncer:
    def __init__(self, pool: asyncpg.Pool, registry: Registry, interval: float) -> None:
        self._pool = pool
        self._registry = registry
        self._interval = interval

    async def run_once(self) -> int:
        """Poll every provider concurrently until nothing is due; returns orders polled."""
        counts = await asyncio.gather(
            *(self._drain(row.id, client) for row, client in self._registry.items())
        )
        return sum(counts)

    async def _drain(self, provider_id: int, client: Provider) -> int:
        total = 0
        while True:
            polled = await self._orders(provider_id, client) + await self._refills(
                provider_id, client
            )
            total += polled
            if polled < MAX_BATCH:
                return total

    async def _orders(self, provider_id: int, client: Provider) -> int:
        batch = await jobs.orders_to_sync(self._pool, provider_id, MAX_BATCH, self._interval)
        if not batch:
            return 0
        local = {upstream: order_id for order_id, upstream in batch}
        try:
            answers = await client.multi_status(list(local))
        except ProviderFailure as exc:
            log.warning("provider %s: status poll failed (%s)", client.name, exc)
            return 0
        reports = [
            (local[upstream], answer.status, answer.start_count, answer.remains)
            for upstream, answer in answers.items()
            if isinstance(answer, OrderStatus) and upstream in local
        ]
        await jobs.apply_order_statuses(self._pool, reports)
        return len(batch)

    async def _refills(self, provider_id: int, client: Provider) -> int:
        batch = await jobs.refills_to_sync(self._pool, provider_id, MAX_BATCH, self._interval)
        if not batch:
            return 0
        local = {upstream: refill_id for refill_id, upstream in batch}
        try:
            answers = await client.refill_status(list(local))
        except ProviderFailure as exc:
            log.warning("provider %s: refill poll failed (%s)", client.name, exc)
            return 0
        reports = [
            (local[upstream], answer)
            for upstream, answer in answers.items()
            if isinstance(answer, str) and upstream in local
        ]
        await jobs.apply_refill_statuses(self._pool, reports)
        return len(batch)
