"""An attempt whose outcome is unknown (the answer lost after the provider created the order)
is resent on its own only to a provider that honours Idempotency-Key; for any other provider
the order is held for the operator, listed by the CLI, and resolved by `order attach`,
`order resend` or `order fail`, each moving money once (issue 13, point 4)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import asyncpg

from panelsrv.sim.provider import Faults
from panelsrv.store import ledger
from tests.e2e.kit import cli
from tests.kit.waiting import until
from tests.worker.flow import place_many, rig, wait_final

LOST_AFTER = Faults(force="drop", after_ratio=1.0)  # the order exists upstream; no answer
LOST_BEFORE = Faults(force="drop", after_ratio=0.0)  # no order upstream; no answer either


async def held(conn: asyncpg.Connection, order_ids: list[int], timeout: float = 10.0) -> None:
    async def all_held() -> bool:
        return await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE order_id = ANY($1::bigint[])"
            " AND held_at IS NOT NULL",
            order_ids,
        ) == len(order_ids)

    await until(all_held, timeout, what="held")


async def refunds(conn: asyncpg.Connection, order_id: int) -> list[int]:
    return [
        r[0]
        for r in await conn.fetch(
            "SELECT amount FROM ledger_entries WHERE order_id = $1 AND kind = 'refund'", order_id
        )
    ]


async def test_unknown_outcomes_are_held_for_the_operator_and_resolved_once(
    own_database_url: str,
) -> None:
    url = own_database_url
    async with rig(url, honours_idempotency=False) as r:
        conn, pool, sim = r.conn, r.pool, r.sim
        provider, service = r.provider, r.service
        sim.faults = LOST_AFTER
        found, failed = await place_many(pool, conn, provider, service, 2, users=1)
        await held(conn, [found, failed])
        sim.faults = LOST_BEFORE
        (missing,) = await place_many(pool, conn, provider, service, 1, users=1)
        await held(conn, [missing])
        sim.faults = Faults()
        (normal,) = await place_many(pool, conn, provider, service, 1, users=1)
        await wait_final(conn, [normal], timeout=15)
        # Never resent on their own, though the worker dispatched another order meanwhile.
        links = {
            o: await conn.fetchval("SELECT link FROM orders WHERE id = $1", o)
            for o in (found, failed, missing)
        }
        made = sim.book.creations_by_link()
        assert [made[links[o]] for o in (found, failed, missing)] == [1, 1, 0]

        listed = await asyncio.to_thread(cli, url, "order", "list", "--held")
        assert sorted(o["order"] for o in listed) == sorted([found, failed, missing])
        assert all("held for the operator" in o["held"] for o in listed)

        upstream = next(o.id for o in sim.book.orders.values() if o.link == links[found])
        done = await asyncio.to_thread(
            cli, url, "order", "attach", "--order", str(found), "--upstream-id", str(upstream)
        )
        assert done == {"order": found, "done": "attached"}
        assert (await asyncio.to_thread(cli, url, "order", "fail", "--order", str(failed)))[
            "done"
        ] == "failed"
        assert (await asyncio.to_thread(cli, url, "order", "resend", "--order", str(missing)))[
            "done"
        ] == "resent"
        again = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "panelsrv", "order", "fail", "--order", str(failed),
             "--database-url", url],
            capture_output=True, check=False,
        )  # fmt: skip
        assert again.returncode == 2 and b"no job held" in again.stderr

        await wait_final(conn, [found, missing], timeout=15)
        made = sim.book.creations_by_link()
        assert [made[links[o]] for o in (found, failed, missing)] == [1, 1, 1]
        status = {
            o: await conn.fetchval("SELECT status FROM orders WHERE id = $1", o)
            for o in (found, failed, missing)
        }
        assert status == {found: "Completed", failed: "Canceled", missing: "Completed"}
        charge = await conn.fetchval("SELECT charge FROM orders WHERE id = $1", failed)
        assert await refunds(conn, failed) == [charge]
        assert await refunds(conn, found) == [] and await refunds(conn, missing) == []
        assert (await ledger.audit(conn)).ok


async def test_a_provider_that_honours_the_key_gets_the_resend_and_makes_one_order(
    own_database_url: str,
) -> None:
    async with rig(own_database_url, honours_idempotency=True) as r:
        conn, pool, sim = r.conn, r.pool, r.sim
        provider, service = r.provider, r.service
        sim.faults = LOST_AFTER
        orders = await place_many(pool, conn, provider, service, 3, users=1)
        # each created, its answer lost
        await until(lambda: sim.counters["orders_created"] >= 3, 10)
        sim.faults = Faults()
        await wait_final(conn, orders, timeout=30, hurry=True)
        assert set(sim.book.creations_by_link().values()) == {1}
        assert sim.counters["idempotent_replays"] >= 3  # resent, answered from the key
        assert await conn.fetchval("SELECT count(*) FROM outbox WHERE held_at IS NOT NULL") == 0
        assert (await ledger.audit(conn)).ok
