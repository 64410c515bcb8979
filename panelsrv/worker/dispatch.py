"""Outbox jobs: send orders to their provider (never twice), forward cancels and refills.

Imports store.jobs and the provider client. A job is claimed with a lease; only the claimed
attempt may finish it, and it renews the lease right before its request goes out (once the
provider's concurrency and rate slot is its turn): a lease that ran out while the call waited
lets another worker take the job over, never both send it. Orders and refills go upstream with
their job's `Idempotency-Key` (random, stored with the job). After an attempt with an unknown
outcome (timeout, a lost answer, a worker killed mid-send) the job is resent with that key only
to a provider marked as honouring it (`provider set --honours-idempotency`; panelsrv does),
where it returns the same upstream order; for any other provider it is held for the operator
(store/migrations/008_held_for_operator.sql) and never resent on its own. Outcomes:
accepted -> upstream id recorded; "Not enough funds" / "active order with this link" (and a
provider refusing our own key) -> held and retried later, the operator told in the log;
unavailable -> retried with backoff; any other refusal -> the order is Canceled and refunded.
A customer's cancel that arrives while an attempt is in flight is forwarded upstream, unless
that attempt ends without reaching the provider and none before it may have: then the order is
canceled and refunded at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from panelsrv import metrics
from panelsrv.client.answers import ItemError, ProviderError, ProviderUnavailable, usable_id
from panelsrv.servicetypes import PACKAGE_TYPES
from panelsrv.store import jobs
from panelsrv.store.pool import UNAVAILABLE, Pool
from panelsrv.worker.providers import BeforeSend
from panelsrv.worker.registry import ProviderRegistry, ProviderSettings

log = logging.getLogger("panelsrv.worker")

BATCH = 32  # jobs claimed at once per kind
HOLD_SECONDS = 300.0
WAIT_FOR_DISPATCH_SECONDS = 30.0
MARGIN_SECONDS = 5.0  # for the database writes around a call
RECORD_RETRY_FIRST = 0.1  # seconds between attempts to record an upstream id, doubling
RECORD_RETRY_MAX = 5.0


class LeaseLost(Exception):
    """The attempt's lease ran out while its call waited and another attempt claimed the job."""


class CanceledMeanwhile(Exception):
    """The customer canceled while the call waited for its turn; nothing was sent."""


def lease_seconds(settings: ProviderSettings) -> float:
    """A claimed batch's lease: long enough for BATCH calls to one provider, queued behind its
    concurrency cap (each up to the timeout) and spaced by its rate limit. Each call renews its
    job's lease before it is sent, so a longer queue costs a takeover, never a second send."""
    rate_wait = BATCH / settings.rate if settings.rate else 0.0
    return settings.timeout * (BATCH / settings.max_concurrency + 1) + rate_wait + MARGIN_SECONDS


def backoff(attempt: int) -> float:
    return min(5.0 * 2 ** max(attempt - 1, 0), 300.0)


def order_fields(job: jobs.Job) -> dict[str, Any]:
    """The upstream `add` fields of an order, as a reseller's SDK would send them: its stored
    extras (the type's fields and the customer's own, such as targeting, unchanged), then
    ours, which no stored extra can replace."""
    fields: dict[str, Any] = dict(job.extras)
    fields["service"] = job.provider_service
    fields["link"] = job.link or None
    if job.service_type not in PACKAGE_TYPES:
        fields["quantity"] = job.quantity
    if job.runs > 1:
        fields["runs"] = job.runs
        fields["interval"] = job.interval
    return fields


class Dispatcher:
    def __init__(
        self,
        pool: Pool,
        registry: ProviderRegistry,
        settings: ProviderSettings,
        measured: metrics.Registry | None = None,
    ) -> None:
        self._pool = pool
        self._registry = registry
        self._lease = lease_seconds(settings)
        self._send_lease = settings.timeout + MARGIN_SECONDS
        measured = measured or metrics.Registry()
        self.held = measured.counter(
            "panelsrv_worker_orders_held_total",
            "Dispatch attempts a provider answered with a hold (our funds, an active link, "
            "our key), by provider",
            ("provider",),
        )
        self.held_for_operator = measured.counter(
            "panelsrv_worker_held_for_operator_total",
            "Orders and refills held for the operator after an attempt with an unknown outcome "
            "on a provider not known to honour Idempotency-Key, by provider",
            ("provider",),
        )

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

    def _holding(self, job: jobs.Job) -> BeforeSend:
        """Run right before the job's request goes out: keep the claim for the whole call, or
        raise LeaseLost (nothing is sent) when another attempt has claimed the job since."""

        async def renew() -> None:
            renewed = await jobs.renew(self._pool, job, self._send_lease)
            if renewed == "lost":
                raise LeaseLost
            if renewed == "canceled":
                raise CanceledMeanwhile

        return renew

    async def _dispatch(self, job: jobs.Job) -> None:
        if job.status != "Pending" or job.upstream_id is not None:
            await jobs.done(self._pool, job)
            return
        if job.cancel_requested and not job.ambiguous:
            # Canceled while an earlier attempt held the job; none of them reached the provider.
            await self._not_sent(job, 0.0, "canceled before dispatch")
            return
        provider = self._registry.get(job.provider_id)
        if provider is None:
            await self._not_sent(job, HOLD_SECONDS, "provider inactive or missing")
            return
        if job.ambiguous and not await self._may_resend(job, provider.name):
            return
        try:
            upstream_id = await provider.add(
                order_fields(job), job.upstream_key, self._holding(job)
            )
        except LeaseLost:
            log.info("order %s: claim lost while waiting for the provider; not sent", job.order_id)
        except CanceledMeanwhile:
            await self._not_sent(job, 0.0, "canceled while waiting for the provider")
        except ProviderUnavailable as exc:  # CircuitOpen included: certainly not sent
            seconds = exc.retry_after or backoff(job.attempt)
            if exc.maybe_sent:
                await jobs.retry(self._pool, job, seconds, exc.reason, True)
            else:
                await self._not_sent(job, seconds, exc.reason)
        except ProviderError as exc:
            if exc.hold:
                self.held.inc((provider.name,))
                log.warning(
                    "order %s held: provider %s says %r; retrying in %ds",
                    job.order_id,
                    provider.name,
                    exc.message,
                    HOLD_SECONDS,
                )
                await self._not_sent(job, HOLD_SECONDS, exc.message)
            elif await jobs.fail_dispatch(self._pool, job, exc.message) == "failed":
                log.info(
                    "order %s refused by the provider (%s): canceled and refunded",
                    job.order_id,
                    exc.message,
                )
        else:
            await self._recorded(job, jobs.sent, upstream_id)

    async def _recorded(
        self,
        job: jobs.Job,
        record: Callable[[Pool, jobs.Job, str], Awaitable[object]],
        upstream_id: str,
    ) -> None:
        """Record the id the provider just gave. The order exists upstream now: losing the id
        to a database blip would leave an attempt of unknown outcome (held for the operator at
        most providers), so it is retried until the database takes it or the worker stops."""
        delay = RECORD_RETRY_FIRST
        while True:
            try:
                await record(self._pool, job, upstream_id)
                return
            except UNAVAILABLE as exc:
                log.warning(
                    "order %s: upstream id %s not recorded yet (%s); retrying in %.1fs",
                    job.order_id, upstream_id, exc, delay,
                )  # fmt: skip
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECORD_RETRY_MAX)

    async def _may_resend(self, job: jobs.Job, provider: str) -> bool:
        """An earlier attempt may have reached the provider. Resend (True) only where the same
        Idempotency-Key returns the same upstream order; elsewhere a resend could buy it twice,
        so the job is held for the operator (False) and never sent again on its own."""
        what = f"order {job.order_id}" if job.refill_id is None else f"refill {job.refill_id}"
        if self._registry.honours_idempotency(job.provider_id):
            log.info(
                "%s: resending after an attempt with an unknown outcome, with the same "
                "Idempotency-Key (provider %s honours it)",
                what,
                provider,
            )
            return True
        self.held_for_operator.inc((provider,))
        log.warning(
            "%s: an attempt may have reached provider %s, which is not known to honour "
            "Idempotency-Key; held for the operator, never resent on its own (check upstream, "
            "then `panelsrv order resend --order %d` or `panelsrv order fail --order %d`)",
            what,
            provider,
            job.order_id,
            job.order_id,
        )
        await jobs.hold(self._pool, job, f"unknown outcome at {provider}: held for the operator")
        return False

    async def _not_sent(self, job: jobs.Job, seconds: float, error: str) -> None:
        """The attempt ended without reaching the provider: retry in `seconds`, or, when the
        customer canceled meanwhile, the order is canceled and refunded now (jobs.retry)."""
        if await jobs.retry(self._pool, job, seconds, error, False) == "canceled":
            log.info(
                "order %s canceled and refunded: the customer canceled while an attempt that "
                "never reached the provider was in flight (%s)",
                job.order_id,
                error,
            )

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
        if job.ambiguous and not await self._may_resend(job, provider.name):
            return
        try:
            refill_id = await provider.refill(job.upstream_id, job.upstream_key, self._holding(job))
        except LeaseLost:
            log.info("refill %s: claim lost while waiting for the provider", job.refill_id)
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
            await self._recorded(job, jobs.refill_sent, refill_id)


def _unusable(job: jobs.Job, consequence: str) -> None:
    log.warning(
        "order %s: its stored upstream id %r cannot be sent to the provider; %s",
        job.order_id,
        job.upstream_id,
        consequence,
    )
