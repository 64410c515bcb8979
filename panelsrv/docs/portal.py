"""The developer portal: `GET /api`, the API's documentation as the panel named by Host serves it.

Imports jinja2, api (the `services` renderer, the id-list bound), store.catalog (the panel and
what it offers), panelconf, servicetypes, money, web (the pages' assets and security headers),
http (Route, content types) and docs.samples. Never worker, never api's hot path: /api is an
exact-path route of its own.

Every fact on the page is this panel's: its domain in every URL, its currency, the service
types it offers (from the catalog), its settings (order ceiling, legacy_errors, accept_get,
refills) and the server's limits as configured (`Limits`). The page is rendered once per panel
and kept until the catalog changes: `LiveCatalog` swaps in a new `Catalog` object at every
reload, so a cache tied to the object it was built from is dropped with it; at most
MAX_CACHED pages are kept. Templates autoescape everything (a domain or a service name is
text); the Changelog is panelsrv/docs/CHANGELOG.md, kept in the repository, read as headings,
paragraphs and list items with `code` spans, every piece escaped, no HTML passed through. No
script: the page reads without JavaScript, at phone width and printed (web/static/portal.css).

The page is public (no account data, the same for every visitor of a panel), so it carries
the pages' headers with `Cache-Control: public, max-age=60` in place of `no-store`: a proxy or
browser may keep it a minute, and a catalog change shows within that minute.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, NamedTuple

import jinja2

from panelsrv import money, panelconf
from panelsrv.api.actions import MAX_IDEMPOTENCY_KEY, MAX_IDS
from panelsrv.api.handler import CatalogHolder
from panelsrv.api.respond import render_services
from panelsrv.docs import samples
from panelsrv.http import wire
from panelsrv.http.request import Answer, Request, Route
from panelsrv.servicetypes import SERVICE_TYPES
from panelsrv.store.catalog import Catalog, Panel, Service
from panelsrv.web import answers
from panelsrv.web.views import Asset

PATH = b"/api"
MAX_CACHED = 256  # rendered pages kept (one per panel); beyond it the cache starts afresh
LISTED = 3  # services shown in the `services` example
PORTAL_HEADERS = answers.public_page_headers(60)
# Where the other documents are (exact paths of this server).
OPENAPI = "/api/openapi.json"
KEYS_PAGE = "/panels/api"

# Per type: (link, quantity, the type's own fields) as `add` reads them (api/validate.py).
TYPE_FIELDS: dict[str, tuple[str, str, str]] = {
    "default": ("required", "required", ""),
    "Package": ("optional", "ignored: one package", ""),
    "Custom Comments": ("optional", "the number of comment lines", "comments"),
    "Custom Comments Package": ("optional", "ignored: one package", "comments"),
    "Mentions": ("required", "required", "usernames"),
    "Mentions with Hashtags": ("required", "required", "usernames, hashtags (or hashtag)"),
    "Mentions Custom List": ("required", "the number of username lines", "usernames"),
    "Mentions Hashtag": ("required", "required", "hashtag (or hashtags)"),
    "Mentions User Followers": ("required", "required", "username"),
    "Mentions Media Likers": ("required", "required", "media"),
    "Subscriptions": (
        "optional (or username)",
        "ignored: max × (posts + old_posts)",
        "username or link, min, max, posts or old_posts; optional delay, expiry",
    ),
    "Poll": ("required", "required", "answer_number"),
    "Comment Likes": ("required", "required", "username"),
    "Comment Replies": ("required", "the number of comment lines", "comments, username"),
}
assert tuple(TYPE_FIELDS) == SERVICE_TYPES


class Limits(NamedTuple):
    """The server's limits as configured (config.Config), shown on every panel's page."""

    ip_rate: float
    ip_burst: int
    user_rate: float
    user_burst: int
    strike_limit: int
    strike_window: float
    block_seconds: float
    sign_max_skew: int
    max_body_bytes: int
    webhook_allow_http: bool
    webhook_allow_private: bool
    webhook_slow: float  # seconds within which a delivery's 2xx counts as fast
    secure: bool  # served over HTTPS: the answers carry HSTS, as the pages' do


# -- the Changelog -----------------------------------------------------------------------------


Spans = list[tuple[str, bool]]  # (text, is code)


class Block(NamedTuple):
    kind: str  # "h3", "p" or "ul"
    items: list[Spans]  # one for a heading or a paragraph, one per list item


def _spans(text: str) -> Spans:
    parts = text.split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: all of it plain text
        return [(text, False)]
    return [(part, i % 2 == 1) for i, part in enumerate(parts) if part]


def read_changelog(text: str) -> list[Block]:
    """`## ` headings, lists of `- ` items (continued on the lines that follow), paragraphs
    (lines until a blank one); a `# ` title is left out, everything else is text. The
    template escapes every span."""
    blocks: list[Block] = []
    lines: list[str] = []  # the paragraph or list item being read

    def close() -> None:
        if lines:
            blocks[-1].items.append(_spans(" ".join(lines)))
            lines.clear()

    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("# "):
            close()
        elif line.startswith("## "):
            close()
            blocks.append(Block("h3", [_spans(line[3:].strip())]))
        elif line.startswith("- "):
            close()
            if not blocks or blocks[-1].kind != "ul":
                blocks.append(Block("ul", []))
            lines.append(line[2:].strip())
        else:
            if not lines:
                blocks.append(Block("p", []))
            lines.append(line)
    close()
    return blocks


def load_changelog() -> list[Block]:
    return read_changelog(resources.files("panelsrv.docs").joinpath("CHANGELOG.md").read_text())


# -- what a panel's page says ------------------------------------------------------------------


def _statuses(legacy: bool) -> dict[int, int]:
    """Each error status as this panel answers it (`legacy_errors`: 4xx but 429 as 200)."""
    codes = (400, 401, 402, 409, 429, 500, 503)
    return {c: 200 if legacy and 400 <= c < 500 and c != 429 else c for c in codes}


def _example_service(offered: list[Service]) -> Service | None:
    """The service the examples order: the first of type default, else none (a type with
    fields of its own would make every sample about that type)."""
    return next((s for s in offered if s.type == "default"), None)


def _pretty(body: bytes | object) -> str:
    value = json.loads(body) if isinstance(body, bytes) else body
    return json.dumps(value, indent=2, ensure_ascii=False)


def facts(panel: Panel, catalog: Catalog, limits: Limits) -> dict[str, Any]:
    """Everything the template shows for `panel`."""
    url = f"https://{panel.domain}/api/v2"
    offered = catalog.offered(panel.id)
    example = _example_service(offered)
    if example is not None:
        service = str(example.public_id)
        quantity = min(max(1000, example.min_qty), example.max_qty)
        charge = money.format(money.charge(example.rate, quantity))
    else:
        service, quantity, charge = "SERVICE_ID", 1000, "1.00"
    key = ("key", samples.KEY)
    link = "https://www.instagram.com/p/C0ffee123/"
    order: samples.Fields = (
        key, ("action", "add"), ("service", service), ("link", link), ("quantity", str(quantity))
    )  # fmt: skip
    signed_order: samples.Fields = (
        *order[:3],
        ("link", "https://www.youtube.com/watch?v=dQw4w9WgXcQ&t=42"),
        order[4],
    )
    calls: dict[str, samples.Fields] = {
        "services": (key, ("action", "services")),
        "add": order,
        "status": (key, ("action", "status"), ("order", samples.ORDER_ID)),
        "status_many": (key, ("action", "status"), ("orders", samples.ORDER_IDS)),
        "refill": (key, ("action", "refill"), ("order", samples.ORDER_ID)),
        "refill_status": (key, ("action", "refill_status"), ("refill", samples.REFILL_ID)),
        "cancel": (key, ("action", "cancel"), ("order", samples.ORDER_ID)),
        "balance": (key, ("action", "balance")),
        "webhook_add": (
            key, ("action", "webhook_add"), ("url", samples.WEBHOOK_URL),
            ("events", "order.status,refill.status"),
        ),
        "webhooks": (key, ("action", "webhooks")),
        "webhook_delete": (key, ("action", "webhook_delete"), ("webhook", samples.WEBHOOK_ID)),
    }  # fmt: skip
    status = {
        "charge": charge, "start_count": "14523", "status": "In progress", "remains": "420",
        "currency": panel.currency,
    }  # fmt: skip
    types = sorted({s.type for s in offered}, key=SERVICE_TYPES.index)
    settings = panel.settings
    return {
        "panel": panel.domain,
        "currency": panel.currency,
        "url": url,
        "openapi": OPENAPI,
        "keys_page": KEYS_PAGE,
        "settings": settings,
        "order_limit": settings.order_limit,
        "order_limit_text": panelconf.orders_per_minute(settings.order_limit),
        "statuses": _statuses(settings.legacy_errors),
        "limits": limits,
        "ip_rate": panelconf.rate_text(limits.ip_rate),
        "user_rate": panelconf.rate_text(limits.user_rate),
        "strike_window": panelconf.rate_text(limits.strike_window),
        "block_seconds": panelconf.rate_text(limits.block_seconds),
        "webhook_slow": panelconf.rate_text(limits.webhook_slow),
        "body_kib": limits.max_body_bytes // 1024,
        "max_ids": MAX_IDS,
        "max_idempotency_key": MAX_IDEMPOTENCY_KEY,
        "offered": len(offered),
        "types": [(t, *TYPE_FIELDS[t]) for t in types],
        "example": example,
        "service": service,
        "quantity": quantity,
        "listing": _pretty(render_services(offered[:LISTED], 0, {})),
        "status_example": _pretty(status),
        "status_many_example": _pretty({"8842": status, "9999": {"error": "Incorrect order ID"}}),
        "balance_example": _pretty({"balance": "42.81", "currency": panel.currency}),
        "webhook_example": _pretty(
            {
                "id": "evt_5f0c2a9e41b7d3c8a6e19f02",
                "type": "order.status",
                "created": 1763900000,
                "data": {"order": 8842, **status, "status": "Completed", "remains": "0"},
            }
        ),
        "samples": {name: samples.request(url, fields) for name, fields in calls.items()},
        "idempotent": samples.idempotent(url, order),
        "signed": samples.signed(url, signed_order),
        "verify": samples.verify(),
        "client": samples.python_client(url),
    }


# -- serving -----------------------------------------------------------------------------------


class Portal:
    """The portal of one API process; `routes()` is what its listener mounts."""

    def __init__(
        self,
        *,
        state: CatalogHolder,
        limits: Limits,
        default_panel: str,
        assets: dict[str, Asset],
    ) -> None:
        self._state = state
        self._limits = limits
        self._default_panel = default_panel
        env = jinja2.Environment(
            loader=jinja2.PackageLoader("panelsrv.docs", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.globals["static"] = {n: a.path.decode() for n, a in assets.items()}
        env.globals["changelog"] = load_changelog()
        self._page = env.get_template("portal.html")
        self._headers = PORTAL_HEADERS + (answers.HSTS if limits.secure else b"")
        self._not_found = (
            404,
            env.get_template("not_found.html").render().encode(),
            answers.PAGE_HEADERS,
        )
        self._cache: dict[int, bytes] = {}
        self._cached_for: Catalog | None = None

    def routes(self) -> dict[bytes, Route]:
        return {PATH: Route(b"GET", self.serve, wire.HTML)}

    def serve(self, req: Request) -> Answer:
        req.action = "portal"
        catalog = self._state.catalog
        panel = catalog.panel_for_host(req.host, self._default_panel)
        if panel is None:
            return self._not_found
        return 200, self.page(catalog, panel), self._headers

    def page(self, catalog: Catalog, panel: Panel) -> bytes:
        """The panel's page, rendered at most once per catalog."""
        if catalog is not self._cached_for:
            self._cache.clear()
            self._cached_for = catalog
        body = self._cache.get(panel.id)
        if body is None:
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
            body = self._page.render(**facts(panel, catalog, self._limits)).encode()
            self._cache[panel.id] = body
        return body


_UNAVAILABLE = (
    503,
    b"<!doctype html><title>Unavailable</title>"
    b"<p>The API documentation is starting; try again shortly.",
    answers.PAGE_HEADERS + b"Retry-After: 5\r\n",
)


def _unavailable(req: Request) -> Answer:
    req.action = "portal"
    return _UNAVAILABLE


def unavailable_routes() -> dict[bytes, Route]:
    """/api answering 503 while the process cannot reach the database yet (the page is
    built from the catalog); `Portal.routes()` replaces it when it can."""
    return {PATH: Route(b"GET", _unavailable, wire.HTML)}
