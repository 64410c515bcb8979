"""The Python client against a live `panelsrv serve`, both clients through one scenario each:
every action, a signed client, a 429 with `Retry-After: 1` waited out (an injected sleep: no
test sleeps), an `add` whose answer was lost retried with its key into one order and one charge,
and an `add` sent without a key never retried."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest

from panelsrv.client import (
    AsyncClient,
    Balance,
    Client,
    ItemError,
    OrderStatus,
    ProviderError,
    ProviderUnavailable,
    Retry,
)
from tests.client.kit import Proxy
from tests.e2e.kit import sql_value
from tests.e2e.served import World, offered
from tests.kit.stack import Served, served

Act = Callable[..., Awaitable[Any]]  # act("add", 1, link, 100): one action of one client
KINDS = ["blocking", "async"]
LINK = "https://example.com/p/1?a=1&b=2"


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[Served]:
    with served(database_url, webhook_allow_http="true", webhook_allow_private="true") as s:
        yield s


@dataclass
class Shop:
    domain: str
    user: int
    key: str
    service: int
    name: str


@pytest.fixture(scope="module")
def shop(server: Served, database_url: str) -> Shop:
    async def build() -> Shop:
        world = World(database_url)
        domain = await world.panel()
        user, key = await world.user(domain)
        name = f"client likes {domain}"
        service = await world.service(domain, name=name, cancel=True, refill=True)
        await offered(server.port, domain, key, service, named=name)
        return Shop(domain, user, key, service, name)

    return asyncio.run(build())


@asynccontextmanager
async def client(kind: str, url: str, shop: Shop, **options: Any) -> AsyncIterator[Act]:
    """One of the two clients for `shop`, as one awaitable `act(action, *args, **kwargs)`; the
    blocking one runs in a thread, so the loop (and what it serves) keeps going."""
    options.setdefault("headers", {"Host": shop.domain})
    if kind == "async":
        async with AsyncClient(url, shop.key, **options) as api:
            yield lambda name, *a, **k: getattr(api, name)(*a, **k)
        return
    with Client(url, shop.key, **options) as blocking:
        yield lambda name, *a, **k: asyncio.to_thread(getattr(blocking, name), *a, **k)


def api_url(server: Served) -> str:
    return f"http://127.0.0.1:{server.port}/api/v2"


async def orders_and_charges(database_url: str, user: int, link: str) -> tuple[int, int]:
    orders = await sql_value(
        database_url, "SELECT count(*) FROM orders WHERE user_id = $1 AND link = $2", user, link
    )
    charges = await sql_value(
        database_url,
        "SELECT count(*) FROM ledger_entries l JOIN orders o ON o.id = l.order_id"
        " WHERE o.user_id = $1 AND o.link = $2 AND l.kind = 'charge'",
        user,
        link,
    )
    return orders, charges


@asynccontextmanager
async def through_proxy(
    kind: str, server: Served, shop: Shop, script: list[str], **options: Any
) -> AsyncIterator[tuple[Act, Proxy, list[float]]]:
    """A client for `shop` through a `Proxy` playing `script`, its sleep only recording the
    waits asked: (act, proxy, the waits)."""
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    options["sleep"] = slept.append if kind == "blocking" else sleep
    with Proxy(server.port, script) as proxy:
        async with client(kind, proxy.url(), shop, **options) as act:
            yield act, proxy, slept


@pytest.mark.parametrize("kind", KINDS)
async def test_every_action_answers_its_typed_result(kind: str, server: Served, shop: Shop):
    async with client(kind, api_url(server), shop) as act:
        services = await act("services")
        (mine,) = [s for s in services if s.service == str(shop.service)]
        assert (mine.name, mine.rate, mine.min, mine.max) == (
            shop.name,
            Decimal("1.00"),
            10,
            100_000,
        )
        assert mine.cancel and mine.refill and mine.type == "default"

        balance = await act("balance")
        assert isinstance(balance, Balance) and balance.currency == "USD"

        order = await act("add", shop.service, f"{LINK}&{kind}", 100, country="de")
        assert order.isdigit()
        status = await act("status", order)
        assert status == OrderStatus(
            status="Pending", start_count=0, remains=100, charge=Decimal("0.10"), currency="USD"
        )
        many = await act("status", [int(order), "999999999999"])
        assert many == {order: status, "999999999999": ItemError("Incorrect order ID")}

        # A pending order has nothing to refill; refused alike singly and in a list.
        with pytest.raises(ProviderError) as refused:
            await act("refill", order)
        assert refused.value.http_status == 400 and not refused.value.hold
        (refill_entry,) = (await act("refill", [order])).values()
        assert isinstance(refill_entry, ItemError) and refill_entry.message == refused.value.message
        with pytest.raises(ProviderError, match="Refill not found"):
            await act("refill_status", "999999999999")
        assert await act("refill_status", ["999999999999"]) == {
            "999999999999": ItemError("Refill not found")
        }

        # Not yet sent upstream: canceled at once, refunded in full.
        assert await act("cancel", order) is True
        assert (await act("status", order)).status == "Canceled"
        assert (await act("balance")).balance == balance.balance
        (again,) = (await act("cancel", [order])).values()
        assert isinstance(again, ItemError)

        created = await act("webhook_add", "http://127.0.0.1:9/hook", ["order.status"])
        assert created.secret.startswith("whsec_")
        listed = {w.webhook: w for w in await act("webhooks")}
        assert listed[created.webhook].events == ["order.status"]
        assert listed[created.webhook].url == "http://127.0.0.1:9/hook"
        assert await act("webhook_delete", created.webhook) is True
        assert created.webhook not in {w.webhook for w in await act("webhooks")}


@pytest.mark.parametrize("kind", KINDS)
async def test_a_signed_client_is_accepted_and_a_wrong_key_refused(
    kind: str, server: Served, shop: Shop, database_url: str
):
    link = f"{LINK}&signed={kind}&action=add"  # a field's name in a link: sign_version 2 only
    async with client(kind, api_url(server), shop, sign=True) as act:
        assert (await act("balance")).currency == "USD"
        order = await act("add", shop.service, link, 100)
    assert await orders_and_charges(database_url, shop.user, link) == (1, 1)
    assert order.isdigit()
    wrong = Shop(shop.domain, shop.user, "not-a-key", shop.service, shop.name)
    async with client(kind, api_url(server), wrong, sign=True) as act:
        with pytest.raises(ProviderError) as refused:
            await act("balance")
    assert (refused.value.http_status, refused.value.message) == (401, "Invalid API key")


@pytest.mark.parametrize("kind", KINDS)
async def test_a_429_with_retry_after_is_waited_out_and_retried(
    kind: str, server: Served, shop: Shop, database_url: str
):
    link = f"{LINK}&throttled={kind}"
    async with through_proxy(kind, server, shop, ["429"]) as (act, proxy, slept):
        order = await act("add", shop.service, link, 100)
    assert slept == [1.0]
    first, second = proxy.requests
    assert first["idempotency-key"] == second["idempotency-key"]
    assert await orders_and_charges(database_url, shop.user, link) == (1, 1)
    assert order.isdigit()


@pytest.mark.parametrize("kind", KINDS)
async def test_an_add_whose_answer_was_lost_is_retried_with_its_key_into_one_order(
    kind: str, server: Served, shop: Shop, database_url: str
):
    link = f"{LINK}&dropped={kind}"
    async with through_proxy(kind, server, shop, ["drop"]) as (act, proxy, slept):
        order = await act("add", shop.service, link, 100)
        assert (await act("status", order)).status == "Pending"
    first, second, _ = proxy.requests
    assert len(first["idempotency-key"]) >= 32
    assert first["idempotency-key"] == second["idempotency-key"]
    assert len(slept) == 1 and 0.25 <= slept[0] <= 0.5  # the first backoff, jittered
    # The dropped request placed the order; the retry got its stored answer: one order, one charge.
    assert await orders_and_charges(database_url, shop.user, link) == (1, 1)


@pytest.mark.parametrize("kind", KINDS)
async def test_an_add_sent_without_a_key_is_not_retried_once_it_may_have_gone(
    kind: str, server: Served, shop: Shop, database_url: str
):
    link = f"{LINK}&keyless={kind}"
    async with through_proxy(kind, server, shop, ["drop", "drop"]) as (act, proxy, slept):
        with pytest.raises(ProviderUnavailable) as lost:
            await act("add", shop.service, link, 100, idempotency_key=False)
        # A read may go again: the second drop is retried.
        assert (await act("balance")).currency == "USD"
    assert lost.value.maybe_sent
    assert "idempotency-key" not in proxy.requests[0]
    assert len(proxy.requests) == 3 and len(slept) == 1  # add once; balance dropped, then again
    # It did reach the panel: a retry without a key would have been a second order.
    assert await orders_and_charges(database_url, shop.user, link) == (1, 1)


@pytest.mark.parametrize("kind", KINDS)
async def test_retries_stop_at_their_bound(kind: str, server: Served, shop: Shop):
    retry = Retry(attempts=3)
    async with through_proxy(kind, server, shop, ["429"] * 5, retry=retry) as (act, proxy, slept):
        with pytest.raises(ProviderUnavailable) as throttled:
            await act("balance")
    assert (throttled.value.reason, throttled.value.retry_after) == ("HTTP 429", 1.0)
    assert len(proxy.requests) == 3 and slept == [1.0, 1.0]
