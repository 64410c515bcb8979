"""Helpers the end-to-end tests share on top of `served.py`: direct SQL, signed fields, the
CLI as a subprocess, what a refused request must leave as it was, and a bounded keep-alive
connection pool for load. Their servers come from tests/kit/stack.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import asyncpg

from tests.http.httpkit import Client, Response
from tests.kit.wire import post

LEAK_MARKERS = (
    "Traceback",
    "asyncpg",
    "SELECT",
    "INSERT",
    "UPDATE",
    "plpgsql",
    "SQLSTATE",
    "panelsrv/",
    ".py",
    "Exception",
    "psk_",
)


async def sql(database_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def execute(database_url: str, script: str) -> None:
    """Run SQL commands (several allowed, no parameters)."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(script)
    finally:
        await conn.close()


async def sql_value(database_url: str, query: str, *args: Any) -> Any:
    rows = await sql(database_url, query, *args)
    return rows[0][0] if rows else None


async def wallet_and_orders(database_url: str, user_id: int) -> tuple[int, int]:
    """A user's balance and number of orders: what a refused request must leave as it was."""
    rows = await sql(
        database_url,
        "SELECT (SELECT balance FROM wallets WHERE user_id = $1),"
        " (SELECT count(*) FROM orders WHERE user_id = $1)",
        user_id,
    )
    return rows[0][0], rows[0][1]


def signed(fields: Mapping[str, object], key: str) -> dict[str, object]:
    """The fields plus `sign`, computed exactly as the seed's Python snippet does."""
    canonical = "&".join(f"{k}={v}" for k, v in sorted(fields.items()))
    sign = hmac.new(key.encode(), canonical.encode(), hashlib.sha256).hexdigest()
    return {**fields, "sign": sign}


def cli(database_url: str, *args: str) -> Any:
    """`panelsrv <args> --json --database-url URL` as a subprocess; its JSON document."""
    done = subprocess.run(
        [sys.executable, "-m", "panelsrv", *args, "--json", "--database-url", database_url],
        capture_output=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


def assert_audit_clean(database_url: str) -> None:
    """`panelsrv audit`: every wallet equals its ledger, after a test that moved money."""
    report = cli(database_url, "audit")
    assert report["ok"] is True and report["violations"] == [], report


def assert_no_leak(response: Response) -> None:
    text = response.body.decode("utf-8", "replace")
    for marker in LEAK_MARKERS:
        assert marker not in text, (marker, text)


class Pool:
    """`size` keep-alive connections to one server; `call` borrows one for one request.

    Bounds the client's sockets and file descriptors however many requests are in flight: the
    tasks beyond `size` wait in line (FIFO), so the first `size` requests are on the wire
    together.
    """

    def __init__(self, port: int, size: int) -> None:
        self.port = port
        self.size = size
        self._idle: asyncio.Queue[Client] = asyncio.Queue()
        self._all: list[Client] = []

    async def __aenter__(self) -> Pool:
        self._all = list(
            await asyncio.gather(*(Client.connect(self.port) for _ in range(self.size)))
        )
        for client in self._all:
            self._idle.put_nowait(client)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*(client.close() for client in self._all))

    async def call(
        self,
        fields: Mapping[str, object],
        *,
        host: str,
        encoding: str = "form",
        headers: bytes = b"",
    ) -> Response:
        request = post(fields, headers, host=host, encoding=encoding)
        client = await self._idle.get()
        try:
            await client.send(request)
            response = await client.final(timeout=60.0)
            assert response is not None, "connection closed without an answer"
            assert response.headers.get("connection") != "close", response
        finally:
            self._idle.put_nowait(client)
        return response
