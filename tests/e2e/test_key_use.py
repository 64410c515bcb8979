"""A key's allowed client addresses and its last use, against a real `panelsrv serve` behind a
trusted proxy (loopback, in the default `trusted_proxies`): the client is the address the
proxy's X-Forwarded-For vouches for, and a key with a list of allowed networks answers only
requests from inside it (outside: exactly an unknown key's 401). The keys' last use is written
by each process in batches, the last one when it stops, never once per request.
"""

from __future__ import annotations

import time

from panelsrv.store import keys
from tests.e2e.kit import sql, sql_value
from tests.e2e.served import World, call, visible
from tests.kit.stack import Served, served

LIST = ["198.51.100.0/24", "2001:db8::/32"]


def forwarded(chain: str) -> bytes:
    return b"X-Forwarded-For: %s\r\n" % chain.encode()


async def _listed_key(database_url: str, port: int) -> tuple[str, str]:
    """A panel every process knows and a fresh key (never used, so never cached) allowed only
    from LIST: (domain, raw key)."""
    world = World(database_url)
    domain = await world.panel()
    _, first = await world.user(domain)
    await visible(port, domain, first)
    _, raw = await world.user(domain)
    await sql(database_url, "UPDATE api_keys SET allowed_ips = $1 WHERE hash = $2",
              LIST, keys.digest(raw))  # fmt: skip
    return domain, raw


async def test_a_key_with_allowed_addresses_is_refused_from_outside_them_and_served_inside(
    server: Served, database_url: str
) -> None:
    domain, key = await _listed_key(database_url, server.port)
    fields = {"key": key, "action": "balance"}

    async def status(chain: str | None) -> tuple[int, object]:
        headers = b"" if chain is None else forwarded(chain)
        r = await call(server.port, fields, host=domain, headers=headers)
        return r.status, r.json()

    invalid = (401, {"error": "Invalid API key"})
    assert await status("203.0.113.50") == invalid
    assert (await status("198.51.100.20"))[0] == 200
    assert (await status("2001:db8::7"))[0] == 200
    assert await status(None) == invalid  # the proxy itself (127.0.0.1) is not in the list
    # What the client wrote left of the address the proxy saw proves nothing.
    assert await status("198.51.100.20, 203.0.113.50") == invalid
    assert (await status("203.0.113.50, 198.51.100.21"))[0] == 200


async def test_the_last_use_is_written_in_a_batch_when_the_server_stops(
    database_url: str,
) -> None:
    began = time.monotonic()
    with served(database_url) as s:
        domain, key = await _listed_key(database_url, s.port)
        inside = forwarded("198.51.100.30")
        for _ in range(5):
            r = await call(s.port, {"key": key, "action": "balance"}, host=domain, headers=inside)
            assert r.status == 200
        used = "SELECT last_used_at FROM api_keys WHERE hash = $1"
        if time.monotonic() - began < keys.USAGE_FLUSH_SECONDS:  # before the first batch
            assert await sql_value(database_url, used, keys.digest(key)) is None
        assert s.stop() == 0
    assert await sql_value(database_url, used, keys.digest(key)) is not None
