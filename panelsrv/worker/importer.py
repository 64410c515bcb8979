"""`service import` and the worker's price sync: the provider's catalog into ours, with a markup.

Imports asyncpg, money, the provider client and `store.importing`, which writes. Services of a
provider are shared ones (panel_id NULL), matched on (provider, upstream service id): new ones
are created, known ones get name, type, category, rate x (1 + markup/100), min/max and flags
updated (and are re-activated), and those gone upstream are deactivated. The provider's markup
and category filter are remembered so the worker's periodic sync applies the same rule. Rates
stay in the
provider's currency (`providers.currency`) and the services say so; a panel of another currency
offers them only at an exchange rate its operator set (store/catalog.py), never as if its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

import asyncpg

from panelsrv import money
from panelsrv.client.answers import Service
from panelsrv.servicetypes import SERVICE_TYPES
from panelsrv.store.importing import ImportedService, write_services

log = logging.getLogger("panelsrv.worker")

_TYPES = {t.lower(): t for t in SERVICE_TYPES}


@dataclass(frozen=True, slots=True)
class ImportResult:
    imported: int
    updated: int
    deactivated: int
    skipped: int


def marked_up(rate: Decimal, markup_bp: int) -> int:
    """Upstream rate (currency per 1000) plus markup, in minor units, rounded half up."""
    value = rate * (Decimal(10_000 + markup_bp) / 10_000) * money.SCALE
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


async def import_services(
    conn: asyncpg.Connection,
    provider_id: int,
    services: list[Service],
    markup_bp: int,
    category: str | None,
) -> ImportResult:
    chosen = [s for s in services if category is None or s.category == category]
    usable = [s for s in chosen if s.type.lower() in _TYPES and 1 <= s.min <= s.max and s.rate >= 0]
    skipped = len(chosen) - len(usable)
    if skipped:
        log.warning(
            "provider %s: skipped %d services (unknown type or bad bounds)", provider_id, skipped
        )
    rows = [
        ImportedService(
            s.name[:500] or s.service,
            _TYPES[s.type.lower()],
            s.category,
            marked_up(s.rate, markup_bp),
            s.min,
            s.max,
            s.dripfeed,
            s.refill,
            s.cancel,
            max(s.avg_time or 0, 0),
            s.service,
        )
        for s in usable
    ]
    imported, updated, deactivated = await write_services(
        conn, provider_id, rows, markup_bp, category
    )
    return ImportResult(imported, updated, deactivated, skipped)
