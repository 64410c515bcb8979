"""A webhook delivery's signature: made (by the worker) and checked (by a receiver), one format.

Pure, standard library only. A delivery carries `X-Panel-Signature: t=<unix>,v1=<hex>` where
the hex is HMAC-SHA256(secret, "<t>.<body>") over the raw body bytes, `t` the time of that
attempt (docs/API.md "Webhooks"). Invariants: `verify_webhook` compares in constant time
(`hmac.compare_digest`), refuses a timestamp further than `tolerance` seconds from now either
way (a replayed delivery), accepts any one matching `v1` (several may be sent while a secret
changes), and never raises on a malformed header: it is False.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Panel-Signature"
TOLERANCE = 300.0  # seconds: as the API's own signed requests


def sign_webhook(secret: str, timestamp: int, body: bytes) -> str:
    """The `X-Panel-Signature` value of `body` sent at `timestamp`."""
    return f"t={timestamp},v1={_mac(secret, timestamp, body)}"


def verify_webhook(
    secret: str,
    body: bytes,
    signature_header: str,
    *,
    tolerance: float | None = TOLERANCE,
    now: float | None = None,
) -> bool:
    """True when `signature_header` signs exactly `body` (the raw bytes received, before any
    JSON parsing) with `secret`, at a time within `tolerance` seconds of `now` (default: the
    clock; `tolerance=None` skips the time check)."""
    timestamp: int | None = None
    macs: list[str] = []
    for part in signature_header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isascii() and value.isdigit() and len(value) <= 12:
            timestamp = int(value)
        elif name == "v1":
            macs.append(value)
    if timestamp is None or not macs:
        return False
    if tolerance is not None and abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = _mac(secret, timestamp, body)
    # Every candidate is compared, so the time taken does not say which one matched.
    return sum(hmac.compare_digest(expected, mac) for mac in macs if mac.isascii()) > 0


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), b"%d." % timestamp + body, hashlib.sha256).hexdigest()
