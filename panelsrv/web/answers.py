"""The pages' answers: security headers, cookies and redirects, built from constants.

Pure: standard library only. Header bytes come from constants here and from tokens and paths our
own code made (a redirect's target is always one of the pages' own paths, never request input),
as the transport's contract requires (http/request.py). Every page answer carries PAGE_HEADERS:
a Content-Security-Policy that allows no inline script, style or frame, and `no-store` (pages
show account data; `public_page_headers` for a page that shows none); static files carry
STATIC_HEADERS instead.
"""

from __future__ import annotations

from typing import NamedTuple

Answer = tuple[int, bytes, bytes]  # status, body, extra header lines (http/request.py)

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_COMMON = (
    b"X-Content-Type-Options: nosniff\r\n"
    b"Referrer-Policy: no-referrer\r\n"
    b"Cross-Origin-Resource-Policy: same-origin\r\n"
)
PAGE_HEADERS = (
    b"Content-Security-Policy: " + CSP.encode() + b"\r\n"
    b"X-Frame-Options: DENY\r\n"
    b"Cross-Origin-Opener-Policy: same-origin\r\n"
    b"Cache-Control: no-store\r\n" + _COMMON
)
HSTS = b"Strict-Transport-Security: max-age=31536000\r\n"


def public_page_headers(max_age: int) -> bytes:
    """PAGE_HEADERS for a page that shows no account data (the developer portal): the same
    policy, but a browser or proxy may keep it `max_age` seconds."""
    return PAGE_HEADERS.replace(
        b"Cache-Control: no-store\r\n", b"Cache-Control: public, max-age=%d\r\n" % max_age
    )


STATIC_HEADERS = b"Cache-Control: public, max-age=31536000, immutable\r\n" + _COMMON


class Cookies(NamedTuple):
    """The names and attributes of the pages' two cookies, fixed by `cookie_secure`: the
    session, and the sign-in forms' CSRF token (before there is a session to bind one to).
    With Secure they take the `__Host-` prefix: the browser then refuses them from a
    sibling domain or over plain HTTP."""

    session: str
    csrf: str
    attributes: bytes
    headers: bytes  # PAGE_HEADERS, with HSTS when secure

    @classmethod
    def build(cls, secure: bool) -> Cookies:
        prefix = "__Host-" if secure else ""
        attributes = b"; Path=/; HttpOnly; SameSite=Lax" + (b"; Secure" if secure else b"")
        return cls(
            prefix + "panelsrv",
            prefix + "panelsrv-csrf",
            attributes,
            PAGE_HEADERS + (HSTS if secure else b""),
        )

    def set(self, name: str, value: str, max_age: int | None = None) -> bytes:
        """A Set-Cookie line; `value` is a token we made (URL-safe base64)."""
        age = b"" if max_age is None else b"; Max-Age=%d" % max_age
        return b"Set-Cookie: %s=%s%s%s\r\n" % (
            name.encode(),
            value.encode("ascii"),
            self.attributes,
            age,
        )

    def clear(self, name: str) -> bytes:
        return self.set(name, "", 0)


def redirect(location: str, headers: bytes, extra: bytes = b"") -> Answer:
    """303 See Other to one of our own paths (after a POST the browser GETs it)."""
    assert location.startswith("/") and "\r" not in location and "\n" not in location
    return 303, b"", b"Location: " + location.encode("ascii") + b"\r\n" + headers + extra
