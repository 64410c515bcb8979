"""The one place that wires objects into running processes: `serve`, `worker` and `run`.

Imports everything below it (store, api, guard, http, worker). Nothing is created before a fork:
each process builds its own event loop, pool, caches and listeners.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import uvloop

from panelsrv.config import Config
from panelsrv.store import db
from panelsrv.worker.main import Worker, WorkerSettings
from panelsrv.worker.registry import ProviderSettings

WORKER_POOL_SIZE = 4


def worker_settings(cfg: Config) -> WorkerSettings:
    return WorkerSettings(
        sync_interval=cfg.sync_interval,
        price_sync_interval=cfg.price_sync_interval,
        webhook_allow_http=cfg.webhook_allow_http,
        webhook_allow_private=cfg.webhook_allow_private,
        providers=ProviderSettings(
            timeout=cfg.provider_timeout,
            connect_timeout=cfg.provider_connect_timeout,
            max_concurrency=cfg.provider_max_concurrency,
            rate=cfg.provider_rate or None,
            breaker_threshold=cfg.provider_breaker_threshold,
            breaker_cooldown=cfg.provider_breaker_cooldown,
        ),
    )


def on_stop_signals(callback: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, callback)


async def _worker_main(cfg: Config, url: str) -> None:
    conn = await db.open_migrated(url)
    await conn.close()
    pool = await db.create_pool(url, WORKER_POOL_SIZE)
    try:
        worker = Worker(pool, worker_settings(cfg))
        on_stop_signals(worker.stop)
        await worker.run(grace=cfg.shutdown_grace)
    finally:
        await pool.close()


def run_worker(cfg: Config) -> int:
    url = db.resolve_url(cfg.database_url, cfg.data_dir)
    uvloop.run(_worker_main(cfg, url))
    return 0
