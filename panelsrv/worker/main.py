"""`panelsrv worker`: the loops that move orders after they are placed.

Imports the store, the dispatcher, the syncer, the webhook sender and the importer. Safe to run
several at once on several hosts (every claim is SKIP LOCKED with a lease). On stop, no new work
is claimed and what is in flight may finish within `grace` seconds; anything cut off is left
with a lease that another worker takes over, knowing the attempt's outcome is unknown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from panelsrv import metrics
from panelsrv.client.answers import ProviderFailure
from panelsrv.store import jobs
from panelsrv.store.pool import UNAVAILABLE, Pool
from panelsrv.worker import importer
from panelsrv.worker.dispatch import Dispatcher
from panelsrv.worker.registry import ProviderRegistry, ProviderSettings
from panelsrv.worker.sync import StatusPoller
from panelsrv.worker.webhooks import Sender, WebhookSettings

log = logging.getLogger("panelsrv.worker")


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    sync_interval: float = 60.0
    price_sync_interval: float = 3600.0
    webhook_allow_http: bool = False
    webhook_allow_private: bool = False
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    providers: ProviderSettings = field(default_factory=ProviderSettings)
    idle: float = 0.5  # seconds between polls when there was nothing to do


class Worker:
    def __init__(
        self, pool: Pool, settings: WorkerSettings, measured: metrics.Registry | None = None
    ) -> None:
        """`measured`: where the worker's counters go (the `worker_ops_port` /metrics)."""
        self.pool = pool
        self.settings = settings
        self.registry = ProviderRegistry(pool, settings.providers, measured)
        self.dispatcher = Dispatcher(pool, self.registry, settings.providers, measured)
        self.syncer = StatusPoller(pool, self.registry, settings.sync_interval, measured)
        self.sender = Sender(
            pool,
            settings.webhooks,
            allow_http=settings.webhook_allow_http,
            allow_private=settings.webhook_allow_private,
        )
        self._stopping = asyncio.Event()
        self._prices_synced: dict[int, float] = {}

    async def run(self, grace: float) -> None:
        """Run until `stop()`; then let in-flight work finish for up to `grace` seconds."""
        await self.registry.refresh()
        loops = [
            asyncio.create_task(self._loop(name, step, idle), name=f"worker-{name}")
            for name, step, idle in (
                ("dispatch", self.dispatcher.run_once, self.settings.idle),
                ("sync", self.syncer.run_once, 1.0),
                ("webhooks", self.sender.run_once, self.settings.idle),
                ("maintenance", self._maintenance, 30.0),
            )
        ]
        await self._stopping.wait()
        deadline = time.monotonic() + grace
        _, pending = await asyncio.wait(loops, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await self.sender.close(grace=max(0.0, deadline - time.monotonic()))
        await self.registry.close()

    def stop(self) -> None:
        self._stopping.set()

    async def _loop(self, name: str, step: Callable[[], Awaitable[int]], idle: float) -> None:
        while not self._stopping.is_set():
            try:
                worked = await step()
            except Exception as exc:
                if isinstance(exc, UNAVAILABLE):  # the pool has logged the outage, once
                    log.debug("worker %s step: database unavailable (%s)", name, exc)
                else:
                    log.exception("worker %s step failed; retrying", name)
                worked = 0
            if not worked:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=idle)

    async def _maintenance(self) -> int:
        await self.registry.refresh()
        await jobs.prune(self.pool)
        now = time.monotonic()
        for row, client in self.registry.items():
            if row.markup_bp is None:
                continue
            if now - self._prices_synced.get(row.id, -1e18) < self.settings.price_sync_interval:
                continue
            self._prices_synced[row.id] = now
            try:
                services = await client.services()
            except ProviderFailure as exc:
                log.warning("provider %s: price sync failed (%s)", row.name, exc)
                continue
            async with self.pool.acquire() as conn:
                result = await importer.import_services(
                    conn, row.id, services, row.markup_bp, row.import_category
                )
            log.info("provider %s: price sync %s", row.name, result)
        return 0
