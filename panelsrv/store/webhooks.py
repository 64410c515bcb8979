"""Webhook endpoints (the API's webhook_* actions) and their deliveries (the worker).

Imports asyncpg. Events and their deliveries are written by the status-changing SQL functions
(order_event/refill_event in 002_money.sql) inside the transaction that changes the status;
this module only adds and removes endpoints and moves deliveries along: claim (lease, SKIP
LOCKED), delivered, or failed with the next attempt scheduled.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from panelsrv.store.pool import Pool

MAX_PER_USER = 5
EVENT_TYPES = ("order.status", "refill.status")
# A delivery is retried (exponential backoff, capped) until its event is this old, and an
# endpoint that fails without a single success for this long is disabled.
GIVE_UP_AFTER_HOURS = 72
BACKOFF_FIRST = 5.0
BACKOFF_CAP = 3600.0

LOCK_USER = "SELECT id FROM users WHERE id = $1 FOR UPDATE"
COUNT = "SELECT count(*) FROM webhooks WHERE user_id = $1 AND deleted_at IS NULL"
INSERT = """
INSERT INTO webhooks (user_id, url, secret, events) VALUES ($1, $2, $3, $4) RETURNING id
"""
LIST = """
SELECT id, url, events, active FROM webhooks
 WHERE user_id = $1 AND deleted_at IS NULL ORDER BY id
"""
DELETE = """
UPDATE webhooks SET deleted_at = now(), active = false
 WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL RETURNING id
"""
# $1 batch size, $2 lease seconds -> due deliveries with everything needed to send them.
CLAIM = """
WITH c AS (
    SELECT d.id FROM webhook_deliveries d
     WHERE d.delivered_at IS NULL AND d.run_after <= now()
       AND (d.lease_until IS NULL OR d.lease_until < now())
     ORDER BY d.run_after, d.id
     LIMIT $1
       FOR UPDATE SKIP LOCKED
)
UPDATE webhook_deliveries d
   SET lease_until = now() + make_interval(secs => $2), attempts = d.attempts + 1
  FROM c, webhooks w, webhook_events e
 WHERE d.id = c.id AND w.id = d.webhook_id AND e.id = d.event_id
RETURNING d.id, d.attempts, w.id, w.url, w.secret, w.active, e.public_id, e.type,
          extract(epoch FROM e.created_at)::bigint, e.data
"""
DELIVERED = """
WITH d AS (
    UPDATE webhook_deliveries SET delivered_at = now(), lease_until = NULL, last_error = NULL
     WHERE id = $1 RETURNING webhook_id
)
UPDATE webhooks SET failing_since = NULL FROM d WHERE webhooks.id = d.webhook_id
"""
# $1 delivery, $2 error, $3 seconds until the next attempt. Gives up on an event older than
# GIVE_UP_AFTER_HOURS; disables an endpoint failing that long.
FAILED = f"""
WITH d AS (
    UPDATE webhook_deliveries dl
       SET lease_until = NULL, last_error = left($2, 500),
           run_after = CASE WHEN e.created_at < now() - interval '{GIVE_UP_AFTER_HOURS} hours'
                            THEN 'infinity' ELSE now() + make_interval(secs => $3) END
      FROM webhook_events e
     WHERE dl.id = $1 AND e.id = dl.event_id
 RETURNING dl.webhook_id
)
UPDATE webhooks w
   SET failing_since = coalesce(w.failing_since, now()),
       active = w.active AND coalesce(w.failing_since, now())
                             > now() - interval '{GIVE_UP_AFTER_HOURS} hours'
  FROM d WHERE w.id = d.webhook_id
"""
DROP = "UPDATE webhook_deliveries SET run_after = 'infinity', lease_until = NULL WHERE id = $1"


class TooManyWebhooks(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: int
    url: str
    events: list[str]
    active: bool


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    attempt: int
    webhook_id: int
    url: str
    secret: str
    active: bool
    event_id: str
    type: str
    created: int
    data: dict


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


async def add(pool: Pool, user_id: int, url: str, events: list[str]) -> tuple[int, str]:
    secret = new_secret()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(LOCK_USER, user_id)  # serialises adds, so the count is exact
        if await conn.fetchval(COUNT, user_id) >= MAX_PER_USER:
            raise TooManyWebhooks
        webhook_id = await conn.fetchval(INSERT, user_id, url, secret, events)
    return webhook_id, secret


async def list_endpoints(pool: Pool, user_id: int) -> list[Endpoint]:
    return [Endpoint(r[0], r[1], list(r[2]), r[3]) for r in await pool.fetch(LIST, user_id)]


async def delete(pool: Pool, user_id: int, webhook_id: int) -> bool:
    return await pool.fetchval(DELETE, webhook_id, user_id) is not None


async def claim(pool: Pool, batch: int, lease_seconds: float) -> list[Delivery]:
    return [Delivery(*r) for r in await pool.fetch(CLAIM, batch, lease_seconds)]


async def delivered(pool: Pool, delivery_id: int) -> None:
    await pool.execute(DELIVERED, delivery_id)


async def failed(pool: Pool, delivery: Delivery, error: str) -> None:
    delay = min(BACKOFF_FIRST * 2 ** (delivery.attempt - 1), BACKOFF_CAP)
    delay *= 0.8 + 0.4 * secrets.randbelow(1000) / 1000  # jitter: no synchronized retry storms
    await pool.execute(FAILED, delivery.id, error, delay)


async def drop(pool: Pool, delivery_id: int) -> None:
    """Never deliver this one (its endpoint was deleted or disabled)."""
    await pool.execute(DROP, delivery_id)
