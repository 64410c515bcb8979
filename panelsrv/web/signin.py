"""Signing in and out, the second factor at sign-in, and setting a password from an invitation.

Imports store.accounts; the Pages object (web/pages.py) is handed in. A wrong e-mail, a wrong
password, an account without a password and a locked account all get the same sentence, after
the same work (a password verify: accounts.Passwords spends it on unknown e-mails too), so the
answer tells none of them apart. Every failure is a strike for the address and, for a known
account, a failure counted on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from panelsrv.store import accounts

if TYPE_CHECKING:
    from panelsrv.web.answers import Answer
    from panelsrv.web.pages import Pages, Visit

WRONG = "Wrong e-mail or password."
WRONG_CODE = "Wrong code."
BAD_LINK = "This link is invalid, used or expired. Ask your panel for a new one."
PENDING_LIFETIME = 300.0  # seconds between the password and the second factor, at most
EMAIL_MAX = 254
NOTICES = {"password-set": "Your password is set. Sign in with it.",
           "signed-out": "You are signed out."}  # fmt: skip


def _notice(v: Visit) -> str | None:
    return NOTICES.get(v.query.get("notice", ""))


async def login_form(p: Pages, v: Visit) -> Answer:
    if v.session is not None and v.session.stage == "full":
        return p.redirect("/panels")
    return p.page(v, "login.html", error=None, notice=_notice(v), email="")


async def login(p: Pages, v: Visit) -> Answer:
    email = v.form.get("email", "").strip().lower()[:EMAIL_MAX]
    password = v.form.get("password", "")[: accounts.PASSWORD_MAX]
    user = await accounts.sign_in_user(p.pool, email, v.panel.id) if email else None
    ok = await p.passwords.verify(None if user is None else user.password_hash, password)
    if user is None or not ok or user.locked:
        await p.failed(v, None if user is None else user.user_id)
        return p.page(v, "login.html", 200, error=WRONG, notice=None, email=email)
    await accounts.clear_failures(p.pool, user.user_id)
    if user.totp:
        cookie = await p.start_session(v, user.user_id, "password")
        return p.redirect("/login/totp", cookie)
    cookie = await p.start_session(v, user.user_id, "full")
    return p.redirect("/panels", cookie)


async def totp_form(p: Pages, v: Visit) -> Answer:
    return p.page(v, "totp.html", error=None)


async def totp(p: Pages, v: Visit) -> Answer:
    creds = await accounts.credentials(p.pool, v.user_id)
    if not creds.locked and await p.second_factor(v.user_id, v.form.get("code", "")):
        await accounts.clear_failures(p.pool, v.user_id)
        cookie = await p.start_session(v, v.user_id, "full")
        return p.redirect("/panels", cookie)
    await p.failed(v, v.user_id)
    return p.page(v, "totp.html", 200, error=WRONG_CODE)


async def logout_form(p: Pages, v: Visit) -> Answer:
    return p.page(v, "logout.html")


async def logout(p: Pages, v: Visit) -> Answer:
    assert v.session is not None
    await accounts.end_session(p.pool, v.session.id)
    return p.redirect("/login?notice=signed-out", p.cookies.clear(p.cookies.session))


async def set_password_form(p: Pages, v: Visit) -> Answer:
    token = v.query.get("token", "")
    found = await accounts.find_invite(p.pool, token, v.panel.id) if token else None
    if found is None:
        return p.page(v, "message.html", 404, title="Invalid link", text=BAD_LINK)
    return p.page(v, "set_password.html", token=token, email=found[1], error=None)


async def set_password(p: Pages, v: Visit) -> Answer:
    token = v.form.get("token", "")
    found = await accounts.find_invite(p.pool, token, v.panel.id) if token else None
    if found is None:
        return p.page(v, "message.html", 404, title="Invalid link", text=BAD_LINK)
    password = v.form.get("password", "")
    problem = accounts.password_problem(password, found[1])
    if problem is None and password != v.form.get("confirm", ""):
        problem = "The two passwords differ."
    if problem is not None:
        return p.page(v, "set_password.html", token=token, email=found[1], error=problem)
    hashed = await p.passwords.hash(password)
    if await accounts.use_invite(p.pool, token, v.panel.id, hashed) is None:
        return p.page(v, "message.html", 404, title="Invalid link", text=BAD_LINK)
    return p.redirect("/login?notice=password-set")
