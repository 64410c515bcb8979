"""Per-user limits end to end: the order-placement ceiling (PostgreSQL, exact) and the soft cap.

Adds go out on a fresh connection each, so both worker processes place some of them; the
ceiling lives in the statement that debits the wallet, so it is exact whatever the process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from panelsrv.guard.coord import excess_bound
from tests.conftest import run_async
from tests.e2e.kit import sql
from tests.e2e.served import World, offered
from tests.kit.stack import Served
from tests.kit.waiting import until
from tests.kit.wire import exchange, post
from tests.limits.conftest import SYNC_INTERVAL, HubServer
from tests.limits.limitkit import all_grew, place, refusal_problems, served_by_each, shared

COUNT_ORDERS = "SELECT count(*) FROM orders WHERE user_id = $1"


@pytest.mark.parametrize(
    ("setting", "allowed", "source"),
    [(None, 30, "127.0.0.10"), (5, 5, "127.0.0.11"), (50, 30, "127.0.0.12")],
)
async def test_the_order_after_the_ceiling_is_refused_across_processes(
    hub_server: HubServer, database_url: str, setting: int | None, allowed: int, source: str
) -> None:
    world = World(database_url)
    settings = {} if setting is None else {"sec_order_max_per_min": str(setting)}
    domain = await world.panel(settings)
    user, key = await world.user(domain, balance="100.00")
    await world.service(domain, local_id=3, rate="1.00", min=10, max=1000)
    await offered(hub_server.port, domain, key, 3)
    before = served_by_each(hub_server.run_dir, "add")
    for n in range(1, allowed + 1):
        status, body = await place(hub_server.port, domain, key, 3, source)
        assert status == 200, (n, body)
    status, body = await place(hub_server.port, domain, key, 3, source)
    assert (status, body) == (
        429, {"error": f"Too many requests: at most {allowed} orders per minute on this panel"}
    )  # fmt: skip
    (count,) = (await sql(database_url, COUNT_ORDERS, user))[0]
    assert count == allowed
    if setting is None:
        # both workers took part (each publishes its metrics about once a second)
        await until(lambda: all_grew(hub_server.run_dir, "add", before, len(before)), 3.0)


async def test_concurrent_adds_stop_exactly_at_the_ceiling(
    hub_server: HubServer, database_url: str
) -> None:
    world = World(database_url)
    domain = await world.panel()
    user, key = await world.user(domain, balance="100.00")
    await world.service(domain, local_id=4, rate="1.00", min=10, max=1000)
    await offered(hub_server.port, domain, key, 4)
    source = "127.0.0.13"
    results = await asyncio.gather(
        *(place(hub_server.port, domain, key, 4, source) for _ in range(40))
    )
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] * 30 + [429] * 10
    assert (await sql(database_url, COUNT_ORDERS, user))[0][0] == 30


USER_RATE = USER_BURST = 5


@pytest.fixture(scope="module")
def capped(database_url: str) -> Iterator[tuple[Served, str, str, str]]:
    """(server, panel domain, a user's key, another user's key). The panel exists before the
    server starts: waiting for a new panel to become visible would spend the users' caps."""

    async def make() -> tuple[str, str, str]:
        world = World(database_url)
        domain = await world.panel()
        return domain, (await world.user(domain))[1], (await world.user(domain))[1]

    domain, key, other_key = run_async(make())
    settings = {"user_rate": str(USER_RATE), "user_burst": str(USER_BURST)}
    with Served(database_url, workers=2, settings=settings) as served:
        yield served, domain, key, other_key


async def test_the_per_user_soft_cap_answers_429_over_it(
    capped: tuple[Served, str, str, str],
) -> None:
    server, domain, key, other_key = capped
    port = server.port
    await until(lambda: shared(server.ops_port, 2, 2), 3.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    statuses = []
    for i in range(40):  # 40 requests paced over one second, spread over both processes
        await asyncio.sleep(max(0.0, started + i / 40 - loop.time()))
        r = await exchange(port, post({"key": key, "action": "balance"}, host=domain))
        if r.status == 429:
            assert not refusal_problems(r, closes=False), r
        statuses.append(r.status)
    elapsed = loop.time() - started
    ok = statuses.count(200)
    bound = USER_RATE * elapsed + USER_BURST + excess_bound(2, USER_RATE, USER_BURST, SYNC_INTERVAL)
    assert set(statuses) <= {200, 429}
    assert USER_BURST <= ok <= bound, (ok, bound, statuses)
    for _ in range(USER_BURST // 2):  # another user of the same panel and address: its own cap
        r = await exchange(port, post({"key": other_key, "action": "balance"}, host=domain))
        assert r.status == 200, r
