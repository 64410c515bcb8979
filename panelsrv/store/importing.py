"""The provider's catalog written into ours: the statements behind `service import` and the
worker's price sync (`worker.importer` decides what to write).

Imports asyncpg. Services of a provider are shared ones (panel_id NULL), matched on (provider,
upstream service id). One transaction: the offered services upserted (re-activated), those no
longer offered deactivated, the markup and category filter remembered for the next sync.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import asyncpg


class ImportedService(NamedTuple):
    """One service as it is written: rate already marked up, in minor units."""

    name: str
    type: str
    category: str
    rate: int
    min_qty: int
    max_qty: int
    dripfeed: bool
    refill: bool
    cancel: bool
    avg_time: int
    provider_service: str


# $1 provider, $2..$12 the columns of ImportedService (arrays, one row per service)
# -> per row, true when inserted (false: updated). Rows: services (the provider's shared ones).
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
# $1 provider, $2 markup (basis points), $3 category filter: what the next sync applies
REMEMBER = "UPDATE providers SET markup_bp = $2, import_category = $3 WHERE id = $1"


async def write_services(
    conn: asyncpg.Connection,
    provider_id: int,
    services: Sequence[ImportedService],
    markup_bp: int,
    category: str | None,
) -> tuple[int, int, int]:
    """Write the offered `services` of a provider; (inserted, updated, deactivated)."""
    columns = [list(c) for c in zip(*services, strict=True)] or [
        [] for _ in ImportedService._fields
    ]
    offered = [s.provider_service for s in services]
    async with conn.transaction():
        inserted = [r[0] for r in await conn.fetch(UPSERT, provider_id, *columns)]
        status = await conn.execute(DEACTIVATE, provider_id, offered, category)
        await conn.execute(REMEMBER, provider_id, markup_bp, category)
    return sum(inserted), len(inserted) - sum(inserted), int(status.split()[-1])
