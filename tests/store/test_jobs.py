"""The worker's statements on their own: fenced attempt outcomes, cancels during an attempt,
provider reports that overflow or that the database refuses, the upstream Idempotency-Key."""

from __future__ import annotations

import logging
import re

import pytest

from panelsrv import money
from panelsrv.store import held, jobs, ledger, orders
from tests.store.helpers import World

ONE = money.parse("1.00")


async def _claim(w: World, order_id: int, lease: float = 60.0) -> jobs.Job:
    """Claim every due dispatch job (as a worker would) and return the one of `order_id`."""
    claimed = await jobs.claim(w.pool, "dispatch", 100, lease)
    return next(j for j in claimed if j.order_id == order_id)


async def _expire(w: World, order_id: int) -> None:
    """As if the worker holding the job had died: its lease runs out."""
    await w.conn.execute(
        "UPDATE outbox SET lease_until = now() - interval '1 second' WHERE order_id = $1", order_id
    )


async def _jobs(w: World, order_id: int) -> int:
    return await w.conn.fetchval("SELECT count(*) FROM outbox WHERE order_id = $1", order_id)


async def test_a_stale_attempts_refusal_refunds_nothing(own_database_url: str) -> None:
    async with World(own_database_url) as w:
        # (Each order placed just before its claims: a claim takes every due job.)
        (two,) = await w.place()
        # Attempt 1 stalls; attempt 2 places the order upstream; then attempt 1 is refused.
        first = await _claim(w, two)
        await _expire(w, two)
        second = await _claim(w, two)
        await jobs.sent(w.pool, second, "U-2")
        assert await jobs.fail_dispatch(w.pool, first, "Incorrect service ID") == "stale"
        # Attempt 1 placed it (its answer recorded late); attempt 2, holding the job, is refused.
        (one,) = await w.place()
        first = await _claim(w, one)
        await _expire(w, one)
        second = await _claim(w, one)
        await jobs.sent(w.pool, first, "U-1")  # fenced: the job stays with attempt 2
        assert await jobs.fail_dispatch(w.pool, second, "Duplicate order") == "sent"
        for order_id, upstream in ((two, "U-2"), (one, "U-1")):
            row = await w.conn.fetchrow(
                "SELECT status, upstream_id, error FROM orders WHERE id = $1", order_id
            )
            assert tuple(row) == ("Pending", upstream, None)
            assert await w.refunds(order_id) == [] and await _jobs(w, order_id) == 0
        # The attempt that holds the job, of an order never placed: Canceled, refunded once.
        (refused,) = await w.place()
        job = await _claim(w, refused)
        assert await jobs.fail_dispatch(w.pool, job, "Incorrect service ID") == "failed"
        assert await jobs.fail_dispatch(w.pool, job, "Incorrect service ID") == "stale"
        error = await w.conn.fetchval("SELECT error FROM orders WHERE id = $1", refused)
        assert (await w.status(refused), error) == ("Canceled", "Incorrect service ID")
        assert await w.refunds(refused) == [ONE]
        assert (await ledger.audit(w.conn)).ok


async def test_a_cancel_during_an_attempt_that_ends_unsent_refunds_at_once(
    own_database_url: str,
) -> None:
    async with World(own_database_url) as w:

        async def cancel_while_claimed() -> tuple[int, jobs.Job]:
            (order_id,) = await w.place()
            job = await _claim(w, order_id)
            answer = await orders.cancel(w.conn, w.user.id, [order_id], single=True)
            assert answer.codes == [None]
            return order_id, job

        async def state(order_id: int) -> tuple[str, list[int], int]:
            return await w.status(order_id), await w.refunds(order_id), await _jobs(w, order_id)

        # Claim -> cancel (an attempt holds the job: forwarded) -> the attempt ends unsent.
        held, job = await cancel_while_claimed()
        assert await state(held) == ("Pending", [], 2)  # dispatch + cancel jobs
        assert await jobs.retry(w.pool, job, 300.0, "Not enough funds", False) == "canceled"
        assert await state(held) == ("Canceled", [ONE], 0)
        again = await orders.cancel(w.conn, w.user.id, [held], single=True)
        assert again.codes == ["cancel_unavailable"]

        # The attempt may have reached the provider: the cancel must go upstream...
        maybe, job = await cancel_while_claimed()
        assert await jobs.retry(w.pool, job, 0.0, "no answer within 30 s", True) == "retry"
        assert await state(maybe) == ("Pending", [], 2)
        # ...and a later attempt that ends unsent does not cancel it either (no refund).
        job = await _claim(w, maybe)
        assert job.ambiguous
        assert await jobs.retry(w.pool, job, 0.0, "cannot connect", False) == "retry"
        assert await state(maybe) == ("Pending", [], 2)

        # An earlier worker died holding the job before its request went out: it sent nothing,
        # so the next attempt is not ambiguous, and ending unsent cancels at once.
        quiet, job = await cancel_while_claimed()
        await _expire(w, quiet)
        later = await _claim(w, quiet)
        assert not later.ambiguous
        assert await jobs.retry(w.pool, later, 0.0, "circuit open", False) == "canceled"
        assert await state(quiet) == ("Canceled", [ONE], 0)

        # One died after its request went out (outcome unknown): no cancel at once.
        (died,) = await w.place()
        job = await _claim(w, died)
        assert await jobs.renew(w.pool, job, 30.0) == "renewed"  # right before sending
        answer = await orders.cancel(w.conn, w.user.id, [died], single=True)
        assert answer.codes == [None]
        await _expire(w, died)
        later = await _claim(w, died)
        assert later.ambiguous
        assert await jobs.retry(w.pool, job, 0.0, "circuit open", False) == "stale"
        assert await jobs.retry(w.pool, later, 0.0, "circuit open", False) == "retry"
        assert await state(died) == ("Pending", [], 2)
        assert (await ledger.audit(w.conn)).ok


async def test_an_attempt_waiting_for_its_turn_sends_nothing_once_the_customer_canceled(
    own_database_url: str,
) -> None:
    # The rate-limit wait can last minutes: the last check before the request goes out sees the
    # cancel, and the attempt then ends unsent, which cancels and refunds (issue 12, point 4).
    async with World(own_database_url) as w:
        (order_id,) = await w.place()
        job = await _claim(w, order_id)
        answer = await orders.cancel(w.conn, w.user.id, [order_id], single=True)
        assert answer.codes == [None]
        assert await jobs.renew(w.pool, job, 30.0) == "canceled"
        assert await jobs.retry(w.pool, job, 0.0, "canceled meanwhile", False) == "canceled"
        assert (await w.status(order_id), await w.refunds(order_id)) == ("Canceled", [ONE])
        stale = await jobs.renew(w.pool, job, 30.0)
        assert stale == "lost"
        assert (await ledger.audit(w.conn)).ok


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


async def test_every_job_has_its_own_random_upstream_key(own_database_url: str) -> None:
    async with World(own_database_url) as w:
        ids = await w.place(count=2)
        claimed = {job.order_id: job for job in await jobs.claim(w.pool, "dispatch", 100, 60.0)}
        keys = [claimed[i].upstream_key for i in ids]
        assert all(re.fullmatch(r"panelsrv-[0-9a-f]{32}", k) for k in keys) and len(set(keys)) == 2
        await jobs.retry(w.pool, claimed[ids[0]], 0.0, "no answer", True)
        assert (await _claim(w, ids[0])).upstream_key == keys[0]  # the resend's key


async def test_a_held_order_placed_after_all_is_never_refunded(own_database_url: str) -> None:
    # An order held for the operator whose earlier attempt's answer arrives late: the late
    # answer settles it (the held job goes with the upstream id recorded), and where the id
    # got there by any other path, `order fail` refuses to refund it (review finding).
    async with World(own_database_url) as w:
        late, raced = await w.place(count=2)
        first = {j.order_id: j for j in await jobs.claim(w.pool, "dispatch", 100, 60.0)}
        for order_id in (late, raced):
            assert await jobs.renew(w.pool, first[order_id], 60.0) == "renewed"  # sent...
            await _expire(w, order_id)  # ...and its worker died: the outcome is unknown
        for job in await jobs.claim(w.pool, "dispatch", 100, 60.0):
            assert job.ambiguous
            await jobs.hold(w.pool, job, "unknown outcome: held")
        await jobs.sent(w.pool, first[late], "U-late")  # the stale attempt's answer
        assert await _jobs(w, late) == 0
        await w.conn.execute("UPDATE orders SET upstream_id = 'U-raced' WHERE id = $1", raced)
        assert await held.resolve(w.conn, raced, "fail") == "placed"
        for order_id in (late, raced):
            assert (await w.status(order_id), await w.refunds(order_id)) == ("Pending", [])
        assert await _jobs(w, raced) == 0
        assert (await ledger.audit(w.conn)).ok
