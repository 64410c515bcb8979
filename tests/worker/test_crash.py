"""Workers killed with SIGKILL at random points: no order lost, none sent twice, no refund twice."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys

from panelsrv.sim.provider import Faults, Simulator
from panelsrv.store import db, ledger
from tests.store.helpers import connect
from tests.worker.flow import check_refunds, place_many, provider_service, wait_final

WORKER_ARGS = (
    "--set",
    "sync_interval=0.3",
    "--set",
    "provider_timeout=1",
    "--set",
    "provider_max_concurrency=32",
    "--set",
    "log_level=error",
)


async def start_worker(database_url: str) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PANELSRV_")}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "panelsrv",
        "worker",
        "--database-url",
        database_url,
        *WORKER_ARGS,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def test_killed_workers_lose_nothing_and_send_nothing_twice(own_database_url: str) -> None:
    database_url = own_database_url
    rng = random.Random(42)
    conn = await connect(database_url)
    pool = await db.create_pool(database_url, 8)
    # A fifth of the answers are lost after the order was created upstream (a dropped
    # connection or a 5xx after the fact): the worker must resend under the same key.
    faults = Faults(fail_ratio=0.2, kinds=["drop", "5xx"], after_ratio=1.0)
    async with Simulator(complete_after=1.0, partial_ratio=0.3, seed=3, faults=faults) as sim:
        workers: list[asyncio.subprocess.Process] = []
        try:
            provider_id, service_id = await provider_service(conn, sim.url, sim.key)
            orders = await place_many(pool, conn, provider_id, service_id, 300)
            workers = [await start_worker(database_url) for _ in range(2)]
            for _ in range(12):
                await asyncio.sleep(rng.uniform(0.2, 1.0))
                victim = rng.randrange(len(workers))
                workers[victim].send_signal(signal.SIGKILL)
                await workers[victim].wait()
                workers[victim] = await start_worker(database_url)
            await wait_final(conn, orders, timeout=120, hurry=True)
        finally:
            for proc in workers:
                if proc.returncode is None:
                    proc.terminate()
            await asyncio.gather(*(p.wait() for p in workers))
            await pool.close()
        try:
            assert sim.counters["orders_created"] == 300
            assert set(sim.book.creations_by_link().values()) == {1}
            assert sim.counters["idempotent_replays"] > 0  # the resend path was exercised
            await check_refunds(conn, orders)
            assert (await ledger.audit(conn)).ok
        finally:
            await conn.close()
