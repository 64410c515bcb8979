"""The connection pool: FIFO under contention, clean reuse, and no connection reused after
anything that could have left it in an unknown state."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from panelsrv.store import db
from tests.kit.waiting import until


async def test_many_more_requests_than_connections(database_url: str) -> None:
    pool = await db.create_pool(database_url, 3)
    try:
        results = await asyncio.gather(*(pool.fetchval("SELECT $1::int", n) for n in range(300)))
        assert results == list(range(300))
        assert pool.get_idle_size() == 3
    finally:
        await pool.close()


async def test_server_errors_keep_the_connection_other_failures_replace_it(
    database_url: str,
) -> None:
    pool = await db.create_pool(database_url, 1)
    try:
        pid = await pool.fetchval("SELECT pg_backend_pid()")
        with pytest.raises(asyncpg.DivisionByZeroError):
            await pool.fetchval("SELECT 1 / 0")
        assert await pool.fetchval("SELECT pg_backend_pid()") == pid  # a clean error: reused
        # Cancelled mid-statement: that connection is never handed out again.
        task = asyncio.get_running_loop().create_task(pool.execute("SELECT pg_sleep(5)"))
        watcher = await db.connect(database_url)
        try:

            async def sleeping() -> bool:
                return bool(await watcher.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active'",
                    pid,
                ))  # fmt: skip

            await until(sleeping, what="the statement running")
        finally:
            await watcher.close()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        new_pid = await pool.fetchval("SELECT pg_backend_pid()")
        assert new_pid != pid
        # Killed by the server while idle (what a database restart does to every idle
        # connection): once asyncpg has seen the socket close, it is never handed out; the
        # next statement runs on a fresh connection, and no request pays for the dead one.
        async with pool.acquire() as conn:
            await conn.execute("SELECT 1")
        killer = await db.connect(database_url)
        try:
            await killer.execute("SELECT pg_terminate_backend($1)", new_pid)
        finally:
            await killer.close()
        await until(conn.is_closed)
        assert await pool.fetchval("SELECT pg_backend_pid()") not in (pid, new_pid)
        assert pool.get_size() == 1
    finally:
        await pool.close()


async def test_waiters_are_served_in_order_and_a_cancelled_waiter_loses_nothing(
    database_url: str,
) -> None:
    pool = await db.create_pool(database_url, 1)
    try:
        order: list[int] = []
        async with pool.acquire():

            async def use(n: int) -> None:
                async with pool.acquire() as conn:
                    order.append(n)
                    await conn.execute("SELECT 1")

            tasks = [asyncio.get_running_loop().create_task(use(n)) for n in range(5)]
            await until(lambda: len(pool._waiters) == 5)  # all five wait, in order
            tasks[2].cancel()  # a waiter that gives up must not take a connection with it
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert order == [0, 1, 3, 4]
        assert isinstance(results[2], asyncio.CancelledError)
        assert pool.get_idle_size() == 1
        # A transaction left open (an exception inside it) never reaches the next user.
        with pytest.raises(RuntimeError):
            async with pool.acquire() as conn:
                abandoned = conn.get_server_pid()
                tr = conn.transaction()
                await tr.start()
                raise RuntimeError("left the transaction open")
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction() and conn.get_server_pid() != abandoned
    finally:
        await pool.close()


async def test_close_fails_waiters_and_refuses_new_work(database_url: str) -> None:
    pool = await db.create_pool(database_url, 1)
    async with pool.acquire():
        waiter = asyncio.get_running_loop().create_task(pool.fetchval("SELECT 1"))
        await until(lambda: len(pool._waiters) == 1)
        await pool.close()
    with pytest.raises(asyncpg.InterfaceError):
        await waiter
    with pytest.raises(asyncpg.InterfaceError):
        await pool.fetchval("SELECT 1")
