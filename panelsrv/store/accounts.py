"""Reseller accounts: passwords, invitations, sessions, the second factor and failed sign-ins.

Imports asyncpg, argon2-cffi, pyotp and panelsrv.store.pool. Hashes only, never a raw secret:
passwords as argon2id, invitation, session and recovery tokens as SHA-256 (they are random, 256
or 80 bits, so a fast hash is enough). The TOTP secret is the one secret kept as is: the server
must compute codes from it.

Invariants: an invitation works once, within INVITE_TTL, on its user's panel; setting a password
through one ends every session of the user, and so does a password change (except the session
that made it). A session is found only unexpired, not idle for longer than the idle timeout,
not ended; each find pushes its idle deadline. Failed sign-ins are counted on the user row in
one statement, so the per-account limit is exact on every process and host. A TOTP code counts
once: the step it matched is recorded with a compare-and-set, so a replayed code is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TypeAlias

import argon2
import asyncpg
import pyotp

from panelsrv.store.pool import Pool

Db: TypeAlias = Pool | asyncpg.Connection

# argon2id at OWASP's first recommended setting (19 MiB, 2 passes, 1 lane): 44 ms per verify on
# this 2-core machine (bench/argon2_cost.py); a change here rehashes on the next sign-in.
HASHER = argon2.PasswordHasher(
    time_cost=2, memory_cost=19456, parallelism=1, hash_len=32, salt_len=16, type=argon2.Type.ID
)
# Hashes at once per process: each holds 19 MiB for ~44 ms; more sign-ins queue behind them.
HASH_CONCURRENCY = 2
PASSWORD_MIN = 10
PASSWORD_MAX = 256  # characters; a longer one would only cost hashing time
INVITE_TTL = 24 * 3600  # seconds an invitation link works
RECOVERY_CODES = 10
TOTP_STEP = 30  # seconds (RFC 6238); a code of the step before or after is accepted too
TOTP_ISSUER = "panelsrv"

# $1 user id, $2 sha256(token), $3 seconds valid. Voids the user's earlier unused invitations
# first (a new link replaces the old), then one row.
VOID_INVITES = "UPDATE account_invites SET used_at = now() WHERE user_id = $1 AND used_at IS NULL"
INSERT_INVITE = """
INSERT INTO account_invites (user_id, hash, expires_at)
VALUES ($1, $2, now() + $3 * interval '1 second')
"""
# $1 sha256(token), $2 panel id -> (user id, email) of a usable invitation on that panel.
FIND_INVITE = """
SELECT u.id, u.email FROM account_invites i JOIN users u ON u.id = i.user_id
 WHERE i.hash = $1 AND i.used_at IS NULL AND i.expires_at > now() AND u.panel_id = $2
"""
# $1 sha256(token), $2 panel id, $3 argon2 hash -> the user id, or no row when the invitation
# is unknown, used, expired or of another panel. One statement: the invitation's row lock makes
# a second use of the same link find it used; the password is set, failures cleared, and every
# session of the user ended.
USE_INVITE = """
WITH i AS (
    UPDATE account_invites SET used_at = now()
     WHERE hash = $1 AND used_at IS NULL AND expires_at > now()
       AND user_id IN (SELECT id FROM users WHERE panel_id = $2)
    RETURNING user_id
), u AS (
    UPDATE users SET password_hash = $3, password_changed_at = now(), login_failures = 0,
                     login_window_start = NULL, login_locked_until = NULL
      FROM i WHERE users.id = i.user_id
    RETURNING users.id
), s AS (
    UPDATE sessions SET ended_at = now() FROM u WHERE sessions.user_id = u.id AND ended_at IS NULL
)
SELECT id FROM u
"""
# $1 email, $2 panel id -> what a sign-in checks.
SIGN_IN_USER = """
SELECT id, password_hash, totp_enabled_at IS NOT NULL, coalesce(login_locked_until > now(), false)
  FROM users WHERE email = $1 AND panel_id = $2
"""
# $1 user id, $2 failures allowed per window, $3 window seconds -> locked now (bool). One row
# update: a failure outside the current window starts a new one; reaching $2 locks the account
# for the window's length.
RECORD_FAILURE = """
WITH n AS (
    SELECT id, CASE WHEN login_window_start > now() - $3 * interval '1 second'
                    THEN login_failures + 1 ELSE 1 END AS failures,
               CASE WHEN login_window_start > now() - $3 * interval '1 second'
                    THEN login_window_start ELSE now() END AS since
      FROM users WHERE id = $1 FOR UPDATE
)
UPDATE users SET login_failures = n.failures, login_window_start = n.since,
       login_locked_until = CASE WHEN n.failures >= $2 THEN now() + $3 * interval '1 second'
                                 ELSE login_locked_until END
  FROM n WHERE users.id = n.id
RETURNING n.failures >= $2
"""
CLEAR_FAILURES = """
UPDATE users SET login_failures = 0, login_window_start = NULL
 WHERE id = $1 AND login_failures > 0
"""
# $1 user id, $2 sha256(token), $3 csrf token, $4 stage, $5 lifetime seconds -> session id.
INSERT_SESSION = """
INSERT INTO sessions (user_id, hash, csrf, stage, expires_at)
VALUES ($1, $2, $3, $4, now() + $5 * interval '1 second') RETURNING id
"""
# $1 sha256(token), $2 idle seconds -> the live session and its user; pushes the idle deadline.
FIND_SESSION = """
UPDATE sessions s SET last_seen_at = now()
  FROM users u
 WHERE s.hash = $1 AND s.ended_at IS NULL AND s.expires_at > now()
   AND s.last_seen_at > now() - $2 * interval '1 second' AND u.id = s.user_id
RETURNING s.id, s.user_id, u.panel_id, u.email, s.stage, s.csrf, u.totp_enabled_at IS NOT NULL
"""
END_SESSION = "UPDATE sessions SET ended_at = now() WHERE id = $1 AND ended_at IS NULL"
# $1 user id, $2 the session kept (0: none).
END_OTHER_SESSIONS = """
UPDATE sessions SET ended_at = now() WHERE user_id = $1 AND id <> $2 AND ended_at IS NULL
"""
# $1 user id -> password hash, TOTP secret, TOTP enabled, last TOTP step used, locked now.
CREDENTIALS = """
SELECT password_hash, totp_secret, totp_enabled_at IS NOT NULL, totp_last_step,
       coalesce(login_locked_until > now(), false)
  FROM users WHERE id = $1
"""
SET_PASSWORD = """
UPDATE users SET password_hash = $2, password_changed_at = now() WHERE id = $1
"""
# $1 user id, $2 step matched -> a row only when the step is newer than the last one used.
USE_TOTP_STEP = """
UPDATE users SET totp_last_step = $2 WHERE id = $1 AND totp_last_step < $2 RETURNING id
"""
# Enrolment: a pending secret (not yet enabled) may be replaced; an enabled one may not.
SET_PENDING_TOTP = """
UPDATE users SET totp_secret = $2 WHERE id = $1 AND totp_enabled_at IS NULL
"""
ENABLE_TOTP = """
UPDATE users SET totp_enabled_at = now(), totp_last_step = $2
 WHERE id = $1 AND totp_secret IS NOT NULL AND totp_enabled_at IS NULL RETURNING id
"""
DISABLE_TOTP = """
UPDATE users SET totp_secret = NULL, totp_enabled_at = NULL WHERE id = $1
"""
DELETE_RECOVERY_CODES = "DELETE FROM recovery_codes WHERE user_id = $1"
INSERT_RECOVERY_CODES = """
INSERT INTO recovery_codes (user_id, hash) SELECT $1, unnest($2::bytea[])
"""
USE_RECOVERY_CODE = """
UPDATE recovery_codes SET used_at = now()
 WHERE user_id = $1 AND hash = $2 AND used_at IS NULL RETURNING 1
"""
COUNT_RECOVERY_CODES = "SELECT count(*) FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL"


def new_token() -> str:
    """A random token for a link or a cookie: 256 bits, URL-safe."""
    return secrets.token_urlsafe(32)


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@cache
def common_passwords() -> frozenset[str]:
    text = resources.files("panelsrv.store").joinpath("common-passwords.txt").read_text()
    return frozenset(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )


def password_problem(password: str, email: str) -> str | None:
    """Why this password may not be used (a sentence for the page), or None."""
    if len(password) < PASSWORD_MIN:
        return f"Use at least {PASSWORD_MIN} characters."
    if len(password) > PASSWORD_MAX:
        return f"Use at most {PASSWORD_MAX} characters."
    lowered = password.lower()
    if lowered in common_passwords() or lowered in (email, email.partition("@")[0]):
        return "This password is too common or too easy to guess; choose another."
    return None


class Passwords:
    """argon2id off the event loop, at most HASH_CONCURRENCY at once per process.

    `verify` of an account without a password (or of an unknown e-mail: `None`) still spends a
    verify's time against a fixed hash, so the answer's timing does not tell the two apart."""

    def __init__(self, concurrency: int = HASH_CONCURRENCY) -> None:
        self._threads = ThreadPoolExecutor(concurrency, thread_name_prefix="argon2")
        self._absent = HASHER.hash(secrets.token_urlsafe(16))

    async def hash(self, password: str) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, HASHER.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._threads, _verify, stored or self._absent, password, stored is not None
        )

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)


def _verify(stored: str, password: str, real: bool) -> bool:
    try:
        return HASHER.verify(stored, password) and real
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


# -- invitations ------------------------------------------------------------------------------


async def create_invite(conn: asyncpg.Connection, user_id: int, ttl: int = INVITE_TTL) -> str:
    """A new invitation for the user (earlier unused ones stop working); the raw token, which
    is stored nowhere."""
    token = new_token()
    async with conn.transaction():
        await conn.execute(VOID_INVITES, user_id)
        await conn.execute(INSERT_INVITE, user_id, digest(token), ttl)
    return token


async def find_invite(db: Db, token: str, panel_id: int) -> tuple[int, str] | None:
    """(user id, email) of a usable invitation on this panel, else None."""
    row = await db.fetchrow(FIND_INVITE, digest(token), panel_id)
    return None if row is None else (row[0], row[1])


async def use_invite(db: Db, token: str, panel_id: int, password_hash: str) -> int | None:
    """Set the password through the invitation (once): the user id, or None."""
    value = await db.fetchval(USE_INVITE, digest(token), panel_id, password_hash)
    return None if value is None else int(value)


# -- signing in -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignIn:
    user_id: int
    password_hash: str | None
    totp: bool
    locked: bool


async def sign_in_user(db: Db, email: str, panel_id: int) -> SignIn | None:
    row = await db.fetchrow(SIGN_IN_USER, email.strip().lower(), panel_id)
    return None if row is None else SignIn(row[0], row[1], row[2], row[3])


async def record_failure(db: Db, user_id: int, limit: int, window: float) -> bool:
    """Count a failed sign-in; True when the account is now locked for `window` seconds."""
    return bool(await db.fetchval(RECORD_FAILURE, user_id, limit, window))


async def clear_failures(db: Db, user_id: int) -> None:
    await db.execute(CLEAR_FAILURES, user_id)


# -- sessions ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Session:
    id: int
    user_id: int
    panel_id: int
    email: str
    stage: str  # "password": the second factor is still owed; "full"
    csrf: str
    totp: bool


async def start_session(db: Db, user_id: int, stage: str, lifetime: float) -> str:
    """A new session; the raw token for the cookie (only its hash is stored)."""
    token = new_token()
    await db.fetchval(INSERT_SESSION, user_id, digest(token), new_token(), stage, lifetime)
    return token


async def find_session(db: Db, token: str, idle: float) -> Session | None:
    row = await db.fetchrow(FIND_SESSION, digest(token), idle)
    return None if row is None else Session(*row)


async def end_session(db: Db, session_id: int) -> None:
    await db.execute(END_SESSION, session_id)


async def end_other_sessions(db: Db, user_id: int, keep: int = 0) -> None:
    await db.execute(END_OTHER_SESSIONS, user_id, keep)


# -- credentials ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Credentials:
    password_hash: str | None
    totp_secret: str | None
    totp: bool  # enabled
    totp_last_step: int
    locked: bool  # too many failed sign-ins lately (login_lock_seconds)


async def credentials(db: Db, user_id: int) -> Credentials:
    row = await db.fetchrow(CREDENTIALS, user_id)
    if row is None:
        raise LookupError(f"no user {user_id}")
    return Credentials(*row)


async def change_password(conn: asyncpg.Connection, user_id: int, hashed: str, keep: int) -> None:
    """The new password; every session but `keep` ends."""
    async with conn.transaction():
        await conn.execute(SET_PASSWORD, user_id, hashed)
        await conn.execute(END_OTHER_SESSIONS, user_id, keep)


# -- the second factor ------------------------------------------------------------------------


def totp_uri(secret: str, email: str, panel: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=panel or TOTP_ISSUER)


def totp_step(secret: str, code: str, last_step: int, now: float) -> int | None:
    """The time step `code` is valid for (the current one or a neighbour), when it is newer than
    `last_step`; else None. Pure: the clock is passed in."""
    code = code.strip().replace(" ", "")
    if len(code) != 6 or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret)
    current = int(now // TOTP_STEP)
    for step in (current - 1, current, current + 1):
        if step > last_step and hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


async def use_totp(db: Db, user_id: int, code: str, now: float | None = None) -> bool:
    """True when `code` is a valid, unused code of the user's enabled second factor."""
    creds = await credentials(db, user_id)
    if not creds.totp or creds.totp_secret is None:
        return False
    when = time.time() if now is None else now
    step = totp_step(creds.totp_secret, code, creds.totp_last_step, when)
    return step is not None and await db.fetchval(USE_TOTP_STEP, user_id, step) is not None


async def start_totp(db: Db, user_id: int) -> str | None:
    """A new secret pending confirmation; None when two-factor is already on."""
    secret = pyotp.random_base32()
    done = await db.execute(SET_PENDING_TOTP, user_id, secret)
    return secret if done.endswith(" 1") else None


_CODE_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"  # base32: 5 bits a character


def new_recovery_codes() -> list[str]:
    """RECOVERY_CODES codes of 80 bits each, as `xxxx-xxxx-xxxx-xxxx` (lowercase base32)."""
    codes = []
    for _ in range(RECOVERY_CODES):
        raw = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(16))
        codes.append("-".join(raw[i : i + 4] for i in range(0, 16, 4)))
    return codes


def _code_digest(code: str) -> bytes:
    return digest(code.strip().lower().replace("-", "").replace(" ", ""))


async def enable_totp(
    conn: asyncpg.Connection, user_id: int, code: str, now: float | None = None
) -> list[str] | None:
    """Turn two-factor on when `code` matches the pending secret: the recovery codes (shown
    once, stored hashed), or None."""
    creds = await credentials(conn, user_id)
    if creds.totp or creds.totp_secret is None:
        return None
    step = totp_step(creds.totp_secret, code, 0, time.time() if now is None else now)
    if step is None:
        return None
    codes = new_recovery_codes()
    async with conn.transaction():
        if await conn.fetchval(ENABLE_TOTP, user_id, step) is None:
            return None
        await conn.execute(DELETE_RECOVERY_CODES, user_id)
        await conn.execute(INSERT_RECOVERY_CODES, user_id, [_code_digest(c) for c in codes])
    return codes


async def disable_totp(conn: asyncpg.Connection, user_id: int) -> None:
    async with conn.transaction():
        await conn.execute(DISABLE_TOTP, user_id)
        await conn.execute(DELETE_RECOVERY_CODES, user_id)


async def use_recovery_code(db: Db, user_id: int, code: str) -> bool:
    """True once per code."""
    return await db.fetchval(USE_RECOVERY_CODE, user_id, _code_digest(code)) is not None


async def recovery_codes_left(db: Db, user_id: int) -> int:
    return int(await db.fetchval(COUNT_RECOVERY_CODES, user_id))


# -- the account home -------------------------------------------------------------------------

# $1 user id -> balance (minor units), and the user's rate-limit tier (all NULL without one).
ACCOUNT = """
SELECT w.balance, t.name, t.rate, t.burst, t.orders
  FROM users u JOIN wallets w ON w.user_id = u.id LEFT JOIN tiers t ON t.id = u.tier_id
 WHERE u.id = $1
"""


@dataclass(frozen=True, slots=True)
class Account:
    balance: int  # minor units (money.format)
    tier: str | None  # None: the server's per-user cap
    tier_rate: float | None
    tier_burst: int | None
    tier_orders: int | None


async def account(db: Db, user_id: int) -> Account:
    row = await db.fetchrow(ACCOUNT, user_id)
    if row is None:
        raise LookupError(f"no user {user_id}")
    return Account(int(row[0]), row[1], row[2], row[3], row[4])
