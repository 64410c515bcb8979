"""Each action's answer, once the caller is authenticated: one round trip to PostgreSQL at most.

Imports api.actions/validate, store (ledger, orders, outcomes, webhooks, catalog), money,
panelconf and errors. Returns (status, body); raises ApiError for anything the client must fix.
Every body is rendered here from the reply types of api.actions with their one encoder; store
answers with typed outcomes (ids and codes) and `outcomes.ERRORS` turns a code into its error.
An idempotent replay comes back as the outcome stored with the first answer and is rendered by
the same code, so it is byte-identical; a record stored before 012 comes back as its bytes
(outcome 'stored') and is answered as stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import asyncpg

from panelsrv import money, netsafe, panelconf
from panelsrv.api import actions as a
from panelsrv.api.validate import validate_add
from panelsrv.errors import ApiError, Code, bad_request
from panelsrv.store import ledger, orders, outcomes, webhooks
from panelsrv.store.catalog import Catalog, Panel, Service
from panelsrv.store.keycache import Principal
from panelsrv.store.pool import Pool

# A refused order inside a multi cancel or refill reply, by its code: built once.
_REFUSED: Final = {
    code: a.ErrorReply(error.message or "") for code, error in outcomes.ERRORS.items()
}


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs ~4x, per request
class Context:
    pool: Pool
    catalog: Catalog
    panel: Panel
    principal: Principal
    idempotency_header: str | None
    webhook_allow_http: bool = False
    webhook_allow_private: bool = False


async def respond(ctx: Context, action: a.Action) -> tuple[int, bytes]:
    match action:
        case a.Status():
            return await status(ctx, action)
        case a.Add():
            return await add(ctx, action)
        case a.Balance():
            return await balance(ctx)
        case a.Services():
            return services(ctx)
        case a.Cancel():
            return await cancel(ctx, action)
        case a.Refill():
            return await refill(ctx, action)
        case a.RefillStatus():
            return await refill_status(ctx, action)
        case a.WebhookAdd():
            return await webhook_add(ctx, action)
        case a.Webhooks():
            found = await webhooks.list_endpoints(ctx.pool, ctx.principal.user_id)
            return 200, a.encode_reply(
                [
                    a.WebhookItem(webhook=w.id, url=w.url, events=w.events, active=w.active)
                    for w in found
                ]
            )
        case a.WebhookDelete():
            if not await webhooks.delete(ctx.pool, ctx.principal.user_id, action.webhook):
                raise ApiError(Code.WEBHOOK_NOT_FOUND)
            return 200, a.encode_reply(a.WebhookDeleteReply(deleted=1))
    raise ApiError(Code.INCORRECT_ACTION)


def services(ctx: Context) -> tuple[int, bytes]:
    """From memory, no I/O: the handler answers it without a task."""
    p = ctx.principal
    return 200, ctx.catalog.listing(
        ctx.panel.id, p.user_id, p.discount_bp, p.overrides, render_services
    )


def render_services(offered: list[Service], discount_bp: int, overrides: dict[int, int]) -> bytes:
    """The `services` body at one price profile. Pre-encoded bytes by measurement: the catalog
    keeps what this returns per (panel, price profile) until the next reload (Catalog.listing),
    since rendering the bench's 167-service listing (37 KB) takes ~140 µs, ten times the whole
    request answered from the cache (~14 µs, bench/README.md)."""
    return a.encode_reply(
        [
            a.ServiceReply(
                service=s.public_id,
                name=s.name,
                type=s.type,
                category=s.category,
                rate=money.format(money.user_rate(s.rate, discount_bp, overrides.get(s.id))),
                min=s.min_qty,
                max=s.max_qty,
                dripfeed=s.dripfeed,
                refill=s.refill,
                cancel=s.cancel,
                avg_time=s.avg_time,
            )
            for s in offered
        ]
    )


def _as_list(ids: int | list[int]) -> list[int]:
    return [ids] if isinstance(ids, int) else ids


def _order_request(
    ctx: Context, action: a.Cancel | a.Refill
) -> tuple[list[int], bool, str | None, bytes]:
    """A cancel's or refill's orders, as a list; whether it asked in the single form; its
    idempotency key and the fingerprint stored with it (b"" without a key)."""
    ids = a.order_ids(action)
    key = a.idempotency_key(action.idempotency_key, ctx.idempotency_header)
    return _as_list(ids), isinstance(ids, int), key, a.fingerprint(action) if key else b""


def _placed(placed: ledger.Placement) -> tuple[int, bytes]:
    """An add's answer, placed now or before under its idempotency key: the order, or why not."""
    if placed.outcome == outcomes.OK:
        assert placed.order_id is not None
        return 200, a.encode_reply(a.AddReply(order=placed.order_id))
    if placed.outcome == outcomes.STORED:
        assert placed.status is not None and placed.body is not None
        return placed.status, placed.body
    raise ApiError(outcomes.ERRORS[placed.outcome], retry_after=placed.retry_after)


def _handled(handled: orders.Handled, single: bool, refill: bool) -> tuple[int, bytes]:
    """A cancel's or refill's answer, done now or before under its idempotency key: the single
    form's reply or refusal (400), or an item per order in the order asked."""
    if handled.outcome == outcomes.STORED:
        assert handled.status is not None and handled.body is not None
        return handled.status, handled.body
    if handled.outcome != outcomes.OK:
        raise ApiError(outcomes.ERRORS[handled.outcome])
    ids, refills, codes = handled.order_ids, handled.refill_ids, handled.codes
    assert ids is not None and refills is not None and codes is not None
    if single:
        if codes[0] is not None:
            raise ApiError(outcomes.ERRORS[codes[0]])
        if refill:
            assert refills[0] is not None
            return 200, a.encode_reply(a.RefillReply(refill=refills[0]))
        return 200, a.encode_reply(a.CancelReply(cancel=1))
    rows = zip(ids, refills, codes, strict=True)
    if refill:
        return 200, a.encode_reply([a.RefillItem(order=i, refill=_made(r, c)) for i, r, c in rows])
    return 200, a.encode_reply(
        [a.CancelItem(order=i, cancel=1 if c is None else _REFUSED[c]) for i, _, c in rows]
    )


def _made(refill: int | None, code: str | None) -> int | a.ErrorReply:
    """One order's entry in a multi refill reply: the refill created, or why none was."""
    if code is None:
        assert refill is not None
        return refill
    return _REFUSED[code]


async def add(ctx: Context, action: a.Add) -> tuple[int, bytes]:
    key = a.idempotency_key(action.idempotency_key, ctx.idempotency_header)
    p = ctx.principal
    try:
        service = ctx.catalog.resolve_service(ctx.panel.id, action.service)
        if service is None:
            raise ApiError(Code.INCORRECT_SERVICE)
        order = validate_add(
            action,
            service.type,
            service.min_qty,
            service.max_qty,
            service.dripfeed,
            datetime.now(UTC).date(),
        )
    except ApiError:
        # Whether an `add` passes depends on the catalog and the date, which may have changed
        # since a first attempt was placed: a retry must still get that answer, not a refusal
        # that would make a charged order look refused. Costs a lookup on refusals only.
        if key is not None:
            stored = await ledger.stored_placement(ctx.pool, p.user_id, key, a.fingerprint(action))
            if stored is not None:
                return _placed(stored)
        raise
    settings = ctx.panel.settings
    order_limit, limit_body = panelconf.order_ceiling(settings, p.tier)
    rate = money.user_rate(service.rate, p.discount_bp, p.overrides.get(service.id))
    charge = money.charge(rate, order.units)
    if charge > money.MAX_UNITS:
        raise ApiError(Code.NOT_ENOUGH_FUNDS)  # more than any wallet can hold
    placed = await ledger.place_order(
        ctx.pool,
        ledger.NewOrder(
            user_id=p.user_id,
            panel_id=ctx.panel.id,
            service_id=service.id,
            provider_id=service.provider_id,
            charge=charge,
            link=order.link,
            quantity=order.quantity,
            runs=order.runs,
            interval=order.interval,
            extras=order.extras,
            order_limit=order_limit,
            idempotency_key=key,
            fingerprint=a.fingerprint(action) if key else b"",
            link_guard=settings.duplicate_link_guard,
        ),
    )
    if placed.outcome == "limit":  # its 429 names the ceiling that was hit: prebuilt
        raise ApiError(
            outcomes.ERRORS[placed.outcome], retry_after=placed.retry_after, prebuilt=limit_body
        )
    return _placed(placed)


def _status_reply(row: asyncpg.Record, currency: str) -> a.StatusReply:
    return a.StatusReply(
        charge=money.format(row["charge"]),
        start_count=str(row["start_count"]),
        status=row["status"],
        remains=str(row["remains"]),
        currency=currency,
    )


async def status(ctx: Context, action: a.Status) -> tuple[int, bytes]:
    ids = a.order_ids(action)
    user, currency = ctx.principal.user_id, ctx.panel.currency
    if isinstance(ids, int):
        row = await orders.order_status(ctx.pool, user, ids)
        if row is None:
            raise ApiError(Code.INCORRECT_ORDER)
        return 200, a.encode_reply(_status_reply(row, currency))
    found = await orders.orders_status(ctx.pool, user, ids)
    missing = a.ErrorReply(Code.INCORRECT_ORDER.message or "")
    reply: a.StatusMany = {
        str(i): _status_reply(found[i], currency) if i in found else missing for i in ids
    }
    return 200, a.encode_reply(reply)


async def balance(ctx: Context) -> tuple[int, bytes]:
    units = await ledger.balance(ctx.pool, ctx.principal.user_id)
    reply = a.BalanceReply(balance=money.format(units or 0), currency=ctx.panel.currency)
    return 200, a.encode_reply(reply)


async def cancel(ctx: Context, action: a.Cancel) -> tuple[int, bytes]:
    asked, single, key, fingerprint = _order_request(ctx, action)
    handled = await orders.cancel(ctx.pool, ctx.principal.user_id, asked, single, key, fingerprint)
    return _handled(handled, single, refill=False)


async def refill(ctx: Context, action: a.Refill) -> tuple[int, bytes]:
    asked, single, key, fingerprint = _order_request(ctx, action)
    settings = ctx.panel.settings
    handled = await orders.refill(
        ctx.pool,
        ctx.principal.user_id,
        asked,
        single,
        settings.refill_max_per_order,
        settings.refill_cooldown_hours,
        key,
        fingerprint,
    )
    return _handled(handled, single, refill=True)


async def refill_status(ctx: Context, action: a.RefillStatus) -> tuple[int, bytes]:
    ids = a.refill_ids(action)
    user = ctx.principal.user_id
    if isinstance(ids, int):
        found = await orders.refills_status(ctx.pool, user, [ids])
        if ids not in found:
            raise ApiError(Code.REFILL_NOT_FOUND)
        return 200, a.encode_reply(a.RefillStatusReply(status=found[ids]))
    found = await orders.refills_status(ctx.pool, user, ids)
    missing = a.ErrorReply(Code.REFILL_NOT_FOUND.message or "")
    return 200, a.encode_reply(
        [a.RefillStatusItem(refill=i, status=found.get(i, missing)) for i in ids]
    )


async def webhook_add(ctx: Context, action: a.WebhookAdd) -> tuple[int, bytes]:
    webhook_id, secret = await add_webhook(
        ctx.pool,
        ctx.principal.user_id,
        action.url,
        action.events,
        allow_http=ctx.webhook_allow_http,
        allow_private=ctx.webhook_allow_private,
    )
    return 200, a.encode_reply(a.WebhookAddReply(webhook=webhook_id, secret=secret))


async def add_webhook(
    pool: Pool,
    user_id: int,
    url: str,
    events_text: str | None,
    *,
    allow_http: bool,
    allow_private: bool,
) -> tuple[int, str]:
    """A user's new webhook (id, signing secret) by the API's rules, from the API's
    `webhook_add` or the account pages alike: an ApiError names what is wrong."""
    if len(url) > a.URL_MAX:  # the API's decoder enforces these; the pages' forms do not
        raise bad_request("url", f"at most {a.URL_MAX} characters")
    if events_text is not None and len(events_text) > a.EVENTS_MAX:
        raise bad_request("events", f"at most {a.EVENTS_MAX} characters")
    events = list(webhooks.EVENT_TYPES)
    if events_text is not None:
        events = list(dict.fromkeys(e.strip() for e in events_text.split(",") if e.strip()))
        unknown = [e for e in events if e not in webhooks.EVENT_TYPES]
        if unknown or not events:
            raise bad_request(
                "events", "comma-separated list of " + ", ".join(webhooks.EVENT_TYPES)
            )
    try:
        host, port = netsafe.check_url(url, allow_http)
        await netsafe.resolve(host, port, allow_private)
    except netsafe.UnsafeUrl as exc:
        raise bad_request("url", str(exc)) from None
    try:
        return await webhooks.add(pool, user_id, url, events)
    except webhooks.TooManyWebhooks:
        raise bad_request("url", f"at most {webhooks.MAX_PER_USER} webhooks per user") from None
