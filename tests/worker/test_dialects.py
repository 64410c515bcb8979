"""Provider dialects (issue 14, point 6): one test per row of `upstream.DIALECT`, each against the
simulator answering in that dialect, through the `Provider` client over loopback sockets.

Every row below states what a word or key means where a panel says it; the last test checks
that these rows and the table are the same set, so a row added to the table needs its test.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import pytest

from panelsrv import metrics
from panelsrv.client import dialects
from panelsrv.client.answers import (
    ErrorKind,
    ItemError,
    OrderStatus,
    ProviderError,
    ProviderUnavailable,
)
from panelsrv.sim.dialect import Dialect
from panelsrv.sim.provider import Simulator
from panelsrv.worker.providers import Provider

ORDER = {"service": 1, "link": "https://x.test/p", "quantity": 100}  # 10..10000, 0.05 per 1000
NO_REMAINS = ItemError("Partial without a usable remains")

ORDER_STATUS = [
    ("pending", "Pending"), ("awaiting", "Pending"), ("queued", "Pending"),
    ("in progress", "In progress"), ("inprogress", "In progress"),
    ("processing", "In progress"), ("started", "In progress"),
    ("completed", "Completed"), ("complete", "Completed"),
    ("partial", "Partial"), ("partially completed", "Partial"),
    ("canceled", "Canceled"), ("cancelled", "Canceled"), ("refunded", "Refunded"),
    ("error", "Error"), ("failed", "Error"), ("fail", "Error"),
]  # fmt: skip
REFILL_STATUS = [
    ("pending", "Pending"), ("awaiting", "Pending"), ("queued", "Pending"),
    ("in progress", "In progress"), ("inprogress", "In progress"),
    ("processing", "In progress"), ("completed", "Completed"), ("complete", "Completed"),
    ("success", "Completed"), ("rejected", "Rejected"), ("refused", "Rejected"),
    ("canceled", "Rejected"), ("cancelled", "Rejected"), ("error", "Error"),
    ("failed", "Error"), ("fail", "Error"),
]  # fmt: skip
ENVELOPE = [("success", "ok"), ("ok", "ok"), ("true", "ok"), ("error", "failed"),
            ("fail", "failed"), ("failed", "failed"), ("false", "failed")]  # fmt: skip
ANSWER_KEY = ["data", "result", "response"]
MESSAGE_KEY = ["error", "message", "msg"]
COUNT = ["unknown", "n/a", ""]
CANCEL = ["1", "true", "ok", "success"]
HTTP_STATUS = [("402", ErrorKind.NO_FUNDS)]


def said(word: str) -> Any:
    """A word as a panel sends it: JSON true/false and the number 1 as such."""
    return {"true": True, "false": False, "1": 1}.get(word, word)


async def placed(p: Provider) -> str:
    return await p.add(ORDER)


@asynccontextmanager
async def answering(**options: Any) -> AsyncIterator[tuple[Simulator, Provider]]:
    """A simulator (`SimOptions` fields, `dialect` among them) and a client of it."""
    async with Simulator(**options) as sim, Provider(sim.url, sim.key) as p:
        yield sim, p


@pytest.mark.parametrize(("word", "meaning"), ORDER_STATUS)
async def test_order_status_words(word: str, meaning: str) -> None:
    dialect = Dialect(statuses={"Pending": word.upper()})  # another case than the table's
    async with answering(complete_after=60, dialect=dialect) as (sim, p):
        oid = await placed(p)
        got = (await p.multi_status([oid]))[oid]
        assert got == OrderStatus(
            status=meaning, start_count=sim.book.orders[1].start_count, remains=100,
            charge=Decimal("0.005"), currency="USD",
        )  # fmt: skip
        assert p.stats.unreadable == 0


@pytest.mark.parametrize("word", ["success", "ok", "Weird", "done?"])
async def test_a_word_that_is_no_order_status_changes_nothing_and_is_counted(word: str) -> None:
    # "success" wraps answers; it never completes an order.
    dialect = Dialect(statuses={"Pending": word})
    async with answering(complete_after=60, dialect=dialect) as (_sim, p):
        oid = await placed(p)
        got = (await p.multi_status([oid]))[oid]
        assert got == ItemError(f"unknown status {word!r}", unreadable=True)
        assert p.stats.unreadable == 1


@pytest.mark.parametrize(("word", "meaning"), REFILL_STATUS)
async def test_refill_status_words(word: str, meaning: str) -> None:
    dialect = Dialect(refill_statuses={"Completed": word.title()})
    async with answering(complete_after=0, dialect=dialect) as (_sim, p):
        refill = await p.refill(await placed(p))
        assert await p.refill_status([refill]) == {refill: meaning}


@pytest.mark.parametrize(("word", "meaning"), ENVELOPE)
async def test_envelope_words(word: str, meaning: str) -> None:
    ok = Dialect(envelope="data", ok=said(word))
    failed = Dialect(failed=said(word), message="error")
    async with answering(complete_after=60) as (sim, p):
        sim.dialect = ok if meaning == "ok" else failed
        if meaning == "ok":  # a wrapper, never an order's status
            oid = await placed(p)
            assert (await p.multi_status([oid]))[oid].status == "Pending"
            assert (await p.status(oid)).status == "Pending"
            assert (await p.balance()).balance == Decimal(1_000_000) - Decimal("0.005")
        else:  # a refusal: nothing placed, no order reported as Error
            with pytest.raises(ProviderError) as caught:
                await p.add({**ORDER, "service": 999})
            assert caught.value.message == "Incorrect service ID" and not caught.value.hold
            assert await p.multi_status(["424242"]) == {"424242": ItemError("Incorrect order ID")}
            assert not sim.book.orders
        assert p.stats.unreadable == 0


@pytest.mark.parametrize("key", ANSWER_KEY)
async def test_answer_keys(key: str) -> None:
    async with answering(complete_after=60, dialect=Dialect(envelope=key)) as (_sim, p):
        assert len(await p.services()) == 20
        oid = await placed(p)
        assert (await p.status(oid)).status == "Pending"
        assert (await p.multi_status([oid]))[oid].status == "Pending"
        assert await p.cancel([oid, "9"]) == {oid: True, "9": ItemError("Incorrect order ID")}
        assert (await p.balance()).currency == "USD"


@pytest.mark.parametrize("key", MESSAGE_KEY)
async def test_message_keys(key: str) -> None:
    dialect = Dialect(envelope="data", failed="error", message=key)
    async with answering(balance=Decimal("0.001"), dialect=dialect) as (sim, p):
        with pytest.raises(ProviderError) as refused:
            await p.add({**ORDER, "service": 999})
        assert refused.value.message == "Incorrect service ID"
        assert refused.value.kind is ErrorKind.REJECTED
        with pytest.raises(ProviderError) as short:  # 402 with its message
            await p.add(ORDER)
        assert short.value.message == "Not enough funds on balance"
        assert short.value.kind is ErrorKind.NO_FUNDS and short.value.hold
        assert not sim.book.orders


@pytest.mark.parametrize("word", COUNT)
async def test_count_words(word: str) -> None:
    # remains unknown: a Completed stays Completed; a Partial is not final (its refund is
    # unknown), polled again. Neither is an answer that cannot be understood.
    async with answering(complete_after=0, partial_ratio=0.5, seed=4) as (sim, p):
        ids = [await placed(p) for _ in range(8)]
        sim.dialect = Dialect(remains=word.title())
        got = await p.multi_status(ids)
        partial = {str(o.id) for o in sim.book.orders.values() if o.final_remains}
        assert 0 < len(partial) < len(ids)
        for oid, answer in got.items():
            if oid in partial:
                assert answer == NO_REMAINS
            else:
                assert isinstance(answer, OrderStatus) and answer.status == "Completed"
                assert answer.remains is None
        assert p.stats.unreadable == 0


@pytest.mark.parametrize("word", CANCEL)
async def test_cancel_words(word: str) -> None:
    for batch in ("list", "keyed", "bare"):
        dialect = Dialect(accepted=said(word), batch=batch)  # type: ignore[arg-type]
        async with answering(complete_after=60, dialect=dialect) as (sim, p):
            oid = await placed(p)
            assert await p.cancel([oid]) == {oid: True}
            assert sim.book.orders[1].canceled


@pytest.mark.parametrize(("status", "kind"), HTTP_STATUS)
async def test_http_statuses(status: str, kind: ErrorKind) -> None:
    # 402 means "not enough funds" whatever its body says, here an envelope whose message is
    # where no table looks: the order was not placed, hold it (never "may have been sent").
    dialect = Dialect(failed="error", message="reason")
    async with answering(balance=Decimal("0.001"), dialect=dialect) as (sim, p):
        with pytest.raises(ProviderError) as caught:
            await p.add(ORDER)
        assert caught.value.http_status == int(status)
        assert caught.value.kind is kind and caught.value.hold
        assert not sim.book.orders


def test_the_rows_above_are_the_whole_table() -> None:
    tested = {
        "order status": dict(ORDER_STATUS),
        "refill status": dict(REFILL_STATUS),
        "envelope": dict(ENVELOPE),
        "answer key": ANSWER_KEY,
        "message key": MESSAGE_KEY,
        "count": COUNT,
        "cancel": CANCEL,
        "http status": {status: kind.value for status, kind in HTTP_STATUS},
    }
    table = dialects.DIALECT
    assert set(table) == set(tested)
    for place, rows in tested.items():
        if isinstance(rows, dict):
            assert table[place] == rows, place
        else:
            assert list(table[place]) == rows, place


# -- shapes: where the words are, not what they mean -----------------------------------------


async def test_batches_keyed_by_id_or_bare() -> None:
    for batch in ("keyed", "bare"):
        dialect = Dialect(batch=batch)  # type: ignore[arg-type]
        async with answering(complete_after=0, dialect=dialect) as (_sim, p):
            first, second = await placed(p), await placed(p)
            refills = await p.multi_refill([first, second, "9"])
            assert refills == {first: "1", second: "2", "9": ItemError("Incorrect order ID")}
            assert await p.refill_status(["1", "2", "7"]) == {
                "1": "Completed", "2": "Completed", "7": ItemError("Refill not found"),
            }  # fmt: skip
            assert await p.cancel([first]) == {first: ItemError("Order cannot be canceled")}
            assert p.stats.unreadable == 0


async def test_merged_envelope_numbers_and_missing_remains() -> None:
    dialect = Dialect(envelope="", numbers=True, omit=["remains"])
    async with answering(complete_after=60, dialect=dialect) as (sim, p):
        oid = await placed(p)  # {"status": "success", "order": 1}
        assert (await p.status(oid)).remains is None
        got = (await p.multi_status([oid]))[oid]
        assert got == OrderStatus(
            status="Pending", start_count=sim.book.orders[1].start_count,
            charge=Decimal("0.005"), currency="USD",
        )  # fmt: skip
        assert (await p.balance()).balance == Decimal("999999.995")
        sim.book.orders[1].final_remains = 40
        sim.book.complete_after = 0
        assert (await p.multi_status([oid]))[oid] == NO_REMAINS  # Partial, remains left out


async def test_an_answer_that_cannot_be_understood_is_counted_and_logged_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    registry = metrics.Registry()
    unreadable = registry.counter("unreadable", "test", ("provider", "action"))
    odd = Dialect(envelope="data", ok="maybe")  # {"status": "maybe", "data": ...}: no envelope
    weird = Dialect(statuses={"Pending": "Weird"})
    async with (
        Simulator(complete_after=60) as sim,
        Provider(sim.url, sim.key, name="odd", unreadable=unreadable, clock=lambda: now[0]) as p,
    ):
        ids = [await placed(p) for _ in range(3)]
        with caplog.at_level(logging.WARNING, "panelsrv.worker.providers"):
            sim.dialect = odd
            for _ in range(2):
                with pytest.raises(ProviderUnavailable) as caught:
                    await p.multi_status(ids)
                assert caught.value.maybe_sent
                now[0] += 10
            with pytest.raises(ProviderUnavailable):
                await p.balance()
            sim.dialect = weird
            assert all(e.unreadable for e in (await p.multi_status(ids)).values())
            now[0] += 60
            await p.multi_status(ids)
        assert p.stats.unreadable == 9
    assert unreadable.values == {("odd", "status"): 1 + 1 + 3 + 3, ("odd", "balance"): 1}
    lines = [r.getMessage() for r in caplog.records if "not understood" in r.getMessage()]
    assert len(lines) == 3, lines  # once per provider and action per minute
    assert lines[0].startswith("provider odd: status answer not understood")
    assert lines[1].startswith("provider odd: balance answer not understood")
    assert "(4 more since the last such line)" in lines[2], lines[2]
