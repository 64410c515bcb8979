"""The API client of the end-to-end tests, and their fixtures in the database.

`call()` sends one API request (form, JSON or multipart) over a fresh connection and returns
the parsed response; `World` makes panels/users/keys/services straight in the database;
`visible()` and `offered()` wait until every process of a served stack (tests/kit/stack.py)
knows a new panel or service.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping

from panelsrv.store import admin, db, keys
from tests.http.httpkit import Response
from tests.kit.waiting import until
from tests.kit.wire import exchange, post


async def call(
    port: int,
    fields: Mapping[str, object],
    *,
    host: str = "panel.test",
    encoding: str = "form",
    headers: bytes = b"",
) -> Response:
    return await exchange(port, post(fields, headers, host=host, encoding=encoding))


class World:
    """Panels, users, keys and services for a test, made through the store's own functions."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    async def panel(self, settings: Mapping[str, str] | None = None, currency: str = "USD") -> str:
        domain = f"p{secrets.token_hex(5)}.test"
        conn = await db.connect(self.database_url)
        try:
            await admin.add_panel(conn, domain, currency)
            for name, value in (settings or {}).items():
                await admin.set_panel(conn, domain, name, value)
        finally:
            await conn.close()
        return domain

    async def user(
        self, domain: str, balance: str = "100.00", discount: str = "0"
    ) -> tuple[int, str]:
        """(user id, raw key)"""
        conn = await db.connect(self.database_url)
        try:
            user, _ = await admin.add_user(
                conn, f"u{secrets.token_hex(5)}@example.test", domain, balance, discount
            )
            return user.id, (await keys.create(conn, user.id)).raw
        finally:
            await conn.close()

    async def service(self, domain: str | None = None, **spec: object) -> int:
        fields: dict[str, object] = {
            "name": f"svc {secrets.token_hex(3)}",
            "type": "default",
            "rate": "1.00",
            "min": 10,
            "max": 100_000,
        }
        fields.update(spec)
        conn = await db.connect(self.database_url)
        try:
            service_id, _ = await admin.add_service(
                conn, admin.ServiceSpec(domain=domain, **fields)
            )  # type: ignore[arg-type]
            return service_id
        finally:
            await conn.close()


async def customer(port: int, database_url: str) -> tuple[str, str]:
    """A new panel and a user on it with the default balance, (domain, raw key), known to
    every process of the server at `port`."""
    world = World(database_url)
    domain = await world.panel()
    _, key = await world.user(domain)
    await visible(port, domain, key)
    return domain, key


async def visible(port: int, domain: str, key: str, timeout: float = 5.0) -> None:
    """Wait until the server's processes have picked up a new panel/key (NOTIFY + reload):
    ten requests in a row, each on a fresh connection (so over the worker processes), answer
    200."""

    async def known() -> bool:
        for _ in range(10):
            r = await call(port, {"key": key, "action": "balance"}, host=domain)
            if r.status != 200:
                return False
        return True

    await until(known, timeout, interval=0.05, what=f"panel {domain} visible")


async def offered(
    port: int, domain: str, key: str, *services: int, named: str = "", timeout: float = 5.0
) -> None:
    """Wait until every process knows the panel and offers these (local or global) service ids
    (a catalog reload after NOTIFY): 30 rounds in a row, each request on a fresh connection,
    answer alike. Alike, not merely "known": a process that knows the panel but not yet its new
    service 7 takes 7 as the global id of some shared service of the test database, and answers
    with that service's bounds. When no process has reloaded yet, they all answer alike with
    that other service's: `named` (a service name) makes each round also ask `services` and
    find it there. (The kernel spreads connections over the processes: 30 fresh connections all
    reach one of two processes about once in 500 million rounds.)"""
    await visible(port, domain, key, timeout)

    async def round_() -> list[bytes]:
        answers = []
        for service in services:
            # quantity 0 is below every minimum: a known service answers with its bounds.
            fields = {"key": key, "action": "add", "service": service, "quantity": 0,
                      "link": "https://example.com/"}  # fmt: skip
            answers.append((await call(port, fields, host=domain)).body)
        if named:
            listed = await call(port, {"key": key, "action": "services"}, host=domain)
            answers.append(b"1" if any(s["name"] == named for s in listed.json()) else b"")
        return answers

    async def alike() -> bool:
        first = await round_()
        if any(a == b"" or (a != b"1" and json.loads(a) == {"error": "Incorrect service ID"})
               for a in first):  # fmt: skip
            return False
        for _ in range(29):
            if await round_() != first:
                return False
        return True

    await until(alike, timeout, interval=0.05, what=f"services {services} offered on {domain}")
