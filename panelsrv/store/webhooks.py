"""Webhook endpoints (the API's webhook_* actions) and their deliveries (the worker).

Imports asyncpg. Events and their deliveries are written by the status-changing SQL functions
(order_event/refill_event in 002_money.sql) inside the transaction that changes the status;
this module only adds and removes endpoints and moves deliveries along: claim (a lease, within
the per-endpoint and per-user caps, skipping endpoints whose breaker is open) and finish
(delivered, or the next attempt scheduled; the endpoint's breaker updated). The SQL is in
006_webhook_fairness.sql.
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
# $1 deliveries wanted, $2 lease seconds, $3 in flight per endpoint, $4 per user -> due
# deliveries with everything needed to send them (006_webhook_fairness.sql says which).
CLAIM = "SELECT * FROM claim_webhook_deliveries($1, $2, $3, $4)"
# $1 delivery, $2 attempt, $3 delivered, $4 endpoint behaved, $5 error, $6 seconds to the next
# attempt, $7 breaker threshold, $8 cooldown seconds, $9 give-up hours -> 'opened' | 'closed' |
# 'disabled' | NULL (the endpoint's change). Locks the endpoint row, then the delivery.
FINISH = "SELECT finish_webhook_delivery($1, $2, $3, $4, $5, $6, $7, $8, $9)"


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


async def claim(
    pool: Pool, want: int, lease_seconds: float, per_endpoint: int, per_user: int
) -> list[Delivery]:
    """Up to `want` due deliveries, leased; at most `per_endpoint` in flight per endpoint and
    `per_user` per user, over every worker."""
    rows = await pool.fetch(CLAIM, want, lease_seconds, per_endpoint, per_user)
    return [Delivery(*r) for r in rows]


async def finish(
    pool: Pool,
    delivery: Delivery,
    *,
    delivered: bool,
    error: str | None,
    breaker: tuple[int, float],
) -> str | None:
    """Record an attempt -> the endpoint's change ('opened', 'closed', 'disabled') or None.

    `delivered`: the receiver answered 2xx. `error`: why the endpoint did not behave (a failure,
    or a 2xx too slow, delivered all the same); None for a fast 2xx. `breaker`: (failures in a
    row that open it, seconds it stays open)."""
    delay = min(BACKOFF_FIRST * 2 ** (delivery.attempt - 1), BACKOFF_CAP)
    delay *= 0.8 + 0.4 * secrets.randbelow(1000) / 1000  # jitter: no synchronized retry storms
    threshold, cooldown = breaker
    return await pool.fetchval(
        FINISH, delivery.id, delivery.attempt, delivered, error is None, error, delay, threshold,
        cooldown, GIVE_UP_AFTER_HOURS,
    )  # fmt: skip
