"""Shared set-up for worker flow tests: a panel, users and a provider wired to a simulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg

from panelsrv import metrics, money
from panelsrv.sim.provider import Simulator
from panelsrv.store import admin, db, ledger
from panelsrv.store.pool import Pool
from panelsrv.worker.main import Worker, WorkerSettings
from panelsrv.worker.registry import ProviderSettings
from tests.kit.waiting import until
from tests.store.helpers import connect, new_panel, new_user, unique

FINAL = ("Completed", "Partial", "Canceled", "Refunded", "Error")


async def provider_service(
    conn: asyncpg.Connection,
    url: str,
    key: str,
    upstream_service: str = "1",
    rate: str = "1.00",
    honours_idempotency: bool = True,
) -> tuple[int, int]:
    """(provider id, service id) of a default service sold through the provider at `url`,
    marked as honouring Idempotency-Key unless told otherwise (the simulator honours it)."""
    provider_id = await admin.add_provider(
        conn, unique("sim"), url, key, honours_idempotency=honours_idempotency
    )
    service_id, _ = await admin.add_service(
        conn,
        admin.ServiceSpec(
            name=unique("svc"),
            type="default",
            rate=rate,
            min=10,
            max=10_000,
            cancel=True,
            refill=True,
            provider=str(provider_id),
            provider_service=upstream_service,
        ),
    )
    return provider_id, service_id


async def place_many(
    pool: Pool,
    conn: asyncpg.Connection,
    provider_id: int,
    service_id: int,
    count: int,
    users: int = 10,
    quantity: int = 1000,
) -> list[int]:
    """`count` orders spread over `users` new users, each with a unique link."""
    panel_id, domain = await new_panel(conn)
    owners = [await new_user(conn, domain, balance="100000") for _ in range(users)]
    tag = unique("order")

    async def place(n: int) -> int:
        async with pool.acquire() as c:
            placed = await ledger.place_order(
                c,
                ledger.NewOrder(
                    user_id=owners[n % users].id,
                    panel_id=panel_id,
                    service_id=service_id,
                    provider_id=provider_id,
                    charge=money.charge(money.parse("1.00"), quantity),
                    link=f"https://example.test/{tag}/{n}",
                    quantity=quantity,
                    order_limit=10**6,
                ),
            )
        assert placed.order_id is not None, placed
        return placed.order_id

    return list(await asyncio.gather(*(place(n) for n in range(count))))


def fast_settings(timeout: float = 2.0) -> WorkerSettings:
    return WorkerSettings(
        sync_interval=0.2,
        idle=0.05,
        webhook_allow_http=True,
        webhook_allow_private=True,
        providers=ProviderSettings(
            timeout=timeout, connect_timeout=timeout, max_concurrency=32, breaker_threshold=1000
        ),
    )


async def wait_final(
    conn: asyncpg.Connection, order_ids: list[int], timeout: float, hurry: bool = False
) -> None:
    """Wait until every order is final. `hurry`: bring retry times forward each round (the
    backoff after many failed attempts reaches minutes, which tests cannot wait for)."""

    async def final() -> bool:
        if hurry:
            await conn.execute("UPDATE outbox SET run_after = now() WHERE run_after > now()")
        return not await conn.fetchval(
            "SELECT count(*) FROM orders WHERE id = ANY($1::bigint[])"
            " AND status NOT IN ('Completed', 'Partial', 'Canceled', 'Refunded', 'Error')",
            order_ids,
        )

    await until(final, timeout, interval=0.05, what=f"{len(order_ids)} orders final")


async def running(worker: Worker) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(worker.run(grace=5.0))


@dataclass
class Rig:
    conn: asyncpg.Connection
    pool: Pool
    sim: Simulator
    provider: int
    name: str  # the provider's, as metrics and log lines give it
    service: int
    measured: metrics.Registry  # the worker's metrics


@asynccontextmanager
async def rig(url: str, honours_idempotency: bool = True, **options: object) -> AsyncIterator[Rig]:
    """A simulated provider (`SimOptions` fields; by default orders complete in 0.3 s, none
    Partial), a service sold through it, and a worker running meanwhile."""
    conn = await connect(url)
    pool = await db.create_pool(url, 4)
    measured = metrics.Registry()
    try:
        async with Simulator(**{"complete_after": 0.3, "partial_ratio": 0.0, **options}) as sim:
            provider, service = await provider_service(
                conn, sim.url, sim.key, honours_idempotency=honours_idempotency
            )
            name = await conn.fetchval("SELECT name FROM providers WHERE id = $1", provider)
            worker = Worker(pool, fast_settings(timeout=1.0), measured)
            task = await running(worker)
            try:
                yield Rig(conn, pool, sim, provider, name, service, measured)
            finally:
                worker.stop()
                await task
    finally:
        await pool.close()
        await conn.close()


async def check_refunds(conn: asyncpg.Connection, order_ids: list[int]) -> None:
    """Partial refunds charge*min(remains,total)//total, Canceled/Refunded/Error all, others
    none."""
    rows = await conn.fetch(
        """SELECT o.id, o.status, o.charge, o.remains, o.quantity * o.runs AS total,
                  coalesce(sum(e.amount) FILTER (WHERE e.kind = 'refund'), 0) AS refunded,
                  count(e.id) FILTER (WHERE e.kind = 'refund') AS refunds
             FROM orders o LEFT JOIN ledger_entries e ON e.order_id = o.id
            WHERE o.id = ANY($1::bigint[]) GROUP BY o.id""",
        order_ids,
    )
    for r in rows:
        if r["status"] == "Partial":
            expected = money.partial_refund(r["charge"], r["remains"], r["total"])
        elif r["status"] in ("Canceled", "Refunded", "Error"):
            expected = r["charge"]
        else:
            expected = 0
        assert r["refunded"] == expected, dict(r)
        assert r["refunds"] <= 1
