"""Demo data for `panelsrv run`: a panel, a funded user, a simulated provider whose services are
imported with a markup, and a fresh key on every run.

Imports the store, the importer and the provider client. Seeding happens once (when the demo
user does not exist); later runs point the demo provider at the new simulator and issue a new key
(the raw key is shown once, so the only way to show one is to make one) and a new invitation
link, through which the demo user's password for the pages is set.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from panelsrv.store import accounts, admin, keys
from panelsrv.worker import importer
from panelsrv.worker.providers import Provider

DEMO_DOMAIN = "localhost"
DEMO_EMAIL = "demo@panelsrv.localhost"
DEMO_PROVIDER = "simulator"
DEMO_MARKUP_BP = 3000  # 30 %


@dataclass(frozen=True, slots=True)
class Demo:
    domain: str
    email: str
    key: str
    seeded: bool
    invite: str  # the token of a set-password link


async def ensure(conn: asyncpg.Connection, provider_url: str, provider_key: str) -> Demo:
    """Seed the demo data unless it is there; always issue a fresh demo key."""
    seeded = not await admin.has_user(conn, DEMO_EMAIL)
    if seeded:
        await admin.add_panel(conn, DEMO_DOMAIN, "USD")
        await admin.add_user(conn, DEMO_EMAIL, DEMO_DOMAIN, "100.00", "0")
        # The simulator honours Idempotency-Key, as panelsrv does: resends are safe there.
        provider_id = await admin.add_provider(
            conn, DEMO_PROVIDER, provider_url, provider_key, honours_idempotency=True
        )
        async with Provider(provider_url, provider_key, name=DEMO_PROVIDER) as client:
            services = await client.services()
        await importer.import_services(conn, provider_id, services, DEMO_MARKUP_BP, None)
    else:
        await admin.set_provider_endpoint(conn, DEMO_PROVIDER, provider_url, provider_key)
    user = await admin.user_by_email(conn, DEMO_EMAIL)
    for old in await keys.list_keys(conn, user.id):
        if old.revoked is None:
            await keys.revoke(conn, old.prefix)
    new = await keys.create(conn, user.id)
    invite = await accounts.create_invite(conn, user.id)
    return Demo(DEMO_DOMAIN, DEMO_EMAIL, new.raw, seeded, invite)


def banner(demo: Demo, api_url: str) -> str:
    site = api_url.removesuffix("/api/v2")
    return f"""
panelsrv is running: {api_url}
  demo panel {demo.domain}, user {demo.email} (balance in `panelsrv audit`, keys in `key list`)
  demo key   {demo.key}
  pages      {site}/login  (set the demo user's password first, through this link:
             {site}/account/set-password?token={demo.invite} )

  curl -s {api_url} -d key={demo.key} -d action=balance
  curl -s {api_url} -d key={demo.key} -d action=services
  curl -s {api_url} -d key={demo.key} -d action=add -d service=1 \\
       -d link=https://instagram.com/example -d quantity=100
  curl -s {api_url} -d key={demo.key} -d action=status -d order=1

Orders progress to Completed at the simulated provider within about a minute. Ctrl-C stops.
"""
