"""A panel set up the way a new operator would: two panels, a few customers, a service of every
type, and the odd ones (inactive, hidden, another panel's, one offered on every panel).

Built once per test module (`Shop.open`, from a sync module fixture) through the store's own
functions. Every name carries the shop's token and local ids are far above any global id the
test database reaches, so modules sharing the database never see each other's services.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass, field
from typing import Any

from panelsrv.servicetypes import SERVICE_TYPES
from panelsrv.store import admin, db
from tests.conftest import run_async
from tests.e2e.kit import sql
from tests.e2e.served import World, call, offered, visible
from tests.kit.waiting import until

# Panel-local ids.
MAIN = 1_000_001  # default, 0.45 per 1000, 100..100000, cancel + refill + dripfeed
PLAIN = 1_000_002  # default, 1.00 per 1000, 10..1000, no cancel/refill/dripfeed
INACTIVE = 1_000_003
HIDDEN = 1_000_004
UPSTREAM = 1_000_005  # default, 1.00 per 1000, 10..10000, cancel, sent to a provider
TYPE_BASE = 1_000_100  # SERVICE_TYPES[i] has local id TYPE_BASE + i
CAROL_MAIN_RATE = "0.30"


@dataclass(frozen=True)
class Account:
    user_id: int
    key: str


@dataclass
class Shop:
    database_url: str
    token: str  # ends every service name of this shop
    domain: str
    other: str  # a second panel
    alice: Account
    bob: Account
    carol: Account  # 10 % discount, and her own rate on MAIN
    stranger: Account  # a customer of the other panel
    main_id: int  # MAIN's global id
    global_id: int  # offered on every panel, listed under its global id
    foreign_id: int  # global id of the other panel's service (local id MAIN there)
    types: dict[str, int] = field(default_factory=dict)  # type -> local id

    @classmethod
    def open(cls, database_url: str, port: int) -> Shop:
        return run_async(cls._build(database_url, port))  # type: ignore[no-any-return]

    @classmethod
    async def _build(cls, url: str, port: int) -> Shop:
        world = World(url)
        token = secrets.token_hex(4)
        domain, other = await world.panel(), await world.panel()
        alice = Account(*await world.user(domain, balance="1000.00"))
        bob = Account(*await world.user(domain, balance="1000.00"))
        carol = Account(*await world.user(domain, balance="1000.00", discount="10"))
        stranger = Account(*await world.user(other, balance="1000.00"))

        async def service(panel: str | None, name: str, **spec: Any) -> int:
            return await world.service(panel, name=f"{name} {token}", **spec)

        main_id = await service(
            domain,
            "Main",
            local_id=MAIN,
            rate="0.45",
            min=100,
            max=100_000,
            cancel=True,
            refill=True,
            dripfeed=True,
            category="Instagram",
            avg_time=3600,
        )
        await service(domain, "Plain", local_id=PLAIN, rate="1.00", min=10, max=1000)
        inactive = await service(domain, "Gone", local_id=INACTIVE)
        hidden = await service(domain, "Hidden", local_id=HIDDEN)
        await sql(url, "UPDATE services SET active = false WHERE id = $1", inactive)
        await sql(url, "UPDATE services SET hidden = true WHERE id = $1", hidden)
        conn = await db.connect(url)
        try:
            provider = await admin.add_provider(conn, f"up-{token}", "http://127.0.0.1:9/", "k")
        finally:
            await conn.close()
        await service(
            domain,
            "Upstream",
            local_id=UPSTREAM,
            rate="1.00",
            min=10,
            max=10_000,
            cancel=True,
            refill=True,
            provider=str(provider),
            provider_service="1",
        )
        global_id = await service(None, "Everywhere", rate="2.00", min=10, max=1000)
        foreign_id = await service(other, "Theirs", local_id=MAIN, rate="9.00")
        types = {}
        for i, kind in enumerate(SERVICE_TYPES):
            await service(
                domain,
                kind,
                local_id=TYPE_BASE + i,
                type=kind,
                rate="1.00",
                min=10 if kind == "Subscriptions" else 1,
                max=10_000,
            )
            types[kind] = TYPE_BASE + i
        await sql(
            url,
            "INSERT INTO user_rates (user_id, service_id, rate) VALUES ($1, $2, $3)",
            carol.user_id,
            main_id,
            30_000,
        )
        shop = cls(
            url,
            token,
            domain,
            other,
            alice,
            bob,
            carol,
            stranger,
            main_id,
            global_id,
            foreign_id,
            types,
        )
        await offered(port, other, stranger.key, MAIN)
        await shop.settled(port)
        return shop

    def listing(self, body: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """This shop's entries of a `services` answer, by name (without the token)."""
        suffix = " " + self.token
        return {s["name"].removesuffix(suffix): s for s in body if s["name"].endswith(suffix)}

    async def settled(self, port: int) -> None:
        """Wait until the server lists this shop's catalog as built (the last changes - hidden,
        inactive, Carol's own rate - included), ten times in a row."""
        await visible(port, self.domain, self.carol.key)
        fields = {"key": self.carol.key, "action": "services"}

        async def built() -> bool:
            for _ in range(10):
                ours = self.listing((await call(port, fields, host=self.domain)).json())
                if len(ours) != len(SERVICE_TYPES) + 4 or ours["Main"]["rate"] != CAROL_MAIN_RATE:
                    return False
            return True

        await until(built, 5, interval=0.05, what=f"{self.domain}'s catalog built")


def in_days(days: int) -> str:
    return (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=days)).isoformat()
