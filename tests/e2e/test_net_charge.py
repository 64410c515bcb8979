"""The charge resellers reconcile with: `status` (single and multi) and the webhook payloads
show what an order cost in the end, its charge net of its refund, so the charges a reseller
totals are what left the balance. `panelsrv audit` still proves every refund against the
original debit."""

from __future__ import annotations

import json
import random
from decimal import Decimal

from panelsrv.store import db, jobs, webhooks
from tests.e2e.kit import assert_audit_clean, sql
from tests.e2e.served import World, call, offered
from tests.kit.stack import Served

LOCAL = 7_014
RATE = "4.50"  # 100 units: 0.45


async def _status(server: Served, domain: str, key: str, **which: object) -> dict:  # type: ignore[type-arg]
    r = await call(server.port, {"key": key, "action": "status", **which}, host=domain)
    assert r.status == 200, r.body
    return r.json()  # type: ignore[no-any-return]


async def _balance(server: Served, domain: str, key: str) -> Decimal:
    r = await call(server.port, {"key": key, "action": "balance"}, host=domain)
    return Decimal(r.json()["balance"])


async def test_status_and_webhooks_show_the_charge_net_of_refunds(
    server: Served, database_url: str
) -> None:
    world = World(database_url)
    domain = await world.panel()
    users = [await world.user(domain, balance="1000.00") for _ in range(4)]
    await world.service(domain, rate=RATE, min=10, max=10_000, cancel=True, local_id=LOCAL)
    await offered(server.port, domain, users[0][1], LOCAL)
    rng = random.Random(14)
    placed: dict[int, list[tuple[int, int]]] = {}  # user -> (order, quantity)
    for user_id, key in users:
        for n in range(25):  # under the ceiling of 30 adds a minute
            quantity = 100 if n < 2 else rng.randint(10, 10_000)
            r = await call(
                server.port,
                {"key": key, "action": "add", "service": LOCAL, "quantity": quantity,
                 "link": f"https://example.test/net/{user_id}/{n}"},
                host=domain,
            )  # fmt: skip
            assert r.status == 200, r.body
            placed.setdefault(user_id, []).append((r.json()["order"], quantity))

    pool = await db.create_pool(database_url, 2)
    try:
        hooked = users[0][0]
        await webhooks.add(pool, hooked, "https://hooks.example/net", ["order.status"])
        # The two orders of 100 of each user: Partial with 30 left, and canceled.
        reports: list[tuple[int, str, int | None, int | None]] = []
        cancels: dict[int, list[int]] = {}
        for user_id, mine in placed.items():
            reports.append((mine[0][0], "Partial", 5, 30))
            cancels[user_id] = [mine[1][0]]
            for order, quantity in mine[2:]:
                final = rng.choice(
                    ["Pending", "In progress", "Completed", "Partial", "Partial", "Canceled",
                     "Refunded", "Error", "cancel"]
                )  # fmt: skip
                if final == "cancel":  # the customer's own, before dispatch: refunded at once
                    cancels[user_id].append(order)
                elif final != "Pending":
                    remains = rng.randint(0, quantity + 5)  # over-delivery too
                    reports.append((order, final, rng.randint(0, 99), remains))
        await jobs.apply_order_statuses(pool, sorted(reports))
    finally:
        await pool.close()
    for user_id, key in users:
        r = await call(
            server.port,
            {"key": key, "action": "cancel", "orders": ",".join(map(str, cancels[user_id]))},
            host=domain,
        )
        assert r.status == 200 and all(c["cancel"] == 1 for c in r.json()), r.body

    for user_id, key in users:
        ids = [order for order, _ in placed[user_id]]
        many = await _status(server, domain, key, orders=",".join(map(str, ids)))
        partial, canceled = many[str(ids[0])], many[str(ids[1])]
        assert (partial["status"], partial["remains"], partial["charge"]) == (
            "Partial", "30", "0.315"  # 70 % of 0.45
        )  # fmt: skip
        assert (canceled["status"], canceled["charge"]) == ("Canceled", "0.00")
        for order in ids:
            assert await _status(server, domain, key, order=order) == many[str(order)]
        shown = sum(Decimal(entry["charge"]) for entry in many.values())
        assert Decimal("1000.00") - shown == await _balance(server, domain, key), user_id

    # Each order's latest webhook payload carries the charge `status` shows.
    rows = await sql(
        database_url,
        "SELECT DISTINCT ON (data->>'order') data FROM webhook_events"
        " WHERE user_id = $1 ORDER BY data->>'order', id DESC",
        hooked,
    )
    by_order = {int(d["order"]): d for d in (json.loads(row["data"]) for row in rows)}
    many = await _status(
        server, domain, users[0][1], orders=",".join(str(o) for o, _ in placed[hooked])
    )
    assert len(by_order) > 10
    for order, data in by_order.items():
        assert data["charge"] == many[str(order)]["charge"], (order, data)
    assert by_order[placed[hooked][0][0]]["charge"] == "0.315"
    assert by_order[placed[hooked][1][0]]["charge"] == "0.00"
    assert_audit_clean(database_url)
