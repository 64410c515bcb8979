"""Per-panel (tenant) settings, stored as JSON in `panels.settings` and set with `panel set`.

Leaf module. Unknown names and mistyped values are refused when set, so the API can decode the
stored object without surprises.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

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
