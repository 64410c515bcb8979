"""HTTP/1.1 response bytes: status lines, `render`, and prebuilt rejects.

Pure: imports only `panelsrv.errors` and the standard library; no I/O and no clock reads
(`set_date` is handed the wall time by the listener's once-a-second ticker). Invariants: every
response carries Content-Type, Content-Length and Date and is returned as ONE bytes object (the
protocol writes it with one `transport.write`); header bytes come only from constants here and
from `extra` lines built by our own code, never from request input.
"""

from __future__ import annotations

from email.utils import formatdate
from http import HTTPStatus

from panelsrv.errors import ERROR_BODIES, Code, error_body, retry_after_header

STATUS_LINES: dict[int, bytes] = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode("ascii")) for s in HTTPStatus
}

JSON = b"Content-Type: application/json; charset=utf-8\r\n"
HTML = b"Content-Type: text/html; charset=utf-8\r\n"
CSS = b"Content-Type: text/css; charset=utf-8\r\n"
JS = b"Content-Type: text/javascript; charset=utf-8\r\n"  # RFC 9239
PROMETHEUS = b"Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
CLOSE = b"Connection: close\r\n"
KEEP_ALIVE = b"Connection: keep-alive\r\n"  # only HTTP/1.0 clients need to be told
CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"

BAD_REQUEST_BODY = error_body("Bad request")
RETRY_AFTER_1 = retry_after_header(1)
MAX_TOO_MANY = 4096  # distinct (Retry-After, keep-alive) 429s kept rendered until the next Date

# The Date line, rebuilt by `set_date` once a second (RFC 9110 wants Date on 2xx-4xx).
_date = b""


_HEAD = b"%s%s%s%sContent-Length: %d\r\n%s\r\n"
_WHOLE = _HEAD + b"%s"


def render(
    status: int, body: bytes, keep_alive: bool, extra: bytes = b"", content_type: bytes = JSON
) -> bytes:
    """The whole response: status line, headers (`extra` is already-formatted lines), body."""
    return _WHOLE % (
        STATUS_LINES[status],
        _date,
        content_type,
        extra,
        len(body),
        b"" if keep_alive else CLOSE,
        body,
    )


def render_head(
    status: int, length: int, keep_alive: bool, extra: bytes = b"", content_type: bytes = JSON
) -> bytes:
    """`render` without the body, for a body of `length` bytes sent after it: a large body is
    not copied into the response (the protocol hands both to one writev)."""
    return _HEAD % (
        STATUS_LINES[status],
        _date,
        content_type,
        extra,
        length,
        b"" if keep_alive else CLOSE,
    )


# The 405 of a route, by the methods it allows: the body says which to use.
_405_BODIES = {
    b"POST": ERROR_BODIES[Code.USE_POST],
    b"GET": ERROR_BODIES[Code.USE_GET],
    b"GET, POST": ERROR_BODIES[Code.USE_GET_OR_POST],
}


def render_405(allow: bytes, keep_alive: bool) -> bytes:
    """405 for a route that allows `allow` (b"POST", b"GET" or b"GET, POST"), its Allow line."""
    return render(405, _405_BODIES[allow], keep_alive, b"Allow: %s\r\n" % allow)


# Prebuilt rejects, keyed by status; refreshed in place with the Date (same dict objects, so
# `from wire import REJECT_CLOSE` stays valid). REJECT_CLOSE ends the connection; REJECT_KEEP is
# for a body-less request that may keep its connection.
_REJECTS: dict[int, tuple[bytes, bytes]] = {
    400: (BAD_REQUEST_BODY, b""),
    404: (ERROR_BODIES[Code.NOT_FOUND], b""),
    413: (ERROR_BODIES[Code.BODY_TOO_LARGE], b""),
    431: (ERROR_BODIES[Code.HEADERS_TOO_LARGE], b""),
    500: (ERROR_BODIES[Code.INTERNAL], b""),
    501: (ERROR_BODIES[Code.NOT_IMPLEMENTED], b""),
    503: (ERROR_BODIES[Code.UNAVAILABLE], RETRY_AFTER_1),
}
_KEEP = (404,)
REJECT_CLOSE: dict[int, bytes] = {}
REJECT_KEEP: dict[int, bytes] = {}
_too_many: dict[int, bytes] = {}  # keyed +seconds (keep-alive) / -seconds (close)


def too_many(seconds: int, keep_alive: bool) -> bytes:
    """The early 429 with `Retry-After: seconds` (>= 1): rendered once per distinct value and
    Date, so a flood of refusals encodes nothing."""
    key = seconds if keep_alive else -seconds
    data = _too_many.get(key)
    if data is None:
        body = ERROR_BODIES[Code.TOO_MANY_REQUESTS]
        data = render(429, body, keep_alive, retry_after_header(seconds))
        if len(_too_many) < MAX_TOO_MANY:
            _too_many[key] = data
    return data


def set_date(epoch: float) -> None:
    """Refresh the Date line and every prebuilt reject; the listener calls it once a second."""
    global _date
    _date = b"Date: %s\r\n" % formatdate(epoch, usegmt=True).encode("ascii")
    _too_many.clear()
    for status, (body, extra) in _REJECTS.items():
        REJECT_CLOSE[status] = render(status, body, False, extra)
        if status in _KEEP:
            REJECT_KEEP[status] = render(status, body, True, extra)


set_date(0.0)  # well-formed until the first listener starts its ticker


def early_answer(refusal: tuple[int, bytes, int], keep_alive: bool) -> bytes:
    """The response to a request refused before its handler: `refusal` is (404 | 405 | 429,
    a 405's Allow value (`Route.allowed`), a 429's Retry-After seconds)."""
    status, allow, retry_after = refusal
    if status == 404:
        return REJECT_KEEP[404] if keep_alive else REJECT_CLOSE[404]
    if status == 429:
        return too_many(retry_after, keep_alive)
    assert status == 405 and allow
    return render_405(allow, keep_alive)
