"""Cancel and refill: eligibility, ownership, refunds, typed outcomes replayed as recorded."""

from __future__ import annotations

import random

import asyncpg

from panelsrv import money
from panelsrv.store import ledger, orders
from tests.store.helpers import (
    connect,
    new_panel,
    new_provider,
    new_service,
    new_user,
    order_of,
)


async def _order(
    conn: asyncpg.Connection,
    panel_id: int,
    user_id: int,
    service_id: int,
    charge: str = "1.00",
    provider_id: int | None = None,
) -> int:
    placed = await ledger.place_order(
        conn,
        order_of(panel_id, user_id, service_id, provider_id=provider_id,
                 charge=money.parse(charge)),
    )  # fmt: skip
    assert placed.order_id is not None
    return placed.order_id


async def test_cancel_before_dispatch_refunds_at_once(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        panel_id, domain = await new_panel(conn)
        user = await new_user(conn, domain, balance="5.00")
        other = await new_user(conn, domain, balance="5.00")
        cancellable = await new_service(conn, cancel=True)
        fixed = await new_service(conn)
        a = await _order(conn, panel_id, user.id, cancellable)
        b = await _order(conn, panel_id, user.id, fixed)
        theirs = await _order(conn, panel_id, other.id, cancellable)
        answer = await orders.cancel(conn, user.id, [a, b, theirs, 999_999_999], single=False)
        assert answer.outcome == "ok" and answer.order_ids == [a, b, theirs, 999_999_999]
        assert answer.codes == [None, "cancel_unavailable", "not_found", "not_found"]
        assert (await orders.order_status(conn, user.id, a))["status"] == "Canceled"
        assert await ledger.balance(conn, user.id) == money.parse("4.00")
        # A second cancel of the same order: not Pending any more.
        again = await orders.cancel(conn, user.id, [a], single=True)
        assert again.codes == ["cancel_unavailable"]
        assert await conn.fetchval("SELECT count(*) FROM outbox WHERE order_id = $1", a) == 0
        assert (await ledger.audit(conn)).ok
    finally:
        await conn.close()


async def test_cancel_of_a_claimed_order_is_forwarded(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        panel_id, domain = await new_panel(conn)
        user = await new_user(conn, domain, balance="5.00")
        service = await new_service(conn, cancel=True)
        provider = await new_provider(conn)
        order = await _order(conn, panel_id, user.id, service, provider_id=provider)
        never_sent = await _order(conn, panel_id, user.id, service, provider_id=provider)
        assert (await orders.cancel(conn, user.id, [never_sent], single=True)).codes == [None]
        assert (await orders.order_status(conn, user.id, never_sent))["status"] == "Canceled"
        await conn.execute(
            "UPDATE outbox SET lease_until = now() + interval '1 minute' WHERE order_id = $1", order
        )
        answer = await orders.cancel(conn, user.id, [order], single=True)
        assert (answer.outcome, answer.codes) == ("ok", [None])
        row = await conn.fetchrow(
            "SELECT status, cancel_requested FROM orders WHERE id = $1", order
        )
        assert tuple(row) == ("Pending", True)
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE order_id = $1 AND kind = 'cancel'", order
            )
            == 1
        )
        assert await ledger.balance(conn, user.id) == money.parse("4.00")
    finally:
        await conn.close()


async def test_refill_rules_and_idempotent_replay(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        panel_id, domain = await new_panel(conn)
        user = await new_user(conn, domain, balance="5.00")
        refillable = await new_service(conn, refill=True)
        order = await _order(conn, panel_id, user.id, refillable)
        pending = await orders.refill(conn, user.id, [order], True, 3, 24)
        assert pending.codes == ["refill_unavailable"] and pending.refill_ids == [None]
        await conn.execute("UPDATE orders SET status = 'Completed' WHERE id = $1", order)
        first = await orders.refill(conn, user.id, [order], True, 3, 24, "r-1", b"fp")
        replay = await orders.refill(conn, user.id, [order], True, 3, 24, "r-1", b"fp")
        assert first.outcome == replay.outcome == "ok" and first.codes == replay.codes == [None]
        assert replay.refill_ids == first.refill_ids and (first.refill_ids or [0])[0] > 0
        mismatch = await orders.refill(conn, user.id, [order], True, 3, 24, "r-1", b"other")
        assert mismatch.outcome == "mismatch"
        # One in flight: refused; finished but within the cooldown: refused; cooldown 0: allowed.
        refused = ["refill_unavailable"]
        assert (await orders.refill(conn, user.id, [order], True, 3, 24)).codes == refused
        await conn.execute("UPDATE refills SET status = 'Completed' WHERE order_id = $1", order)
        assert (await orders.refill(conn, user.id, [order], True, 3, 24)).codes == refused
        assert (await orders.refill(conn, user.id, [order], True, 3, 0)).codes == [None]
        await conn.execute("UPDATE refills SET status = 'Completed' WHERE order_id = $1", order)
        assert (await orders.refill(conn, user.id, [order], True, 3, 0)).codes == [None]
        await conn.execute("UPDATE refills SET status = 'Completed' WHERE order_id = $1", order)
        assert (await orders.refill(conn, user.id, [order], True, 3, 0)).codes == refused  # 3 max
        refills = await conn.fetch("SELECT id FROM refills WHERE order_id = $1", order)
        ids = [r[0] for r in refills]
        assert await orders.refills_status(conn, user.id, ids) == dict.fromkeys(ids, "Completed")
        other = await new_user(conn, domain)
        assert await orders.refills_status(conn, other.id, ids) == {}
    finally:
        await conn.close()


async def test_money_text_in_sql_is_money_format(database_url: str) -> None:
    rng = random.Random(7)
    values = [0, 1, 9, 10, 99_999, 100_000, 100_001, 1_234_500, 10**17, 2**63 - 1, -1, -(2**63)]
    values += [rng.randrange(-(10**18), 10**18) for _ in range(2000)]
    values += [rng.randrange(0, 10**7) * 10**k for k in range(6) for _ in range(50)]
    conn = await connect(database_url)
    try:
        texts = await conn.fetch("SELECT money_text(v) FROM unnest($1::bigint[]) v", values)
    finally:
        await conn.close()
    assert [t[0] for t in texts] == [money.format(v) for v in values]
