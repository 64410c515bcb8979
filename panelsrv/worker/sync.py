"""Status and refill sync: poll every provider in batches of 100, least recently checked first.

Imports store.jobs, metrics and the provider client. Each claimed batch is marked checked
before the call, so concurrent workers poll disjoint batches and a provider that fails is asked
again only after the poll interval. Reports are applied in one statement per batch through the
forward-only SQL functions, which refund Partial and Canceled/Refunded/Error exactly once. What
cannot be used - a stored upstream id that cannot be sent back, an entry the provider did not
answer or answered with nothing usable (a `Partial` without `remains`, a number out of range) -
is logged and left as it was: the order is polled again, its neighbours in the batch proceed.
An answer (or entry) that cannot be understood is left likewise; the provider client counts it
and logs it, once a minute per provider, so it is not logged here again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from panelsrv import metrics
from panelsrv.client.answers import (
    MAX_BATCH,
    ItemError,
    ProviderFailure,
    UnreadableAnswer,
    usable_id,
)
from panelsrv.store import jobs
from panelsrv.store.pool import Pool
from panelsrv.worker.providers import Provider
from panelsrv.worker.registry import ProviderRegistry

log = logging.getLogger("panelsrv.worker")

SHOWN = 5  # unusable entries named in a batch's log line


class StatusPoller:
    def __init__(
        self,
        pool: Pool,
        registry: ProviderRegistry,
        interval: float,
        measured: metrics.Registry | None = None,
    ) -> None:
        self._pool = pool
        self._registry = registry
        self._interval = interval
        self.order_errors = (measured or metrics.Registry()).counter(
            "panelsrv_worker_order_errors_total",
            "Orders a provider reported as Error (refunded in full), by provider",
            ("provider",),
        )

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
        answers = await _poll(batch, client.multi_status, client.name, "order")
        if answers is None:
            return 0
        reports = [(i, a.status, a.start_count, a.remains) for i, a in answers.items()]
        results = await jobs.apply_order_statuses(self._pool, reports)
        for order_id, result in results.items():
            if result == "changed" and answers[order_id].status == "Error":
                self.order_errors.inc((client.name,))
                log.warning(
                    "order %s: provider %s reported Error; the order is final and its charge "
                    "refunded in full (`panelsrv order list --status Error`)",
                    order_id,
                    client.name,
                )
        return len(batch)

    async def _refills(self, provider_id: int, client: Provider) -> int:
        batch = await jobs.refills_to_sync(self._pool, provider_id, MAX_BATCH, self._interval)
        answers = await _poll(batch, client.refill_status, client.name, "refill")
        if answers is None:
            return 0
        await jobs.apply_refill_statuses(self._pool, list(answers.items()))
        return len(batch)


async def _poll(
    batch: list[tuple[int, str]],
    ask: Callable[[list[str]], Awaitable[Mapping[str, Any]]],
    provider: str,
    what: str,
) -> dict[int, Any] | None:
    """Ask the provider about a claimed batch ((local id, upstream id) pairs) in one call ->
    {local id: answer} for the ids it answered usably, the others logged; None if it failed."""
    local = {upstream: local_id for local_id, upstream in batch if usable_id(upstream)}
    unusable = [(i, f"stored upstream id {u!r} cannot be sent") for i, u in batch if u not in local]
    try:
        answered = await ask(list(local)) if local else {}
    except ProviderFailure as exc:
        if not isinstance(exc, UnreadableAnswer):  # the client logs those, once a minute
            log.warning("provider %s: poll failed (%s)", provider, exc)
        return None
    answers: dict[int, Any] = {}
    for upstream, answer in answered.items():
        if upstream not in local:
            continue
        if not isinstance(answer, ItemError):
            answers[local[upstream]] = answer
        elif not answer.unreadable:  # likewise
            unusable.append((local[upstream], answer.message))
    if unusable:
        log.warning(
            "provider %s: %d of %d %ss left as they were, polled again later: %s",
            provider,
            len(unusable),
            len(batch),
            what,
            "; ".join(f"{what} {i}: {message}" for i, message in unusable[:SHOWN]),
        )
    return answers
