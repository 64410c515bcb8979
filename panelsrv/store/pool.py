"""A connection pool for one-statement requests: a free list of asyncpg connections.

I/O module (asyncpg). Why not `asyncpg.Pool`: its release runs inside `asyncio.shield` (a Task
per request) plus holder bookkeeping and timers, about 7-10 µs of a 45-70 µs request, and a
woken waiter can lose its connection to a newcomer, which is what made p99 spike under load
(bench/README.md, "lightpool": balance +53 % req/s, p99 23 -> 5 ms). Here:

- acquire pops a free connection, or waits FIFO on a future; release hands the connection to
  the first live waiter, or pushes it back. No task, no timer.
- A connection that may be in an unknown state is never reused: closed, inside a transaction,
  or interrupted by anything but a server-side error (a cancellation, a timeout, an I/O error)
  is terminated, and its slot reconnects on the next acquire that needs it. Server-side errors
  (`asyncpg.PostgresError`) leave the connection clean: a single statement rolls itself back.
- A connection that died while idle (a database restart closes every one of them) is never
  handed out: `acquire` sees it closed (asyncpg noticed the socket close; no round trip) and
  opens a fresh one in its slot, so the first request after a restart succeeds.
- Connections are opened eagerly (`min = max = size`) and initialised with `init`.
- Outages are reported to `outage` (outages.Outage): a failure to connect, or a connection lost
  to the database being away, begins one (one log line, whatever the number of requests); the
  next connection opened ends it. Every such failure discards its connection, so the recovery
  is always seen on a connect: the hot path does nothing for this.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg

from panelsrv.outages import Outage

Connect = Callable[[], Awaitable[asyncpg.Connection]]

# Errors that mean "the database is not there right now" (down, restarting, starting up, full,
# unreachable) rather than "this is wrong": worth retrying, and answered 503 meanwhile.
UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)


class Pool:
    __slots__ = ("_closed", "_connect", "_free", "_missing", "_outage", "_size", "_waiters")

    def __init__(self, connect: Connect, size: int, outage: Outage | None = None) -> None:
        self._connect = connect
        self._outage = outage
        self._size = size
        self._free: list[asyncpg.Connection] = []
        self._missing = size  # slots without a connection: opened on demand
        self._waiters: deque[asyncio.Future[asyncpg.Connection | None]] = deque()
        self._closed = False

    async def start(self) -> None:
        opened = await asyncio.gather(
            *(self._connect() for _ in range(self._size)), return_exceptions=True
        )
        conns = [c for c in opened if isinstance(c, asyncpg.Connection)]
        failed = [c for c in opened if not isinstance(c, asyncpg.Connection)]
        if failed:
            for conn in conns:
                conn.terminate()
            raise failed[0]
        self._free.extend(conns)
        self._missing = 0

    # -- checkout ------------------------------------------------------------------------------

    async def _take(self) -> asyncpg.Connection:
        while True:
            if self._closed:
                raise asyncpg.InterfaceError("pool is closed")
            if self._free:
                conn = self._free.pop()
                if not conn.is_closed():
                    return conn
                # Died while idle (the server restarted or dropped it): asyncpg saw the socket
                # close, so this costs no round trip. Its slot reconnects just below.
                self._missing += 1
                continue
            if self._missing:
                self._missing -= 1
                try:
                    conn = await self._connect()
                except BaseException as exc:
                    self._lost()
                    self._report(exc)
                    raise
                if self._outage is not None:
                    self._outage.recovered()
                return conn
            waiter: asyncio.Future[asyncpg.Connection | None] = (
                asyncio.get_running_loop().create_future()
            )
            self._waiters.append(waiter)
            try:
                conn = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
                    self._give(waiter.result())  # handed over just as we were cancelled
                raise
            if conn is not None:
                return conn
            # None: a slot became free without a connection; loop to open one.

    def _give(self, conn: asyncpg.Connection) -> None:
        if self._closed:
            conn.terminate()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._free.append(conn)

    def _lost(self) -> None:
        """A slot lost its connection: a waiter (if any) opens the replacement."""
        self._missing += 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _discard(self, conn: asyncpg.Connection) -> None:
        conn.terminate()
        self._lost()

    def _settle(self, conn: asyncpg.Connection, exc: BaseException | None) -> None:
        """Back to the pool after use, or terminated when its state cannot be trusted."""
        clean = exc is None or isinstance(exc, asyncpg.PostgresError)
        if clean and not conn.is_closed() and not conn.is_in_transaction():
            self._give(conn)
        else:
            self._discard(conn)
            if exc is not None:
                self._report(exc)

    def _report(self, exc: BaseException) -> None:
        if self._outage is not None and isinstance(exc, UNAVAILABLE):
            self._outage.failed(str(exc) or type(exc).__name__)

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        conn = await self._take()
        try:
            yield conn
        except BaseException as exc:
            self._settle(conn, exc)
            raise
        self._settle(conn, None)

    # -- one statement -------------------------------------------------------------------------

    async def _run(self, method: str, query: str, args: tuple[Any, ...]) -> Any:
        conn = await self._take()
        try:
            result = await getattr(conn, method)(query, *args)
        except BaseException as exc:
            self._settle(conn, exc)
            raise
        self._settle(conn, None)
        return result

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return await self._run("fetch", query, args)

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        return await self._run("fetchrow", query, args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self._run("fetchval", query, args)

    async def execute(self, query: str, *args: Any) -> str:
        return await self._run("execute", query, args)

    # -- observability and shutdown --------------------------------------------------------------

    async def answers(self) -> bool:
        """The database answers a query now (readiness probes)."""
        return await self.fetchval("SELECT 1") == 1

    def get_size(self) -> int:
        return self._size

    def get_idle_size(self) -> int:
        return len(self._free)

    async def close(self) -> None:
        """Close the idle connections now; those in use are terminated when they come back."""
        self._closed = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(asyncpg.InterfaceError("pool is closed"))
        self._waiters.clear()
        free, self._free = self._free, []
        await asyncio.gather(*(conn.close() for conn in free), return_exceptions=True)
