"""Webhooks end to end: registered through the API, signed events for an order's lifecycle,
retried while the receiver fails, delivered after it recovers, deduplicable on the event id."""

from __future__ import annotations

import hashlib
import hmac
import time

import orjson
from aiohttp import web

from panelsrv.sim.provider import Simulator
from panelsrv.store import admin, db
from panelsrv.worker.main import Worker
from tests.e2e.served import World, call, offered
from tests.kit.stack import Served
from tests.kit.waiting import until
from tests.store.helpers import unique
from tests.worker.flow import fast_settings, running, wait_final


class Receiver:
    def __init__(self) -> None:
        self.events: list[dict] = []
        self.attempts = 0
        self.failing = False
        self.secret = ""
        self.bad_signatures = 0

    async def hook(self, request: web.Request) -> web.Response:
        self.attempts += 1
        body = await request.read()
        if self.failing:
            return web.Response(status=500)
        parts = dict(p.split("=", 1) for p in request.headers["X-Panel-Signature"].split(","))
        expected = hmac.new(
            self.secret.encode(), parts["t"].encode() + b"." + body, hashlib.sha256
        ).hexdigest()
        if (
            not hmac.compare_digest(expected, parts["v1"])
            or abs(time.time() - int(parts["t"])) > 300
        ):
            self.bad_signatures += 1
            return web.Response(status=400)
        self.events.append(orjson.loads(body))
        return web.Response(status=204)


async def test_signed_events_retried_until_the_receiver_recovers(own_database_url: str) -> None:
    database_url = own_database_url
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    world = World(database_url)
    domain = await world.panel()
    _, key = await world.user(domain, balance="50.00")
    settings = {"webhook_allow_http": "true", "webhook_allow_private": "true"}
    async with Simulator(complete_after=1.5, partial_ratio=0, seed=5) as sim:
        conn = await db.connect(database_url)
        pool = await db.create_pool(database_url, 4)
        served = Served(database_url, settings=settings).start()
        try:
            provider = await admin.add_provider(conn, unique("sim"), sim.url, sim.key)
            await admin.add_service(
                conn,
                admin.ServiceSpec(
                    name="followers",
                    type="default",
                    rate="1.00",
                    min=10,
                    max=10_000,
                    provider=str(provider),
                    provider_service="1",
                    domain=domain,
                    local_id=3,
                ),
            )
            await offered(served.port, domain, key, 3)
            r = await call(
                served.port,
                {
                    "key": key,
                    "action": "webhook_add",
                    "url": f"http://127.0.0.1:{port}/hook",
                    "events": "order.status",
                },
                host=domain,
            )
            assert r.status == 200, r.body
            receiver.secret = r.json()["secret"]
            assert receiver.secret.startswith("whsec_")
            listed = (
                await call(served.port, {"key": key, "action": "webhooks"}, host=domain)
            ).json()
            assert listed == [
                {
                    "webhook": r.json()["webhook"],
                    "events": ["order.status"],
                    "url": f"http://127.0.0.1:{port}/hook",
                    "active": True,
                }
            ]
            receiver.failing = True
            r = await call(
                served.port,
                {
                    "key": key,
                    "action": "add",
                    "service": 3,
                    "link": "https://example.test/hooked",
                    "quantity": 100,
                },
                host=domain,
            )
            assert r.status == 200, r.body
            order = r.json()["order"]
            worker = Worker(pool, fast_settings())
            task = await running(worker)
            try:
                await wait_final(conn, [order], timeout=30)
                await until(lambda: receiver.attempts > 0, 30, what="a delivery attempted")
                assert receiver.events == []  # failing: retried
                receiver.failing = False

                async def completed() -> bool:
                    if any(e["data"]["status"] == "Completed" for e in receiver.events):
                        return True
                    # The backoff after failures is seconds to minutes; bring it forward.
                    await conn.execute(
                        "UPDATE webhook_deliveries SET run_after = now()"
                        " WHERE delivered_at IS NULL AND run_after > now()"
                    )
                    return False

                await until(completed, 30, interval=0.1, what=receiver.events)
            finally:
                worker.stop()
                await task
            assert receiver.bad_signatures == 0
            ids = [e["id"] for e in receiver.events]
            assert len(set(ids)) == len(ids)  # each event once here (at-least-once in general)
            statuses = [e["data"]["status"] for e in receiver.events]
            # One event per status change, forward only (Pending -> In progress -> Completed).
            assert "Completed" in statuses and len(set(statuses)) == len(statuses)
            assert set(statuses) <= {"In progress", "Completed"}
            completed = next(e for e in receiver.events if e["data"]["status"] == "Completed")
            assert completed["type"] == "order.status"
            assert completed["data"] == {
                "order": order,
                "status": "Completed",
                "charge": "0.10",
                "start_count": completed["data"]["start_count"],
                "remains": "0",
                "currency": "USD",
            }
            deleted = await call(
                served.port,
                {"key": key, "action": "webhook_delete", "webhook": listed[0]["webhook"]},
                host=domain,
            )
            assert deleted.json() == {"deleted": 1}
        finally:
            served.stop()
            await pool.close()
            await conn.close()
            await runner.cleanup()
