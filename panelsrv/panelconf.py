"""Per-panel (tenant) settings, stored as JSON in `panels.settings` and set with `panel set`;
and the panel's rate-limit tiers (table `tiers`, set with `panelsrv tier`).

Leaf module (imports only `errors`). Unknown names and mistyped values are refused when set, so
the API can decode the stored object without surprises; a tier's limits are checked by
`tier_problem` before they are written.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from panelsrv.errors import too_many_body

# The order-placement ceiling per user per minute: settings may lower it, never raise it.
ORDER_CEILING = 30

NonNegative = Annotated[int, Meta(ge=0)]


class PanelSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    # Orders per user per minute; values above ORDER_CEILING are clamped to it.
    sec_order_max_per_min: NonNegative = ORDER_CEILING
    # Answer every error except 429 and 5xx with HTTP 200 (old SDKs call raise_for_status()).
    legacy_errors: bool = False
    # Refuse a second active order for the same service and link.
    duplicate_link_guard: bool = False
    # Refills: at most this many per order, and at most one per cooldown.
    refill_max_per_order: NonNegative = 3
    refill_cooldown_hours: NonNegative = 24
    # Also take `GET /api/v2?action=...&key=...` (the fields in the query string), for clients
    # that cannot POST; off: such a GET is a 405 that says "use POST". A key in a URL reaches
    # proxies' and browsers' logs, hence off by default.
    accept_get: bool = False

    @property
    def order_limit(self) -> int:
        return min(self.sec_order_max_per_min, ORDER_CEILING)


def orders_per_minute(n: int) -> str:
    return f"{n} order per minute" if n == 1 else f"{n} orders per minute"


# The 429 of the order ceiling, prebuilt for every ceiling a panel can have (0..ORDER_CEILING).
ORDER_LIMIT_BODIES = tuple(
    too_many_body(f"at most {orders_per_minute(n)} on this panel") for n in range(ORDER_CEILING + 1)
)

# A tier's limits: what `tier_problem` accepts (the table's CHECKs say the same).
TIER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
MAX_TIER_RATE = 1_000_000.0
MAX_TIER_BURST = 1_000_000


def rate_text(rate: float) -> str:
    """Requests per second as a person reads them: 5, 0.5, 1000000 (not 5.0 or 1e+06)."""
    return str(int(rate)) if rate.is_integer() and abs(rate) < 1e15 else f"{rate:g}"


class Tier:
    """A rate-limit tier as a principal carries it (store/keycache.py): per-user requests per
    second and burst, the orders per minute it allows (at most ORDER_CEILING), and the 429
    bodies that name it, built once when the tier is loaded, never per request.

    `key` identifies the tier and its limits: it changes whenever the limits do, so a limiter
    kept under it starts afresh with the new limits (guard/limits.py)."""

    __slots__ = ("burst", "key", "name", "orders", "orders_body", "rate", "rate_body")

    def __init__(self, tier_id: int, name: str, rate: float, burst: int, orders: int) -> None:
        self.name = name
        self.rate = rate
        self.burst = burst
        self.orders = orders
        self.key = f"{tier_id}:{rate!r}:{burst}"
        self.rate_body = too_many_body(
            f"your tier '{name}' allows {rate_text(rate)} requests/s (burst {burst})"
        )
        self.orders_body = too_many_body(f"your tier '{name}' allows {orders_per_minute(orders)}")


def order_ceiling(panel: PanelSettings, tier: Tier | None) -> tuple[int, bytes]:
    """The orders per minute a user may place on `panel`, and the 429 body naming that limit:
    the tier's when it is the lower, else the panel's (at most ORDER_CEILING either way)."""
    limit = panel.order_limit
    if tier is not None and tier.orders < limit:
        return tier.orders, tier.orders_body
    return limit, ORDER_LIMIT_BODIES[limit]


def tier_problem(name: str, rate: float, burst: int, orders: int) -> str | None:
    """What is wrong with these tier limits (one line for the operator), or None."""
    if not TIER_NAME.fullmatch(name):
        return (
            f"tier name {name!r}: 1 to 32 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if not (math.isfinite(rate) and 0 < rate <= MAX_TIER_RATE):
        return (
            f"--rate {rate_text(rate)}: requests per second, above 0 and at most "
            f"{rate_text(MAX_TIER_RATE)}"
        )
    if not 1 <= burst <= MAX_TIER_BURST:
        return f"--burst {burst}: between 1 and {MAX_TIER_BURST}"
    if not 0 <= orders <= ORDER_CEILING:
        return (
            f"--orders {orders}: between 0 and {ORDER_CEILING} orders per minute "
            f"(a tier may lower the ceiling of {ORDER_CEILING}, never raise it)"
        )
    return None


SETTING_NAMES = tuple(f.name for f in msgspec.structs.fields(PanelSettings))


class PanelSettingError(ValueError):
    pass


def decode(stored: dict[str, Any]) -> PanelSettings:
    return msgspec.convert(stored, PanelSettings)


def with_setting(stored: dict[str, Any], name: str, value: str) -> dict[str, Any]:
    """The stored settings with `name` set from its command-line text, validated and typed."""
    if name not in SETTING_NAMES:
        raise PanelSettingError(
            f"unknown panel setting {name!r} (known: {', '.join(SETTING_NAMES)})"
        )
    try:
        typed = msgspec.convert({name: value}, PanelSettings, strict=False)
    except msgspec.ValidationError as exc:
        raise PanelSettingError(f"panel setting {name}: {exc}") from None
    merged = dict(stored)
    merged[name] = getattr(typed, name)
    return merged
