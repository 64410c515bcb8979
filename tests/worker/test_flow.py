"""Orders after they are placed: through the simulator, exactly once, refunded right."""

from __future__ import annotations

from panelsrv.sim.provider import Faults, Simulator
from panelsrv.store import db, ledger, orders
from panelsrv.worker.main import Worker
from tests.kit.waiting import until
from tests.store.helpers import connect
from tests.worker.flow import (
    check_refunds,
    fast_settings,
    place_many,
    provider_service,
    running,
    wait_final,
)


async def test_thousand_orders_complete_with_the_right_refunds(own_database_url: str) -> None:
    database_url = own_database_url
    conn = await connect(database_url)
    pool = await db.create_pool(database_url, 12)
    async with Simulator(complete_after=0.5, partial_ratio=0.3, seed=7) as sim:
        try:
            provider_id, service_id = await provider_service(conn, sim.url, sim.key)
            orders = await place_many(pool, conn, provider_id, service_id, 1000)
            worker = Worker(pool, fast_settings())
            task = await running(worker)
            try:
                await wait_final(conn, orders, timeout=120)
            finally:
                worker.stop()
                await task
            statuses = dict(
                await conn.fetch(
                    "SELECT status, count(*) FROM orders WHERE id = ANY($1::bigint[])"
                    " GROUP BY status",
                    orders,
                )
            )
            assert set(statuses) <= {"Completed", "Partial"} and statuses.get("Partial", 0) > 100
            assert sim.counters["orders_created"] == 1000
            assert set(sim.book.creations_by_link().values()) == {1}
            await check_refunds(conn, orders)
            assert (await ledger.audit(conn)).ok
        finally:
            await pool.close()
            await conn.close()


async def test_failing_provider_holds_or_fails_and_others_keep_moving(
    own_database_url: str,
) -> None:
    database_url = own_database_url
    conn = await connect(database_url)
    pool = await db.create_pool(database_url, 8)
    async with (
        Simulator(complete_after=0.3, partial_ratio=0, seed=1) as good,
        Simulator(complete_after=0.3, partial_ratio=0, seed=2) as bad,
    ):
        try:
            good_provider, good_service = await provider_service(conn, good.url, good.key)
            bad_provider, bad_service = await provider_service(conn, bad.url, bad.key)
            _, unknown_service = await provider_service(
                conn, bad.url, bad.key, upstream_service="9999"
            )
            worker = Worker(pool, fast_settings(timeout=0.5))
            task = await running(worker)
            try:
                outcomes = {}
                held: list[int] = []
                for fault in ("timeout", "html", "5xx", "funds", "garbage", "drop"):
                    bad.faults = Faults(force=fault)  # type: ignore[arg-type]
                    good_orders = await place_many(
                        pool, conn, good_provider, good_service, 5, users=1
                    )
                    bad_orders = await place_many(pool, conn, bad_provider, bad_service, 3, users=1)
                    await wait_final(conn, good_orders, timeout=20)

                    async def tried(orders: list[int] = bad_orders) -> bool:
                        return await conn.fetchval(
                            "SELECT count(*) FROM outbox WHERE order_id = ANY($1::bigint[])"
                            " AND attempts >= 1 AND last_error IS NOT NULL",
                            orders,
                        ) == len(orders)

                    await until(tried, 20, what=f"{fault}: every bad order tried once")
                    outcomes[fault] = await conn.fetch(
                        "SELECT o.status, x.last_error, x.attempts FROM orders o"
                        " JOIN outbox x ON x.order_id = o.id WHERE o.id = ANY($1::bigint[])",
                        bad_orders,
                    )
                    assert len(outcomes[fault]) == 3, (fault, outcomes[fault])
                    held += bad_orders
                    assert all(
                        r["status"] == "Pending" and r["attempts"] >= 1 for r in outcomes[fault]
                    ), (fault, outcomes[fault])
                assert all("Not enough funds" in (r["last_error"] or "") for r in outcomes["funds"])
                # A permanent refusal cancels and refunds; the provider recovering lets the
                # held orders through (their retry time is brought forward for the test).
                bad.faults = Faults()
                refused = await place_many(pool, conn, bad_provider, unknown_service, 2, users=1)
                await wait_final(conn, refused, timeout=20)
                assert {
                    r[0]
                    for r in await conn.fetch(
                        "SELECT status FROM orders WHERE id = ANY($1::bigint[])", refused
                    )
                } == {"Canceled"}
                await wait_final(conn, held, timeout=60, hurry=True)
            finally:
                worker.stop()
                await task
            assert set(bad.book.creations_by_link().values()) == {1}
            await check_refunds(conn, refused)
            assert (await ledger.audit(conn)).ok
        finally:
            await pool.close()
            await conn.close()


async def test_cancels_and_refills_are_forwarded_and_synced(own_database_url: str) -> None:
    database_url = own_database_url
    conn = await connect(database_url)
    pool = await db.create_pool(database_url, 8)
    # Orders stay Pending upstream for 0.2 x 30 s: long enough to cancel them there.
    async with (
        Simulator(complete_after=30, partial_ratio=0, seed=9) as slow,
        Simulator(complete_after=0.5, partial_ratio=0, seed=10) as fast,
    ):
        try:
            slow_provider, slow_service = await provider_service(conn, slow.url, slow.key)
            fast_provider, fast_service = await provider_service(conn, fast.url, fast.key)
            to_cancel = await place_many(pool, conn, slow_provider, slow_service, 3, users=1)
            to_refill = await place_many(pool, conn, fast_provider, fast_service, 2, users=1)
            owner = await conn.fetchval("SELECT user_id FROM orders WHERE id = $1", to_cancel[0])
            refiller = await conn.fetchval("SELECT user_id FROM orders WHERE id = $1", to_refill[0])
            worker = Worker(pool, fast_settings())
            task = await running(worker)
            try:
                await wait_final(conn, to_refill, timeout=30)

                async def sent() -> bool:
                    return not await conn.fetchval(
                        "SELECT count(*) FROM orders WHERE id = ANY($1::bigint[])"
                        " AND upstream_id IS NULL",
                        to_cancel,
                    )

                await until(sent, 30, what="the orders to cancel sent upstream")
                # Sent upstream already: the cancel is a request the worker forwards.
                answer = await orders.cancel(pool, owner, to_cancel, single=False)
                assert (answer.order_ids, answer.codes) == (to_cancel, [None] * len(to_cancel))
                await wait_final(conn, to_cancel, timeout=30)
                refill = await orders.refill(pool, refiller, to_refill, False, 3, 24)
                assert refill.codes == [None] * len(to_refill)
                refill_ids = [r for r in refill.refill_ids or () if r is not None]

                async def refilled() -> bool:
                    done = await orders.refills_status(pool, refiller, refill_ids)
                    return set(done.values()) == {"Completed"}

                await until(refilled, 30, interval=0.05, what="the refills completed")
            finally:
                worker.stop()
                await task
            statuses = {
                r[0]
                for r in await conn.fetch(
                    "SELECT status FROM orders WHERE id = ANY($1::bigint[])", to_cancel
                )
            }
            assert statuses == {"Canceled"}
            assert slow.counters["action.cancel"] >= 1 and fast.counters["action.refill"] >= 1
            await check_refunds(conn, to_cancel + to_refill)
            assert (await ledger.audit(conn)).ok
        finally:
            await pool.close()
            await conn.close()
