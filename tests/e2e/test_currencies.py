"""Prices are in the currency of the panel that shows them (issue 12, point 15): a shared
service names the currency its rate is in; a panel of another currency offers it only at an
exchange rate its operator set (`panel fx`), and then lists and charges the converted rate; an
import prices services in the provider's currency; existing rows migrate to the one currency
the panels share."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from decimal import Decimal

import pytest

from panelsrv.client.answers import Service
from panelsrv.store import admin, db
from panelsrv.worker import importer
from tests.e2e.kit import sql
from tests.e2e.served import World, call, offered, visible
from tests.kit.stack import Served, served
from tests.kit.waiting import until
from tests.store.helpers import migrate_before

# The ISO 4217 code reserved for testing: no other test's panel is priced in it, so the shared
# services made here are offered on no other test's panel.
TEST_CURRENCY = "XTS"


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[Served]:
    with served(database_url) as s:
        yield s


async def listed(port: int, domain: str, key: str) -> dict[int, str]:
    r = await call(port, {"key": key, "action": "services"}, host=domain)
    assert r.status == 200, r.body
    return {s["service"]: s["rate"] for s in r.json()}


async def fx(database_url: str, domain: str, currency: str, rate: str | None) -> None:
    conn = await db.connect(database_url)
    try:
        await admin.set_exchange_rate(conn, domain, currency, rate)
    finally:
        await conn.close()


async def test_a_shared_service_is_offered_in_another_currency_only_at_the_operators_rate(
    server: Served, database_url: str
) -> None:
    world = World(database_url)
    service = await world.service(None, rate="1.00001", min=10, max=100_000, currency=TEST_CURRENCY)
    home = await world.panel(currency=TEST_CURRENCY)
    _, home_key = await world.user(home)
    await offered(server.port, home, home_key, service)
    assert (await listed(server.port, home, home_key))[service] == "1.00001"

    euro = await world.panel(currency="EUR")
    _, key = await world.user(euro, balance="10.00")
    await visible(server.port, euro, key)
    assert service not in await listed(server.port, euro, key)
    order = {"key": key, "action": "add", "service": service, "link": "https://x.test/fx"}
    r = await call(server.port, {**order, "quantity": 1000}, host=euro)
    assert (r.status, r.json()) == (400, {"error": "Incorrect service ID"})

    await fx(database_url, euro, TEST_CURRENCY, "0.5")
    await offered(server.port, euro, key, service)
    # 1.00001 XTS x 0.5 = 0.500005 EUR, rounded half up to the minor unit once: what is shown
    # is what is charged.
    assert (await listed(server.port, euro, key))[service] == "0.50001"
    r = await call(server.port, {**order, "quantity": 1000}, host=euro)
    assert r.status == 200, r.body
    charge = await sql(database_url, "SELECT charge FROM orders WHERE id = $1", r.json()["order"])
    assert charge[0][0] == 50_001
    r = await call(server.port, {"key": key, "action": "balance"}, host=euro)
    assert r.json() == {"balance": "9.49999", "currency": "EUR"}

    await fx(database_url, euro, TEST_CURRENCY, None)

    async def withdrawn() -> bool:  # once the catalog is reloaded
        return service not in await listed(server.port, euro, key)

    await until(withdrawn, 5.0, what="not offered once the exchange rate was removed")


async def test_exchange_rates_are_checked(database_url: str) -> None:
    world = World(database_url)
    euro = await world.panel(currency="EUR")
    conn = await db.connect(database_url)
    try:
        for currency, rate, message in (
            ("EUR", "1", "the panel's own currency"),
            ("usd", "0", "positive decimal"),
            ("USD", "-1", "positive decimal"),
            ("USD", "1e3", "positive decimal"),
            ("USD", "1000000000", "positive decimal"),
            ("US", "1", "3-letter code"),
        ):
            with pytest.raises(admin.InputError, match=message):
                await admin.set_exchange_rate(conn, euro, currency, rate)
        with pytest.raises(admin.InputError, match="priced in its currency, EUR"):
            await admin.add_service(
                conn,
                admin.ServiceSpec(
                    name="x", type="default", rate="1", min=1, max=10, domain=euro, currency="USD"
                ),
            )
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM panel_exchange_rates e JOIN panels p ON p.id = e.panel_id"
                " WHERE p.domain = $1",
                euro,
            )
            == 0
        )
    finally:
        await conn.close()


async def test_an_import_prices_services_in_the_providers_currency(database_url: str) -> None:
    conn = await db.connect(database_url)
    try:
        provider = await admin.add_provider(
            conn, f"fx-{secrets.token_hex(3)}", "https://upstream.test/api/v2", "k", "xts"
        )
        upstream = Service(service="7", name="Likes", rate=Decimal("2.5"), min=10, max=1000)
        await importer.import_services(conn, provider, [upstream], 1000, None)
        row = await conn.fetchrow(
            "SELECT rate, currency FROM services WHERE provider_id = $1", provider
        )
        assert (row["rate"], row["currency"]) == (275_000, TEST_CURRENCY)  # +10 %, still XTS
        spec = admin.ServiceSpec(
            name="manual", type="default", rate="1", min=1, max=10,
            provider=str(provider), provider_service="8",
        )  # fmt: skip
        manual, _ = await admin.add_service(conn, spec)
        assert await conn.fetchval("SELECT currency FROM services WHERE id = $1", manual) == "XTS"
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("panel_currencies", "expected"), [(["EUR", "EUR"], "EUR"), (["EUR", "GBP"], "USD")]
)
async def test_existing_shared_services_take_the_one_currency_the_panels_share(
    own_database_url: str, panel_currencies: list[str], expected: str
) -> None:
    conn = await db.connect(own_database_url)
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        await migrate_before(conn, "007")
        for n, currency in enumerate(panel_currencies):
            await conn.execute(
                "INSERT INTO panels (domain, currency) VALUES ($1, $2)", f"p{n}.test", currency
            )
        await conn.execute(
            "INSERT INTO providers (name, url, api_key) VALUES ('up', 'https://u.test', 'k')"
        )
        await conn.execute(
            "INSERT INTO services (name, rate, min_qty, max_qty) VALUES ('shared', 1, 1, 9)"
        )
        await db.migrate(conn)
        assert await conn.fetchval("SELECT currency FROM services") == expected
        assert await conn.fetchval("SELECT currency FROM providers") == expected
    finally:
        await conn.close()
