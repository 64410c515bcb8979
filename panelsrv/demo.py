"""Demo data for `panelsrv run`: a panel, a funded user, services, and a fresh key each run.

Imports the store only. Seeding happens once, on an empty database; the demo key is recreated
on every run (the raw key is shown once, so the only way to show one is to make one).
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from panelsrv.store import admin, keys

DEMO_DOMAIN = "localhost"
DEMO_EMAIL = "demo@panelsrv.localhost"
DEMO_PROVIDER = "simulator"

# (name, type, category, rate, min, max, dripfeed, refill, cancel, avg_time)
DEMO_SERVICES = (
    (
        "Instagram Followers — High Quality",
        "default",
        "Instagram",
        "0.45",
        100,
        100_000,
        True,
        True,
        True,
        3600,
    ),
    ("Instagram Likes", "default", "Instagram", "0.12", 50, 50_000, True, False, True, 600),
    ("YouTube Views", "default", "YouTube", "1.10", 500, 1_000_000, True, True, False, 7200),
    (
        "Instagram Custom Comments",
        "Custom Comments",
        "Instagram",
        "8.00",
        5,
        500,
        False,
        False,
        False,
        3600,
    ),
    ("Telegram Channel Package", "Package", "Telegram", "4.99", 1, 1, False, False, False, 86400),
    (
        "Instagram Auto Likes (subscription)",
        "Subscriptions",
        "Instagram",
        "0.15",
        50,
        10_000,
        False,
        False,
        False,
        600,
    ),
    ("Twitter Poll Votes", "Poll", "Twitter", "2.50", 100, 20_000, False, False, True, 1800),
)


@dataclass(frozen=True, slots=True)
class Demo:
    domain: str
    email: str
    key: str
    seeded: bool


async def ensure(
    conn: asyncpg.Connection, provider_url: str | None = None, provider_key: str | None = None
) -> Demo:
    """Seed the demo data when the database has no panel yet; always issue a fresh demo key."""
    seeded = await conn.fetchval("SELECT count(*) FROM panels") == 0
    if seeded:
        await admin.add_panel(conn, DEMO_DOMAIN, "USD")
        await admin.add_user(conn, DEMO_EMAIL, DEMO_DOMAIN, "100.00", "0")
        provider = None
        if provider_url and provider_key:
            await admin.add_provider(conn, DEMO_PROVIDER, provider_url, provider_key)
            provider = DEMO_PROVIDER
        for local_id, (name, type_, category, rate, lo, hi, drip, refill, cancel, avg) in enumerate(
            DEMO_SERVICES, start=1
        ):
            await admin.add_service(
                conn,
                admin.ServiceSpec(
                    name=name,
                    type=type_,
                    category=category,
                    rate=rate,
                    min=lo,
                    max=hi,
                    dripfeed=drip,
                    refill=refill,
                    cancel=cancel,
                    avg_time=avg,
                    provider=provider,
                    provider_service=str(local_id) if provider else None,
                    domain=DEMO_DOMAIN,
                    local_id=local_id,
                ),
            )
    user = await admin.user_by_email(conn, DEMO_EMAIL)
    for old in await keys.list_keys(conn, user.id):
        if old.revoked is None:
            await keys.revoke(conn, old.prefix)
    new = await keys.create(conn, user.id)
    return Demo(DEMO_DOMAIN, DEMO_EMAIL, new.raw, seeded)
