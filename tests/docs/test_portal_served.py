"""/api on a running `panelsrv serve`: while the database cannot be reached at start, the
portal answers 503 with Retry-After (it is built from the catalog), as the pages do."""

from __future__ import annotations

import http.client

from tests.http.httpkit import free_port
from tests.kit.stack import Served


def test_the_portal_is_503_while_the_database_is_away() -> None:
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    server = Served(nowhere).start(until="/healthz")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", "/api", headers={"Host": "shop.test"})
        response = conn.getresponse()
        body = response.read().decode()
        conn.close()
    finally:
        server.stop()
    assert response.status == 503 and response.getheader("Retry-After") == "5"
    assert "try again shortly" in body
    assert "script-src 'self'" in (response.getheader("Content-Security-Policy") or "")
