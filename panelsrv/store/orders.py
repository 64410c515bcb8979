"""Order and refill reads (the API's, and the account home's page of orders) and the
customer-side state changes (cancel, refill).

Imports asyncpg. Every function is one statement (one round trip). Ownership is part of every
WHERE clause: another user's order answers exactly like a nonexistent one. Cancel and refill
answer with a typed outcome (`Handled`: per order, its refill and the code of its refusal, from
store.outcomes), which the idempotency record keeps, so the API renders a replay exactly as it
rendered the first answer (012_typed_outcomes.sql).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from panelsrv.store.pool import Pool

# The charge a reseller reconciles with, what order `o` cost in the end: its charge less its
# refund (a Partial's share; all of it for Canceled, Refunded, Error), kept on the row by
# refund_order (009_net_charge.sql, whose order_event puts the same in webhook payloads).
# orders.charge stays the original debit, which the audit proves every refund against.
_NET_CHARGE = "o.charge - o.refunded"
# $1 order id, $2 user id -> (charge net of refunds, start_count, status, remains)
ORDER_STATUS = f"""
SELECT {_NET_CHARGE} AS charge, o.start_count, o.status, o.remains
  FROM orders o WHERE o.id = $1 AND o.user_id = $2
"""
# $1 order ids, $2 user id -> (id, charge net of refunds, start_count, status, remains) for the
# user's orders
ORDERS_STATUS = f"""
SELECT o.id, {_NET_CHARGE} AS charge, o.start_count, o.status, o.remains
  FROM orders o WHERE o.id = ANY($1::bigint[]) AND o.user_id = $2
"""
ORDER_STATUSES = ("Pending", "In progress", "Completed", "Partial", "Canceled", "Refunded", "Error")
MAX_PAGE = 200  # orders in one page of `list_for_user`
MAX_SEARCH_LENGTH = 200
# The user's orders that pass the filters: $1 user id, $2 status, $3 order id, $4 ILIKE pattern
# of the link (backslash escapes); each filter NULL for none. orders_user (user_id, id) serves it.
_USER_ORDERS_WHERE = """o.user_id = $1 AND ($2::text IS NULL OR o.status = $2)
   AND ($3::bigint IS NULL OR o.id = $3) AND ($4::text IS NULL OR o.link ILIKE $4 ESCAPE '\\')"""
# $1-$4 the filters above, $5 limit, $6 offset -> one row a listed order, newest first, each with
# how many pass the filters (`total`); a single row of NULLs but `total` when the page is empty.
# `service` is the id the user's panel shows (its local id, else the shared service's id).
USER_ORDERS = f"""
SELECT t.total, p.* FROM (SELECT count(*) AS total FROM orders o WHERE {_USER_ORDERS_WHERE}) t
  LEFT JOIN LATERAL (
    SELECT o.id, o.created_at, coalesce(s.local_id, s.id) AS service, s.name AS service_name,
           o.link, o.quantity, {_NET_CHARGE} AS charge, o.status, o.remains, o.start_count
      FROM orders o JOIN services s ON s.id = o.service_id
     WHERE {_USER_ORDERS_WHERE}
     ORDER BY o.id DESC LIMIT $5 OFFSET $6) p ON true
"""
_BIGINT_MAX = 2**63 - 1
# $1 refill id(s), $2 user id -> (id, status)
REFILLS_STATUS = """
SELECT id, status FROM refills WHERE id = ANY($1::bigint[]) AND user_id = $2
"""
# $1 'cancel' | 'refill', $2 user, $3 order ids, $4 single form, $5/$6 refill limits,
# $7 idempotency key, $8 fingerprint -> (outcome, status, body, order ids, refill ids, codes)
ORDER_ACTION = """
SELECT outcome, status, body, order_ids, refill_ids, codes
  FROM order_action($1, $2, $3, $4, $5, $6, $7, $8)
"""


@dataclass(frozen=True, slots=True)
class Handled:
    """What a cancel or refill did, now or under the same idempotency key before.

    `outcome`: outcomes.OK, with `order_ids` (as asked, in order) and for each its new refill
    (refill only) and the code of its refusal (None: done); outcomes.STORED, an answer stored
    before 012, `status` and `body` as they were stored; or a code of outcomes.ERRORS.
    """

    outcome: str
    order_ids: list[int] | None
    refill_ids: list[int | None] | None
    codes: list[str | None] | None
    status: int | None = None
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class AccountOrder:
    """One order as the account home lists it; `charge` in minor units, net of refunds."""

    id: int
    created_at: datetime
    service: int
    service_name: str
    link: str
    quantity: int
    charge: int
    status: str
    remains: int
    start_count: int


def _like_pattern(text: str) -> str:
    """An ILIKE pattern matching `text` anywhere, its wildcards taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def list_for_user(
    conn: asyncpg.Connection | Pool,
    user_id: int,
    *,
    status: str | None,
    search: str | None,
    limit: int,
    offset: int,
) -> tuple[list[AccountOrder], int]:
    """A page of the user's orders, newest first, and how many match in all. `status`: one of
    ORDER_STATUSES or None; `search` (stripped; empty is none): all digits -> the order with
    that id, else the orders whose link contains it, ignoring case. ValueError for an unknown
    status, a search over MAX_SEARCH_LENGTH, a limit outside 1..MAX_PAGE or a negative offset."""
    if status is not None and status not in ORDER_STATUSES:
        raise ValueError(f"status must be one of: {', '.join(ORDER_STATUSES)}")
    if not 1 <= limit <= MAX_PAGE or offset < 0:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}, offset at least 0")
    order_id = pattern = None
    search = (search or "").strip()
    if len(search) > MAX_SEARCH_LENGTH:
        raise ValueError(f"search: at most {MAX_SEARCH_LENGTH} characters")
    if search.isascii() and search.isdigit() and int(search) <= _BIGINT_MAX:
        order_id = int(search)
    elif search:  # digits too many for an id are searched for in links
        pattern = _like_pattern(search)
    rows = await conn.fetch(USER_ORDERS, user_id, status, order_id, pattern, limit, offset)
    found = [AccountOrder(*r[1:]) for r in rows if r["id"] is not None]
    return found, rows[0]["total"]


async def order_status(
    conn: asyncpg.Connection | Pool, user_id: int, order_id: int
) -> asyncpg.Record | None:
    return await conn.fetchrow(ORDER_STATUS, order_id, user_id)


async def orders_status(
    conn: asyncpg.Connection | Pool, user_id: int, order_ids: list[int]
) -> dict[int, asyncpg.Record]:
    return {r[0]: r for r in await conn.fetch(ORDERS_STATUS, order_ids, user_id)}


async def refills_status(
    conn: asyncpg.Connection | Pool, user_id: int, refill_ids: list[int]
) -> dict[int, str]:
    return {r[0]: r[1] for r in await conn.fetch(REFILLS_STATUS, refill_ids, user_id)}


async def cancel(
    conn: asyncpg.Connection | Pool,
    user_id: int,
    order_ids: list[int],
    single: bool,
    idempotency_key: str | None = None,
    fingerprint: bytes = b"",
) -> Handled:
    return await _order_action(
        conn, "cancel", user_id, order_ids, single, 0, 0, idempotency_key, fingerprint
    )


async def refill(
    conn: asyncpg.Connection | Pool,
    user_id: int,
    order_ids: list[int],
    single: bool,
    max_per_order: int,
    cooldown_hours: int,
    idempotency_key: str | None = None,
    fingerprint: bytes = b"",
) -> Handled:
    return await _order_action(
        conn, "refill", user_id, order_ids, single, max_per_order, cooldown_hours,
        idempotency_key, fingerprint,
    )  # fmt: skip


async def _order_action(
    conn: asyncpg.Connection | Pool,
    action: str,
    user_id: int,
    order_ids: list[int],
    single: bool,
    max_per_order: int,
    cooldown_hours: int,
    idempotency_key: str | None,
    fingerprint: bytes,
) -> Handled:
    row = await conn.fetchrow(
        ORDER_ACTION, action, user_id, order_ids, single, max_per_order, cooldown_hours,
        idempotency_key, fingerprint,
    )  # fmt: skip
    assert row is not None
    return Handled(row[0], row[3], row[4], row[5], row[1], row[2])
