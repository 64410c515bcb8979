"""What the Reader checks in request bytes beyond llhttp: the target's form and authority, Host,
transfer codings, what precedes a request line and its spacing, and where a message whose
framing llhttp accepted ends in a read.

Pure: standard library only, no state. Each function takes bytes that llhttp has already
accepted (so, for instance, a line never holds a bare CR or LF and a chunk size is hex digits),
and answers what the Reader needs to refuse what a strict front proxy would parse differently.
"""

from __future__ import annotations

import re

CRLF2 = b"\r\n\r\n"  # ends a head, and a chunked body's trailer section
_OWS = b" \t"
# A reg-name (DNS-ish, '_' tolerated) or a bracketed IPv6 literal, then an optional port.
_HOST_RE = re.compile(rb"([a-z0-9._-]+|\[[0-9a-f:.]+\])(?::([0-9]{1,5}))?")
_SCHEMES = (b"http", b"https")
_CRLF = (13, 10)  # what llhttp skips before a request line


def host_name(raw: bytes) -> str | None:
    """The host of a Host value or a target's authority, lowercased, without its port; None
    when it is not a host (userinfo, junk) or the port is not 1-65535."""
    m = _HOST_RE.fullmatch(raw.rstrip(_OWS).lower())
    if m is None:
        return None
    port = m.group(2)
    if port is not None and not 0 < int(port) <= 65535:
        return None
    return m.group(1).decode("ascii")


def absolute_form(target: bytes) -> tuple[bytes, bytes] | None:
    """(authority, path) of an absolute-form target `http[s]://authority[/path]` (query cut
    off), which servers must accept (RFC 9112 3.2.2); None for any other scheme."""
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in _SCHEMES:
        return None
    slash = rest.find(b"/")
    return (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])


def transfer_coding(value: bytes) -> int:
    """The refusal a Transfer-Encoding field (its lines joined by ",") calls for: 0 when it is
    exactly the chunked coding (any case, OWS and empty list elements tolerated); 400 when
    chunked is not the final coding or comes twice (the body's length cannot be known, RFC
    9112 6.3); 501 when chunked is final but other codings, which we do not implement, come
    before it (6.1)."""
    codings = [c for c in (part.strip(_OWS).lower() for part in value.split(b",")) if c]
    if codings == [b"chunked"]:
        return 0
    if codings[-1:] != [b"chunked"] or codings.count(b"chunked") > 1:
        return 400
    return 501


def line_start(data: bytes, at: int, lead: bytes) -> int:
    """Where the request line starts, for a message whose bytes start at `data[at]` after
    `lead` (CR/LF of earlier reads); -1 when anything but one empty line (CRLF) precedes it:
    RFC 9112 2.2 asks servers to ignore one, llhttp skips any run of CR and LF."""
    if lead or data[at] in _CRLF:
        need = b"\r\n"[len(lead) :]
        if not data.startswith(need, at) or data[at + len(need)] in _CRLF:
            return -1
        at += len(need)
    return at


def spaced_once(data: bytes, at: int, last: bytes | None) -> tuple[bool, bytes | None]:
    """Whether the request line from `data[at]` (which `last`, its last byte so far, began in
    an earlier read, if not None) has one space between its parts, not a run; and its last
    byte when it goes on in the next read, else None."""
    eol = data.find(b"\n", at)
    end = eol if eol >= 0 else len(data)
    ok = not (last == b" " and data[at] == 32) and data.find(b"  ", at, end) < 0
    return ok, None if eol >= 0 else data[-1:]


def chunked_end(data: bytes, i: int) -> int:
    """Where a chunked body that starts at `data[i]`, and that llhttp has parsed whole, ends
    (after its trailer section)."""
    while True:
        eol = data.index(b"\r\n", i)
        size = int(data[i:eol].partition(b";")[0], 16)  # the size, before any extension
        if not size:
            return data.index(CRLF2, eol) + 4  # the last-chunk line's CRLF may start it
        i = eol + 2 + size + 2


def crlf2_end(tail: bytes, data: bytes) -> int:
    """The end of the first CRLF CRLF in the stream `... tail` + `data` that ends inside
    `data` (an offset into `data`), or -1; `tail` is the last (up to 3) bytes before `data`."""
    if tail:
        j = (tail + data[:3]).find(CRLF2)
        if j >= 0:
            return j + 4 - len(tail)
    i = data.find(CRLF2)
    return i + 4 if i >= 0 else -1
