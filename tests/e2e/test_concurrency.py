"""Money under concurrency, against `panelsrv serve --workers 2`: 30 concurrent adds (the per-user
ceiling) from a user whose balance covers 17 of them, for one user and for 300 users at once,
then `panelsrv audit`; 30 concurrent adds under one idempotency key; concurrent cancels and
refills of the same orders.

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
from tests.e2e.kit import Pool, cli, sql
from tests.e2e.served import World, offered
from tests.http.httpkit import Response
from tests.kit.stack import Served, served

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


async def new_panel(
    server: Served, database_url: str, users: int
) -> tuple[str, list[tuple[int, str]]]:
    """A panel with one service (local id 1) and `users` users holding BALANCE each."""
    world = World(database_url)
    domain = await world.panel()
    await world.service(domain, local_id=1, rate=CHARGE, min=100, max=100_000)
    conn = await db.connect(database_url)
    made = []
    try:
        for _ in range(users):
            user, _ = await admin.add_user(
                conn, f"c{secrets.token_hex(6)}@example.test", domain, BALANCE, "0"
            )
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
    server: Served, database_url: str
) -> None:
    domain, [(user, key)] = await new_panel(server, database_url, 1)
    async with Pool(server.port, ADDS) as pool:
        answers = await asyncio.gather(
            *(pool.call(add_fields(key), host=domain) for _ in range(ADDS))
        )
    check_user(answers)
    rows = await sql(
        database_url,
        "SELECT (SELECT balance FROM wallets WHERE user_id = $1),"
        " (SELECT count(*) FROM orders WHERE user_id = $1)",
        user,
    )
    assert (money.format(rows[0][0]), rows[0][1]) == (REMAINDER, 17)


async def test_300_users_with_30_concurrent_adds_each(server: Served, database_url: str) -> None:
    users = 300
    domain, made = await new_panel(server, database_url, users)
    started = time.perf_counter()
    async with Pool(server.port, 300) as pool:
        # Grouped by user: each user's 30 adds take connections together.
        answers = await asyncio.gather(
            *(pool.call(add_fields(key), host=domain) for _, key in made for _ in range(ADDS))
        )
    elapsed = time.perf_counter() - started
    print(
        f"\n{users} users x {ADDS} adds = {len(answers)} requests in {elapsed:.2f} s"
        f" ({len(answers) / elapsed:.0f} req/s)"
    )
    for i in range(users):
        check_user(answers[i * ADDS : (i + 1) * ADDS])
    ids = [user for user, _ in made]
    rows = await sql(
        database_url,
        """
        SELECT w.balance, (SELECT count(*) FROM orders o WHERE o.user_id = w.user_id),
               (SELECT count(*) FROM ledger_entries e WHERE e.user_id = w.user_id
                   AND e.kind = 'charge')
          FROM wallets w WHERE w.user_id = ANY($1::bigint[])""",
        ids,
    )
    assert len(rows) == users
    assert Counter((money.format(r[0]), r[1], r[2]) for r in rows) == {(REMAINDER, 17, 17): users}
    report = cli(database_url, "audit")
    assert report["ok"] is True and report["violations"] == [], report


async def test_30_concurrent_adds_under_one_idempotency_key(
    server: Served, database_url: str
) -> None:
    domain, [(user, key)] = await new_panel(server, database_url, 1)
    header = b"Idempotency-Key: rush-%s\r\n" % secrets.token_hex(4).encode()
    async with Pool(server.port, ADDS) as pool:
        answers = await asyncio.gather(
            *(pool.call(add_fields(key), host=domain, headers=header) for _ in range(ADDS))
        )
    placed = [r for r in answers if r.status == 200]
    busy = [r for r in answers if r.status == 409]
    assert len(placed) + len(busy) == ADDS, Counter(r.status for r in answers)
    assert placed and len({r.body for r in placed}) == 1
    assert all(r.json() == {"error": "Duplicate request"} for r in busy)
    rows = await sql(
        database_url,
        "SELECT (SELECT balance FROM wallets WHERE user_id = $1),"
        " (SELECT count(*) FROM orders WHERE user_id = $1)",
        user,
    )
    assert rows[0][1] == 1
    assert rows[0][0] == money.parse(BALANCE) - money.parse(CHARGE)
    print(f"\nsame key x {ADDS}: {len(placed)} x 200 (one order), {len(busy)} x 409")


async def test_concurrent_cancels_refund_once(server: Served, database_url: str) -> None:
    """Twenty cancels of the same orders at once, single and as lists in both id orders: each
    order is canceled and refunded exactly once, and no two calls deadlock."""
    domain, [(user, key)] = await new_panel(server, database_url, 1)
    # cancel/refill read the service's flags in their statement, not from the catalog.
    await sql(
        database_url,
        "UPDATE services SET cancel = true WHERE panel_id ="
        " (SELECT id FROM panels WHERE domain = $1)",
        domain,
    )
    async with Pool(server.port, 20) as pool:
        placed = [await pool.call(add_fields(key), host=domain) for _ in range(2)]
        first, second = (r.json()["order"] for r in placed)
        asks = (
            [{"key": key, "action": "cancel", "order": first}] * 8
            + [{"key": key, "action": "cancel", "orders": f"{first},{second}"}] * 6
            + [{"key": key, "action": "cancel", "orders": f"{second},{first}"}] * 6
        )
        answers = await asyncio.gather(*(pool.call(fields, host=domain) for fields in asks))
    assert all(r.status in (200, 400) for r in answers), [r.body for r in answers]
    accepted: Counter[int] = Counter()
    for fields, r in zip(asks, answers, strict=True):
        if "order" in fields:
            accepted[first] += r.json() == {"cancel": 1}
        else:
            for item in r.json():
                accepted[item["order"]] += item["cancel"] == 1
    assert accepted == {first: 1, second: 1}
    rows = await sql(
        database_url,
        "SELECT o.status, (SELECT count(*) FROM ledger_entries e"
        " WHERE e.order_id = o.id AND e.kind = 'refund') FROM orders o"
        " WHERE o.id = ANY($1::bigint[])",
        [first, second],
    )
    assert sorted(tuple(r) for r in rows) == [("Canceled", 1), ("Canceled", 1)]
    balance = await sql(database_url, "SELECT balance FROM wallets WHERE user_id = $1", user)
    assert money.format(balance[0][0]) == BALANCE


async def test_concurrent_refills_create_one(server: Served, database_url: str) -> None:
    domain, [(_, key)] = await new_panel(server, database_url, 1)
    await sql(
        database_url,
        "UPDATE services SET refill = true WHERE panel_id ="
        " (SELECT id FROM panels WHERE domain = $1)",
        domain,
    )
    async with Pool(server.port, 20) as pool:
        order = (await pool.call(add_fields(key), host=domain)).json()["order"]
        await sql(database_url, "UPDATE orders SET status = 'Completed' WHERE id = $1", order)
        answers = await asyncio.gather(
            *(
                pool.call({"key": key, "action": "refill", "order": order}, host=domain)
                for _ in range(20)
            )
        )
    assert sorted(r.status for r in answers) == [200] + [400] * 19
    assert all(r.json() == {"error": "Refill is not available"} for r in answers if r.status == 400)
    rows = await sql(database_url, "SELECT count(*) FROM refills WHERE order_id = $1", order)
    assert rows[0][0] == 1
