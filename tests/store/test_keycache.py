"""The key cache against real PostgreSQL: hits, revocation, and what a lookup that was in flight
when a revocation (or a price change) arrived may keep."""

from __future__ import annotations

import asyncio

from panelsrv.store import db, keys
from panelsrv.store.keycache import KeyCache
from tests.kit.waiting import until
from tests.store.helpers import connect, new_panel, new_user


async def _user_key(url: str) -> tuple[int, str]:
    conn = await connect(url)
    try:
        _, domain = await new_panel(conn)
        user = await new_user(conn, domain)
        return user.id, (await keys.create(conn, user.id)).raw
    finally:
        await conn.close()


async def test_hits_and_revocation(database_url: str) -> None:
    user, raw = await _user_key(database_url)
    pool = await db.create_pool(database_url, 2)
    try:
        cache = KeyCache(pool, ttl=60, negative_ttl=5)
        cache.trust_until(float("inf"))
        assert cache.cached(raw) == (False, None)
        principal = await cache.resolve(raw)
        assert principal is not None and principal.user_id == user
        assert cache.cached(raw) == (True, principal)
        cache.revoke(principal.digest_hex)
        assert cache.cached(raw) == (False, None)
        # A string that cannot be a key is known absent at once: no lookup, no task.
        assert cache.cached("psk_" + "x" * 47) == (True, None)
        assert cache.cached(raw[:-1] + ("A" if raw[-1] != "A" else "B")) == (True, None)
        assert await cache.resolve("psk_" + "x" * 47) is None
    finally:
        await pool.close()


async def _blocked_lookup(database_url: str, invalidate: str) -> tuple[bool, object]:
    """Resolve a key while its lookup is held up (a table lock in another transaction), let
    `invalidate` happen meanwhile - as a NOTIFY can overtake the lookup's answer - then report
    what the cache kept."""
    _, raw = await _user_key(database_url)
    pool = await db.create_pool(database_url, 1)
    locker = await connect(database_url)
    try:
        cache = KeyCache(pool, ttl=60, negative_ttl=5)
        cache.trust_until(float("inf"))
        async with locker.transaction():
            await locker.execute("LOCK TABLE user_rates IN ACCESS EXCLUSIVE MODE")
            task = asyncio.get_running_loop().create_task(cache.resolve(raw))

            async def waiting() -> bool:  # the lookup waits for the lock
                return bool(await locker.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database() AND pid <> pg_backend_pid()"
                ))  # fmt: skip

            await until(waiting)
            if invalidate == "revoke":
                cache.revoke(keys.digest(raw).hex())
            else:
                cache.clear()
        principal = await task
        assert principal is not None  # the request in flight completes normally
        return cache.cached(raw)
    finally:
        await locker.close()
        await pool.close()


async def test_a_lookup_overtaken_by_a_revocation_is_not_cached(database_url: str) -> None:
    assert await _blocked_lookup(database_url, "revoke") == (False, None)


async def test_a_lookup_overtaken_by_a_price_change_is_not_cached(database_url: str) -> None:
    assert await _blocked_lookup(database_url, "clear") == (False, None)


async def test_a_principal_carries_its_keys_allowed_networks_and_admits_only_from_them(
    database_url: str,
) -> None:
    _, raw = await _user_key(database_url)
    _, anywhere = await _user_key(database_url)
    conn = await connect(database_url)
    pool = await db.create_pool(database_url, 2)
    try:
        await conn.execute(
            "UPDATE api_keys SET allowed_ips = $1 WHERE hash = $2",
            ["198.51.100.0/24", "2001:db8::/32", "192.0.2.7/32"], keys.digest(raw),
        )  # fmt: skip
        cache = KeyCache(pool, ttl=60, negative_ttl=5)
        principal = await cache.resolve(raw)
        assert principal is not None
        assert [str(net) for net in principal.allowed] == [
            "198.51.100.0/24", "2001:db8::/32", "192.0.2.7/32"
        ]  # fmt: skip
        for inside in ("198.51.100.1", "198.51.100.255", "2001:db8::5", "192.0.2.7"):
            assert principal.admits(inside), inside
        for outside in ("198.51.101.1", "192.0.2.8", "2001:db9::1", "", "not-an-address"):
            assert not principal.admits(outside), outside
        free = await cache.resolve(anywhere)  # no list: any address, nothing parsed
        assert free is not None and free.allowed == () and free.admits("not-an-address")
    finally:
        await pool.close()
        await conn.close()
