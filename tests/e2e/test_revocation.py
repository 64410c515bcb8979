"""Revocation through the command line reaches every process of a running
`panelsrv serve --workers 2` within a second; the user's other keys keep working.

Each probe is a fresh connection, so SO_REUSEPORT spreads them over both processes: twenty
answers in a row from one process alone would happen once in 2**19 runs.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator

import pytest

from tests.e2e.kit import cli
from tests.e2e.served import World, call, visible
from tests.kit.stack import Served, served

PROBES = 20


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[Served]:
    with served(database_url, workers=2) as s:
        yield s


async def probe(server: Served, domain: str, key: str) -> list[int]:
    answers = await asyncio.gather(
        *(call(server.port, {"key": key, "action": "balance"}, host=domain) for _ in range(PROBES))
    )
    return [r.status for r in answers]


async def test_a_key_revoked_with_the_cli_is_refused_everywhere_within_a_second(
    server: Served, database_url: str
) -> None:
    domain = await World(database_url).panel()
    email = f"rev-{secrets.token_hex(4)}@example.test"
    cli(database_url, "user", "add", "--email", email, "--domain", domain, "--balance", "5")
    doomed = cli(database_url, "key", "create", "--email", email)
    spare = cli(database_url, "key", "create", "--email", email)
    await visible(server.port, domain, doomed["key"])
    # Every process has the key cached now: the revocation must evict it, not just miss.
    assert await probe(server, domain, doomed["key"]) == [200] * PROBES

    revoked = cli(database_url, "key", "revoke", "--prefix", doomed["prefix"])
    committed = time.monotonic()
    assert revoked["revoked"] is not None, revoked
    while (statuses := await probe(server, domain, doomed["key"])) != [401] * PROBES:
        assert time.monotonic() - committed < 1.0, statuses
    took = time.monotonic() - committed
    print(f"\nrevocation refused by every process {took * 1000:.0f} ms after the CLI returned")
    for _ in range(3):  # and it stays refused
        assert await probe(server, domain, doomed["key"]) == [401] * PROBES
    r = await call(server.port, {"key": doomed["key"], "action": "balance"}, host=domain)
    assert r.json() == {"error": "Invalid API key"}  # exactly like an unknown key
    assert await probe(server, domain, spare["key"]) == [200] * PROBES
    listed = cli(database_url, "key", "list", "--email", email)
    assert [k["revoked"] is not None for k in listed] == [False, True]  # active keys first
