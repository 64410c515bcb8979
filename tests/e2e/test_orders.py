"""After the order: `cancel`, `refill`, `refill_status` (single and list, eligibility) and the
webhook actions, against a real `panelsrv serve`, in form and JSON encodings.

No `panelsrv worker` runs here: a provider-backed order stays in the dispatch outbox unclaimed,
which is exactly "not yet sent upstream". Statuses a provider would report are set in the
database, as the worker would.
"""

from __future__ import annotations

from typing import Any

import pytest

from panelsrv import money
from tests.e2e.kit import sql, sql_value
from tests.e2e.served import World, call
from tests.e2e.shop import MAIN, PLAIN, UPSTREAM, Account, Shop
from tests.http.httpkit import Response
from tests.kit.stack import Served

ENCODINGS = ["form", "json"]
LINK = "https://instagram.com/p/abc"
NOWHERE = 10**15  # an order / refill id nobody has


async def ask(
    server: Served, shop: Shop, who: Account, encoding: str = "form", **fields: Any
) -> Response:
    return await call(server.port, {"key": who.key, **fields}, host=shop.domain, encoding=encoding)


def expect(r: Response, status: int, body: Any) -> None:
    assert (r.status, r.json()) == (status, body), r.body


async def add(
    server: Served, shop: Shop, who: Account, service: int = MAIN, quantity: int = 1000
) -> int:
    r = await ask(server, shop, who, action="add", service=service, link=LINK, quantity=quantity)
    assert r.status == 200, r.body
    return int(r.json()["order"])


async def balance(database_url: str, who: Account) -> int:
    return int(
        await sql_value(database_url, "SELECT balance FROM wallets WHERE user_id = $1", who.user_id)
    )


async def set_status(database_url: str, order: int, status: str) -> None:
    await sql(database_url, "UPDATE orders SET status = $2 WHERE id = $1", order, status)


# -- cancel ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("service", [MAIN, UPSTREAM])
async def test_cancel_before_dispatch_refunds_at_once(
    server: Served, shop: Shop, database_url: str, service: int, encoding: str
) -> None:
    before = await balance(database_url, shop.alice)
    order = await add(server, shop, shop.alice, service)
    assert await balance(database_url, shop.alice) < before
    r = await ask(server, shop, shop.alice, encoding, action="cancel", order=order)
    expect(r, 200, {"cancel": 1})
    assert await balance(database_url, shop.alice) == before
    r = await ask(server, shop, shop.alice, encoding, action="status", order=order)
    assert (r.json()["status"], r.json()["remains"]) == ("Canceled", "1000")
    assert (
        await sql_value(database_url, "SELECT count(*) FROM outbox WHERE order_id = $1", order) == 0
    )
    refund = await sql(
        database_url,
        "SELECT amount FROM ledger_entries WHERE order_id = $1 AND kind = 'refund'",
        order,
    )
    charge = await sql_value(database_url, "SELECT charge FROM orders WHERE id = $1", order)
    assert [r["amount"] for r in refund] == [charge]
    # Canceled already: not again, and no second refund.
    r = await ask(server, shop, shop.alice, encoding, action="cancel", order=order)
    expect(r, 400, {"error": "Cancel is not available"})
    assert await balance(database_url, shop.alice) == before


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_cancel_of_an_order_maybe_sent_is_asked_upstream(
    server: Served, shop: Shop, database_url: str, encoding: str
) -> None:
    before = await balance(database_url, shop.alice)
    order = await add(server, shop, shop.alice, UPSTREAM)
    # A worker holds the dispatch job: it may be talking to the provider right now.
    await sql(
        database_url,
        "UPDATE outbox SET lease_until = now() + interval '1 minute'"
        " WHERE order_id = $1 AND kind = 'dispatch'",
        order,
    )
    r = await ask(server, shop, shop.alice, encoding, action="cancel", order=order)
    expect(r, 200, {"cancel": 1})
    r = await ask(server, shop, shop.alice, encoding, action="status", order=order)
    assert r.json()["status"] == "Pending"  # until the provider confirms
    assert await balance(database_url, shop.alice) == before - money.parse("1.00")
    kinds = await sql(
        database_url, "SELECT kind FROM outbox WHERE order_id = $1 ORDER BY kind", order
    )
    assert [k["kind"] for k in kinds] == ["cancel", "dispatch"]


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_cancel_list_answers_per_order(
    server: Served, shop: Shop, database_url: str, encoding: str
) -> None:
    ok = await add(server, shop, shop.alice)
    plain = await add(server, shop, shop.alice, PLAIN, 100)  # its service does not cancel
    started = await add(server, shop, shop.alice)
    await set_status(database_url, started, "In progress")
    bobs = await add(server, shop, shop.bob)
    ids = [ok, plain, NOWHERE, started, bobs]
    r = await ask(
        server, shop, shop.alice, encoding, action="cancel", orders=",".join(map(str, ids))
    )
    expect(
        r,
        200,
        [
            {"order": ok, "cancel": 1},
            {"order": plain, "cancel": {"error": "Cancel is not available"}},
            {"order": NOWHERE, "cancel": {"error": "Incorrect order ID"}},
            {"order": started, "cancel": {"error": "Cancel is not available"}},
            {"order": bobs, "cancel": {"error": "Incorrect order ID"}},
        ],
    )
    r = await ask(server, shop, shop.bob, encoding, action="status", order=bobs)
    assert r.json()["status"] == "Pending"
    r = await ask(server, shop, shop.alice, encoding, action="cancel", order=NOWHERE)
    expect(r, 400, {"error": "Incorrect order ID"})
    r = await ask(
        server,
        shop,
        shop.alice,
        encoding,
        action="cancel",
        orders=",".join(str(NOWHERE + i) for i in range(101)),
    )
    expect(r, 400, {"error": "orders: at most 100 ids"})


# -- refill and refill_status ----------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_refill_eligibility(
    server: Served, shop: Shop, database_url: str, encoding: str
) -> None:
    order = await add(server, shop, shop.alice)
    r = await ask(server, shop, shop.alice, encoding, action="refill", order=order)
    expect(r, 400, {"error": "Refill is not available"})  # not completed yet
    await set_status(database_url, order, "Completed")
    r = await ask(server, shop, shop.alice, encoding, action="refill", order=order)
    assert r.status == 200 and list(r.json()) == ["refill"], r.body
    first = r.json()["refill"]
    r = await ask(server, shop, shop.alice, encoding, action="refill_status", refill=first)
    expect(r, 200, {"status": "Pending"})
    # One in flight at a time.
    r = await ask(server, shop, shop.alice, encoding, action="refill", order=order)
    expect(r, 400, {"error": "Refill is not available"})
    # Done, but at most one per 24 h.
    await sql(database_url, "UPDATE refills SET status = 'Completed' WHERE id = $1", first)
    r = await ask(server, shop, shop.alice, encoding, action="refill_status", refill=first)
    expect(r, 200, {"status": "Completed"})
    r = await ask(server, shop, shop.alice, encoding, action="refill", order=order)
    expect(r, 400, {"error": "Refill is not available"})
    # A day later: again, up to 3 per order.
    for _ in range(2):
        await sql(
            database_url,
            "UPDATE refills SET status = 'Completed', created_at = created_at"
            " - interval '25 hours' WHERE order_id = $1",
            order,
        )
        r = await ask(server, shop, shop.alice, encoding, action="refill", order=order)
        assert r.status == 200, r.body
    await sql(
        database_url,
        "UPDATE refills SET status = 'Completed', created_at = created_at"
        " - interval '25 hours' WHERE order_id = $1",
        order,
    )
    r = await ask(server, shop, shop.alice, encoding, action="refill", order=order)
    expect(r, 400, {"error": "Refill is not available"})
    # Partial orders qualify too; a service without refill never does.
    partial = await add(server, shop, shop.alice)
    await set_status(database_url, partial, "Partial")
    r = await ask(server, shop, shop.alice, encoding, action="refill", order=partial)
    assert r.status == 200, r.body
    plain = await add(server, shop, shop.alice, PLAIN, 100)
    await set_status(database_url, plain, "Completed")
    r = await ask(server, shop, shop.alice, encoding, action="refill", order=plain)
    expect(r, 400, {"error": "Refill is not available"})
    for status in ("Canceled", "Refunded", "Error", "In progress"):
        await set_status(database_url, partial, status)
        r = await ask(server, shop, shop.alice, encoding, action="refill", order=partial)
        expect(r, 400, {"error": "Refill is not available"})
    r = await ask(server, shop, shop.alice, encoding, action="refill", order=NOWHERE)
    expect(r, 400, {"error": "Incorrect order ID"})


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_refill_and_refill_status_lists(
    server: Served, shop: Shop, database_url: str, encoding: str
) -> None:
    done = await add(server, shop, shop.alice)
    pending = await add(server, shop, shop.alice)
    bobs = await add(server, shop, shop.bob)
    for order in (done, bobs):
        await set_status(database_url, order, "Completed")
    r = await ask(
        server,
        shop,
        shop.alice,
        encoding,
        action="refill",
        orders=f"{done},{pending},{NOWHERE},{bobs}",
    )
    assert r.status == 200, r.body
    body = r.json()
    refill = body[0]["refill"]
    assert isinstance(refill, int)
    assert body == [
        {"order": done, "refill": refill},
        {"order": pending, "refill": {"error": "Refill is not available"}},
        {"order": NOWHERE, "refill": {"error": "Incorrect order ID"}},
        {"order": bobs, "refill": {"error": "Incorrect order ID"}},
    ]
    await sql(database_url, "UPDATE refills SET status = 'In progress' WHERE id = $1", refill)
    r = await ask(
        server, shop, shop.alice, encoding, action="refill_status", refills=f"{refill},{NOWHERE}"
    )
    expect(
        r,
        200,
        [
            {"refill": refill, "status": "In progress"},
            {"refill": NOWHERE, "status": {"error": "Refill not found"}},
        ],
    )
    r = await ask(server, shop, shop.alice, encoding, action="refill_status", refill=NOWHERE)
    expect(r, 400, {"error": "Refill not found"})
    r = await ask(
        server,
        shop,
        shop.alice,
        encoding,
        action="refill_status",
        refills=",".join(str(NOWHERE + i) for i in range(101)),
    )
    expect(r, 400, {"error": "refills: at most 100 ids"})
    r = await ask(
        server,
        shop,
        shop.alice,
        encoding,
        action="refill_status",
        refills=",".join(str(NOWHERE + i) for i in range(100)),
    )
    assert r.status == 200 and len(r.json()) == 100


# -- webhooks --------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_webhooks_add_list_delete(
    server: Served, shop: Shop, database_url: str, encoding: str
) -> None:
    _, key = await World(database_url).user(shop.domain)
    dave = Account(0, key)
    # An IP literal resolves without DNS; nothing is sent anywhere (no worker runs).
    r = await ask(server, shop, dave, encoding, action="webhook_add", url="https://1.1.1.1/hook")
    assert r.status == 200 and list(r.json()) == ["webhook", "secret"], r.body
    first = r.json()["webhook"]
    assert r.json()["secret"].startswith("whsec_")
    r = await ask(
        server,
        shop,
        dave,
        encoding,
        action="webhook_add",
        url="https://8.8.8.8/only-orders",
        events="order.status",
    )
    second = r.json()["webhook"]
    r = await ask(server, shop, dave, encoding, action="webhooks")
    expect(
        r,
        200,
        [
            {
                "webhook": first,
                "url": "https://1.1.1.1/hook",
                "events": ["order.status", "refill.status"],
                "active": True,
            },
            {
                "webhook": second,
                "url": "https://8.8.8.8/only-orders",
                "events": ["order.status"],
                "active": True,
            },
        ],
    )
    # Another user's webhook is a nonexistent one.
    r = await ask(server, shop, shop.bob, encoding, action="webhook_delete", webhook=first)
    expect(r, 400, {"error": "Incorrect webhook ID"})
    r = await ask(server, shop, dave, encoding, action="webhook_delete", webhook=first)
    expect(r, 200, {"deleted": 1})
    r = await ask(server, shop, dave, encoding, action="webhook_delete", webhook=first)
    expect(r, 400, {"error": "Incorrect webhook ID"})
    r = await ask(server, shop, dave, encoding, action="webhooks")
    assert [w["webhook"] for w in r.json()] == [second]
    for i in range(4):
        r = await ask(
            server, shop, dave, encoding, action="webhook_add", url=f"https://1.1.1.1/{i}"
        )
        assert r.status == 200, r.body
    r = await ask(server, shop, dave, encoding, action="webhook_add", url="https://1.1.1.1/6")
    expect(r, 400, {"error": "url: at most 5 webhooks per user"})


PRIVATE = "url: host resolves to a private, loopback or link-local address"


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("http://127.0.0.1/hook", "url: must use https"),
        ("http://1.1.1.1/hook", "url: must use https"),
        ("https://127.0.0.1/hook", PRIVATE),
        ("https://10.1.2.3/hook", PRIVATE),
        ("https://192.168.0.1:8443/hook", PRIVATE),
        ("https://169.254.169.254/latest/meta-data", PRIVATE),
        ("https://[::1]/hook", PRIVATE),
        ("https://[::ffff:127.0.0.1]/hook", PRIVATE),
        ("https://localhost/hook", PRIVATE),
        ("https://0.0.0.0/hook", PRIVATE),
        ("https://user:pw@1.1.1.1/hook", "url: must not contain credentials"),
        ("file:///etc/passwd", "url: must be an https URL"),
        ("gopher://1.1.1.1/", "url: must be an https URL"),
    ],
)
async def test_webhook_add_refuses_ssrf_targets(
    server: Served, shop: Shop, url: str, error: str, encoding: str
) -> None:
    r = await ask(server, shop, shop.bob, encoding, action="webhook_add", url=url)
    expect(r, 400, {"error": error})


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_webhook_add_checks_events_and_url(server: Served, shop: Shop, encoding: str) -> None:
    r = await ask(
        server,
        shop,
        shop.bob,
        encoding,
        action="webhook_add",
        url="https://1.1.1.1/x",
        events="order.status,nonsense",
    )
    expect(r, 400, {"error": "events: comma-separated list of order.status, refill.status"})
    r = await ask(server, shop, shop.bob, encoding, action="webhook_add")
    expect(r, 400, {"error": "url: required"})
    r = await ask(server, shop, shop.bob, encoding, action="webhook_delete")
    expect(r, 400, {"error": "webhook: required"})
