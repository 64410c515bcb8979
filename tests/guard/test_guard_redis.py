"""The guard shared through real Redis: two engines as two hosts, strike propagation, outages.

Each test uses its own key prefix and deletes its keys. Redis itself is never stopped: the
outage test reaches Redis through a loopback proxy it cuts and restores.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

from panelsrv.guard import Guard, GuardSettings
from panelsrv.guard.coord import excess_bound
from panelsrv.guard.shared import RedisBackend
from tests.guard.guardnet import Proxy, paced_flood
from tests.http.httpkit import free_port
from tests.kit.redis import drop_prefix
from tests.kit.waiting import until

INTERVAL = 0.1


@asynccontextmanager
async def hosts(
    urls: list[str], settings: GuardSettings, cleanup_url: str
) -> AsyncIterator[tuple[list[Guard], Callable[[], bool]]]:
    prefix = f"panelsrv-test-{secrets.token_hex(6)}"
    guards = [Guard(settings, pid=f"host{i}") for i in range(len(urls))]
    for guard, url in zip(guards, urls, strict=True):
        guard.start(RedisBackend(url, prefix, timeout=settings.sync_timeout))

    def ready() -> bool:
        return all(g.shared and g.coord.ip.procs == len(guards) for g in guards)

    try:
        yield guards, ready
    finally:
        for guard in guards:
            await guard.close()
        await drop_prefix(cleanup_url, prefix)


async def test_two_hosts_admit_one_ip_within_limit_plus_burst_plus_tolerance(
    redis_url: str,
) -> None:
    settings = GuardSettings(sync_interval=INTERVAL)
    async with hosts([redis_url, redis_url], settings, redis_url) as (guards, ready):
        await until(ready, 3.0)
        admitted, elapsed = await paced_flood(guards, "203.0.113.9", 1000, 1.0)
    r, b = settings.ip_rate, settings.ip_burst
    assert admitted <= r * elapsed + b + excess_bound(2, r, b, INTERVAL)
    assert admitted >= r * 1.0  # the pair is not starved either


async def test_a_strike_storm_on_one_host_blocks_the_ip_on_the_other(redis_url: str) -> None:
    settings = GuardSettings(sync_interval=INTERVAL, block_seconds=30)
    async with hosts([redis_url, redis_url], settings, redis_url) as (guards, ready):
        await until(ready, 3.0)
        a, b = guards
        for _ in range(settings.strike_limit):
            a.strike("198.51.100.7")
        assert a.check_ip("198.51.100.7") < 0  # blocked locally at once
        took = await until(lambda: b.check_block("198.51.100.7") > 0, 2.0)
        # Reported at A's next sync, heard at B's next: 2 intervals + 2 round trips, plus slack
        # for a loaded test machine.
        assert took <= 2 * INTERVAL + 0.3
        assert b.check_ip("198.51.100.7") == -30


async def test_strikes_split_over_two_hosts_add_up(redis_url: str) -> None:
    settings = GuardSettings(sync_interval=INTERVAL)
    async with hosts([redis_url, redis_url], settings, redis_url) as (guards, ready):
        await until(ready, 3.0)
        for i in range(settings.strike_limit):
            guards[i % 2].strike("198.51.100.8")
        assert guards[0].check_block("198.51.100.8") == 0  # 5 each: no local block
        await until(lambda: all(g.check_block("198.51.100.8") for g in guards), 1.0)


async def test_redis_unreachable_means_local_limits_kept_blocks_and_recovery(
    redis_url: str, caplog
) -> None:
    target = urlsplit(redis_url)
    proxy = Proxy(target.hostname or "127.0.0.1", target.port or 6379)
    await proxy.start()
    proxied = redis_url.replace(target.netloc, f"127.0.0.1:{proxy.port}")
    settings = GuardSettings(sync_interval=INTERVAL, sync_timeout=0.3, ip_rate=50, ip_burst=50)
    try:
        async with hosts([proxied, redis_url], settings, redis_url) as (guards, ready):
            a, b = guards
            await until(ready, 3.0)
            for _ in range(settings.strike_limit):
                b.strike("192.0.2.66")
            await until(lambda: a.check_block("192.0.2.66") > 0, 1.0)

            caplog.set_level(logging.WARNING, logger="panelsrv.guard")
            await proxy.cut()
            await until(lambda: not a.shared, 2.0)
            assert a.metrics()["guard_shared_up"] == 0.0
            # Requests keep being answered on local state: this process alone gives the burst.
            assert sum(a.check_ip("192.0.2.10") == 0 for _ in range(80)) == 50
            assert a.check_ip("192.0.2.66") < 0  # the known block stays in force
            await until(lambda: a._syncer._failures >= 3, 3.0)  # several failed attempts
            down = [r for r in caplog.records if "unavailable" in r.getMessage()]
            assert len(down) == 1  # logged once, on the transition

            await proxy.start()  # Redis reachable again: recovery is automatic
            await until(lambda: a.shared and a.coord.ip.procs == 2, 3.0)
            assert any("available again after" in r.getMessage() for r in caplog.records)
            admitted, elapsed = await paced_flood(guards, "192.0.2.20", 400, 1.0)
            r, burst = settings.ip_rate, settings.ip_burst
            assert admitted <= r * elapsed + burst + excess_bound(2, r, burst, INTERVAL)
    finally:
        await proxy.cut()


async def test_an_unreachable_redis_at_start_keeps_the_server_answering() -> None:
    unused_port = free_port()
    settings = GuardSettings(sync_interval=INTERVAL, sync_timeout=0.2)
    guard = Guard(settings)
    guard.start(RedisBackend(f"redis://127.0.0.1:{unused_port}/0", "x", timeout=0.2))
    try:
        await until(lambda: guard._syncer._failures >= 1, 2.0)
        assert not guard.shared
        assert sum(guard.check_ip("192.0.2.1") == 0 for _ in range(150)) == 100
    finally:
        await guard.close()
