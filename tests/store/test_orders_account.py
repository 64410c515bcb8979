"""The account home's orders: one user's, newest first, paged, filtered by status, searched by
id or by link (wildcards literal)."""

from __future__ import annotations

import pytest

from panelsrv import money
from panelsrv.store import ledger, orders
from tests.store.helpers import connect, new_panel, new_service, new_user, order_of

LINKS = [
    "https://x.test/a_b",
    "https://x.test/aXb",
    "https://x.test/100%real",
    "https://x.test/100Xreal",
    "https://SHOP.test/Upper",
    "https://x.test/back\\slash",
    "https://x.test/v/7234567890123456789012345",
]


async def test_orders_of_one_user_newest_first_paged_filtered_and_searched(
    database_url: str,
) -> None:
    conn = await connect(database_url)
    try:
        panel_id, domain = await new_panel(conn)
        user = await new_user(conn, domain, balance="100.00")
        other = await new_user(conn, domain, balance="100.00")
        service = await new_service(conn, cancel=True, domain=domain, local_id=7)
        ids = []
        for n, link in enumerate(LINKS):
            order = order_of(panel_id, user.id, service, link=link, quantity=100 + n,
                             charge=money.parse("1.25"))  # fmt: skip
            ids.append((await ledger.place_order(conn, order)).order_id)
        theirs = (await ledger.place_order(conn, order_of(panel_id, other.id, service))).order_id
        await orders.cancel(conn, user.id, [ids[1]], single=True)  # refunded in full

        async def listed(**filters: object) -> tuple[list[int], int]:
            query: dict = {"status": None, "search": None, "limit": 50, "offset": 0}
            rows, total = await orders.list_for_user(conn, user.id, **{**query, **filters})
            return [r.id for r in rows], total

        newest = ids[::-1]
        assert await listed() == (newest, 7)
        assert await listed(limit=3) == (newest[:3], 7)
        assert await listed(limit=3, offset=6) == (newest[6:], 7)
        assert await listed(offset=50) == ([], 7)
        assert await listed(status="Canceled") == ([ids[1]], 1)
        assert await listed(status="Completed") == ([], 0)
        assert await listed(search="a_b") == ([ids[0]], 1)  # `_` is no wildcard
        assert await listed(search="100%r") == ([ids[2]], 1)  # nor is `%`
        assert await listed(search="shop.TEST/up") == ([ids[4]], 1)  # case ignored
        assert await listed(search="back\\sl") == ([ids[5]], 1)
        assert await listed(search=f"  {ids[3]} ") == ([ids[3]], 1)  # digits: the order id
        assert await listed(search=str(theirs)) == ([], 0)  # another user's order
        assert await listed(search="7234567890123456789012345") == ([ids[6]], 1)  # past bigint
        assert await listed(search="   ") == (newest, 7)
        assert await listed(status="Pending", search="x.test/1") == ([ids[3], ids[2]], 2)

        rows, _ = await orders.list_for_user(
            conn, user.id, status=None, search="aXb", limit=1, offset=0
        )
        row = rows[0]
        assert (row.service, row.link, row.quantity, row.status, row.charge) == (
            7, "https://x.test/aXb", 101, "Canceled", 0,
        )  # fmt: skip
        assert row.service_name and row.created_at is not None
        assert (row.remains, row.start_count) == (101, 0)
        placed = await orders.list_for_user(conn, user.id, status=None, search=str(ids[0]),
                                            limit=1, offset=0)  # fmt: skip
        assert placed[0][0].charge == money.parse("1.25")
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"status": "Failed"}, "status must be one of"),
        ({"status": "canceled"}, "status must be one of"),
        ({"search": "x" * 201}, "search: at most 200 characters"),
        ({"limit": 0}, "limit must be between 1 and 200"),
        ({"limit": 201}, "limit must be between 1 and 200"),
        ({"offset": -1}, "offset at least 0"),
    ],
)
async def test_bad_filters_are_refused_before_any_query(
    filters: dict[str, object], message: str
) -> None:
    query: dict = {"status": None, "search": None, "limit": 50, "offset": 0, **filters}
    with pytest.raises(ValueError, match=message):
        await orders.list_for_user(None, 1, **query)  # type: ignore[arg-type]
