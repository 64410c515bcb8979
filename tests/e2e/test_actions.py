"""`services`, `add` (every service type, the boundaries), `status` and `balance` against a real
`panelsrv serve`, in form and JSON encodings, with the exact shapes of API.md."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from panelsrv import money
from panelsrv.servicetypes import SERVICE_TYPES
from tests.e2e.kit import assert_audit_clean, sql, sql_value, wallet_and_orders
from tests.e2e.served import World, call, offered, visible
from tests.e2e.shop import MAIN, PLAIN, Account, Shop, in_days
from tests.http.httpkit import Response
from tests.kit.stack import Served
from tests.kit.waiting import until

ENCODINGS = ["form", "json"]
SERVICE_FIELDS = [
    "service",
    "name",
    "type",
    "category",
    "rate",
    "min",
    "max",
    "dripfeed",
    "refill",
    "cancel",
    "avg_time",
]


async def ask(
    server: Served,
    shop: Shop,
    who: Account,
    encoding: str = "form",
    host: str | None = None,
    **fields: Any,
) -> Response:
    return await call(
        server.port, {"key": who.key, **fields}, host=host or shop.domain, encoding=encoding
    )


def expect(r: Response, status: int, body: Any) -> None:
    assert (r.status, r.json()) == (status, body), r.body
    assert r.headers["content-type"] == "application/json; charset=utf-8"


async def add(
    server: Served, shop: Shop, who: Account, encoding: str = "form", **fields: Any
) -> int:
    r = await ask(server, shop, who, encoding, action="add", **fields)
    assert r.status == 200, r.body
    assert list(r.json()) == ["order"]
    return int(r.json()["order"])


# -- services ------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_services_lists_the_panel_with_local_and_global_ids(
    server: Served, shop: Shop, encoding: str
) -> None:
    r = await ask(server, shop, shop.alice, encoding, action="services")
    assert r.status == 200
    ours = shop.listing(r.json())
    main = ours["Main"]
    assert list(main) == SERVICE_FIELDS
    assert main == {
        "service": MAIN,
        "name": f"Main {shop.token}",
        "type": "default",
        "category": "Instagram",
        "rate": "0.45",
        "min": 100,
        "max": 100_000,
        "dripfeed": True,
        "refill": True,
        "cancel": True,
        "avg_time": 3600,
    }
    assert ours["Plain"]["service"] == PLAIN
    # Offered on every panel: no local id, so its global id.
    assert ours["Everywhere"]["service"] == shop.global_id
    assert ours["Everywhere"]["rate"] == "2.00"
    assert set(ours) == {"Main", "Plain", "Upstream", "Everywhere", *SERVICE_TYPES}
    assert {s["type"] for n, s in ours.items() if n in SERVICE_TYPES} == set(SERVICE_TYPES)
    # The other panel lists its own service under the same local id, and ours not at all.
    r = await ask(server, shop, shop.stranger, encoding, host=shop.other, action="services")
    theirs = shop.listing(r.json())
    assert set(theirs) == {"Theirs", "Everywhere"}
    assert theirs["Theirs"]["service"] == MAIN and theirs["Theirs"]["rate"] == "9.00"


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_services_show_the_callers_own_prices(
    server: Served, shop: Shop, encoding: str
) -> None:
    r = await ask(server, shop, shop.carol, encoding, action="services")
    ours = shop.listing(r.json())
    assert ours["Main"]["rate"] == "0.30"  # her own rate wins over her discount
    assert ours["Plain"]["rate"] == "0.90"  # 1.00 less 10 %
    assert ours["Everywhere"]["rate"] == "1.80"
    # ... and `add` charges exactly what `services` shows.
    for local, rate in ((MAIN, "0.30"), (PLAIN, "0.90")):
        order = await add(
            server,
            shop,
            shop.carol,
            encoding,
            service=local,
            link="https://instagram.com/carol",
            quantity=1000,
        )
        r = await ask(server, shop, shop.carol, encoding, action="status", order=order)
        assert r.json()["charge"] == rate


# -- add: every type -------------------------------------------------------------------------------

LINK = "instagram.com/p/abc"
# type -> (extra fields, stored quantity, charge at 1.00 per 1000)
TYPE_CASES: dict[str, tuple[dict[str, Any], int, str]] = {
    "default": ({"link": LINK, "quantity": 100}, 100, "0.10"),
    "Package": ({"link": LINK, "quantity": 5000}, 1, "1.00"),
    "Custom Comments": ({"link": LINK, "comments": "nice\n\n great \nwow"}, 3, "0.003"),
    "Custom Comments Package": ({"comments": "first\nsecond"}, 1, "1.00"),
    "Mentions": ({"link": LINK, "quantity": 50, "usernames": "ann\nben"}, 50, "0.05"),
    "Mentions with Hashtags": (
        {"link": LINK, "quantity": 50, "usernames": "ann", "hashtags": "#a\n#b"},
        50,
        "0.05",
    ),
    "Mentions Custom List": ({"link": LINK, "usernames": "u1\nu2\nu3\nu4"}, 4, "0.004"),
    "Mentions Hashtag": ({"link": LINK, "quantity": 20, "hashtag": "#sale"}, 20, "0.02"),
    "Mentions User Followers": (
        {"link": LINK, "quantity": 20, "username": "celebrity"},
        20,
        "0.02",
    ),
    "Mentions Media Likers": (
        {"link": LINK, "quantity": 20, "media": "https://instagram.com/p/xyz"},
        20,
        "0.02",
    ),
    # max * (posts + old_posts) units: 20 * (4 + 1)
    "Subscriptions": (
        {
            "username": "celebrity",
            "min": 10,
            "max": 20,
            "posts": 4,
            "old_posts": 1,
            "delay": 30,
            "expiry": in_days(30),
        },
        100,
        "0.10",
    ),
    "Poll": ({"link": LINK, "quantity": 30, "answer_number": 2}, 30, "0.03"),
    "Comment Likes": ({"link": LINK, "quantity": 30, "username": "commenter"}, 30, "0.03"),
    "Comment Replies": ({"link": LINK, "username": "commenter", "comments": "r1\nr2"}, 2, "0.002"),
}


def test_every_type_has_a_case() -> None:
    assert set(TYPE_CASES) == set(SERVICE_TYPES)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("kind", SERVICE_TYPES)
async def test_add_places_an_order_of_every_type(
    server: Served, shop: Shop, database_url: str, kind: str, encoding: str
) -> None:
    fields, quantity, charge = TYPE_CASES[kind]
    before = await sql_value(
        database_url, "SELECT balance FROM wallets WHERE user_id = $1", shop.bob.user_id
    )
    order = await add(server, shop, shop.bob, encoding, service=shop.types[kind], **fields)
    r = await ask(server, shop, shop.bob, encoding, action="status", order=order)
    expect(
        r,
        200,
        {
            "charge": charge,
            "start_count": "0",
            "status": "Pending",
            "remains": str(quantity),
            "currency": "USD",
        },
    )
    row = (
        await sql(database_url, "SELECT link, quantity, extras FROM orders WHERE id = $1", order)
    )[0]
    assert row["quantity"] == quantity
    assert row["link"] == ("https://" + LINK if fields.get("link") == LINK else "")
    extras = orjson.loads(row["extras"]) if isinstance(row["extras"], str) else row["extras"]
    if kind == "Custom Comments":
        assert extras == {"comments": "nice\ngreat\nwow"}
    if kind == "Subscriptions":
        assert extras["posts"] == 4 and extras["max"] == 20 and extras["expiry"] == in_days(30)
    after = await sql_value(
        database_url, "SELECT balance FROM wallets WHERE user_id = $1", shop.bob.user_id
    )
    assert before - after == money.parse(charge)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize(
    ("kind", "fields", "error"),
    [
        ("Poll", {"link": LINK, "quantity": 30}, "answer_number: required"),
        ("Custom Comments", {"link": LINK}, "comments: required"),
        ("Mentions User Followers", {"link": LINK, "quantity": 20}, "username: required"),
        (
            "Subscriptions",
            {"username": "x", "min": 30, "max": 20, "posts": 1},
            "min: must not exceed max",
        ),
        (
            "Subscriptions",
            {"username": "x", "min": 10, "max": 20, "posts": 1, "expiry": in_days(-1)},
            "expiry: must be in the future",
        ),
        ("default", {"quantity": 100}, "link: required"),
    ],
)
async def test_add_refuses_what_the_type_needs_but_lacks(
    server: Served, shop: Shop, kind: str, fields: dict[str, Any], error: str, encoding: str
) -> None:
    r = await ask(
        server, shop, shop.bob, encoding, action="add", service=shop.types[kind], **fields
    )
    expect(r, 400, {"error": error})


# -- add: boundaries -------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_add_quantity_bounds(server: Served, shop: Shop, encoding: str) -> None:
    for quantity in (99, 100_001, 0):
        r = await ask(
            server,
            shop,
            shop.alice,
            encoding,
            action="add",
            service=MAIN,
            link=LINK,
            quantity=quantity,
        )
        expect(r, 400, {"error": "quantity: must be between 100 and 100000"})
    for quantity in (100, 100_000):
        await add(server, shop, shop.alice, encoding, service=MAIN, link=LINK, quantity=quantity)
    r = await ask(server, shop, shop.alice, encoding, action="add", service=MAIN, link=LINK)
    expect(r, 400, {"error": "quantity: required"})
    r = await ask(
        server, shop, shop.alice, encoding, action="add", service=MAIN, link=LINK, quantity="ten"
    )
    expect(r, 400, {"error": "quantity: must be an integer >= 0"})


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_add_dripfeed_bounds(
    server: Served, shop: Shop, database_url: str, encoding: str
) -> None:
    order = await add(
        server,
        shop,
        shop.alice,
        encoding,
        service=MAIN,
        link=LINK,
        quantity=100,
        runs=10,
        interval=1008,
    )  # exactly 10080 minutes
    r = await ask(server, shop, shop.alice, encoding, action="status", order=order)
    assert r.json()["charge"] == "0.45"  # 0.045 per run, times 10 runs
    assert r.json()["remains"] == "1000"
    row = (await sql(database_url, "SELECT runs, run_interval FROM orders WHERE id = $1", order))[0]
    assert (row["runs"], row["run_interval"]) == (10, 1008)
    for runs, interval in ((17, 593), (1, 10081)):  # 10081 minutes
        r = await ask(
            server,
            shop,
            shop.alice,
            encoding,
            action="add",
            service=MAIN,
            link=LINK,
            quantity=100,
            runs=runs,
            interval=interval,
        )
        expect(r, 400, {"error": "runs: runs * interval must be at most 10080 minutes"})
    for field, value, rule in (
        ("runs", 1001, "between 1 and 1000"),
        ("runs", 0, "between 1 and 1000"),
        ("interval", 43201, "between 1 and 43200"),
    ):
        r = await ask(
            server,
            shop,
            shop.alice,
            encoding,
            action="add",
            service=MAIN,
            link=LINK,
            quantity=100,
            **{"runs": 1, "interval": 1, field: value},
        )
        expect(r, 400, {"error": f"{field}: must be an integer {rule}"})
    r = await ask(
        server,
        shop,
        shop.alice,
        encoding,
        action="add",
        service=MAIN,
        link=LINK,
        quantity=100,
        runs=5,
    )
    expect(r, 400, {"error": "interval: required with runs"})
    # On a service without drip-feed the fields are ignored: one run.
    order = await add(
        server,
        shop,
        shop.alice,
        encoding,
        service=PLAIN,
        link=LINK,
        quantity=100,
        runs=10,
        interval=10,
    )
    r = await ask(server, shop, shop.alice, encoding, action="status", order=order)
    assert (r.json()["charge"], r.json()["remains"]) == ("0.10", "100")


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_add_link_rules(server: Served, shop: Shop, database_url: str, encoding: str) -> None:
    base = "https://instagram.com/"
    exact = base + "a" * (1000 - len(base))
    order = await add(server, shop, shop.alice, encoding, service=MAIN, link=exact, quantity=100)
    assert await sql_value(database_url, "SELECT link FROM orders WHERE id = $1", order) == exact
    r = await ask(
        server,
        shop,
        shop.alice,
        encoding,
        action="add",
        service=MAIN,
        link=exact + "a",
        quantity=100,
    )
    expect(r, 400, {"error": "link: must be a string of at most 1000 characters"})
    for bad, rule in (
        ("javascript:alert(1)", "must be an http or https URL"),
        ("ftp://example.com/x", "must be an http or https URL"),
        ("https://x.com/a b", "must not contain whitespace or control characters"),
        ("https:///path", "must name a host"),
        ("http://@", "must name a host"),
        ("https://:80", "must name a host"),
        ("https://instagram.com:65536/x", "must have a port between 1 and 65535"),
        # 993 characters become 1001 once `https://` is prepended: the limit is on what is stored.
        (exact.removeprefix("https://") + "a", "must be a string of at most 1000 characters"),
    ):
        r = await ask(
            server, shop, shop.alice, encoding, action="add", service=MAIN, link=bad, quantity=100
        )
        expect(r, 400, {"error": f"link: {rule}"})
    order = await add(
        server,
        shop,
        shop.alice,
        encoding,
        service=MAIN,
        link="  HTTP://Example.com/x  ",
        quantity=100,
    )
    assert (
        await sql_value(database_url, "SELECT link FROM orders WHERE id = $1", order)
        == "http://Example.com/x"
    )


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize(
    ("kind", "field", "extra"),
    [
        ("Custom Comments", "comments", {}),
        ("Comment Replies", "comments", {"link": LINK, "username": "author"}),
        ("Mentions Custom List", "usernames", {"link": LINK}),
    ],
)
async def test_counted_types_charge_every_line(
    server: Served,
    shop: Shop,
    database_url: str,
    kind: str,
    field: str,
    extra: dict[str, Any],
    encoding: str,
) -> None:
    # A customer of its own: the shop's are near the order-placement ceiling of 30 a minute.
    who = Account(*await World(database_url).user(shop.domain, balance="10.00"))
    await visible(server.port, shop.domain, who.key)
    lines = "\n".join(f"c{i}" for i in range(1000))
    fields = {"service": shop.types[kind], field: lines, **extra}
    before = await wallet_and_orders(database_url, who.user_id)
    # 1,000 lines go upstream: quantity=10 would charge 10 units and deliver 1,000.
    r = await ask(server, shop, who, encoding, action="add", quantity=10, **fields)
    expect(
        r,
        400,
        {"error": f"quantity: must be the number of non-empty {field} lines (1000), or left out"},
    )
    assert await wallet_and_orders(database_url, who.user_id) == before  # nothing changed
    order = await add(server, shop, who, encoding, **fields)
    r = await ask(server, shop, who, encoding, action="status", order=order)
    assert (r.json()["charge"], r.json()["remains"]) == ("1.00", "1000")  # 1.00 per 1000
    balance, orders = await wallet_and_orders(database_url, who.user_id)
    assert (before[0] - balance, orders - before[1]) == (money.parse("1.00"), 1)
    assert await sql_value(database_url, "SELECT quantity FROM orders WHERE id = $1", order) == 1000
    assert_audit_clean(database_url)


# -- status and balance ----------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_status_single_and_multi(server: Served, shop: Shop, encoding: str) -> None:
    mine = [
        await add(server, shop, shop.alice, encoding, service=MAIN, link=LINK, quantity=q)
        for q in (100, 200)
    ]
    bobs = await add(server, shop, shop.bob, encoding, service=MAIN, link=LINK, quantity=100)
    r = await ask(server, shop, shop.alice, encoding, action="status", order=mine[1])
    expect(
        r,
        200,
        {
            "charge": "0.09",
            "start_count": "0",
            "status": "Pending",
            "remains": "200",
            "currency": "USD",
        },
    )
    assert list(r.json()) == ["charge", "start_count", "status", "remains", "currency"]
    # Up to 100 ids: an object keyed by id, in the order asked, with per-id errors.
    ids = [mine[1], bobs, mine[0], *range(10**15, 10**15 + 97)]
    r = await ask(
        server, shop, shop.alice, encoding, action="status", orders=",".join(map(str, ids))
    )
    assert r.status == 200
    body = r.json()
    assert list(body) == [str(i) for i in ids]
    assert body[str(mine[0])]["remains"] == "100"
    assert body[str(mine[1])]["charge"] == "0.09"
    assert body[str(bobs)] == {"error": "Incorrect order ID"}
    assert body[str(10**15)] == {"error": "Incorrect order ID"}
    r = await ask(
        server,
        shop,
        shop.alice,
        encoding,
        action="status",
        orders=",".join(map(str, [*ids, 10**16])),
    )
    expect(r, 400, {"error": "orders: at most 100 ids"})
    r = await ask(server, shop, shop.alice, encoding, action="status", orders=str(mine[0]))
    assert list(r.json()) == [str(mine[0])]
    r = await ask(server, shop, shop.alice, encoding, action="status", order=bobs)
    expect(r, 400, {"error": "Incorrect order ID"})
    r = await ask(server, shop, shop.alice, encoding, action="status")
    expect(r, 400, {"error": "order: required"})
    r = await ask(server, shop, shop.alice, encoding, action="status", order=1, orders="1")
    expect(r, 400, {"error": "orders: send either order or orders, not both"})


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_balance_follows_every_charge(
    server: Served, database_url: str, encoding: str
) -> None:
    world = World(database_url)
    shop_domain = await world.panel(currency="EUR")
    _, key = await world.user(shop_domain, balance="42.81")
    await world.service(shop_domain, local_id=5, rate="0.45", min=100, max=100_000)
    await offered(server.port, shop_domain, key, 5)

    async def balance() -> Response:
        return await call(
            server.port, {"key": key, "action": "balance"}, host=shop_domain, encoding=encoding
        )

    r = await balance()
    expect(r, 200, {"balance": "42.81", "currency": "EUR"})
    assert list(r.json()) == ["balance", "currency"]
    r = await call(
        server.port,
        {"key": key, "action": "add", "service": 5, "link": LINK, "quantity": 1234},
        host=shop_domain,
        encoding=encoding,
    )
    assert r.status == 200
    expect(await balance(), 200, {"balance": "42.2547", "currency": "EUR"})


async def test_a_local_id_never_turns_into_another_service(
    server: Served, database_url: str
) -> None:
    """A panel's local id that equals some global id: the listing shows one service under that
    number, the one `add` places; deactivated, the number means no service at all, never the
    global one (another service, at another price)."""
    world = World(database_url)
    domain = await world.panel()
    _, key = await world.user(domain)
    shadowed = await world.service(None, name=f"global {domain}", rate="5.00", min=10, max=1000)
    local = await world.service(
        domain, local_id=shadowed, name=f"local {domain}", rate="0.45", min=100, max=100_000
    )
    # The panel's own service without a local id is listed under its global id, unless taken.
    own = await world.service(domain, name=f"own {domain}", rate="3.00", min=10, max=1000)
    await world.service(
        domain, local_id=own, name=f"taker {domain}", rate="0.45", min=100, max=100_000
    )
    await offered(server.port, domain, key, shadowed, own)

    async def listed(number: int = shadowed) -> list[str]:
        r = await call(server.port, {"key": key, "action": "services"}, host=domain)
        return [s["name"] for s in r.json() if s["service"] == number]

    # Each insert is its own catalog change: wait until the last one reached every process.

    async def taken() -> bool:
        return await listed(own) == [f"taker {domain}"]

    await until(taken, 5.0)
    assert await listed() == [f"local {domain}"]
    assert await listed(own) == [f"taker {domain}"]
    r = await call(
        server.port,
        {"key": key, "action": "add", "service": shadowed, "link": LINK, "quantity": 1000},
        host=domain,
    )
    r = await call(
        server.port, {"key": key, "action": "status", "order": r.json()["order"]}, host=domain
    )
    assert r.json()["charge"] == "0.45"
    await sql(database_url, "UPDATE services SET active = false WHERE id = $1", local)
    # quantity 0 places nothing; the local service answers with its own bounds until reloaded.
    probe = {"key": key, "action": "add", "service": shadowed, "link": LINK, "quantity": 0}
    answers = []

    async def reloaded() -> bool:
        answers.append(await call(server.port, probe, host=domain))
        return answers[-1].json() != {"error": "quantity: must be between 100 and 100000"}

    await until(reloaded, 5.0)
    expect(answers[-1], 400, {"error": "Incorrect service ID"})
    assert await listed() == []


async def test_price_changes_reach_a_running_server(server: Served, database_url: str) -> None:
    """A user's own rate and discount, and a service's base rate, changed while the server runs:
    `services` shows the new price within moments and `add` charges exactly that."""
    world = World(database_url)
    domain = await world.panel()
    user, key = await world.user(domain)
    service = await world.service(domain, local_id=1, rate="1.00", min=100, max=100_000)
    await offered(server.port, domain, key, 1)

    async def shown(rate: str) -> None:

        async def priced() -> bool:
            r = await call(server.port, {"key": key, "action": "services"}, host=domain)
            return [s["rate"] for s in r.json() if s["service"] == 1] == [rate]

        await until(priced, 5.0, what=f"rate {rate} shown")
        r = await call(
            server.port,
            {"key": key, "action": "add", "service": 1, "link": LINK, "quantity": 1000},
            host=domain,
        )
        r = await call(
            server.port, {"key": key, "action": "status", "order": r.json()["order"]}, host=domain
        )
        assert r.json()["charge"] == rate

    await shown("1.00")
    await sql(database_url, "UPDATE services SET rate = 200000 WHERE id = $1", service)
    await shown("2.00")
    await sql(database_url, "UPDATE users SET discount_bp = 2500 WHERE id = $1", user)
    await shown("1.50")
    await sql(
        database_url,
        "INSERT INTO user_rates (user_id, service_id, rate) VALUES ($1, $2, 12345)",
        user,
        service,
    )
    await shown("0.12345")
    await sql(database_url, "DELETE FROM user_rates WHERE user_id = $1", user)
    await shown("1.50")
