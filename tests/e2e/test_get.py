"""GET clients (`pr2up-py`, `optsmm`): the panel setting `accept_get`, against a real
`panelsrv serve` that logs at debug level with its access log on.

With it on, `GET /api/v2?<fields>` answers exactly what `POST /api/v2` with `<fields>` as its
form body answers (the same bytes: an unencoded link included), takes the same per-user tokens
and counts the same strikes; with it off, a GET is a 405 that says "use POST". Whatever the
setting, no key sent in a query string appears in any line the server logged.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from panelsrv.store import keys
from tests.conftest import run_async
from tests.e2e.kit import cli, sql, sql_value
from tests.e2e.served import World, visible
from tests.e2e.shop import MAIN, Shop
from tests.http.httpkit import Response
from tests.kit import wire
from tests.kit.stack import QUIET, Served
from tests.kit.waiting import until
from tests.kit.wire import FORM, exchange, request

LOGGED = {"access_log": "true", "log_level": "debug"}
LINK = "https://x.com/p?a=1"  # as published clients send it: not percent-encoded
BAD_KEY = keys.generate()
# Every key a test of this module sends in a query string: none may reach the logs.
QUERIED: set[str] = {BAD_KEY}


@pytest.fixture(scope="module")
def log_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("get") / "serve.log"


@pytest.fixture(scope="module")
def server(database_url: str, log_file: Path) -> Iterator[Served]:
    with Served(database_url, settings={**QUIET, **LOGGED}, output=log_file) as s:
        yield s


@pytest.fixture(scope="module")
def on(server: Served, shop: Shop, database_url: str) -> Shop:
    """The shop's main panel with `accept_get` on, set by the CLI as an operator would, once
    every process has picked it up; its other panel keeps the default (off)."""
    done = cli(database_url, "panel", "set", "--domain", shop.domain, "accept_get", "true")
    assert done["settings"]["accept_get"] is True
    QUERIED.update(a.key for a in (shop.alice, shop.bob, shop.carol, shop.stranger))
    query = b"action=balance&key=" + shop.bob.key.encode()

    async def everywhere() -> bool:  # ten in a row: every process has the setting
        for _ in range(10):
            if (await get(server.port, query, shop.domain)).status != 200:
                return False
        return True

    run_async(until(everywhere, 5.0, what="accept_get on"))
    return shop


async def get(
    port: int, query: bytes, host: str, *, body: bytes = b"", local: str = "127.0.0.1"
) -> Response:
    """`GET /api/v2?<query>`, the query sent as it is (no encoding added)."""
    data = request(b"GET", b"/api/v2?" + query, host=host, body=body or None)
    return await exchange(port, data, source=local)


async def post(port: int, body: bytes, host: str, *, local: str = "127.0.0.1") -> Response:
    """`POST /api/v2` with `body` as its form body, as it is."""
    return await exchange(port, wire.post(body, FORM, host=host), source=local)


def fields(key: str, **more: object) -> bytes:
    """`key=<key>&name=value...` without any encoding (the values here need none, or are
    sent raw on purpose)."""
    return "&".join([f"key={key}", *(f"{k}={v}" for k, v in more.items())]).encode()


async def both(port: int, host: str, data: bytes) -> tuple[Response, Response]:
    """The POST of `data` as a form body, then the GET of `data` as the query string."""
    return await post(port, data, host), await get(port, data, host)


def same(posted: Response, got: Response) -> None:
    assert (got.status, got.body) == (posted.status, posted.body), (posted.body, got.body)
    assert got.headers["content-type"] == posted.headers["content-type"]


async def test_get_answers_what_the_post_of_its_fields_answers(
    server: Served, on: Shop, database_url: str
) -> None:
    port, host, key = server.port, on.domain, on.alice.key
    for action in ("balance", "services"):
        same(*await both(port, host, fields(key, action=action)))

    before = await sql_value(
        database_url, "SELECT balance FROM wallets WHERE user_id = $1", on.alice.user_id
    )
    add = fields(key, action="add", service=MAIN, link=LINK, quantity=1000)
    posted, got = await both(port, host, add)
    assert posted.status == got.status == 200, (posted.body, got.body)
    ids = [posted.json()["order"], got.json()["order"]]
    assert ids[0] != ids[1]
    rows = await sql(
        database_url, "SELECT link, quantity, charge FROM orders WHERE id = ANY($1)", ids
    )
    assert [tuple(r) for r in rows] == [(LINK, 1000, rows[0]["charge"])] * 2
    after = await sql_value(
        database_url, "SELECT balance FROM wallets WHERE user_id = $1", on.alice.user_id
    )
    assert before - after == 2 * rows[0]["charge"]

    for order in ids:  # the same order asked both ways: the same answer
        same(*await both(port, host, fields(key, action="status", order=order)))
    same(*await both(port, host, fields(key, action="status", orders=f"{ids[0]},{ids[1]}")))
    # Cancelled one each way: the same answer, and both orders are canceled.
    posted = await post(port, fields(key, action="cancel", order=ids[0]), host)
    got = await get(port, fields(key, action="cancel", order=ids[1]), host)
    same(posted, got)
    assert got.json() == {"cancel": 1}
    for order in ids:
        same(*await both(port, host, fields(key, action="status", order=order)))

    # Refusals: the same error, from the same decoding.
    for data in (
        fields(BAD_KEY, action="balance"),
        fields(key, action="nothing"),
        b"action=balance",
        fields(key, action="balance") + b"&key=" + key.encode(),  # a field sent twice
        fields(key, action="add", service=MAIN, link=LINK, quantity="1e3"),
        fields(key, action="add", service=MAIN, link=LINK, quantity=10),  # below the minimum
        fields(key, action="status", order=999_999_999),
        fields(key, action="balance") + b"&x=%ff",  # not UTF-8
    ):
        same(*await both(port, host, data))
    r = await get(port, fields(BAD_KEY, action="balance"), host)
    assert (r.status, r.json()) == (401, {"error": "Invalid API key"})


async def test_a_get_with_a_body_is_refused_and_changes_nothing(
    server: Served, on: Shop, database_url: str
) -> None:
    count = "SELECT count(*) FROM orders WHERE user_id = $1"
    orders = await sql_value(database_url, count, on.bob.user_id)
    add = fields(on.bob.key, action="add", service=MAIN, link=LINK, quantity=1000)
    r = await get(server.port, b"action=add", on.domain, body=add)
    assert (r.status, r.json()) == (
        400,
        {"error": "A GET carries its fields in the query string, not in a body"},
    )
    assert await sql_value(database_url, count, on.bob.user_id) == orders


async def test_without_accept_get_a_get_is_a_405_that_says_use_post(
    server: Served, on: Shop
) -> None:
    """The other panel keeps the default; an unknown host has no panel to allow it."""
    stranger = fields(on.stranger.key, action="balance")
    assert (await post(server.port, stranger, on.other)).status == 200
    for host in (on.other, "nobody.example"):
        r = await get(server.port, stranger, host)
        assert (r.status, r.json()) == (405, {"error": "Method not allowed: use POST"})
        assert r.headers["allow"] == "POST"
    # A method no panel takes, on the panel that takes GET: its 405 says the same.
    r = await exchange(
        server.port,
        b"PUT /api/v2?%s HTTP/1.1\r\nHost: %s\r\n\r\n" % (stranger, on.domain.encode()),
    )
    assert (r.status, r.json()) == (405, {"error": "Method not allowed: use POST"})


async def test_turning_it_off_again_takes_effect(server: Served, database_url: str) -> None:
    world = World(database_url)
    domain = await world.panel({"accept_get": "true"})
    _, key = await world.user(domain)
    QUERIED.add(key)
    await visible(server.port, domain, key)
    assert (await get(server.port, fields(key, action="balance"), domain)).status == 200
    cli(database_url, "panel", "set", "--domain", domain, "accept_get", "false")
    deadline = time.monotonic() + 5
    while (r := await get(server.port, fields(key, action="balance"), domain)).status != 405:
        assert time.monotonic() < deadline, r.body


async def test_gets_take_the_same_tokens_and_strikes_as_posts(
    database_url: str, tmp_path: Path
) -> None:
    """Per-user cap 3 (no refill to speak of) and a block after 2 bad keys: GETs and POSTs
    draw on the same buckets. Each case comes from its own loopback address."""
    world = World(database_url)
    domain = await world.panel({"accept_get": "true"})
    (_, alice), (_, carol) = await world.user(domain), await world.user(domain)
    QUERIED.update((alice, carol))
    log = tmp_path / "guarded.log"
    settings = {
        **LOGGED,
        "never_block": "",
        "strike_limit": "2",
        "block_seconds": "60",
        "user_rate": "0.01",
        "user_burst": "3",
    }
    # (the panel and its users exist before the server starts: its catalog has them when ready)
    with Served(database_url, settings=settings, output=log) as guarded:
        port = guarded.port
        balance = fields(alice, action="balance")
        assert (await post(port, balance, domain)).status == 200
        assert (await get(port, balance, domain)).status == 200
        assert (await post(port, balance, domain)).status == 200
        for r in (await get(port, balance, domain), await post(port, balance, domain)):
            assert (r.status, r.json()) == (
                429,
                {"error": "Too many requests: your account allows 0.01 requests/s (burst 3)"},
            )
            assert int(r.headers["retry-after"]) >= 1

        bad = fields(BAD_KEY, action="balance")
        ok = fields(carol, action="balance")
        # one bad POST and one bad GET block the address, as two bad POSTs do
        for local, sends in (
            ("127.0.0.3", (post, get)),
            ("127.0.0.4", (get, get)),
            ("127.0.0.5", (post, post)),
        ):
            for send in sends:
                r = await send(port, bad, domain, local=local)
                assert (r.status, r.json()) == (401, {"error": "Invalid API key"})
            r = await post(port, ok, domain, local=local)
            assert (r.status, r.json()) == (429, {"error": "Too many requests"}), local
        # one bad GET alone is one strike: the address is not blocked
        assert (await get(port, bad, domain, local="127.0.0.6")).status == 401
        assert (await post(port, ok, domain, local="127.0.0.6")).status == 200
        await refused_with_a_debug_line(port, ok, domain)
    assert_keys_not_logged(log)


async def refused_with_a_debug_line(port: int, query: bytes, host: str) -> None:
    """Requests whose refusal is logged at debug level (with its reason): a malformed one
    (two Hosts), a 405 with a body too large to read and drop."""
    malformed = b"GET /api/v2?%s HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" % query
    assert (await exchange(port, malformed)).status == 400
    large = b"PUT /api/v2?%s HTTP/1.1\r\nHost: %s\r\nContent-Length: 100000\r\n\r\n" % (
        query, host.encode()
    )  # fmt: skip
    assert (await exchange(port, large)).status == 405


def assert_keys_not_logged(log: Path) -> None:
    text = log.read_text(errors="replace")
    assert " panelsrv.access: " in text  # the access log was on: there was something to leak
    assert "DEBUG " in text
    for key in QUERIED:
        assert key not in text, f"a key sent in a query string was logged: {log}"


async def test_no_key_from_a_query_string_is_logged(
    server: Served, on: Shop, log_file: Path
) -> None:
    """Last in the module: what every test above sent (on and off, good keys and bad, PUTs
    refused at the door) appears in no line the server logged; nor does the query of requests
    refused with a debug line (a malformed one; a 405 whose large body is not read)."""
    query = fields(on.carol.key, action="balance")
    for host in (on.domain, on.other):
        await get(server.port, query, host)
    await refused_with_a_debug_line(server.port, query, on.domain)
    assert_keys_not_logged(log_file)
