"""The operator's answer to a job held after an attempt of unknown outcome.

Imports asyncpg. Held jobs are those the worker would not resend on its own because their
provider is not known to honour Idempotency-Key (worker/dispatch.py, 008_held_for_operator.sql).
The operator checks upstream first. Not there: `resend` (sent again, as a first attempt). There:
`attach` its upstream id (as a successful send would have recorded it; the status sync takes
over). Given up: `fail` (a dispatch's order Canceled with its whole charge refunded, exactly
once; a refill's refill Rejected).
"""

from __future__ import annotations

import asyncpg

from panelsrv.store.admin import InputError

# $1 order, $2 'resend' | 'attach' | 'fail', $3 upstream id (attach) -> what was done, or NULL
# when the order has no held job. Locks the order, then its held job.
RESOLVE = "SELECT resolve_held($1, $2, $3)"
ACTIONS = ("resend", "attach", "fail")


async def resolve(
    conn: asyncpg.Connection, order_id: int, action: str, upstream_id: str | None = None
) -> str:
    """-> 'resent', 'attached' or 'failed'; InputError when there is nothing held to resolve.
    `upstream_id` (attach) is checked by the caller as one the worker can send back."""
    if action not in ACTIONS or (action == "attach") != (upstream_id is not None):
        raise ValueError(action)
    async with conn.transaction():
        done = await conn.fetchval(RESOLVE, order_id, action, upstream_id)
    if done is None:
        raise InputError(f"order {order_id} has no job held for the operator")
    return str(done)
