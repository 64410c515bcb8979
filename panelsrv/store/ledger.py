"""Money movements: one statement (one round trip) each, on the append-only ledger.

Imports asyncpg only (connections are passed in). Invariants kept by the statements and the
schema together: a wallet never goes below zero (conditional UPDATE + CHECK), every wallet equals
the sum of its entries (each movement writes its entry in the same statement), an order is
charged once and refunded at most once (unique (order_id, kind)), a refund never exceeds the
charge. `audit` re-checks all of it from scratch.

`place_order` answers with a typed outcome (`Placement`: a code of store.outcomes, the order
id), never with a body: the API renders it, fresh or replayed (012_typed_outcomes.sql).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import asyncpg

from panelsrv.store.pool import Pool

# $1 user_id, $2 signed amount, $3 memo -> (entry id, balance after) or no row when the wallet
# would go below zero (or does not exist). Locks the wallet row for the statement only.
MOVE_FUNDS = """
WITH w AS (
    UPDATE wallets SET balance = balance + $2, version = version + 1
     WHERE user_id = $1 AND balance + $2 >= 0
 RETURNING user_id, balance - $2 AS before, balance, version
)
INSERT INTO ledger_entries (user_id, kind, amount, balance_before, balance_after,
                            wallet_version, memo)
SELECT user_id, CASE WHEN $2 > 0 THEN 'credit' ELSE 'debit' END, $2, before, balance,
       version, $3
  FROM w
RETURNING id, balance_after
"""

# $1 order_id, $2 amount, $3 memo -> (entry id, balance after), both NULL when the amount is
# not within (0, charge] or the order does not exist. Raises UniqueViolation when the order was
# refunded already.
REFUND = "SELECT entry_id, balance_after FROM refund_order($1, $2, $3)"

# retry_after is capped at the ceiling's 60 s window: place_order measures it from its
# transaction's start, which a wait for the wallet's lock can leave older than every order
# in the window (then it said 61). Not least(): it ignores a NULL, and every outcome but
# 'limit' (no retry time) would say 60.
PLACE_ORDER = """
SELECT outcome, order_id, balance, status, body,
       CASE WHEN retry_after > 60 THEN 60 ELSE retry_after END
  FROM place_order($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
"""

# $1 user, $2 idempotency key, $3 fingerprint -> the add recorded under them within 24 h, as
# place_order replays it (outcome, order id, status, body), or no row.
STORED_ANSWER = """
SELECT idem_add_outcome(body, codes), order_ids[1], status, body FROM idempotency
 WHERE user_id = $1 AND key = $2 AND fingerprint = $3 AND created_at > now() - interval '24 hours'
"""

BALANCE = "SELECT balance FROM wallets WHERE user_id = $1"

AUDIT_COUNTS = "SELECT (SELECT count(*) FROM wallets), (SELECT count(*) FROM ledger_entries)"

# Each row is one violated invariant, described for a human.
AUDIT_VIOLATIONS = """
SELECT format('wallet %s: balance %s <> sum of entries %s', w.user_id, w.balance,
              coalesce(e.total, 0))
  FROM wallets w
  LEFT JOIN (SELECT user_id, sum(amount) AS total FROM ledger_entries GROUP BY user_id) e
    ON e.user_id = w.user_id
 WHERE w.balance <> coalesce(e.total, 0)
UNION ALL
SELECT format('wallet %s: negative balance %s', user_id, balance)
  FROM wallets WHERE balance < 0
UNION ALL
SELECT format('order %s: charge %s but %s charge entries totalling %s', o.id, o.charge,
              count(e.id), coalesce(-sum(e.amount), 0))
  FROM orders o LEFT JOIN ledger_entries e ON e.order_id = o.id AND e.kind = 'charge'
 GROUP BY o.id, o.charge
HAVING count(e.id) <> 1 OR coalesce(-sum(e.amount), 0) <> o.charge
UNION ALL
SELECT format('order %s: refunds %s exceed the charge %s', o.id, sum(e.amount), o.charge)
  FROM orders o JOIN ledger_entries e ON e.order_id = o.id AND e.kind = 'refund'
 GROUP BY o.id, o.charge
HAVING sum(e.amount) > o.charge
UNION ALL
SELECT format('order %s: shows %s refunded but its refund entries total %s', o.id, o.refunded,
              coalesce(sum(e.amount), 0))
  FROM orders o LEFT JOIN ledger_entries e ON e.order_id = o.id AND e.kind = 'refund'
 GROUP BY o.id, o.refunded
HAVING o.refunded <> coalesce(sum(e.amount), 0)
UNION ALL
SELECT format('entry %s: balance chain broken (%s + %s <> %s)', id, balance_before, amount,
              balance_after)
  FROM ledger_entries WHERE balance_before + amount <> balance_after
"""


@dataclass(frozen=True, slots=True)
class Entry:
    id: int
    balance: int


# Built on every `add`: plain slotted dataclasses, since a frozen one's __init__ costs several
# times as much (object.__setattr__ per field).
@dataclass(slots=True)
class Placement:
    """What `place_order` decided, or decided before under the same idempotency key.

    `outcome`: outcomes.OK (`order_id` set; `balance` too unless it is a replay), a code of
    outcomes.ERRORS, or outcomes.STORED: an answer stored before 012, `status` and `body` as
    they were stored.
    """

    outcome: str
    order_id: int | None
    balance: int | None = None
    status: int | None = None
    body: bytes | None = None
    retry_after: int | None = None  # seconds, for 'limit'


@dataclass(slots=True)
class NewOrder:
    user_id: int
    panel_id: int
    service_id: int
    provider_id: int | None
    charge: int
    link: str
    quantity: int
    runs: int = 1
    interval: int = 0
    extras: Mapping[str, object] = field(default_factory=dict)
    order_limit: int = 30
    idempotency_key: str | None = None
    fingerprint: bytes = b""
    link_guard: bool = False


@dataclass(frozen=True, slots=True)
class AuditReport:
    wallets: int
    entries: int
    violations: list[str]

    @property
    def ok(self) -> bool:
        return not self.violations


async def move_funds(
    conn: asyncpg.Connection, user_id: int, amount: int, memo: str | None = None
) -> Entry | None:
    """Credit (amount > 0) or debit (amount < 0); None when a debit would overdraw."""
    if amount == 0:
        raise ValueError("amount must not be zero")
    row = await conn.fetchrow(MOVE_FUNDS, user_id, amount, memo)
    return None if row is None else Entry(row[0], row[1])


async def place_order(conn: asyncpg.Connection, order: NewOrder) -> Placement:
    """Debit + ledger entry + order + outbox row + idempotency record, atomically, or nothing."""
    row = await conn.fetchrow(
        PLACE_ORDER,
        order.user_id,
        order.panel_id,
        order.service_id,
        order.provider_id,
        order.charge,
        order.link,
        order.quantity,
        order.runs,
        order.interval,
        order.extras,
        order.order_limit,
        order.idempotency_key,
        order.fingerprint,
        order.link_guard,
    )
    assert row is not None
    return Placement(row[0], row[1], row[2], row[3], row[4], row[5])


async def stored_placement(
    conn: asyncpg.Connection | Pool, user_id: int, key: str, fingerprint: bytes
) -> Placement | None:
    """The add recorded for this key and these parameters within 24 h, if any (no claim)."""
    row = await conn.fetchrow(STORED_ANSWER, user_id, key, fingerprint)
    return None if row is None else Placement(row[0], row[1], None, row[2], row[3])


async def refund(
    conn: asyncpg.Connection, order_id: int, amount: int, memo: str | None = None
) -> Entry | None:
    """Refund an order exactly once: None when it was refunded before (or cannot be)."""
    try:
        row = await conn.fetchrow(REFUND, order_id, amount, memo)
    except asyncpg.UniqueViolationError:
        return None
    return None if row is None or row[0] is None else Entry(row[0], row[1])


async def balance(conn: asyncpg.Connection, user_id: int) -> int | None:
    value = await conn.fetchval(BALANCE, user_id)
    return None if value is None else int(value)


async def audit(conn: asyncpg.Connection) -> AuditReport:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        wallets, entries = await conn.fetchrow(AUDIT_COUNTS)
        violations = [r[0] for r in await conn.fetch(AUDIT_VIOLATIONS)]
    return AuditReport(wallets, entries, violations)
