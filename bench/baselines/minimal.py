"""The ceiling for Python: the least a uvloop + httptools server can do per request.

    python -m bench.baselines.minimal --port P --mode fixed --body FILE
    python -m bench.baselines.minimal --port P --mode db --database-url URL --users FILE

Imports uvloop, httptools, asyncpg and panelsrv.store (db: the same pool settings; ledger and
orders: the same statements). `fixed` answers every request with the body, keep-alive.
`db` finds `key`, `action`, `order`, `orders` in the form body by splitting bytes, maps the key to
its user with one dict lookup (the users file stands in for a warm key cache) and runs the one
statement panelsrv runs for that action (balance, single or multi status) on a pool configured
like panelsrv's, then answers a fixed body: one lookup, no validation, no encoding.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import httptools
import uvloop

from panelsrv.store import db, ledger, orders

HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
    b"Content-Length: %d\r\n\r\n"
)


class Fixed(asyncio.Protocol):
    __slots__ = ("parser", "transport")

    answer = b""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_complete(self) -> None:
        self.transport.write(self.answer)


class Lookup(Fixed):
    __slots__ = ("body",)

    pool: db.Pool
    users: dict[bytes, int]

    def __init__(self) -> None:
        super().__init__()
        self.body = b""

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        fields = dict(part.partition(b"=")[::2] for part in self.body.split(b"&"))
        self.body = b""
        asyncio.get_running_loop().create_task(self.answer_after(fields))

    async def answer_after(self, fields: dict[bytes, bytes]) -> None:
        user = self.users.get(fields.get(b"key", b""), 0)
        action = fields.get(b"action")
        if action == b"status":
            many = fields.get(b"orders")
            if many is not None:
                ids = [int(i) for i in many.replace(b"%2C", b",").split(b",")]
                await self.pool.fetch(orders.ORDERS_STATUS, ids, user)
            else:
                await self.pool.fetchrow(orders.ORDER_STATUS, int(fields[b"order"]), user)
        else:
            await self.pool.fetchval(ledger.BALANCE, user)
        self.transport.write(self.answer)


def load_users(path: str) -> dict[bytes, int]:
    found: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for line in f:
            key, _host, user = line.rstrip(b"\n").split(b"\t")[:3]
            found[key] = int(user)
    return found


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    pool: Any = None
    body = b'{"balance":"1.00","currency":"USD"}'
    if args.body:
        with open(args.body, "rb") as f:
            body = f.read()
    protocol: type[asyncio.Protocol]
    if args.mode == "db":
        pool = await db.create_pool(args.database_url, args.pool_size)
        Lookup.pool = pool
        Lookup.users = load_users(args.users)
        Lookup.answer = HEAD % len(body) + body
        protocol = Lookup
    else:
        Fixed.answer = HEAD % len(body) + body
        protocol = Fixed
    server = await loop.create_server(protocol, "127.0.0.1", args.port, backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    if pool is not None:
        await pool.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=("fixed", "db"), default="fixed")
    parser.add_argument("--body")
    parser.add_argument("--database-url")
    parser.add_argument("--users")
    parser.add_argument("--pool-size", type=int, default=8)
    uvloop.run(main(parser.parse_args()))
