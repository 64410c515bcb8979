"""A chain of panels: panelsrv B sells a service whose provider is panelsrv A (the real server,
as a reseller's upstream), and A's provider is the simulator. An order placed on B completes on
A, and its status comes back to B - each order created exactly once at each hop."""

from __future__ import annotations

from panelsrv.sim.provider import Simulator
from panelsrv.store import admin, db, ledger
from panelsrv.worker.main import Worker
from tests.e2e.served import World, call, offered
from tests.kit.stack import Served
from tests.store.helpers import unique
from tests.worker.flow import fast_settings, running, wait_final


async def test_order_on_b_completes_on_a_and_status_comes_back(own_database_url: str) -> None:
    database_url = own_database_url
    world = World(database_url)
    domain_a = await world.panel()
    reseller_id, reseller_key = await world.user(domain_a, balance="1000.00")
    domain_b = await world.panel()
    _, buyer_key = await world.user(domain_b, balance="100.00")
    async with Simulator(complete_after=1.0, partial_ratio=0.5, seed=11) as sim:
        conn = await db.connect(database_url)
        pool = await db.create_pool(database_url, 6)
        served = Served(database_url, workers=2, settings={"default_panel": domain_a}).start()
        try:
            # A sells the simulator's service 1 as its local 5; B sells A's 5 as its local 9.
            sim_provider = await admin.add_provider(conn, unique("sim"), sim.url, sim.key)
            await admin.add_service(
                conn,
                admin.ServiceSpec(
                    name="A followers",
                    type="default",
                    rate="0.50",
                    min=10,
                    max=10_000,
                    provider=str(sim_provider),
                    provider_service="1",
                    domain=domain_a,
                    local_id=5,
                ),
            )
            a_provider = await admin.add_provider(
                conn, unique("panel-a"), f"http://127.0.0.1:{served.port}/api/v2", reseller_key
            )
            await admin.add_service(
                conn,
                admin.ServiceSpec(
                    name="B followers",
                    type="default",
                    rate="0.80",
                    min=10,
                    max=10_000,
                    provider=str(a_provider),
                    provider_service="5",
                    domain=domain_b,
                    local_id=9,
                ),
            )
            await offered(served.port, domain_a, reseller_key, 5)
            await offered(served.port, domain_b, buyer_key, 9)

            orders = []
            for n in range(6):
                r = await call(
                    served.port,
                    {
                        "key": buyer_key,
                        "action": "add",
                        "service": 9,
                        "link": f"https://example.test/chain/{n}",
                        "quantity": 1000,
                    },
                    host=domain_b,
                )
                assert r.status == 200, r.body
                orders.append(r.json()["order"])
            worker = Worker(pool, fast_settings())
            task = await running(worker)
            try:
                await wait_final(conn, orders, timeout=60)
                upstream_of = {
                    r[0]: int(r[1])
                    for r in await conn.fetch(
                        "SELECT id, upstream_id FROM orders WHERE id = ANY($1::bigint[])", orders
                    )
                }
                upstream = [upstream_of[order] for order in orders]
                await wait_final(conn, upstream, timeout=30)
            finally:
                worker.stop()
                await task
            # Each order of B is exactly one order of the reseller on A, and one at the sim.
            on_a = await conn.fetch(
                "SELECT id, status, remains FROM orders WHERE user_id = $1", reseller_id
            )
            assert sorted(r["id"] for r in on_a) == sorted(upstream)
            assert sim.counters["orders_created"] == 6
            assert set(sim.book.creations_by_link().values()) == {1}
            # B's buyer sees what happened at the simulator, through A.
            for order, up in zip(orders, upstream, strict=True):
                b = (
                    await call(
                        served.port,
                        {"key": buyer_key, "action": "status", "order": order},
                        host=domain_b,
                    )
                ).json()
                a = (
                    await call(
                        served.port,
                        {"key": reseller_key, "action": "status", "order": up},
                        host=domain_a,
                    )
                ).json()
                assert (b["status"], b["remains"]) == (a["status"], a["remains"])
                assert b["status"] in ("Completed", "Partial")
            assert (await ledger.audit(conn)).ok
        finally:
            served.stop()
            await pool.close()
            await conn.close()
