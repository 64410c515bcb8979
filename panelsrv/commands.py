"""The admin commands: each takes the parsed arguments and a migrated connection and returns
(JSON document, human line). Printing, exit codes and the database's lifetime belong to cli.py.

Imports the store. Bad input raises `admin.InputError` (exit 2) before anything is written.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from panelsrv import money, panelconf
from panelsrv.client.answers import ProviderFailure, usable_id
from panelsrv.store import accounts, admin, db, held, keys, ledger
from panelsrv.worker import importer
from panelsrv.worker.providers import MAX_MARKUP_PERCENT, Provider

Result = tuple[Any, str]


class CommandFailed(Exception):
    """Something outside the operator's input failed (exit 1)."""


Command = Callable[[argparse.Namespace, asyncpg.Connection], Awaitable[Result]]


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


async def migrate(args: argparse.Namespace, conn: asyncpg.Connection) -> Result:
    # open_migrated() has applied whatever was pending before we got here.
    versions = await db.applied_migrations(conn)
    return {"migrations": versions}, f"schema up to date ({versions[-1]})"


async def panel_add(args: argparse.Namespace, conn: asyncpg.Connection) -> Result:
    panel_id, domain, currency = await admin.add_panel(conn, args.domain, args.currency)
    return (
        {"panel": panel_id, "domain": domain, "currency": currency},
        f"panel {panel_id}: {domain} ({currency})",
    )


async def panel_set(args: argparse.Namespace, conn: asyncpg.Connection) -> Result:
    result = await admin.set_panel(conn, args.domain, args.name, args.value)
    return result, f"panel {result['domain']}: {args.name} = {args.value}"


async def panel_fx(args: argparse.Namespace, conn: asyncpg.Connection) -> Result:
    rate = None if args.remove else args.rate
    panel_id, currency, own = await admin.set_exchange_rate(conn, args.domain, args.currency, rate)
    if rate is None:
        return (
            {"panel": panel_id, "currency": currency, "rate": None},
            f"panel {args.domain}: services priced in {currency} are no longer offered",
        )
    return (
        {"panel": panel_id, "currency": currency, "rate": rate.strip()},
        f"panel {args.domain}: services priced in {currency} offered at 1 {currency} = "
        f"{rate.strip()} {own}",
    )


def _tier_shown(tier: str | None) -> str:
    return f"tier {tier}" if tier is not None else "the default per-user cap"


async def user_add(args: argparse.Namespace, conn: asyncpg.Connection) -> Result:
    user, opening = await admin.add_user(
        conn, args.email, args.domain, args.balance, args.discount, args.tier
    )
    shown = money.format(opening)
    return (
        {
            "user": user.id,
            "email": user.email,
            "balance": shown,
            "currency": user.currency,
            "tier": args.tier,
        },
        f"user {user.id}: {user.email}, balance {shown} {user.currency}, {_tier_shown(args.tier)}",
    )


async def user_set_tier(args: argparse.Namespace, conn: asyncpg.Connection) -> Result:
    user, tier = await admin.set_user_tier(conn, args.email, None if args.default else args.tier)
    return (
        {"user": user.id, "email": user.email, "tier": tier},
        f"user {user.id}: {user.email} is on {_tier_shown(tier)} (every server, at once)",
    )


def _tier_line(t: dict[str, Any]) -> str:
    return (
        f"{t['name']} on {t['panel']}: {panelconf.rate_text(t['rate'])} requests/s, "
        f"burst {t['burst']}, {t['orders']} orders/min ({t['users']} users)"
    )


async def tier_add(args: argparse.Namespace, conn: asyncpg.Connection) -> Result:
    tier = await admin.add_tier(conn, args.domain, args.name, args.rate, args.burst, args.orders)
    return tier, f"tier {_tier_line(tier)}"


async def tier_set(args: argparse.Namespace, conn: asyncpg.Connection) -> Result:
    tier = await admin.set_tier(conn, args.domain, args.name, args.rate, args.burst, args.orders)
    return tier, f"tier {_tier_line(tier)} (every server, at once)"


async def tier_list(args: argparse.Namespace, conn: asyncpg.Connection) -> Result:
    tiers = await admin.list_tiers(conn, args.domain)
    return tiers, "\n".join(_tier_line(t) for t in tiers) or "no tiers"


def _invite_base(base_url: str | None, domain: str) -> str:
    """Where the link points: `base_url` (http or https, a host, no query, fragment or
    credentials; a trailing slash dropped), else https://<the panel's domain>."""
    if base_url is None:
        return f"https://{domain}"
    url = base_url.strip()
    try:
        parts = urlsplit(url)
        usable = parts.port is None or parts.port > 0  # .port raises on one out of range
    except ValueError:
        usable = False
    if not (
        usable
        and parts.scheme in ("http", "https")
        and parts.hostname
        and parts.username is None
        and not any(c in url for c in "?# \t")
    ):
        raise admin.InputError(
            f"--base-url {base_url!r}: an http:// or https:// URL with a host and no query"
        )
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


async def user_invite(args: argparse.Namespace, conn: asyncpg.Connection) -> Result:
    user = await admin.user_by_email(conn, args.email)
    base = _invite_base(args.base_url, await admin.panel_domain(conn, user.panel_id))
    token = await accounts.create_invite(conn, user.id)
    link = f"{base}/account/set-password?token={token}"
    hours = accounts.INVITE_TTL // 3600
    return (
        {"link": link},
        f"{link}\n(for {user.email}: works once, for {hours} h; earlier links stop working)",
    )


async def key_create(args: argparse.Namespace, conn: asyncpg.Connection) -> Result:
    user = await admin.user_by_email(conn, args.email)
    try:
        allowed = keys.parse_allowed(",".join(args.allow))
        new = await keys.create(conn, user.id, args.label, allowed)
    except (ValueError, keys.TooManyKeys) as exc:
        raise admin.InputError(str(exc)) from None
    return (
        {
            "key": new.raw,
            "prefix": new.prefix,
            "user": user.id,
            "label": args.label.strip(),
            "allowed": allowed,
        },
        f"{new.raw}\n(shown once; prefix {new.prefix} identifies it in `key list`/`key revoke`)",
    )


async def key_list(args: argparse.Namespace, conn: asyncpg.Connection) -> Result:
    user = await admin.user_by_email(conn, args.email)
    found = await keys.list_keys(conn, user.id)
    doc = [
        {
            "prefix": k.prefix,
            "label": k.label,
            "allowed": k.allowed,
            "created": _iso(k.created),
            "last_used": _iso(k.last_used),
            "revoked": _iso(k.revoked),
        }
        for k in found
    ]
    lines = [
        f"{k['prefix']}  created {k['created']}  "
        + (f"revoked {k['revoked']}" if k["revoked"] else "active")
        + f"  last used {k['last_used'] or 'never'}"
        + (f"  label {k['label']!r}" if k["label"] else "")
        + (f"  allowed {','.join(k['allowed'])}" if k["allowed"] else "  any address")
        for k in doc
    ]
    return doc, "\n".join(lines) or f"no keys for {user.email}"


async def key_revoke(args: argparse.Namespace, conn: asyncpg.Connection) -> Result:
    revoked = await keys.revoke(conn, args.prefix)
    if revoked is None:
        raise admin.InputError(f"no key with prefix {args.prefix!r}")
    return {"prefix": args.prefix, "revoked": _iso(revoked)}, f"key {args.prefix} revoked"


async def funds_add(args: argparse.Namespace, conn: asyncpg.Connection) -> Result:
    user, entry = await admin.add_funds(conn, args.email, args.amount, args.memo)
    shown = money.format(entry.balance)
    return (
        {"user": user.id, "balance": shown, "entry": entry.id},
        f"user {user.id}: balance {shown} {user.currency} (ledger entry {entry.id})",
    )


async def provider_add(args: argparse.Namespace, conn: asyncpg.Connection) -> Result:
    provider_id = await admin.add_provider(
        conn, args.name, args.url, args.key, args.currency, args.honours_idempotency
    )
    return {
        "provider": provider_id,
        "name": args.name.strip(),
    }, f"provider {provider_id}: {args.name}"


async def service_add(args: argparse.Namespace, conn: asyncpg.Connection) -> Result:
    spec = admin.ServiceSpec(
        name=args.name,
        type=args.type,
        rate=args.rate,
        min=args.min,
        max=args.max,
        category=args.category,
        provider=args.provider,
        provider_service=args.provider_service,
        dripfeed=args.dripfeed,
        refill=args.refill,
        cancel=args.cancel,
        avg_time=args.avg_time,
        domain=args.domain,
        local_id=args.local_id,
        currency=args.currency,
    )
    service_id, local_id = await admin.add_service(conn, spec)
    shown = f" (local id {local_id} on {args.domain})" if local_id is not None else ""
    return {"service": service_id, "local_id": local_id}, f"service {service_id}{shown}"


async def order_list(args: argparse.Namespace, conn: asyncpg.Connection) -> Result:
    found = await admin.list_orders(
        conn, args.status, args.provider, args.domain, args.limit, args.held
    )
    lines = [
        f"{o['order']}  {o['status']}  {o['charge']} {o['currency']} (refunded {o['refunded']})"
        f"  {o['user']} on {o['panel']}  provider {o['provider'] or '-'}"
        f" upstream {o['upstream_id'] or '-'}  updated {o['updated']}"
        + (f"  error: {o['error']}" if o["error"] else "")
        + (f"  HELD: {o['held']}" if o["held"] else "")
        for o in found
    ]
    return found, "\n".join(lines) or "no orders"


async def order_resolve(args: argparse.Namespace, conn: asyncpg.Connection) -> Result:
    """`order resend` / `order attach` / `order fail`: the operator's answer to a held order."""
    upstream = getattr(args, "upstream_id", None)
    if upstream is not None:
        upstream = upstream.strip()
        if not usable_id(upstream):
            raise admin.InputError("--upstream-id: 1 to 64 printable characters, no commas")
    done = await held.resolve(conn, args.order, args.action, upstream)
    text = {
        "resent": "sent again as a first attempt",
        "attached": f"recorded as upstream order {upstream}; the status sync takes over",
        "failed": "given up: canceled with a full refund (a refill: rejected)",
        "placed": "an earlier attempt's late answer placed it upstream after all: nothing "
        "resent or refunded, the status sync follows it",
    }.get(done)
    if text is None:  # 'final'
        raise CommandFailed(f"order {args.order} is no longer Pending: nothing to cancel")
    return {"order": args.order, "done": done}, f"order {args.order}: {text}"


async def provider_set(args: argparse.Namespace, conn: asyncpg.Connection) -> Result:
    provider = await admin.set_provider_idempotency(conn, args.provider, args.honours_idempotency)
    return (
        {"provider": provider, "honours_idempotency": args.honours_idempotency},
        f"provider {provider}: "
        + ("resends" if args.honours_idempotency else "holds for the operator")
        + " an order after an attempt with an unknown outcome",
    )


async def rate_set(args: argparse.Namespace, conn: asyncpg.Connection) -> Result:
    user_id, service_id = await admin.set_rate(conn, args.email, args.service, args.rate)
    return (
        {"user": user_id, "service": service_id, "rate": money.format(money.parse(args.rate))},
        f"user {user_id} pays {args.rate} per 1000 for service {service_id}",
    )


async def audit(args: argparse.Namespace, conn: asyncpg.Connection) -> Result:
    report = await ledger.audit(conn)
    doc = {
        "ok": report.ok,
        "wallets": report.wallets,
        "entries": report.entries,
        "violations": report.violations,
    }
    text = (
        f"ledger ok: {report.wallets} wallets, {report.entries} entries"
        if report.ok
        else "ledger VIOLATIONS:\n" + "\n".join(report.violations)
    )
    return doc, text


async def service_import(args: argparse.Namespace, conn: asyncpg.Connection) -> Result:
    provider_id = await admin.provider_id(conn, args.provider)
    try:
        markup_bp = money.parse_percent_bp(args.markup, maximum=MAX_MARKUP_PERCENT)
    except money.MoneyError as exc:
        raise admin.InputError(f"markup: {exc}") from None
    endpoint = await admin.provider_endpoint(conn, provider_id)
    async with Provider(endpoint.url, endpoint.api_key, name=endpoint.name) as client:
        try:
            services = await client.services()
        except ProviderFailure as exc:
            raise CommandFailed(f"provider {endpoint.name}: {exc}") from None
    result = await importer.import_services(conn, provider_id, services, markup_bp, args.category)
    return (
        {"imported": result.imported, "updated": result.updated},
        f"imported {result.imported}, updated {result.updated}, deactivated "
        f"{result.deactivated}, skipped {result.skipped} (markup {args.markup or 0}%)",
    )
