"""The codes the money statements answer with, and the one table from code to error.

Imports `panelsrv.errors` only. `place_order` and `order_action` (012_typed_outcomes.sql) decide
in PostgreSQL and answer with ids and codes, never with text for the client; as asyncpg keeps
one table from SQLSTATE to exception, `ERRORS` is the one place where such a code becomes the
API's error (its status and message). A test reads the codes out of the migration and holds
them to this table, both ways.
"""

from __future__ import annotations

from typing import Final

from panelsrv.errors import Code

OK: Final = "ok"
# A replay of an answer stored before 012: its status and body, as they were stored.
STORED: Final = "stored"

ERRORS: Final[dict[str, Code]] = {
    # the whole call
    "busy": Code.DUPLICATE_REQUEST,  # the idempotency key is held by a call still running
    "mismatch": Code.IDEMPOTENCY_MISMATCH,
    "funds": Code.NOT_ENOUGH_FUNDS,
    "limit": Code.TOO_MANY_REQUESTS,  # the order ceiling; place_order says when to retry
    "duplicate_link": Code.DUPLICATE_LINK,
    # one order of a cancel or refill
    "not_found": Code.INCORRECT_ORDER,  # another user's order answers the same
    "cancel_unavailable": Code.CANCEL_UNAVAILABLE,
    "refill_unavailable": Code.REFILL_UNAVAILABLE,
}
