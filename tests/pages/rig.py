"""The pages in process: a real PostgreSQL pool and catalog, `Pages` over them, hand-built
`panelsrv.http.request.Request`s through the route table, a cookie jar per client. No sockets
(tests/web drives a real server from a real browser)."""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlencode

from panelsrv.http.request import Request
from panelsrv.store import accounts, catalog
from panelsrv.web.pages import Pages, PageSettings
from tests.store.helpers import World

FORM = b"application/x-www-form-urlencoded"
PASSWORD = "a long enough passphrase"
SETTINGS = PageSettings(
    cookie_secure=True, session_idle=1800, session_lifetime=43200, max_failures=10,
    lock_seconds=900, user_rate=50, user_burst=100,
)  # fmt: skip
_CSRF = re.compile(rb'name="csrf" value="([^"]+)"')
_COOKIE = re.compile(rb"Set-Cookie: ([^=]+)=([^;]*);[^\r]*\r\n")


@dataclass
class State:
    catalog: catalog.Catalog


@dataclass
class Reply:
    status: int
    body: bytes
    headers: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def header(self, name: str) -> str | None:
        m = re.search(rb"(?im)^" + name.encode() + rb": ([^\r]*)\r\n", self.headers)
        return None if m is None else m.group(1).decode()

    def csrf(self) -> str:
        m = _CSRF.search(self.body)
        assert m is not None, self.text
        return m.group(1).decode()


@dataclass
class Client:
    """One browser: its cookies, its address, the Host it asks."""

    pages: Pages
    host: str
    ip: str = "192.0.2.10"
    jar: dict[str, str] = field(default_factory=dict)

    async def go(
        self, method: str, path: str, fields: dict[str, str] | None = None, *,
        query: str = "", ctype: bytes = FORM, body: bytes | None = None,
    ) -> Reply:  # fmt: skip
        req = Request()
        req.method, req.host, req.client_ip = method.encode(), self.host, self.ip
        req.query = query.encode()
        req.content_type = ctype if method == "POST" else b""
        req.body = body if body is not None else urlencode(fields or {}).encode()
        req.cookie = "; ".join(f"{k}={v}" for k, v in self.jar.items()).encode()
        route = self.pages.routes()[path.encode()]
        answer = route.handler(req)
        status, data, extra = await answer if inspect.isawaitable(answer) else answer
        for name, value in _COOKIE.findall(extra):
            if value:
                self.jar[name.decode()] = value.decode()
            else:
                self.jar.pop(name.decode(), None)
        return Reply(status, data, extra)

    async def get(self, path: str, query: str = "") -> Reply:
        return await self.go("GET", path, query=query)

    async def post(self, path: str, fields: dict[str, str], csrf_from: str | None = None) -> Reply:
        """POST with the CSRF token of the page at `csrf_from` (default: `path` itself)."""
        page = await self.get(csrf_from or path)
        return await self.go("POST", path, {"csrf": page.csrf(), **fields})


@dataclass
class Site:
    w: World
    domain: str
    pages: Pages
    strikes: list[str]

    def client(self, ip: str = "192.0.2.10", host: str | None = None) -> Client:
        return Client(self.pages, host or self.domain, ip)

    async def password_for(self, user_id: int, password: str = PASSWORD) -> None:
        token = await accounts.create_invite(self.w.conn, user_id)
        hashed = await self.pages.passwords.hash(password)
        assert await accounts.use_invite(self.w.pool, token, self.w.panel_id, hashed) == user_id

    async def signed_in(self, email: str, ip: str = "192.0.2.10") -> Client:
        c = self.client(ip)
        r = await c.post("/login", {"email": email, "password": PASSWORD})
        assert (r.status, r.header("Location")) == (303, "/panels"), r.text
        return c

    async def count_keys(self, user_id: int) -> int:
        return int(
            await self.w.conn.fetchval("SELECT count(*) FROM api_keys WHERE user_id = $1", user_id)
        )


@contextlib.asynccontextmanager
async def account(database_url: str) -> AsyncIterator[tuple[World, Site]]:
    """A World whose user has PASSWORD, and the Site over it."""
    async with World(database_url) as w:
        s = await site(w)
        await s.password_for(w.user.id)
        yield w, s


async def site(w: World) -> Site:
    domain = await w.conn.fetchval("SELECT domain FROM panels WHERE id = $1", w.panel_id)
    strikes: list[str] = []
    pages = Pages(
        pool=w.pool, state=State(await catalog.load(w.pool)), settings=SETTINGS,
        default_panel="", strike=strikes.append,
    )  # fmt: skip
    return Site(w, domain, pages, strikes)
