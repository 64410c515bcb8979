"""The guard's Syncer stops when closed, whatever the exchange in flight is doing.

close() cancels the sync loop. On Python 3.11 `asyncio.wait_for` returns the awaited result
instead of raising when that cancel lands in the loop turn in which the exchange completes,
so the loop went on and close() waited forever: CI hung in test_guard_redis's teardown with
both hosts still syncing. The gate below completes the exchange and closes in the same turn.
"""

from __future__ import annotations

import asyncio
import time

from panelsrv.guard.coord import SyncReply, SyncRequest
from panelsrv.guard.hub import MemoryStore
from panelsrv.guard.sync import Syncer
from tests.guard.guardsim import coordinator
from tests.kit.waiting import until


class Gate:
    """A backend whose exchange completes when the test says so."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.requests: list[SyncRequest] = []
        self.answer: asyncio.Future[SyncReply] = asyncio.get_running_loop().create_future()

    async def sync(self, req: SyncRequest) -> SyncReply:
        self.requests.append(req)
        return await self.answer

    async def close(self) -> None: ...


async def test_close_ends_the_loop_when_it_lands_as_an_exchange_completes() -> None:
    gate = Gate()
    syncer = Syncer(coordinator("p0"), gate, interval=0.1, timeout=30.0)
    syncer.start()
    await until(lambda: gate.requests)
    gate.answer.set_result(gate.store.sync(gate.requests[0], time.monotonic()))
    async with asyncio.timeout(5):  # a bound on the failure, not a wait for the pass
        await syncer.close()  # cancels in this same turn
    assert len(gate.requests) == 1
