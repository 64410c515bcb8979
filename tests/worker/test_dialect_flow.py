"""Provider dialects through the real worker (issue 14, point 6): a panel answering in another
dialect settles orders with the right money; what it says that means "not known yet" or "no"
moves no money; what cannot be understood changes nothing and is counted and logged."""

from __future__ import annotations

import logging
from decimal import Decimal

import asyncpg
import pytest

from panelsrv.sim.dialect import Dialect
from panelsrv.store import ledger, orders
from tests.http.sansio import FakeClock
from tests.kit.waiting import until
from tests.worker.flow import FINAL, Rig, check_refunds, place_many, rig, wait_final

STATUSES = ("Pending", "In progress", "Completed", "Partial", "Canceled")
UNREADABLE = "panelsrv_worker_unreadable_answers_total"
# Everything a panel can say otherwise, at once.
WAIT = 15.0  # seconds the worker may take to get somewhere
WORDY = Dialect(
    statuses={s: s.lower() for s in STATUSES}, numbers=True, envelope="data", failed="error",
    message="message", batch="keyed", accepted="ok",
)  # fmt: skip


def unreadable(r: Rig) -> dict[tuple[str, ...], float]:
    return {tuple(k): v for k, v in r.measured.snapshot()[UNREADABLE]["samples"]}


async def refunds(conn: asyncpg.Connection, order_ids: list[int]) -> int:
    return await conn.fetchval(
        "SELECT count(*) FROM ledger_entries WHERE kind = 'refund' AND order_id = ANY($1)",
        order_ids,
    )


async def statuses(conn: asyncpg.Connection, order_ids: list[int]) -> set[str]:
    rows = await conn.fetch("SELECT status FROM orders WHERE id = ANY($1::bigint[])", order_ids)
    return {r[0] for r in rows}


async def test_a_panel_of_another_dialect_settles_orders_and_cancels_with_the_right_money(
    own_database_url: str,
) -> None:
    async with rig(own_database_url, complete_after=0.6, partial_ratio=0.4, seed=5) as r:
        r.sim.dialect = WORDY
        settled = await place_many(r.pool, r.conn, r.provider, r.service, 20, users=4)
        await wait_final(r.conn, settled, timeout=30)
        assert await statuses(r.conn, settled) == {"Completed", "Partial"}

        r.sim.book.complete_after = 60  # Pending upstream for 12 s: time to cancel there
        canceled = await place_many(r.pool, r.conn, r.provider, r.service, 3, users=1)
        await until(lambda: len(r.sim.book.orders) == 23, WAIT)
        owner = await r.conn.fetchval("SELECT user_id FROM orders WHERE id = $1", canceled[0])

        async def sent() -> bool:
            return not await r.conn.fetchval(
                "SELECT count(*) FROM orders WHERE id = ANY($1) AND upstream_id IS NULL", canceled
            )

        await until(sent, WAIT)
        answer = await orders.cancel(r.pool, owner, canceled, single=False)
        assert (answer.order_ids, answer.codes) == (canceled, [None] * len(canceled))
        await wait_final(r.conn, canceled, timeout=30)  # {"4": {"cancel": "ok"}}, then canceled
        assert await statuses(r.conn, canceled) == {"Canceled"}

        assert set(r.sim.book.creations_by_link().values()) == {1}
        await check_refunds(r.conn, settled + canceled)
        assert (await ledger.audit(r.conn)).ok
        assert unreadable(r) == {}


async def test_remains_unknown_and_refusals_in_an_envelope_move_no_money(
    own_database_url: str,
) -> None:
    # Partial with "remains": "Unknown": its refund is unknown, so it is not final. A refusal
    # {"status": "error", "error": "Incorrect order ID"} is not the order's Error (a full refund).
    dialect = Dialect(remains="Unknown", failed="error", message="error")
    clock = FakeClock()  # the simulator's orders move on only when the test says
    async with rig(
        own_database_url, complete_after=0.3, partial_ratio=1.0, seed=6, dialect=dialect,
        clock=clock.time,
    ) as r:  # fmt: skip
        placed = await place_many(r.pool, r.conn, r.provider, r.service, 4, users=1)
        await until(lambda: len(r.sim.book.orders) == 4, WAIT)
        lost = r.sim.book.orders.pop(4)  # the provider says it knows no such order
        clock.advance(1.0)  # all Partial upstream now
        polls = r.sim.counters["action.status"]
        await until(lambda: r.sim.counters["action.status"] >= polls + 2, WAIT)
        assert not await statuses(r.conn, placed) & set(FINAL)
        assert await refunds(r.conn, placed) == 0
        assert unreadable(r) == {}  # known variants, not answers that cannot be understood

        r.sim.book.orders[4] = lost
        r.sim.dialect = Dialect()
        await wait_final(r.conn, placed, timeout=20)
        assert await statuses(r.conn, placed) == {"Partial"}
        await check_refunds(r.conn, placed)
        assert await refunds(r.conn, placed) == 4
        assert (await ledger.audit(r.conn)).ok


async def test_answers_that_cannot_be_understood_change_nothing_and_are_counted_and_logged(
    own_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with rig(own_database_url, complete_after=0.2, partial_ratio=0.0) as r:
        r.sim.dialect = Dialect(statuses={s: "Done?" for s in STATUSES})
        with caplog.at_level(logging.WARNING, "panelsrv.worker"):
            placed = await place_many(r.pool, r.conn, r.provider, r.service, 3, users=1)
            await until(lambda: unreadable(r).get((r.name, "status"), 0) >= 9, WAIT)  # 3 polls
        assert await statuses(r.conn, placed) == {"Pending"}
        assert await refunds(r.conn, placed) == 0
        lines = [x.getMessage() for x in caplog.records if "Done?" in x.getMessage()]
        assert len(lines) == 1, lines  # once a minute, however often it is polled
        assert lines[0].startswith(f"provider {r.name}: status answer not understood (")
        assert "unknown status 'Done?'" in lines[0]
        assert lines[0].endswith("it changed no order and no money")
        r.sim.dialect = Dialect()
        await wait_final(r.conn, placed, timeout=20)
        assert await statuses(r.conn, placed) == {"Completed"}
        assert (await ledger.audit(r.conn)).ok


async def test_a_402_holds_the_order_whatever_its_body_and_never_as_maybe_sent(
    own_database_url: str,
) -> None:
    # Held as "not enough funds" and retried, not held for the operator as an unknown outcome
    # (this provider does not honour Idempotency-Key): a 402 placed nothing.
    dialect = Dialect(failed="error", message="reason")  # the text where no table looks
    async with rig(
        own_database_url, honours_idempotency=False, balance=Decimal(0), dialect=dialect
    ) as r:
        placed = await place_many(r.pool, r.conn, r.provider, r.service, 2, users=1)

        async def attempted() -> bool:
            return await r.conn.fetchval(
                "SELECT count(*) FROM outbox WHERE order_id = ANY($1) AND attempts > 0"
                " AND last_error IS NOT NULL",  # claimed, and the answer recorded
                placed,
            ) == len(placed)

        await until(attempted, WAIT)
        rows = await r.conn.fetch(
            "SELECT ambiguous, held_at, last_error FROM outbox WHERE order_id = ANY($1)", placed
        )
        assert [tuple(x) for x in rows] == [(False, None, "HTTP 402")] * 2
        held = r.measured.snapshot()["panelsrv_worker_orders_held_total"]["samples"]
        assert held == [[[r.name], 2]]
        assert await statuses(r.conn, placed) == {"Pending"} and not r.sim.book.orders
        assert (await ledger.audit(r.conn)).ok
