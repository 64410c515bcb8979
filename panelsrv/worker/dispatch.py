"""Outbox jobs: send orders to their provider (never twice), forward cancels and refills.

Imports store.jobs and the provider client. A job is claimed with a lease; only the claimed
attempt may finish it. Orders go upstream with `Idempotency-Key: panelsrv-order-<id>`, so a
resend after an attempt with an unknown outcome (timeout, a worker killed mid-send) returns the
same upstream order from any provider that honours the key, as panelsrv does. Outcomes:
accepted -> upstream id recorded; "Not enough funds" / "active order with this link" (and a
provider refusing our own key) -> held and retried later, the operator told in the log;
unavailable -> retried with backoff; any other refusal -> the order is Canceled and refunded.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from panelsrv.servicetypes import PACKAGE_TYPES
from panelsrv.store import jobs
from panelsrv.store.pool import Pool
from panelsrv.worker.registry import ProviderSettings, Registry
from panelsrv.worker.upstream import (
    CircuitOpen,
    ItemError,
    ProviderError,
    ProviderUnavailable,
    usable_id,
)

log = logging.getLogger("panelsrv.worker")

# Jobs claimed at once per kind; the lease must outlast the slowest batch (every call waiting
# its turn behind the provider's concurrency limit, each up to the provider timeout).
BATCH = 32
HOLD_SECONDS = 300.0
WAIT_FOR_DISPATCH_SECONDS = 30.0


def lease_seconds(settings: ProviderSettings) -> float:
    return settings.timeout * (BATCH / settings.max_concurrency + 1) + 5.0


def backoff(attempt: int) -> float:
    return min(5.0 * 2 ** max(attempt - 1, 0), 300.0)


def order_fields(job: jobs.Job) -> dict[str, Any]:
    """The upstream `add` fields of an order, as a reseller's SDK would send them."""
    fields: dict[str, Any] = {"service": job.provider_service, "link": job.link or None}
    if job.service_type not in PACKAGE_TYPES:
        fields["quantity"] = job.quantity
    if job.runs > 1:
        fields["runs"] = job.runs
        fields["interval"] = job.interval
    fields.update(job.extras)
    return fields


class Dispatcher:
    def __init__(self, pool: Pool, registry: Registry, settings: ProviderSettings) -> None:
        self._pool = pool
        self._registry = registry
        self._lease = lease_seconds(settings)
        self.held = 0  # orders held back by a provider's hold answer (a metric for operators)

    async def run_once(self) -> int:
        """Claim and process one batch of each job kind; returns how many jobs were handled."""
        handled = 0
        for kind, handler in (
            ("dispatch", self._dispatch),
            ("cancel", self._cancel),
            ("refill", self._refill),
        ):
            claimed = await jobs.claim(self._pool, kind, BATCH, self._lease)
            await asyncio.gather(*(handler(job) for job in claimed))
            handled += len(claimed)
        return handled

    async def _dispatch(self, job: jobs.Job) -> None:
        if job.status != "Pending" or job.upstream_id is not None:
            await jobs.done(self._pool, job)
            return
        provider = self._registry.get(job.provider_id)
        if provider is None:
            await jobs.retry(self._pool, job, HOLD_SECONDS, "provider inactive or missing", False)
            return
        if job.ambiguous:
            log.warning(
                "order %s: resending after an attempt with an unknown outcome (same "
                "Idempotency-Key; a provider that ignores it could see it twice)",
                job.order_id,
            )
        try:
            upstream_id = await provider.add(
                order_fields(job), idempotency_key=f"panelsrv-order-{job.order_id}"
            )
        except CircuitOpen as exc:
            await jobs.retry(
                self._pool, job, exc.retry_after or backoff(job.attempt), str(exc), False
            )
        except ProviderUnavailable as exc:
            await jobs.retry(
                self._pool, job, exc.retry_after or backoff(job.attempt), exc.reason, exc.maybe_sent
            )
        except ProviderError as exc:
            if exc.hold:
                self.held += 1
                log.warning(
                    "order %s held: provider %s says %r; retrying in %ds",
                    job.order_id,
                    provider.name,
                    exc.message,
                    HOLD_SECONDS,
                )
                await jobs.retry(self._pool, job, HOLD_SECONDS, exc.message, False)
            else:
                log.info(
                    "order %s refused by the provider (%s): canceled and refunded",
                    job.order_id,
                    exc.message,
                )
                await jobs.fail_order(self._pool, job.order_id, exc.message)
        else:
            await jobs.sent(self._pool, job, upstream_id)

    async def _cancel(self, job: jobs.Job) -> None:
        if job.status not in ("Pending", "In progress"):
            await jobs.done(self._pool, job)
            return
        provider = self._registry.get(job.provider_id)
        if job.upstream_id is None or provider is None:
            # Still being dispatched: forward the cancel once the provider has the order.
            await jobs.retry(self._pool, job, WAIT_FOR_DISPATCH_SECONDS, "not sent yet", False)
            return
        if not usable_id(job.upstream_id):
            _unusable(job, "cancel not forwarded")
            await jobs.done(self._pool, job)
            return
        try:
            result = (await provider.cancel([job.upstream_id])).get(job.upstream_id)
        except ProviderUnavailable as exc:
            await jobs.retry(
                self._pool, job, exc.retry_after or backoff(job.attempt), exc.reason, False
            )
            return
        except ProviderError as exc:
            result = ItemError(exc.message)
        if isinstance(result, ItemError):
            log.info("order %s: provider refused the cancel (%s)", job.order_id, result.message)
        # Accepted: the status sync sees Canceled and refunds; refused: the order goes on.
        await jobs.done(self._pool, job)

    async def _refill(self, job: jobs.Job) -> None:
        provider = self._registry.get(job.provider_id)
        if job.upstream_id is None or provider is None:
            await jobs.refill_rejected(self._pool, job)
            return
        if not usable_id(job.upstream_id):
            _unusable(job, "refill rejected")
            await jobs.refill_rejected(self._pool, job)
            return
        try:
            upstream_id = await provider.refill(
                job.upstream_id, idempotency_key=f"panelsrv-refill-{job.refill_id}"
            )
        except ProviderUnavailable as exc:
            await jobs.retry(
                self._pool, job, exc.retry_after or backoff(job.attempt), exc.reason, exc.maybe_sent
            )
        except ProviderError as exc:
            if exc.hold:
                await jobs.retry(self._pool, job, HOLD_SECONDS, exc.message, False)
            else:
                await jobs.refill_rejected(self._pool, job)
        else:
            await jobs.refill_sent(self._pool, job, upstream_id)


def _unusable(job: jobs.Job, consequence: str) -> None:
    log.warning(
        "order %s: its stored upstream id %r cannot be sent to the provider; %s",
        job.order_id,
        job.upstream_id,
        consequence,
    )
