"""API keys: creation (shown once), listing by prefix, revocation and rotation, last use
(lookups by hash: keycache.py).

Imports asyncpg and the pool's type. A key is `psk_` + 41 base62 characters of randomness
(240 bits) + a 6 character CRC32 checksum, so malformed or mistyped keys are refused without a
database lookup. Only SHA-256(key) is stored, plus the first characters as a display prefix.
Revocation fires a NOTIFY (trigger in 001_init.sql) that every API process uses to drop its
cached entry: every revocation here is an UPDATE of `revoked_at`, so it fires. A key may carry
a label and the client networks allowed to use it (013_accounts.sql; none: any client), both
checked here before anything is written. At most MAX_ACTIVE_KEYS active keys a user, exact under
concurrency: creation and rotation take the user's row lock first. Last use is noted in memory
(`Usage`) and written in batches, never per request.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import secrets
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from panelsrv.store.pool import Pool

MAX_ACTIVE_KEYS = 10
KEY_PREFIX = "psk_"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BODY_LEN = 41  # 62**41 > 2**240
_CHECK_LEN = 6  # 62**6 > 2**32
KEY_LENGTH = len(KEY_PREFIX) + _BODY_LEN + _CHECK_LEN
DISPLAY_PREFIX_LENGTH = len(KEY_PREFIX) + 8
MAX_LABEL_LENGTH = 64  # the column's CHECK
MAX_ALLOWED = 20  # networks a key, the column's CHECK
USAGE_FLUSH_SECONDS = 30  # how often each API process writes the keys it saw used

# $1 user id -> the user's id, row locked until the transaction ends (serialises the count).
LOCK_USER = "SELECT id FROM users WHERE id = $1 FOR UPDATE"
# $1 user id -> how many of the user's keys are active
COUNT_ACTIVE = "SELECT count(*) FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL"
# $1 user id, $2 sha256, $3 display prefix, $4 label, $5 allowed networks -> (id, created_at)
INSERT_KEY = """
INSERT INTO api_keys (user_id, hash, prefix, label, allowed_ips) VALUES ($1, $2, $3, $4, $5)
RETURNING id, created_at
"""
# $1 user id -> the user's keys, active ones first, each group oldest first
LIST_KEYS = """
SELECT prefix, created_at, revoked_at, label, allowed_ips, last_used_at
  FROM api_keys WHERE user_id = $1 ORDER BY revoked_at IS NOT NULL, id
"""
# $1 prefix -> (user_id, revoked_at) of the key with it, revoked now unless it already was;
# locks its row (so concurrent calls agree on one revocation time).
REVOKE_KEY = """
WITH k AS (SELECT id, revoked_at FROM api_keys WHERE prefix = $1 FOR UPDATE)
UPDATE api_keys SET revoked_at = coalesce(k.revoked_at, now())
  FROM k WHERE api_keys.id = k.id
RETURNING api_keys.user_id, api_keys.revoked_at
"""
# $1 user id, $2 prefix -> (label, allowed_ips) of the user's active key with that prefix,
# revoked by this statement; no row when the user has no such active key.
REVOKE_USERS_KEY = """
UPDATE api_keys SET revoked_at = now()
 WHERE user_id = $1 AND prefix = $2 AND revoked_at IS NULL
RETURNING label, allowed_ips
"""
# $1 key ids (sorted, so concurrent batches lock rows in one order) -> none; the rows' last use.
TOUCH_KEYS = "UPDATE api_keys SET last_used_at = now() WHERE id = ANY($1::bigint[])"


class TooManyKeys(Exception):
    pass


@dataclass(frozen=True, slots=True)
class NewKey:
    raw: str
    prefix: str
    user_id: int
    created: datetime


@dataclass(frozen=True, slots=True)
class KeyInfo:
    prefix: str
    created: datetime
    revoked: datetime | None
    label: str
    allowed: list[str]  # networks as stored, e.g. "203.0.113.0/24", "2001:db8::1/128"
    last_used: datetime | None  # up to USAGE_FLUSH_SECONDS late


def _base62(value: int, width: int) -> str:
    out = []
    for _ in range(width):
        value, digit = divmod(value, 62)
        out.append(_ALPHABET[digit])
    return "".join(reversed(out))


_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # base62 digit pairs, 0 .. 62**2 - 1


def _checksum(body: str) -> str:
    """`_base62(crc32(body), 6)` three digits at a time: every refused key pays for it."""
    value = zlib.crc32(body.encode())
    return _PAIRS[value // 3844**2] + _PAIRS[value // 3844 % 3844] + _PAIRS[value % 3844]


def generate() -> str:
    body = _base62(secrets.randbits(240), _BODY_LEN)
    return KEY_PREFIX + body + _checksum(body)


def well_formed(raw: str) -> bool:
    """Cheap offline check: shape and checksum. False means the key cannot exist."""
    if len(raw) != KEY_LENGTH or not raw.startswith(KEY_PREFIX):
        return False
    body = raw[len(KEY_PREFIX) : len(KEY_PREFIX) + _BODY_LEN]
    return raw[-_CHECK_LEN:] == _checksum(body) and all(c in _ALPHABET for c in body)


def digest(raw: str) -> bytes:
    return hashlib.sha256(raw.encode()).digest()


def _check_label(label: str) -> str:
    """The label as stored: stripped, at most MAX_LABEL_LENGTH printable characters."""
    label = label.strip()
    if len(label) > MAX_LABEL_LENGTH:
        raise ValueError(f"label: at most {MAX_LABEL_LENGTH} characters")
    if not label.isprintable():
        raise ValueError("label: printable characters only (no tabs or line breaks)")
    return label


def _network(entry: str) -> str:
    try:
        net = ipaddress.ip_network(entry.strip(), strict=False)
    except ValueError:
        raise ValueError(f"allowed addresses: {entry!r} is not an IP address or CIDR") from None
    if isinstance(net, ipaddress.IPv6Network):
        if net.network_address.scope_id is not None:
            raise ValueError(f"allowed addresses: {entry!r} has a zone (%...); leave it out")
        mapped = net.network_address.ipv4_mapped
        if mapped is not None and net.prefixlen >= 96:  # ::ffff:a.b.c.d is a.b.c.d
            return str(ipaddress.IPv4Network((mapped, net.prefixlen - 96)))
    return str(net)


def check_allowed(entries: Sequence[str]) -> list[str]:
    """The networks as stored: each entry an address or a CIDR (v4 or v6; host bits dropped,
    an address becomes its /32 or /128), duplicates dropped, at most MAX_ALLOWED."""
    networks = list(dict.fromkeys(_network(e) for e in entries))
    if len(networks) > MAX_ALLOWED:
        raise ValueError(f"allowed addresses: at most {MAX_ALLOWED} (got {len(networks)})")
    return networks


def parse_allowed(text: str) -> list[str]:
    """`check_allowed` of a list typed as text: entries separated by commas, spaces or lines."""
    return check_allowed([e for e in re.split(r"[\s,]+", text) if e])


async def create(
    conn: asyncpg.Connection, user_id: int, label: str = "", allowed: Sequence[str] = ()
) -> NewKey:
    """A new key for the user; TooManyKeys when they already have MAX_ACTIVE_KEYS active,
    ValueError (nothing written) for a bad label or allowed entry."""
    label, networks = _check_label(label), check_allowed(allowed)
    async with conn.transaction():
        # The user row lock serialises concurrent creations, so the count below is exact.
        if await conn.fetchval(LOCK_USER, user_id) is None:
            raise LookupError(f"no user {user_id}")
        if await conn.fetchval(COUNT_ACTIVE, user_id) >= MAX_ACTIVE_KEYS:
            raise TooManyKeys(f"user {user_id} already has {MAX_ACTIVE_KEYS} active keys")
        return await _insert(conn, user_id, label, networks)


async def _insert(
    conn: asyncpg.Connection, user_id: int, label: str, networks: Sequence[object]
) -> NewKey:
    while True:
        raw = generate()
        prefix = raw[:DISPLAY_PREFIX_LENGTH]
        try:
            async with conn.transaction():
                row = await conn.fetchrow(INSERT_KEY, user_id, digest(raw), prefix, label, networks)
        except asyncpg.UniqueViolationError:
            continue  # a prefix collision (1 in 62**8): draw again
        return NewKey(raw, prefix, user_id, row["created_at"])


async def list_keys(conn: asyncpg.Connection | Pool, user_id: int) -> list[KeyInfo]:
    """The user's keys: the active ones first, then the revoked; each group oldest first."""
    return [
        KeyInfo(r[0], r[1], r[2], r[3], [str(n) for n in r[4]], r[5])
        for r in await conn.fetch(LIST_KEYS, user_id)
    ]


async def revoke(conn: asyncpg.Connection, prefix: str) -> datetime | None:
    """Revoke the key with this prefix (idempotent); None when no key has it."""
    row = await conn.fetchrow(REVOKE_KEY, prefix)
    return None if row is None else row["revoked_at"]


async def revoke_for_user(conn: asyncpg.Connection | Pool, user_id: int, prefix: str) -> bool:
    """Revoke the user's active key with this prefix: True when this call revoked it, False
    when the user has no such active key (another user's, unknown, or already revoked)."""
    return await conn.fetchrow(REVOKE_USERS_KEY, user_id, prefix) is not None


async def rotate(conn: asyncpg.Connection, user_id: int, prefix: str) -> NewKey:
    """In one transaction, revoke the user's active key with this prefix and create its
    replacement with the same label and allowed networks; LookupError (nothing changed) when
    the user has no such active key. The active count stays as it was, so it works at
    MAX_ACTIVE_KEYS. The old key stops resolving when this commits (the NOTIFY)."""
    async with conn.transaction():
        # The same lock as create's: a creation cannot take the slot the revocation frees.
        if await conn.fetchval(LOCK_USER, user_id) is None:
            raise LookupError(f"no user {user_id}")
        old = await conn.fetchrow(REVOKE_USERS_KEY, user_id, prefix)
        if old is None:
            raise LookupError(f"user {user_id} has no active key {prefix!r}")
        return await _insert(conn, user_id, old["label"], old["allowed_ips"])


class Usage:
    """The keys one API process saw used since its last flush. `note` is a set add (it runs on
    the API's hot path); `flush` writes the batch in one statement every USAGE_FLUSH_SECONDS,
    so `last_used_at` is the time of the flush, at most that much after the use."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: set[int] = set()

    def note(self, key_id: int) -> None:
        self._seen.add(key_id)

    async def flush(self, pool: Pool | asyncpg.Connection) -> int:
        """Write and forget the batch: how many keys it held. On any failure (re-raised) the
        batch is kept, merged with what was noted meanwhile, for the next flush."""
        if not self._seen:
            return 0
        batch, self._seen = self._seen, set()
        try:
            await pool.execute(TOUCH_KEYS, sorted(batch))
        except BaseException:
            self._seen |= batch
            raise
        return len(batch)
