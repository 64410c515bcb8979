"""The account's pages: home (balance, tier, orders, webhooks), API keys, settings.

Imports store (accounts, keys, orders), api.respond (a webhook is added by the API's own rules),
errors and money; the Pages object (web/pages.py) is handed in. Every handler here runs for a
full session of the Host's panel with a checked CSRF token (pages.Pages.serve). Creating and
rotating a key ask for the password again (and the code, with two-factor on); the new key is on
the one answer that shows it, sent `no-store` like every page, and never logged.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from panelsrv import money
from panelsrv.api.respond import add_webhook
from panelsrv.errors import ApiError
from panelsrv.panelconf import ORDER_CEILING, rate_text
from panelsrv.store import accounts, keys, orders, webhooks
from panelsrv.web.views import qr_data_uri

if TYPE_CHECKING:
    from panelsrv.web.answers import Answer
    from panelsrv.web.pages import Pages, Visit

PAGE_SIZE = 25
SEARCH_MAX = orders.MAX_SEARCH_LENGTH
DONE = {
    "webhook-deleted": "The webhook is deleted.",
    "key-revoked": "The key is revoked. Requests with it are refused from now on.",
    "password-changed": "Your password is changed. Every other session has ended.",
    "totp-off": "Two-factor sign-in is off.",
}  # fmt: skip


def _done(v: Visit) -> str | None:
    return DONE.get(v.query.get("done", ""))


# -- home -------------------------------------------------------------------------------------


async def home(p: Pages, v: Visit, error: str | None = None, status: int = 200) -> Answer:
    q = v.query
    wanted = q.get("status", "")
    search = q.get("q", "").strip()[:SEARCH_MAX]
    page = int(q["page"]) if q.get("page", "").isdigit() and 0 < len(q["page"]) < 7 else 1
    if wanted not in orders.ORDER_STATUSES:
        wanted = ""
    found, total = await orders.list_for_user(
        p.pool,
        v.user_id,
        status=wanted or None,
        search=search or None,
        limit=PAGE_SIZE,
        offset=(page - 1) * PAGE_SIZE,
    )
    acct = await accounts.account(p.pool, v.user_id)
    hooks = await webhooks.list_endpoints(p.pool, v.user_id)
    s = p.settings
    return p.page(
        v,
        "home.html",
        status,
        balance=money.format(acct.balance),
        currency=v.panel.currency,
        tier=acct.tier,
        rate=rate_text(float(s.user_rate if acct.tier_rate is None else acct.tier_rate)),
        burst=acct.tier_burst if acct.tier is not None else s.user_burst,
        order_limit=min(
            v.panel.settings.order_limit,
            ORDER_CEILING if acct.tier_orders is None else acct.tier_orders,
        ),
        orders=found,
        total=total,
        page=page,
        pages=max(1, math.ceil(total / PAGE_SIZE)),
        statuses=orders.ORDER_STATUSES,
        wanted=wanted,
        search=search,
        webhooks=hooks,
        events=webhooks.EVENT_TYPES,
        error=error,
        done=_done(v),
        money=money.format,
        secret=None,
    )


async def webhook_add(p: Pages, v: Visit) -> Answer:
    events = v.form.get("events", "").strip() or None
    s = p.settings
    try:
        webhook_id, secret = await add_webhook(
            p.pool,
            v.user_id,
            v.form.get("url", "").strip(),
            events,
            allow_http=s.webhook_allow_http,
            allow_private=s.webhook_allow_private,
        )
    except ApiError as exc:
        return await home(p, v, error=str(exc), status=400)
    return p.page(v, "webhook_added.html", webhook=webhook_id, secret=secret)


async def webhook_delete(p: Pages, v: Visit) -> Answer:
    text = v.form.get("webhook", "")
    if text.isdigit() and len(text) < 19:
        await webhooks.delete(p.pool, v.user_id, int(text))
    return p.redirect("/panels?done=webhook-deleted")


# -- API keys ---------------------------------------------------------------------------------


async def keys_page(p: Pages, v: Visit, error: str | None = None, status: int = 200) -> Answer:
    async with p.pool.acquire() as conn:
        listed = await keys.list_keys(conn, v.user_id)
    creds = await accounts.credentials(p.pool, v.user_id)
    active = sum(1 for k in listed if k.revoked is None)
    return p.page(
        v,
        "keys.html",
        status,
        keys=listed,
        active=active,
        limit=keys.MAX_ACTIVE_KEYS,
        totp=creds.totp,
        error=error,
        done=_done(v),
        form=v.form,
    )


async def key_create(p: Pages, v: Visit) -> Answer:
    refused = await p.reauthenticate(v)
    if refused is not None:
        return await keys_page(p, v, refused, 403)
    try:
        allowed = keys.parse_allowed(v.form.get("allowed_ips", ""))
        async with p.pool.acquire() as conn:
            new = await keys.create(conn, v.user_id, v.form.get("label", ""), allowed)
    except keys.TooManyKeys:
        return await keys_page(
            p, v, f"You already have {keys.MAX_ACTIVE_KEYS} active keys; revoke one first.", 409
        )
    except ValueError as exc:
        return await keys_page(p, v, str(exc), 400)
    return p.page(v, "new_key.html", key=new.raw, prefix=new.prefix, rotated=None)


async def key_rotate(p: Pages, v: Visit) -> Answer:
    refused = await p.reauthenticate(v)
    if refused is not None:
        return await keys_page(p, v, refused, 403)
    prefix = v.form.get("prefix", "")
    try:
        async with p.pool.acquire() as conn:
            new = await keys.rotate(conn, v.user_id, prefix)
    except LookupError:
        return await keys_page(p, v, "That key is not one of your active keys.", 404)
    return p.page(v, "new_key.html", key=new.raw, prefix=new.prefix, rotated=prefix)


async def key_revoke(p: Pages, v: Visit) -> Answer:
    if v.form.get("confirm") != "yes":
        return await keys_page(p, v, "Tick the box to confirm the revocation.", 400)
    async with p.pool.acquire() as conn:
        done = await keys.revoke_for_user(conn, v.user_id, v.form.get("prefix", ""))
    if not done:
        return await keys_page(p, v, "That key is not one of your keys.", 404)
    return p.redirect("/panels/api?done=key-revoked")


# -- settings ---------------------------------------------------------------------------------


async def settings(p: Pages, v: Visit, error: str | None = None, status: int = 200) -> Answer:
    creds = await accounts.credentials(p.pool, v.user_id)
    left = await accounts.recovery_codes_left(p.pool, v.user_id) if creds.totp else 0
    return p.page(
        v, "settings.html", status, totp=creds.totp, codes_left=left, error=error, done=_done(v)
    )


async def password_change(p: Pages, v: Visit) -> Answer:
    assert v.session is not None
    creds = await accounts.credentials(p.pool, v.user_id)
    current = v.form.get("current", "")[: accounts.PASSWORD_MAX]
    if not await p.passwords.verify(creds.password_hash, current) or creds.locked:
        await p.failed(v, v.user_id)
        return await settings(p, v, "Your current password is wrong.", 403)
    password = v.form.get("password", "")
    problem = accounts.password_problem(password, v.session.email)
    if problem is None and password != v.form.get("confirm", ""):
        problem = "The two new passwords differ."
    if problem is not None:
        return await settings(p, v, problem, 400)
    hashed = await p.passwords.hash(password)
    async with p.pool.acquire() as conn:
        await accounts.change_password(conn, v.user_id, hashed, v.session.id)
    return p.redirect("/panels/settings?done=password-changed")


def _enrol_page(p: Pages, v: Visit, secret: str, error: str | None, status: int = 200) -> Answer:
    assert v.session is not None
    uri = accounts.totp_uri(secret, v.session.email, v.panel.domain)
    return p.page(
        v, "totp_enrol.html", status, secret=secret, qr=qr_data_uri(uri), uri=uri, error=error
    )


async def totp_start(p: Pages, v: Visit) -> Answer:
    secret = await accounts.start_totp(p.pool, v.user_id)
    if secret is None:
        return p.redirect("/panels/settings")
    return _enrol_page(p, v, secret, None)


async def totp_confirm(p: Pages, v: Visit) -> Answer:
    async with p.pool.acquire() as conn:
        codes = await accounts.enable_totp(conn, v.user_id, v.form.get("code", ""))
    if codes is not None:
        return p.page(v, "recovery_codes.html", codes=codes)
    creds = await accounts.credentials(p.pool, v.user_id)
    if creds.totp or creds.totp_secret is None:
        return p.redirect("/panels/settings")
    return _enrol_page(p, v, creds.totp_secret, "Wrong code: try the current one.", 400)


async def totp_disable(p: Pages, v: Visit) -> Answer:
    refused = await p.reauthenticate(v)
    if refused is not None:
        return await settings(p, v, refused, 403)
    async with p.pool.acquire() as conn:
        await accounts.disable_totp(conn, v.user_id)
    return p.redirect("/panels/settings?done=totp-off")
