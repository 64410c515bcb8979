"""store/accounts.py against the real PostgreSQL: invitations, sessions, failed sign-ins, the
second factor. The clock of TOTP is passed in; expiry is made by moving rows' times back."""

from __future__ import annotations

import argon2
import pyotp
import pytest

from panelsrv.store import accounts
from tests.store.helpers import World, new_panel, new_user

HASHED = accounts.HASHER.hash("a long enough passphrase")


async def test_an_invitation_sets_the_password_once_and_ends_every_session(
    database_url: str,
) -> None:
    async with World(database_url) as w:
        uid = w.user.id
        old = await accounts.start_session(w.pool, uid, "full", 3600)
        token = await accounts.create_invite(w.conn, uid)
        assert await accounts.find_invite(w.pool, token, w.panel_id) == (uid, w.user.email)
        assert await accounts.use_invite(w.pool, token, w.panel_id, HASHED) == uid
        assert await accounts.use_invite(w.pool, token, w.panel_id, HASHED) is None
        assert await accounts.find_invite(w.pool, token, w.panel_id) is None
        assert await accounts.find_session(w.pool, old, 3600) is None
        signin = await accounts.sign_in_user(w.pool, w.user.email.upper(), w.panel_id)
        assert signin is not None and signin.password_hash == HASHED
        # Only hashes are stored.
        stored = await w.conn.fetchval(
            "SELECT count(*) FROM account_invites WHERE hash = $1", token.encode()
        )
        assert stored == 0


async def test_an_invitation_expires_is_bound_to_its_panel_and_a_new_one_voids_it(
    database_url: str,
) -> None:
    async with World(database_url) as w:
        uid = w.user.id
        other_panel, _ = await new_panel(w.conn)
        first = await accounts.create_invite(w.conn, uid)
        assert await accounts.use_invite(w.pool, first, other_panel, HASHED) is None
        second = await accounts.create_invite(w.conn, uid)
        assert await accounts.find_invite(w.pool, first, w.panel_id) is None
        await w.conn.execute(
            "UPDATE account_invites SET expires_at = now() - interval '1 second'"
            " WHERE hash = $1",
            accounts.digest(second),
        )
        assert await accounts.use_invite(w.pool, second, w.panel_id, HASHED) is None
        assert await w.conn.fetchval("SELECT password_hash FROM users WHERE id = $1", uid) is None


async def test_sessions_end_when_idle_expired_or_ended(database_url: str) -> None:
    async with World(database_url) as w:
        uid = w.user.id
        token = await accounts.start_session(w.pool, uid, "full", 3600)
        found = await accounts.find_session(w.pool, token, 1800)
        assert found is not None and (found.user_id, found.panel_id) == (uid, w.panel_id)
        assert found.stage == "full" and len(found.csrf) >= 40
        assert await accounts.find_session(w.pool, "not-a-token", 1800) is None
        h = accounts.digest(token)
        await w.conn.execute(
            "UPDATE sessions SET last_seen_at = now() - interval '31 minutes' WHERE hash = $1", h
        )
        assert await accounts.find_session(w.pool, token, 1800) is None  # idle
        again = await accounts.start_session(w.pool, uid, "full", 3600)
        await w.conn.execute(
            "UPDATE sessions SET expires_at = now() - interval '1 second' WHERE hash = $1",
            accounts.digest(again),
        )
        assert await accounts.find_session(w.pool, again, 1800) is None  # past its lifetime
        third = await accounts.start_session(w.pool, uid, "full", 3600)
        session = await accounts.find_session(w.pool, third, 1800)
        assert session is not None
        await accounts.end_session(w.pool, session.id)
        assert await accounts.find_session(w.pool, third, 1800) is None


async def test_a_password_change_ends_every_other_session(database_url: str) -> None:
    async with World(database_url) as w:
        uid = w.user.id
        mine = await accounts.start_session(w.pool, uid, "full", 3600)
        other = await accounts.start_session(w.pool, uid, "full", 3600)
        session = await accounts.find_session(w.pool, mine, 1800)
        assert session is not None
        await accounts.change_password(w.conn, uid, HASHED, session.id)
        assert await accounts.find_session(w.pool, mine, 1800) is not None
        assert await accounts.find_session(w.pool, other, 1800) is None
        assert (await accounts.credentials(w.pool, uid)).password_hash == HASHED


async def test_failures_lock_the_account_at_the_limit_within_the_window(
    database_url: str,
) -> None:
    async with World(database_url) as w:
        uid = w.user.id
        assert [await accounts.record_failure(w.pool, uid, 3, 900) for _ in range(3)] == [
            False,
            False,
            True,
        ]
        signin = await accounts.sign_in_user(w.pool, w.user.email, w.panel_id)
        assert signin is not None and signin.locked
        assert (await accounts.credentials(w.pool, uid)).locked
        # A failure after the window starts counting again, and the lock ends with its time.
        await w.conn.execute(
            "UPDATE users SET login_window_start = now() - interval '1 hour',"
            " login_locked_until = now() - interval '1 second' WHERE id = $1",
            uid,
        )
        assert not await accounts.record_failure(w.pool, uid, 3, 900)
        signin = await accounts.sign_in_user(w.pool, w.user.email, w.panel_id)
        assert signin is not None and not signin.locked
        await accounts.clear_failures(w.pool, uid)
        assert await w.conn.fetchval("SELECT login_failures FROM users WHERE id = $1", uid) == 0


async def test_passwords_verify_off_the_loop_and_an_absent_hash_never_matches() -> None:
    passwords = accounts.Passwords()
    try:
        hashed = await passwords.hash("correct horse battery")
        assert hashed.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
        assert await passwords.verify(hashed, "correct horse battery")
        assert not await passwords.verify(hashed, "wrong horse battery")
        assert not await passwords.verify(None, "correct horse battery")
        assert not await passwords.verify("not a hash", "x")
        # An unknown e-mail is verified against a hash of the same parameters: the same cost.
        absent = argon2.extract_parameters(passwords._absent)
        assert absent == argon2.extract_parameters(hashed) == accounts.HASHER._parameters
    finally:
        passwords.close()


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("short", "at least"),
        ("x" * 257, "at most"),
        ("password123", "too common"),
        ("Qwertyuiop", "too common"),
        ("alice.long@example.test", "too common"),
        ("a long enough passphrase", None),
    ],
)
def test_password_rules(password: str, problem: str | None) -> None:
    found = accounts.password_problem(password, "alice.long@example.test")
    assert (found is None) if problem is None else (problem in (found or ""))


NOW = 1_800_000_000.0


def test_a_totp_code_is_valid_for_its_step_and_the_neighbours_never_twice() -> None:
    secret = pyotp.random_base32()
    totp = pyotp.TOTP(secret)
    step = int(NOW // 30)
    assert accounts.totp_step(secret, totp.at(NOW), 0, NOW) == step
    assert accounts.totp_step(secret, totp.at(NOW - 30), 0, NOW) == step - 1
    assert accounts.totp_step(secret, totp.at(NOW + 30), 0, NOW) == step + 1
    assert accounts.totp_step(secret, totp.at(NOW - 60), 0, NOW) is None
    assert accounts.totp_step(secret, totp.at(NOW), step, NOW) is None  # used already
    assert accounts.totp_step(secret, "12345", 0, NOW) is None
    assert accounts.totp_step(secret, "abcdef", 0, NOW) is None


async def test_two_factor_enrolment_codes_and_recovery_codes(database_url: str) -> None:
    async with World(database_url) as w:
        uid = w.user.id
        secret = await accounts.start_totp(w.pool, uid)
        assert secret is not None
        totp = pyotp.TOTP(secret)
        assert await accounts.enable_totp(w.conn, uid, totp.at(NOW - 3600), NOW) is None
        codes = await accounts.enable_totp(w.conn, uid, totp.at(NOW), NOW)
        assert codes is not None and len(codes) == accounts.RECOVERY_CODES
        assert len(set(codes)) == accounts.RECOVERY_CODES
        assert await accounts.start_totp(w.pool, uid) is None  # on: not replaced
        # The enrolment's code does not count again; the next step's does, once.
        assert not await accounts.use_totp(w.pool, uid, totp.at(NOW), NOW)
        assert await accounts.use_totp(w.pool, uid, totp.at(NOW + 30), NOW + 30)
        assert not await accounts.use_totp(w.pool, uid, totp.at(NOW + 30), NOW + 30)
        assert await accounts.use_recovery_code(w.pool, uid, codes[0].upper())
        assert not await accounts.use_recovery_code(w.pool, uid, codes[0])
        assert await accounts.recovery_codes_left(w.pool, uid) == accounts.RECOVERY_CODES - 1
        await accounts.disable_totp(w.conn, uid)
        assert not (await accounts.credentials(w.pool, uid)).totp
        assert not await accounts.use_recovery_code(w.pool, uid, codes[1])


async def test_a_user_of_another_panel_is_not_found_on_this_one(database_url: str) -> None:
    async with World(database_url) as w:
        _, other_domain = await new_panel(w.conn)
        stranger = await new_user(w.conn, other_domain)
        assert await accounts.sign_in_user(w.pool, stranger.email, w.panel_id) is None
        assert await accounts.sign_in_user(w.pool, w.user.email, w.panel_id) is not None


def test_recovery_codes_have_80_bits_each() -> None:
    codes = accounts.new_recovery_codes()
    assert all(len(c.replace("-", "")) == 16 for c in codes)  # 16 base32 characters
