"""The in-memory catalog: panels by domain, services by panel-local and global id, and the
`services` answer pre-encoded once per (panel, price profile), by the renderer the API passes
(api/respond.py `render_services`: store knows what is offered, api how it reads on the wire).

Imports asyncpg, money and panelconf. A `Catalog` is an immutable snapshot loaded in one pass;
a change anywhere (NOTIFY panelsrv_catalog) makes `LiveCatalog` load a new one and swap it in,
so readers never see a half-updated catalog. Prices: a user-specific rate wins, else
the base rate less the user's discount (money.user_rate), the same function `add` charges with.

Ids: a number is a panel's local id first, then a global id. A local id the panel has given out
keeps meaning that service while it is inactive (then: no service), so deactivating it never
turns the number into another service at another price; and the listing leaves out a service
shown by its global id when that id is one of the panel's local ids, since ordering by that
number gives the local one. Every listed id therefore orders exactly the service listed under it.

Currencies: a panel's own services are priced in its currency. A shared service names the
currency of its rate; on a panel of another currency it is offered only when the operator set
an exchange rate for that currency on the panel (`panel fx`), at its rate converted once here
(rounded half up to the minor unit, so `services` shows exactly what `add` charges), and is not
offered at all otherwise: no price is ever read in the wrong currency.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from decimal import ROUND_HALF_UP, Decimal

import asyncpg

from panelsrv import money, panelconf
from panelsrv.store.pool import UNAVAILABLE, Pool

log = logging.getLogger("panelsrv.catalog")

LOAD_PANELS = "SELECT id, domain, currency, settings FROM panels"
# Inactive services too, for the local ids they hold (the last column says which).
LOAD_SERVICES = """
SELECT id, panel_id, local_id, name, type, category, rate, min_qty, max_qty, dripfeed, refill,
       cancel, avg_time, hidden, provider_id, currency, active
  FROM services
 ORDER BY coalesce(local_id, id), id
"""
# -> (panel, currency, units of the panel's currency per unit of that one)
LOAD_EXCHANGE_RATES = "SELECT panel_id, currency, rate FROM panel_exchange_rates"
# Bound on cached `services` answers; users with their own rates each have one.
MAX_CACHED_LISTINGS = 4096


@dataclass(frozen=True, slots=True)
class Panel:
    id: int
    domain: str
    currency: str
    settings: panelconf.PanelSettings


@dataclass(frozen=True, slots=True)
class Service:
    id: int
    panel_id: int | None
    local_id: int | None
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
    hidden: bool
    provider_id: int | None
    currency: str | None  # a shared service's; None: its panel's

    @property
    def public_id(self) -> int:
        return self.local_id if self.local_id is not None else self.id


# (services offered, in listing order and priced as sold; discount in bp; the user's own rates
# by service) -> the `services` body.
RenderListing = Callable[[list[Service], int, dict[int, int]], bytes]


@dataclass(slots=True)
class Catalog:
    panels: dict[int, Panel]
    by_domain: dict[str, Panel]
    services: dict[int, Service]  # active ones, by global id
    local: dict[tuple[int, int], Service | None]  # (panel, local id) -> None when inactive
    # (panel, service) -> a shared service of another currency, at the panel's exchange rate;
    # such a service absent here is not offered on that panel.
    converted: dict[tuple[int, int], Service] = field(default_factory=dict)
    _listings: dict[tuple[int, int, int], bytes] = field(default_factory=dict)

    def panel_for_host(self, host: str, default_domain: str) -> Panel | None:
        panel = self.by_domain.get(host)
        if panel is None and default_domain:
            panel = self.by_domain.get(default_domain)
        return panel

    def resolve_service(self, panel_id: int, service: int) -> Service | None:
        """The panel's local id first, then the global id of a service the panel offers."""
        mine = (panel_id, service)
        if mine in self.local:
            return self.local[mine]
        found = self.services.get(service)
        if found is None or (found.panel_id is not None and found.panel_id != panel_id):
            return None
        return self._priced_for(panel_id, found)

    def _priced_for(self, panel_id: int, service: Service) -> Service | None:
        """`service` as the panel sells it: in the panel's currency, or None (not offered)."""
        if service.currency is None or service.currency == self.panels[panel_id].currency:
            return service
        return self.converted.get((panel_id, service.id))

    def listing(
        self,
        panel_id: int,
        user_id: int,
        discount_bp: int,
        overrides: dict[int, int],
        render: RenderListing,
    ) -> bytes:
        """The `services` answer for this caller, rendered once per price profile."""
        cache_key = (panel_id, user_id if overrides else 0, discount_bp)
        body = self._listings.get(cache_key)
        if body is None:
            body = render(self.offered(panel_id), discount_bp, overrides)
            if len(self._listings) >= MAX_CACHED_LISTINGS:
                self._listings.clear()
            self._listings[cache_key] = body
        return body

    def offered(self, panel_id: int) -> list[Service]:
        """What the panel lists, in listing order, each priced as the panel sells it."""
        priced = (
            self._priced_for(panel_id, s)
            for s in self.services.values()
            if not s.hidden
            and (s.panel_id is None or s.panel_id == panel_id)
            and (s.local_id is not None or (panel_id, s.id) not in self.local)
        )
        return [s for s in priced if s is not None]

    def forget_listings(self) -> None:
        """Prices of some user changed: drop every encoded answer (they are rebuilt lazily)."""
        self._listings.clear()


async def load(conn: asyncpg.Connection | Pool) -> Catalog:
    panels = {
        r[0]: Panel(r[0], r[1], r[2], panelconf.decode(r[3])) for r in await conn.fetch(LOAD_PANELS)
    }
    services: dict[int, Service] = {}
    local: dict[tuple[int, int], Service | None] = {}
    for r in await conn.fetch(LOAD_SERVICES):
        service = Service(*r[:-1])
        active = r[-1]
        if active:
            services[service.id] = service
        if service.local_id is not None and service.panel_id is not None:
            local[(service.panel_id, service.local_id)] = service if active else None
    converted = _convert(services, await conn.fetch(LOAD_EXCHANGE_RATES))
    return Catalog(panels, {p.domain: p for p in panels.values()}, services, local, converted)


def converted_rate(rate: int, exchange_rate: Decimal) -> int:
    """A rate in minor units of another currency -> minor units of the panel's, half up."""
    return int((rate * exchange_rate).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _convert(
    services: dict[int, Service], exchange_rates: list[asyncpg.Record]
) -> dict[tuple[int, int], Service]:
    """Every shared service priced in a currency some panel has an exchange rate for."""
    by_currency: dict[str, list[Service]] = {}
    for service in services.values():
        if service.currency is not None:
            by_currency.setdefault(service.currency, []).append(service)
    converted: dict[tuple[int, int], Service] = {}
    for panel_id, currency, exchange_rate in exchange_rates:
        for service in by_currency.get(currency, ()):
            rate = converted_rate(service.rate, exchange_rate)
            if rate > money.MAX_UNITS:
                log.warning(
                    "service %d not offered on panel %d: %s at %s exceeds the largest amount",
                    service.id, panel_id, currency, exchange_rate,
                )  # fmt: skip
                continue
            converted[(panel_id, service.id)] = replace(service, rate=rate)
    return converted


# -- the process's current catalog -------------------------------------------------------------

RELOAD_DELAY = 0.05  # coalesce a burst of catalog notifications into one reload
# Tables whose change alters some user's prices or limits, not the catalog: the answers built
# from them are dropped (listings here, principals in the key cache), nothing is reloaded.
PRICING_TABLES = frozenset({"users", "user_rates", "tiers"})


class LiveCatalog:
    """The process's current `Catalog` (`catalog`), kept current by the notifications.

    `changed(table)` is the NOTIFY callback: a pricing table drops the encoded listings and
    calls `on_prices_changed` (the key cache's `clear`); any other table schedules one reload
    `RELOAD_DELAY` later, so a burst of changes costs one load. `reload()` loads now (after a
    reconnect, when notifications may have been missed). A failed load keeps the catalog in
    use and says so in the log. `close()` cancels what is pending.
    """

    def __init__(self, pool: Pool, current: Catalog, on_prices_changed: Callable[[], None]):
        self.catalog = current
        self._pool = pool
        self._on_prices_changed = on_prices_changed
        self._pending: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def changed(self, table: str) -> None:
        if table in PRICING_TABLES:
            self._on_prices_changed()
            self.catalog.forget_listings()
        elif self._pending is None:
            loop = asyncio.get_running_loop()
            self._pending = loop.call_later(RELOAD_DELAY, self._start_reload)

    def _start_reload(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload())
        self._tasks.add(task)  # the loop keeps only a weak reference to a running task
        task.add_done_callback(self._tasks.discard)

    async def reload(self) -> None:
        self._pending = None
        try:
            self.catalog = await load(self._pool)
        except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
            log.error("catalog reload failed (%s); keeping the previous one", exc)

    async def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
