"""Tenants and what one customer may see of another, against a real `panelsrv serve`: isolation
(another user's order or refill answers exactly like a nonexistent one), a key works only on its
panel's host, the default panel, and the panel settings `legacy_errors`,
`duplicate_link_guard` and `sec_order_max_per_min`."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from panelsrv.store import admin, db
from tests.conftest import run_async
from tests.e2e.kit import Pool, sql
from tests.e2e.served import World, call, offered, visible
from tests.e2e.shop import MAIN, Account, Shop
from tests.http.httpkit import Response
from tests.kit.stack import Served, served
from tests.kit.waiting import until

LINK = "https://instagram.com/p/tenant"
NOWHERE = 10**15
DEFAULT_DOMAIN = f"default-{secrets.token_hex(4)}.test"


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[Served]:
    with served(database_url, default_panel=DEFAULT_DOMAIN) as s:
        yield s


@pytest.fixture(scope="module")
def shop(server: Served, database_url: str) -> Shop:
    return Shop.open(database_url, server.port)


async def ask(
    server: Served, host: str, who: Account | str, encoding: str = "form", **fields: Any
) -> Response:
    key = who if isinstance(who, str) else who.key
    return await call(server.port, {"key": key, **fields}, host=host, encoding=encoding)


async def add(server: Served, shop: Shop, who: Account, link: str = LINK) -> Response:
    return await ask(server, shop.domain, who, action="add", service=MAIN, link=link, quantity=1000)


# -- isolation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["form", "json"])
async def test_another_users_order_or_refill_is_a_nonexistent_one(
    server: Served, shop: Shop, database_url: str, encoding: str
) -> None:
    order = (await add(server, shop, shop.alice)).json()["order"]
    await sql(database_url, "UPDATE orders SET status = 'Completed' WHERE id = $1", order)
    refill = (await ask(server, shop.domain, shop.alice, action="refill", order=order)).json()[
        "refill"
    ]
    # Same number of digits as the real ids, so that even the lengths agree.
    nowhere_order, nowhere_refill = 10 ** len(str(order)) - 1, 10 ** len(str(refill)) - 1
    requests = [
        ("status", "order", order, nowhere_order),
        ("status", "orders", order, nowhere_order),
        ("cancel", "order", order, nowhere_order),
        ("cancel", "orders", order, nowhere_order),
        ("refill", "order", order, nowhere_order),
        ("refill", "orders", order, nowhere_order),
        ("refill_status", "refill", refill, nowhere_refill),
        ("refill_status", "refills", refill, nowhere_refill),
    ]
    for action, field, theirs, nowhere in requests:
        for who, host in ((shop.bob, shop.domain), (shop.stranger, shop.other)):
            foreign = await ask(server, host, who, encoding, action=action, **{field: theirs})
            missing = await ask(server, host, who, encoding, action=action, **{field: nowhere})
            assert foreign.status == missing.status
            assert foreign.status in (200, 400)
            assert foreign.body.replace(str(theirs).encode(), b"ID") == missing.body.replace(
                str(nowhere).encode(), b"ID"
            ), (action, field)
            del foreign.headers["date"], missing.headers["date"]
            assert foreign.headers == missing.headers
    # ... and none of it touched Alice's order.
    r = await ask(server, shop.domain, shop.alice, action="status", order=order)
    assert r.json()["status"] == "Completed"
    r = await ask(server, shop.domain, shop.alice, action="refill_status", refill=refill)
    assert r.json() == {"status": "Pending"}


async def test_a_key_works_only_on_its_panels_host(server: Served, shop: Shop) -> None:
    for encoding in ("form", "json"):
        r = await ask(server, shop.other, shop.alice, encoding, action="balance")
        assert (r.status, r.json()) == (401, {"error": "Invalid API key"})
        r = await ask(server, shop.domain, shop.stranger, encoding, action="balance")
        assert (r.status, r.json()) == (401, {"error": "Invalid API key"})
        # The other panel's own services by global id do not exist here either.
        r = await ask(
            server,
            shop.domain,
            shop.alice,
            encoding,
            action="add",
            service=shop.foreign_id,
            link=LINK,
            quantity=1000,
        )
        assert (r.status, r.json()) == (400, {"error": "Incorrect service ID"})
        # The same local id means each panel's own service.
        r = await ask(
            server,
            shop.other,
            shop.stranger,
            encoding,
            action="add",
            service=MAIN,
            link=LINK,
            quantity=1000,
        )
        status = await ask(
            server, shop.other, shop.stranger, encoding, action="status", order=r.json()["order"]
        )
        assert status.json()["charge"] == "9.00"


async def test_the_default_panel_serves_unknown_hosts(
    server: Served, shop: Shop, database_url: str
) -> None:
    conn = await db.connect(database_url)
    try:
        await admin.add_panel(conn, DEFAULT_DOMAIN, "EUR")
    finally:
        await conn.close()
    _, key = await World(database_url).user(DEFAULT_DOMAIN, balance="3.00")
    await visible(server.port, DEFAULT_DOMAIN, key)
    for host in ("unknown.example", "203.0.113.9", DEFAULT_DOMAIN.upper()):
        r = await ask(server, host, key, action="balance")
        assert (r.status, r.json()) == (200, {"balance": "3.00", "currency": "EUR"})
    # A known host is its own panel, never the default one.
    r = await ask(server, shop.domain, key, action="balance")
    assert (r.status, r.json()) == (401, {"error": "Invalid API key"})
    r = await ask(server, "unknown.example", shop.alice, action="balance")
    assert (r.status, r.json()) == (401, {"error": "Invalid API key"})


# -- panel settings ----------------------------------------------------------------------------


async def panel_with(
    server: Served, database_url: str, settings: dict[str, str], balance: str = "100.00"
) -> tuple[str, Account, Account]:
    world = World(database_url)
    domain = await world.panel(settings)
    first = Account(*await world.user(domain, balance=balance))
    second = Account(*await world.user(domain, balance=balance))
    await world.service(domain, local_id=MAIN, rate="0.45", min=100, max=100_000)
    await world.service(domain, local_id=MAIN + 1, rate="0.45", min=100, max=100_000)
    await offered(server.port, domain, first.key, MAIN, MAIN + 1)
    return domain, first, second


@pytest.mark.parametrize("encoding", ["form", "json"])
async def test_legacy_errors_answer_200_except_429_and_5xx(
    server: Served, database_url: str, encoding: str
) -> None:
    domain, user, _ = await panel_with(
        server,
        database_url,
        {"legacy_errors": "true", "sec_order_max_per_min": "1"},
        balance="0.50",
    )
    cases: list[tuple[dict[str, Any], dict[str, str]]] = [
        ({"key": user.key, "action": "nope"}, {"error": "Incorrect action"}),
        ({"key": user.key + "x", "action": "balance"}, {"error": "Invalid API key"}),
        ({"action": "balance"}, {"error": "key: required"}),
        ({"key": user.key, "action": "status", "order": NOWHERE}, {"error": "Incorrect order ID"}),
        (
            {"key": user.key, "action": "add", "service": NOWHERE, "link": LINK, "quantity": 1000},
            {"error": "Incorrect service ID"},
        ),
        (
            {"key": user.key, "action": "add", "service": MAIN, "link": LINK, "quantity": 10},
            {"error": "quantity: must be between 100 and 100000"},
        ),
        (
            {"key": user.key, "action": "add", "service": MAIN, "link": LINK, "quantity": 100000},
            {"error": "Not enough funds on balance"},
        ),
    ]
    for fields, body in cases:
        r = await call(server.port, fields, host=domain, encoding=encoding)
        assert (r.status, r.json()) == (200, body)
    r = await call(
        server.port,
        {"key": user.key, "action": "add", "service": MAIN, "link": LINK, "quantity": 100},
        host=domain,
        encoding=encoding,
    )
    assert (r.status, list(r.json())) == (200, ["order"])
    r = await call(
        server.port,
        {"key": user.key, "action": "add", "service": MAIN, "link": LINK, "quantity": 100},
        host=domain,
        encoding=encoding,
    )
    limit = {"error": "Too many requests: at most 1 order per minute on this panel"}
    assert (r.status, r.json()) == (429, limit)
    assert 1 <= int(r.headers["retry-after"]) <= 60


async def test_duplicate_link_guard(server: Served, database_url: str) -> None:
    domain, user, other = await panel_with(server, database_url, {"duplicate_link_guard": "true"})
    refused = {
        "error": "You have active order with this link. Please wait until order being completed."
    }

    async def place(who: Account, link: str, service: int = MAIN) -> Response:
        return await ask(
            server, domain, who, action="add", service=service, link=link, quantity=100
        )

    first = await place(user, "https://instagram.com/guarded")
    assert first.status == 200
    for link in ("https://instagram.com/guarded", "instagram.com/guarded"):
        r = await place(user, link)
        assert (r.status, r.json()) == (400, refused)
    assert (await place(user, "https://instagram.com/guarded", MAIN + 1)).status == 200
    assert (await place(other, "https://instagram.com/guarded")).status == 200
    await sql(
        database_url, "UPDATE orders SET status = 'Completed' WHERE id = $1", first.json()["order"]
    )
    assert (await place(user, "https://instagram.com/guarded")).status == 200
    # Without the setting, the same link may be ordered again at once.
    plain, user, _ = await panel_with(server, database_url, {})
    for _ in range(2):
        r = await ask(server, plain, user, action="add", service=MAIN, link=LINK, quantity=100)
        assert r.status == 200


async def test_duplicate_link_guard_holds_under_concurrency(
    server: Served, database_url: str
) -> None:
    domain, user, _ = await panel_with(server, database_url, {"duplicate_link_guard": "true"})
    fields = {"key": user.key, "action": "add", "service": MAIN, "link": LINK, "quantity": 100}
    async with Pool(server.port, 20) as pool:
        answers = await asyncio.gather(*(pool.call(fields, host=domain) for _ in range(20)))
    assert sorted(r.status for r in answers) == [200] + [400] * 19
    count = await sql(database_url, "SELECT count(*) FROM orders WHERE user_id = $1", user.user_id)
    assert count[0][0] == 1


@pytest.mark.parametrize("encoding", ["form", "json"])
async def test_order_ceiling_429_with_retry_after(
    server: Served, database_url: str, encoding: str
) -> None:
    domain, user, other = await panel_with(server, database_url, {"sec_order_max_per_min": "3"})
    for _ in range(3):
        r = await ask(
            server, domain, user, encoding, action="add", service=MAIN, link=LINK, quantity=100
        )
        assert r.status == 200
    for _ in range(2):
        r = await ask(
            server, domain, user, encoding, action="add", service=MAIN, link=LINK, quantity=100
        )
        limit = {"error": "Too many requests: at most 3 orders per minute on this panel"}
        assert (r.status, r.json()) == (429, limit)
        assert 55 <= int(r.headers["retry-after"]) <= 60
    # Per user: the other customer is not limited; other actions are not limited.
    r = await ask(server, domain, other, action="add", service=MAIN, link=LINK, quantity=100)
    assert r.status == 200
    r = await ask(server, domain, user, action="balance")
    assert r.status == 200


async def test_order_ceiling_is_never_raised_above_30(server: Served, database_url: str) -> None:
    domain, user, _ = await panel_with(server, database_url, {"sec_order_max_per_min": "1000"})
    answers = [
        await ask(server, domain, user, action="add", service=MAIN, link=LINK, quantity=100)
        for _ in range(31)
    ]
    assert [r.status for r in answers] == [200] * 30 + [429]


def test_settings_reach_running_servers(server: Served, database_url: str) -> None:
    """`panel set` on a running server: the next requests follow it (NOTIFY + reload)."""

    async def scenario() -> None:
        domain, user, _ = await panel_with(server, database_url, {})
        r = await ask(server, domain, user, action="nope")
        assert r.status == 400
        conn = await db.connect(database_url)
        try:
            await admin.set_panel(conn, domain, "legacy_errors", "true")
        finally:
            await conn.close()
        answers = []

        async def legacy() -> bool:
            answers.append(await ask(server, domain, user, action="nope"))
            return answers[-1].status == 200

        await until(legacy, 5.0)
        assert answers[-1].json() == {"error": "Incorrect action"}

    run_async(scenario())
