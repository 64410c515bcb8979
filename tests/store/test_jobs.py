"""The worker's statements on their own: provider reports that overflow or that the database
refuses, a Partial without remains, an Error."""

from __future__ import annotations

import logging

import pytest

from panelsrv import money
from panelsrv.store import jobs, ledger
from tests.store.helpers import World

ONE = money.parse("1.00")


async def test_a_vnd_partial_is_computed_past_bigint(own_database_url: str) -> None:
    # 10M views in VND: the charge is 1.25e14 units, charge * remains overflows bigint.
    async with World(own_database_url, currency="VND", balance="2000000000") as w:
        charge = money.parse("1250000000")
        (big,) = await w.place(charge, 10_000_000)
        results = await jobs.apply_order_statuses(w.pool, [(big, "Partial", 7, 6_543_210)])
        assert results == {big: "changed"}
        assert await w.refunds(big) == [charge * 6_543_210 // 10_000_000]
        assert (await ledger.audit(w.conn)).ok


async def test_a_report_the_database_refuses_is_isolated(
    own_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with World(own_database_url) as w:
        done, refused, partial = await w.place(count=3)
        # Past bigint (the parser bounds every provider number; the batch must not rely on it).
        reports = [(done, "Completed", 5, 0), (refused, "In progress", 2**64, 3),
                   (partial, "Partial", 1, 499)]  # fmt: skip
        with caplog.at_level(logging.WARNING, "panelsrv.worker"):
            results = await jobs.apply_order_statuses(w.pool, reports)
        assert results == {done: "changed", partial: "changed"}
        statuses = [await w.status(i) for i in (done, refused, partial)]
        assert statuses == ["Completed", "Pending", "Partial"]
        assert await w.refunds(partial) == [ONE * 499 // 1000]
        assert f"order {refused}: provider report" in caplog.text
        assert (await ledger.audit(w.conn)).ok


async def test_a_partial_without_remains_changes_nothing_and_an_error_refunds_once(
    own_database_url: str,
) -> None:
    async with World(own_database_url) as w:
        partial, error = await w.place(count=2)
        reports = [(partial, "Partial", 3, None), (error, "Error", 3, 10)]
        results = await jobs.apply_order_statuses(w.pool, reports)
        assert results == {partial: "ignored", error: "changed"}
        again = await jobs.apply_order_statuses(w.pool, [(error, "Error", 3, 10)])
        assert again == {error: "ignored"}
        remains = await w.conn.fetchval("SELECT remains FROM orders WHERE id = $1", error)
        assert (await w.status(error), remains, await w.refunds(error)) == ("Error", 1000, [ONE])
        assert (await w.status(partial), await w.refunds(partial)) == ("Pending", [])
        assert (await ledger.audit(w.conn)).ok
