"""PostgreSQL: the embedded server, the connection pool and the migrations runner.

I/O module. With no `database_url`, PostgreSQL from the `pgserver` package runs under
`<data_dir>/pgdata`, shared by every panelsrv command on the machine (the last one to exit stops
it). Migrations are the plain SQL files in `migrations/`, applied in name order, each in its own
transaction, recorded in `schema_migrations`, under an advisory lock so concurrent commands
(several workers, several hosts) apply each file exactly once.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import warnings
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg
import orjson

from panelsrv.outages import Outage
from panelsrv.store.pool import UNAVAILABLE, Pool

log = logging.getLogger("panelsrv.db")

EMBEDDED_DATABASE = "panelsrv"
_MIGRATION_LOCK = 0x70616E656C  # advisory lock key ("panel")
CONNECT_TIMEOUT = 5.0  # seconds for a new connection (asyncpg's default is 60)


class DatabaseError(RuntimeError):
    """The database cannot be reached or prepared; the message says what to do."""


def unavailable(exc: BaseException) -> bool:
    """True when `exc` (or the failure a DatabaseError wraps) is the database being away."""
    if isinstance(exc, DatabaseError) and exc.__cause__ is not None:
        exc = exc.__cause__
    return isinstance(exc, UNAVAILABLE)


def embedded_url(data_dir: str, database: str = EMBEDDED_DATABASE) -> str:
    """Start (or join) the embedded PostgreSQL under `<data_dir>/pgdata`; return a URL to it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        try:
            import pgserver
            from pgserver.postgres_server import PostgresServer
        except ImportError as exc:  # not installed: it has no wheel for Python 3.13 and later
            raise DatabaseError(
                f"no database_url is set, and the embedded PostgreSQL is not installed ({exc}):"
                " the pgserver package has wheels for CPython 3.11 and 3.12 only; set"
                " database_url (or PANELSRV_DATABASE_URL) to a PostgreSQL server"
            ) from exc
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    pgdata = Path(data_dir).expanduser().resolve() / "pgdata"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with PostgresServer._lock:
        _forget_dead_handles(pgdata)
    try:
        server = pgserver.get_server(pgdata, cleanup_mode="stop")
    except Exception as exc:
        raise DatabaseError(
            f"could not start the embedded PostgreSQL in {pgdata} ({exc}); "
            f"see {pgdata / 'log'} or set database_url"
        ) from exc
    return str(server.get_uri(database))


def _forget_dead_handles(pgdata: Path) -> None:
    """pgserver counts its users in a pid list and stops PostgreSQL when the last one exits; a
    process killed with SIGKILL never removes itself, so drop pids that no longer exist."""
    path = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if _pid_alive(pid)]
    if alive != pids:
        path.write_text(json.dumps(alive))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def resolve_url(database_url: str, data_dir: str) -> str:
    return database_url or embedded_url(data_dir)


async def _create_database(url: str) -> None:
    name = unquote(urlsplit(url).path.lstrip("/"))
    admin = await connect(url, database="postgres")
    try:
        await admin.execute('CREATE DATABASE "{}"'.format(name.replace('"', '""')))
    except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
        pass  # created meanwhile by a concurrent command (or process: the catalog's own race)
    finally:
        await admin.close()


async def init_connection(conn: asyncpg.Connection) -> None:
    """jsonb in and out as Python objects, through orjson."""
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=lambda value: orjson.dumps(value).decode(),
        decoder=orjson.loads,
    )


async def _open(url: str, **kwargs: Any) -> asyncpg.Connection:
    """A connection, initialised; asyncpg's own errors pass through (the API maps them)."""
    kwargs.setdefault("timeout", CONNECT_TIMEOUT)  # an unreachable host: a 503, not a hang
    conn = await asyncpg.connect(url, server_settings={"application_name": "panelsrv"}, **kwargs)
    try:
        await init_connection(conn)
    except BaseException:
        conn.terminate()
        raise
    return conn


async def connect(url: str, **kwargs: Any) -> asyncpg.Connection:
    """One connection, for commands and tools (servers use `create_pool`)."""
    try:
        return await _open(url, **kwargs)
    except (OSError, asyncpg.PostgresError) as exc:
        raise DatabaseError(f"cannot connect to PostgreSQL: {exc}") from exc


async def create_pool(url: str, size: int, outage: Outage | None = None) -> Pool:
    """`size` connections, opened now, each initialised (jsonb codec); outages reported to
    `outage`."""
    pool = Pool(functools.partial(_open, url), size, outage)
    try:
        await pool.start()
    except (OSError, asyncpg.PostgresError) as exc:
        await pool.close()
        raise DatabaseError(f"cannot connect to PostgreSQL: {exc}") from exc
    return pool


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("panelsrv.store") / "migrations"
    files = sorted(
        (entry.name, entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    )
    return [(name.removesuffix(".sql"), text) for name, text in files]


async def applied_migrations(conn: asyncpg.Connection) -> list[str]:
    """The versions recorded in `schema_migrations`, in order."""
    return [r[0] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")]


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply pending migrations; return the versions applied now."""
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, text in migration_files():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(text)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            applied_now.append(version)
            log.info("applied migration %s", version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied_now


async def open_migrated(url: str) -> asyncpg.Connection:
    """What every command that needs the schema does first: connect (creating the database when
    it does not exist yet, as on a fresh embedded server) and apply pending migrations."""
    try:
        conn = await connect(url)
    except DatabaseError as exc:
        if not isinstance(exc.__cause__, asyncpg.InvalidCatalogNameError):
            raise
        await _create_database(url)
        conn = await connect(url)
    try:
        await migrate(conn)
    except BaseException:
        await conn.close()
        raise
    return conn
