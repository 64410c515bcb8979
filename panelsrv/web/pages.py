"""The reseller pages: one route per path, each a GET and/or a POST of a page.

Imports web (answers, forms, views, signin, account), store (accounts, catalog, db, pool) and
http.request (Route) and http.wire (content types). Never api's hot path, never worker.

Every page request goes the same way (`Pages.serve`): the panel from Host (as the API finds it;
none -> 404), the form of a POST (not a form -> 400), the session from its cookie (only on its
own user's panel; none or not enough -> 303 /login), the CSRF token of a POST (the session's,
or before sign-in the CSRF cookie's: missing or wrong -> 403, nothing done), then the page's
handler. GET never changes state (a sign-in form's CSRF cookie is not state). Errors are turned
into pages here only: an outage -> 503, anything unexpected -> 500 with the request id logged.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple

from panelsrv.api.handler import CatalogHolder
from panelsrv.http import wire
from panelsrv.http.request import Handler, Request, Route
from panelsrv.store import accounts, db
from panelsrv.store.catalog import Panel
from panelsrv.store.pool import Pool
from panelsrv.web import account, answers, forms, signin
from panelsrv.web.answers import Answer, Cookies
from panelsrv.web.views import Asset, Views, load_assets

log = logging.getLogger("panelsrv.web")

CSRF_COOKIE_AGE = 3600 * 12  # seconds a sign-in form's CSRF cookie lives


class Needs(Enum):
    NOBODY = "nobody"  # sign-in forms: CSRF from the cookie
    PENDING = "pending"  # the second-factor form: a session past its password
    ANY = "any"  # sign out: any session
    FULL = "full"  # the account's pages


class PageSettings(NamedTuple):
    cookie_secure: bool
    session_idle: float
    session_lifetime: float
    max_failures: int
    lock_seconds: float
    user_rate: float  # the server's per-user cap, shown to users without a tier
    user_burst: int
    webhook_allow_http: bool = False
    webhook_allow_private: bool = False


@dataclass(slots=True)
class Visit:
    """One page request as a handler sees it."""

    req: Request
    panel: Panel
    session: accounts.Session | None
    form: dict[str, str]
    query: dict[str, str]
    csrf: str  # what this page's forms carry
    extra: bytes = b""  # header lines to add to the answer (a new CSRF cookie)

    @property
    def user_id(self) -> int:
        assert self.session is not None
        return self.session.user_id


PageFn = Callable[["Pages", Visit], Awaitable[Answer]]


class Page(NamedTuple):
    label: str  # the access log's and the metrics' name for it
    needs: Needs
    get: PageFn | None  # None: a GET is sent back to `back`
    post: PageFn | None
    back: str = "/panels"


PAGES: dict[bytes, Page] = {
    b"/login": Page("page_login", Needs.NOBODY, signin.login_form, signin.login),
    b"/login/totp": Page("page_totp", Needs.PENDING, signin.totp_form, signin.totp),
    b"/logout": Page("page_logout", Needs.ANY, signin.logout_form, signin.logout),
    b"/account/set-password": Page(
        "page_set_password", Needs.NOBODY, signin.set_password_form, signin.set_password
    ),
    b"/panels": Page("page_home", Needs.FULL, account.home, None),
    b"/panels/webhooks/add": Page("page_webhook_add", Needs.FULL, None, account.webhook_add),
    b"/panels/webhooks/delete": Page(
        "page_webhook_delete", Needs.FULL, None, account.webhook_delete
    ),
    b"/panels/api": Page("page_keys", Needs.FULL, account.keys_page, None),
    b"/dashboard/api": Page("page_keys", Needs.FULL, account.keys_page, None),
    b"/panels/api/create": Page(
        "page_key_create", Needs.FULL, None, account.key_create, "/panels/api"
    ),
    b"/panels/api/rotate": Page(
        "page_key_rotate", Needs.FULL, None, account.key_rotate, "/panels/api"
    ),
    b"/panels/api/revoke": Page(
        "page_key_revoke", Needs.FULL, None, account.key_revoke, "/panels/api"
    ),
    b"/panels/settings": Page("page_settings", Needs.FULL, account.settings, None),
    b"/panels/settings/password": Page(
        "page_password", Needs.FULL, None, account.password_change, "/panels/settings"
    ),
    b"/panels/settings/totp": Page(
        "page_totp_start", Needs.FULL, None, account.totp_start, "/panels/settings"
    ),
    b"/panels/settings/totp/confirm": Page(
        "page_totp_confirm", Needs.FULL, None, account.totp_confirm, "/panels/settings"
    ),
    b"/panels/settings/totp/disable": Page(
        "page_totp_disable", Needs.FULL, None, account.totp_disable, "/panels/settings"
    ),
}


class Pages:
    """The pages of one API process; `routes()` is what its listener mounts."""

    def __init__(
        self,
        *,
        pool: Pool,
        state: CatalogHolder,
        settings: PageSettings,
        default_panel: str,
        strike: Callable[[str], None],
        passwords: accounts.Passwords | None = None,
        assets: dict[str, Asset] | None = None,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.strike = strike
        self.passwords = passwords or accounts.Passwords()
        self.cookies = Cookies.build(settings.cookie_secure)
        self.assets = assets or load_assets()
        self.views = Views(self.assets)
        self._state = state
        self._default_panel = default_panel

    def routes(self) -> dict[bytes, Route]:
        table = {path: Route(b"POST", self._handler(path), wire.HTML, True) for path in PAGES}
        return table | static_routes(self.assets)

    def close(self) -> None:
        self.passwords.close()

    def _handler(self, path: bytes) -> Handler:
        page = PAGES[path]

        def handle(req: Request) -> Awaitable[Answer]:
            return self.serve(req, page)

        return handle

    # -- every page -------------------------------------------------------------------------

    async def serve(self, req: Request, page: Page) -> Answer:
        req.action = page.label
        try:
            return await self._serve(req, page)
        except Exception as exc:
            if db.unavailable(exc):
                log.debug("request %s: database unavailable: %s", req.request_id, exc)
                return self.message(503, "Unavailable", "The panel is busy; try again shortly.")
            log.error("request %s: unexpected error in %s", req.request_id, page.label,
                      exc_info=exc)  # fmt: skip
            return self.message(500, "Error", f"Something went wrong (request {req.id}).")

    async def _serve(self, req: Request, page: Page) -> Answer:
        panel = self._state.catalog.panel_for_host(req.host, self._default_panel)
        if panel is None:
            return self.message(404, "Not found", "No panel is served at this address.")
        post = req.method == b"POST"
        handler = page.post if post else page.get
        if handler is None:
            return answers.redirect(page.back, self.cookies.headers)
        form: dict[str, str] = {}
        if post:
            found = forms.form(req.content_type, req.body)
            if found is None:
                return self.message(400, "Bad request", "This form could not be read.")
            form = found
        query = forms.fields(req.query) or {}
        session = await self._session(req, panel)
        if page.needs is Needs.NOBODY:
            csrf = forms.cookie(req.cookie, self.cookies.csrf)
            visit = Visit(req, panel, session, form, query, csrf)
            if not csrf:
                visit.csrf = accounts.new_token()
                visit.extra = self.cookies.set(self.cookies.csrf, visit.csrf, CSRF_COOKIE_AGE)
        else:
            stage = None if session is None else session.stage
            allowed = {
                Needs.PENDING: stage == "password",
                Needs.ANY: stage is not None,
                Needs.FULL: stage == "full",
            }[page.needs]
            if not allowed:
                return answers.redirect("/login", self.cookies.headers)
            assert session is not None
            visit = Visit(req, panel, session, form, query, session.csrf)
        if post and not (visit.csrf and hmac.compare_digest(form.get("csrf", ""), visit.csrf)):
            return self.message(
                403, "Form expired", "This form has expired. Reload the page and try again."
            )
        return await handler(self, visit)

    async def _session(self, req: Request, panel: Panel) -> accounts.Session | None:
        """The request's live session, when it belongs to a user of this panel."""
        token = forms.cookie(req.cookie, self.cookies.session)
        if not token:
            return None
        found = await accounts.find_session(self.pool, token, self.settings.session_idle)
        if found is None or found.panel_id != panel.id:
            return None
        return found

    # -- answers ----------------------------------------------------------------------------

    def page(
        self, v: Visit | None, template: str, status: int = 200, extra: bytes = b"", **values: Any
    ) -> Answer:
        session = None if v is None else v.session
        body = self.views.render(
            template,
            panel=None if v is None else v.panel.domain,
            signed_in=session is not None and session.stage == "full",
            account_email=None if session is None else session.email,
            csrf="" if v is None else v.csrf,
            **values,
        )
        return status, body, self.cookies.headers + (b"" if v is None else v.extra) + extra

    def message(self, status: int, title: str, text: str) -> Answer:
        return self.page(None, "message.html", status, title=title, text=text)

    def redirect(self, location: str, extra: bytes = b"") -> Answer:
        return answers.redirect(location, self.cookies.headers, extra)

    async def start_session(self, v: Visit, user_id: int, stage: str) -> bytes:
        """A new session (the one the request came with, if any, ends: the id changes at
        every sign-in); the Set-Cookie line."""
        if v.session is not None:
            await accounts.end_session(self.pool, v.session.id)
        lifetime = self.settings.session_lifetime
        if stage != "full":
            lifetime = min(lifetime, signin.PENDING_LIFETIME)
        token = await accounts.start_session(self.pool, user_id, stage, lifetime)
        return self.cookies.set(self.cookies.session, token)

    async def failed(self, v: Visit, user_id: int | None) -> None:
        """A wrong password or code: a strike for the address (the guard blocks an address
        after `strike_limit`), and a failure counted on the account. An unknown e-mail runs the
        same statement on no row (id 0), so it answers in the time a wrong password does."""
        self.strike(v.req.client_ip)
        s = self.settings
        await accounts.record_failure(self.pool, user_id or 0, s.max_failures, s.lock_seconds)

    async def second_factor(self, user_id: int, code: str) -> bool:
        """A TOTP code or, failing that, an unused recovery code."""
        code = code.strip()
        if not code or len(code) > 64:
            return False
        if await accounts.use_totp(self.pool, user_id, code):
            return True
        return await accounts.use_recovery_code(self.pool, user_id, code)

    async def reauthenticate(self, v: Visit) -> str | None:
        """The fresh password (and code, with two-factor on) that key creation and rotation
        ask for; None when they are right, else the page's error."""
        creds = await accounts.credentials(self.pool, v.user_id)
        password = v.form.get("password", "")
        ok = await self.passwords.verify(creds.password_hash, password[: accounts.PASSWORD_MAX])
        if ok and not creds.locked and creds.totp:
            ok = await self.second_factor(v.user_id, v.form.get("code", ""))
        if ok and not creds.locked:
            return None
        await self.failed(v, v.user_id)
        return "Wrong password or code." if creds.totp else "Wrong password."


def _static(asset: Asset) -> Handler:
    answer = (200, asset.body, answers.STATIC_HEADERS)

    def serve(req: Request) -> Answer:
        req.action = "static"
        return answer

    return serve


def static_routes(assets: dict[str, Asset]) -> dict[bytes, Route]:
    return {a.path: Route(b"GET", _static(a), a.content_type) for a in assets.values()}


_UNAVAILABLE = (
    503,
    b"<!doctype html><title>Unavailable</title><p>The panel is starting; try again shortly.",
    answers.PAGE_HEADERS + b"Retry-After: 5\r\n",
)


def _unavailable(req: Request) -> Answer:
    return _UNAVAILABLE


def unavailable_routes(assets: dict[str, Asset]) -> dict[bytes, Route]:
    """Every page answering 503 (and the static files served) while the process cannot reach
    the database yet; `Pages.routes()` replaces them when it can."""
    pages = {path: Route(b"POST", _unavailable, wire.HTML, True) for path in PAGES}
    return pages | static_routes(assets)
