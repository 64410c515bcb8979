"""schemathesis against a live `panelsrv serve`, from the document the server itself serves at
/api/openapi.json: no 500s, every answer as the document says (status, content type, headers,
body; a 200 also as `x-panelsrv-actions` says for its action), and no money moved by a request
whose answer was an error (the user's wallet, ledger and orders compared around every error
answer), then `panelsrv audit` clean.

Cases are schemathesis's own strategies for the one operation, positive and negative alike, in
every media type the document lists. Each is sent as generated but for what makes it reach past
authentication and lookups: a non-empty `key` becomes the test user's (one user, a known
balance), an `add`'s numeric `service` one of the panel's services, a numeric `order`/`orders`
one of the user's orders, and a `sign` the right signature of the fields as sent (with a fresh
`timestamp`). A webhook URL that would make the server resolve a host name points at an address
literal instead, so no case asks DNS. `positive_data_acceptance` is not checked: a request the
document allows may still be refused (an order that is not cancelable, a balance too low).

`make test` runs EXAMPLES cases with a fixed seed (derandomized); `make fuzz-api` runs many more
(FUZZ_API_EXAMPLES, FUZZ_API_SEED). The figures are printed (pytest -s shows them).
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import jsonschema
import orjson
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from panelsrv import netsafe
from panelsrv.api import sign
from tests.e2e.kit import assert_audit_clean
from tests.e2e.served import World, offered
from tests.kit.stack import Served
from tests.kit.wire import exchange, request

EXAMPLES = int(os.environ.get("FUZZ_API_EXAMPLES", "300"))
SEED = int(os.environ.get("FUZZ_API_SEED", "17"))
DERANDOMIZE = "FUZZ_API_SEED" not in os.environ  # a seed given: a run of its own
# Positive cases per negative one. schemathesis takes ~0.2 s to build a negative case of this
# document (~0.015 s a positive one), so the short run leans positive; the long one is even.
POSITIVE_SHARE = 1 if "FUZZ_API_EXAMPLES" in os.environ else 3
BALANCE = "50.00"
WEBHOOK_LITERAL = "https://93.184.216.34/hook"  # a public address literal: nothing to resolve


@dataclass
class Stage:
    port: int
    domain: str
    user_id: int
    key: str
    services: list[int]
    document: dict[str, Any]
    database_url: str
    conn: asyncpg.Connection
    loop: asyncio.AbstractEventLoop
    statuses: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def books(self) -> tuple[object, ...]:
        """What an error answer must leave as it was: the wallet, the ledger, the orders."""
        row = self.run(
            self.conn.fetchrow(
                "SELECT (SELECT balance FROM wallets WHERE user_id = $1),"
                " (SELECT count(*) FROM ledger_entries WHERE user_id = $1),"
                " (SELECT count(*) FROM orders WHERE user_id = $1),"
                " (SELECT count(*) FROM refills r JOIN orders o ON o.id = r.order_id"
                "  WHERE o.user_id = $1),"
                " (SELECT string_agg(id || status, ',' ORDER BY id) FROM orders"
                "  WHERE user_id = $1)",
                self.user_id,
            )
        )
        return tuple(row)

    def orders(self) -> list[int]:
        rows = self.run(self.conn.fetch("SELECT id FROM orders WHERE user_id = $1", self.user_id))
        return [r["id"] for r in rows]


async def _setup(port: int, database_url: str) -> tuple[str, int, str, list[int], bytes]:
    world = World(database_url)
    domain = await world.panel()
    user_id, key = await world.user(domain, balance=BALANCE)
    services = [
        await world.service(domain, rate="0.50", min=10, max=10_000, cancel=True, refill=True,
                            dripfeed=True),
        await world.service(domain, type="Package", rate="1.00", min=1, max=1),
        await world.service(domain, type="Custom Comments", rate="2.00", min=1, max=1000,
                            cancel=True),
    ]  # fmt: skip
    # Not the Package: it takes any quantity, so `offered`'s probe would place orders with it.
    await offered(port, domain, key, services[0], services[2])
    served = await exchange(port, request(b"GET", b"/api/openapi.json", host=domain))
    assert served.status == 200
    return domain, user_id, key, services, served.body


@pytest.fixture(scope="module")
def stage(server: Served, database_url: str) -> Iterator[Stage]:
    loop = asyncio.new_event_loop()
    try:
        domain, user_id, key, services, body = loop.run_until_complete(
            _setup(server.port, database_url)
        )
        conn = loop.run_until_complete(asyncpg.connect(database_url))
        try:
            yield Stage(server.port, domain, user_id, key, services, orjson.loads(body),
                        database_url, conn, loop)  # fmt: skip
        finally:
            loop.run_until_complete(conn.close())
    finally:
        loop.close()


def _number(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        return int(value)
    return None


def aim(case: Case, stage: Stage) -> None:
    """Make the generated case reach past the key, the lookups and the signature (see the
    module's docstring); everything else stays as generated."""
    if not isinstance(case.body, dict):
        return
    body = dict(case.body)
    if isinstance(body.get("key"), str) and body["key"]:
        body["key"] = stage.key
    tag = body.get("action")
    service = _number(body.get("service"))
    if tag == "add" and service is not None:
        body["service"] = stage.services[service % len(stage.services)]
    orders = stage.orders() if tag in ("status", "cancel", "refill") else []
    for name in ("order", "orders"):
        number = _number(body.get(name))
        if orders and number is not None:
            body[name] = orders[number % len(orders)]
    url = body.get("url")
    if tag == "webhook_add" and isinstance(url, str):
        try:
            host, _ = netsafe.check_url(url, False)
            netsafe.check_literal(host, True)
        except netsafe.UnsafeUrl:
            pass  # refused before any lookup
        else:
            if not _is_literal(host):
                body["url"] = WEBHOOK_LITERAL
    if isinstance(body.get("sign"), str) and body.get("key") == stage.key:
        if _number(body.get("timestamp")) is not None:
            body["timestamp"] = int(time.time())
        version = _number(body.get("sign_version"))
        fields = {k: v if isinstance(v, str) else str(v) for k, v in body.items() if k != "sign"}
        body["sign"] = sign.compute(stage.key, fields, version if version in (1, 2) else 1)
    # Assigned, not edited in place: schemathesis then validates the body again, so a negative
    # case that the edits made valid (a negative id became an order's) counts as positive.
    case.body = body


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def conforms_to_its_action(stage: Stage, tag: object, payload: object) -> None:
    """A 200's body against the schema `x-panelsrv-actions` gives its action's replies."""
    actions = stage.document["paths"]["/api/v2"]["post"]["x-panelsrv-actions"]
    if tag not in actions:
        return  # an action field the decoder did not take: answered 400, not 200
    schema = {**stage.document, **actions[tag]["reply"]}
    jsonschema.Draft202012Validator(schema).validate(payload)


def test_schemathesis_finds_no_500_no_nonconforming_answer_and_no_money_moved_by_an_error(
    stage: Stage,
) -> None:
    schema = schemathesis.openapi.from_dict(stage.document)
    operation = schema["/api/v2"]["POST"]
    positive = operation.as_strategy(GenerationMode.POSITIVE)
    negative = operation.as_strategy(GenerationMode.NEGATIVE)
    cases = st.integers(0, POSITIVE_SHARE).flatmap(lambda i: negative if i == 0 else positive)
    base_url = f"http://127.0.0.1:{stage.port}"
    session = requests.Session()
    sent = 0
    started = time.monotonic()

    @seed(SEED)
    @settings(max_examples=EXAMPLES, derandomize=DERANDOMIZE, database=None, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                     HealthCheck.data_too_large])  # fmt: skip
    @given(cases)
    def one(case: Case) -> None:
        nonlocal sent
        aim(case, stage)
        before = stage.books()
        response = case.call(base_url=base_url, session=session, headers={"Host": stage.domain},
                             timeout=30)  # fmt: skip
        sent += 1
        tag = case.body.get("action") if isinstance(case.body, dict) else None
        stage.statuses[(str(tag), response.status_code)] += 1
        case.validate_response(response, excluded_checks=[positive_data_acceptance])
        if response.status_code == 200:
            conforms_to_its_action(stage, tag, response.json())
        else:
            assert stage.books() == before, (response.status_code, response.text, case.body)

    one()
    elapsed = time.monotonic() - started
    assert_audit_clean(stage.database_url)
    by_status = collections.Counter(status for (_, status) in stage.statuses.elements())
    print(f"\nschemathesis: {sent} requests in {elapsed:.1f} s, seed {SEED}"
          f"{' (derandomized)' if DERANDOMIZE else ''};"
          f" statuses {dict(sorted(by_status.items()))}")  # fmt: skip
    for (tag, status), count in sorted(stage.statuses.items()):
        print(f"  {tag:>16} {status}: {count}")
    assert sum(c for (t, s), c in stage.statuses.items() if s == 200 and t != "None") > 0
