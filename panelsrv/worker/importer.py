"""`service import` and the worker's price sync: the provider's catalog into ours, with a markup.

Imports asyncpg, money and the provider client. Services of a provider are shared ones
(panel_id NULL), matched on (provider, upstream service id): new ones are created, known ones
get name, type, category, rate x (1 + markup/100), min/max and flags updated (and are
re-activated), and those gone upstream are deactivated. The provider's markup and category
filter are remembered so the worker's periodic sync applies the same rule. Rates stay in the
provider's currency (`providers.currency`) and the services say so; a panel of another currency
offers them only at an exchange rate its operator set (store/catalog.py), never as if its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

import asyncpg

from panelsrv import money
from panelsrv.servicetypes import SERVICE_TYPES
from panelsrv.worker.upstream import Service

log = logging.getLogger("panelsrv.worker")

_TYPES = {t.lower(): t for t in SERVICE_TYPES}

UPSERT = """
INSERT INTO services (name, type, category, rate, min_qty, max_qty, dripfeed, refill, cancel,
                      avg_time, provider_id, provider_service, currency)
SELECT x.name, x.type, x.category, x.rate, x.min_qty, x.max_qty, x.dripfeed, x.refill,
       x.cancel, x.avg_time, $1, x.provider_service, p.currency
  FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::bigint[],
              $8::boolean[], $9::boolean[], $10::boolean[], $11::integer[], $12::text[])
       AS x(name, type, category, rate, min_qty, max_qty, dripfeed, refill, cancel, avg_time,
            provider_service)
  JOIN providers p ON p.id = $1
ON CONFLICT (provider_id, provider_service) WHERE provider_id IS NOT NULL AND panel_id IS NULL
DO UPDATE SET name = EXCLUDED.name, type = EXCLUDED.type, category = EXCLUDED.category,
              rate = EXCLUDED.rate, min_qty = EXCLUDED.min_qty, max_qty = EXCLUDED.max_qty,
              dripfeed = EXCLUDED.dripfeed, refill = EXCLUDED.refill, cancel = EXCLUDED.cancel,
              avg_time = EXCLUDED.avg_time, currency = EXCLUDED.currency, active = true,
              updated_at = now()
RETURNING (xmax = 0)
"""
# $1 provider, $2 upstream ids still offered, $3 category filter (NULL: all)
DEACTIVATE = """
UPDATE services SET active = false, updated_at = now()
 WHERE provider_id = $1 AND panel_id IS NULL AND active
   AND provider_service <> ALL($2::text[]) AND ($3::text IS NULL OR category = $3)
"""
REMEMBER = "UPDATE providers SET markup_bp = $2, import_category = $3 WHERE id = $1"


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
    columns = list(
        zip(
            *[
                (
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
            ],
            strict=True,
        )
    ) or [() for _ in range(11)]
    async with conn.transaction():
        inserted = [r[0] for r in await conn.fetch(UPSERT, provider_id, *map(list, columns))]
        status = await conn.execute(DEACTIVATE, provider_id, [s.service for s in usable], category)
        await conn.execute(REMEMBER, provider_id, markup_bp, category)
    return ImportResult(
        imported=sum(inserted),
        updated=len(inserted) - sum(inserted),
        deactivated=int(status.split()[-1]),
        skipped=skipped,
    )
