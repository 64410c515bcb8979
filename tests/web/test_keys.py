"""A reseller's keys in the browser: from the invitation to a working key, rotated and revoked
on the page and refused by every API process at once; the raw key shown on its one page only.
"""

from __future__ import annotations

import secrets

from tests.e2e.kit import sql_value
from tests.kit.waiting import until_sync
from tests.web.browse import PROBES, Reseller, Site, assert_nowhere_but, blocking

CREATION_PAGES = {"/panels/api/create", "/panels/api/rotate"}
REVOKED_WITHIN = 1.0  # seconds: the revocation path's NOTIFY, as tests/e2e/test_revocation.py


def new_key(site: Site, reseller: Reseller) -> str:
    """The raw key on the creation page just reached; recorded for the site's log check."""
    visitor = reseller.visitor
    assert visitor.page.locator("#new-key").get_attribute("readonly") is not None
    raw = visitor.value("#new-key")
    assert raw.startswith("psk_"), raw
    site.raw_keys.append(raw)
    return raw


def refused_everywhere(site: Site, key: str) -> float:
    """Seconds until PROBES fresh connections (over both processes) all answer 401 for `key`."""
    return until_sync(lambda: site.probe(key) == [401] * PROBES, REVOKED_WITHIN, interval=0.0,
                      what="the old key refused by every process")  # fmt: skip


def test_an_invitation_from_the_cli_sets_the_password_and_the_reseller_signs_in(
    site: Site,
) -> None:
    user_id, email = site.user()
    link = site.invite_with_cli(email)
    assert link.startswith(site.url("/account/set-password?token=")), link
    password = f"pw-{secrets.token_hex(8)}"
    visitor = site.visitor()
    try:
        visitor.open(link)
        visitor.shot("set-password")
        visitor.submit("#set-password", password=password, confirm=password)
        assert visitor.path == "/login"
        assert visitor.page.locator(".notice").is_visible()
        visitor.shot("login")
        visitor.submit("#login", email=email, password=password)
        assert visitor.path == "/panels"
        assert visitor.page.locator("#balance").is_visible()
        assert visitor.page.locator("#tier").is_visible()
        visitor.shot("panels")
    finally:
        visitor.close()
    # The link works once: a second use (with or without a form to fill) sets nothing.
    stranger = site.visitor()
    try:
        stranger.open(link)
        if stranger.page.locator("#set-password").count():
            other = f"pw-{secrets.token_hex(8)}"
            stranger.submit("#set-password", password=other, confirm=other)
            stranger.sign_in(email, other)
            assert stranger.path == "/login", "a used invitation set a password"
        stranger.sign_in(email, password)
        assert stranger.path == "/panels"
        unused = "SELECT count(*) FROM account_invites WHERE user_id = $1 AND used_at IS NULL"
        assert blocking(sql_value(site.database_url, unused, user_id)) == 0
    finally:
        stranger.close()


def test_a_key_created_on_the_page_is_shown_once_and_works_on_every_process(
    site: Site, reseller: Reseller
) -> None:
    visitor = reseller.visitor
    landed = visitor.create_key(reseller.password, label="shop bot")
    assert visitor.path == "/panels/api/create", visitor.page.url
    assert "no-store" in landed.headers.get("cache-control", "")
    raw = new_key(site, reseller)
    visitor.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=site.url(""))
    visitor.page.locator("#copy").click()
    until_sync(lambda: visitor.page.evaluate("navigator.clipboard.readText()") == raw,
               what="#copy put the key on the clipboard")  # fmt: skip
    visitor.shot("key-created")

    assert site.probe(raw) == [200] * PROBES
    status, body = site.api(raw, "balance")
    assert (status, body) == (200, {"balance": "100.00", "currency": "USD"})

    visitor.goto("/panels/api")
    visitor.shot("keys")
    prefix = raw[:12]
    row = visitor.page.locator(f'tr.key[data-prefix="{prefix}"]')
    assert row.locator(".prefix").inner_text().strip().startswith(prefix)
    assert row.locator(".label").inner_text().strip() == "shop bot"
    for path in ("/panels", "/panels/api", "/dashboard/api", "/panels/settings"):
        visitor.goto(path)
    assert_nowhere_but(visitor.documents, raw, {"/panels/api/create"})
    assert [d.url for d in visitor.documents if d.body and raw in d.body] == [
        site.url("/panels/api/create")
    ]


def test_rotating_refuses_the_old_key_on_every_process_and_the_new_one_works(
    site: Site, reseller: Reseller
) -> None:
    visitor = reseller.visitor
    visitor.create_key(reseller.password)
    old = new_key(site, reseller)
    assert site.probe(old) == [200] * PROBES  # cached by both processes: rotation must evict

    landed = visitor.rotate_key(old[:12], reseller.password)
    assert visitor.path == "/panels/api/rotate", visitor.page.url
    assert "no-store" in landed.headers.get("cache-control", "")
    new = new_key(site, reseller)
    assert new != old
    visitor.shot("key-rotated")
    took = refused_everywhere(site, old)
    print(f"\nold key refused by every process {took * 1000:.0f} ms after the rotate page")
    assert site.api(old) == (401, {"error": "Invalid API key"})
    assert site.probe(new) == [200] * PROBES
    assert reseller.keys() == [(old[:12], True), (new[:12], False)]
    visitor.goto("/panels/api")
    assert_nowhere_but(visitor.documents, old, {"/panels/api/create"})
    assert_nowhere_but(visitor.documents, new, {"/panels/api/rotate"})


def test_revoking_with_confirmation_refuses_the_key(site: Site, reseller: Reseller) -> None:
    visitor = reseller.visitor
    visitor.create_key(reseller.password)
    raw = new_key(site, reseller)
    assert site.probe(raw) == [200] * PROBES
    visitor.revoke_key(raw[:12])
    assert visitor.path == "/panels/api"
    visitor.shot("key-revoked")
    refused_everywhere(site, raw)
    row = visitor.page.locator(f'tr.key[data-prefix="{raw[:12]}"]')
    assert row.locator(".revoked").inner_text().strip() != ""
    assert row.locator(".key-rotate").count() == 0  # no longer an active row
    assert reseller.keys() == [(raw[:12], True)]


def test_revoking_without_the_confirmation_changes_nothing(site: Site, reseller: Reseller) -> None:
    key = reseller.add_key()
    visitor = reseller.visitor
    visitor.goto("/panels/api")
    form = f'tr.key[data-prefix="{key.prefix}"] .key-revoke'
    fields = {"prefix": key.prefix, "csrf": visitor.csrf(form)}
    site.raw("POST", "/panels/api/revoke", fields, cookie=visitor.cookie())
    assert reseller.keys() == [(key.prefix, False)]
    assert site.api(key.raw)[0] == 200


def test_the_eleventh_active_key_is_refused_with_a_clear_message(
    site: Site, reseller: Reseller
) -> None:
    for _ in range(10):
        reseller.add_key()
    before = reseller.keys()
    visitor = reseller.visitor
    visitor.create_key(reseller.password)
    assert visitor.page.locator("#new-key").count() == 0
    assert visitor.text(".error").strip() == "You already have 10 active keys; revoke one first."
    visitor.shot("key-limit")
    assert reseller.keys() == before


def test_a_key_with_allowed_addresses_is_refused_outside_them(
    site: Site, reseller: Reseller
) -> None:
    visitor = reseller.visitor
    visitor.create_key(reseller.password, allowed_ips="198.51.100.0/24, 192.0.2.7")
    raw = new_key(site, reseller)
    assert site.api(raw, address="198.51.100.42")[0] == 200
    assert site.api(raw, address="192.0.2.7")[0] == 200
    assert site.api(raw, address="203.0.113.50") == (401, {"error": "Invalid API key"})
    assert site.api(raw)[0] == 401  # loopback is outside too


def test_no_raw_key_in_the_access_log(site: Site, reseller: Reseller) -> None:
    start = len(site.log_text())
    visitor = reseller.visitor
    visitor.create_key(reseller.password)
    raw = new_key(site, reseller)
    assert site.api(raw)[0] == 200
    visitor.rotate_key(raw[:12], reseller.password)
    rotated = new_key(site, reseller)
    # The access log has this test's requests (two pages, a create, an API call, a rotate),
    # so the grep is not of a log that has not been written yet ...
    until_sync(lambda: site.log_text()[start:].count("panelsrv.access") >= 5,
               what="this test's requests in the access log")  # fmt: skip
    log = site.log_text()
    # ... and neither key, nor their secret parts.
    for key in (raw, rotated):
        assert key not in log
        assert key[12:] not in log
