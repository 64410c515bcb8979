"""The optional HMAC `sign` of a request, and the freshness of its `timestamp`.

Pure; standard library only. `sign = hex(hmac_sha256(key, canonical))`, where canonical is
`"&".join(f"{k}={v}" for k, v in sorted(fields.items()))` over every field except `sign`,
values as received (JSON values as Python's `str()` renders them) - byte for byte what the
seed's Python snippet computes, so a client following the documentation verifies here.

Which fields count: every field that took effect, i.e. the body's plus any query-string field
the body did not override (`api.decode.Decoded.fields`). A client that sends everything in the
body, as the documentation shows, signs exactly its body. Signing only the body would let
anyone who can alter the URL add unsigned fields to a signed request (say `runs` on an `add`,
multiplying its charge), so a client that puts fields in the query string must sign them too.

Invariants: the comparison is constant time over the digest (`hmac.compare_digest` on bytes,
so a non-ASCII `sign` cannot raise); the clock is a parameter. Duplicate field names never
reach this module: the decoder refuses them with a 400.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Final

MAX_SKEW: Final = 300


def canonical(fields: Mapping[str, str]) -> bytes:
    """The signed string, UTF-8 encoded; `sign` itself is left out."""
    return "&".join(f"{k}={v}" for k, v in sorted(fields.items()) if k != "sign").encode()


def compute(key: str, fields: Mapping[str, str]) -> str:
    """The `sign` a client sends for these fields (lowercase hex)."""
    return hmac.new(key.encode(), canonical(fields), hashlib.sha256).hexdigest()


def verify(key: str, fields: Mapping[str, str], sign: str) -> bool:
    """True when `sign` is the HMAC of the fields under `key` (hex, either case)."""
    expected = hmac.new(key.encode(), canonical(fields), hashlib.sha256).hexdigest().encode()
    return hmac.compare_digest(expected, sign.lower().encode())


def fresh(timestamp: int, now: float, max_skew: int = MAX_SKEW) -> bool:
    """True when a signed request's `timestamp` (unix seconds) is within `max_skew` of `now`."""
    return abs(now - timestamp) <= max_skew


def verify_request(
    key: str,
    fields: Mapping[str, str],
    sign: str,
    timestamp: int | None,
    now: float,
    max_skew: int = MAX_SKEW,
) -> bool:
    """The whole check for a request that carries `sign`: the HMAC, then (only when the request
    carries one) the timestamp's freshness. The timestamp is inside the signed fields, so it
    cannot be refreshed by a replayer without the key. False -> `401 Invalid signature`."""
    if not verify(key, fields, sign):
        return False
    return timestamp is None or fresh(timestamp, now, max_skew)
