"""The benchmark's dataset: a fresh `panelsrv_bench` database, loaded with set-based SQL.

Imports panelsrv.store (db, keys, catalog) and asyncpg. Shape (fixed ids, so pgbench and the
Lua scripts can compute consistent parameters without asking the database):
- 3 panels (ids 1..3, `panel1.bench`..`panel3.bench`), 1 provider;
- 500 services, id s on panel ((s-1) % 3) + 1 with local id ((s-1) // 3) + 1, rate 0.45/1000,
  min 100, max 100000 (local ids 1..166 exist on every panel);
- 100,000 users, user u on panel ((u-1) % 3) + 1, one API key each (raw keys from
  `keys.generate()`, only their SHA-256 stored), a wallet of 10,000.00 credited through the
  ledger, 20% with a discount, 100 with their own rate on a few services;
- 100,000 historical orders: users 1..1000 are "resellers" with 100 orders each (ids
  (u-1)*100+1 .. u*100), each with its ledger charge entry (so `panelsrv audit` stays clean)
  and the idempotency record its client's key left.

The raw keys go to `<data>/users.tsv` (key, host, user id) and `<data>/resellers.tsv` (key,
host, user id, 100 comma-separated order ids) for the load scripts, with `<data>/unknown.tsv`
(well-formed keys that do not exist, host); fixed bodies for the
baselines go to `<data>/bodies/`.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg

from panelsrv.api import respond
from panelsrv.store import catalog, db, keys

USERS = 100_000
PANELS = 3
SERVICES = 500
RESELLERS = 1_000
ORDERS_PER_RESELLER = 100
LOCAL_IDS = SERVICES // PANELS  # local ids 1..166 exist on every panel
RATE = 45_000  # 0.45 per 1000, in minor units (1e-5)
CREDIT = 1_000_000_000  # 10,000.00
HISTORICAL_CHARGE = 45_000  # 1000 units at 0.45
DATABASE = "panelsrv_bench"
UNKNOWN_KEYS = 10_000  # checksum-valid keys that were never stored (the attacker's best case)


def host(panel: int) -> str:
    return f"panel{panel}.bench"


def panel_of(user: int) -> int:
    return (user - 1) % PANELS + 1


def bench_url(base_url: str) -> str:
    """The same server as `base_url`, database `panelsrv_bench`."""
    parts = urlsplit(base_url)
    return urlunsplit(parts._replace(path="/" + DATABASE))


SCHEMA_SQL = f"""
INSERT INTO panels (id, domain, currency)
SELECT p, 'panel' || p || '.bench', CASE p WHEN 2 THEN 'EUR' ELSE 'USD' END
  FROM generate_series(1, {PANELS}) p;
SELECT setval('panels_id_seq', {PANELS});

INSERT INTO providers (id, name, url, api_key)
VALUES (1, 'bench-upstream', 'http://127.0.0.1:9/api/v2', 'upstream-key');
SELECT setval('providers_id_seq', 1);

INSERT INTO services (id, panel_id, local_id, name, type, category, rate, min_qty, max_qty,
                      dripfeed, refill, cancel, avg_time, provider_id, provider_service)
SELECT s, (s - 1) % {PANELS} + 1, (s - 1) / {PANELS} + 1,
       (ARRAY['Instagram', 'TikTok', 'YouTube', 'Telegram', 'X'])[s % 5 + 1]
         || ' Followers — tier ' || s || ' (real, refill 30 days)',
       'default', (ARRAY['Instagram', 'TikTok', 'YouTube', 'Telegram', 'X'])[s % 5 + 1],
       {RATE} + (s % 7) * 1000, 100, 100000, s % 4 = 0, s % 2 = 0, s % 3 = 0, 3600 + s,
       1, 'up-' || s
  FROM generate_series(1, {SERVICES}) s;
SELECT setval('services_id_seq', {SERVICES});

INSERT INTO users (id, panel_id, email, discount_bp)
SELECT u, (u - 1) % {PANELS} + 1, 'user' || u || '@bench.test',
       CASE WHEN u % 5 = 0 THEN (u % 3 + 1) * 500 ELSE 0 END
  FROM generate_series(1, {USERS}) u;
SELECT setval('users_id_seq', {USERS});

INSERT INTO user_rates (user_id, service_id, rate)
SELECT u, s, 40000
  FROM generate_series(1, 100) u, generate_series(1, 3) k,
       LATERAL (SELECT (u - 1) % {PANELS} + 1 + 3 * k AS s) x;

-- Resellers (users 1..{RESELLERS}) have {ORDERS_PER_RESELLER} historical orders each.
INSERT INTO orders (id, user_id, panel_id, service_id, provider_id, link, quantity, charge,
                    status, start_count, remains, upstream_id, created_at, updated_at,
                    checked_at)
SELECT o, u, (u - 1) % {PANELS} + 1, (u - 1) % {PANELS} + 1 + 3 * ((o % {LOCAL_IDS})), 1,
       'https://instagram.com/p/' || md5(o::text), 1000, {HISTORICAL_CHARGE},
       (ARRAY['Completed', 'Completed', 'In progress', 'Partial', 'Pending', 'Canceled'])
         [o % 6 + 1],
       o % 50000, CASE WHEN o % 6 IN (0, 1) THEN 0 ELSE o % 1000 END, 'up-' || o,
       now() - (o % 90) * interval '1 day', now() - (o % 30) * interval '1 day', now()
  FROM generate_series(1, {RESELLERS}) u,
       LATERAL generate_series((u - 1) * {ORDERS_PER_RESELLER} + 1,
                               u * {ORDERS_PER_RESELLER}) o;
SELECT setval('orders_id_seq', {RESELLERS * ORDERS_PER_RESELLER});

-- Each historical order came with an idempotency key (stored answers). Without these rows the
-- table is empty when analyzed and the planner scans it sequentially inside place_order, a
-- cost that grows with every order placed: an artifact of a fresh database, not of panelsrv.
INSERT INTO idempotency (user_id, key, fingerprint, status, body, created_at)
SELECT o.user_id, 'hist-' || o.id, sha256(o.id::text::bytea), 200,
       convert_to('{{"order":' || o.id || '}}', 'UTF8'), o.created_at
  FROM orders o;

-- Wallets: one credit, then each historical order's charge, as a consistent balance chain.
INSERT INTO wallets (user_id, balance, version)
SELECT u, {CREDIT} - CASE WHEN u <= {RESELLERS}
                          THEN {ORDERS_PER_RESELLER} * {HISTORICAL_CHARGE} ELSE 0 END,
       1 + CASE WHEN u <= {RESELLERS} THEN {ORDERS_PER_RESELLER} ELSE 0 END
  FROM generate_series(1, {USERS}) u;
INSERT INTO ledger_entries (user_id, kind, amount, balance_before, balance_after,
                            wallet_version, memo)
SELECT u, 'credit', {CREDIT}, 0, {CREDIT}, 1, 'bench opening balance'
  FROM generate_series(1, {USERS}) u;
INSERT INTO ledger_entries (user_id, order_id, kind, amount, balance_before, balance_after,
                            wallet_version)
SELECT o.user_id, o.id, 'charge', -{HISTORICAL_CHARGE},
       {CREDIT} - (o.id - (o.user_id - 1) * {ORDERS_PER_RESELLER} - 1) * {HISTORICAL_CHARGE},
       {CREDIT} - (o.id - (o.user_id - 1) * {ORDERS_PER_RESELLER}) * {HISTORICAL_CHARGE},
       1 + o.id - (o.user_id - 1) * {ORDERS_PER_RESELLER}
  FROM orders o;
"""


async def _recreate(url: str) -> None:
    name = unquote(urlsplit(url).path.lstrip("/"))
    admin = await db.connect(url, database="postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


async def load(url: str, data: Path) -> dict[str, float]:
    """Drop and rebuild the bench database; write the key files. Returns timings (s)."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    await _recreate(url)
    conn = await db.open_migrated(url)
    try:
        timings["migrate_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        async with conn.transaction():
            await conn.execute(SCHEMA_SQL)
            raws = [keys.generate() for _ in range(USERS)]
            records = [
                (u, hashlib.sha256(raw.encode()).digest(), raw[: keys.DISPLAY_PREFIX_LENGTH])
                for u, raw in enumerate(raws, start=1)
            ]
            await conn.copy_records_to_table(
                "api_keys", records=records, columns=["user_id", "hash", "prefix"]
            )
        timings["load_s"] = time.perf_counter() - t1
        # A steady state before anything is timed: without this the first runs pay for
        # autovacuum and for setting the hint bits of every freshly loaded row (and the
        # full-page writes that follow), which the later runs do not.
        t2 = time.perf_counter()
        await conn.execute("VACUUM (FREEZE, ANALYZE)")
        await conn.execute("CHECKPOINT")
        timings["vacuum_checkpoint_s"] = time.perf_counter() - t2
        _write_keys(data, raws)
        await _write_bodies(conn, data)
    finally:
        await conn.close()
    return timings


def _write_keys(data: Path, raws: list[str]) -> None:
    data.mkdir(parents=True, exist_ok=True)
    with open(data / "users.tsv", "w") as f:
        for u, raw in enumerate(raws, start=1):
            f.write(f"{raw}\t{host(panel_of(u))}\t{u}\n")
    with open(data / "resellers.tsv", "w") as f:
        for u in range(1, RESELLERS + 1):
            first = (u - 1) * ORDERS_PER_RESELLER + 1
            ids = ",".join(str(i) for i in range(first, first + ORDERS_PER_RESELLER))
            f.write(f"{raws[u - 1]}\t{host(panel_of(u))}\t{u}\t{ids}\n")
    with open(data / "unknown.tsv", "w") as f:
        for i in range(UNKNOWN_KEYS):
            f.write(f"{keys.generate()}\t{host(i % PANELS + 1)}\n")


async def _write_bodies(conn: asyncpg.Connection, data: Path) -> None:
    """Bodies the fixed-answer baselines send: the real `services` answer of panel 1 at list
    price (same size on the wire as ours), and a balance-sized answer."""
    found = await catalog.load(conn)
    bodies = data / "bodies"
    bodies.mkdir(parents=True, exist_ok=True)
    (bodies / "services.json").write_bytes(found.listing(1, 7, 0, {}, respond.render_services))
    (bodies / "small.json").write_bytes(b'{"balance":"9955.00","currency":"USD"}')


def keys_ready(data: Path) -> bool:
    return all(
        os.path.exists(data / name) for name in ("users.tsv", "resellers.tsv", "unknown.tsv")
    )
