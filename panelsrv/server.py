"""The one place that wires objects into running processes: `serve` and `run` (`worker`'s
process is workerproc.py, the database opening both share startup.py).

Imports everything below it (store, api, guard, http, web, docs, worker, startup,
workerproc). Nothing is created before a fork: each API process builds its own event loop,
pool, caches, limits and listeners in `App.start`. Without Redis, the limits of one host's API
processes meet in a hub process the supervisor's parent starts first (guard/hub.py); with
Redis, every host meets there.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Coroutine

import msgspec

from panelsrv import demo, metrics
from panelsrv.api.handler import Api, unavailable
from panelsrv.config import Config
from panelsrv.docs import openapi, portal
from panelsrv.errors import too_many_body
from panelsrv.guard import Guard, GuardSettings
from panelsrv.guard.hub import HubBackend, HubServer
from panelsrv.guard.limits import client_key
from panelsrv.guard.shared import RedisBackend
from panelsrv.guard.sync import MEANWHILE as LIMITS_MEANWHILE
from panelsrv.http.listener import HttpServer, api_routes
from panelsrv.http.ops import MetricsShare, ops_routes
from panelsrv.http.request import Bounds
from panelsrv.outages import Outage
from panelsrv.panelconf import Tier, rate_text
from panelsrv.procs import Group, Slot, run_service, supervise
from panelsrv.sim.provider import Simulator
from panelsrv.startup import counted_outage, open_pool, when_reachable
from panelsrv.store import catalog, db
from panelsrv.store.keycache import KeyCache
from panelsrv.store.keys import USAGE_FLUSH_SECONDS, Usage
from panelsrv.store.notifications import Notifications
from panelsrv.store.pool import Pool
from panelsrv.web.pages import Pages, PageSettings, unavailable_routes
from panelsrv.web.views import load_assets
from panelsrv.workerproc import WorkerService

log = logging.getLogger("panelsrv.server")

DB_MEANWHILE = "answering 503 until it is back"
START_WAIT = 1.0  # seconds an API process waits for the database before it listens anyway
LAST_FLUSH_TIMEOUT = 5.0  # seconds `stop` gives the last usage flush (a hung database: dropped)
# The guard's gauges (Guard.metrics() names), summed over the worker processes in a scrape.
GUARD_GAUGES = {
    "guard_shared_up": "Processes whose limits are shared through Redis or the host's hub"
    " (below the process count: those processes enforce every limit alone)",
    "guard_processes": "Processes each process believes share its limits, summed",
    "guard_ip_keys": "Per-IP buckets held (not full)",
    "guard_ip_leases": "Per-IP keys spending tokens leased from the shared bucket",
    "guard_user_keys": "Per-user buckets held (not full), every rate-limit tier's included",
    "guard_blocked_ips": "Addresses blocked for failed authentications, summed over processes",
}


def guard_settings(cfg: Config) -> GuardSettings:
    return GuardSettings(
        ip_rate=cfg.ip_rate, ip_burst=cfg.ip_burst, user_rate=cfg.user_rate,
        user_burst=cfg.user_burst, strike_limit=cfg.strike_limit,
        strike_window=cfg.strike_window, block_seconds=cfg.block_seconds,
        never_block=tuple(cfg.never_block), sync_interval=cfg.limit_sync_interval,
        sync_timeout=cfg.limit_sync_timeout, max_keys=cfg.limit_max_keys,
    )  # fmt: skip


def http_bounds(cfg: Config) -> Bounds:
    return Bounds(
        max_header_bytes=cfg.max_header_bytes, max_body_bytes=cfg.max_body_bytes,
        header_timeout=cfg.header_timeout, body_timeout=cfg.body_timeout,
        keepalive_timeout=cfg.keepalive_timeout, max_connections=cfg.max_connections,
        max_connections_per_ip=cfg.max_connections_per_ip,
    )  # fmt: skip


def page_settings(cfg: Config) -> PageSettings:
    """`cookie_secure = "auto"` is true here: `run` (plain-HTTP development) resolves it to
    false before it gets here."""
    return PageSettings(
        cookie_secure=cfg.cookie_secure is not False, session_idle=cfg.session_idle_timeout,
        session_lifetime=cfg.session_lifetime, max_failures=cfg.login_max_failures,
        lock_seconds=cfg.login_lock_seconds, user_rate=cfg.user_rate, user_burst=cfg.user_burst,
        webhook_allow_http=cfg.webhook_allow_http,
        webhook_allow_private=cfg.webhook_allow_private,
    )  # fmt: skip


def portal_limits(cfg: Config) -> portal.Limits:
    """The limits the developer portal states, as this server enforces them."""
    return portal.Limits(
        ip_rate=cfg.ip_rate, ip_burst=cfg.ip_burst, user_rate=cfg.user_rate,
        user_burst=cfg.user_burst, strike_limit=cfg.strike_limit,
        strike_window=cfg.strike_window, block_seconds=cfg.block_seconds,
        sign_max_skew=cfg.sign_max_skew, max_body_bytes=cfg.max_body_bytes,
        webhook_allow_http=cfg.webhook_allow_http,
        webhook_allow_private=cfg.webhook_allow_private, webhook_slow=cfg.webhook_slow,
        secure=cfg.cookie_secure is not False,
    )  # fmt: skip


def _guard_reading(guard: Guard, name: str) -> Callable[[], float]:
    return lambda: guard.metrics()[name]


def _no_strike(ip: str) -> None:
    """`guarded=False`: failed authentications are not counted."""


def user_refused(cfg: Config) -> bytes:
    """The 429 of the server's per-user cap, for users without a tier: it names the limit."""
    return too_many_body(
        f"your account allows {rate_text(cfg.user_rate)} requests/s (burst {cfg.user_burst})"
    )


def _no_wait(user_id: int, tier: Tier | None) -> float:
    """`guarded=False`: no per-user cap."""
    return 0.0


def hub_path(run_dir: str) -> str:
    return os.path.join(run_dir, "guard.sock")


class App:
    """One API process: pool, catalog, key cache, notifications, limits, API and ops listeners,
    and the keys' last use, noted per request and flushed every USAGE_FLUSH_SECONDS and once at
    stop."""

    def __init__(
        self, cfg: Config, url: str, slot: Slot, *, guarded: bool = True, hub: str | None = None
    ) -> None:
        self.cfg = cfg
        self.url = url
        self.slot = slot
        self.guarded = guarded
        self.hub = hub  # the limits hub's socket, when this host's processes share through one
        self.catalog: catalog.LiveCatalog | None = None
        self.pool: Pool | None = None
        self.http: HttpServer | None = None
        self.ops: HttpServer | None = None
        self._share: MetricsShare | None = None
        self._guard: Guard | None = None
        self._notifications: Notifications | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._keys: KeyCache | None = None
        self._usage: Usage | None = None
        self._pages: Pages | None = None
        self._assets = load_assets()  # the pages' static files, read once
        self._db_outage: Outage  # set by start()

    async def start(self) -> None:
        """Listen within START_WAIT. With the database reachable, serve; without (it is down,
        restarting or not answering while this process starts), answer 503 with Retry-After,
        /readyz 503, and keep trying in the background: the API is served from the moment the
        database answers."""
        cfg = self.cfg
        registry = metrics.Registry()
        outage = counted_outage(registry)
        self._db_outage = outage("database", DB_MEANWHILE)
        guard = self._start_guard(registry, outage) if self.guarded else None
        registry.gauge(
            "panelsrv_db_pool_size",
            "Connections in this process's pool",
            fn=lambda: self.pool.get_size() if self.pool is not None else 0,
        )
        registry.gauge(
            "panelsrv_db_pool_idle",
            "Idle connections in this process's pool",
            fn=lambda: self.pool.get_idle_size() if self.pool is not None else 0,
        )
        self.http = HttpServer(
            api_routes(unavailable)
            | unavailable_routes(self._assets)
            | portal.unavailable_routes()
            | openapi.unavailable_routes(),
            bounds=http_bounds(cfg),
            precheck=guard.check_ip if guard else None,
            connect_check=guard.check_block if guard else None,
            trusted_proxies=cfg.trusted_proxies,
            client_ip_header=cfg.client_ip_header,
            address_key=client_key,
            registry=registry,
            access_log=cfg.access_log,
        )
        # Wait for the database a little (a normal start then serves from its first request,
        # and an error that is not the database's absence still fails the start), but not for
        # a host that does not answer: listen with 503s and go on trying in the background.
        loop = asyncio.get_running_loop()
        first = loop.create_task(self._open_store(guard))
        await asyncio.wait((first,), timeout=START_WAIT)
        failure = first.exception() if first.done() else None
        if failure is not None and not db.unavailable(failure):
            raise failure
        if not first.done() or failure is not None:
            self._background(self._open_store_later(first, guard))
        self._share = MetricsShare(registry, self.slot.run_dir, self.slot.index)
        await self._share.start()
        await self.http.start(cfg.host, cfg.port, reuse_port=True)
        if cfg.ops_port:
            self.ops = HttpServer(ops_routes(self.ready, self._share.collect))
            await self.ops.start(cfg.ops_host, cfg.ops_port, reuse_port=True)

    def _background(self, work: Coroutine[object, object, None]) -> None:
        """A task of this process's, cancelled at stop."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open_store_later(self, first: asyncio.Task[None], guard: Guard | None) -> None:
        """The first attempt, still under way or failed, then retries until the API serves."""
        try:
            await first
            return
        except Exception as exc:
            if db.unavailable(exc):
                self._db_outage.failed(str(exc))
            else:
                log.error("the API cannot start: %s; retrying", exc)
        await when_reachable("the API", self._db_outage, lambda: self._open_store(guard))

    async def _open_store(self, guard: Guard | None) -> None:
        """Migrations, pool, catalog, key cache and notifications; then the API is served in
        place of the 503s (the route table is swapped: the hot path pays nothing for this)."""
        cfg = self.cfg
        pool = await open_pool(self.url, cfg.pool_size, self._db_outage)
        try:
            loaded = await catalog.load(pool)
        except BaseException:
            await pool.close()
            raise
        self.pool = pool
        self._keys = keys = KeyCache(pool, cfg.key_cache_ttl, cfg.negative_key_ttl)
        self.catalog = live = catalog.LiveCatalog(pool, loaded, keys.clear)
        self._notifications = Notifications(
            self.url, keys.revoke, live.changed, self._listener_reset(keys, live), keys.trust_until
        )
        self._notifications.start()
        self._usage = usage = Usage()
        self._background(_flush_usage_every(usage, pool))
        api = Api(
            pool=pool,
            state=live,
            keys=keys,
            default_panel=cfg.default_panel,
            sign_max_skew=cfg.sign_max_skew,
            strike=guard.strike if guard else _no_strike,
            user_wait=guard.check_user if guard else _no_wait,
            usage=usage,
            user_refused=user_refused(cfg),
            webhook_allow_http=cfg.webhook_allow_http,
            webhook_allow_private=cfg.webhook_allow_private,
        )
        self._pages = pages = Pages(
            pool=pool,
            state=live,
            settings=page_settings(cfg),
            default_panel=cfg.default_panel,
            strike=guard.strike if guard else _no_strike,
            assets=self._assets,
        )
        docs = portal.Portal(
            state=live, limits=portal_limits(cfg), default_panel=cfg.default_panel,
            assets=self._assets,
        )  # fmt: skip
        assert self.http is not None
        self.http.routes.update(
            api_routes(api.handle)
            | pages.routes()
            | docs.routes()
            | openapi.OpenApi(live, cfg.default_panel).routes()
        )

    def _start_guard(
        self, registry: metrics.Registry, outage: Callable[[str, str], Outage]
    ) -> Guard:
        self._guard = guard = Guard(
            guard_settings(self.cfg), outage=outage("limits backend", LIMITS_MEANWHILE)
        )
        guard.start(self._guard_backend())
        for name in guard.metrics():
            registry.gauge(f"panelsrv_{name}", GUARD_GAUGES[name], fn=_guard_reading(guard, name))
        return guard

    def _guard_backend(self) -> RedisBackend | HubBackend | None:
        if self.cfg.redis_url:
            return RedisBackend(
                self.cfg.redis_url, self.cfg.redis_prefix, timeout=self.cfg.limit_sync_timeout
            )
        return HubBackend(self.hub) if self.hub else None

    def _listener_reset(
        self, keys: KeyCache, live: catalog.LiveCatalog
    ) -> Callable[[bool], Awaitable[None]]:
        async def reset(connected: bool) -> None:
            if not connected:
                keys.distrust()
                return
            keys.clear()  # lookups begun before LISTEN was back must not be remembered
            await live.reload()

        return reset

    async def ready(self) -> bool:
        if self.pool is None:
            return False
        return await self.pool.answers()

    async def stop(self, grace: float) -> None:
        if self.http is not None:
            await self.http.stop(grace)
        if self.ops is not None:
            await self.ops.stop(1.0)
        if self._share is not None:
            await self._share.stop(grace)
        if self.catalog is not None:
            await self.catalog.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._usage is not None and self.pool is not None:  # what was used since the last
            await flush_usage(self._usage, self.pool, LAST_FLUSH_TIMEOUT)
        if self._notifications is not None:
            await self._notifications.stop()
        if self._pages is not None:
            self._pages.close()
        if self._guard is not None:
            await self._guard.close()
        if self.pool is not None:
            await self.pool.close()


async def _flush_usage_every(usage: Usage, pool: Pool) -> None:
    while True:
        await asyncio.sleep(USAGE_FLUSH_SECONDS)
        await flush_usage(usage, pool)


async def flush_usage(usage: Usage, pool: Pool, timeout: float | None = None) -> None:
    """Write the keys' last use; a failure is logged (no key in it) and the batch kept for the
    next flush."""
    try:
        await asyncio.wait_for(usage.flush(pool), timeout)
    except Exception as exc:
        log.warning("the keys' last use was not written (kept for the next flush): %r", exc)


# -- serve ------------------------------------------------------------------------------------


def worker_count(cfg: Config) -> int:
    return cfg.workers or len(os.sched_getaffinity(0))


class HubService:
    """The limits hub (guard/hub.py) as one of the supervised processes: restarted like a worker
    if it dies, stopped with them."""

    def __init__(self, path: str) -> None:
        self._hub = HubServer(path)

    async def start(self) -> None:
        await self._hub.start()

    async def stop(self, grace: float) -> None:
        await self._hub.close()


def run_serve(cfg: Config, *, guarded: bool = True) -> int:
    """`panelsrv serve`: N API processes on one port; the parent supervises (procs.supervise).

    `guarded=False` builds no guard at all (no per-IP, per-user or block checks, no hub): only
    for measuring what the limits cost (bench/limiter_cost.py); no setting reaches it."""
    url = db.resolve_url(cfg.database_url, cfg.data_dir)  # each process migrates (open_pool)
    own_dir = not os.environ.get("RUNTIME_DIRECTORY")
    run_dir = os.environ.get("RUNTIME_DIRECTORY") or tempfile.mkdtemp(prefix="panelsrv-")
    workers = worker_count(cfg)
    # Without Redis, one host's API processes share their limits through a hub: one more
    # supervised process (the last slot), so it is restarted like any worker if it dies.
    hub = hub_path(run_dir) if guarded and not cfg.redis_url and workers > 1 else None

    def process(slot: Slot) -> HubService | App:
        if hub is not None and slot.index == workers:
            return HubService(hub)
        return App(cfg, url, slot, guarded=guarded, hub=hub)

    try:
        return supervise(
            process, workers=workers + (hub is not None), grace=cfg.shutdown_grace,
            run_dir=run_dir,
        )  # fmt: skip
    finally:
        if own_dir:
            shutil.rmtree(run_dir, ignore_errors=True)


class DemoService:
    """`run`'s simulated provider and the demo data pointing at it. Listed first in `run`'s
    group and last again as `announcer`, which prints where to start once everything listens."""

    def __init__(self, cfg: Config, url: str) -> None:
        self._cfg = cfg
        self._url = url
        self.sim = Simulator(host="127.0.0.1", port=0, complete_after=RUN_COMPLETE_AFTER)
        self._demo: demo.Demo | None = None

    async def start(self) -> None:
        await self.sim.start()
        conn = await db.open_migrated(self._url)
        try:
            self._demo = await demo.ensure(conn, self.sim.url, self.sim.key)
        finally:
            await conn.close()

    async def stop(self, grace: float) -> None:
        await self.sim.stop()

    @property
    def announcer(self) -> _Announcer:
        return _Announcer(self)


class _Announcer:
    def __init__(self, service: DemoService) -> None:
        self._service = service

    async def start(self) -> None:
        assert self._service._demo is not None
        api = f"http://127.0.0.1:{self._service._cfg.port}/api/v2"
        print(demo.banner(self._service._demo, api), flush=True)

    async def stop(self, grace: float) -> None:
        return None


RUN_COMPLETE_AFTER = 30.0  # seconds a demo order takes at the simulated provider
RUN_SYNC_INTERVAL = 5.0


def run_config(cfg: Config) -> Config:
    """What `run` changes of the configuration: the demo panel by default, cookies without
    Secure unless set true (`cookie_secure = "auto"`: plain HTTP on 127.0.0.1), a quick sync."""
    return msgspec.structs.replace(
        cfg,
        default_panel=cfg.default_panel or demo.DEMO_DOMAIN,
        cookie_secure=cfg.cookie_secure is True,
        sync_interval=min(cfg.sync_interval, RUN_SYNC_INTERVAL),
    )


def run_all(cfg: Config) -> int:
    """`panelsrv run`: database, demo data, simulated provider, API and worker in one process."""
    cfg = run_config(cfg)
    url = db.resolve_url(cfg.database_url, cfg.data_dir)
    slot = Slot(0, 1, None)

    def everything(slot: Slot) -> Group:
        demo_service = DemoService(cfg, url)
        return Group(
            demo_service, App(cfg, url, slot), WorkerService(cfg, url), demo_service.announcer
        )

    return run_service(everything, slot, grace=cfg.shutdown_grace)
