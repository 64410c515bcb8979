"""Idempotency keys exactly as API.md says, against a real `panelsrv serve`: header or field,
scoped to the user, a byte-for-byte replay of what was stored (200 and 402), 400 on different
parameters, 409 while the first is in flight, nothing stored for a 400 or a 429; on `add`,
`cancel` and `refill`."""

from __future__ import annotations

import secrets
from typing import Any

import asyncpg
import pytest

from panelsrv.store import ledger
from tests.e2e.kit import sql, sql_value
from tests.e2e.served import World, call, offered
from tests.e2e.shop import MAIN, Account, Shop
from tests.http.httpkit import Response
from tests.kit.stack import Served
from tests.kit.waiting import until

LINK = "https://instagram.com/p/idem"
MISMATCH = {"error": "idempotency_key: reused with different parameters"}


def new_key() -> str:
    return "idem-" + secrets.token_hex(8)


async def ask(
    server: Served,
    shop: Shop | str,
    who: Account,
    encoding: str = "form",
    header: str | None = None,
    **fields: Any,
) -> Response:
    """One request to `shop`'s panel (or the panel of that domain)."""
    headers = b"Idempotency-Key: %s\r\n" % header.encode() if header is not None else b""
    host = shop if isinstance(shop, str) else shop.domain
    return await call(
        server.port, {"key": who.key, **fields}, host=host, encoding=encoding, headers=headers
    )


def same(a: Response, b: Response) -> None:
    assert (a.status, a.body) == (b.status, b.body)


async def orders_with_link(database_url: str, who: Account, link: str) -> int:
    return int(
        await sql_value(
            database_url,
            "SELECT count(*) FROM orders WHERE user_id = $1 AND link = $2",
            who.user_id,
            link,
        )
    )


async def test_header_and_field_replay_byte_for_byte(
    server: Served, shop: Shop, database_url: str
) -> None:
    link = f"{LINK}/{secrets.token_hex(4)}"
    key = new_key()
    first = await ask(
        server, shop, shop.alice, header=key, action="add", service=MAIN, link=link, quantity=1000
    )
    assert first.status == 200 and list(first.json()) == ["order"]
    balance = await sql_value(
        database_url, "SELECT balance FROM wallets WHERE user_id = $1", shop.alice.user_id
    )
    # The same request again, by header, by field, by both, in JSON: the stored answer.
    for encoding, header, field in (
        ("form", key, None),
        ("form", None, key),
        ("json", key, key),
        ("json", None, key),
    ):
        extra = {"idempotency_key": field} if field else {}
        again = await ask(
            server,
            shop,
            shop.alice,
            encoding,
            header=header,
            action="add",
            service=MAIN,
            link=link,
            quantity=1000,
            **extra,
        )
        same(first, again)
    assert await orders_with_link(database_url, shop.alice, link) == 1
    assert (
        await sql_value(
            database_url, "SELECT balance FROM wallets WHERE user_id = $1", shop.alice.user_id
        )
        == balance
    )
    # Different parameters under the same key: refused, and nothing placed.
    for change in ({"quantity": 1001}, {"link": link + "x"}, {"runs": 2, "interval": 5}):
        r = await ask(
            server,
            shop,
            shop.alice,
            header=key,
            **{"action": "add", "service": MAIN, "link": link, "quantity": 1000, **change},
        )
        assert (r.status, r.json()) == (400, MISMATCH)
    assert await orders_with_link(database_url, shop.alice, link) == 1
    # Keys are the user's own: Bob's identical key is a new request.
    r = await ask(
        server, shop, shop.bob, header=key, action="add", service=MAIN, link=link, quantity=1000
    )
    assert r.status == 200 and r.json() != first.json()


async def test_key_rules(server: Served, shop: Shop) -> None:
    fields = {"action": "add", "service": MAIN, "link": LINK, "quantity": 1000}
    r = await ask(server, shop, shop.alice, header="k" * 128, **fields)
    assert r.status == 200
    r = await ask(server, shop, shop.alice, idempotency_key="k" * 129, **fields)
    assert (r.status, r.json()) == (
        400,
        {"error": "idempotency_key: must be 1 to 128 printable characters"},
    )
    r = await ask(server, shop, shop.alice, header="k" * 129, **fields)
    assert (r.status, r.json()) == (
        400,
        {"error": "Idempotency-Key: must be 1 to 128 printable characters"},
    )
    r = await ask(server, shop, shop.alice, header="one", idempotency_key="two", **fields)
    assert (r.status, r.json()) == (
        400,
        {"error": "idempotency_key: differs from the Idempotency-Key header"},
    )


async def test_a_402_is_stored_and_replayed(server: Served, shop: Shop, database_url: str) -> None:
    user, raw = await World(database_url).user(shop.domain, balance="0.10")
    poor = Account(user, raw)
    key = new_key()
    first = await ask(
        server, shop, poor, header=key, action="add", service=MAIN, link=LINK, quantity=1000
    )
    assert (first.status, first.json()) == (402, {"error": "Not enough funds on balance"})
    conn = await asyncpg.connect(database_url)
    try:
        assert await ledger.move_funds(conn, user, 1_000_000, "top-up") is not None
    finally:
        await conn.close()
    same(
        first,
        await ask(
            server, shop, poor, header=key, action="add", service=MAIN, link=LINK, quantity=1000
        ),
    )
    r = await ask(
        server, shop, poor, header=new_key(), action="add", service=MAIN, link=LINK, quantity=1000
    )
    assert r.status == 200


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ({"quantity": 10}, "quantity: must be between 100 and 100000"),
        ({"service": 10**15}, "Incorrect service ID"),
        ({"link": "javascript:x"}, "link: must be an http or https URL"),
    ],
)
async def test_a_400_is_not_stored(
    server: Served, shop: Shop, bad: dict[str, Any], error: str
) -> None:
    key = new_key()
    good = {"action": "add", "service": MAIN, "link": LINK, "quantity": 1000}
    r = await ask(server, shop, shop.alice, header=key, **{**good, **bad})
    assert (r.status, r.json()) == (400, {"error": error})
    fixed = await ask(server, shop, shop.alice, header=key, **good)
    assert fixed.status == 200
    same(fixed, await ask(server, shop, shop.alice, header=key, **good))


@pytest.mark.parametrize("encoding", ["form", "json"])
async def test_409_while_the_first_is_in_flight(
    server: Served, shop: Shop, database_url: str, encoding: str
) -> None:
    """The claim is held by another transaction (as the first request's would be)."""
    key = new_key()
    fields = {"action": "add", "service": MAIN, "link": LINK, "quantity": 1000}
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended('idem:' ||"
                " $1::bigint || ':' || $2::text, 0))",
                shop.alice.user_id,
                key,
            )
            r = await ask(server, shop, shop.alice, encoding, header=key, **fields)
            assert (r.status, r.json()) == (409, {"error": "Duplicate request"})
            for action in ("cancel", "refill"):
                r = await ask(
                    server, shop, shop.alice, encoding, idempotency_key=key, action=action, order=1
                )
                assert (r.status, r.json()) == (409, {"error": "Duplicate request"})
    finally:
        await conn.close()
    # The 409 stored nothing: the request goes through now.
    first = await ask(server, shop, shop.alice, header=key, **fields)
    assert first.status == 200
    same(first, await ask(server, shop, shop.alice, header=key, **fields))


async def test_a_429_is_not_stored(server: Served, database_url: str) -> None:
    world = World(database_url)
    domain = await world.panel({"sec_order_max_per_min": "1"})
    user, raw = await world.user(domain)
    await world.service(domain, local_id=1, rate="1.00", min=10, max=1000)
    await offered(server.port, domain, raw, 1)
    who = Account(user, raw)
    fields = {"action": "add", "service": 1, "link": LINK, "quantity": 100}
    r = await call(server.port, {"key": raw, **fields}, host=domain)
    assert r.status == 200
    key = new_key()
    r = await ask(server, domain, who, header=key, **fields)
    assert r.status == 429 and 1 <= int(r.headers["retry-after"]) <= 60
    # A minute later (the window, moved back in the database):
    await sql(database_url, "UPDATE wallets SET recent_orders = '{}' WHERE user_id = $1", user)
    first = await ask(server, domain, who, header=key, **fields)
    assert first.status == 200
    # A replay is not an order: the ceiling does not count it, nor refuse it.
    same(first, await ask(server, domain, who, header=key, **fields))


async def test_cancel_is_idempotent(server: Served, shop: Shop, database_url: str) -> None:
    orders = []
    for _ in range(3):
        r = await ask(
            server, shop, shop.alice, action="add", service=MAIN, link=LINK, quantity=1000
        )
        orders.append(r.json()["order"])
    key = new_key()
    first = await ask(server, shop, shop.alice, header=key, action="cancel", order=orders[0])
    assert (first.status, first.json()) == (200, {"cancel": 1})
    # Canceled now, yet the replay is the stored answer, not "Cancel is not available".
    same(first, await ask(server, shop, shop.alice, header=key, action="cancel", order=orders[0]))
    r = await ask(server, shop, shop.alice, header=key, action="cancel", order=orders[1])
    assert (r.status, r.json()) == (400, MISMATCH)
    key = new_key()
    ids = f"{orders[1]},{orders[2]}"
    first = await ask(server, shop, shop.alice, "json", header=key, action="cancel", orders=ids)
    assert first.json() == [{"order": orders[1], "cancel": 1}, {"order": orders[2], "cancel": 1}]
    same(first, await ask(server, shop, shop.alice, header=key, action="cancel", orders=ids))
    refunds = await sql_value(
        database_url,
        "SELECT count(*) FROM ledger_entries WHERE"
        " order_id = ANY($1::bigint[]) AND kind = 'refund'",
        orders,
    )
    assert refunds == 3


async def test_a_refused_single_cancel_or_refill_is_not_stored(
    server: Served, shop: Shop, database_url: str
) -> None:
    """`Incorrect order ID` / `... is not available` are 400s: the client may fix and retry."""
    r = await ask(server, shop, shop.alice, action="add", service=MAIN, link=LINK, quantity=1000)
    order = r.json()["order"]
    key = new_key()
    r = await ask(server, shop, shop.alice, header=key, action="refill", order=order)
    assert (r.status, r.json()) == (400, {"error": "Refill is not available"})
    await sql(database_url, "UPDATE orders SET status = 'Completed' WHERE id = $1", order)
    first = await ask(server, shop, shop.alice, header=key, action="refill", order=order)
    assert first.status == 200 and list(first.json()) == ["refill"], first.body
    same(first, await ask(server, shop, shop.alice, header=key, action="refill", order=order))
    assert (
        await sql_value(database_url, "SELECT count(*) FROM refills WHERE order_id = $1", order)
        == 1
    )

    r = await ask(server, shop, shop.alice, action="add", service=MAIN, link=LINK, quantity=1000)
    order = r.json()["order"]
    key = new_key()
    await sql(database_url, "UPDATE orders SET status = 'In progress' WHERE id = $1", order)
    r = await ask(server, shop, shop.alice, header=key, action="cancel", order=order)
    assert (r.status, r.json()) == (400, {"error": "Cancel is not available"})
    await sql(database_url, "UPDATE orders SET status = 'Pending' WHERE id = $1", order)
    first = await ask(server, shop, shop.alice, header=key, action="cancel", order=order)
    assert (first.status, first.json()) == (200, {"cancel": 1})


async def test_refill_list_is_idempotent(server: Served, shop: Shop, database_url: str) -> None:
    r = await ask(server, shop, shop.alice, action="add", service=MAIN, link=LINK, quantity=1000)
    order = r.json()["order"]
    await sql(database_url, "UPDATE orders SET status = 'Completed' WHERE id = $1", order)
    key = new_key()
    first = await ask(server, shop, shop.alice, header=key, action="refill", orders=str(order))
    assert first.status == 200 and isinstance(first.json()[0]["refill"], int)
    same(
        first,
        await ask(server, shop, shop.alice, "json", header=key, action="refill", orders=str(order)),
    )
    assert (
        await sql_value(database_url, "SELECT count(*) FROM refills WHERE order_id = $1", order)
        == 1
    )


async def test_replay_survives_a_catalog_change(
    server: Served, shop: Shop, database_url: str
) -> None:
    """The answer a client retries for is the stored one, even when the same request would no
    longer pass (the service's bounds changed since): else a placed, charged order would look
    refused to a client retrying after a timeout."""
    world = World(database_url)
    domain = await world.panel()
    user, raw = await world.user(domain)
    service = await world.service(domain, local_id=1, rate="1.00", min=10, max=1000)
    await offered(server.port, domain, raw, 1)
    who = Account(user, raw)
    fields = {"action": "add", "service": 1, "link": LINK, "quantity": 100}
    key = new_key()
    first = await ask(server, domain, who, header=key, **fields)
    assert first.status == 200
    await sql(database_url, "UPDATE services SET min_qty = 500 WHERE id = $1", service)
    await sql(database_url, "UPDATE services SET active = false WHERE id = $1", service)

    async def reloaded() -> bool:  # the process has reloaded its catalog (quantity 0: no order)
        r = await call(server.port, {"key": raw, **fields, "quantity": 0}, host=domain)
        return r.json() == {"error": "Incorrect service ID"}

    await until(reloaded, 5.0)
    same(first, await ask(server, domain, who, header=key, **fields))
