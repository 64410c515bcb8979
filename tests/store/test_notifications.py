"""The notification listener vouches for the key cache only as long as it can prove nothing is
pending: a connection that dies silently (no RST, no termination) stops the cache from answering
within about `MAX_STALENESS`, and a revocation sent meanwhile is never missed for longer."""

from __future__ import annotations

import asyncio
import time

from panelsrv.store import db, keys
from panelsrv.store.keycache import KeyCache
from panelsrv.store.notifications import MAX_STALENESS, PING_INTERVAL, Notifications
from tests.guard.guardnet import Proxy
from tests.kit.waiting import until
from tests.store.helpers import connect, new_panel, new_user


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_the_cache_answers_only_within_the_window_it_was_vouched_for(
    database_url: str,
) -> None:
    conn = await connect(database_url)
    try:
        _, domain = await new_panel(conn)
        raw = (await keys.create(conn, (await new_user(conn, domain)).id)).raw
    finally:
        await conn.close()
    pool = await db.create_pool(database_url, 1)
    clock = FakeClock()
    try:
        cache = KeyCache(pool, ttl=60, negative_ttl=5, clock=clock)
        assert await cache.resolve(raw) is not None
        assert cache.cached(raw) == (False, None)  # never vouched for: nothing was remembered
        cache.trust_until(101.0)
        principal = await cache.resolve(raw)
        assert cache.cached(raw) == (True, principal)
        clock.now = 101.0  # the listener has not vouched past this instant: go to the database
        assert cache.cached(raw) == (False, None)
        cache.trust_until(102.0)  # the next answered ping: the entry may answer again
        assert cache.cached(raw) == (True, principal)
        cache.trust_until(50.0)  # a late report never shortens the window
        assert cache.cached(raw) == (True, principal)
        cache.distrust()  # the connection was lost: forget everything
        cache.trust_until(200.0)
        assert cache.cached(raw) == (False, None)
    finally:
        await pool.close()


async def test_a_silently_dead_listener_stops_vouching_within_a_second(database_url: str) -> None:
    proxy, through = Proxy.for_database(database_url)
    await proxy.start()
    vouched: list[float] = []
    resets: list[bool] = []

    async def on_reset(connected: bool) -> None:
        resets.append(connected)

    listener = Notifications(
        through(),
        lambda _digest: None,
        lambda _table: None,
        on_reset,
        vouched.append,
    )
    listener.start()
    try:
        await until(lambda: len(vouched) >= 3, 5.0)  # connected, and pings answered
        assert vouched[-1] - time.monotonic() <= MAX_STALENESS
        proxy.frozen = True  # a partition: no error anywhere, just silence
        frozen_at = time.monotonic()
        last = vouched[-1]
        await until(lambda: time.monotonic() > vouched[-1], MAX_STALENESS + 1.0)
        # The cache stops answering at the last instant vouched for: at most MAX_STALENESS
        # (plus the one ping that was in flight) after the partition began.
        assert vouched[-1] - frozen_at <= MAX_STALENESS + PING_INTERVAL
        assert vouched[-1] == last or vouched[-1] - last <= PING_INTERVAL + 0.1
        assert resets == [True]  # the lapse alone is not a reconnect
    finally:
        proxy.frozen = False
        await listener.stop()
        await proxy.cut()


async def test_a_failure_while_setting_up_is_a_lost_connection_not_a_dead_listener(
    database_url: str,
) -> None:
    # Anything the connection raises while LISTEN is being set up (the database going away
    # again, a reload on the connection that just dropped) must not end the listener's task.
    import asyncpg

    resets: list[bool] = []
    vouched: list[float] = []

    async def on_reset(connected: bool) -> None:
        resets.append(connected)
        if resets == [True]:
            raise asyncpg.InterfaceError("connection was closed in the middle of operation")

    listener = Notifications(
        database_url, lambda _d: None, lambda _t: None, on_reset, vouched.append
    )
    listener.start()
    try:
        await until(lambda: len(vouched) >= 1, 10.0)
        assert resets[:3] == [True, False, True]
    finally:
        await listener.stop()


async def test_stop_is_not_lost_when_it_lands_as_the_connection_is_lost() -> None:
    # On 3.11 asyncio.wait_for returned normally when the cancel came in the loop turn in
    # which the awaited event was set: _run then reconnected, and stop() waited forever.
    async def on_reset(_ok: bool) -> None: ...

    listener = Notifications("postgresql://unused", lambda _d: None, lambda _t: None,
                             on_reset, lambda _when: None)
    watch = asyncio.get_running_loop().create_task(listener._watch(None))  # type: ignore[arg-type]
    await until(lambda: listener._lost._waiters)  # it waits for the connection to be lost
    listener._lost.set()
    watch.cancel()
    (outcome,) = await asyncio.gather(watch, return_exceptions=True)
    assert isinstance(outcome, asyncio.CancelledError)
