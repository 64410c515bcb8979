"""Signing in and out in the browser: signing out closes every page, a password spray from one
address gets that address blocked by the guard (another address still signs in), the second
factor is asked once enrolled, and every page sends the security headers and cookie flags.
"""

from __future__ import annotations

import re
import time

import pyotp

from tests.e2e.kit import sql_value
from tests.kit.waiting import until_sync
from tests.web.browse import COOKIE, CSRF_COOKIE, Document, Reseller, Site, blocking

PAGES = ("/panels", "/panels/api", "/dashboard/api", "/panels/settings")
SPRAYER = "203.0.113.7"
BYSTANDER = "198.51.100.23"
WRONG_LOGIN = "Wrong e-mail or password."
CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')
CSRF_SET = re.compile(CSRF_COOKIE + r"=([^;]+)")
ERROR_TEXT = re.compile(r'<p class="error"[^>]*>([^<]*)</p>')


def test_signing_out_sends_every_page_to_login(site: Site, reseller: Reseller) -> None:
    visitor = reseller.visitor
    cookie = visitor.cookie()
    visitor.goto("/logout")  # GET only asks (it changes nothing); its button signs out
    assert visitor.path == "/logout"
    visitor.shot("logout")
    visitor.sign_out()
    assert visitor.path == "/login"
    visitor.shot("signed-out")
    for path in PAGES:
        visitor.goto(path)
        assert visitor.path == "/login", path
    for path in PAGES:  # the session ended on the server, not only in this browser
        r = site.raw("GET", path, cookie=cookie)
        assert (r.status, r.location) == (303, "/login"), path


def test_a_password_spray_from_one_address_is_blocked_and_another_address_signs_in(
    site: Site,
) -> None:
    victim, victim_email = site.user()
    sprayer = site.visitor(SPRAYER)
    statuses: list[int] = []
    errors: set[str] = set()
    try:
        # The spray itself as a script sends it (a form and its CSRF cookie, over and over);
        # the browser then finds the address blocked.
        form = site.raw("GET", "/login", address=SPRAYER)
        token = CSRF_FIELD.search(form.text)
        cookie = CSRF_SET.search(form.headers.get("Set-Cookie", ""))
        assert token is not None and cookie is not None, form
        for attempt in range(20):
            email = victim_email if attempt % 2 else f"nobody{attempt}@example.test"
            fields = {"csrf": token[1], "email": email, "password": f"guess-{attempt}-123"}
            landed = site.raw("POST", "/login", fields, csrf_cookie=cookie[1], address=SPRAYER)
            statuses.append(landed.status)
            if landed.status == 200:
                shown = ERROR_TEXT.search(landed.text)
                errors.add(shown[1].strip() if shown else "")
        blocked_at = statuses.index(429)
        # The process that struck last blocks at once; the other learns of the block at its
        # next sync with the limits hub (limit_sync_interval), so a wrong-password answer may
        # still come from it meanwhile. Then every attempt, on either process, is refused.
        def refused_everywhere() -> bool:
            again = [site.raw("POST", "/login", fields, csrf_cookie=cookie[1], address=SPRAYER)
                     for _ in range(10)]  # fmt: skip
            return all(r.status == 429 for r in again)

        until_sync(refused_everywhere, timeout=10.0, interval=0.05, what="the spray blocked")
        assert errors == {WRONG_LOGIN}  # one message, known e-mail or not
        assert sprayer.goto("/login").status == 429
        sprayer.shot("login-blocked")
        failures = "SELECT login_failures FROM users WHERE id = $1"
        assert blocking(sql_value(site.database_url, failures, victim)) > 0  # per account too
    finally:
        sprayer.close()
    bystander = site.reseller(address=BYSTANDER)  # another address signs in
    try:
        key = bystander.add_key()
        assert site.api(key.raw, address=BYSTANDER)[0] == 200
        # The block is the guard's, the same one a bad-key spray gets: the API refuses it too.
        assert site.api(key.raw, address=SPRAYER)[0] == 429
    finally:
        bystander.visitor.close()
    print(f"\nspray: blocked after {blocked_at} wrong passwords; statuses {statuses}")


def other_code(totp: pyotp.TOTP) -> str:
    """A six-digit code that no step near now accepts."""
    near = {totp.at(time.time() + d) for d in (-30, 0, 30)}
    return next(c for c in ("000000", "111111", "222222", "333333") if c not in near)


def test_two_factor_is_asked_once_enrolled_a_wrong_code_refused_a_recovery_code_works_once(
    site: Site, reseller: Reseller
) -> None:
    visitor = reseller.visitor
    visitor.goto("/panels/settings")
    visitor.shot("settings")
    visitor.submit("#totp-start")
    secret = visitor.text("#totp-secret").strip().replace(" ", "")
    assert visitor.page.locator("img#totp-qr").evaluate("img => img.naturalWidth") > 0
    visitor.shot("totp-enrol")
    totp = pyotp.TOTP(secret)
    landed = visitor.submit("#totp-confirm", code=totp.now())
    assert "no-store" in landed.headers.get("cache-control", "")
    codes = [c.strip() for c in visitor.page.locator("#recovery-codes li").all_inner_texts()]
    assert len(codes) == 10 and len(set(codes)) == 10, codes
    visitor.shot("recovery-codes")
    enabled = "SELECT totp_enabled_at IS NOT NULL FROM users WHERE id = $1"
    assert blocking(sql_value(site.database_url, enabled, reseller.user_id)) is True

    # Key creation now asks for the code too: refused without it or with a wrong one; the
    # next step's code is a fresh one.
    visitor.goto("/panels/api")
    fields = {"password": reseller.password, "csrf": visitor.csrf("#key-create")}
    r = site.raw("POST", "/panels/api/create", fields, cookie=visitor.cookie())
    assert 'id="new-key"' not in r.text, r.status
    visitor.create_key(reseller.password, code=other_code(totp))
    assert visitor.page.locator("#new-key").count() == 0
    assert visitor.page.locator(".error").is_visible()
    assert reseller.keys() == []
    visitor.create_key(reseller.password, code=totp.at(time.time() + 30))
    raw = visitor.value("#new-key")
    site.raw_keys.append(raw)

    visitor.sign_out()
    visitor.sign_in(reseller.email, reseller.password)
    assert visitor.path == "/login/totp"
    visitor.shot("login-totp")
    visitor.goto("/panels")  # half signed in opens no page
    assert visitor.path in ("/login", "/login/totp")
    if visitor.path == "/login":
        visitor.sign_in(reseller.email, reseller.password)
    visitor.submit("#totp", code=other_code(totp))
    assert visitor.path == "/login/totp"
    assert visitor.page.locator(".error").is_visible()
    visitor.submit("#totp", code=codes[0])
    assert visitor.path == "/panels"

    visitor.sign_out()
    visitor.sign_in(reseller.email, reseller.password)
    visitor.submit("#totp", code=codes[0])  # used already
    assert visitor.path == "/login/totp"
    assert visitor.page.locator(".error").is_visible()
    visitor.submit("#totp", code=codes[1])
    assert visitor.path == "/panels"


def security_problems(doc: Document) -> list[str]:
    h = doc.headers
    problems = []
    csp = {
        d.strip().split(" ")[0]: d.strip() for d in h.get("content-security-policy", "").split(";")
    }
    scripts = csp.get("script-src", csp.get("default-src", ""))
    if not scripts or "'unsafe-inline'" in scripts:
        problems.append(f"script-src: {scripts!r}")
    if csp.get("frame-ancestors") != "frame-ancestors 'none'":
        problems.append(f"frame-ancestors: {csp.get('frame-ancestors')!r}")
    if h.get("x-content-type-options") != "nosniff":
        problems.append(f"x-content-type-options: {h.get('x-content-type-options')!r}")
    if h.get("referrer-policy") != "no-referrer":
        problems.append(f"referrer-policy: {h.get('referrer-policy')!r}")
    if h.get("content-type") != "text/html; charset=utf-8":
        problems.append(f"content-type: {h.get('content-type')!r}")
    return [f"{doc.url} ({doc.status}): {p}" for p in problems]


def test_every_page_sends_the_security_headers_and_the_cookie_flags(
    site: Site, reseller: Reseller
) -> None:
    visitor = reseller.visitor
    for path in PAGES:
        visitor.goto(path)
    visitor.create_key(reseller.password)  # the creation page
    site.raw_keys.append(visitor.value("#new-key"))
    visitor.create_key("wrong-password-1")  # a page with an error
    stranger = site.visitor()
    try:
        stranger.goto("/account/set-password?token=not-a-token")
        stranger.sign_in(reseller.email, "wrong-password-1")
        documents = visitor.documents + stranger.documents
    finally:
        stranger.close()
    assert len(documents) >= 9
    assert [p for d in documents for p in security_problems(d)] == []

    # A refusal page too (403: no CSRF token).
    r = site.raw("POST", "/panels/api/create", {"password": "x"}, cookie=visitor.cookie())
    assert r.status == 403
    refusal = Document("/panels/api/create", r.status, {k.lower(): v for k, v in r.headers.items()},
                       r.text)  # fmt: skip
    assert security_problems(refusal) == []

    (cookie,) = [c for c in visitor.context.cookies() if c["name"] == COOKIE]
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Lax"
    assert cookie["path"] == "/"
    assert cookie["secure"] is False  # cookie_secure=false: plain HTTP here

    # The style sheet and script the pages link to (spec: /static/panelsrv.css and .js; the
    # pages link digest-named copies, /static/panelsrv.<digest>.css).
    visitor.goto("/panels")
    linked = visitor.page.eval_on_selector_all(
        "link[rel=stylesheet], script[src]",
        "els => els.map(e => e.getAttribute('href') || e.getAttribute('src'))",
    )
    assert len(linked) == 2, linked
    for path in linked:
        r = site.raw("GET", path)
        assert r.status == 200, path
        match = re.search(r"max-age=(\d+)", r.headers.get("Cache-Control", ""))
        assert match and int(match.group(1)) >= 86400, (path, r.headers.get("Cache-Control"))
