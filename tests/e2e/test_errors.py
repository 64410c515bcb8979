"""Every documented error, signatures, the API key's scope and what an error may say, against a
real `panelsrv serve`, in form and JSON encodings: API.md's error table, exact statuses and
messages, nothing internal in any body, a 500 that says only "Internal server error"."""

from __future__ import annotations

import secrets
import time
from typing import Any

import pytest

from panelsrv.servicetypes import SERVICE_TYPES
from panelsrv.store import keys
from tests.e2e.kit import assert_no_leak, execute, signed, sql
from tests.e2e.served import World, call, offered
from tests.e2e.shop import HIDDEN, INACTIVE, MAIN, TYPE_BASE, Shop
from tests.http.httpkit import Client, Response
from tests.kit.stack import Served, served

ENCODINGS = ["form", "json"]
LINK = "https://instagram.com/p/err"
NOWHERE = 10**15


def expect(r: Response, status: int, message: str) -> None:
    assert (r.status, r.json()) == (status, {"error": message}), r.body
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    assert_no_leak(r)


async def ask(
    server: Served,
    shop: Shop,
    fields: dict[str, Any],
    encoding: str = "form",
    host: str | None = None,
) -> Response:
    return await call(server.port, fields, host=host or shop.domain, encoding=encoding)


# -- the error table -----------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_the_error_table(
    server: Served, shop: Shop, database_url: str, encoding: str
) -> None:
    key = shop.alice.key
    add = {"key": key, "action": "add", "service": MAIN, "link": LINK, "quantity": 1000}
    cases: list[tuple[dict[str, Any], int, str]] = [
        # 400 missing / invalid field: names the field and the rule
        ({"action": "balance"}, 400, "key: required"),
        ({**add, "quantity": 5}, 400, "quantity: must be between 100 and 100000"),
        ({k: v for k, v in add.items() if k != "service"}, 400, "service: required"),
        ({**add, "service": "abc"}, 400, "service: must be an integer >= 1"),
        ({**add, "service": 0}, 400, "service: must be an integer >= 1"),
        ({**add, "service": 2**63}, 400, "service: must be an integer >= 1"),
        ({**add, "quantity": -1}, 400, "quantity: must be an integer >= 0"),
        ({"key": key, "action": "status", "order": "1x"}, 400, "order: must be an integer >= 1"),
        (
            {"key": key, "action": "status", "orders": "1,,2"},
            400,
            "orders: must be comma-separated positive integers",
        ),
        (
            {"key": key, "action": "status", "orders": "1,-2"},
            400,
            "orders: must be comma-separated positive integers",
        ),
        # 400 unknown action
        ({"key": key, "action": "nope"}, 400, "Incorrect action"),
        ({"key": key}, 400, "Incorrect action"),
        ({"key": key, "action": "ADD"}, 400, "Incorrect action"),
        # 400 unknown / inactive service, or another panel's
        ({**add, "service": NOWHERE}, 400, "Incorrect service ID"),
        ({**add, "service": INACTIVE}, 400, "Incorrect service ID"),
        ({**add, "service": shop.foreign_id}, 400, "Incorrect service ID"),
        # 400 single order not found / not yours
        ({"key": key, "action": "status", "order": NOWHERE}, 400, "Incorrect order ID"),
        ({"key": key, "action": "cancel", "order": NOWHERE}, 400, "Incorrect order ID"),
        ({"key": key, "action": "refill", "order": NOWHERE}, 400, "Incorrect order ID"),
        ({"key": key, "action": "refill_status", "refill": NOWHERE}, 400, "Refill not found"),
        # 401 bad key: unknown, malformed, empty, another panel's
        ({"key": keys.generate(), "action": "balance"}, 401, "Invalid API key"),
        (
            {"key": key[:-1] + ("A" if key[-1] != "A" else "B"), "action": "balance"},
            401,
            "Invalid API key",
        ),
        ({"key": "' OR 1=1 --", "action": "balance"}, 401, "Invalid API key"),
        ({"key": "", "action": "balance"}, 401, "Invalid API key"),
        ({"key": shop.stranger.key, "action": "balance"}, 401, "Invalid API key"),
        # 401 bad signature
        ({"key": key, "action": "balance", "sign": "00" * 32}, 401, "Invalid signature"),
        ({"key": key, "action": "balance", "sign": "not hex at all"}, 401, "Invalid signature"),
    ]
    for fields, status, message in cases:
        expect(await ask(server, shop, fields, encoding), status, message)
    # 402: the wallet is too low (and nothing was taken from it)
    user, poor = await World(database_url).user(shop.domain, balance="0.44")
    r = await ask(server, shop, {**add, "key": poor}, encoding)
    expect(r, 402, "Not enough funds on balance")
    assert (await sql(database_url, "SELECT balance FROM wallets WHERE user_id = $1", user))[0][
        0
    ] == 44_000
    # A hidden service is not listed, but whoever knows its id may order it.
    r = await ask(server, shop, {**add, "service": HIDDEN, "quantity": 100}, encoding)
    assert r.status == 200


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (b'{"key": "x", "action": ', b"application/json"),
        (b'["key", "action"]', b"application/json"),
        (b'{"key": "x", "action": "balance", "n": NaN}', b"application/json"),
        (b"key=%FF%FE&action=balance", b"application/x-www-form-urlencoded"),
        (b"key=\xff&action=balance", b"application/x-www-form-urlencoded"),
        (b"key=x&action=balance", b"text/xml"),
        (
            b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--\r\n",
            b"multipart/form-data; boundary=b",
        ),
        (b"[" * 10000 + b"]" * 10000, b"application/json"),
    ],
)
async def test_an_undecodable_body_is_malformed(
    server: Served, shop: Shop, body: bytes, ctype: bytes
) -> None:
    client = await Client.connect(server.port)
    try:
        await client.send(
            b"POST /api/v2 HTTP/1.1\r\nHost: %s\r\nContent-Type: %s\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (shop.domain.encode(), ctype, len(body), body)
        )
        r = await client.final()
    finally:
        await client.close()
    assert r is not None
    expect(r, 400, "Malformed request body")


async def test_a_field_sent_twice_is_refused(server: Served, shop: Shop) -> None:
    client = await Client.connect(server.port)
    try:
        for body, ctype in (
            (b"key=a&action=balance&key=b", b"application/x-www-form-urlencoded"),
            (b'{"key":"a","action":"balance","key":"b"}', b"application/json"),
        ):
            await client.send(
                b"POST /api/v2 HTTP/1.1\r\nHost: %s\r\nContent-Type: %s\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (shop.domain.encode(), ctype, len(body), body)
            )
            r = await client.final()
            assert r is not None
            expect(r, 400, "key: sent more than once")
    finally:
        await client.close()


async def test_transport_errors(server: Served, shop: Shop) -> None:
    client = await Client.connect(server.port)
    try:
        await client.send(b"GET /api/v2 HTTP/1.1\r\nHost: %s\r\n\r\n" % shop.domain.encode())
        r = await client.final()
        assert r is not None and r.status == 405 and r.headers["allow"] == "POST"
        expect(r, 405, "Method not allowed: use POST")
        await client.send(
            b"POST /api/v3 HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\n\r\n" % shop.domain.encode()
        )
        r = await client.final()
        assert r is not None
        expect(r, 404, "Not found")
        # Both spellings of the endpoint, and query-string fields under the body's.
        await client.send(
            b"POST /api/v2/?action=balance HTTP/1.1\r\nHost: %s\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\nkey=%s"
            % (shop.domain.encode(), len(shop.alice.key) + 4, shop.alice.key.encode())
        )
        r = await client.final()
        assert r is not None and r.status == 200 and list(r.json()) == ["balance", "currency"]
    finally:
        await client.close()


async def test_an_unknown_host_is_refused_without_a_default_panel(
    server: Served, shop: Shop
) -> None:
    for host in ("nobody.example", "127.0.0.1", shop.domain + ".evil.example"):
        r = await ask(server, shop, {"key": shop.alice.key, "action": "balance"}, host=host)
        expect(r, 401, "Invalid API key")


# -- signatures ----------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_signatures(server: Served, shop: Shop, encoding: str) -> None:
    key = shop.alice.key
    balance = {"key": key, "action": "balance"}
    r = await ask(server, shop, signed(balance, key), encoding)
    assert r.status == 200, r.body
    upper = signed(balance, key)
    upper["sign"] = str(upper["sign"]).upper()
    assert (await ask(server, shop, upper, encoding)).status == 200
    # JSON numbers are signed as Python's str() renders them.
    add = {"key": key, "action": "add", "service": MAIN, "link": LINK, "quantity": 1000}
    r = await ask(server, shop, signed(add, key), encoding)
    assert r.status == 200, r.body
    # Wrong: another key, a field changed or added after signing, no field signed at all.
    expect(
        await ask(server, shop, signed(balance, shop.bob.key), encoding), 401, "Invalid signature"
    )
    tampered = {**signed(add, key), "quantity": 100_000}
    expect(await ask(server, shop, tampered, encoding), 401, "Invalid signature")
    extended = {**signed(add, key), "runs": 10, "interval": 60}
    expect(await ask(server, shop, extended, encoding), 401, "Invalid signature")
    # Freshness: a signed timestamp must be within 300 s of the server clock. The server's clock
    # runs on while these go out, so the rows keep clear of the edge (tests/api/test_sign.py pins
    # the edge itself against a fixed clock): 301 s ahead turns into 300 once a second passes.
    now = int(time.time())
    for offset, status in (
        (0, 200),
        (-270, 200),
        (270, 200),
        (-330, 401),
        (330, 401),
        (-(10**6), 401),
    ):
        r = await ask(server, shop, signed({**balance, "timestamp": now + offset}, key), encoding)
        if status == 200:
            assert r.status == 200, (offset, r.body)
        else:
            expect(r, 401, "Invalid signature")
    # A timestamp without a signature is just a field.
    r = await ask(server, shop, {**balance, "timestamp": now - 10**6}, encoding)
    assert r.status == 200


# -- scope ---------------------------------------------------------------------------------------


FORBIDDEN = [
    "key_create",
    "keys",
    "key_list",
    "key_revoke",
    "keys_rotate",
    "password",
    "password_change",
    "email",
    "2fa",
    "transfer",
    "withdraw",
    "admin",
    "users",
    "user_add",
    "add_funds",
    "funds",
    "balance_add",
    "refund",
    "set_rate",
    "rate_set",
    "panel_set",
    "provider_add",
    "service_add",
    "migrate",
    "audit",
    "login",
]


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_actions_a_key_must_not_have_do_not_exist(
    server: Served, shop: Shop, database_url: str, encoding: str
) -> None:
    before = await sql(
        database_url,
        "SELECT (SELECT balance FROM wallets WHERE user_id = $1),"
        " (SELECT count(*) FROM api_keys WHERE user_id = $1)",
        shop.alice.user_id,
    )
    for action in FORBIDDEN:
        fields = {
            "key": shop.alice.key,
            "action": action,
            "amount": "1000",
            "user": 1,
            "email": "x@example.test",
            "password": "x",
            "to": shop.bob.user_id,
        }
        expect(await ask(server, shop, fields, encoding), 400, "Incorrect action")
    after = await sql(
        database_url,
        "SELECT (SELECT balance FROM wallets WHERE user_id = $1),"
        " (SELECT count(*) FROM api_keys WHERE user_id = $1)",
        shop.alice.user_id,
    )
    assert before == after


# -- nothing leaks -------------------------------------------------------------------------------


# (Nothing here makes the server ask DNS: bad host names fail their IDNA encoding first.)
HOSTILE: list[dict[str, Any]] = [
    {"action": "add", "service": MAIN, "link": "https://x.com/\x00", "quantity": 1000},
    {
        "action": "add",
        "service": MAIN,
        "link": "https://x.com/'; DROP TABLE orders; --",
        "quantity": 1000,
    },
    {"action": "add", "service": MAIN, "link": LINK, "quantity": "1" + "0" * 30},
    {"action": "add", "service": MAIN, "link": LINK, "quantity": "0x3e8"},
    {"action": "add", "service": MAIN, "link": LINK, "quantity": 1000, "runs": "1; SELECT 1"},
    {"action": "add", "service": "1 OR 1=1", "link": LINK, "quantity": 1000},
    {"action": "add", "service": MAIN, "link": "x" * 5000, "quantity": 1000},
    {
        "action": "add",
        "service": TYPE_BASE + SERVICE_TYPES.index("Subscriptions"),
        "username": "x",
        "min": 10,
        "max": 20,
        "posts": 1,
        "expiry": "\ud7ff" * 10,
    },
    {
        "action": "add",
        "service": TYPE_BASE + SERVICE_TYPES.index("Subscriptions"),
        "username": "x",
        "min": 10,
        "max": 20,
        "posts": 1,
        "expiry": "31/02/2999",
    },
    {"action": "status", "orders": "9" * 30},
    {"action": "status", "orders": "1," * 150},
    {"action": "status", "order": "١٢٣"},
    {"action": "cancel", "orders": "0"},
    {"action": "refill_status", "refills": str(2**63)},
    {"action": "webhook_add", "url": "https://" + "a" * 64 + ".example/"},
    {"action": "webhook_add", "url": "https://a..example/"},
    {"action": "webhook_add", "url": "https://[fe80::1%25eth0]/"},
    {"action": "webhook_delete", "webhook": -1},
    {
        "action": "add",
        "service": MAIN,
        "link": LINK,
        "quantity": 1000,
        "idempotency_key": "a\r\nSet-Cookie: x=1",
    },
]


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_hostile_input_gets_a_plain_400(server: Served, shop: Shop, encoding: str) -> None:
    for fields in HOSTILE:
        r = await ask(server, shop, {"key": shop.alice.key, **fields}, encoding)
        assert r.status == 400, (fields, r.body)
        assert list(r.json()) == ["error"]
        assert_no_leak(r)


@pytest.mark.parametrize("legacy", [False, True])
async def test_an_unexpected_failure_is_a_bare_500(
    server: Served, database_url: str, legacy: bool
) -> None:
    """A statement failing inside PostgreSQL (here: a trigger planted for one link) is a 500
    that says nothing but "Internal server error", also on a `legacy_errors` panel; the server
    keeps serving."""
    world = World(database_url)
    domain = await world.panel({"legacy_errors": "true"} if legacy else {})
    _, key = await world.user(domain)
    await world.service(domain, local_id=1, rate="1.00", min=10, max=1000)
    await offered(server.port, domain, key, 1)
    token = secrets.token_hex(6)
    name = f"e2e_boom_{token}"
    await execute(
        database_url,
        f"""
        CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.link LIKE '%{token}%' THEN
                RAISE EXCEPTION 'SELECT secret FROM internals WHERE key = ''psk_x''';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER {name} BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION {name}();
    """,
    )
    try:
        fields = {
            "key": key,
            "action": "add",
            "service": 1,
            "quantity": 100,
            "link": f"https://instagram.com/{token}",
        }
        for encoding in ENCODINGS:
            r = await call(server.port, fields, host=domain, encoding=encoding)
            expect(r, 500, "Internal server error")
    finally:
        await execute(database_url, f"DROP TRIGGER {name} ON orders; DROP FUNCTION {name}();")
    r = await call(server.port, {"key": key, "action": "balance"}, host=domain)
    assert r.json() == {"balance": "100.00", "currency": "USD"}  # nothing was charged


async def test_rate_limits_and_blocks(database_url: str, server: Served, shop: Shop) -> None:
    """The per-user soft cap answers 429 + Retry-After to that user only; brute-forcing keys
    gets the address blocked: 429 + Retry-After before its body is even read, valid key or
    not, and the connection closed."""
    with served(
        database_url,
        never_block="",
        strike_limit="3",
        block_seconds="60",
        user_rate="0.1",
        user_burst="3",
    ) as guarded:
        alice = {"key": shop.alice.key, "action": "balance"}
        for _ in range(3):
            r = await call(guarded.port, alice, host=shop.domain)
            assert r.status == 200
        r = await call(guarded.port, alice, host=shop.domain)
        expect(r, 429, "Too many requests: your account allows 0.1 requests/s (burst 3)")
        assert 1 <= int(r.headers["retry-after"]) <= 10
        bob = {"key": shop.bob.key, "action": "balance"}
        assert (await call(guarded.port, bob, host=shop.domain)).status == 200
        for _ in range(3):
            r = await call(
                guarded.port, {"key": keys.generate(), "action": "balance"}, host=shop.domain
            )
            expect(r, 401, "Invalid API key")
        for _ in range(20):  # the block reaches the process within a sync interval
            r = await call(guarded.port, bob, host=shop.domain)
            if r.status == 429:
                break
        expect(r, 429, "Too many requests")
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert r.headers.get("connection") == "close"
