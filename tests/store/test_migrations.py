import asyncpg

from panelsrv.store import db


async def test_migrations_are_recorded_and_idempotent(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        assert await db.migrate(conn) == []
        versions = [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")]
        assert versions == [name for name, _ in db.migration_files()]
    finally:
        await conn.close()
