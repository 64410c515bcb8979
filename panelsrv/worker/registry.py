"""The worker's provider clients: one `Provider` per active provider row, kept for the life of
the worker (its breaker, limits and connection pool live in it), rebuilt when the row changes.

Imports metrics, store.jobs and worker.providers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from panelsrv import metrics
from panelsrv.store import jobs
from panelsrv.store.pool import Pool
from panelsrv.worker.providers import Provider

log = logging.getLogger("panelsrv.worker")


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    timeout: float = 30.0
    connect_timeout: float = 10.0
    max_concurrency: int = 8
    rate: float | None = None
    breaker_threshold: int = 5
    breaker_cooldown: float = 30.0


@dataclass(frozen=True, slots=True)
class ProviderRow:
    id: int
    name: str
    url: str
    api_key: str
    markup_bp: int | None
    import_category: str | None
    honours_idempotency: bool  # a resend with the same Idempotency-Key returns the same order


class ProviderRegistry:
    def __init__(
        self, pool: Pool, settings: ProviderSettings, measured: metrics.Registry | None = None
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._clients: dict[int, tuple[ProviderRow, Provider]] = {}
        self.unreadable = (measured or metrics.Registry()).counter(
            "panelsrv_worker_unreadable_answers_total",
            "Provider answers, and entries of batch answers, that could not be understood and "
            "so changed nothing, by provider and action",
            ("provider", "action"),
        )

    async def refresh(self) -> None:
        rows = {r[0]: ProviderRow(*r) for r in await self._pool.fetch(jobs.PROVIDERS)}
        for provider_id in list(self._clients):
            row, client = self._clients[provider_id]
            if rows.get(provider_id) != row:
                del self._clients[provider_id]
                await client.close()
        for provider_id, row in rows.items():
            if provider_id not in self._clients:
                self._clients[provider_id] = (row, self.client_for(row))

    def client_for(self, row: ProviderRow) -> Provider:
        s = self._settings
        return Provider(
            row.url,
            row.api_key,
            name=row.name,
            timeout=s.timeout,
            connect_timeout=s.connect_timeout,
            max_concurrency=s.max_concurrency,
            rate_per_sec=s.rate,
            breaker_threshold=s.breaker_threshold,
            breaker_cooldown=s.breaker_cooldown,
            unreadable=self.unreadable,
        )

    def get(self, provider_id: int | None) -> Provider | None:
        entry = self._clients.get(provider_id) if provider_id is not None else None
        return None if entry is None else entry[1]

    def honours_idempotency(self, provider_id: int | None) -> bool:
        entry = self._clients.get(provider_id) if provider_id is not None else None
        return entry is not None and entry[0].honours_idempotency

    def items(self) -> list[tuple[ProviderRow, Provider]]:
        return list(self._clients.values())

    async def close(self) -> None:
        for _, client in self._clients.values():
            await client.close()
        self._clients.clear()
