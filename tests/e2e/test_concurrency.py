"""Money under concurrency, against `panelsrv serve --workers 2`: 30 concurrent adds (the per-user
ceiling) from a user whose balance covers 17 of them, for one user and for 300 users at once;
30 concurrent adds under one idempotency key; then `panelsrv audit`.

The client keeps a bounded pool of keep-alive connections (`kit.Pool`); each user's requests
are queued together, so its 30 adds are on the wire at the same time.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from panelsrv import money
from panelsrv.store import admin, db, keys
from tests.e2e.kit import Pool, cli, offered, served, sql
from tests.e2e.served import Served, World
from tests.http.httpkit import Response

LINK = "https://instagram.com/p/rush"
CHARGE = "0.45"  # 1000 units at 0.45 per 1000
REMAINDER = "0.44"  # less than one more order
BALANCE = money.format(17 * money.parse(CHARGE) + money.parse(REMAINDER))
ADDS = 30
FUNDS = {"error": "Not enough funds on balance"}


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[Served]:
    with served(database_url, workers=2) as s:
        yield s


async def new_panel(server: Served, database_url: str,
                    users: int) -> tuple[str, list[tuple[int, str]]]:
    """A panel with one service (local id 1) and `users` users holding BALANCE each."""
    world = World(database_url)
    domain = await world.panel()
    await world.service(domain, local_id=1, rate=CHARGE, min=100, max=100_000)
    conn = await db.connect(database_url)
    made = []
    try:
        for _ in range(users):
            user, _ = await admin.add_user(conn, f"c{secrets.token_hex(6)}@example.test", domain,
                                           BALANCE, "0")
            made.append((user.id, (await keys.create(conn, user.id)).raw))
    finally:
        await conn.close()
    await offered(server.port, domain, made[0][1], 1)
    return domain, made


def add_fields(key: str) -> dict[str, object]:
    return {"key": key, "action": "add", "service": 1, "link": LINK, "quantity": 1000}


def check_user(answers: list[Response]) -> None:
    """17 orders (distinct), 13 refusals for funds: what a balance of 17.x charges allows."""
    statuses = Counter(r.status for r in answers)
    assert statuses == {200: 17, 402: 13}, statuses
    assert all(r.json() == FUNDS for r in answers if r.status == 402)
    placed = sorted(r.json()["order"] for r in answers if r.status == 200)
    assert len(set(placed)) == 17


async def test_30_concurrent_adds_of_one_user_place_exactly_what_the_balance_covers(
        server: Served, database_url: str) -> None:
    domain, [(user, key)] = await new_panel(server, database_url, 1)
    async with Pool(server.port, ADDS) as pool:
        answers = await asyncio.gather(*(pool.call(add_fields(key), host=domain)
                                         for _ in range(ADDS)))
    check_user(answers)
    rows = await sql(database_url, "SELECT (SELECT balance FROM wallets WHERE user_id = $1),"
                     " (SELECT count(*) FROM orders WHERE user_id = $1)", user)
    assert (money.format(rows[0][0]), rows[0][1]) == (REMAINDER, 17)


async def test_300_users_with_30_concurrent_adds_each(server: Served, database_url: str) -> None:
    users = 300
    domain, made = await new_panel(server, database_url, users)
    started = time.perf_counter()
    async with Pool(server.port, 300) as pool:
        # Grouped by user: each user's 30 adds take connections together.
        answers = await asyncio.gather(*(pool.call(add_fields(key), host=domain)
                                         for _, key in made for _ in range(ADDS)))
    elapsed = time.perf_counter() - started
    print(f"\n{users} users x {ADDS} adds = {len(answers)} requests in {elapsed:.2f} s"
          f" ({len(answers) / elapsed:.0f} req/s)")
    for i in range(users):
        check_user(answers[i * ADDS:(i + 1) * ADDS])
    ids = [user for user, _ in made]
    rows = await sql(database_url, """
        SELECT w.balance, (SELECT count(*) FROM orders o WHERE o.user_id = w.user_id),
               (SELECT count(*) FROM ledger_entries e WHERE e.user_id = w.user_id
                   AND e.kind = 'charge')
          FROM wallets w WHERE w.user_id = ANY($1::bigint[])""", ids)
    assert len(rows) == users
    assert Counter((money.format(r[0]), r[1], r[2]) for r in rows) == {(REMAINDER, 17, 17): users}
    report = cli(database_url, "audit")
    assert report["ok"] is True and report["violations"] == [], report


async def test_30_concurrent_adds_under_one_idempotency_key(server: Served,
                                                            database_url: str) -> None:
    domain, [(user, key)] = await new_panel(server, database_url, 1)
    header = b"Idempotency-Key: rush-%s\r\n" % secrets.token_hex(4).encode()
    async with Pool(server.port, ADDS) as pool:
        answers = await asyncio.gather(*(pool.call(add_fields(key), host=domain, headers=header)
                                         for _ in range(ADDS)))
    placed = [r for r in answers if r.status == 200]
    busy = [r for r in answers if r.status == 409]
    assert len(placed) + len(busy) == ADDS, Counter(r.status for r in answers)
    assert placed and len({r.body for r in placed}) == 1
    assert all(r.json() == {"error": "Duplicate request"} for r in busy)
    rows = await sql(database_url, "SELECT (SELECT balance FROM wallets WHERE user_id = $1),"
                     " (SELECT count(*) FROM orders WHERE user_id = $1)", user)
    assert rows[0][1] == 1
    assert rows[0][0] == money.parse(BALANCE) - money.parse(CHARGE)
    print(f"\nsame key x {ADDS}: {len(placed)} x 200 (one order), {len(busy)} x 409")
