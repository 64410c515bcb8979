"""API keys: creation (shown once), listing by prefix, revocation
(lookups by hash: keycache.py).

Imports asyncpg only. A key is `psk_` + 41 base62 characters of randomness (240 bits) + a 6
character CRC32 checksum, so malformed or mistyped keys are refused without a database lookup.
Only SHA-256(key) is stored, plus the first characters as a display prefix. Revocation fires a
NOTIFY (trigger in 001_init.sql) that every API process uses to drop its cached entry.
"""

from __future__ import annotations

import hashlib
import secrets
import zlib
from dataclasses import dataclass
from datetime import datetime

import asyncpg

MAX_ACTIVE_KEYS = 10
KEY_PREFIX = "psk_"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BODY_LEN = 41  # 62**41 > 2**240
_CHECK_LEN = 6  # 62**6 > 2**32
KEY_LENGTH = len(KEY_PREFIX) + _BODY_LEN + _CHECK_LEN
DISPLAY_PREFIX_LENGTH = len(KEY_PREFIX) + 8

LOCK_USER = "SELECT id FROM users WHERE id = $1 FOR UPDATE"
COUNT_ACTIVE = "SELECT count(*) FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL"
INSERT_KEY = """
INSERT INTO api_keys (user_id, hash, prefix) VALUES ($1, $2, $3) RETURNING id, created_at
"""
LIST_KEYS = """
SELECT prefix, created_at, revoked_at FROM api_keys WHERE user_id = $1 ORDER BY id
"""
REVOKE_KEY = """
WITH k AS (SELECT id, revoked_at FROM api_keys WHERE prefix = $1 FOR UPDATE)
UPDATE api_keys SET revoked_at = coalesce(k.revoked_at, now())
  FROM k WHERE api_keys.id = k.id
RETURNING api_keys.user_id, api_keys.revoked_at
"""


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


async def create(conn: asyncpg.Connection, user_id: int) -> NewKey:
    """A new key for the user; TooManyKeys when they already have MAX_ACTIVE_KEYS active."""
    async with conn.transaction():
        # The user row lock serialises concurrent creations, so the count below is exact.
        if await conn.fetchval(LOCK_USER, user_id) is None:
            raise LookupError(f"no user {user_id}")
        if await conn.fetchval(COUNT_ACTIVE, user_id) >= MAX_ACTIVE_KEYS:
            raise TooManyKeys(f"user {user_id} already has {MAX_ACTIVE_KEYS} active keys")
        while True:
            raw = generate()
            prefix = raw[:DISPLAY_PREFIX_LENGTH]
            try:
                async with conn.transaction():
                    row = await conn.fetchrow(INSERT_KEY, user_id, digest(raw), prefix)
            except asyncpg.UniqueViolationError:
                continue  # a prefix collision (1 in 62**8): draw again
            return NewKey(raw, prefix, user_id, row["created_at"])


async def list_keys(conn: asyncpg.Connection, user_id: int) -> list[KeyInfo]:
    return [KeyInfo(r[0], r[1], r[2]) for r in await conn.fetch(LIST_KEYS, user_id)]


async def revoke(conn: asyncpg.Connection, prefix: str) -> datetime | None:
    """Revoke the key with this prefix (idempotent); None when no key has it."""
    row = await conn.fetchrow(REVOKE_KEY, prefix)
    return None if row is None else row["revoked_at"]
