"""The portal in process: each panel's facts on its own page, the page rendered once per
catalog, markup in the catalog shown as text, the Changelog read safely, the headers, and the
panel found by Host as the API finds it."""

from __future__ import annotations

import html

from panelsrv import panelconf
from panelsrv.docs import portal
from panelsrv.http.request import Request
from panelsrv.store.catalog import Catalog, Panel, Service
from panelsrv.web.views import load_assets

LIMITS = portal.Limits(
    ip_rate=7.5, ip_burst=15, user_rate=3.0, user_burst=9, strike_limit=4, strike_window=30.0,
    block_seconds=600.0, sign_max_skew=120, max_body_bytes=64 * 1024, webhook_allow_http=False,
    webhook_allow_private=False, webhook_slow=5.0, secure=True,
)  # fmt: skip
SHOP = Panel(1, "shop.test", "USD", panelconf.PanelSettings())
EURO = Panel(2, "euro.test", "EUR", panelconf.PanelSettings(legacy_errors=True,
                                                            sec_order_max_per_min=7))  # fmt: skip


def service(id: int, panel: Panel, type: str = "default", name: str = "Followers") -> Service:
    return Service(id, panel.id, id, name, type, "Instagram", 450_00, 100, 100_000, False, True,
                   True, 3600, False, None, None)  # fmt: skip


def catalog(*services: Service) -> Catalog:
    panels = {p.id: p for p in (SHOP, EURO)}
    return Catalog(
        panels,
        {p.domain: p for p in panels.values()},
        {s.id: s for s in services},
        {(s.panel_id, s.id): s for s in services if s.panel_id is not None},
    )


class Holder:
    def __init__(self, current: Catalog) -> None:
        self.catalog = current


def make(
    current: Catalog, default_panel: str = "", limits: portal.Limits = LIMITS
) -> tuple[portal.Portal, Holder]:
    holder = Holder(current)
    made = portal.Portal(
        state=holder, limits=limits, default_panel=default_panel, assets=load_assets()
    )
    return made, holder


def get(p: portal.Portal, host: str) -> tuple[int, str, bytes]:
    req = Request()
    req.host = host
    status, body, headers = p.serve(req)
    return status, body.decode(), headers


def test_each_panel_states_its_own_domain_currency_types_and_limits() -> None:
    p, _ = make(catalog(service(11, SHOP), service(21, EURO, "Poll")))
    _, shop, _ = get(p, "shop.test")
    _, euro, _ = get(p, "euro.test")
    assert "https://shop.test/api/v2" in shop and "euro.test" not in shop
    assert "https://euro.test/api/v2" in euro and "shop.test" not in euro
    assert "EUR" in euro and "EUR" not in shop and "USD" not in euro
    assert "<code>Poll</code>" in euro and "<code>Poll</code>" not in shop
    assert "at most 7 orders per minute on this panel" in euro
    assert "at most 30 orders per minute on this panel" in shop
    assert "This panel answers errors with status 200" in euro
    assert "This panel answers errors with status 200" not in shop
    for text in ("7.5 requests/s, burst 15", "4 from one address within 30 s block it for 600 s",
                 "your account allows 3 requests/s (burst 9)", "more than 120 s off"):  # fmt: skip
        assert text in shop, text
    listed = html.unescape(shop)
    assert '"service": 11' in listed and '"service": 21' not in listed


def test_the_page_is_rendered_once_per_catalog() -> None:
    first = catalog(service(11, SHOP))
    p, holder = make(first)
    _, before, _ = get(p, "shop.test")
    assert p.page(first, SHOP) is p.page(first, SHOP)
    holder.catalog = catalog(service(11, SHOP, name="Renamed followers"))  # a reload
    _, after, _ = get(p, "shop.test")
    assert "Renamed followers" in after and "Renamed followers" not in before


def test_markup_in_the_catalog_is_text() -> None:
    p, _ = make(catalog(service(11, SHOP, name='<script>alert(1)</script>"')))
    _, page, _ = get(p, "shop.test")
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_an_unknown_host_is_the_default_panel_or_not_found() -> None:
    p, _ = make(catalog(), default_panel="shop.test")
    status, page, _ = get(p, "nowhere.test")
    assert status == 200 and "https://shop.test/api/v2" in page
    p, _ = make(catalog())
    status, page, headers = get(p, "nowhere.test")
    assert status == 404 and "No panel is served at this address." in page
    assert b"no-store" in headers


def test_the_page_carries_the_pages_policy_and_may_be_cached_a_minute() -> None:
    p, _ = make(catalog())
    _, page, headers = get(p, "shop.test")
    assert b"Content-Security-Policy: default-src 'none'; script-src 'self'" in headers
    assert b"Cache-Control: public, max-age=60\r\n" in headers and b"no-store" not in headers
    assert b"Strict-Transport-Security" in headers
    assert "<script" not in page and " style=" not in page
    assert 'href="/panels/api"' in page and 'href="/api/openapi.json"' in page
    p, _ = make(catalog(), limits=LIMITS._replace(secure=False))
    assert b"Strict-Transport-Security" not in get(p, "shop.test")[2]


def test_the_changelog_is_headings_paragraphs_and_items_escaped() -> None:
    blocks = portal.read_changelog(
        "# Title\n\n## 2026: `v2` <b>\n\nA paragraph\ngoes on.\n\n- one `<i>`\n  continued\n"
        "- two ` unpaired\n"
    )
    assert blocks == [
        portal.Block("h3", [[("2026: ", False), ("v2", True), (" <b>", False)]]),
        portal.Block("p", [[("A paragraph goes on.", False)]]),
        portal.Block("ul", [[("one ", False), ("<i>", True), (" continued", False)],
                            [("two ` unpaired", False)]]),
    ]  # fmt: skip
    p, _ = make(catalog())
    _, page, _ = get(p, "shop.test")
    assert "<h3>November 2026: API v2</h3>" in page
    shipped = portal.load_changelog()
    assert shipped and all(b.items for b in shipped)


def test_a_panel_without_a_default_service_orders_a_placeholder() -> None:
    p, _ = make(catalog(service(11, SHOP, "Package")))
    _, page, _ = get(p, "shop.test")
    assert "SERVICE_ID" in page
