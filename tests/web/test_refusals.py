"""Create and rotate refused, with nothing changed in the database: without the password, with a
wrong one, without or with a stale CSRF token, from another panel's Host, with an expired
session. The forged requests are raw HTTP carrying the browser's own cookie and token, as a
page of another site (or a thief of the cookie) would send them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import pytest

from tests.e2e.kit import execute
from tests.web.browse import OTHER, Reply, Reseller, Site, blocking

WRONG = "not-the-password-1"
ERROR = re.compile(r'class="[^"]*\berror\b')  # an element of class error


def forms(reseller: Reseller, prefix: str) -> dict[str, tuple[str, dict[str, str]]]:
    """The create and rotate posts as the keys page would send them, with its CSRF token."""
    visitor = reseller.visitor
    visitor.goto("/panels/api")
    csrf = visitor.csrf("#key-create")
    assert csrf == visitor.csrf(f'tr.key[data-prefix="{prefix}"] .key-rotate')
    return {
        "create": ("/panels/api/create", {"label": "x", "allowed_ips": "",
                                          "password": reseller.password, "csrf": csrf}),
        "rotate": ("/panels/api/rotate", {"prefix": prefix, "password": reseller.password,
                                          "csrf": csrf}),
    }  # fmt: skip


def without(fields: Mapping[str, str], name: str) -> dict[str, str]:
    return {k: v for k, v in fields.items() if k != name}


def assert_no_new_key(reply: Reply) -> None:
    assert reply.status < 500, reply
    assert 'id="new-key"' not in reply.text and "id=new-key" not in reply.text, reply.status


def test_without_the_password_nothing_is_made(site: Site, reseller: Reseller) -> None:
    key = reseller.add_key()
    before = reseller.keys()
    cookie = reseller.visitor.cookie()
    for path, fields in forms(reseller, key.prefix).values():
        for sent in (without(fields, "password"), {**fields, "password": ""}):
            r = site.raw("POST", path, sent, cookie=cookie)
            assert_no_new_key(r)
            assert r.status == 403 and ERROR.search(r.text), (path, r.status)
    assert reseller.keys() == before
    assert site.api(key.raw)[0] == 200


def test_a_wrong_password_shows_an_error_and_changes_nothing(
    site: Site, reseller: Reseller
) -> None:
    key = reseller.add_key()
    before = reseller.keys()
    visitor = reseller.visitor
    for landed in (visitor.create_key(WRONG), visitor.rotate_key(key.prefix, WRONG)):
        assert landed.status == 403  # the keys page again, with the error
        assert visitor.page.locator("#new-key").count() == 0
        assert visitor.page.locator(".error").is_visible()
    visitor.shot("key-wrong-password")
    assert reseller.keys() == before
    assert site.api(key.raw)[0] == 200


def test_a_missing_or_stale_csrf_token_answers_403_and_changes_nothing(
    site: Site, reseller: Reseller
) -> None:
    key = reseller.add_key()
    before = reseller.keys()
    visitor = reseller.visitor
    stale = forms(reseller, key.prefix)
    visitor.sign_out()
    visitor.sign_in(reseller.email, reseller.password)  # a new session, so a new token
    assert visitor.path == "/panels"
    cookie = visitor.cookie()
    for action, (path, fresh) in forms(reseller, key.prefix).items():
        assert fresh["csrf"] != stale[action][1]["csrf"]
        for sent in (without(fresh, "csrf"), {**fresh, "csrf": ""}, stale[action][1]):
            r = site.raw("POST", path, sent, cookie=cookie)
            assert r.status == 403, (path, r.status, sent.get("csrf"))
            assert_no_new_key(r)
    assert reseller.keys() == before
    assert site.api(key.raw)[0] == 200


def test_another_panels_host_refuses_the_session(site: Site, reseller: Reseller) -> None:
    key = reseller.add_key()
    before = reseller.keys()
    cookie = reseller.visitor.cookie()
    for path, fields in forms(reseller, key.prefix).values():
        r = site.raw("POST", path, fields, panel=OTHER, cookie=cookie)
        assert_no_new_key(r)
        assert r.status in (303, 403), (path, r.status)
    assert reseller.keys() == before
    page = site.raw("GET", "/panels/api", panel=OTHER, cookie=cookie)
    assert (page.status, page.location) == (303, "/login")
    assert site.api(key.raw)[0] == 200


@pytest.mark.parametrize(
    "expiry",
    [
        "last_seen_at = now() - interval '2 hours'",  # idle beyond session_idle_timeout
        "expires_at = now() - interval '1 second'",  # beyond session_lifetime
    ],
    ids=["idle", "lifetime"],
)
def test_an_expired_session_is_sent_to_login_and_changes_nothing(
    site: Site, reseller: Reseller, expiry: str
) -> None:
    key = reseller.add_key()
    before = reseller.keys()
    posts = forms(reseller, key.prefix)
    cookie = reseller.visitor.cookie()
    expire = f"UPDATE sessions SET {expiry} WHERE user_id = {reseller.user_id}"
    blocking(execute(site.database_url, expire))
    for path, fields in posts.values():
        r = site.raw("POST", path, fields, cookie=cookie)
        assert (r.status, r.location) == (303, "/login"), path
    assert reseller.keys() == before
    reseller.visitor.goto("/panels/api")
    assert reseller.visitor.path == "/login"
    assert site.api(key.raw)[0] == 200
