"""Test harness.

- `async def` tests run on a fresh uvloop event loop each; a test fails when the loop's exception
  handler was called (an exception nobody awaited, a callback that raised).
- `database_url`: a database created for this test run (unique name) on the server named by
  PANELSRV_TEST_DATABASE_URL, or on the embedded PostgreSQL when that is unset; migrated, and
  dropped at the end of the run. `own_database_url`: the same, for one test alone.
- `redis_url`: PANELSRV_TEST_REDIS_URL, else redis on 127.0.0.1:6379; tests needing it skip
  when neither answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import uvloop

from panelsrv.store import db

ROOT = Path(__file__).resolve().parent.parent


def run_async(coro):  # type: ignore[no-untyped-def]
    """Run a coroutine on a new uvloop loop; fail if the loop logged an unhandled exception."""
    errors: list[dict] = []
    loop = uvloop.new_event_loop()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        result = loop.run_until_complete(coro)
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
    if errors:
        pytest.fail(f"event loop logged unhandled exception(s): {errors!r}")
    return result


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    run_async(pyfuncitem.obj(**kwargs))
    return True


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def server_url() -> str:
    """The PostgreSQL server tests run against (its maintenance database)."""
    url = os.environ.get("PANELSRV_TEST_DATABASE_URL")
    if url:
        return url
    data_dir = os.environ.get("PANELSRV_TEST_DATA_DIR", str(ROOT / "var" / "test"))
    return db.embedded_url(data_dir, "postgres")


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A new, migrated database on the test server; dropped afterwards."""
    base = server_url()
    name = f"panelsrv_test_{os.getpid()}_{secrets.token_hex(3)}"
    url = _with_database(base, name)

    async def create() -> None:
        admin = await asyncpg.connect(base)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        await (await db.open_migrated(url)).close()

    async def drop() -> None:
        admin = await asyncpg.connect(base)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    run_async(create())
    try:
        yield url
    finally:
        run_async(drop())


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """The run's shared database: tests scope their assertions to the rows they made."""
    with fresh_database() as url:
        yield url


@pytest.fixture
def own_database_url() -> Iterator[str]:
    """A database of this test's own, for tests that run a `panelsrv worker`: a worker takes
    every job in its database, including the leftovers of other tests."""
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("PANELSRV_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 1):
            pass
    except OSError:
        if os.environ.get("PANELSRV_TEST_REDIS_URL"):
            raise
        pytest.skip("no Redis reachable (set PANELSRV_TEST_REDIS_URL)")
    return url
