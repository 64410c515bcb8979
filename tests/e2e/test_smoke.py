"""`panelsrv serve` end to end: a user's first requests, in every encoding."""

from __future__ import annotations

import pytest

from tests.e2e.served import World, call, offered
from tests.kit.stack import Served


@pytest.fixture(scope="module")
def server(database_url: str):  # type: ignore[no-untyped-def]
    with Served(database_url, workers=2) as served:
        yield served


@pytest.mark.parametrize("encoding", ["form", "json", "multipart"])
async def test_balance_services_add_status(
    server: Served, database_url: str, encoding: str
) -> None:
    world = World(database_url)
    domain = await world.panel()
    _, key = await world.user(domain, balance="10.00")
    await world.service(
        domain, local_id=7, name=f"smoke {domain}", rate="0.45", min=100, max=100_000
    )
    await offered(server.port, domain, key, 7, named=f"smoke {domain}")
    r = await call(server.port, {"key": key, "action": "balance"}, host=domain, encoding=encoding)
    assert (r.status, r.json()) == (200, {"balance": "10.00", "currency": "USD"})
    r = await call(server.port, {"key": key, "action": "services"}, host=domain, encoding=encoding)
    # By name: a service offered on every panel may have global id 7 in the shared database.
    ours = [s for s in r.json() if s["name"] == f"smoke {domain}"]
    assert ours[0]["service"] == 7
    assert len(ours) == 1 and ours[0]["rate"] == "0.45"
    r = await call(
        server.port,
        {"key": key, "action": "add", "service": 7, "link": "instagram.com/x", "quantity": 1000},
        host=domain,
        encoding=encoding,
    )
    assert r.status == 200, r.body
    order = r.json()["order"]
    r = await call(
        server.port,
        {"key": key, "action": "status", "order": order},
        host=domain,
        encoding=encoding,
    )
    assert r.json() == {
        "charge": "0.45",
        "start_count": "0",
        "status": "Pending",
        "remains": "1000",
        "currency": "USD",
    }
    r = await call(
        server.port, {"key": key + "x", "action": "balance"}, host=domain, encoding=encoding
    )
    assert (r.status, r.json()) == (401, {"error": "Invalid API key"})
