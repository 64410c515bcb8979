"""Provider reports through a real worker against a fake provider: numbers that overflowed or
poisoned a batch of 100, a Partial without remains, an Error, ids that cannot be sent back."""

from __future__ import annotations

import logging
import time

import pytest

from panelsrv import money
from panelsrv.store import admin, ledger, orders
from panelsrv.worker.main import Worker
from tests.kit.waiting import until
from tests.store.helpers import World
from tests.worker.fake import ABSENT, FakeProvider
from tests.worker.flow import check_refunds, fast_settings, running, wait_final


async def _dispatched(w: World) -> Worker:
    """A worker that has sent every order upstream already, so that the sync's first claim
    takes them together in one batch."""
    worker = Worker(w.pool, fast_settings())
    await worker.registry.refresh()
    while await worker.dispatcher.run_once():
        pass
    return worker


async def _polled_after(w: World, ids: list[int], since: float) -> None:
    """Wait until each order has been claimed for a poll at least once after `since`."""

    async def polled() -> bool:
        return not await w.conn.fetchval(
            "SELECT count(*) FROM orders WHERE id = ANY($1::bigint[])"
            " AND (checked_at IS NULL OR checked_at < to_timestamp($2))",
            ids,
            since,
        )

    await until(polled, 30, interval=0.05, what="polled again")


async def _not_final(w: World, ids: list[int]) -> None:
    rows = await w.conn.fetch(
        "SELECT o.status, o.remains, count(e.id) AS refunds FROM orders o LEFT JOIN"
        " ledger_entries e ON e.order_id = o.id AND e.kind = 'refund'"
        " WHERE o.id = ANY($1::bigint[]) GROUP BY o.id ORDER BY o.id",
        ids,
    )
    assert [tuple(r) for r in rows] == [("Pending", 1000, 0)] * len(ids)


async def test_a_vnd_partial_and_a_1e19_start_count_leave_the_other_99_applied(
    own_database_url: str,
) -> None:
    async with (
        FakeProvider() as fake,
        World(own_database_url, fake.url, fake.key, "VND", "2000000000") as w,
    ):
        # 10M views in VND (charge 1.25e14 units: charge * remains is past bigint), an order
        # whose start_count is 1e19, and 98 small ones: one batch of 100.
        big = money.parse("1250000000")
        ids = await w.place(big, 10_000_000) + await w.place(money.parse("1000"), count=99)
        worker = await _dispatched(w)
        for n in range(len(ids)):
            entry = fake.orders[fake.upstream_of(f"https://x.test/{n}")]
            if n == 0:
                entry.update(status="Partial", remains="6543210")
            elif n == 1:
                entry.update(status="Completed", start_count="10000000000000000000")
            elif n == 2:
                entry.update(status="Canceled", start_count="-1", remains="-5")
            else:
                entry.update(status="Partial" if n % 2 else "Completed", remains=str(n))
        task = await running(worker)
        try:
            await wait_final(w.conn, ids, timeout=20)
        finally:
            worker.stop()
            await task
        # A number past its column never holds its status back: unknown, the order completes.
        assert await w.status(ids[1]) == "Completed" and await w.refunds(ids[1]) == []
        start = await w.conn.fetchval("SELECT start_count FROM orders WHERE id = $1", ids[1])
        assert start == 0
        # A negative start_count or remains beside a Canceled: refunded in full all the same.
        assert await w.status(ids[2]) == "Canceled"
        assert await w.refunds(ids[2]) == [money.parse("1000")]
        assert await w.refunds(ids[0]) == [big * 6_543_210 // 10_000_000]
        await check_refunds(w.conn, ids)
        assert (await ledger.audit(w.conn)).ok


async def test_a_partial_without_remains_is_polled_again_and_an_error_is_refunded_in_full(
    own_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with FakeProvider() as fake, World(own_database_url, fake.url, fake.key) as w:
        charge = money.parse("0.91")
        ids = await w.place(charge, count=6)
        worker = await _dispatched(w)
        entries = [fake.orders[fake.upstream_of(f"https://x.test/{n}")] for n in range(6)]
        for entry, remains in zip(entries[:3], (ABSENT, None, ""), strict=True):
            entry.update(status="Partial", remains=remains)
        entries[3]["status"] = "Error"
        entries[4]["status"] = entries[5]["status"] = "Completed"
        waiting, error, normal = ids[:3], ids[3], ids[3:]
        task = await running(worker)
        try:
            with caplog.at_level(logging.INFO, "panelsrv.worker"):
                # Polled in the same batch as the others: not finalised, nothing refunded...
                await wait_final(w.conn, normal, timeout=20)
                await _not_final(w, waiting)
                # ...and polled again.
                await _polled_after(w, waiting, time.time())
                await _not_final(w, waiting)
                for order_id in waiting:
                    assert f"order {order_id}: Partial without a usable remains" in caplog.text
                for entry in entries[:3]:
                    entry["remains"] = "600"
                await wait_final(w.conn, waiting, timeout=20)
        finally:
            worker.stop()
            await task
        for order_id in waiting:  # the exact Partial refund, once
            assert await w.refunds(order_id) == [charge * 600 // 1000] == [54600]
        assert (await w.status(error), await w.refunds(error)) == ("Error", [charge])
        name = await w.conn.fetchval("SELECT name FROM providers WHERE id = $1", w.provider_id)
        assert worker.syncer.order_errors.values == {(name,): 1}
        warned = [r for r in caplog.records if "reported Error" in r.getMessage()]
        assert len(warned) == 1 and warned[0].levelno == logging.WARNING
        assert f"order {error}: provider {name} reported Error" in warned[0].getMessage()
        listed = await admin.list_orders(w.conn, status="Error")
        assert [o["order"] for o in listed] == [error]
        assert listed[0]["refunded"] == "0.91" and listed[0]["provider"] == name
        await check_refunds(w.conn, ids)
        assert (await ledger.audit(w.conn)).ok


async def test_an_order_id_with_a_comma_is_refused_and_the_six_others_complete(
    own_database_url: str,
) -> None:
    async with FakeProvider() as fake, World(own_database_url, fake.url, fake.key) as w:
        fake.on_add = lambda f: (200, {"order": "12,13"}, {}) if f["link"].endswith("/6") else None
        ids = await w.place(count=7)
        worker = await _dispatched(w)
        for entry in fake.orders.values():
            entry["status"] = "Completed"
        task = await running(worker)
        try:
            await wait_final(w.conn, ids[:6], timeout=20)
        finally:
            worker.stop()
            await task
        bad = await w.conn.fetchrow(
            "SELECT o.status, o.upstream_id, x.ambiguous, x.last_error FROM orders o"
            " JOIN outbox x ON x.order_id = o.id AND x.kind = 'dispatch' WHERE o.id = $1",
            ids[6],
        )
        # A failed send with an unusable answer: retried with the same key, like any answer
        # of the wrong shape.
        assert tuple(bad) == ("Pending", None, True, "unexpected answer shape: no order id")
        assert (await ledger.audit(w.conn)).ok


async def test_stored_upstream_ids_that_cannot_be_sent_do_not_stop_their_batch(
    own_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Ids stored before they were refused at the answer: polls, cancels and refills skip them."""
    async with FakeProvider() as fake, World(own_database_url, fake.url, fake.key) as w:
        ids = await w.place(count=6)
        worker = await _dispatched(w)
        polled, cancel_ok, cancel_bad = ids[:4], ids[4], ids[5]
        await w.conn.execute("UPDATE orders SET upstream_id = '7,8' WHERE id = $1", polled[0])
        for n in range(1, 4):
            fake.orders[fake.upstream_of(f"https://x.test/{n}")]["status"] = "Completed"
        for order_id in (cancel_ok, cancel_bad):
            assert (await orders.cancel(w.conn, w.user.id, [order_id], single=True)).codes == [None]
        await w.conn.execute("UPDATE orders SET upstream_id = '9,10' WHERE id = $1", cancel_bad)
        refills = [
            await w.conn.fetchval(
                "INSERT INTO refills (order_id, user_id, upstream_id) VALUES ($1, $2, $3)"
                " RETURNING id",
                polled[1],
                w.user.id,
                upstream,
            )
            for upstream in ("r,1", "501")
        ]

        async def pending() -> bool:
            cancels = await w.conn.fetchval("SELECT count(*) FROM outbox WHERE kind = 'cancel'")
            refill = await w.conn.fetchval("SELECT status FROM refills WHERE id = $1", refills[1])
            return bool(cancels) or refill != "Completed"

        with caplog.at_level(logging.WARNING, "panelsrv.worker"):
            task = await running(worker)
            try:
                await wait_final(w.conn, polled[1:], timeout=20)

                async def settled() -> bool:
                    return not await pending()

                await until(settled, 20, interval=0.05, what="cancels and refill sync")
            finally:
                worker.stop()
                await task
        assert fake.cancels == [fake.upstream_of("https://x.test/4")]
        statuses = await w.conn.fetch(
            "SELECT status FROM refills WHERE id = ANY($1::bigint[]) ORDER BY id", refills
        )
        assert [r[0] for r in statuses] == ["Pending", "Completed"]
        assert f"order {polled[0]}: stored upstream id '7,8' cannot be sent" in caplog.text
        assert f"refill {refills[0]}: stored upstream id 'r,1' cannot be sent" in caplog.text
        assert "its stored upstream id '9,10' cannot be sent" in caplog.text
        assert (await ledger.audit(w.conn)).ok
