import os
import re
import secrets
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from panelsrv.store import db, ledger
from tests.conftest import server_url
from tests.store.helpers import migrate_before, new_panel, new_user, order_of


async def test_migrations_are_recorded_and_idempotent(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        assert await db.migrate(conn) == []
        versions = [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")]
        assert versions == [name for name, _ in db.migration_files()]
    finally:
        await conn.close()


async def test_jobs_queued_before_005_keep_the_idempotency_key_they_were_sent_with() -> None:
    """A dispatch or refill job may have reached its provider under the old key: its resend
    must carry the same one. Jobs created afterwards get a random key."""
    base = server_url()
    name = f"panelsrv_test_{os.getpid()}_{secrets.token_hex(3)}"
    url = urlunsplit(urlsplit(base)._replace(path="/" + name))
    admin_conn = await asyncpg.connect(base)
    await admin_conn.execute(f'CREATE DATABASE "{name}"')
    try:
        conn = await db.connect(url)
        try:
            await migrate_before(conn, "005")
            panel_id, domain = await new_panel(conn)
            user = await new_user(conn, domain, balance="10.00")
            provider = await conn.fetchval(
                "INSERT INTO providers (name, url, api_key) VALUES ('p', 'https://p.test', 'k')"
                " RETURNING id"
            )
            service = await conn.fetchval(
                "INSERT INTO services (name, rate, min_qty, max_qty, provider_id,"
                " provider_service) VALUES ('s', 100000, 1, 100000, $1, '1') RETURNING id",
                provider,
            )
            order = order_of(panel_id, user.id, service, provider_id=provider)
            old = await conn.fetchval(  # place_order as 002 defined it: the schema's own
                "SELECT order_id FROM place_order($1, $2, $3, $4, $5, $6, $7, 1, 0, '{}', 30,"
                " NULL, '', false, '')",
                user.id, panel_id, service, provider, order.charge, order.link,
                order.quantity,
            )  # fmt: skip
            refill = await conn.fetchval(
                "INSERT INTO refills (order_id, user_id) VALUES ($1, $2) RETURNING id", old, user.id
            )
            await conn.execute(
                "INSERT INTO outbox (kind, order_id, refill_id) VALUES ('refill', $1, $2),"
                " ('cancel', $1, NULL)",
                old,
                refill,
            )
            assert await db.migrate(conn) == [v for v, _ in db.migration_files() if v >= "005"]
            keys = dict(await conn.fetch("SELECT kind, upstream_key FROM outbox"))
            assert keys["dispatch"] == f"panelsrv-order-{old}"
            assert keys["refill"] == f"panelsrv-refill-{refill}"
            assert re.fullmatch(r"panelsrv-[0-9a-f]{32}", keys["cancel"])
            new = (await ledger.place_order(conn, order)).order_id
            key = await conn.fetchval("SELECT upstream_key FROM outbox WHERE order_id = $1", new)
            assert re.fullmatch(r"panelsrv-[0-9a-f]{32}", key)
        finally:
            await conn.close()
    finally:
        await admin_conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin_conn.close()
