"""`Api.handle` in process: a real PostgreSQL pool, key cache and catalog, a hand-built
`panelsrv.http.request.Request`, no sockets.

Every error code the handler can answer with is produced here once, with its status and body
from the table in panelsrv/errors.py (`OUTCOMES`); the codes only the transport answers are
named in `NOT_THE_HANDLERS`, and a code in neither fails `test_every_code_is_covered`. Then
`legacy_errors` (business errors as 200, the body unchanged; 429 and 5xx as they are) and the
database outage (503 with Retry-After, however the request met it).
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import asyncpg
import pytest

from panelsrv.api.handler import UNAVAILABLE_RETRY_AFTER, Api
from panelsrv.errors import ERROR_BODIES, Code, error_body, retry_after_header
from panelsrv.http.request import Request
from panelsrv.store import admin, catalog, keys, ledger
from panelsrv.store.keycache import KeyCache
from panelsrv.store.pool import Pool
from tests.store.helpers import World, new_service, new_user, order_of

FORM = b"application/x-www-form-urlencoded"
NOWHERE = 10**15
LINK = "https://x.test/handler"


@dataclass
class State:
    catalog: catalog.Catalog


@dataclass
class Rig:
    """A World (panel, user, cancel/refill service), the user's raw key, and an Api over them;
    `wait` is what the per-user cap says (seconds), `strikes` the addresses it was told of,
    `usage` where it notes the keys it admitted."""

    w: World
    url: str
    domain: str
    key: str
    state: State
    strikes: list[str] = field(default_factory=list)
    wait: float = 0.0
    usage: keys.Usage = field(default_factory=keys.Usage)
    keys: KeyCache = field(init=False)
    api: Api = field(init=False)

    def __post_init__(self) -> None:
        self.keys = KeyCache(self.w.pool, 60, 5)
        self.keys.trust_until(time.monotonic() + 3600)  # as the invalidation listener vouches
        self.api = self.api_over(self.w.pool)

    def api_over(
        self, pool: Pool, keys: KeyCache | None = None,
        user_wait: Callable[[int, object], float] | None = None,
    ) -> Api:  # fmt: skip
        """An Api as the server builds one, over the rig's key cache unless told otherwise,
        telling the rig its strikes; its per-user cap answers `wait` unless `user_wait` says
        otherwise."""
        return Api(
            pool=pool, state=self.state, keys=keys or self.keys, default_panel="",
            sign_max_skew=300, strike=self.strikes.append,
            user_wait=user_wait or (lambda _user, _tier: self.wait), usage=self.usage,
        )  # fmt: skip

    async def reload(self) -> None:
        self.state.catalog = await catalog.load(self.w.pool)

    async def ask(
        self, fields: dict[str, Any] | None = None, *, body: bytes | None = None,
        ctype: bytes = FORM, method: bytes = b"POST", idempotency_key: str | None = None,
        api: Api | None = None, client_ip: str = "192.0.2.1",
    ) -> tuple[int, bytes, bytes]:  # fmt: skip
        req = Request()
        req.method, req.host, req.client_ip = method, self.domain, client_ip
        req.content_type = ctype
        req.body = body if body is not None else urlencode(fields or {}).encode()
        req.idempotency_key = idempotency_key
        answer = (api or self.api).handle(req)
        return await answer if inspect.isawaitable(answer) else answer  # type: ignore[return-value]

    def fields(self, action: str, **more: object) -> dict[str, Any]:
        return {"key": self.key, "action": action, **more}

    def add(self, **more: object) -> dict[str, Any]:
        base = {"service": self.w.service_id, "link": LINK, "quantity": 1000}
        return self.fields("add", **{**base, **more})


@contextlib.asynccontextmanager
async def rigged(database_url: str, **panel: str) -> AsyncIterator[Rig]:
    async with World(database_url) as w:
        domain = await w.conn.fetchval("SELECT domain FROM panels WHERE id = $1", w.panel_id)
        for name, value in panel.items():
            await admin.set_panel(w.conn, domain, name, value)
        key = (await keys.create(w.conn, w.user.id)).raw
        yield Rig(w, database_url, domain, key, State(await catalog.load(w.pool)))


async def _plain_order(r: Rig) -> int:
    """An order of a service sold without cancel or refill."""
    plain = await new_service(r.w.conn, provider=str(r.w.provider_id), provider_service="2")
    await r.reload()
    order = order_of(r.w.panel_id, r.w.user.id, plain, provider_id=r.w.provider_id,
                     order_limit=10**6)  # fmt: skip
    placed = await ledger.place_order(r.w.conn, order)
    assert placed.order_id is not None
    return placed.order_id


async def _busy(r: Rig) -> tuple[int, bytes, bytes]:
    """The idempotency key held by a call still running (its advisory lock, taken elsewhere)."""
    other = await asyncpg.connect(r.url)
    try:
        async with other.transaction():
            await other.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended('idem:' || $1 || ':' || $2, 0))",
                str(r.w.user.id), "held",
            )  # fmt: skip
            return await r.ask(r.add(), idempotency_key="held")
    finally:
        await other.close()


async def _mismatch(r: Rig) -> tuple[int, bytes, bytes]:
    assert (await r.ask(r.add(), idempotency_key="k1"))[0] == 200
    return await r.ask(r.add(quantity=2000), idempotency_key="k1")


async def _duplicate_link(r: Rig) -> tuple[int, bytes, bytes]:
    await admin.set_panel(r.w.conn, r.domain, "duplicate_link_guard", "true")
    await r.reload()
    assert (await r.ask(r.add()))[0] == 200
    return await r.ask(r.add())


async def _poor(r: Rig) -> tuple[int, bytes, bytes]:
    poor = await new_user(r.w.conn, r.domain, balance="0.10")
    poor_key = (await keys.create(r.w.conn, poor.id)).raw
    return await r.ask({**r.add(), "key": poor_key})


async def _get_with_body(r: Rig) -> tuple[int, bytes, bytes]:
    await admin.set_panel(r.w.conn, r.domain, "accept_get", "true")
    await r.reload()
    return await r.ask(method=b"GET", body=b"x=1")


async def _too_many(r: Rig) -> tuple[int, bytes, bytes]:
    r.wait = 2.4
    return await r.ask(r.fields("balance"))


async def _internal(r: Rig) -> tuple[int, bytes, bytes]:
    def broken(_user: int, _tier: object) -> float:
        raise RuntimeError("a bug")

    api = r.api_over(r.w.pool, user_wait=broken)
    return await r.ask(r.fields("balance"), api=api)


async def _unavailable(r: Rig) -> tuple[int, bytes, bytes]:
    down = down_pool()  # the key is not cached: its lookup meets the outage
    return await r.ask(r.fields("balance"), api=r.api_over(down, keys=KeyCache(down, 60, 5)))


def down_pool() -> Pool:
    """A pool whose every connection attempt fails as an unreachable database does."""

    async def refused() -> asyncpg.Connection:
        raise ConnectionRefusedError(111, "Connection refused")

    return Pool(refused, 2)


Case = Callable[[Rig], Awaitable[tuple[int, bytes, bytes]]]


def asking(fields: Callable[[Rig], dict[str, Any]], **how: Any) -> Case:
    async def case(r: Rig) -> tuple[int, bytes, bytes]:
        return await r.ask(fields(r), **how)

    return case


async def _cancel_unavailable(r: Rig) -> tuple[int, bytes, bytes]:
    return await r.ask(r.fields("cancel", order=await _plain_order(r)))


async def _refill_unavailable(r: Rig) -> tuple[int, bytes, bytes]:
    order = await _plain_order(r)
    await r.w.conn.execute("UPDATE orders SET status = 'Completed' WHERE id = $1", order)
    return await r.ask(r.fields("refill", order=order))


# Each code the handler answers with: how a request meets it, and the body it gets (None: the
# table's prebuilt body for the code).
OUTCOMES: dict[Code, tuple[Case, bytes | None]] = {
    Code.BAD_REQUEST: (asking(lambda r: {"action": "balance"}), error_body("key: required")),
    Code.MALFORMED_BODY: (
        asking(lambda r: {}, body=b'{"key": "x", "action": ', ctype=b"application/json"),
        None,
    ),
    Code.INCORRECT_ACTION: (asking(lambda r: r.fields("nope")), None),
    Code.INCORRECT_SERVICE: (asking(lambda r: r.add() | {"service": NOWHERE}), None),
    Code.INCORRECT_ORDER: (asking(lambda r: r.fields("status", order=NOWHERE)), None),
    Code.REFILL_NOT_FOUND: (asking(lambda r: r.fields("refill_status", refill=NOWHERE)), None),
    Code.CANCEL_UNAVAILABLE: (_cancel_unavailable, None),
    Code.REFILL_UNAVAILABLE: (_refill_unavailable, None),
    Code.WEBHOOK_NOT_FOUND: (asking(lambda r: r.fields("webhook_delete", webhook=NOWHERE)), None),
    Code.DUPLICATE_LINK: (_duplicate_link, None),
    Code.IDEMPOTENCY_MISMATCH: (_mismatch, None),
    Code.DUPLICATE_REQUEST: (_busy, None),
    Code.GET_WITH_BODY: (_get_with_body, None),
    Code.USE_POST: (asking(lambda r: {}, method=b"GET"), None),  # a panel without accept_get
    Code.INVALID_KEY: (asking(lambda r: r.fields("balance") | {"key": keys.generate()}), None),
    Code.INVALID_SIGNATURE: (asking(lambda r: r.fields("balance", sign="00" * 32)), None),
    Code.NOT_ENOUGH_FUNDS: (_poor, None),
    Code.TOO_MANY_REQUESTS: (_too_many, None),
    Code.INTERNAL: (_internal, None),
    Code.UNAVAILABLE: (_unavailable, None),
}
# Answered by the transport before (or instead of) the handler: routes, framing, sizes.
NOT_THE_HANDLERS = {
    Code.NOT_FOUND, Code.USE_GET, Code.USE_GET_OR_POST, Code.BODY_TOO_LARGE,
    Code.HEADERS_TOO_LARGE, Code.NOT_IMPLEMENTED,
}  # fmt: skip
RETRY_AFTER = {Code.TOO_MANY_REQUESTS: 3, Code.UNAVAILABLE: UNAVAILABLE_RETRY_AFTER}


def test_every_code_is_covered() -> None:
    assert not set(OUTCOMES) & NOT_THE_HANDLERS
    assert set(OUTCOMES) | NOT_THE_HANDLERS == set(Code)


@pytest.mark.parametrize("code", list(OUTCOMES), ids=lambda c: c.name)
async def test_each_outcome_has_its_status_and_body(database_url: str, code: Code) -> None:
    case, body = OUTCOMES[code]
    async with rigged(database_url) as r:
        status, got, extra = await case(r)
    assert (status, got) == (code.status, body or ERROR_BODIES[code])
    if code in RETRY_AFTER:
        assert extra == retry_after_header(RETRY_AFTER[code])
    elif code is Code.USE_POST:
        assert extra == b"Allow: POST\r\n"
    else:
        assert extra == b""


@pytest.mark.parametrize("code", list(OUTCOMES), ids=lambda c: c.name)
async def test_legacy_errors_answer_business_errors_200_and_leave_429_and_5xx(
    database_url: str, code: Code
) -> None:
    case, body = OUTCOMES[code]
    async with rigged(database_url, legacy_errors="true") as r:
        status, got, _ = await case(r)
    business = 400 <= code.status < 500 and code not in (Code.TOO_MANY_REQUESTS, Code.USE_POST)
    assert got == (body or ERROR_BODIES[code])  # the body is never changed
    assert status == (200 if business else code.status)


async def test_an_outage_met_after_the_key_was_cached_is_a_503_too(database_url: str) -> None:
    # The key is resolved through a working pool; the action then meets a pool that is down.
    async with rigged(database_url) as r:
        assert (await r.ask(r.fields("balance")))[0] == 200
        assert r.keys.cached(r.key) != (False, None)  # answered from memory from now on
        down = r.api_over(down_pool())
        status, body, extra = await r.ask(r.fields("status", order=NOWHERE), api=down)
    assert (status, body, extra) == (
        503, ERROR_BODIES[Code.UNAVAILABLE], retry_after_header(UNAVAILABLE_RETRY_AFTER)
    )  # fmt: skip


async def test_bad_keys_and_signatures_are_struck_and_nothing_else_is(database_url: str) -> None:
    async with rigged(database_url) as r:
        await r.ask(r.fields("balance") | {"key": keys.generate()})
        await r.ask(r.fields("balance", sign="00" * 32))
        await r.ask(r.fields("nope"))
        assert r.strikes == ["192.0.2.1", "192.0.2.1"]


async def last_used(r: Rig, raw: str) -> object:
    return await r.w.conn.fetchval(
        "SELECT last_used_at FROM api_keys WHERE hash = $1", keys.digest(raw)
    )


async def test_a_key_used_outside_its_allowed_addresses_is_an_invalid_key_and_struck(
    database_url: str,
) -> None:
    async with rigged(database_url) as r:
        await r.w.conn.execute(
            "UPDATE api_keys SET allowed_ips = '{198.51.100.0/24,2001:db8::/32}' WHERE hash = $1",
            keys.digest(r.key),
        )
        invalid = (401, ERROR_BODIES[Code.INVALID_KEY], b"")
        assert await r.ask(r.fields("balance"), client_ip="192.0.2.1") == invalid  # a lookup
        assert (await r.ask(r.fields("balance"), client_ip="198.51.100.9"))[0] == 200
        assert r.keys.cached(r.key)[0]  # from here on, answered from memory
        assert (await r.ask(r.fields("balance"), client_ip="2001:db8::1"))[0] == 200
        assert await r.ask(r.fields("balance"), client_ip="198.51.101.9") == invalid
        assert r.strikes == ["192.0.2.1", "198.51.101.9"]
        assert await r.usage.flush(r.w.pool) == 1  # the key, noted by the answered requests
        await r.ask(r.fields("balance"), client_ip="192.0.2.1")
        assert await r.usage.flush(r.w.pool) == 0  # a refused use is no use


async def test_the_keys_admitted_are_written_as_used_by_the_flush_and_never_per_request(
    database_url: str,
) -> None:
    async with rigged(database_url) as r:
        other = (await keys.create(r.w.conn, r.w.user.id)).raw
        for _ in range(3):
            assert (await r.ask(r.fields("balance")))[0] == 200
        assert (await r.ask(r.fields("services")))[0] == 200  # answered without a task
        assert (await r.ask(r.fields("balance", key=other, sign="00" * 32)))[0] == 401
        assert await last_used(r, r.key) is None  # the requests wrote nothing
        assert await r.usage.flush(r.w.pool) == 1  # one key, however many requests
        assert await last_used(r, r.key) is not None
        assert await last_used(r, other) is None  # its signature failed: not admitted
