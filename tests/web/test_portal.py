"""The developer portal in the browser (issue 17): /api on two panels of different domains and
currencies names its own and none of the other's; every link on it resolves (each #anchor to an
element of the page, each same-site path to a page that answers); it reads without script, at
phone width, and prints without its contents column; a screenshot per panel (its first screen,
on a desktop and on a phone) in var/screenshots/."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest

from panelsrv.docs.portal import LISTED
from tests.e2e.served import World, call, offered
from tests.web.browse import OTHER, SCREENSHOTS, SHOP, Reseller, Site, blocking
from tests.web.conftest import PANELS

SERVICES = {SHOP: ("default", 4_100_001), OTHER: ("Poll", 4_100_002)}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def catalog(site: Site) -> dict[str, str]:
    """A service on each panel, known to both processes; a key of each panel."""
    world = World(site.database_url)
    keys = {}
    for panel, (kind, local_id) in SERVICES.items():
        blocking(world.service(panel, type=kind, local_id=local_id, name=f"{kind} of {panel}"))
        _, keys[panel] = blocking(world.user(panel))
        blocking(offered(site.port, panel, keys[panel], local_id, named=f"{kind} of {panel}"))
    return keys


def resolves(site: Site, path: str, panel: str) -> bool:
    """The path answers a page, after at most one redirect (the account's pages: /login)."""
    reply = site.raw("GET", path, panel=panel)
    if reply.status in (302, 303):
        reply = site.raw("GET", reply.location, panel=panel)
    return reply.status == 200


@pytest.mark.parametrize("panel", [SHOP, OTHER])
def test_the_portal_names_its_own_panel_and_every_link_resolves(
    site: Site, catalog: dict[str, str], panel: str
) -> None:
    currency = dict(PANELS)[panel]
    other, other_currency = next(p for p in PANELS if p[0] != panel)
    visitor = site.visitor()
    response = visitor.goto("/api", panel)
    assert response.status == 200
    text = visitor.text("main")
    assert f"https://{panel}/api/v2" in text and currency in text
    # The `services` example is the panel's own listing, as its API answers it (the session's
    # other tests add services too, shared ones among them: which come first is not this one's).
    listed = blocking(call(site.port, {"key": catalog[panel], "action": "services"}, host=panel))
    names = [s["name"] for s in listed.json()]
    kind = SERVICES[panel][0]
    assert f"{kind} of {panel}" in names and f"{SERVICES[other][0]} of {other}" not in names
    assert all(json.dumps(name, ensure_ascii=False) in text for name in names[:LISTED])
    html = visitor.page.content()
    assert other not in html and other_currency not in html
    assert visitor.page.locator("script").count() == 0  # nothing to run: it reads without

    hrefs = visitor.page.eval_on_selector_all(
        "a[href]", "as => as.map(a => a.getAttribute('href'))"
    )
    assert len(hrefs) > 20
    anchors = [h[1:] for h in hrefs if h.startswith("#")]
    missing = visitor.page.evaluate(
        "ids => ids.filter(id => !document.getElementById(id))", anchors
    )
    assert missing == [], missing
    for href in {h for h in hrefs if not h.startswith("#")}:
        assert href.startswith("/") and not urlsplit(href).netloc, href  # same-site only
        assert resolves(site, href, panel), href
    visitor.page.wait_for_load_state("load")  # the style sheets applied
    # The first screen: the whole page (some 30000 px tall) takes seconds to encode.
    visitor.page.screenshot(path=str(SCREENSHOTS / f"portal-{panel}.png"))
    visitor.page.emulate_media(media="print")
    assert visitor.page.locator("nav.toc").is_hidden()  # printed: the text alone
    visitor.page.emulate_media(media="screen")

    visitor.page.set_viewport_size(PHONE)
    visitor.goto("/api", panel)
    overflow = visitor.page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"{overflow}px wider than a phone"
    visitor.page.wait_for_load_state("load")
    visitor.page.screenshot(path=str(SCREENSHOTS / f"portal-{panel}-phone.png"))
    visitor.close()


def test_the_account_pages_link_to_the_portal(reseller: Reseller) -> None:
    visitor = reseller.visitor
    visitor.goto("/panels")
    with visitor.page.expect_navigation():
        visitor.page.locator("header nav a[href='/api']").click()
    assert visitor.path == "/api"
    assert f"https://{SHOP}/api/v2" in visitor.text("main")
