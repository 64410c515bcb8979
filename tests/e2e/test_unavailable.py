"""PostgreSQL going away under a running server: 503 with Retry-After (never a 500, nothing
internal), /readyz says so, and the server recovers on its own when the database is back."""

from __future__ import annotations

import asyncio

from tests.e2e.served import World, call, visible
from tests.guard.guardnet import Proxy
from tests.http.httpkit import Client
from tests.kit.stack import Served
from tests.kit.waiting import until


async def readyz(port: int) -> int:
    client = await Client.connect(port)
    try:
        await client.send(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        response = await client.final(timeout=10)
        assert response is not None
        return response.status
    finally:
        await client.close()


async def test_database_outage_is_503_then_recovers(database_url: str) -> None:
    proxy, through = Proxy.for_database(database_url)
    await proxy.start()
    proxied = through()
    world = World(database_url)
    domain = await world.panel()
    _, key = await world.user(domain, balance="3.00")
    served = Served(proxied, settings={"pool_size": "2"})
    await asyncio.to_thread(served.start)  # the proxy answers on this loop meanwhile
    try:
        await visible(served.port, domain, key)
        await proxy.cut()
        r = await call(served.port, {"key": key, "action": "balance"}, host=domain)
        assert (r.status, r.json()) == (503, {"error": "Service unavailable"})
        assert int(r.headers["retry-after"]) >= 1
        assert await readyz(served.ops_port) == 503
        await proxy.start()
        answers = []

        async def back() -> bool:
            answers.append(await call(served.port, {"key": key, "action": "balance"}, host=domain))
            assert answers[-1].status in (200, 503), answers[-1]
            return answers[-1].status == 200

        await until(back, 10, interval=0.05, what="served again")
        assert answers[-1].json() == {"balance": "3.00", "currency": "USD"}
        assert await readyz(served.ops_port) == 200
    finally:
        await asyncio.to_thread(served.stop)
        await proxy.cut()
