"""The reseller pages in process (tests/pages/rig.py): every refusal changes nothing (checked in
the database), the raw key is on its creation page only, and every page carries its headers."""

from __future__ import annotations

import argon2
import pyotp

from panelsrv.store import accounts, keys, ledger
from panelsrv.web import answers
from tests.pages.rig import PASSWORD, account, site
from tests.store.helpers import World, new_panel, new_user, order_of

XSS = '"><script>alert(1)</script>'


async def test_invitation_sign_in_and_the_account_home(database_url: str) -> None:
    async with World(database_url) as w:
        s = await site(w)
        token = await accounts.create_invite(w.conn, w.user.id)
        c = s.client()
        form = await c.get("/account/set-password", query=f"token={token}")
        assert form.status == 200 and w.user.email in form.text
        weak = await c.go("POST", "/account/set-password",
                          {"csrf": form.csrf(), "token": token, "password": "password123",
                           "confirm": "password123"})  # fmt: skip
        assert weak.status == 200 and "too common" in weak.text
        done = await c.go("POST", "/account/set-password",
                          {"csrf": form.csrf(), "token": token, "password": PASSWORD,
                           "confirm": PASSWORD})  # fmt: skip
        assert (done.status, done.header("Location")) == (303, "/login?notice=password-set")
        again = await c.get("/account/set-password", query=f"token={token}")
        assert again.status == 404  # used
        signed = await s.signed_in(w.user.email)
        home = await signed.get("/panels")
        assert home.status == 200
        assert 'id="balance">100.00</span>' in home.text and 'id="tier">standard' in home.text
        assert (await s.client().get("/panels")).header("Location") == "/login"


async def test_sign_in_answers_alike_for_an_unknown_e_mail_and_a_wrong_password(
    database_url: str,
) -> None:
    async with account(database_url) as (w, s):
        c = s.client()
        unknown = await c.post("/login", {"email": "nobody@example.test", "password": PASSWORD})
        wrong = await c.post("/login", {"email": w.user.email, "password": PASSWORD + "x"})
        assert unknown.status == wrong.status == 200
        assert "Wrong e-mail or password." in unknown.text
        assert unknown.text.replace("nobody@example.test", w.user.email) == wrong.text
        assert s.strikes == [c.ip, c.ip]
        failures = "SELECT login_failures FROM users WHERE id = $1"
        assert await w.conn.fetchval(failures, w.user.id) == 1


async def test_the_account_locks_after_its_failures_with_the_same_answer(database_url: str) -> None:
    async with account(database_url) as (w, s):
        for _ in range(s.pages.settings.max_failures):
            await s.client().post("/login", {"email": w.user.email, "password": "wrong one!"})
        right = await s.client().post("/login", {"email": w.user.email, "password": PASSWORD})
        assert right.status == 200 and "Wrong e-mail or password." in right.text


async def test_a_post_without_or_with_a_stale_csrf_token_is_refused_and_changes_nothing(
    database_url: str,
) -> None:
    async with account(database_url) as (w, s):
        c = await s.signed_in(w.user.email)
        other = await s.signed_in(w.user.email)
        stale = (await other.get("/panels/api")).csrf()
        fields = {"password": PASSWORD, "label": "x"}
        for sent in (fields, {**fields, "csrf": ""}, {**fields, "csrf": stale}):
            r = await c.go("POST", "/panels/api/create", sent)
            assert r.status == 403, r.text
            assert "psk_" not in r.text
        assert await s.count_keys(w.user.id) == 0
        # Not a form at all: 400, nothing done.
        r = await c.go("POST", "/panels/api/create", ctype=b"application/json", body=b"{}")
        assert r.status == 400 and await s.count_keys(w.user.id) == 0
        # Sign-in forms carry the CSRF cookie's token.
        anon = s.client()
        r = await anon.go("POST", "/login", {"email": w.user.email, "password": PASSWORD})
        assert r.status == 403 and b"Set-Cookie: __Host-panelsrv=" not in r.headers


async def test_key_creation_wants_the_password_again_and_shows_the_key_once(
    database_url: str,
) -> None:
    async with account(database_url) as (w, s):
        c = await s.signed_in(w.user.email)
        for password in ("", "wrong password"):
            r = await c.post("/panels/api/create", {"password": password}, "/panels/api")
            assert r.status == 403 and "Wrong password." in r.text
        assert await s.count_keys(w.user.id) == 0
        made = await c.post(
            "/panels/api/create",
            {"password": PASSWORD, "label": "bot <1>", "allowed_ips": "203.0.113.0/24"},
            "/panels/api",
        )
        assert made.status == 200 and made.header("Cache-Control") == "no-store"
        raw = made.text.split('id="new-key" class="secret" type="text" value="')[1].split('"')[0]
        assert keys.well_formed(raw)
        listing = await c.get("/panels/api")
        assert raw not in listing.text and raw[: keys.DISPLAY_PREFIX_LENGTH] in listing.text
        assert "bot &lt;1&gt;" in listing.text and "203.0.113.0/24" in listing.text
        # Rotate: the old one is revoked, a new one shown.
        rotated = await c.post(
            "/panels/api/rotate",
            {"password": PASSWORD, "prefix": raw[: keys.DISPLAY_PREFIX_LENGTH]},
            "/panels/api",
        )
        assert rotated.status == 200 and raw not in rotated.text
        listed = {k.revoked is None: k for k in await keys.list_keys(w.conn, w.user.id)}
        assert len(listed) == 2 and listed[False].prefix == raw[: keys.DISPLAY_PREFIX_LENGTH]
        assert listed[True].label == "bot <1>" and listed[True].allowed == ["203.0.113.0/24"]


async def test_the_eleventh_active_key_is_refused(database_url: str) -> None:
    async with account(database_url) as (w, s):
        for _ in range(keys.MAX_ACTIVE_KEYS):
            await keys.create(w.conn, w.user.id)
        c = await s.signed_in(w.user.email)
        r = await c.post("/panels/api/create", {"password": PASSWORD}, "/panels/api")
        assert r.status == 409
        assert "You already have 10 active keys; revoke one first." in r.text
        assert await s.count_keys(w.user.id) == keys.MAX_ACTIVE_KEYS


async def test_revocation_needs_the_tick_and_only_the_users_own_key(database_url: str) -> None:
    async with account(database_url) as (w, s):
        mine = await keys.create(w.conn, w.user.id)
        _, domain = await new_panel(w.conn)
        stranger = await new_user(w.conn, domain)
        theirs = await keys.create(w.conn, stranger.id)
        c = await s.signed_in(w.user.email)
        r = await c.post("/panels/api/revoke", {"prefix": mine.prefix}, "/panels/api")
        assert r.status == 400
        r = await c.post(
            "/panels/api/revoke", {"prefix": theirs.prefix, "confirm": "yes"}, "/panels/api"
        )
        assert r.status == 404
        r = await c.post(
            "/panels/api/revoke", {"prefix": mine.prefix, "confirm": "yes"}, "/panels/api"
        )
        assert (r.status, r.header("Location")) == (303, "/panels/api?done=key-revoked")
        states = {k.prefix: k.revoked is not None for k in await keys.list_keys(w.conn, w.user.id)}
        assert states == {mine.prefix: True}
        assert (await keys.list_keys(w.conn, stranger.id))[0].revoked is None


async def test_a_session_of_one_panel_is_refused_on_another_and_when_expired(
    database_url: str,
) -> None:
    async with World(database_url) as w:
        _, other_domain = await new_panel(w.conn)
        s = await site(w)
        await s.password_for(w.user.id)
        c = await s.signed_in(w.user.email)
        elsewhere = s.client(host=other_domain)
        elsewhere.jar = dict(c.jar)
        r = await elsewhere.get("/panels/api")
        assert (r.status, r.header("Location")) == (303, "/login")
        await w.conn.execute(
            "UPDATE sessions SET expires_at = now() WHERE user_id = $1", w.user.id
        )
        assert (await c.get("/panels")).header("Location") == "/login"


async def test_get_changes_nothing_and_sign_out_needs_its_post(database_url: str) -> None:
    async with account(database_url) as (w, s):
        c = await s.signed_in(w.user.email)
        assert (await c.get("/logout")).status == 200
        assert (await c.get("/panels/api/create")).header("Location") == "/panels/api"
        assert (await c.get("/panels")).status == 200  # still signed in
        out = await c.post("/logout", {})
        assert out.header("Location") == "/login?notice=signed-out"
        assert (await c.get("/panels")).header("Location") == "/login"


async def test_user_text_is_escaped_on_the_orders_page(database_url: str) -> None:
    async with account(database_url) as (w, s):
        await ledger.place_order(
            w.conn, order_of(w.panel_id, w.user.id, w.service_id, link=XSS, order_limit=100)
        )
        c = await s.signed_in(w.user.email)
        home = await c.get("/panels")
        assert "<script>alert(1)</script>" not in home.text
        assert "&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in home.text
        found = await c.get("/panels", query="q=" + "%3Cscript")
        assert found.text.count('class="order"') == 1
        none = await c.get("/panels", query="status=Completed")
        assert 'class="order"' not in none.text


async def test_every_page_carries_the_security_headers(database_url: str) -> None:
    async with account(database_url) as (w, s):
        c = await s.signed_in(w.user.email)
        for path in ("/panels", "/panels/api", "/panels/settings", "/logout"):
            r = await c.get(path)
            assert r.status == 200, path
            assert r.header("Content-Security-Policy") == answers.CSP
            assert "'unsafe-inline'" not in answers.CSP and "frame-ancestors 'none'" in answers.CSP
            assert r.header("X-Content-Type-Options") == "nosniff"
            assert r.header("Referrer-Policy") == "no-referrer"
            assert r.header("Cache-Control") == "no-store"
        login = await s.client().get("/login")
        cookie = login.header("Set-Cookie") or ""
        assert cookie.startswith("__Host-panelsrv-csrf=") and "HttpOnly" in cookie
        assert "SameSite=Lax" in cookie and "Secure" in cookie and "Path=/" in cookie
        css = sorted(p for p in s.pages.routes() if p.endswith(b".css"))
        # the pages' stylesheet and the portal's (issue 17), each under its digest
        assert [p.split(b".")[0] for p in css] == [b"/static/panelsrv", b"/static/portal"]
        for path in css:
            r = await c.go("GET", path.decode())
            assert r.status == 200 and r.body.startswith(b"/*")
            assert r.header("Cache-Control") == "public, max-age=31536000, immutable"


async def test_two_factor_enrolment_and_sign_in_with_a_code_or_a_recovery_code(
    database_url: str,
) -> None:
    async with account(database_url) as (w, s):
        c = await s.signed_in(w.user.email)
        enrol = await c.post("/panels/settings/totp", {}, "/panels/settings")
        secret = enrol.text.split('id="totp-secret">')[1].split("<")[0]
        assert 'id="totp-qr" src="data:image/svg+xml' in enrol.text
        bad = await c.go("POST", "/panels/settings/totp/confirm",
                         {"csrf": enrol.csrf(), "code": "000000x"})  # fmt: skip
        assert bad.status == 400
        done = await c.go("POST", "/panels/settings/totp/confirm",
                          {"csrf": enrol.csrf(), "code": pyotp.TOTP(secret).now()})  # fmt: skip
        codes = [x.split("</code>")[0] for x in done.text.split("<li><code>")[1:]]
        assert len(codes) == 10
        fresh = s.client()
        r = await fresh.post("/login", {"email": w.user.email, "password": PASSWORD})
        assert r.header("Location") == "/login/totp"
        assert (await fresh.get("/panels")).header("Location") == "/login"  # not yet
        wrong = await fresh.post("/login/totp", {"code": "123456"})
        assert wrong.status == 200 and "Wrong code." in wrong.text
        ok = await fresh.post("/login/totp", {"code": codes[0]})
        assert ok.header("Location") == "/panels"
        assert (await fresh.get("/panels")).status == 200
        again = s.client()
        await again.post("/login", {"email": w.user.email, "password": PASSWORD})
        reused = await again.post("/login/totp", {"code": codes[0]})
        assert "Wrong code." in reused.text
        # Key creation now wants the code too.
        r = await c.post("/panels/api/create", {"password": PASSWORD}, "/panels/api")
        assert r.status == 403 and await s.count_keys(w.user.id) == 0
        r = await c.post("/panels/api/create", {"password": PASSWORD, "code": codes[1]},
                         "/panels/api")  # fmt: skip
        assert r.status == 200 and await s.count_keys(w.user.id) == 1


async def test_a_password_change_wants_the_current_one_and_ends_other_sessions(
    database_url: str,
) -> None:
    async with account(database_url) as (w, s):
        c = await s.signed_in(w.user.email)
        other = await s.signed_in(w.user.email)
        new = "another long passphrase"
        r = await c.post("/panels/settings/password",
                         {"current": "nope", "password": new, "confirm": new},
                         "/panels/settings")  # fmt: skip
        assert r.status == 403
        r = await c.post("/panels/settings/password",
                         {"current": PASSWORD, "password": new, "confirm": new},
                         "/panels/settings")  # fmt: skip
        assert r.header("Location") == "/panels/settings?done=password-changed"
        assert (await c.get("/panels")).status == 200
        assert (await other.get("/panels")).header("Location") == "/login"


async def test_webhooks_are_added_by_the_apis_rules(database_url: str) -> None:
    async with account(database_url) as (w, s):
        c = await s.signed_in(w.user.email)
        r = await c.post("/panels/webhooks/add", {"url": "http://127.0.0.1/hook"}, "/panels")
        assert r.status == 400 and "url:" in r.text
        count = await w.conn.fetchval(
            "SELECT count(*) FROM webhooks WHERE user_id = $1", w.user.id
        )
        assert count == 0


async def test_a_hash_of_older_parameters_is_replaced_at_sign_in(database_url: str) -> None:
    async with World(database_url) as w:
        s = await site(w)
        older = argon2.PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
        await w.conn.execute(
            "UPDATE users SET password_hash = $2 WHERE id = $1", w.user.id, older.hash(PASSWORD)
        )
        await s.signed_in(w.user.email)
        stored = await w.conn.fetchval("SELECT password_hash FROM users WHERE id = $1", w.user.id)
        assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
        assert argon2.PasswordHasher().verify(stored, PASSWORD)


async def test_an_api_key_alone_opens_no_page(database_url: str) -> None:
    async with account(database_url) as (w, s):
        key = (await keys.create(w.conn, w.user.id)).raw
        c = s.client()
        c.jar["__Host-panelsrv"] = key  # as a cookie, and as fields
        for path in ("/panels", "/panels/api", "/panels/settings"):
            assert (await c.get(path)).header("Location") == "/login"
        r = await c.go("POST", "/panels/api/create", {"key": key, "password": PASSWORD})
        assert r.header("Location") == "/login"
        r = await c.go("POST", "/login", {"key": key, "email": w.user.email})
        assert r.status == 403
        assert await s.count_keys(w.user.id) == 1


async def test_a_sign_in_never_adopts_the_session_id_the_browser_brought(
    database_url: str,
) -> None:
    async with account(database_url) as (w, s):
        c = await s.signed_in(w.user.email)
        session = s.pages.cookies.session
        brought = c.jar[session]
        assert (await c.post("/logout", {})).status == 303
        # A browser that still holds (or was given) that id signs in: it gets a new one.
        d = s.client()
        form = await d.get("/login")
        d.jar[session] = brought
        signed = await d.go("POST", "/login", {"csrf": form.csrf(), "email": w.user.email,
                                               "password": PASSWORD})  # fmt: skip
        assert (signed.status, signed.header("Location")) == (303, "/panels")
        assert d.jar[session] != brought and (await d.get("/panels")).status == 200
        old = s.client()
        old.jar = {session: brought}
        assert (await old.get("/panels")).header("Location") == "/login"
        live = "SELECT count(*) FROM sessions WHERE user_id = $1 AND ended_at IS NULL"
        assert await w.conn.fetchval(live, w.user.id) == 1


async def test_a_webhook_added_and_deleted_on_the_account_home(database_url: str) -> None:
    async with account(database_url) as (w, s):
        c = await s.signed_in(w.user.email)
        hook_url = {"url": "https://93.184.216.34/hook"}  # a public address: no lookup
        added = await c.post("/panels/webhooks/add", hook_url, "/panels")
        assert added.status == 200 and "whsec_" in added.text  # its secret, shown once
        assert added.header("Cache-Control") == "no-store"
        hooks = "SELECT id FROM webhooks WHERE user_id = $1 AND deleted_at IS NULL"
        (hook,) = [r[0] for r in await w.conn.fetch(hooks, w.user.id)]
        home = await c.get("/panels")
        assert "https://93.184.216.34/hook" in home.text and "whsec_" not in home.text
        gone = await c.post("/panels/webhooks/delete", {"webhook": str(hook)}, "/panels")
        assert gone.header("Location") == "/panels?done=webhook-deleted"
        assert await w.conn.fetch(hooks, w.user.id) == []


async def test_the_orders_are_paged_newest_first(database_url: str) -> None:
    async with account(database_url) as (w, s):
        for n in range(30):  # 1.00 each of the wallet's 100.00
            order = order_of(w.panel_id, w.user.id, w.service_id, link=f"https://x.test/{n}",
                             order_limit=100)  # fmt: skip
            await ledger.place_order(w.conn, order)
        c = await s.signed_in(w.user.email)
        first, second = await c.get("/panels"), await c.get("/panels", query="page=2")
        assert first.text.count('class="order"') == 25 and second.text.count('class="order"') == 5
        assert "https://x.test/29" in first.text and "https://x.test/5" in first.text
        assert "https://x.test/4" not in first.text and "https://x.test/29" not in second.text
        assert all(f"https://x.test/{n}" in second.text for n in range(5))
        beyond = await c.get("/panels", query="page=9")
        assert beyond.status == 200 and 'class="order"' not in beyond.text
