"""Two `panelsrv serve` instances (two ports, as two hosts) sharing their limits through Redis.

They reach Redis through a loopback proxy this test owns (tests/guard/guardnet.Proxy); cutting
it is the outage. The machine's Redis is never stopped. Tolerance as in test_ip_limits: P = 2
processes, so one second of flood admits at most r + b + excess_bound(2, r, b, D).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import pytest

from panelsrv.guard.coord import excess_bound
from tests.e2e.served import World, offered
from tests.guard.guardnet import Proxy
from tests.kit.redis import drop_prefix
from tests.kit.stack import Served
from tests.kit.waiting import until
from tests.kit.wire import post
from tests.limits.limitkit import flood, place, scrape, shared

RATE = BURST = 100
INTERVAL = 0.1
BACKOFF_CAP = 5.0  # guard/sync.py: the longest pause between attempts to reach the backend


@asynccontextmanager
async def two_hosts(database_url: str, redis_url: str, proxy: Proxy) -> AsyncIterator[list[Served]]:
    prefix = f"panelsrv-limits-{secrets.token_hex(6)}"
    target = urlsplit(redis_url)
    proxied = redis_url.replace(target.netloc, f"127.0.0.1:{proxy.port}")
    settings = {
        "redis_url": proxied,
        "redis_prefix": prefix,
        "ip_rate": str(RATE),
        "ip_burst": str(BURST),
        "limit_sync_interval": str(INTERVAL),
    }
    hosts = [Served(database_url, workers=1, settings=settings) for _ in range(2)]
    # Started off the loop: the proxy they sync through runs on it.
    await asyncio.gather(*(asyncio.to_thread(host.start) for host in hosts))
    try:
        yield hosts
    finally:
        await asyncio.gather(*(asyncio.to_thread(host.stop) for host in hosts))
        await drop_prefix(redis_url, prefix)


async def test_two_hosts_share_the_ip_limit_survive_a_redis_outage_and_recover(
    database_url: str, redis_url: str, capfd: pytest.CaptureFixture[str]
) -> None:
    target = urlsplit(redis_url)
    proxy = Proxy(target.hostname or "127.0.0.1", target.port or 6379)
    await proxy.start()
    try:
        async with two_hosts(database_url, redis_url, proxy) as hosts:
            ports = [host.port for host in hosts]
            world = World(database_url)
            domain = await world.panel()
            _, key = await world.user(domain, balance="100.00")
            await world.service(domain, local_id=5, rate="1.00", min=10, max=1000)
            for port in ports:
                await offered(port, domain, key, 5)

            async def pair_shared() -> bool:
                return all([await shared(host.ops_port, 1, 2) for host in hosts])

            await until(pair_shared, 5.0)
            balance = post({"key": key, "action": "balance"}, host=domain)
            tally = await flood(ports, balance, 1000, 1.0, source="127.0.0.2")
            ok = tally.statuses[200]
            bound = RATE * tally.elapsed + BURST + excess_bound(2, RATE, BURST, INTERVAL)
            assert tally.lost == 0 and not tally.problems, tally
            assert RATE <= ok <= bound, (ok, bound, tally.elapsed)

            capfd.readouterr()
            await proxy.cut()  # Redis unreachable from both hosts

            async def both_local() -> bool:
                return all(
                    [(await scrape(h.ops_port))["panelsrv_guard_shared_up"] == 0 for h in hosts]
                )

            await until(both_local, 3.0)
            # Still answering, each host on its own state: at most the whole limit each.
            tally = await flood(ports, balance, 300, 0.5, source="127.0.0.5")
            assert tally.lost == 0 and not tally.problems, tally
            assert tally.answered == 300 and set(tally.statuses) <= {200, 429}
            assert tally.statuses[200] <= 2 * (RATE * tally.elapsed + BURST)
            # The order ceiling lives in PostgreSQL: exact across the hosts, Redis or not.
            for n in range(30):
                status, body = await place(ports[n % 2], domain, key, 5, "127.0.0.7")
                assert status == 200, (n, body)
            assert (await place(ports[1], domain, key, 5, "127.0.0.7"))[0] == 429
            assert (await place(ports[0], domain, key, 5, "127.0.0.7"))[0] == 429
            log = capfd.readouterr().err
            assert log.count("limits backend unavailable") == 2, log  # once per process

            await proxy.start()  # Redis back: both hosts rejoin by themselves
            await until(pair_shared, BACKOFF_CAP + 3.0)
            log = capfd.readouterr().err
            assert log.count("limits backend available again after") == 2, log
            tally = await flood(ports, balance, 500, 0.5, source="127.0.0.6")
            ok = tally.statuses[200]
            assert ok <= RATE * tally.elapsed + BURST + excess_bound(2, RATE, BURST, INTERVAL)
    finally:
        await proxy.cut()
