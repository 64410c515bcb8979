"""Written like a reseller's script: plain `urllib.request` form posts and `requests` with
`data=`, `json=` and `files=` (multipart), against a real `panelsrv serve`. They get the same
answers as the raw-socket client of the other tests. Plain sync tests: the server is a
subprocess."""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import pytest
import requests

from panelsrv.store import admin, db
from tests.conftest import run_async
from tests.e2e.served import call
from tests.e2e.shop import MAIN, Shop
from tests.kit.stack import Served
from tests.kit.waiting import until_sync

LINK = "https://instagram.com/p/compat"


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def url(server: Served) -> str:
    return f"http://127.0.0.1:{server.port}/api/v2"


def raw(server: Served, shop: Shop, fields: dict[str, Any]) -> tuple[int, Any]:
    r = run_async(call(server.port, fields, host=shop.domain))
    return r.status, json.loads(r.body)


def with_urllib(server: Served, shop: Shop, fields: dict[str, Any]) -> tuple[int, Any]:
    req = urllib.request.Request(
        url(server), data=urlencode(fields).encode(), headers={"Host": shop.domain}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # urllib raises on 4xx; the body is the answer
        return exc.code, json.loads(exc.read())


def with_requests(
    session: requests.Session, server: Served, shop: Shop, fields: dict[str, Any], how: str
) -> tuple[int, Any]:
    headers = {"Host": shop.domain}
    if how == "data":
        r = session.post(url(server), data=fields, headers=headers, timeout=10)
    elif how == "json":
        r = session.post(url(server), json=fields, headers=headers, timeout=10)
    elif how == "files":  # multipart, plain parts (no filename)
        r = session.post(
            url(server),
            files={k: (None, str(v)) for k, v in fields.items()},
            headers=headers,
            timeout=10,
        )
    else:  # multipart, each part sent as a "file"
        r = session.post(
            url(server), files={k: str(v) for k, v in fields.items()}, headers=headers, timeout=10
        )
    return r.status_code, r.json()


CLIENTS = ["urllib", "data", "json", "files", "files-named"]


def ask(
    session: requests.Session, server: Served, shop: Shop, fields: dict[str, Any], client: str
) -> tuple[int, Any]:
    if client == "urllib":
        return with_urllib(server, shop, fields)
    return with_requests(session, server, shop, fields, client)


@pytest.mark.parametrize("client", CLIENTS)
def test_reads_and_errors_match_the_raw_client(
    session: requests.Session, server: Served, shop: Shop, client: str
) -> None:
    key = shop.alice.key
    for fields in (
        {"key": key, "action": "balance"},
        {"key": key, "action": "services"},
        {"key": key, "action": "status", "order": 10**15},
        {"key": key, "action": "status", "orders": f"{10**15},{10**15 + 1}"},
        {"key": key, "action": "nope"},
        {"key": key + "x", "action": "balance"},
        {"key": key, "action": "add", "service": MAIN, "link": LINK, "quantity": 1},
        {"key": key, "action": "add", "service": 10**15, "link": LINK, "quantity": 1000},
        {"action": "balance"},
    ):
        assert ask(session, server, shop, fields, client) == raw(server, shop, fields), fields


@pytest.mark.parametrize("client", CLIENTS)
def test_an_order_round_trip(
    session: requests.Session, server: Served, shop: Shop, client: str
) -> None:
    key = shop.bob.key
    status, body = ask(
        session,
        server,
        shop,
        {"key": key, "action": "add", "service": MAIN, "link": LINK, "quantity": 1000},
        client,
    )
    assert status == 200 and list(body) == ["order"]
    order = body["order"]
    fields = {"key": key, "action": "status", "order": order}
    answer = ask(session, server, shop, fields, client)
    assert answer == raw(server, shop, fields)
    assert answer == (
        200,
        {
            "charge": "0.45",
            "start_count": "0",
            "status": "Pending",
            "remains": "1000",
            "currency": "USD",
        },
    )
    status, body = ask(
        session, server, shop, {"key": key, "action": "cancel", "order": order}, client
    )
    assert (status, body) == (200, {"cancel": 1})


@pytest.mark.parametrize("client", CLIENTS)
def test_the_seeds_signing_snippet(
    session: requests.Session, server: Served, shop: Shop, client: str
) -> None:
    api_key = shop.alice.key
    payload: dict[str, Any] = {"key": api_key, "action": "balance"}
    canonical = "&".join(f"{k}={v}" for k, v in sorted(payload.items()))
    payload["sign"] = hmac.new(api_key.encode(), canonical.encode(), hashlib.sha256).hexdigest()
    status, body = ask(session, server, shop, payload, client)
    assert status == 200 and list(body) == ["balance", "currency"]
    payload["sign"] = payload["sign"][::-1]
    assert ask(session, server, shop, payload, client) == (401, {"error": "Invalid signature"})


def test_raise_for_status_sdks_on_a_legacy_panel(
    session: requests.Session, server: Served, shop: Shop, database_url: str
) -> None:
    """An old SDK calls raise_for_status() first: on a `legacy_errors` panel it reads the
    error body instead of crashing."""

    async def legacy() -> None:
        conn = await db.connect(database_url)
        try:
            await admin.set_panel(conn, shop.other, "legacy_errors", "true")
        finally:
            await conn.close()

    run_async(legacy())
    headers = {"Host": shop.other}
    answers = []

    def legacy_everywhere() -> bool:  # once the process has the panel's new setting
        answers.append(session.post(
            url(server), data={"key": shop.stranger.key, "action": "status", "order": 10**15},
            headers=headers, timeout=10,
        ))  # fmt: skip
        return answers[-1].status_code == 200

    until_sync(legacy_everywhere, 5.0)
    r = answers[-1]
    assert r.json() == {"error": "Incorrect order ID"}


def balance(server: Served, shop: Shop, key: str) -> str:
    status, body = raw(server, shop, {"key": key, "action": "balance"})
    assert status == 200
    return str(body["balance"])


@pytest.mark.parametrize("client", ["data", "json", "files"])
def test_options_left_unset_make_a_normal_order(
    session: requests.Session, server: Served, shop: Shop, client: str
) -> None:
    """What a Node SDK sends on every order (`runs=undefined&interval=undefined`), in form,
    JSON and multipart: the normal order at the normal charge."""
    key = shop.alice.key
    before = balance(server, shop, key)
    fields = {"key": key, "action": "add", "service": MAIN, "link": LINK, "quantity": 1000}
    unset = {"runs": "undefined", "interval": "undefined"}
    if client == "json":
        unset["interval"] = None  # type: ignore[assignment]  # what JSON.stringify of null sends
    status, body = ask(session, server, shop, {**fields, **unset}, client)
    assert status == 200 and list(body) == ["order"], body
    answer = raw(server, shop, {"key": key, "action": "status", "order": body["order"]})
    assert answer[1]["charge"] == "0.45" and answer[1]["remains"] == "1000"
    after = balance(server, shop, key)
    assert Decimal(before) - Decimal(after) == Decimal("0.45")


def test_id_lists_where_clients_put_them(
    session: requests.Session, server: Served, shop: Shop
) -> None:
    key = shop.bob.key
    add = {"key": key, "action": "add", "service": MAIN, "link": LINK, "quantity": 100}
    ids = [raw(server, shop, add)[1]["order"] for _ in range(3)]
    text = ",".join(map(str, ids))
    multi = raw(server, shop, {"key": key, "action": "status", "orders": text})
    assert multi[0] == 200 and sorted(multi[1]) == sorted(map(str, ids))
    # A Node SDK's comma-separated ids in `order`: the multi-status shape.
    assert (
        with_requests(
            session, server, shop, {"key": key, "action": "status", "order": text}, "data"
        )
        == multi
    )
    # JSON: an array of ids, or a single number, for `orders`.
    assert (
        with_requests(
            session, server, shop, {"key": key, "action": "status", "orders": ids}, "json"
        )
        == multi
    )
    one = with_requests(
        session, server, shop, {"key": key, "action": "status", "orders": ids[0]}, "json"
    )
    assert one == (200, {str(ids[0]): multi[1][str(ids[0])]})
