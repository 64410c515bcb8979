"""What the Reader checks in request bytes beyond llhttp: transfer codings.

Pure: standard library only, no state. Each function takes bytes that llhttp has already
accepted, and answers what the Reader needs to refuse what a strict front proxy would parse
differently.
"""

from __future__ import annotations

_OWS = b" \t"

CHUNKED, BAD_CODING, UNKNOWN_CODING = range(3)


def transfer_coding(value: bytes) -> int:
    """The Transfer-Encoding field (several lines joined by ','), classified: CHUNKED when it
    is exactly the chunked coding (case-insensitive, OWS and empty list elements tolerated);
    BAD_CODING when chunked is not the final coding or comes twice (the body's length cannot
    be known: 400, RFC 9112 6.3); UNKNOWN_CODING when chunked is final but another coding we do
    not implement precedes it (501, RFC 9112 6.1)."""
    codings = [c for c in (part.strip(_OWS).lower() for part in value.split(b",")) if c]
    if codings == [b"chunked"]:
        return CHUNKED
    if codings[-1:] != [b"chunked"] or codings.count(b"chunked") > 1:
        return BAD_CODING
    return UNKNOWN_CODING
