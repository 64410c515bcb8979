"""The optional HMAC `sign` of a request: its two canonical forms, what a signed request may
carry, and the freshness of its `timestamp`.

Pure; imports `api.actions` (field names), `api.extras` (the names an `add` passes on) and
`errors`. `sign = hex(hmac_sha256(key, canonical))` over every field except `sign`, values as
received (JSON values as Python's `str()` renders them), in one of two forms chosen by the
signed field `sign_version`:

- 1 (the default; the seeds' form): `"&".join(f"{k}={v}" for k, v in sorted(fields.items()))`,
  byte for byte what the seed's Python snippet computes, so a client following it verifies.
- 2: each name and value percent-encoded first (RFC 3986: every UTF-8 byte but `A-Z a-z 0-9
  - . _ ~` as `%XX`, upper-case hex, as AWS SigV4 does), the pairs sorted by encoded name,
  `k=v` joined by `&`. No `&` or `=` survives the encoding, so the string splits one way only.

A signature must cover exactly one meaning. Form 1 is ambiguous where a value holds `&`:
`link=https://a&quantity=100` is two fields, and also the one link `https://a&quantity=100`,
and also the unknown field `link=https://a&quantity` set to `100`; JSON null and the string "None"
render alike. So `check_signed` refuses, in any signed request: a field the action does not
know (a name with `=` or `&` never is one), a JSON value that is not a string or a number; and
in form 1, a value holding `&` + the name of any field of the API + `=`, and the fields an
`add` passes to the provider (`api.extras`): their names are open-ended, so in form 1
`link=https://a&mobile=1` would be both the link `https://a&mobile=1` and the link `https://a`
with an extra `mobile`, and refusing every value that holds `&name=` would refuse most links
with a query string. In form 2 an extra is a field like any other. Then no other field set a
server would accept has the same canonical string (argued in `tests/api/test_sign.py`, which
re-splits canonical strings every way to check it): every `&` that could start a field is a
separator, so the pairs, and the names (no `=`), are the signed ones. A client whose values may
hold such text (links with a query string), or that sends extras, signs in form 2.

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
import re
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import quote

from panelsrv.api.actions import EVERY_FIELD_NAME, FIELD_NAMES, MAX_NAME_ECHO
from panelsrv.api.extras import is_extra_name
from panelsrv.errors import bad_request

MAX_SKEW: Final = 300

# `&quantity=` and the like: where form 1 cannot tell a value's text from a field of its own.
_FIELD_START: Final = re.compile("&(?:" + "|".join(map(re.escape, sorted(EVERY_FIELD_NAME))) + ")=")


def canonical(fields: Mapping[str, str], version: int = 1) -> bytes:
    """The signed string, UTF-8 encoded; `sign` itself is left out."""
    if version == 2:
        # quote(safe="") keeps exactly RFC 3986's unreserved characters, hex in upper case.
        pairs = sorted(
            (quote(k, safe=""), quote(v, safe="")) for k, v in fields.items() if k != "sign"
        )
        return "&".join(f"{k}={v}" for k, v in pairs).encode()
    return "&".join(f"{k}={v}" for k, v in sorted(fields.items()) if k != "sign").encode()


def compute(key: str, fields: Mapping[str, str], version: int = 1) -> str:
    """The `sign` a client sends for these fields (lowercase hex)."""
    return hmac.new(key.encode(), canonical(fields, version), hashlib.sha256).hexdigest()


def verify(key: str, fields: Mapping[str, str], sign: str, version: int = 1) -> bool:
    """True when `sign` is the HMAC of the fields under `key` (hex, either case)."""
    expected = compute(key, fields, version).encode()
    return hmac.compare_digest(expected, sign.lower().encode())


def check_signed(tag: str, fields: Mapping[str, Any], version: int) -> None:
    """Refuse (400, naming the field and why) what would let this request's signature cover
    another meaning too; see the module's docstring. `fields` are as decoded: JSON values keep
    their type, integer fields may already be ints."""
    known = FIELD_NAMES[tag]
    for name, value in fields.items():
        if name not in known:
            echo = name[:MAX_NAME_ECHO]
            if "=" in name or "&" in name:
                raise bad_request(echo, "a field name with '=' or '&' cannot be signed")
            if tag != "add" or not is_extra_name(name):
                raise bad_request(echo, f"not a field of {tag}, refused in a signed request")
            if version == 1:
                raise bad_request(
                    name,
                    "a field passed to the provider is signed with sign_version=2 only (the"
                    " sign_version 1 string cannot tell it from text inside a value)",
                )
        if type(value) is str:
            if version == 1 and name != "sign" and (found := _FIELD_START.search(value)):
                raise bad_request(
                    name,
                    f"holds {found.group()!r}, which the sign_version 1 string cannot tell from"
                    " a field of its own: sign with sign_version=2",
                )
        elif type(value) not in (int, float):
            raise bad_request(name, "must be a string or a number in a signed request")


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
    version: int | None = None,
) -> bool:
    """The whole check for a request that carries `sign`: the HMAC in the form `version` (the
    request's `sign_version`; absent is 1), then (only when the request carries one) the
    timestamp's freshness. Both are inside the signed fields, so a replayer without the key can
    neither refresh the timestamp nor switch forms. False -> `401 Invalid signature`."""
    if not verify(key, fields, sign, version or 1):
        return False
    return timestamp is None or fresh(timestamp, now, max_skew)
