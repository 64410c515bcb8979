"""Rate-limit tiers in the database: what the operator may write, what the key cache's principal
carries (no lookup of its own), and the notification every process drops its principals on."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from panelsrv.panelconf import ORDER_CEILING
from panelsrv.store import admin, db, keys
from panelsrv.store.keycache import KeyCache
from panelsrv.store.notifications import CATALOG_CHANNEL
from tests.store.helpers import connect, new_panel, new_user, unique


async def test_add_set_list_and_assign(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        _, domain = await new_panel(conn)
        basic = await admin.add_tier(conn, domain, "basic", 5.0, 10)
        assert basic == {
            "tier": basic["tier"], "panel": domain, "name": "basic", "rate": 5.0, "burst": 10,
            "orders": ORDER_CEILING, "users": 0,
        }  # fmt: skip
        pro = await admin.add_tier(conn, domain, "pro", 50.0, 100, 20)
        user = await new_user(conn, domain)
        assert (await admin.set_user_tier(conn, user.email, "pro"))[1] == "pro"
        changed = await admin.set_tier(conn, domain, "pro", burst=200)
        assert changed == {**pro, "burst": 200, "users": 1}
        assert [t["name"] for t in await admin.list_tiers(conn, domain)] == ["basic", "pro"]
        assert (await admin.set_user_tier(conn, user.email, None))[1] is None
        assert await conn.fetchval("SELECT tier_id FROM users WHERE id = $1", user.id) is None
        other = await new_user(conn, domain)
        placed, _ = await admin.add_user(conn, unique("t") + "@x.test", domain, "0", "0", "basic")
        tier_of = "SELECT tier_id FROM users WHERE id = $1"
        assert await conn.fetchval(tier_of, placed.id) == basic["tier"]
        assert await conn.fetchval(tier_of, other.id) is None
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("rate", "burst", "orders", "rule"),
    [
        (0.0, 1, 30, "--rate 0: requests per second, above 0"),
        (float("inf"), 1, 30, "--rate inf"),
        (1.0, 0, 30, "--burst 0: between 1 and"),
        (1.0, 1, ORDER_CEILING + 1, "a tier may lower the ceiling of 30, never raise it"),
        (1.0, 1, -1, "--orders -1: between 0 and 30"),
    ],
)
async def test_bad_limits_are_refused_with_the_rule_and_write_nothing(
    database_url: str, rate: float, burst: int, orders: int, rule: str
) -> None:
    conn = await connect(database_url)
    try:
        _, domain = await new_panel(conn)
        with pytest.raises(admin.InputError, match=rule.replace("+", r"\+")):
            await admin.add_tier(conn, domain, "t", rate, burst, orders)
        await admin.add_tier(conn, domain, "t", 1.0, 1)
        with pytest.raises(admin.InputError, match=rule.replace("+", r"\+")):
            await admin.set_tier(conn, domain, "t", rate, burst, orders)
        listed = await admin.list_tiers(conn, domain)
        assert [(t["rate"], t["burst"], t["orders"]) for t in listed] == [(1.0, 1, 30)]
    finally:
        await conn.close()


async def test_names_and_panels_are_checked(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        _, domain = await new_panel(conn)
        _, elsewhere = await new_panel(conn)
        await admin.add_tier(conn, domain, "basic", 1.0, 1)
        with pytest.raises(admin.InputError, match="has a tier named 'basic' already"):
            await admin.add_tier(conn, domain, "basic", 2.0, 2)
        with pytest.raises(admin.InputError, match="tier name 'a b'"):
            await admin.add_tier(conn, domain, "a b", 1.0, 1)
        with pytest.raises(admin.InputError, match="nothing to change"):
            await admin.set_tier(conn, domain, "basic")
        with pytest.raises(admin.InputError, match="no tier 'gold'"):
            await admin.set_tier(conn, domain, "gold", 1.0)
        # A tier belongs to its panel: a user of another panel cannot be put on it.
        stranger = await new_user(conn, elsewhere)
        with pytest.raises(admin.InputError, match="no tier 'basic' on that panel"):
            await admin.set_user_tier(conn, stranger.email, "basic")
        tier_id = await conn.fetchval("SELECT id FROM tiers WHERE name = 'basic'"
                                      " AND panel_id = (SELECT id FROM panels WHERE domain = $1)",
                                      domain)  # fmt: skip
        with pytest.raises(asyncpg.ForeignKeyViolationError):  # and the schema says so too
            await conn.execute("UPDATE users SET tier_id = $2 WHERE id = $1", stranger.id, tier_id)
    finally:
        await conn.close()


async def test_the_principal_carries_the_tier(database_url: str) -> None:
    conn = await connect(database_url)
    pool = await db.create_pool(database_url, 1)
    try:
        _, domain = await new_panel(conn)
        user = await new_user(conn, domain)
        raw = (await keys.create(conn, user.id)).raw
        cache = KeyCache(pool, ttl=60, negative_ttl=5)
        cache.trust_until(float("inf"))
        principal = await cache.resolve(raw)
        assert principal is not None and principal.tier is None
        await admin.add_tier(conn, domain, "slow", 0.5, 3, 12)
        await admin.set_user_tier(conn, user.email, "slow")
        cache.clear()  # what the catalog notification does in every process
        principal = await cache.resolve(raw)
        assert principal is not None and principal.tier is not None
        tier = principal.tier
        assert (tier.name, tier.rate, tier.burst, tier.orders) == ("slow", 0.5, 3, 12)
        assert b"your tier 'slow' allows 0.5 requests/s (burst 3)" in tier.rate_body
        await admin.set_tier(conn, domain, "slow", rate=2.0)
        cache.clear()
        again = await cache.resolve(raw)
        assert again is not None and again.tier is not None
        assert again.tier.rate == 2.0 and again.tier.key != tier.key
    finally:
        await pool.close()
        await conn.close()


async def test_a_tier_change_notifies_like_a_price_change(database_url: str) -> None:
    conn = await connect(database_url)
    listener = await connect(database_url)
    heard: asyncio.Queue[str] = asyncio.Queue()
    try:
        await listener.add_listener(CATALOG_CHANNEL, lambda *a: heard.put_nowait(a[3]))
        _, domain = await new_panel(conn)
        user = await new_user(conn, domain)
        await listener.execute("SELECT 1")  # what was notified before has been delivered
        while not heard.empty():
            heard.get_nowait()
        await admin.add_tier(conn, domain, "basic", 1.0, 1)
        assert await asyncio.wait_for(heard.get(), 5) == "tiers"
        await admin.set_tier(conn, domain, "basic", 2.0)
        assert await asyncio.wait_for(heard.get(), 5) == "tiers"
        await admin.set_user_tier(conn, user.email, "basic")
        assert await asyncio.wait_for(heard.get(), 5) == "users"
    finally:
        await listener.close()
        await conn.close()
