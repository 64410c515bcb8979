"""What the browser tests drive and read: the site (one `panelsrv serve` and its two panels),
a visitor (a Chromium context with its page), a reseller (a visitor signed in), and the raw
HTTP client that poses as a browser with a stolen or stale cookie.

Imports Playwright's sync API, the store (to make users and invitations the way the CLI does),
and the test kit (tests/kit/stack.py starts the server, tests/e2e/served.py `call` sends API
requests). Playwright's sync API keeps an event loop of its own marked running in this thread,
so every coroutine (SQL, API calls) runs on a thread of its own (`blocking`).

Invariants: every document response a visitor receives is recorded with its status, headers and
body (`Visitor.documents`), so a test can assert what no page showed or lacked; screenshots go
to var/screenshots/<name>.png; nothing here waits for a time, only for a navigation or a
condition.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import secrets
import subprocess
from collections.abc import Awaitable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar, cast
from urllib.parse import urlencode, urlsplit

from playwright.sync_api import Browser, BrowserContext, Page
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Response as PageResponse

from panelsrv.store import accounts, admin, db, keys
from panelsrv.store.keys import NewKey
from tests.conftest import ROOT, run_async
from tests.e2e.kit import sql
from tests.e2e.served import call
from tests.kit.stack import Served, panelsrv_argv

SHOP = "shop.test"
OTHER = "other.test"
COOKIE = "panelsrv"  # cookie_secure is false here: no __Host- prefix
CSRF_COOKIE = "panelsrv-csrf"  # the sign-in forms' token, before there is a session
SCREENSHOTS = ROOT / "var" / "screenshots"
PROBES = 20  # fresh connections per probe: all on one of 2 processes once in 2**19 rounds
T = TypeVar("T")
# A page is there once its HTML is parsed and its deferred script ran; "load" would also wait
# for the style sheet, which only a screenshot needs.
LOADED: Final = "domcontentloaded"

_THREAD = ThreadPoolExecutor(1, thread_name_prefix="web-db")


def blocking(coro: Awaitable[T]) -> T:
    """Run a coroutine to its end on a fresh loop in a thread with no running loop."""
    return cast(T, _THREAD.submit(run_async, coro).result())


@dataclass(frozen=True)
class Reply:
    """A raw HTTP answer."""

    status: int
    headers: http.client.HTTPMessage
    text: str

    @property
    def location(self) -> str:
        return urlsplit(self.headers.get("Location", "")).path


@dataclass(frozen=True)
class Document:
    """One document response a visitor's browser received."""

    url: str
    status: int
    headers: dict[str, str]
    body: str | None  # None: navigated away from before it could be read


class Visitor:
    """A browser context (its own cookies) and its one page, optionally posing as the client
    address `address` (X-Forwarded-For from loopback, a trusted proxy)."""

    def __init__(self, site: Site, context: BrowserContext) -> None:
        self.site = site
        self.context = context
        self.page: Page = context.new_page()
        self._documents: list[Document] = []
        self._reading = 0  # response handlers still reading a body
        self.dialogs: list[str] = []
        context.on("response", self._record)
        self.page.on("dialog", self._dialog)

    def _record(self, response: PageResponse) -> None:
        if response.request.resource_type != "document" or 300 <= response.status < 400:
            return
        self._reading += 1
        try:  # body() yields to Playwright's loop: the test may run on meanwhile
            body: str | None = response.body().decode("utf-8", "replace")
        except PlaywrightError:  # navigated away before it was read: unknown, so suspect
            body = None
        finally:
            self._reading -= 1
        self._documents.append(Document(response.url, response.status, response.headers, body))

    def _settle(self) -> None:
        """Until the response handlers are done (each round trip to the browser lets
        Playwright's loop run them on): before the next navigation drops the bodies."""
        while self._reading:
            self.page.evaluate("0")

    @property
    def documents(self) -> list[Document]:
        """Every document received so far."""
        self._settle()
        return self._documents

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def goto(self, path: str, panel: str = SHOP) -> PageResponse:
        return self.open(self.site.url(path, panel))

    def open(self, url: str) -> PageResponse:
        response = self.page.goto(url, wait_until=LOADED)
        assert response is not None, url
        self._settle()
        return response

    @property
    def path(self) -> str:
        return urlsplit(self.page.url).path

    def fill(self, form: str, fields: Mapping[str, str | bool]) -> None:
        for name, value in fields.items():
            control = self.page.locator(f"{form} [name={name}]")
            if isinstance(value, bool):
                control.set_checked(value)
            else:
                control.fill(value)

    def submit(self, form: str, **fields: str | bool) -> PageResponse:
        """Fill `fields` of the form matched by the selector `form` and click its submit
        button; the response of the page the browser lands on (after any redirects)."""
        self.fill(form, fields)
        button = self.page.locator(
            f"{form} button:not([type=button]):not([type=reset]), {form} input[type=submit]"
        ).first
        with self.page.expect_navigation(wait_until=LOADED) as navigation:
            button.click()
        response = navigation.value
        assert response is not None, form
        self._settle()
        return response

    def value(self, selector: str) -> str:
        return self.page.locator(selector).input_value()

    def csrf(self, form: str) -> str:
        return self.value(f"{form} input[name=csrf]")

    def text(self, selector: str) -> str:
        return self.page.locator(selector).inner_text()

    def cookie(self) -> str:
        """The session cookie's value."""
        for c in self.context.cookies():
            if c["name"] == COOKIE:
                return c["value"]
        raise AssertionError(f"no {COOKIE} cookie: {self.context.cookies()}")

    def shot(self, name: str) -> None:
        self.page.wait_for_load_state("load")  # the style sheet applied
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

    def sign_in(self, email: str, password: str) -> PageResponse:
        self.goto("/login")
        return self.submit("#login", email=email, password=password)

    def sign_out(self) -> PageResponse:
        return self.submit("#logout")

    def create_key(self, password: str, **fields: str) -> PageResponse:
        self.goto("/panels/api")
        return self.submit("#key-create", password=password, **fields)

    def rotate_key(self, prefix: str, password: str) -> PageResponse:
        self.goto("/panels/api")
        return self.submit(f'tr.key[data-prefix="{prefix}"] .key-rotate', password=password)

    def revoke_key(self, prefix: str) -> PageResponse:
        self.goto("/panels/api")
        return self.submit(f'tr.key[data-prefix="{prefix}"] .key-revoke', confirm=True)

    def close(self) -> None:
        self.context.close()


@dataclass
class Reseller:
    """A user of the shop panel with a password, signed in through `visitor`."""

    user_id: int
    email: str
    password: str
    visitor: Visitor

    def keys(self) -> list[tuple[str, bool]]:
        """(prefix, revoked) of each of the user's keys, oldest first: what a refusal must leave
        as it was."""
        rows = blocking(sql(
            self.visitor.site.database_url,
            "SELECT prefix, revoked_at IS NOT NULL FROM api_keys WHERE user_id = $1 ORDER BY id",
            self.user_id,
        ))  # fmt: skip
        return [(r[0], r[1]) for r in rows]

    def add_key(self) -> NewKey:
        """A key made straight in the database (setup for tests about rotating and refusing)."""

        async def make() -> NewKey:
            conn = await db.connect(self.visitor.site.database_url)
            try:
                return await keys.create(conn, self.user_id)
            finally:
                await conn.close()

        return blocking(make())


@dataclass
class Site:
    server: Served
    database_url: str
    log: Path
    browser: Browser
    raw_keys: list[str] = field(default_factory=list)  # every key a page showed

    @property
    def port(self) -> int:
        return self.server.port

    def url(self, path: str, panel: str = SHOP) -> str:
        return f"http://{panel}:{self.port}{path}"

    def visitor(self, address: str | None = None) -> Visitor:
        headers = {"X-Forwarded-For": address} if address else {}
        context = self.browser.new_context(extra_http_headers=headers)
        context.set_default_timeout(10_000)  # ms: a page here answers in milliseconds
        return Visitor(self, context)

    # -- accounts -------------------------------------------------------------------------

    def user(self, panel: str = SHOP) -> tuple[int, str]:
        """A new user of `panel` without a password: (id, e-mail)."""
        email = f"r{secrets.token_hex(5)}@example.test"

        async def add() -> int:
            conn = await db.connect(self.database_url)
            try:
                user, _ = await admin.add_user(conn, email, panel, "100.00", "0")
                return user.id
            finally:
                await conn.close()

        return blocking(add()), email

    def invite_link(self, user_id: int) -> str:
        """An invitation link made by the store (what `panelsrv user invite` does, without a
        process start per user)."""

        async def invite() -> str:
            conn = await db.connect(self.database_url)
            try:
                return await accounts.create_invite(conn, user_id)
            finally:
                await conn.close()

        token = blocking(invite())
        return self.url("/account/set-password?" + urlencode({"token": token}))

    def invite_with_cli(self, email: str) -> str:
        """`panelsrv user invite --email E --base-url http://shop.test:<port> --json`: the link."""
        done = subprocess.run(
            panelsrv_argv("user", "invite", "--email", email, "--base-url", self.url(""),
                          "--json", "--database-url", self.database_url),
            capture_output=True, timeout=60, check=False, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return str(json.loads(done.stdout)["link"])

    def reseller(self, address: str | None = None) -> Reseller:
        """A new user who set a password through an invitation and signed in."""
        user_id, email = self.user()
        password = f"pw-{secrets.token_hex(8)}"
        visitor = self.visitor(address)
        visitor.open(self.invite_link(user_id))
        landed = visitor.submit("#set-password", password=password, confirm=password)
        assert visitor.path == "/login", (landed.status, visitor.page.url)
        landed = visitor.submit("#login", email=email, password=password)
        assert visitor.path == "/panels", (landed.status, visitor.page.url)
        return Reseller(user_id, email, password, visitor)

    # -- raw HTTP ---------------------------------------------------------------------------

    def raw(
        self,
        method: str,
        path: str,
        fields: Mapping[str, str] | None = None,
        *,
        panel: str = SHOP,
        cookie: str | None = None,
        csrf_cookie: str | None = None,
        address: str | None = None,
    ) -> Reply:
        """One request over a fresh connection, as a browser would send it (the Host header
        names the panel), with `cookie` as the session cookie and `csrf_cookie` as the
        sign-in forms' CSRF cookie."""
        headers = {"Host": f"{panel}:{self.port}"}
        body = None
        if fields is not None:
            body = urlencode(fields).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        sent = [f"{COOKIE}={cookie}"] if cookie is not None else []
        if csrf_cookie is not None:
            sent.append(f"{CSRF_COOKIE}={csrf_cookie}")
        if sent:
            headers["Cookie"] = "; ".join(sent)
        if address is not None:
            headers["X-Forwarded-For"] = address
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            text = response.read().decode("utf-8", "replace")
            return Reply(response.status, response.headers, text)
        finally:
            conn.close()

    # -- the API ----------------------------------------------------------------------------

    def api(
        self, key: str, action: str = "balance", *, address: str | None = None, **fields: object
    ) -> tuple[int, Any]:
        """One POST to /api/v2 with Host shop.test, from `address` (X-Forwarded-For): the
        status and the JSON answer."""
        headers = b"" if address is None else b"X-Forwarded-For: %s\r\n" % address.encode()
        r = blocking(call(self.port, {"key": key, "action": action, **fields}, host=SHOP,
                          headers=headers))  # fmt: skip
        return r.status, r.json()

    def probe(self, key: str) -> list[int]:
        """The statuses of PROBES concurrent balance requests with `key`, each on a fresh
        connection, so over both API processes."""

        async def statuses() -> list[int]:
            answers = await asyncio.gather(
                *(call(self.port, {"key": key, "action": "balance"}, host=SHOP)
                  for _ in range(PROBES))
            )  # fmt: skip
            return [a.status for a in answers]

        return blocking(statuses())

    # -- the log ----------------------------------------------------------------------------

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def assert_nowhere_but(documents: Iterable[Document], secret: str, allowed: set[str]) -> None:
    """`secret` appears in no recorded page except those whose path is in `allowed`."""
    for doc in documents:
        if urlsplit(doc.url).path not in allowed:
            assert doc.body is not None, f"{doc.url} ({doc.status}) was not read"
            assert secret not in doc.body, f"the raw key is on {doc.url} ({doc.status})"
