"""The money invariants, against a real PostgreSQL under real concurrency."""

from __future__ import annotations

import asyncio

from panelsrv import money
from panelsrv.store import db, ledger
from tests.kit.waiting import until
from tests.store.helpers import connect, new_panel, new_service, new_user, order_of


async def test_concurrent_debits_never_overdraw(database_url: str) -> None:
    setup = await connect(database_url)
    _, domain = await new_panel(setup)
    user = await new_user(setup, domain, balance="10.00")
    pool = await db.create_pool(database_url, 20)
    try:
        # 200 debits of 0.30 against 10.00: exactly 33 fit.
        async def debit() -> bool:
            async with pool.acquire() as conn:
                return await ledger.move_funds(conn, user.id, -money.parse("0.30")) is not None

        results = await asyncio.gather(*(debit() for _ in range(200)))
        assert sum(results) == 33
        assert await ledger.balance(setup, user.id) == money.parse("0.10")
        report = await ledger.audit(setup)
        assert report.ok, report.violations
    finally:
        await pool.close()
        await setup.close()


async def test_concurrent_orders_never_overdraw_and_respect_the_ceiling(database_url: str) -> None:
    setup = await connect(database_url)
    panel_id, domain = await new_panel(setup)
    user = await new_user(setup, domain, balance="17.00")
    service_id = await new_service(setup, rate="1.00")
    pool = await db.create_pool(database_url, 30)
    try:

        def order(n: int) -> ledger.NewOrder:
            return order_of(panel_id, user.id, service_id, link=f"https://x.test/{n}")

        async def place(n: int) -> str:
            async with pool.acquire() as conn:
                return (await ledger.place_order(conn, order(n))).outcome

        outcomes = await asyncio.gather(*(place(n) for n in range(30)))
        assert outcomes.count("ok") == 17 and outcomes.count("funds") == 13
        assert await ledger.balance(setup, user.id) == 0
        # Money back in: the ceiling (30 per minute, 17 used) stops the 14th more order.
        await ledger.move_funds(setup, user.id, money.parse("100"))
        outcomes = await asyncio.gather(*(place(n) for n in range(30, 50)))
        assert outcomes.count("ok") == 13 and outcomes.count("limit") == 7
        assert (await ledger.audit(setup)).ok
    finally:
        await pool.close()
        await setup.close()


async def test_retry_after_of_the_ceiling_never_exceeds_its_window(database_url: str) -> None:
    """A placement whose transaction began before the 30 orders that fill the window (it
    waited, e.g. for the wallet's lock) still answers at most 60 s."""
    setup = await connect(database_url)
    late = await connect(database_url)
    panel_id, domain = await new_panel(setup)
    user = await new_user(setup, domain, balance="100.00")
    service_id = await new_service(setup, rate="1.00")
    try:
        transaction = late.transaction()
        await transaction.start()
        await late.fetchval("SELECT now()")  # its now() is fixed from here on
        await asyncio.sleep(1.1)
        for n in range(30):
            order = order_of(panel_id, user.id, service_id, link=f"https://x.test/{n}")
            assert (await ledger.place_order(setup, order)).outcome == "ok"
        order = order_of(panel_id, user.id, service_id, link="https://x.test/late")
        placed = await ledger.place_order(late, order)
        await transaction.rollback()
        assert placed.outcome == "limit" and placed.retry_after == 60
    finally:
        await late.close()
        await setup.close()


async def test_refund_applies_once(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        panel_id, domain = await new_panel(conn)
        user = await new_user(conn, domain, balance="5.00")
        service_id = await new_service(conn)
        placed = await ledger.place_order(
            conn,
            order_of(panel_id, user.id, service_id, charge=money.parse("2.00"), quantity=2000),
        )
        assert placed.outcome == "ok" and placed.order_id is not None
        first = await ledger.refund(conn, placed.order_id, money.parse("0.50"))
        second = await ledger.refund(conn, placed.order_id, money.parse("0.50"))
        others = [await connect(database_url) for _ in range(5)]
        try:
            concurrent = await asyncio.gather(
                *(ledger.refund(c, placed.order_id, 1) for c in others)
            )
        finally:
            await asyncio.gather(*(c.close() for c in others))
        assert first is not None and second is None and concurrent == [None] * 5
        assert await ledger.balance(conn, user.id) == money.parse("3.50")
        # More than the charge is never refunded.
        again = await ledger.place_order(
            conn,
            order_of(panel_id, user.id, service_id, link="https://x.test/b"),
        )
        assert again.order_id is not None
        assert await ledger.refund(conn, again.order_id, money.parse("1.01")) is None
        assert (await ledger.audit(conn)).ok
    finally:
        await conn.close()


async def test_idempotent_place_order_replays_and_refuses_mismatch(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        panel_id, domain = await new_panel(conn)
        user = await new_user(conn, domain, balance="5.00")
        service_id = await new_service(conn)
        order = order_of(panel_id, user.id, service_id, idempotency_key="k-1", fingerprint=b"f1")
        first = await ledger.place_order(conn, order)
        replay = await ledger.place_order(conn, order)
        # The replay is the recorded outcome, the same order (the API renders both alike).
        assert first.outcome == replay.outcome == "ok" and replay.order_id == first.order_id
        assert first.balance == money.parse("4.00") and replay.body is None
        other = order_of(panel_id, user.id, service_id, idempotency_key="k-1", fingerprint=b"f2")
        assert (await ledger.place_order(conn, other)).outcome == "mismatch"
        assert await ledger.balance(conn, user.id) == money.parse("4.00")
    finally:
        await conn.close()


async def test_idempotency_claim_of_a_dead_transaction_does_not_linger(database_url: str) -> None:
    """The claim is a transaction-scoped lock: a holder that dies leaves nothing behind."""
    conn = await connect(database_url)
    holder = await connect(database_url)
    try:
        panel_id, domain = await new_panel(conn)
        user = await new_user(conn, domain, balance="5.00")
        service_id = await new_service(conn)
        order = order_of(panel_id, user.id, service_id, idempotency_key="crash", fingerprint=b"f")
        tx = holder.transaction()
        await tx.start()
        await holder.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"idem:{user.id}:crash"
        )
        assert (await ledger.place_order(conn, order)).outcome == "busy"
        pid = holder.get_server_pid()
        await conn.execute("SELECT pg_terminate_backend($1)", pid)

        async def gone() -> bool:  # and its lock with it
            return not await conn.fetchval("SELECT count(*) FROM pg_locks WHERE pid = $1", pid)

        await until(gone)
        assert (await ledger.place_order(conn, order)).outcome == "ok"
    finally:
        holder.terminate()
        await conn.close()


async def test_audit_reports_a_tampered_wallet(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        _, domain = await new_panel(conn)
        user = await new_user(conn, domain, balance="1.00")
        assert (await ledger.audit(conn)).ok
        await conn.execute("UPDATE wallets SET balance = balance + 1 WHERE user_id = $1", user.id)
        report = await ledger.audit(conn)
        assert not report.ok and f"wallet {user.id}" in report.violations[0]
        await conn.execute("UPDATE wallets SET balance = balance - 1 WHERE user_id = $1", user.id)
    finally:
        await conn.close()


async def test_an_orders_refunded_agrees_with_its_refund_entry(database_url: str) -> None:
    # The net charge `status` shows is charge - refunded; the audit proves refunded against the
    # ledger, so the shown figure cannot drift from the money that moved.
    conn = await connect(database_url)
    try:
        panel_id, domain = await new_panel(conn)
        user = await new_user(conn, domain, balance="5.00")
        service = await new_service(conn)
        order = await ledger.place_order(conn, order_of(panel_id, user.id, service))
        assert order.order_id is not None
        assert await ledger.refund(conn, order.order_id, money.parse("0.25"), "partial")
        assert await conn.fetchval(
            "SELECT refunded FROM orders WHERE id = $1", order.order_id
        ) == money.parse("0.25")
        assert (await ledger.audit(conn)).ok
        await conn.execute("UPDATE orders SET refunded = 0 WHERE id = $1", order.order_id)
        report = await ledger.audit(conn)
        assert f"order {order.order_id}: shows 0 refunded" in " ".join(report.violations)
        await conn.execute(
            "UPDATE orders SET refunded = $2 WHERE id = $1", order.order_id, money.parse("0.25")
        )
    finally:
        await conn.close()


async def test_ledger_is_append_only(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        _, domain = await new_panel(conn)
        await new_user(conn, domain, balance="1.00")
        for statement in (
            "UPDATE ledger_entries SET memo = 'x'",
            "DELETE FROM ledger_entries",
            "TRUNCATE ledger_entries CASCADE",
        ):
            try:
                await conn.execute(statement)
            except Exception as exc:
                assert "append-only" in str(exc)
            else:
                raise AssertionError(f"{statement} was allowed")
    finally:
        await conn.close()
