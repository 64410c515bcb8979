"""The operator's side of the account pages, as run: keys with a label and allowed addresses,
their last use, and the invitation link through which a reseller sets a password."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import orjson

from panelsrv.store import accounts, admin, db, keys
from tests.cli.test_admin_cli import ISO, ok_json, panelsrv
from tests.conftest import run_async
from tests.store.helpers import unique


def _reseller(database_url: str) -> tuple[str, str]:
    domain = unique("acct") + ".test"
    email = unique("reseller") + "@example.test"
    ok_json(database_url, "panel", "add", "--domain", domain)
    ok_json(database_url, "user", "add", "--email", email, "--domain", domain)
    return domain, email


def test_key_create_with_label_and_allowed_addresses_and_list_shows_last_use(
    database_url: str,
) -> None:
    _, email = _reseller(database_url)
    key = ok_json(database_url, "key", "create", "--email", email, "--label", " shop bot ",
                  "--allow", "192.0.2.7, 198.51.100.0/24", "--allow", "2001:db8::/32")  # fmt: skip
    allowed = ["192.0.2.7/32", "198.51.100.0/24", "2001:db8::/32"]
    assert (key["label"], key["allowed"]) == ("shop bot", allowed)
    plain = ok_json(database_url, "key", "create", "--email", email)

    async def use(prefix: str) -> None:  # what the API process's Usage does after a request
        conn = await db.connect(database_url)
        try:
            usage = keys.Usage()
            usage.note(await conn.fetchval("SELECT id FROM api_keys WHERE prefix = $1", prefix))
            assert await usage.flush(conn) == 1
        finally:
            await conn.close()

    run_async(use(key["prefix"]))
    listed = ok_json(database_url, "key", "list", "--email", email)
    assert [(k["prefix"], k["label"], k["allowed"], k["revoked"]) for k in listed] == [
        (key["prefix"], "shop bot", allowed, None),
        (plain["prefix"], "", [], None),
    ]
    assert ISO.match(listed[0]["last_used"]) and listed[1]["last_used"] is None
    text = panelsrv(database_url, "key", "list", "--email", email).stdout.splitlines()
    assert text[0].startswith(f"{key['prefix']}  created ")
    assert text[0].endswith(f"active  last used {listed[0]['last_used']}  label 'shop bot'"
                            f"  allowed {','.join(allowed)}")  # fmt: skip
    assert text[1].endswith("active  last used never  any address")


def test_user_invite_prints_a_link_that_sets_the_password_once(database_url: str) -> None:
    domain, email = _reseller(database_url)
    first = ok_json(database_url, "user", "invite", "--email", email)
    parts = urlsplit(first["link"])
    assert list(first) == ["link"]
    assert (parts.scheme, parts.netloc, parts.path) == ("https", domain, "/account/set-password")
    token = parse_qs(parts.query)["token"][0]
    done = panelsrv(database_url, "user", "invite", "--email", email,
                    "--base-url", "http://127.0.0.1:8080/")  # fmt: skip
    assert done.returncode == 0, done.stderr
    link, note = done.stdout.splitlines()
    assert link.startswith("http://127.0.0.1:8080/account/set-password?token=")
    assert note == f"(for {email}: works once, for 24 h; earlier links stop working)"
    second = parse_qs(urlsplit(link).query)["token"][0]

    async def usable(token: str) -> bool:
        conn = await db.connect(database_url)
        try:
            user = await admin.user_by_email(conn, email)
            return await accounts.find_invite(conn, token, user.panel_id) == (user.id, email)
        finally:
            await conn.close()

    assert run_async(usable(second)) and not run_async(usable(token))
    help_text = " ".join(panelsrv(database_url, "user", "invite", "--help").stdout.split())
    for words in ("valid 24 h, single use", "resets a forgotten password", "ends every session"):
        assert words in help_text


def test_user_invite_json_is_one_document(database_url: str) -> None:
    _, email = _reseller(database_url)
    done = panelsrv(database_url, "user", "invite", "--email", email, "--json",
                    "--base-url", "https://panel.example/reseller")  # fmt: skip
    assert done.returncode == 0 and done.stderr == ""
    doc = orjson.loads(done.stdout)
    assert doc["link"].startswith("https://panel.example/reseller/account/set-password?token=")
