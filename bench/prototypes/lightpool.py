"""Prototype: a lighter connection checkout than asyncpg.Pool for one-statement requests.

Measured change for panelsrv/store/db.py `create_pool`. Every API request that touches
PostgreSQL does `pool.fetchrow(...)`, i.e. asyncpg's `Pool.acquire` (PoolAcquireContext, holder
bookkeeping, inactive-callback timers) and `Pool.release`, which wraps the release in
`asyncio.shield` and so creates a Task per request. The profile puts that at ~7-10 µs of
~75 µs. Here a pool is a free list of the same asyncpg connections: acquire pops one (or
waits on a future, FIFO), release pushes it back (or hands it to the first waiter), no task.

What a production version must add (the prototype only measures the cost): replace a
connection that died or whose statement was cancelled mid-flight (`conn.is_closed()`,
`conn.terminate()` + reconnect, as asyncpg's pool does in `release`), and honour a close with
waiters pending. Includes ipcache and keepalive429 (the same measured run).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import asyncpg

from bench.prototypes import keepalive429  # noqa: F401 - applies its patches too
from panelsrv.store import db


class LightPool:
    def __init__(self, conns: list[asyncpg.Connection]) -> None:
        self._all = conns
        self._free = list(conns)
        self._waiters: deque[asyncio.Future[asyncpg.Connection]] = deque()

    async def _take(self) -> asyncpg.Connection:
        if self._free:
            return self._free.pop()
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return await waiter

    def _give(self, conn: asyncpg.Connection) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._free.append(conn)

    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> Any:
        conn = await self._take()
        try:
            return await conn.fetch(query, *args, timeout=timeout)
        finally:
            self._give(conn)

    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None) -> Any:
        conn = await self._take()
        try:
            return await conn.fetchrow(query, *args, timeout=timeout)
        finally:
            self._give(conn)

    async def fetchval(self, query: str, *args: Any, timeout: float | None = None) -> Any:
        conn = await self._take()
        try:
            return await conn.fetchval(query, *args, timeout=timeout)
        finally:
            self._give(conn)

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> Any:
        conn = await self._take()
        try:
            return await conn.execute(query, *args, timeout=timeout)
        finally:
            self._give(conn)

    def get_size(self) -> int:
        return len(self._all)

    def get_idle_size(self) -> int:
        return len(self._free)

    async def close(self) -> None:
        for conn in self._all:
            await conn.close()


async def create_pool(url: str, size: int, **kwargs: Any) -> LightPool:
    conns = []
    for _ in range(size):
        conn = await asyncpg.connect(url, server_settings={"application_name": "panelsrv"})
        await db.init_connection(conn)
        conns.append(conn)
    return LightPool(conns)


db.create_pool = create_pool
