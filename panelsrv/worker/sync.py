"""Status and refill sync: poll every provider in batches of 100, least recently checked first.

Imports store.jobs and the provider client. Each claimed batch is marked checked before the
call, so concurrent workers poll disjoint batches and a provider that fails is asked again only
after the poll interval. Reports are applied in one statement per batch through the forward-only
SQL functions, which refund Partial/Canceled/Refunded exactly once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from panelsrv.store import jobs
from panelsrv.store.pool import Pool
from panelsrv.worker.providers import Provider
from panelsrv.worker.registry import Registry
from panelsrv.worker.upstream import MAX_BATCH, OrderStatus, ProviderFailure

log = logging.getLogger("panelsrv.worker")


class Syncer:
    def __init__(self, pool: Pool, registry: Registry, interval: float) -> None:
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
        return await self._poll(
            await jobs.orders_to_sync(self._pool, provider_id, MAX_BATCH, self._interval),
            client.multi_status,
            lambda order_id, answer: (
                (order_id, answer.status, answer.start_count, answer.remains)
                if isinstance(answer, OrderStatus)
                else None
            ),
            jobs.apply_order_statuses,
            client.name,
        )

    async def _refills(self, provider_id: int, client: Provider) -> int:
        return await self._poll(
            await jobs.refills_to_sync(self._pool, provider_id, MAX_BATCH, self._interval),
            client.refill_status,
            lambda refill_id, answer: (refill_id, answer) if isinstance(answer, str) else None,
            jobs.apply_refill_statuses,
            client.name,
        )

    async def _poll(
        self,
        batch: list[tuple[int, str]],
        ask: Callable[[list[str]], Awaitable[Mapping[str, Any]]],
        report: Callable[[int, Any], Any],
        apply: Callable[[Pool, list[Any]], Awaitable[object]],
        provider: str,
    ) -> int:
        """Ask the provider about a claimed batch ((local id, upstream id) pairs) in one call and
        apply the answers; an id it could not answer (ItemError) is left as it was."""
        if not batch:
            return 0
        local = {upstream: local_id for local_id, upstream in batch}
        try:
            answers = await ask(list(local))
        except ProviderFailure as exc:
            log.warning("provider %s: poll failed (%s)", provider, exc)
            return 0
        reports = [
            report(local[upstream], answer)
            for upstream, answer in answers.items()
            if upstream in local
        ]
        await apply(self._pool, [r for r in reports if r is not None])
        return len(batch)
