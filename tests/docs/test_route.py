"""`GET /api/openapi.json` over a real socket: each panel's own document, by Host; 404 for a
Host that is no panel; 405 for other methods; 503 while the database is away."""

from __future__ import annotations

import orjson

from panelsrv.docs import openapi
from tests.e2e.served import World, visible
from tests.http.httpkit import Response, free_port
from tests.kit.stack import Served
from tests.kit.wire import exchange, request


async def fetch(port: int, host: str, method: bytes = b"GET") -> Response:
    return await exchange(port, request(method, b"/api/openapi.json", host=host))


async def test_each_panel_gets_its_own_document(server: Served, database_url: str) -> None:
    world = World(database_url)
    plain = await world.panel()
    legacy = await world.panel({"legacy_errors": "true", "accept_get": "true"})
    for domain in (plain, legacy):
        _, key = await world.user(domain)
        await visible(server.port, domain, key)
    r = await fetch(server.port, plain)
    assert r.status == 200
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    assert r.headers["cache-control"] == "public, max-age=300"
    assert r.headers["access-control-allow-origin"] == "*"
    doc = orjson.loads(r.body)
    assert doc == openapi.document(plain, False, False)
    assert doc["servers"] == [{"url": f"https://{plain}"}]
    other = orjson.loads((await fetch(server.port, legacy)).body)
    assert other == openapi.document(legacy, True, True)
    assert set(other["paths"]["/api/v2"]) == {"get", "post"}
    assert plain not in (await fetch(server.port, legacy)).body.decode()


async def test_a_host_that_is_no_panel_is_404(server: Served) -> None:
    r = await fetch(server.port, "nobody.test")
    assert (r.status, r.json()) == (404, {"error": "Not found"})


async def test_another_method_is_405_naming_get(server: Served, database_url: str) -> None:
    r = await fetch(server.port, "nobody.test", b"POST")
    assert (r.status, r.headers["allow"]) == (405, "GET")


async def test_while_the_database_is_away_the_document_is_503_with_retry_after() -> None:
    unreachable = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    served = Served(unreachable).start(until="/healthz")
    try:
        r = await fetch(served.port, "shop.test")
        assert (r.status, r.json()) == (503, {"error": "Service unavailable"})
        assert int(r.headers["retry-after"]) >= 1
    finally:
        served.stop()
