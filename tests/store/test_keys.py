from __future__ import annotations

import asyncio

import pytest

from panelsrv.store import db, keys
from panelsrv.store.keycache import KeyCache
from tests.store.helpers import connect, new_panel, new_user


async def test_only_the_hash_is_stored(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        _, domain = await new_panel(conn)
        user = await new_user(conn, domain)
        new = await keys.create(conn, user.id)
        assert keys.well_formed(new.raw)
        # Search every text-ish column of every table for the raw key (or its secret part).
        secret = new.raw[keys.DISPLAY_PREFIX_LENGTH :]
        columns = await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'public'"
        )
        for table, column in columns:
            hits = await conn.fetchval(
                f'SELECT count(*) FROM "{table}" WHERE "{column}"::text LIKE $1', f"%{secret}%"
            )
            assert hits == 0, (table, column)
        assert await conn.fetchval(
            "SELECT hash FROM api_keys WHERE prefix = $1", new.prefix
        ) == keys.digest(new.raw)
    finally:
        await conn.close()


async def test_eleventh_active_key_is_refused_even_concurrently(database_url: str) -> None:
    conns = [await connect(database_url) for _ in range(12)]
    try:
        _, domain = await new_panel(conns[0])
        user = await new_user(conns[0], domain)
        results = await asyncio.gather(
            *(keys.create(c, user.id) for c in conns), return_exceptions=True
        )
        assert sum(isinstance(r, keys.NewKey) for r in results) == 10
        assert all(
            isinstance(r, keys.TooManyKeys) for r in results if not isinstance(r, keys.NewKey)
        )
        # Revoking one frees a slot.
        first = next(r for r in results if isinstance(r, keys.NewKey))
        await keys.revoke(conns[0], first.prefix)
        await keys.create(conns[0], user.id)
        with pytest.raises(keys.TooManyKeys):
            await keys.create(conns[0], user.id)
    finally:
        await asyncio.gather(*(c.close() for c in conns))


async def test_revoked_key_no_longer_resolves(database_url: str) -> None:
    conn = await connect(database_url)
    pool = await db.create_pool(database_url, 1)
    # Not enabled (no notification listener): every resolve reads the database.
    cache = KeyCache(pool, ttl=60, negative_ttl=60)
    try:
        panel_id, domain = await new_panel(conn)
        user = await new_user(conn, domain)
        new = await keys.create(conn, user.id)
        found = await cache.resolve(new.raw)
        assert found is not None
        assert (found.key_id, found.user_id, found.panel_id) == (
            await conn.fetchval("SELECT id FROM api_keys WHERE prefix = $1", new.prefix),
            user.id,
            panel_id,
        )
        first = await keys.revoke(conn, new.prefix)
        assert first is not None and await keys.revoke(conn, new.prefix) == first
        assert await cache.resolve(new.raw) is None
    finally:
        await pool.close()
        await conn.close()


def test_key_format_checks_catch_typos() -> None:
    raw = keys.generate()
    assert keys.well_formed(raw) and len(raw) == keys.KEY_LENGTH
    flipped = raw[:10] + ("A" if raw[10] != "A" else "B") + raw[11:]
    assert not keys.well_formed(flipped)
    assert not keys.well_formed(raw[:-1]) and not keys.well_formed("")
    assert not keys.well_formed("x" * keys.KEY_LENGTH)


@pytest.mark.parametrize("crc", [0, 1, 61, 62, 3843, 3844, 62**4 - 1, 62**4, 2**31, 2**32 - 1])
def test_checksum_is_the_crc32_in_six_base62_digits(
    crc: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keys.zlib, "crc32", lambda data: crc)
    assert keys._checksum("any") == keys._base62(crc, 6)
