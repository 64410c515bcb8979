"""The dispatcher against a fake provider: cancels during an attempt, a lease that runs out
while the call waits for its slot, Retry-After values, the Idempotency-Key it sends."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import asyncpg
import pytest

from panelsrv import money
from panelsrv.store import jobs, ledger, orders
from panelsrv.worker.dispatch import BATCH, Dispatcher, lease_seconds
from panelsrv.worker.registry import ProviderRegistry, ProviderSettings
from tests.kit.waiting import until
from tests.store.helpers import World
from tests.worker.fake import FakeProvider

SETTINGS = ProviderSettings(timeout=5.0, connect_timeout=5.0, max_concurrency=1)


async def _dispatcher(w: Dispatching, settings: ProviderSettings = SETTINGS) -> Dispatcher:
    registry = ProviderRegistry(w.pool, settings)
    await registry.refresh()
    w.registries.append(registry)
    return Dispatcher(w.pool, registry, settings)


async def _job(w: World, order_id: int) -> asyncpg.Record | None:
    return await w.conn.fetchrow(
        "SELECT attempts, ambiguous, lease_until, run_after - now() AS wait, last_error"
        " FROM outbox WHERE order_id = $1 AND kind = 'dispatch'",
        order_id,
    )


async def _until_claimed(w: World, order_id: int, attempt: int) -> None:
    async def claimed() -> bool:
        row = await _job(w, order_id)
        return row is not None and row["attempts"] >= attempt

    await until(claimed, 10, what="claimed")


async def _order(w: World, order_id: int) -> tuple[str, list[int]]:
    return await w.status(order_id), await w.refunds(order_id)


class Dispatching(World):
    """A World whose dispatchers (and their provider clients) are closed with it."""

    async def __aenter__(self) -> Dispatching:
        await super().__aenter__()
        self.registries: list[ProviderRegistry] = []
        return self

    async def __aexit__(self, *exc: object) -> None:
        for registry in self.registries:
            await registry.close()
        await super().__aexit__(*exc)


async def _occupied(dispatcher: Dispatcher, fake: FakeProvider, provider_id: int) -> asyncio.Task:
    """Take the provider client's only concurrency slot with a call the fake holds (fake.gate)."""
    fake.gate = asyncio.Event()
    client = dispatcher._registry.get(provider_id)
    assert client is not None
    blocker = asyncio.get_running_loop().create_task(client.balance())
    await fake.held.wait()
    return blocker


async def test_a_cancel_while_the_attempt_waits_for_its_turn_refunds_and_sends_nothing(
    own_database_url: str,
) -> None:
    async with FakeProvider() as fake, Dispatching(own_database_url, fake.url, fake.key) as w:
        (order_id,) = await w.place()
        dispatcher = await _dispatcher(w)
        blocker = await _occupied(dispatcher, fake, w.provider_id)
        attempt = asyncio.get_running_loop().create_task(dispatcher.run_once())
        await _until_claimed(w, order_id, 1)
        # Claim -> cancel: an attempt holds the job, so the cancel is queued for upstream...
        cancel = await orders.cancel(w.conn, w.user.id, [order_id], single=True)
        assert cancel.codes == [None]
        assert await _order(w, order_id) == ("Pending", [])
        # ...then the attempt gets its turn: the last check before sending sees the cancel, so
        # nothing is sent and the order is canceled and refunded at once.
        fake.gate.set()  # type: ignore[union-attr]
        await attempt
        await blocker
        assert fake.adds == []
        assert await _order(w, order_id) == ("Canceled", [money.parse("1.00")])
        assert await w.conn.fetchval("SELECT count(*) FROM outbox") == 0
        again = await orders.cancel(w.conn, w.user.id, [order_id], single=True)
        assert again.codes == ["cancel_unavailable"]
        assert (await ledger.audit(w.conn)).ok


async def test_a_claimed_job_whose_order_was_canceled_is_not_sent(own_database_url: str) -> None:
    async with FakeProvider() as fake, Dispatching(own_database_url, fake.url, fake.key) as w:
        (order_id,) = await w.place()
        dispatcher = await _dispatcher(w)
        # The state an attempt left behind when it ended unsent, while the order was canceled.
        await w.conn.execute("UPDATE outbox SET lease_until = now() WHERE order_id = $1", order_id)
        assert (await orders.cancel(w.conn, w.user.id, [order_id], single=True)).codes == [None]
        await w.conn.execute(
            "UPDATE outbox SET lease_until = NULL, attempts = 1 WHERE order_id = $1", order_id
        )
        assert await dispatcher.run_once() == 1  # the queued cancel went with the order
        assert fake.adds == []
        assert await _order(w, order_id) == ("Canceled", [money.parse("1.00")])
        assert await w.conn.fetchval("SELECT count(*) FROM outbox") == 0
        assert (await ledger.audit(w.conn)).ok


async def test_a_lease_lost_while_waiting_for_the_provider_is_not_sent(
    own_database_url: str,
) -> None:
    async with FakeProvider() as fake, Dispatching(own_database_url, fake.url, fake.key) as w:
        (order_id,) = await w.place()
        slow, other = await _dispatcher(w), await _dispatcher(w)
        blocker = await _occupied(slow, fake, w.provider_id)
        waiting = asyncio.get_running_loop().create_task(slow.run_once())
        await _until_claimed(w, order_id, 1)
        # The slow worker's call waits for its slot past its lease; another worker takes over.
        await w.conn.execute(
            "UPDATE outbox SET lease_until = now() - interval '1 second' WHERE order_id = $1",
            order_id,
        )
        assert await other.run_once() == 1
        assert len(fake.adds) == 1
        fake.gate.set()  # type: ignore[union-attr]
        await waiting
        await blocker
        assert len(fake.adds) == 1  # the slow worker found its claim gone and sent nothing
        assert await _job(w, order_id) is None
        assert await w.conn.fetchval("SELECT upstream_id FROM orders WHERE id = $1", order_id)


def test_the_lease_covers_a_batch_spaced_by_the_rate_limit() -> None:
    timeout, rate = 2.0, 0.5
    unlimited = ProviderSettings(timeout=timeout, max_concurrency=8)
    limited = ProviderSettings(timeout=timeout, max_concurrency=8, rate=rate)
    # BATCH calls 1/rate apart take BATCH/rate seconds before the last one is even sent.
    assert lease_seconds(limited) >= BATCH / rate + timeout
    assert lease_seconds(limited) - lease_seconds(unlimited) == pytest.approx(BATCH / rate)


@pytest.mark.parametrize(
    ("header", "low", "high"),
    [("inf", 4.0, 5.5), ("1e300", 3599.0, 3600.5), ("1e10", 3599.0, 3600.5), ("nan", 4.0, 5.5),
     ("120", 119.0, 120.5)],
)  # fmt: skip
async def test_a_providers_retry_after_is_finite_and_bounded(
    own_database_url: str, header: str, low: float, high: float
) -> None:
    async with FakeProvider() as fake, Dispatching(own_database_url, fake.url, fake.key) as w:
        fake.on_add = lambda fields: (429, {"error": "Too many requests"}, {"Retry-After": header})
        (order_id,) = await w.place()
        dispatcher = await _dispatcher(w)
        assert await dispatcher.run_once() == 1
        job = await _job(w, order_id)
        assert job is not None and job["lease_until"] is None
        assert job["last_error"] == "HTTP 429" and not job["ambiguous"]
        assert low <= job["wait"].total_seconds() <= high  # without a usable hint: backoff(1)


async def test_each_order_goes_upstream_with_its_own_random_key_and_resends_with_it(
    own_database_url: str,
) -> None:
    async with FakeProvider() as fake, Dispatching(own_database_url, fake.url, fake.key) as w:
        first, second = await w.place(count=2)
        answers = iter([(500, {"error": "Internal error"}, {})])
        fake.on_add = lambda fields: next(answers, None) if fields["link"].endswith("/0") else None
        await w.conn.execute(  # elsewhere the order would be held for the operator (test_held)
            "UPDATE providers SET honours_idempotency = true WHERE id = $1", w.provider_id
        )
        dispatcher = await _dispatcher(w)
        assert await dispatcher.run_once() == 2
        await w.conn.execute("UPDATE outbox SET run_after = now() WHERE order_id = $1", first)
        assert await dispatcher.run_once() == 1  # the resend after an unknown outcome
        keys = {link: [k for k, f in fake.adds if f["link"] == link] for link in
                ("https://x.test/0", "https://x.test/1")}  # fmt: skip
        resent, once = keys["https://x.test/0"], keys["https://x.test/1"]
        assert len(resent) == 2 and resent[0] == resent[1] and len(once) == 1
        assert all(re.fullmatch(r"panelsrv-[0-9a-f]{32}", k or "") for k in (*resent, *once))
        assert resent[0] != once[0] and second > first


async def test_an_upstream_id_is_recorded_through_a_database_blip(
    own_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The order exists upstream once the provider answered: a failure to record its id (the
    # database restarting) is retried, not left to look like an attempt of unknown outcome.
    async with FakeProvider() as fake, Dispatching(own_database_url, fake.url, fake.key) as w:
        (order_id,) = await w.place()
        dispatcher = await _dispatcher(w)
        real, failures = jobs.sent, [OSError("connection refused")] * 2

        async def sent_after_a_blip(pool: Any, job: jobs.Job, upstream_id: str) -> None:
            if failures:
                raise failures.pop()
            await real(pool, job, upstream_id)

        monkeypatch.setattr(jobs, "sent", sent_after_a_blip)
        assert await dispatcher.run_once() == 1
        assert not failures and len(fake.adds) == 1
        row = await w.conn.fetchrow("SELECT upstream_id FROM orders WHERE id = $1", order_id)
        assert row["upstream_id"] is not None and await _job(w, order_id) is None
