"""The codes the money statements answer with and the one table from code to error agree: read
out of the migration, and answered by the functions themselves, case by case."""

from __future__ import annotations

import re
from importlib import resources

from panelsrv.store import ledger, orders, outcomes
from tests.store.helpers import connect, new_panel, new_service, new_user, order_of

# What the claim and the replays say on the way, not answers.
NOT_REFUSALS = {"new", "replay", outcomes.OK, outcomes.STORED}
# Every literal a function of 012 answers or records with: returned, assigned, selected, stored.
_CODE = re.compile(r"(?:RETURN|:=|SELECT|ARRAY\[|THEN|ELSE)\s*'([a-z_]+)'")


def codes_in_the_migration() -> set[str]:
    sql = (resources.files("panelsrv.store") / "migrations" / "012_typed_outcomes.sql").read_text()
    body = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return set(_CODE.findall(body))


def test_every_code_of_the_migration_has_one_error_and_no_other_has_one() -> None:
    found = codes_in_the_migration()
    assert found >= NOT_REFUSALS
    assert found - NOT_REFUSALS == set(outcomes.ERRORS)
    # One error each, and no two codes for the same error: a client can tell them apart.
    assert len(set(outcomes.ERRORS.values())) == len(outcomes.ERRORS)
    assert all(error.message for error in outcomes.ERRORS.values())


async def test_every_code_is_what_a_case_of_the_functions_answers(database_url: str) -> None:
    conn = await connect(database_url)
    holder = await connect(database_url)
    try:
        panel_id, domain = await new_panel(conn)
        user = await new_user(conn, domain, balance="5.00")
        poor = await new_user(conn, domain)
        service = await new_service(conn)
        answered: set[str] = set()

        async def place(**fields: object) -> ledger.Placement:
            placed = await ledger.place_order(conn, order_of(panel_id, user.id, service, **fields))
            answered.add(placed.outcome)
            return placed

        placed = await place(link="https://x.test/dup", link_guard=True)
        assert placed.outcome == outcomes.OK and placed.order_id is not None
        assert (await place(link="https://x.test/dup", link_guard=True)).outcome == "duplicate_link"
        assert (await place(order_limit=0)).outcome == "limit"
        funds = await ledger.place_order(conn, order_of(panel_id, poor.id, service))
        answered.add(funds.outcome)
        await place(idempotency_key="k", fingerprint=b"one")
        assert (await place(idempotency_key="k", fingerprint=b"two")).outcome == "mismatch"
        async with holder.transaction():
            await holder.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"idem:{user.id}:held"
            )
            assert (await place(idempotency_key="held", fingerprint=b"f")).outcome == "busy"

        done = placed.order_id  # Pending, of a service with neither cancel nor refill
        cancel = await orders.cancel(conn, user.id, [done, 999_999_999], single=False)
        refill = await orders.refill(conn, user.id, [done], False, 3, 0)
        for handled in (cancel, refill):
            assert handled.outcome == outcomes.OK and handled.codes is not None
            answered.update(c for c in handled.codes if c is not None)
        assert cancel.codes == ["cancel_unavailable", "not_found"]
        assert refill.codes == ["refill_unavailable"]
        assert answered - {outcomes.OK} == set(outcomes.ERRORS)
    finally:
        await holder.close()
        await conn.close()
