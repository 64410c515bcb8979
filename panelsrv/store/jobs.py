"""The worker's statements: claim outbox jobs and orders to poll, record what providers said.

Imports asyncpg. Claims use FOR UPDATE SKIP LOCKED plus an expiring lease, so any number of
workers on any number of hosts share the work without sending anything twice; a job is only
finished, rescheduled or renewed by the holder of the attempt that claimed it (`attempts` is
the fence). An attempt's outcome locks the order before its job (005_worker_fences.sql), as a
customer's cancel does. Status reports of a whole batch are applied in one statement (one
transaction), rows locked in ascending id order, through the forward-only SQL functions of
003_worker.sql and 005; a report the database refuses is isolated: the others still apply.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from panelsrv.store.pool import Pool

log = logging.getLogger("panelsrv.worker")

# $1 kind, $2 batch, $3 lease seconds -> claimed jobs with the order (and refill) they concern.
# An expired lease means a worker died holding it: that attempt's outcome is unknown if it had
# begun sending (RENEW marks that), else it certainly sent nothing. Held jobs wait at infinity.
CLAIM = """
WITH c AS (
    SELECT x.id FROM outbox x
     WHERE x.kind = $1 AND x.run_after <= now()
       AND (x.lease_until IS NULL OR x.lease_until < now())
     ORDER BY x.run_after, x.id
     LIMIT $2
       FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE outbox x
       SET lease_until = now() + make_interval(secs => $3), attempts = x.attempts + 1,
           ambiguous = x.ambiguous OR (x.lease_until IS NOT NULL AND x.sending),
           sending = false
      FROM c WHERE x.id = c.id
 RETURNING x.id, x.attempts, x.ambiguous, x.order_id, x.refill_id, x.upstream_key
)
SELECT cl.id, cl.attempts, cl.ambiguous, cl.refill_id, o.id AS order_id, o.status,
       o.provider_id, o.upstream_id, o.link, o.quantity, o.runs, o.run_interval, o.extras,
       o.cancel_requested, s.type, s.provider_service, cl.upstream_key
  FROM claimed cl JOIN orders o ON o.id = cl.order_id JOIN services s ON s.id = o.service_id
"""
# $1 job, $2 attempt, $3 order, $4 upstream id. Recorded whichever attempt got it (the order
# exists upstream); the job is finished by its holder, or by any attempt once it is held for the
# operator (a late answer settles what the operator was to check). The EXISTS makes the order's
# lock come first (an unreferenced CTE would run after the DELETE).
SENT = """
WITH o AS (
    UPDATE orders SET upstream_id = coalesce(upstream_id, $4), updated_at = now()
     WHERE id = $3 RETURNING id
)
DELETE FROM outbox
 WHERE id = $1 AND (attempts = $2 OR held_at IS NOT NULL) AND EXISTS (SELECT 1 FROM o)
"""
# $1 job, $2 attempt, $3 seconds, $4 error, $5 the attempt may have reached the provider
RETRY = "SELECT outbox_retry($1, $2, $3, $4, $5)"
# $1 job, $2 attempt, $3 seconds from now -> 'renewed': the holder keeps its claim for the call
# it starts, and the job is marked as sending (from here on, the attempt's outcome may be
# unknown); 'canceled': the customer canceled a dispatch that no attempt may have sent yet, so
# none is sent now (outbox_retry then cancels and refunds); 'lost': another attempt has it.
RENEW = """
WITH j AS (
    SELECT x.id, x.kind = 'dispatch' AND NOT x.ambiguous AND o.cancel_requested
                 AND o.upstream_id IS NULL AS canceled
      FROM outbox x JOIN orders o ON o.id = x.order_id
     WHERE x.id = $1 AND x.attempts = $2
), renewed AS (
    UPDATE outbox x
       SET lease_until = greatest(x.lease_until, now() + make_interval(secs => $3)),
           sending = true
      FROM j WHERE x.id = j.id AND NOT j.canceled
 RETURNING x.id
)
SELECT CASE WHEN EXISTS (SELECT 1 FROM renewed) THEN 'renewed'
            WHEN EXISTS (SELECT 1 FROM j) THEN 'canceled' ELSE 'lost' END
"""
# $1 job, $2 attempt, $3 why: an attempt of unknown outcome for a provider that does not honour
# Idempotency-Key; nothing sends it again until the operator says (008_held_for_operator.sql).
HOLD = """
UPDATE outbox SET lease_until = NULL, run_after = 'infinity', held_at = now(),
                  last_error = left($3, 500)
 WHERE id = $1 AND attempts = $2
"""
DONE = "DELETE FROM outbox WHERE id = $1 AND attempts = $2"
FAIL_DISPATCH = "SELECT fail_dispatch($1, $2, $3)"
REFILL_SENT = """
WITH r AS (
    UPDATE refills SET upstream_id = $3, updated_at = now() WHERE id = $4 RETURNING id
)
DELETE FROM outbox WHERE id = $1 AND attempts = $2
"""
REFILL_REJECTED = """
WITH r AS (SELECT apply_refill_status($3, 'Rejected'))
DELETE FROM outbox WHERE id = $1 AND attempts = $2 AND EXISTS (SELECT 1 FROM r)
"""

# $1 provider, $2 batch, $3 poll interval seconds -> (order id, upstream id), least recently
# checked first, each marked checked now (so the next claim takes the next ones).
CLAIM_ORDERS_TO_SYNC = """
WITH c AS (
    SELECT id FROM orders
     WHERE provider_id = $1 AND status IN ('Pending', 'In progress') AND upstream_id IS NOT NULL
       AND (checked_at IS NULL OR checked_at < now() - make_interval(secs => $3))
     ORDER BY checked_at NULLS FIRST, id
     LIMIT $2
       FOR UPDATE SKIP LOCKED
)
UPDATE orders o SET checked_at = now() FROM c WHERE o.id = c.id
RETURNING o.id, o.upstream_id
"""
APPLY_ORDER_STATUSES = """
SELECT x.id, apply_order_status(x.id, x.status, x.start_count, x.remains)
  FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[])
       AS x(id, status, start_count, remains)
 ORDER BY x.id
"""
CLAIM_REFILLS_TO_SYNC = """
WITH c AS (
    SELECT f.id FROM refills f JOIN orders o ON o.id = f.order_id
     WHERE o.provider_id = $1 AND f.status IN ('Pending', 'In progress')
       AND f.upstream_id IS NOT NULL
       AND (f.checked_at IS NULL OR f.checked_at < now() - make_interval(secs => $3))
     ORDER BY f.checked_at NULLS FIRST, f.id
     LIMIT $2
       FOR UPDATE OF f SKIP LOCKED
)
UPDATE refills f SET checked_at = now() FROM c WHERE f.id = c.id
RETURNING f.id, f.upstream_id
"""
APPLY_REFILL_STATUSES = """
SELECT x.id, apply_refill_status(x.id, x.status)
  FROM unnest($1::bigint[], $2::text[]) AS x(id, status)
 ORDER BY x.id
"""
PROVIDERS = """
SELECT id, name, url, api_key, markup_bp, import_category, honours_idempotency
  FROM providers WHERE active
"""
PRUNE_IDEMPOTENCY = "DELETE FROM idempotency WHERE created_at < now() - interval '24 hours'"
# Deliveries done or abandoned a week ago, then events nothing refers to any more.
PRUNE_WEBHOOKS = """
WITH gone AS (
    DELETE FROM webhook_deliveries d USING webhook_events e
     WHERE e.id = d.event_id AND e.created_at < now() - interval '7 days'
       AND (d.delivered_at IS NOT NULL OR d.run_after = 'infinity')
)
DELETE FROM webhook_events e
 WHERE e.created_at < now() - interval '7 days'
   AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.id
                      AND d.delivered_at IS NULL AND d.run_after <> 'infinity')
"""


@dataclass(frozen=True, slots=True)
class Job:
    id: int
    attempt: int
    ambiguous: bool
    refill_id: int | None
    order_id: int
    status: str
    provider_id: int | None
    upstream_id: str | None
    link: str
    quantity: int
    runs: int
    interval: int
    extras: dict[str, Any]
    cancel_requested: bool
    service_type: str
    provider_service: str | None
    upstream_key: str  # the Idempotency-Key of this job's order or refill


async def claim(pool: Pool, kind: str, batch: int, lease: float) -> list[Job]:
    return [Job(*r) for r in await pool.fetch(CLAIM, kind, batch, lease)]


async def sent(pool: Pool, job: Job, upstream_id: str) -> None:
    await pool.execute(SENT, job.id, job.attempt, job.order_id, upstream_id)


async def retry(pool: Pool, job: Job, seconds: float, error: str, maybe_sent: bool) -> str:
    """Reschedule the job in `seconds` -> 'retry'; or, for a dispatch attempt that certainly
    did not reach the provider, of an order canceled meanwhile and never maybe-sent before,
    cancel and refund the order -> 'canceled'. 'stale' when the attempt no longer holds it."""
    return await pool.fetchval(RETRY, job.id, job.attempt, seconds, error, maybe_sent)


async def renew(pool: Pool, job: Job, seconds: float) -> str:
    """Right before the attempt's request goes out: 'renewed' (send it), 'canceled' (the
    customer canceled meanwhile: do not send) or 'lost' (another attempt holds the job)."""
    return str(await pool.fetchval(RENEW, job.id, job.attempt, seconds))


async def hold(pool: Pool, job: Job, why: str) -> None:
    """Park the job for the operator (`panelsrv order list --held`)."""
    await pool.execute(HOLD, job.id, job.attempt, why)


async def done(pool: Pool, job: Job) -> None:
    await pool.execute(DONE, job.id, job.attempt)


async def fail_dispatch(pool: Pool, job: Job, error: str) -> str:
    """The provider refused the attempt's order for good -> 'failed' (Canceled and refunded),
    'sent' (another attempt placed it upstream) or 'stale' (the attempt no longer holds it)."""
    return await pool.fetchval(FAIL_DISPATCH, job.id, job.attempt, error)


async def refill_sent(pool: Pool, job: Job, upstream_id: str) -> None:
    await pool.execute(REFILL_SENT, job.id, job.attempt, upstream_id, job.refill_id)


async def refill_rejected(pool: Pool, job: Job) -> None:
    await pool.execute(REFILL_REJECTED, job.id, job.attempt, job.refill_id)


async def orders_to_sync(
    pool: Pool, provider_id: int, batch: int, interval: float
) -> list[tuple[int, str]]:
    rows = await pool.fetch(CLAIM_ORDERS_TO_SYNC, provider_id, batch, interval)
    return [(r[0], r[1]) for r in rows]


async def apply_order_statuses(
    pool: Pool, reports: list[tuple[int, str, int | None, int | None]]
) -> dict[int, str]:
    """reports: (order id, status, start_count, remains) -> {order id: changed|progress|ignored}"""
    return await _apply(pool, APPLY_ORDER_STATUSES, reports, "order")


async def refills_to_sync(
    pool: Pool, provider_id: int, batch: int, interval: float
) -> list[tuple[int, str]]:
    rows = await pool.fetch(CLAIM_REFILLS_TO_SYNC, provider_id, batch, interval)
    return [(r[0], r[1]) for r in rows]


async def apply_refill_statuses(pool: Pool, reports: list[tuple[int, str]]) -> dict[int, str]:
    return await _apply(pool, APPLY_REFILL_STATUSES, reports, "refill")


# What one bad report can make the database refuse (a value out of range, a violated check):
# the batch's transaction is rolled back, so each report is then applied alone.
_REPORT_ERRORS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)


async def _apply(
    pool: Pool, sql: str, reports: Sequence[tuple[Any, ...]], what: str
) -> dict[int, str]:
    """Apply a batch of reports (id first) in one statement; if the database refuses it, apply
    them one by one and log each refused one, so that one bad report stalls only its own row."""
    if not reports:
        return {}
    try:
        return dict(await pool.fetch(sql, *map(list, zip(*reports, strict=True))))
    except _REPORT_ERRORS as exc:
        log.warning(
            "%d %s reports refused together (%s); applying them one by one", len(reports), what, exc
        )
    results: dict[Any, Any] = {}
    for report in reports:
        try:
            results.update(await pool.fetch(sql, *([value] for value in report)))
        except _REPORT_ERRORS as exc:
            log.error("%s %s: provider report %r not applied: %s", what, report[0], report[1:], exc)
    return results


async def prune(pool: Pool) -> None:
    await pool.execute(PRUNE_IDEMPOTENCY)
    await pool.execute(PRUNE_WEBHOOKS)
