"""The account home in the browser: an order whose link carries markup shows it as text, in the
list and in a search, and no script of it runs (no dialog fires)."""

from __future__ import annotations

from urllib.parse import urlencode

from tests.e2e.kit import execute
from tests.e2e.served import World, offered
from tests.web.browse import SHOP, Reseller, Site, blocking

SERVICE = 4_000_001  # panel-local id, far above any global id of the test database
MARKUP = '"><script>alert(1)</script>'
IMAGE = '"><img src=x onerror=alert(2)>'  # whitespace: the API refuses it, so only by SQL


def test_an_order_link_with_markup_shows_as_text_and_runs_nothing(
    site: Site, reseller: Reseller
) -> None:
    key = reseller.add_key()
    blocking(World(site.database_url).service(SHOP, local_id=SERVICE, rate="1.00"))
    blocking(offered(site.port, SHOP, key.raw, SERVICE))
    through_api = f"https://example.com/{MARKUP}"
    placed = []
    for link in (through_api, "https://example.com/a", "https://example.com/b"):
        status, body = site.api(key.raw, "add", service=SERVICE, quantity=100, link=link)
        assert status == 200 and "order" in body, body
        placed.append(body["order"])
    blocking(execute(site.database_url, f"""
        UPDATE orders SET link = $q${MARKUP}$q$ WHERE id = {placed[1]};
        UPDATE orders SET link = $q${IMAGE}$q$ WHERE id = {placed[2]};
    """))  # fmt: skip

    visitor = reseller.visitor
    visitor.goto("/panels")
    visitor.shot("orders")
    rows = visitor.page.locator("#orders tr.order")
    assert rows.count() == 3
    text = visitor.text("#orders")
    for link in (through_api, MARKUP, IMAGE):
        assert link in text, link
    assert visitor.page.locator("#orders script, #orders img").count() == 0

    visitor.goto("/panels?" + urlencode({"q": "<script>"}))
    assert MARKUP in visitor.text("#orders")
    visitor.goto("/panels?" + urlencode({"q": str(placed[0])}))
    assert visitor.page.locator("#orders tr.order").count() == 1
    assert visitor.dialogs == []


def test_a_webhook_added_and_deleted_in_the_browser(reseller: Reseller) -> None:
    visitor = reseller.visitor
    visitor.goto("/panels")
    url = "https://93.184.216.34/hook"  # a public address literal: nothing to resolve
    landed = visitor.submit("#webhook-add", url=url)
    assert landed.status == 200 and landed.headers["cache-control"] == "no-store"
    assert visitor.value("#webhook-secret").startswith("whsec_")  # shown this once
    visitor.shot("webhook-added")
    visitor.goto("/panels")
    row = visitor.page.locator("#webhooks tr.webhook")
    assert row.count() == 1 and visitor.text("#webhooks .url") == url
    assert "whsec_" not in visitor.page.content()
    visitor.submit("#webhooks form.webhook-delete")
    assert visitor.path == "/panels" and visitor.page.locator("#webhooks tr.webhook").count() == 0
    visitor.shot("webhook-deleted")
