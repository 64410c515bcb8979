"""Targeting fields of an `add` (`country`, `device`, ...) reach the provider with the order:
through a real `panelsrv serve`, the order worker and the simulated provider, which records
what it received. A name of this API, or one outside the rule, never gets there."""

from __future__ import annotations

import json

from panelsrv.sim.provider import Simulator
from panelsrv.store import admin, db
from panelsrv.worker.main import Worker
from tests.e2e.kit import sql_value, wallet_and_orders
from tests.e2e.served import World, call, offered
from tests.kit.stack import served
from tests.kit.waiting import until
from tests.store.helpers import unique
from tests.worker.flow import fast_settings, running

LOCAL = 41


async def test_targeting_fields_reach_the_provider_and_reserved_names_do_not(
    own_database_url: str,
) -> None:
    database_url = own_database_url
    world = World(database_url)
    domain = await world.panel()
    user_id, key = await world.user(domain, balance="100.00")
    async with Simulator(complete_after=60, seed=3) as sim:
        conn = await db.connect(database_url)
        pool = await db.create_pool(database_url, 4)
        try:
            provider = await admin.add_provider(conn, unique("sim"), sim.url, sim.key)
            await world.service(
                domain, rate="1.00", min=10, max=10_000, provider=str(provider),
                provider_service="1", local_id=LOCAL,
            )  # fmt: skip
            with served(database_url) as server:
                await offered(server.port, domain, key, LOCAL)
                order = {
                    "key": key, "action": "add", "service": LOCAL,
                    "link": "https://example.test/extras", "quantity": 100,
                }  # fmt: skip
                before = await wallet_and_orders(database_url, user_id)
                # A name of this API is no extra; nor is one outside the rule (which `key` or
                # `action` in another case or with a blank would be).
                for extra, message in (
                    ({"orders": "1"}, "orders: a field of this API but not of add"),
                    ({"url": "https://x"}, "url: a field of this API but not of add"),
                    ({"Key": sim.key}, "Key: not a field of add"),
                    ({"action ": "cancel"}, "action : not a field of add"),
                    ({"ACTION": "cancel"}, "ACTION: not a field of add"),
                ):
                    for encoding in ("form", "json"):
                        r = await call(server.port, order | extra, host=domain, encoding=encoding)
                        assert r.status == 400, r.body
                        assert r.json()["error"].startswith(message), r.body
                assert await wallet_and_orders(database_url, user_id) == before

                targeted = order | {"country": "us", "device": "mobile", "idempotency_key": "t1"}
                r = await call(server.port, targeted, host=domain)
                assert r.status == 200, r.body
                placed = r.json()["order"]
                # The extras are part of what the idempotency key stands for.
                r = await call(server.port, targeted, host=domain, encoding="json")
                assert (r.status, r.json()) == (200, {"order": placed})
                r = await call(server.port, targeted | {"country": "de"}, host=domain)
                assert (r.status, r.json()) == (
                    400, {"error": "idempotency_key: reused with different parameters"}
                )  # fmt: skip
                r = await call(
                    server.port, order | {"link": "https://example.test/json", "groups": 12},
                    host=domain, encoding="json",
                )  # fmt: skip
                assert r.status == 200, r.body
                placed_json = r.json()["order"]
            stored = await sql_value(
                database_url, "SELECT extras FROM orders WHERE id = $1", placed
            )
            assert json.loads(stored) == {"country": "us", "device": "mobile"}

            worker = Worker(pool, fast_settings())
            task = await running(worker)
            try:
                await until(lambda: sim.counters["orders_created"] >= 2, 20, what=sim.counters)
            finally:
                worker.stop()
                await task
            received = {o.link: o.received for o in sim.book.orders.values()}
            assert received["https://example.test/extras"] == {
                "action": "add", "service": "1", "link": "https://example.test/extras",
                "quantity": "100", "country": "us", "device": "mobile",
            }  # fmt: skip
            assert received["https://example.test/json"]["groups"] == "12"
            assert sim.counters["action.add"] == 2  # nothing else was ever sent
            assert placed_json != placed
        finally:
            await pool.close()
            await conn.close()
