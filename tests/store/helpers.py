"""Shared helpers for database tests: unique fixtures made through the store's own functions."""

from __future__ import annotations

import itertools
import secrets

import asyncpg

from panelsrv import money
from panelsrv.store import admin, db, ledger


async def connect(url: str) -> asyncpg.Connection:
    return await db.connect(url)


_RUN = secrets.token_hex(3)  # tells this process's names from other runs' on a shared server
_SEQ = itertools.count()


def unique(label: str) -> str:
    """A name no other call returns: a random suffix alone collided once the model's long run
    made ~66,000 users in one database (32 random bits: a birthday collision in ~40 % of runs)."""
    return f"{label}-{_RUN}{next(_SEQ):x}"


async def new_panel(conn: asyncpg.Connection, currency: str = "USD") -> tuple[int, str]:
    panel_id, domain, _ = await admin.add_panel(conn, unique("panel") + ".test", currency)
    return panel_id, domain


async def new_user(conn: asyncpg.Connection, domain: str, balance: str = "0") -> admin.UserRef:
    user, _ = await admin.add_user(conn, unique("user") + "@example.test", domain, balance, "0")
    return user


async def new_service(conn: asyncpg.Connection, rate: str = "1.00", **kwargs: object) -> int:
    spec = admin.ServiceSpec(
        name=unique("svc"), type="default", rate=rate, min=1, max=1_000_000, **kwargs
    )  # type: ignore[arg-type]
    service_id, _ = await admin.add_service(conn, spec)
    return service_id


async def new_provider(
    conn: asyncpg.Connection, url: str = "http://127.0.0.1:9/api/v2", key: str = "k"
) -> int:
    return await admin.add_provider(conn, unique("prov"), url, key)


def order_of(panel_id: int, user_id: int, service_id: int, **fields: object) -> ledger.NewOrder:
    """A 1.00 order of 1000 units (no provider) unless `fields` say otherwise."""
    values: dict[str, object] = {
        "user_id": user_id, "panel_id": panel_id, "service_id": service_id,
        "provider_id": None, "charge": money.parse("1.00"), "link": "https://x.test/a",
        "quantity": 1000,
    }  # fmt: skip
    values.update(fields)
    return ledger.NewOrder(**values)  # type: ignore[arg-type]


class World:
    """`async with World(url) as w`: a connection, a pool, a panel in `currency`, a user with
    `balance` and a service with cancel and refill sold through a provider at `provider_url`;
    `place` makes orders, each with a link of its own (https://x.test/0, /1, ...)."""

    def __init__(
        self,
        url: str,
        provider_url: str = "http://127.0.0.1:9/api/v2",
        provider_key: str = "k",
        currency: str = "USD",
        balance: str = "100.00",
    ) -> None:
        self._args = (url, provider_url, provider_key, currency, balance)
        self._links = 0

    async def __aenter__(self) -> World:
        url, provider_url, provider_key, currency, balance = self._args
        self.conn = await connect(url)
        self.pool = await db.create_pool(url, 8)
        self.panel_id, domain = await new_panel(self.conn, currency)
        self.user = await new_user(self.conn, domain, balance=balance)
        self.provider_id = await new_provider(self.conn, provider_url, provider_key)
        self.service_id = await new_service(
            self.conn, provider=str(self.provider_id), provider_service="1", cancel=True,
            refill=True,
        )  # fmt: skip
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.pool.close()
        await self.conn.close()

    async def place(
        self, charge: int = money.parse("1.00"), quantity: int = 1000, count: int = 1
    ) -> list[int]:
        ids = []
        for _ in range(count):
            order = order_of(
                self.panel_id, self.user.id, self.service_id, provider_id=self.provider_id,
                charge=charge, quantity=quantity, link=f"https://x.test/{self._links}",
                order_limit=10**6,
            )  # fmt: skip
            self._links += 1
            placed = await ledger.place_order(self.conn, order)
            assert placed.order_id is not None
            ids.append(placed.order_id)
        return ids

    async def refunds(self, order_id: int) -> list[int]:
        rows = await self.conn.fetch(
            "SELECT amount FROM ledger_entries WHERE order_id = $1 AND kind = 'refund'", order_id
        )
        return [r[0] for r in rows]

    async def status(self, order_id: int) -> str:
        return await self.conn.fetchval("SELECT status FROM orders WHERE id = $1", order_id)


async def migrate_before(conn: asyncpg.Connection, version: str) -> None:
    """Apply, to an empty database, the migrations that come before `version` (and record them,
    as `db.migrate` does): the schema an installation had before that migration arrived. Only
    SQL works on it; the store's functions speak the current schema."""
    await conn.execute(
        "CREATE TABLE schema_migrations (version text PRIMARY KEY,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for name, text in db.migration_files():
        if name >= version:
            break
        await conn.execute(text)
        await conn.execute("INSERT INTO schema_migrations VALUES ($1)", name)
