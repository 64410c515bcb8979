"""Key revocation reaches every worker process's key cache, and a lost listener drops it whole.

Each worker process caches keys and listens on PostgreSQL (LISTEN panelsrv_keys) for
revocations. The server's listener connections are the ones named `panelsrv-listen` in this
run's database (its pools are named `panelsrv`).
"""

from __future__ import annotations

from panelsrv.store import db, keys
from tests.e2e.kit import sql
from tests.e2e.served import World, customer, visible
from tests.kit.waiting import until
from tests.kit.wire import exchange, post
from tests.limits.conftest import HubServer

LISTENERS = """
SELECT pid FROM pg_stat_activity
 WHERE application_name = 'panelsrv-listen' AND datname = current_database() ORDER BY pid
"""
# Revoke without the trigger's NOTIFY: what a notification lost in transit would look like.
REVOKE_SILENTLY = """
UPDATE api_keys SET revoked_at = now() WHERE prefix = $1
"""
SPREAD = 12  # fresh connections per check: every worker process answers some of them
SOURCE = "127.0.0.20"  # allow-listed: the refused key's strikes must not block it
PACE = 0.15  # seconds between checks: SPREAD requests per PACE stays under 100 req/s


async def statuses(port: int, domain: str, key: str) -> set[int]:
    request = post({"key": key, "action": "balance"}, host=domain)
    return {(await exchange(port, request, source=SOURCE)).status for _ in range(SPREAD)}


async def refused_everywhere(port: int, domain: str, key: str, within: float) -> None:
    """Every process refuses the key (401) within `within` seconds. Checks are paced below
    the address's own rate limit, so a 429 never hides the answer."""

    async def refused() -> bool:
        seen = await statuses(port, domain, key)
        assert 429 not in seen, seen
        return seen == {401}

    await until(refused, within, interval=PACE, what="the key refused by every process")


async def listeners(database_url: str) -> list[int]:
    return [row[0] for row in await sql(database_url, LISTENERS)]


async def revoke(database_url: str, key: str, *, silently: bool = False) -> None:
    conn = await db.connect(database_url)
    try:
        if silently:
            async with conn.transaction():
                await conn.execute("SET LOCAL session_replication_role = replica")  # no triggers
                await conn.execute(REVOKE_SILENTLY, key[: keys.DISPLAY_PREFIX_LENGTH])
        else:
            await keys.revoke(conn, key[: keys.DISPLAY_PREFIX_LENGTH])
    finally:
        await conn.close()


async def test_a_revocation_reaches_every_process_at_once(
    hub_server: HubServer, database_url: str
) -> None:
    domain, key = await customer(hub_server.port, database_url)
    assert await statuses(hub_server.port, domain, key) == {200}  # cached everywhere
    await revoke(database_url, key)
    await refused_everywhere(hub_server.port, domain, key, 0.5)


async def test_a_lost_listener_drops_the_whole_cache_and_reconnects(
    hub_server: HubServer, database_url: str
) -> None:
    world = World(database_url)
    domain = await world.panel()
    _, key = await world.user(domain)
    _, other = await world.user(domain)
    await visible(hub_server.port, domain, key)
    before = await listeners(database_url)
    assert len(before) == 2  # one per worker process
    assert await statuses(hub_server.port, domain, key) == {200}
    await revoke(database_url, key, silently=True)
    # Nothing told the processes: their caches still hold the key (within key_cache_ttl).
    assert await statuses(hub_server.port, domain, key) == {200}

    rows = await sql(
        database_url, "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) pid", before
    )
    assert [row[0] for row in rows] == [True, True]
    # Every process dropped its whole cache: the key is looked up again, and refused.
    await refused_everywhere(hub_server.port, domain, key, 1.0)
    assert await statuses(hub_server.port, domain, other) == {200}  # still answering

    async def reconnected() -> bool:
        now = await listeners(database_url)
        return len(now) == 2 and not set(now) & set(before)

    await until(reconnected, 5.0)
    # Listening again: a revocation through the ordinary path reaches every process.
    await visible(hub_server.port, domain, other)
    await revoke(database_url, other)
    await refused_everywhere(hub_server.port, domain, other, 0.5)
