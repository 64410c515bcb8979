"""Rate-limit tiers against `panelsrv serve --workers 2`: two users on different tiers are each
held to their own; a tier change through the command line reaches both processes within the
bound a price change or a revocation has (the catalog notification, listen.MAX_STALENESS); a
tier's order ceiling; and every refusal names the limit that was hit.

Each probe is a fresh connection, so SO_REUSEPORT spreads them over both processes (as in
test_revocation.py): twenty answers in a row from one process alone would happen once in 2**19
runs. The two processes share each tier's limit through the host's hub, so a tier of burst 3 is
held there within the tolerance any shared limit has (guard/coord.py, `excess_bound`), not to
exactly 3: the test counts within that bound. The tiny rate (a token per 1000 s) means nothing
refills while it runs.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator

import pytest

from panelsrv.guard.coord import excess_bound
from panelsrv.store.notifications import MAX_STALENESS
from tests.e2e.kit import cli
from tests.e2e.served import World, call, offered, visible
from tests.http.httpkit import Response
from tests.kit.stack import Served, served

PROBES = 20
ROUNDS = 3
TINY_RATE = 0.001
BURST = 3
SYNC = 0.1  # limit_sync_interval's default
LINK = "https://instagram.com/tiers"


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[Served]:
    with served(database_url, workers=2) as s:
        yield s


def tier(database_url: str, domain: str, name: str, rate: float, burst: int, *more: str) -> None:
    cli(database_url, "tier", "add", "--domain", domain, "--name", name, "--rate", str(rate),
        "--burst", str(burst), *more)  # fmt: skip


def user(database_url: str, domain: str, *more: str) -> str:
    """A user with a balance (and `more`, e.g. --tier NAME); their new key."""
    email = f"tier-{secrets.token_hex(4)}@example.test"
    cli(database_url, "user", "add", "--email", email, "--domain", domain, "--balance", "50",
        *more)  # fmt: skip
    return email


def key(database_url: str, email: str) -> str:
    return str(cli(database_url, "key", "create", "--email", email)["key"])


async def probe(server: Served, domain: str, key: str) -> list[Response]:
    return list(
        await asyncio.gather(
            *(
                call(server.port, {"key": key, "action": "balance"}, host=domain)
                for _ in range(PROBES)
            )
        )
    )


def refusal(name: str, rate: str, burst: int) -> dict[str, str]:
    return {"error": f"Too many requests: your tier '{name}' allows {rate} requests/s "
                     f"(burst {burst})"}  # fmt: skip


async def test_each_user_is_held_to_their_tier_and_a_change_reaches_both_processes(
    server: Served, database_url: str
) -> None:
    domain = await World(database_url).panel()
    tier(database_url, domain, "basic", TINY_RATE, BURST)
    tier(database_url, domain, "pro", 1000, 1000)
    basic = key(database_url, user(database_url, domain, "--tier", "basic"))
    pro_email = user(database_url, domain, "--tier", "pro")
    pro = key(database_url, pro_email)
    await visible(server.port, domain, pro)  # both processes know the panel

    admitted = 0
    for _ in range(ROUNDS):
        answers = await probe(server, domain, basic)
        admitted += sum(r.status == 200 for r in answers)
        for r in answers:
            if r.status != 200:
                assert r.status == 429 and r.json() == refusal("basic", "0.001", BURST), r
                assert int(r.headers["retry-after"]) >= 1
        # The other user's tier is not the first one's: never limited here.
        assert [r.status for r in await probe(server, domain, pro)] == [200] * PROBES
    assert BURST <= admitted <= BURST + excess_bound(2, TINY_RATE, BURST, SYNC)

    # The first tier raised: every process applies it within the bound of a price change.
    cli(database_url, "tier", "set", "--domain", domain, "--name", "basic", "--rate", "1000",
        "--burst", "1000")  # fmt: skip
    committed = time.monotonic()
    while (statuses := [r.status for r in await probe(server, domain, basic)]) != [200] * PROBES:
        assert time.monotonic() - committed < MAX_STALENESS, statuses
    took = time.monotonic() - committed
    print(f"\ntier raised on every process {took * 1000:.0f} ms after the CLI returned")
    assert [r.status for r in await probe(server, domain, basic)] == [200] * PROBES

    # The second user moved to a tiny tier: every process holds them to it within the bound.
    tier(database_url, domain, "tiny", TINY_RATE, 1)
    cli(database_url, "user", "set-tier", "--email", pro_email, "--tier", "tiny")
    committed = time.monotonic()
    while (statuses := [r.status for r in await probe(server, domain, pro)]) != [429] * PROBES:
        assert time.monotonic() - committed < MAX_STALENESS, statuses
    answers = await probe(server, domain, pro)
    assert [r.json() for r in answers] == [refusal("tiny", "0.001", 1)] * PROBES

    # And back on the server's per-user cap (generous in these tests): nothing is refused.
    cli(database_url, "user", "set-tier", "--email", pro_email, "--default")
    committed = time.monotonic()
    while (statuses := [r.status for r in await probe(server, domain, pro)]) != [200] * PROBES:
        assert time.monotonic() - committed < MAX_STALENESS, statuses


async def test_a_tiers_order_ceiling_is_its_own_and_named(
    server: Served, database_url: str
) -> None:
    world = World(database_url)
    domain = await world.panel()
    await world.service(domain, local_id=1, rate="0.10", min=100, max=100_000)
    tier(database_url, domain, "two", 1000, 1000, "--orders", "2")
    capped = key(database_url, user(database_url, domain, "--tier", "two"))
    free = key(database_url, user(database_url, domain))
    await offered(server.port, domain, free, 1)
    order = {"action": "add", "service": 1, "link": LINK, "quantity": 100}

    async def add(key: str) -> Response:
        return await call(server.port, {**order, "key": key}, host=domain)

    assert [(await add(capped)).status for _ in range(2)] == [200, 200]
    r = await add(capped)
    assert r.status == 429 and int(r.headers["retry-after"]) >= 1
    assert r.json() == {"error": "Too many requests: your tier 'two' allows 2 orders per minute"}
    # A user without a tier has the panel's ceiling (30 a minute): the third order is placed.
    assert [(await add(free)).status for _ in range(3)] == [200, 200, 200]
    placed = await asyncio.gather(*(add(capped) for _ in range(5)))
    assert {r.status for r in placed} == {429}  # on every process: the ceiling is the database's
