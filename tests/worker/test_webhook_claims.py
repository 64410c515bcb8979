"""Which deliveries a worker claims, in PostgreSQL: users take turns, each endpoint and each user
is capped over every worker's leases, an open breaker is skipped and a half-open one gets one
probe; a deleted endpoint's deliveries are dropped."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from panelsrv.store import db, webhooks
from tests.worker.hookkit import Hooks

LEASE = 60.0
BREAKER = (3, 600.0)


@asynccontextmanager
async def hooks_in(database_url: str) -> AsyncIterator[Hooks]:
    conn = await db.connect(database_url)
    pool = await db.create_pool(database_url, 2)
    try:
        yield Hooks(pool, conn)
    finally:
        await pool.close()
        await conn.close()


def by_endpoint(claimed: list[webhooks.Delivery]) -> Counter[int]:
    return Counter(d.webhook_id for d in claimed)


async def test_users_take_turns_within_the_endpoint_and_user_caps(own_database_url: str) -> None:
    async with hooks_in(own_database_url) as hooks:
        alice, a = await hooks.user(*(f"https://a{n}.example.test/" for n in range(3)))
        bob, (b,) = await hooks.user("https://b.example.test/")
        carol, (c,) = await hooks.user("https://c.example.test/")
        await hooks.emit(alice, 20)  # 60 deliveries, due first
        await hooks.emit(bob, 10)
        await hooks.emit(carol, 1)

        def claim(want: int) -> list[webhooks.Delivery]:
            return webhooks.claim(hooks.pool, want, LEASE, 4, 8)  # type: ignore[return-value]

        first = await claim(9)  # turns: a b c, a b, a b, a b
        assert by_endpoint(first) == {a[0]: 4, b: 4, c: 1}
        # Another worker: the leases above count. Bob is at his endpoint's cap, alice gets the
        # rest of her user cap, spread over her endpoints' oldest.
        second = await claim(20)
        assert by_endpoint(second) == {a[1]: 4}
        assert await claim(20) == []
        await webhooks.finish(
            hooks.pool, first[1], delivered=True, error=None, breaker=BREAKER
        )  # one of bob's ends: bob may have one more in flight
        assert [d.webhook_id for d in await claim(20)] == [b]


async def test_an_open_breaker_is_skipped_and_a_half_open_one_gets_one_probe(
    own_database_url: str,
) -> None:
    async with hooks_in(own_database_url) as hooks:
        user, (hook,) = await hooks.user("https://x.example.test/")
        await hooks.emit(user, 10)

        async def claim() -> list[webhooks.Delivery]:
            return await webhooks.claim(hooks.pool, 10, LEASE, 4, 8)

        async def fail(d: webhooks.Delivery) -> str | None:
            return await webhooks.finish(
                hooks.pool, d, delivered=False, error="HTTP 500", breaker=BREAKER
            )

        async def half_open() -> None:
            await hooks.conn.execute("UPDATE webhooks SET open_until = now() WHERE id = $1", hook)

        async def open_until() -> object:
            return await hooks.conn.fetchval("SELECT open_until FROM webhooks WHERE id = $1", hook)

        four = await claim()
        assert len(four) == 4
        assert [await fail(d) for d in four[:3]] == [None, None, "opened"]
        opened = await open_until()
        assert await fail(four[3]) is None and await open_until() == opened  # not extended
        assert await claim() == []  # open

        await half_open()
        (probe,) = await claim()
        assert await claim() == []  # one probe at a time
        assert await fail(probe) == "opened"
        assert await claim() == []

        await half_open()
        (probe,) = await claim()
        change = await webhooks.finish(
            hooks.pool, probe, delivered=True, error=None, breaker=BREAKER
        )
        assert change == "closed"
        assert len(await claim()) == 4  # closed: the endpoint's cap again


async def test_a_deleted_endpoints_deliveries_are_dropped(own_database_url: str) -> None:
    async with hooks_in(own_database_url) as hooks:
        user, (hook,) = await hooks.user("https://x.example.test/")
        await hooks.emit(user, 5)
        (flying,) = await webhooks.claim(hooks.pool, 1, LEASE, 4, 8)
        assert await webhooks.delete(hooks.pool, user, hook)
        assert await webhooks.claim(hooks.pool, 10, LEASE, 4, 8) == []
        await webhooks.finish(hooks.pool, flying, delivered=False, error="timeout", breaker=BREAKER)
        rows = await hooks.deliveries(hook)
    assert all(r["delivered_at"] is None and r["lease_until"] is None for r in rows)
    assert all(r["never"] for r in rows)  # run_after = 'infinity': never sent


async def test_a_stale_attempt_does_not_settle_the_delivery_claimed_again(
    own_database_url: str,
) -> None:
    # Its lease ran out and another worker claimed the delivery: the late verdict of the first
    # attempt must neither free nor reschedule the one in flight (review finding).
    async with hooks_in(own_database_url) as hooks:
        user, (hook,) = await hooks.user("https://x.example.test/")
        await hooks.emit(user, 1)
        (first,) = await webhooks.claim(hooks.pool, 1, LEASE, 4, 8)
        await hooks.conn.execute(
            "UPDATE webhook_deliveries SET lease_until = now() - interval '1 s' WHERE id = $1",
            first.id,
        )
        (second,) = await webhooks.claim(hooks.pool, 1, LEASE, 4, 8)
        assert second.id == first.id and second.attempt == first.attempt + 1
        await webhooks.finish(hooks.pool, first, delivered=False, error="timeout", breaker=BREAKER)
        (row,) = await hooks.deliveries(hook)
        assert row["lease_until"] is not None and row["delivered_at"] is None  # still in flight
        await webhooks.finish(hooks.pool, second, delivered=True, error=None, breaker=BREAKER)
        (row,) = await hooks.deliveries(hook)
        assert row["delivered_at"] is not None and row["lease_until"] is None


async def test_a_user_holding_slots_goes_after_one_holding_none(own_database_url: str) -> None:
    # Max-min fairness on leases: a tenant whose endpoints stall holds many slots, and a slot
    # that frees goes to a tenant with nothing in flight first, however old the staller's
    # backlog is (review finding: a fixed per-user cap alone let three stallers fill a worker).
    async with hooks_in(own_database_url) as hooks:
        staller, _ = await hooks.user(*(f"https://s{n}.example.test/" for n in range(4)))
        await hooks.emit(staller, 20)  # due first
        held = await webhooks.claim(hooks.pool, 8, LEASE, 4, 8)  # stalled, in flight
        assert len(held) == 8
        calm, (c,) = await hooks.user("https://c.example.test/")
        await hooks.emit(calm, 2)
        (next_one,) = await webhooks.claim(hooks.pool, 1, LEASE, 4, 16)
        assert next_one.webhook_id == c
