"""Webhook receivers over real loopback sockets (healthy, tarpit, slow, gzip bomb), endpoints and
events made in PostgreSQL, and the process's peak RSS - for the delivery tests."""

from __future__ import annotations

import asyncio
import functools
import re
import secrets
import time
import zlib
from collections import Counter
from pathlib import Path

import asyncpg
import orjson

from panelsrv.store import webhooks
from panelsrv.store.pool import Pool
from tests.store.helpers import new_panel, new_user

BOMB_MIB = 256


@functools.cache
def gzip_bomb() -> bytes:
    """One gzip member of about 260 KB that inflates to BOMB_MIB MiB of zeros."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    return b"".join(deflate.compress(zeros) for _ in range(BOMB_MIB)) + deflate.flush()


_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak_rss() -> int:
    """Reset this process's peak RSS (Linux: VmHWM) to its current RSS; -> that RSS in bytes."""
    _CLEAR_REFS.write_text("5")
    return _status("VmRSS")


def peak_rss() -> int:
    return _status("VmHWM")


def _status(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    assert match, field
    return int(match.group(1)) * 1024


def peak_rss_measurable() -> bool:
    try:
        reset_peak_rss()
    except OSError:
        return False
    return True


class Receivers:
    """One loopback HTTP server; the path says how it answers and who it is for:

    /ok/<group>/<name>: 204 at once; /slow/<group>/<name>/<seconds>: 200 after that long;
    /tarpit/<group>/<name>: reads the request and never answers; /bomb/<group>/<status>: that
    status with a gzip bomb body. Records, per endpoint name, when each event arrived, and the
    most requests open at once per endpoint name and per group (a user's endpoints).
    """

    def __init__(self) -> None:
        self.received: dict[str, list[tuple[float, str]]] = {}
        self.requests: Counter[str] = Counter()
        self.open: Counter[str] = Counter()
        self.most_open: Counter[str] = Counter()
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> Receivers:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.base = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    def url(self, kind: str, group: str, name: str, *extra: object) -> str:
        return "/".join((self.base, kind, group, name, *map(str, extra)))

    def _count(self, keys: tuple[str, str], delta: int) -> None:
        for key in keys:
            self.open[key] += delta
            self.most_open[key] = max(self.most_open[key], self.open[key])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                kind, group, name, *extra = head.split(b" ", 2)[1].decode().strip("/").split("/")
                length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                body = await reader.readexactly(int(length.group(1)) if length else 0)
                self.requests[name] += 1
                self._count((group, name), +1)
                try:
                    answer = await self._answer(kind, name, extra, reader)
                finally:
                    self._count((group, name), -1)
                if answer is None:
                    return
                event = orjson.loads(body)["id"]
                self.received.setdefault(name, []).append((time.monotonic(), event))
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    @staticmethod
    async def _answer(
        kind: str, name: str, extra: list[str], reader: asyncio.StreamReader
    ) -> bytes | None:
        if kind == "ok":
            return b"HTTP/1.1 204 No Content\r\n\r\n"
        if kind == "slow":
            await asyncio.sleep(float(extra[0]))
            return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        if kind == "tarpit":
            await reader.read()  # until the sender gives up and closes
            return None
        assert kind == "bomb", kind
        bomb = gzip_bomb()
        return (
            f"HTTP/1.1 {name} X\r\nContent-Type: application/json\r\n"
            f"Content-Encoding: gzip\r\nContent-Length: {len(bomb)}\r\n\r\n".encode()
            + bomb
        )


class Hooks:
    """Users with webhook endpoints, and events for them, written as the status functions do."""

    def __init__(self, pool: Pool, conn: asyncpg.Connection) -> None:
        self.pool = pool
        self.conn = conn
        self.emitted: dict[str, float] = {}  # event id -> when it was recorded

    async def user(self, *urls: str) -> tuple[int, list[int]]:
        """A new user with an endpoint at each URL (added as webhook_add would)."""
        _, domain = await new_panel(self.conn)
        user = await new_user(self.conn, domain)
        ids = [(await webhooks.add(self.pool, user.id, url, ["order.status"]))[0] for url in urls]
        return user.id, ids

    async def emit(self, user_id: int, count: int = 1) -> list[str]:
        """`count` order.status events for the user, each due at once at every endpoint."""
        tag = secrets.token_hex(4)
        ids = await self.conn.fetch(
            """WITH e AS (
                   INSERT INTO webhook_events (public_id, user_id, type, data)
                   SELECT 'evt_' || $2 || '_' || n, $1, 'order.status',
                          jsonb_build_object('order', n, 'status', 'Completed')
                     FROM generate_series(1, $3) n
                   RETURNING id, public_id
               ), d AS (
                   INSERT INTO webhook_deliveries (webhook_id, event_id)
                   SELECT w.id, e.id FROM e, webhooks w
                    WHERE w.user_id = $1 AND w.active AND w.deleted_at IS NULL
               )
               SELECT public_id FROM e""",
            user_id,
            tag,
            count,
        )
        now = time.monotonic()
        for row in ids:
            self.emitted[row[0]] = now
        return [row[0] for row in ids]

    async def deliveries(self, webhook_id: int) -> list[asyncpg.Record]:
        return await self.conn.fetch(
            "SELECT attempts, delivered_at, lease_until, last_error,"
            " run_after = 'infinity' AS never,"
            " CASE WHEN run_after < 'infinity' THEN run_after - now() END AS wait"
            " FROM webhook_deliveries WHERE webhook_id = $1 ORDER BY id",
            webhook_id,
        )
