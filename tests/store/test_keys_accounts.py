"""What the account pages do with keys: labels, allowed networks, revoke and rotate for one
user, last use written in batches."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import asyncpg
import pytest

from panelsrv.store import db, keys
from tests.store.helpers import connect, new_panel, new_user


async def _active(conn: asyncpg.Connection, user_id: int) -> list[str]:
    rows = await conn.fetch(
        "SELECT prefix FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL ORDER BY id",
        user_id,
    )
    return [r[0] for r in rows]


async def _key_id(conn: asyncpg.Connection, prefix: str) -> int:
    return await conn.fetchval("SELECT id FROM api_keys WHERE prefix = $1", prefix)


async def test_label_and_allowed_networks_are_stored_normalised_and_listed(
    database_url: str,
) -> None:
    conn = await connect(database_url)
    try:
        _, domain = await new_panel(conn)
        user = await new_user(conn, domain)
        allowed = ["203.0.113.7", "198.51.100.77/24", "2001:DB8::1/48", "::ffff:192.0.2.9",
                   " 203.0.113.7 "]  # fmt: skip
        new = await keys.create(conn, user.id, label="  shop bot ", allowed=allowed)
        plain = await keys.create(conn, user.id)
        expected = ["203.0.113.7/32", "198.51.100.0/24", "2001:db8::/48", "192.0.2.9/32"]
        stored = await conn.fetchrow(
            "SELECT label, allowed_ips::text[] FROM api_keys WHERE prefix = $1", new.prefix
        )
        assert (stored[0], stored[1]) == ("shop bot", expected)
        listed = await keys.list_keys(conn, user.id)
        assert [(k.prefix, k.label, k.allowed, k.last_used, k.revoked) for k in listed] == [
            (new.prefix, "shop bot", expected, None, None),
            (plain.prefix, "", [], None, None),
        ]
        assert await keys.create(conn, user.id, label="x" * keys.MAX_LABEL_LENGTH)
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("label", "allowed", "message"),
    [
        ("x" * 65, (), "label: at most 64 characters"),
        ("tab\there", (), "label: printable characters only"),
        ("two\nlines", (), "label: printable characters only"),
        ("", ("10.0.0.256",), "allowed addresses: '10.0.0.256' is not an IP address or CIDR"),
        (
            "",
            ("10.0.0.1", "panel.example"),
            "allowed addresses: 'panel.example' is not an IP address or CIDR",
        ),
        ("", ("10.0.0.0/33",), "allowed addresses: '10.0.0.0/33' is not an IP address or CIDR"),
        ("", ("fe80::1%eth0",), "allowed addresses: 'fe80::1%eth0' has a zone"),
        ("", tuple(f"10.0.0.{i}" for i in range(21)), "allowed addresses: at most 20 (got 21)"),
    ],
)
async def test_bad_label_or_allowed_entry_is_refused_and_nothing_written(
    database_url: str, label: str, allowed: tuple[str, ...], message: str
) -> None:
    conn = await connect(database_url)
    try:
        _, domain = await new_panel(conn)
        user = await new_user(conn, domain)
        with pytest.raises(ValueError, match="^" + re.escape(message)):
            await keys.create(conn, user.id, label=label, allowed=allowed)
        assert await keys.list_keys(conn, user.id) == []
    finally:
        await conn.close()


def test_parse_allowed_splits_on_commas_spaces_and_lines() -> None:
    text = " 192.0.2.1, 192.0.2.0/28\n2001:db8::/32\r\n\t198.51.100.5,,  192.0.2.1 \n"
    assert keys.parse_allowed(text) == [
        "192.0.2.1/32", "192.0.2.0/28", "2001:db8::/32", "198.51.100.5/32",
    ]  # fmt: skip
    assert keys.parse_allowed("") == [] and keys.parse_allowed(" \n, ") == []
    assert keys.parse_allowed(" ".join(f"10.0.0.{i}" for i in range(20)))[-1] == "10.0.0.19/32"
    with pytest.raises(ValueError, match=re.escape("'10.0.0.1;10.0.0.2' is not")):
        keys.parse_allowed("10.0.0.1;10.0.0.2")


async def test_listing_shows_active_keys_first_then_revoked_each_oldest_first(
    database_url: str,
) -> None:
    conn = await connect(database_url)
    try:
        _, domain = await new_panel(conn)
        user = await new_user(conn, domain)
        a, b, c = [(await keys.create(conn, user.id, label=n)).prefix for n in "abc"]
        await keys.revoke(conn, a)
        listed = await keys.list_keys(conn, user.id)
        assert [(k.prefix, k.revoked is None) for k in listed] == [
            (b, True), (c, True), (a, False),
        ]  # fmt: skip
    finally:
        await conn.close()


async def _revocations(url: str) -> tuple[asyncpg.Connection, asyncio.Queue[str]]:
    """A connection listening to the revocation channel, and the key hashes (hex) it heard."""
    listener = await connect(url)
    heard: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener("panelsrv_keys", lambda *args: heard.put_nowait(args[3]))
    return listener, heard


async def test_revoke_for_user_revokes_only_that_users_key_and_notifies(
    database_url: str,
) -> None:
    conn = await connect(database_url)
    listener, heard = await _revocations(database_url)
    try:
        _, domain = await new_panel(conn)
        user, other = await new_user(conn, domain), await new_user(conn, domain)
        mine = await keys.create(conn, user.id)
        theirs = await keys.create(conn, other.id)
        assert not await keys.revoke_for_user(conn, user.id, theirs.prefix)
        assert not await keys.revoke_for_user(conn, user.id, "psk_nothing")
        assert await _active(conn, other.id) == [theirs.prefix]
        assert await keys.revoke_for_user(conn, user.id, mine.prefix)
        assert await asyncio.wait_for(heard.get(), 10) == keys.digest(mine.raw).hex()
        assert not await keys.revoke_for_user(conn, user.id, mine.prefix)  # already revoked
        assert await _active(conn, user.id) == [] and heard.empty()
    finally:
        await listener.close()
        await conn.close()


async def test_rotate_at_ten_keys_replaces_one_with_the_same_label_and_networks(
    database_url: str,
) -> None:
    conn = await connect(database_url)
    listener, heard = await _revocations(database_url)
    try:
        _, domain = await new_panel(conn)
        user, other = await new_user(conn, domain), await new_user(conn, domain)
        old = await keys.create(conn, user.id, label="bot", allowed=["192.0.2.0/24"])
        for _ in range(keys.MAX_ACTIVE_KEYS - 1):
            await keys.create(conn, user.id)
        theirs = await keys.create(conn, other.id)
        new = await keys.rotate(conn, user.id, old.prefix)
        assert keys.well_formed(new.raw) and new.prefix != old.prefix and new.user_id == user.id
        assert await asyncio.wait_for(heard.get(), 10) == keys.digest(old.raw).hex()
        active = await _active(conn, user.id)
        assert len(active) == keys.MAX_ACTIVE_KEYS and old.prefix not in active
        listed = {k.prefix: k for k in await keys.list_keys(conn, user.id)}
        assert (listed[new.prefix].label, listed[new.prefix].allowed) == ("bot", ["192.0.2.0/24"])
        assert listed[old.prefix].revoked is not None
        for prefix in (old.prefix, theirs.prefix, "psk_nothing"):  # revoked, another's, unknown
            with pytest.raises(LookupError):
                await keys.rotate(conn, user.id, prefix)
        assert await _active(conn, user.id) == active
        assert await _active(conn, other.id) == [theirs.prefix]
        assert heard.empty()
    finally:
        await listener.close()
        await conn.close()


async def test_rotation_racing_creations_keeps_the_ceiling_exact(database_url: str) -> None:
    conns = [await connect(database_url) for _ in range(4)]
    try:
        _, domain = await new_panel(conns[0])
        user = await new_user(conns[0], domain)
        first = await keys.create(conns[0], user.id)
        for _ in range(keys.MAX_ACTIVE_KEYS - 2):
            await keys.create(conns[0], user.id)
        # 9 active: one slot. The rotation frees none; exactly one of the creations gets it.
        results: list[Any] = await asyncio.gather(
            keys.rotate(conns[0], user.id, first.prefix),
            *(keys.create(c, user.id) for c in conns[1:]),
            return_exceptions=True,
        )
        assert isinstance(results[0], keys.NewKey)
        assert sorted(type(r).__name__ for r in results[1:]) == [
            "NewKey", "TooManyKeys", "TooManyKeys",
        ]  # fmt: skip
        assert len(await _active(conns[0], user.id)) == keys.MAX_ACTIVE_KEYS
    finally:
        await asyncio.gather(*(c.close() for c in conns))


class _Counting:
    """The pool's `execute`, counted."""

    def __init__(self, pool: Any) -> None:
        self.pool, self.statements = pool, 0

    async def execute(self, query: str, *args: Any) -> str:
        self.statements += 1
        return str(await self.pool.execute(query, *args))


async def test_usage_flush_writes_the_batch_in_one_statement_then_forgets_it(
    database_url: str,
) -> None:
    conn = await connect(database_url)
    pool = await db.create_pool(database_url, 1)
    try:
        _, domain = await new_panel(conn)
        user = await new_user(conn, domain)
        made = [await keys.create(conn, user.id) for _ in range(3)]
        ids = [await _key_id(conn, k.prefix) for k in made]
        usage = keys.Usage()
        for key_id in (ids[0], ids[1], ids[0], ids[0]):
            usage.note(key_id)
        counting = _Counting(pool)
        before = await conn.fetchval("SELECT now()")
        assert await usage.flush(counting) == 2  # type: ignore[arg-type]
        assert counting.statements == 1
        used = {k.prefix: k.last_used for k in await keys.list_keys(conn, user.id)}
        assert used[made[2].prefix] is None
        assert all(used[k.prefix] is not None and used[k.prefix] >= before for k in made[:2])
        assert await usage.flush(counting) == 0  # type: ignore[arg-type]
        assert counting.statements == 1  # nothing noted: no statement
    finally:
        await pool.close()
        await conn.close()


async def test_usage_keeps_the_batch_when_a_flush_fails(database_url: str) -> None:
    conn = await connect(database_url)
    broken = await connect(database_url)
    try:
        _, domain = await new_panel(conn)
        user = await new_user(conn, domain)
        key_ids = [await _key_id(conn, (await keys.create(conn, user.id)).prefix) for _ in "ab"]
        usage = keys.Usage()
        usage.note(key_ids[0])
        await broken.close()
        with pytest.raises(asyncpg.InterfaceError):
            await usage.flush(broken)
        usage.note(key_ids[1])  # noted after the failure: joins the kept batch
        assert await usage.flush(conn) == 2
        assert all(k.last_used is not None for k in await keys.list_keys(conn, user.id))
    finally:
        await conn.close()
