"""`panelsrv worker` as a process: its settings from the config, waiting for the database at
start, the ops listener on `worker_ops_port`, signals; and the same loops as a service inside
`panelsrv run`.

Imports the worker, store, http (the ops routes only) and startup.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

import uvloop

from panelsrv import metrics
from panelsrv.config import Config
from panelsrv.http.listener import HttpServer
from panelsrv.http.ops import ops_routes
from panelsrv.outages import Outage
from panelsrv.startup import counted_outage, open_pool, when_reachable
from panelsrv.store import db
from panelsrv.store.pool import Pool
from panelsrv.worker.main import Worker, WorkerSettings
from panelsrv.worker.registry import ProviderSettings
from panelsrv.worker.webhooks import WebhookSettings

log = logging.getLogger("panelsrv.server")

WORKER_POOL_SIZE = 4


def worker_settings(cfg: Config) -> WorkerSettings:
    return WorkerSettings(
        sync_interval=cfg.sync_interval,
        price_sync_interval=cfg.price_sync_interval,
        webhook_allow_http=cfg.webhook_allow_http,
        webhook_allow_private=cfg.webhook_allow_private,
        webhooks=WebhookSettings(
            timeout=cfg.webhook_timeout,
            slow=cfg.webhook_slow,
            concurrency=cfg.webhook_concurrency,
            per_endpoint=cfg.webhook_endpoint_concurrency,
            per_user=cfg.webhook_user_concurrency,
            breaker_threshold=cfg.webhook_breaker_threshold,
            breaker_cooldown=cfg.webhook_breaker_cooldown,
        ),
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


# -- worker -----------------------------------------------------------------------------------


async def _worker_main(cfg: Config, url: str) -> None:
    """Run the worker; started while the database is away, wait for it (a stop signal still
    ends the wait) instead of exiting. With `worker_ops_port`, /healthz, /readyz (the database
    answers) and /metrics (the worker's counters) are served there meanwhile and after."""
    stopped = asyncio.Event()
    on_stop_signals(stopped.set)
    registry = metrics.Registry()
    outage = counted_outage(registry)("database", "waiting for it")
    opened: list[Pool] = []

    async def ready() -> bool:
        return bool(opened) and await opened[0].answers()

    ops = HttpServer(ops_routes(ready, registry.render)) if cfg.worker_ops_port else None
    if ops is not None:
        await ops.start(cfg.ops_host, cfg.worker_ops_port)
    try:
        pool = await _worker_pool(url, outage, stopped)
        if pool is None:
            return
        opened.append(pool)
        try:
            worker = Worker(pool, worker_settings(cfg), registry)
            on_stop_signals(worker.stop)
            await worker.run(grace=cfg.shutdown_grace)
        finally:
            await pool.close()
    finally:
        if ops is not None:
            await ops.stop(1.0)


async def _worker_pool(url: str, outage: Outage, stopped: asyncio.Event) -> Pool | None:
    """The worker's pool, once the database answers; None when stopped first."""
    try:
        return await open_pool(url, WORKER_POOL_SIZE, outage)
    except Exception as exc:
        if not db.unavailable(exc):
            raise
        outage.failed(str(exc))
    loop = asyncio.get_running_loop()
    opening = loop.create_task(
        when_reachable("the worker", outage, lambda: open_pool(url, WORKER_POOL_SIZE, outage))
    )
    stopping = loop.create_task(stopped.wait())
    await asyncio.wait((opening, stopping), return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if stopped.is_set():
        opening.cancel()
        if opening.done() and not opening.cancelled() and opening.exception() is None:
            await opening.result().close()
        return None
    return opening.result()


def run_worker(cfg: Config) -> int:
    url = db.resolve_url(cfg.database_url, cfg.data_dir)
    uvloop.run(_worker_main(cfg, url))
    return 0


class WorkerService:
    """The worker's loops as a start/stop service (for `run`)."""

    def __init__(self, cfg: Config, url: str) -> None:
        self._cfg = cfg
        self._url = url
        self._pool: Pool | None = None
        self._worker: Worker | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._pool = await db.create_pool(self._url, WORKER_POOL_SIZE, Outage("database", log))
        self._worker = Worker(self._pool, worker_settings(self._cfg))
        self._task = asyncio.get_running_loop().create_task(self._worker.run(grace=5.0))

    async def stop(self, grace: float) -> None:
        if self._worker is not None and self._task is not None:
            self._worker.stop()
            await self._task
        if self._pool is not None:
            await self._pool.close()
