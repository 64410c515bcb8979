"""Shared helpers for database tests: unique fixtures made through the store's own functions."""

from __future__ import annotations

import secrets

import asyncpg

from panelsrv import money
from panelsrv.store import admin, db, ledger


async def connect(url: str) -> asyncpg.Connection:
    return await db.connect(url)


def unique(label: str) -> str:
    return f"{label}-{secrets.token_hex(4)}"


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
