"""LISTEN/NOTIFY: how a revocation or a catalog change reaches every process on every host.

Imports asyncpg. One dedicated connection per process listens on `panelsrv_keys` (payload: the
revoked key's SHA-256 in hex) and `panelsrv_catalog` (payload: the table that changed). If the
connection is lost, notifications may have been missed: `on_reset(False)` tells the owner to
stop trusting its caches, and after reconnecting `on_reset(True)` tells it to reload them.

A connection can also die silently (a partition, a frozen host: no RST, no termination), and
then notifications stop without anything saying so. So the connection is pinged every
`PING_INTERVAL`, and each answered ping reports `on_alive(sent + MAX_STALENESS)`: PostgreSQL
delivers the notifications a session has pending before it answers a query, so once a ping sent
at `sent` is answered, every revocation committed before `sent` has been applied. The owner
trusts its caches only until the last time reported (KeyCache.trust_until), so a revocation is
missed for at most about MAX_STALENESS seconds however the connection fails. Reconnects back off
up to 5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg

from panelsrv.outages import Outage

log = logging.getLogger("panelsrv.listen")

KEYS_CHANNEL = "panelsrv_keys"
CATALOG_CHANNEL = "panelsrv_catalog"
# Caches are trusted at most this long past the last proof that no notification is pending.
MAX_STALENESS = 1.0
# Pings land well inside that window, so a healthy connection keeps the caches trusted without
# a gap even when one answer is slow; about 4 cheap queries a second per process.
PING_INTERVAL = MAX_STALENESS / 4
PING_TIMEOUT = 5.0  # no answer for this long: the connection is given up and remade
CLOSE_TIMEOUT = 1.0
CONNECT_TIMEOUT = 5.0
# What a connection that failed or went away raises (a server error is handled where it occurs).
CONNECTION_ERRORS = (OSError, TimeoutError, asyncpg.InterfaceError)


class Notifications:
    def __init__(
        self,
        url: str,
        on_key_revoked: Callable[[str], None],
        on_catalog_changed: Callable[[str], None],
        on_reset: Callable[[bool], Awaitable[None]],
        on_alive: Callable[[float], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._on_key_revoked = on_key_revoked
        self._on_catalog_changed = on_catalog_changed
        self._on_reset = on_reset
        self._on_alive = on_alive
        self._clock = clock
        self._outage = Outage(
            "notification listener", log, meanwhile="caches bypassed until it is back", clock=clock
        )
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._conn is not None and not self._conn.is_closed():
            # Bounded: on a silently dead connection the cancel of the last ping never returns
            # (asyncpg then aborts the connection, which is all that is left to do).
            with contextlib.suppress(OSError, TimeoutError, asyncpg.InterfaceError):
                await self._conn.close(timeout=CLOSE_TIMEOUT)

    async def _run(self) -> None:
        delay = 0.1
        while True:
            try:
                conn = await asyncpg.connect(
                    self._url, server_settings={"application_name": "panelsrv-listen"},
                    timeout=CONNECT_TIMEOUT,
                )  # fmt: skip
            except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
                self._outage.failed(str(exc) or type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            self._conn = conn
            try:
                await self._listen(conn)
            except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:  # lost while setting up
                conn.terminate()
                self._outage.failed(str(exc) or type(exc).__name__)
            else:
                self._outage.failed("connection lost")
            self.connected.clear()
            await self._on_reset(False)

    async def _listen(self, conn: asyncpg.Connection) -> None:
        """LISTEN on `conn`, vouch for the caches, and return when the connection is gone."""
        self._lost.clear()
        conn.add_termination_listener(lambda _conn: self._lost.set())
        sent = self._clock()
        await conn.add_listener(KEYS_CHANNEL, self._dispatch)
        await conn.add_listener(CATALOG_CHANNEL, self._dispatch)
        await self._on_reset(True)
        self._on_alive(sent + MAX_STALENESS)
        self._outage.recovered()
        self.connected.set()
        await self._watch(conn)

    async def _watch(self, conn: asyncpg.Connection) -> None:
        """Return when the connection is gone; report every answered ping. A slow answer only
        lets the trust lapse; one that takes PING_TIMEOUT ends the connection."""
        # asyncio.timeout, not wait_for: on 3.11 wait_for swallows stop()'s cancel when it lands
        # just as the awaited event or ping completes, and then stop() waited forever
        while True:
            try:
                async with asyncio.timeout(PING_INTERVAL):
                    await self._lost.wait()
                return
            except TimeoutError:
                pass
            sent = self._clock()
            try:
                async with asyncio.timeout(PING_TIMEOUT):
                    await conn.execute("SELECT 1")
            except (*CONNECTION_ERRORS, asyncpg.PostgresError):
                conn.terminate()
                return
            self._on_alive(sent + MAX_STALENESS)

    def _dispatch(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        if channel == KEYS_CHANNEL:
            self._on_key_revoked(payload)
        else:
            self._on_catalog_changed(payload)
