"""What goes on the wire has one owner: every body is a reply type of api.actions rendered by
the one encoder. In process against a real PostgreSQL (api.respond with the store's real
statements): `add`, `cancel` and `refill` answer, single and multi, exactly as 002 spelled them
in SQL; a replay is byte-identical to the first answer; a record stored before 012 (its body
written by hand, as 002 wrote it) replays as stored; every reply type is one the server uses."""

from __future__ import annotations

import ast
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import orjson
import pytest

from panelsrv import errors, money
from panelsrv.api import actions as a
from panelsrv.api import respond
from panelsrv.errors import ApiError
from panelsrv.store import catalog
from panelsrv.store.keycache import Principal
from tests.store.helpers import World, new_user

PACKAGE = Path(__file__).resolve().parent.parent.parent / "panelsrv"
NO_CANCEL = b'{"error":"Cancel is not available"}'
NO_REFILL = b'{"error":"Refill is not available"}'
NO_ORDER = b'{"error":"Incorrect order ID"}'
FUNDS = b'{"error":"Not enough funds on balance"}'


class Shop:
    """A World, its catalog, and `ask`: the answer of api.respond, errors rendered."""

    def __init__(self, w: World, found: catalog.Catalog) -> None:
        self.w, self.catalog = w, found
        self.user_id = w.user.id

    async def ask(self, action: a.Action, as_user: int | None = None) -> tuple[int, bytes]:
        p = Principal(0, as_user or self.user_id, self.w.panel_id, 0, {}, "", None)
        ctx = respond.Context(
            self.w.pool, self.catalog, self.catalog.panels[self.w.panel_id], p, None
        )
        try:
            return await respond.respond(ctx, action)
        except ApiError as exc:
            return exc.status, exc.body()

    def add(self, link: str, key: str | None = None) -> a.Add:
        return a.Add(
            key="k", service=self.w.service_id, link=link, quantity=1000, idempotency_key=key
        )

    async def completed(self, count: int) -> list[int]:
        ids = await self.w.place(count=count)
        await self.w.conn.execute("UPDATE orders SET status = 'Completed' WHERE id = ANY($1)", ids)
        return ids

    async def store_as_002(
        self, action: a.Add | a.Cancel | a.Refill, status: int, body: bytes
    ) -> None:
        """A record as 002 wrote it under the action's key: the rendered body, no outcome."""
        await self.w.conn.execute(
            "INSERT INTO idempotency (user_id, key, fingerprint, status, body)"
            " VALUES ($1, $2, $3, $4, $5)",
            self.user_id, action.idempotency_key, a.fingerprint(action), status, body,
        )  # fmt: skip


@contextlib.asynccontextmanager
async def opened(database_url: str) -> AsyncIterator[Shop]:
    async with World(database_url) as w:
        yield Shop(w, await catalog.load(w.pool))


async def test_add_answers_as_002_did_and_replays_byte_for_byte(database_url: str) -> None:
    async with opened(database_url) as shop:
        first = await shop.ask(shop.add("https://x.test/add", key="add-1"))
        order = await shop.w.conn.fetchval(
            "SELECT max(id) FROM orders WHERE user_id = $1", shop.user_id
        )
        assert first == (200, b'{"order":%d}' % order)
        assert await shop.ask(shop.add("https://x.test/add", key="add-1")) == first
        # A retry refused before it reaches PostgreSQL (the service is gone meanwhile) still finds
        # the stored answer.
        gone = catalog.Catalog(shop.catalog.panels, shop.catalog.by_domain, {}, {})
        shop.catalog, kept = gone, shop.catalog
        assert await shop.ask(shop.add("https://x.test/add", key="add-1")) == first
        shop.catalog = kept
        # 402, stored and replayed the same way.
        poor = await new_user(shop.w.conn, shop.catalog.panels[shop.w.panel_id].domain)
        refused = await shop.ask(shop.add("https://x.test/poor", key="add-2"), as_user=poor.id)
        assert refused == (402, FUNDS)
        assert (
            await shop.ask(shop.add("https://x.test/poor", key="add-2"), as_user=poor.id) == refused
        )
        codes = await shop.w.conn.fetchval(
            "SELECT codes FROM idempotency WHERE user_id = $1 AND key = 'add-2'", poor.id
        )
        assert codes == ["funds"]


async def test_cancel_answers_as_002_did_and_replays_byte_for_byte(database_url: str) -> None:
    async with opened(database_url) as shop:
        pending, other = await shop.w.place(count=2)
        (done,) = await shop.completed(1)
        single = a.Cancel(key="k", order=pending, idempotency_key="c-1")
        first = await shop.ask(single)
        assert first == (200, b'{"cancel":1}')
        assert await shop.ask(single) == first
        many = a.Cancel(key="k", orders=f"{other},{done},999999999", idempotency_key="c-2")
        first = await shop.ask(many)
        expected = (
            b'[{"order":%d,"cancel":1},{"order":%d,"cancel":%s},{"order":999999999,"cancel":%s}]'
        )
        assert first == (200, expected % (other, done, NO_CANCEL, NO_ORDER))
        assert await shop.ask(many) == first
        # A refused single order is a 400 and is not stored: once it qualifies, the retry is served.
        refused = a.Cancel(key="k", order=done, idempotency_key="c-3")
        assert await shop.ask(refused) == (400, NO_CANCEL)
        stored = "SELECT count(*) FROM idempotency WHERE user_id = $1 AND key = 'c-3'"
        assert await shop.w.conn.fetchval(stored, shop.user_id) == 0


async def test_refill_answers_as_002_did_and_replays_byte_for_byte(database_url: str) -> None:
    async with opened(database_url) as shop:
        one, two = await shop.completed(2)
        (pending,) = await shop.w.place()
        single = a.Refill(key="k", order=one, idempotency_key="r-1")
        first = await shop.ask(single)
        refill = await shop.w.conn.fetchval("SELECT id FROM refills WHERE order_id = $1", one)
        assert first == (200, b'{"refill":%d}' % refill)
        assert await shop.ask(single) == first
        many = a.Refill(key="k", orders=f"{two},{pending}", idempotency_key="r-2")
        first = await shop.ask(many)
        refill = await shop.w.conn.fetchval("SELECT id FROM refills WHERE order_id = $1", two)
        expected = b'[{"order":%d,"refill":%d},{"order":%d,"refill":%s}]'
        assert first == (200, expected % (two, refill, pending, NO_REFILL))
        assert await shop.ask(many) == first
        assert await shop.ask(a.Refill(key="k", order=pending)) == (400, NO_REFILL)


async def test_records_stored_before_012_replay_their_bytes_as_stored(database_url: str) -> None:
    """A server upgraded mid-day replays what the previous version stored: its body, however
    it reads (these name orders that were never placed, so only the stored bytes can say it)."""
    async with opened(database_url) as shop:
        (order,) = await shop.w.place()
        cases: list[tuple[a.Add | a.Cancel | a.Refill, int, bytes]] = [
            (shop.add("https://x.test/old", key="old-add"), 200, b'{"order":424242}'),
            (shop.add("https://x.test/old-poor", key="old-funds"), 402, FUNDS),
            (a.Cancel(key="k", order=order, idempotency_key="old-cancel"), 200, b'{"cancel":1}'),
            (
                a.Cancel(key="k", orders=f"{order},7", idempotency_key="old-cancels"),
                200,
                b'[{"order":%d,"cancel":1},{"order":7,"cancel":%s}]' % (order, NO_ORDER),
            ),
            (
                a.Refill(key="k", order=order, idempotency_key="old-refill"),
                200,
                b'{"refill":31337}',
            ),
            (
                a.Refill(key="k", orders=f"{order}", idempotency_key="old-refills"),
                200,
                b'[{"order":%d,"refill":31337}]' % order,
            ),
        ]
        balance = await shop.w.conn.fetchval(
            "SELECT balance FROM wallets WHERE user_id = $1", shop.user_id
        )
        for action, status, body in cases:
            await shop.store_as_002(action, status, body)
            assert await shop.ask(action) == (status, body), action
        # Replays only: nothing placed, canceled or refilled.
        assert await shop.w.status(order) == "Pending"
        assert (
            await shop.w.conn.fetchval("SELECT count(*) FROM refills WHERE order_id = $1", order)
            == 0
        )
        after = await shop.w.conn.fetchval(
            "SELECT balance FROM wallets WHERE user_id = $1", shop.user_id
        )
        assert after == balance
        # And the add refused before PostgreSQL finds its old record too.
        shop.catalog = catalog.Catalog(shop.catalog.panels, shop.catalog.by_domain, {}, {})
        assert await shop.ask(cases[0][0]) == (200, b'{"order":424242}')


async def test_services_reads_as_before(database_url: str) -> None:
    async with opened(database_url) as shop:
        status, body = await shop.ask(a.Services(key="k"))
        listed = {s["service"]: s for s in orjson.loads(body)}
        mine = listed[shop.w.service_id]
        assert status == 200 and list(mine) == [
            "service", "name", "type", "category", "rate", "min", "max", "dripfeed", "refill",
            "cancel", "avg_time",
        ]  # fmt: skip
        assert mine["rate"] == money.format(money.parse("1.00")) and mine["cancel"] is True
        # Built once per price profile: the same bytes object again.
        assert (await shop.ask(a.Services(key="k")))[1] is body


@pytest.mark.parametrize(
    "message",
    ["Incorrect order ID", 'q"uote\\back/slash', "tab\tnl\nnul\x00del\x7f", "é — 🎉 \u2028"],
)
def test_error_bodies_are_the_bytes_orjson_made(message: str) -> None:
    """The error bodies moved from orjson to the replies' encoder without changing a byte."""
    assert errors.error_body(message) == orjson.dumps({"error": message})


def test_every_reply_type_is_one_the_server_answers_with() -> None:
    """No reply type only a test uses: each is named by the code outside api/actions.py."""
    replies = {
        name
        for name, value in vars(a).items()
        if isinstance(value, type) and issubclass(value, msgspec.Struct) and name.endswith(
            ("Reply", "Item")
        ) and value is not a.Reply
    }  # fmt: skip
    assert {"AddReply", "CancelReply", "CancelItem", "RefillReply", "RefillItem"} <= replies
    used = set()
    for path in PACKAGE.rglob("*.py"):
        if path.name == "actions.py" and path.parent.name == "api":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                used.add(node.attr)
            elif isinstance(node, ast.Name):
                used.add(node.id)
    assert replies - used == set()


def test_the_response_path_encodes_with_one_library() -> None:
    """orjson stays where it serves something else (jsonb in db.py, the worker, the CLI)."""
    for module in ("errors.py", "api/respond.py", "api/actions.py", "store/catalog.py"):
        imported = {
            alias.name
            for node in ast.walk(ast.parse((PACKAGE / module).read_text()))
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        } | {
            node.module
            for node in ast.walk(ast.parse((PACKAGE / module).read_text()))
            if isinstance(node, ast.ImportFrom) and node.module
        }
        assert "orjson" not in imported, module
