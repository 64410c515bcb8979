"""Operator writes behind the admin CLI: panels, users, rate-limit tiers, providers, services,
user rates, exchange rates; and the order and tier listings it shows.

Imports asyncpg, money, panelconf, the ledger and the order statuses (orders.py). Every
function validates its input before writing and runs in one transaction, so bad input raises
`InputError` and writes nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

import asyncpg

from panelsrv import money, panelconf
from panelsrv.servicetypes import SERVICE_TYPES
from panelsrv.store import ledger
from panelsrv.store.orders import ORDER_STATUSES

_DOMAIN = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
MAX_LISTED = 10_000


class InputError(ValueError):
    """The operator's input is wrong; nothing was written."""


@dataclass(frozen=True, slots=True)
class UserRef:
    id: int
    email: str
    panel_id: int
    currency: str


def normalize_domain(domain: str) -> str:
    value = domain.strip().lower().rstrip(".")
    if not _DOMAIN.match(value):
        raise InputError(f"not a valid domain: {domain!r}")
    return value


def normalize_email(email: str) -> str:
    value = email.strip().lower()
    if not _EMAIL.match(value):
        raise InputError(f"not a valid email: {email!r}")
    return value


def currency_code(text: str) -> str:
    code = text.strip().upper()
    if not re.fullmatch(r"[A-Z]{3}", code):
        raise InputError(f"currency must be a 3-letter code, not {text!r}")
    return code


def parse_money(text: str, what: str, *, allow_negative: bool = False) -> int:
    try:
        return money.parse(text, allow_negative=allow_negative)
    except money.MoneyError as exc:
        raise InputError(f"{what}: {exc}") from None


async def panel_by_domain(conn: asyncpg.Connection, domain: str) -> tuple[int, str]:
    row = await conn.fetchrow(
        "SELECT id, currency FROM panels WHERE domain = $1", normalize_domain(domain)
    )
    if row is None:
        raise InputError(f"no panel with domain {domain!r}")
    return row[0], row[1]


async def panel_domain(conn: asyncpg.Connection, panel_id: int) -> str:
    return await conn.fetchval("SELECT domain FROM panels WHERE id = $1", panel_id)


async def add_panel(conn: asyncpg.Connection, domain: str, currency: str) -> tuple[int, str, str]:
    domain = normalize_domain(domain)
    currency = currency_code(currency)
    try:
        panel_id = await conn.fetchval(
            "INSERT INTO panels (domain, currency) VALUES ($1, $2) RETURNING id", domain, currency
        )
    except asyncpg.UniqueViolationError:
        raise InputError(f"a panel with domain {domain!r} exists already") from None
    return panel_id, domain, currency


async def set_panel(conn: asyncpg.Connection, domain: str, name: str, value: str) -> dict:
    """Set one panel setting (or `currency`); returns the panel's settings after the change."""
    async with conn.transaction():
        panel_id, _ = await panel_by_domain(conn, domain)
        if name == "currency":
            currency = currency_code(value)
            await conn.execute("UPDATE panels SET currency = $2 WHERE id = $1", panel_id, currency)
        else:
            stored = await conn.fetchval(
                "SELECT settings FROM panels WHERE id = $1 FOR UPDATE", panel_id
            )
            try:
                merged = panelconf.with_setting(stored, name, value)
            except panelconf.PanelSettingError as exc:
                raise InputError(str(exc)) from None
            await conn.execute("UPDATE panels SET settings = $2 WHERE id = $1", panel_id, merged)
        row = await conn.fetchrow("SELECT currency, settings FROM panels WHERE id = $1", panel_id)
    return {
        "panel": panel_id,
        "domain": normalize_domain(domain),
        "currency": row[0],
        "settings": row[1],
    }


async def _panel(conn: asyncpg.Connection, domain: str | None) -> tuple[int, str]:
    """The panel named by `domain`, or the only one when `domain` is None: (id, currency)."""
    if domain is not None:
        return await panel_by_domain(conn, domain)
    panels = await conn.fetch("SELECT id, currency FROM panels ORDER BY id LIMIT 2")
    if not panels:
        raise InputError("no panel yet: run `panelsrv panel add --domain D` first")
    if len(panels) > 1:
        raise InputError("there are several panels: pass --domain")
    return panels[0][0], panels[0][1]


async def add_user(
    conn: asyncpg.Connection,
    email: str,
    domain: str | None,
    balance: str,
    discount: str,
    tier: str | None = None,
) -> tuple[UserRef, int]:
    """A user and their wallet on a panel; `tier`: the name of one of the panel's rate-limit
    tiers (None: the server's per-user cap)."""
    email = normalize_email(email)
    opening = parse_money(balance, "balance")
    try:
        discount_bp = money.parse_percent_bp(discount)
    except money.MoneyError as exc:
        raise InputError(f"discount: {exc}") from None
    async with conn.transaction():
        panel_id, currency = await _panel(conn, domain)
        tier_id = None if tier is None else await _tier_id(conn, panel_id, tier)
        try:
            user_id = await conn.fetchval(
                "INSERT INTO users (panel_id, email, discount_bp) VALUES ($1, $2, $3) RETURNING id",
                panel_id,
                email,
                discount_bp,
            )
        except asyncpg.UniqueViolationError:
            raise InputError(f"a user with email {email!r} exists already") from None
        await conn.execute("INSERT INTO wallets (user_id) VALUES ($1)", user_id)
        if tier_id is not None:  # (the INSERT alone also serves schemas older than 010)
            await conn.execute("UPDATE users SET tier_id = $2 WHERE id = $1", user_id, tier_id)
        if opening:
            await ledger.move_funds(conn, user_id, opening, "opening balance")
    return UserRef(user_id, email, panel_id, currency), opening


async def has_user(conn: asyncpg.Connection, email: str) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM users WHERE email = $1)", normalize_email(email)
        )
    )


async def user_by_email(conn: asyncpg.Connection, email: str) -> UserRef:
    email = normalize_email(email)
    row = await conn.fetchrow(
        "SELECT u.id, u.panel_id, p.currency FROM users u JOIN panels p ON p.id = u.panel_id"
        " WHERE u.email = $1",
        email,
    )
    if row is None:
        raise InputError(f"no user with email {email!r}")
    return UserRef(row[0], email, row[1], row[2])


async def add_funds(
    conn: asyncpg.Connection, email: str, amount: str, memo: str | None
) -> tuple[UserRef, ledger.Entry]:
    units = parse_money(amount, "amount", allow_negative=True)
    if units == 0:
        raise InputError("amount must not be zero")
    user = await user_by_email(conn, email)
    entry = await ledger.move_funds(conn, user.id, units, memo)
    if entry is None:
        raise InputError(f"a debit of {money.format(-units)} would take the balance below zero")
    return user, entry


async def add_provider(
    conn: asyncpg.Connection,
    name: str,
    url: str,
    key: str,
    currency: str = "USD",
    honours_idempotency: bool = False,
) -> int:
    """`currency`: what the provider's rates are in (its `balance` answer says).
    `honours_idempotency`: a resend with the same Idempotency-Key returns the same order there
    (another panelsrv does), so an attempt of unknown outcome is resent, not held."""
    currency = currency_code(currency)
    name = name.strip()
    if not name:
        raise InputError("name must not be empty")
    if not re.match(r"^https?://[^\s/]+", url):
        raise InputError(f"url must start with http:// or https://, not {url!r}")
    if not key:
        raise InputError("key must not be empty")
    try:
        return await conn.fetchval(
            "INSERT INTO providers (name, url, api_key, currency, honours_idempotency)"
            " VALUES ($1, $2, $3, $4, $5) RETURNING id",
            name,
            url,
            key,
            currency,
            honours_idempotency,
        )
    except asyncpg.UniqueViolationError:
        raise InputError(f"a provider named {name!r} exists already") from None


async def set_provider_idempotency(conn: asyncpg.Connection, ref: str, honours: bool) -> int:
    """Say whether the provider honours Idempotency-Key; the workers see it within 30 s."""
    found = await provider_id(conn, ref)
    await conn.execute(
        "UPDATE providers SET honours_idempotency = $2 WHERE id = $1", found, honours
    )
    return found


@dataclass(frozen=True, slots=True)
class ProviderEndpoint:
    name: str
    url: str
    api_key: str


async def provider_endpoint(conn: asyncpg.Connection, provider: int) -> ProviderEndpoint:
    """Where and as whom to call a provider (by id, as `provider_id` returns it)."""
    row = await conn.fetchrow("SELECT name, url, api_key FROM providers WHERE id = $1", provider)
    if row is None:
        raise InputError(f"no provider {provider}")
    return ProviderEndpoint(row["name"], row["url"], row["api_key"])


async def set_provider_endpoint(
    conn: asyncpg.Connection, name: str, url: str, api_key: str
) -> None:
    """Point the provider named `name` at another URL and key (the demo's simulator moves)."""
    await conn.execute(
        "UPDATE providers SET url = $2, api_key = $3 WHERE name = $1", name, url, api_key
    )


async def provider_id(conn: asyncpg.Connection, ref: str) -> int:
    """A provider by name, or by id when `ref` is a number."""
    if ref.isdigit():
        found = await conn.fetchval("SELECT id FROM providers WHERE id = $1", int(ref))
    else:
        found = await conn.fetchval("SELECT id FROM providers WHERE name = $1", ref)
    if found is None:
        raise InputError(f"no provider {ref!r}")
    return int(found)


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str
    type: str
    rate: str
    min: int
    max: int
    category: str = ""
    provider: str | None = None
    provider_service: str | None = None
    dripfeed: bool = False
    refill: bool = False
    cancel: bool = False
    avg_time: int = 0
    domain: str | None = None
    local_id: int | None = None
    currency: str | None = None  # a shared service's (default: its provider's, else USD)


async def add_service(conn: asyncpg.Connection, spec: ServiceSpec) -> tuple[int, int | None]:
    if not spec.name.strip():
        raise InputError("name must not be empty")
    if spec.type not in SERVICE_TYPES:
        raise InputError(f"type must be one of: {', '.join(SERVICE_TYPES)}")
    rate = parse_money(spec.rate, "rate")
    if spec.min < 1 or spec.max < spec.min:
        raise InputError("min must be >= 1 and max >= min")
    if spec.avg_time < 0:
        raise InputError("avg-time must not be negative")
    if (spec.provider is None) != (spec.provider_service is None):
        raise InputError("--provider and --provider-service go together")
    if spec.local_id is not None and (spec.domain is None or spec.local_id < 1):
        raise InputError("--local-id needs --domain and must be >= 1")
    async with conn.transaction():
        prov = await provider_id(conn, spec.provider) if spec.provider else None
        currency = await _service_currency(conn, spec, prov)
        panel_id = (await panel_by_domain(conn, spec.domain))[0] if spec.domain else None
        try:
            service_id = await conn.fetchval(
                """INSERT INTO services (panel_id, local_id, name, type, category, rate, min_qty,
                       max_qty, dripfeed, refill, cancel, avg_time, provider_id, provider_service,
                       currency)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
                   RETURNING id""",
                panel_id,
                spec.local_id,
                spec.name.strip(),
                spec.type,
                spec.category,
                rate,
                spec.min,
                spec.max,
                spec.dripfeed,
                spec.refill,
                spec.cancel,
                spec.avg_time,
                prov,
                spec.provider_service,
                currency,
            )
        except asyncpg.UniqueViolationError:
            raise InputError(
                "that local id (or upstream service) is taken on this panel already"
            ) from None
    return service_id, spec.local_id


async def _service_currency(
    conn: asyncpg.Connection, spec: ServiceSpec, provider: int | None
) -> str | None:
    """A panel's own service is priced in the panel's currency (None); a shared one in the
    currency given, else its provider's, else USD."""
    if spec.domain:
        _, panel_currency = await panel_by_domain(conn, spec.domain)
        if spec.currency is not None and currency_code(spec.currency) != panel_currency:
            raise InputError(
                f"a service of panel {spec.domain} is priced in its currency, {panel_currency}"
            )
        return None
    if spec.currency is not None:
        return currency_code(spec.currency)
    if provider is not None:
        return str(await conn.fetchval("SELECT currency FROM providers WHERE id = $1", provider))
    return "USD"


async def set_exchange_rate(
    conn: asyncpg.Connection, domain: str, currency: str, rate: str | None
) -> tuple[int, str, str]:
    """Offer the panel shared services priced in `currency`: 1 `currency` = `rate` of the
    panel's own. `rate` None: stop offering them. -> (panel, currency, panel currency)."""
    currency = currency_code(currency)
    panel_id, panel_currency = await panel_by_domain(conn, domain)
    if currency == panel_currency:
        raise InputError(f"{currency} is the panel's own currency")
    if rate is None:
        await conn.execute(
            "DELETE FROM panel_exchange_rates WHERE panel_id = $1 AND currency = $2",
            panel_id,
            currency,
        )
        return panel_id, currency, panel_currency
    text = rate.strip()
    if not re.fullmatch(r"[0-9]{1,9}(\.[0-9]{1,12})?", text) or Decimal(text) == 0:
        raise InputError(f"rate must be a positive decimal below 1e9, not {rate!r}")
    value = Decimal(text)
    await conn.execute(
        """INSERT INTO panel_exchange_rates (panel_id, currency, rate) VALUES ($1, $2, $3)
           ON CONFLICT (panel_id, currency) DO UPDATE SET rate = EXCLUDED.rate""",
        panel_id,
        currency,
        value,
    )
    return panel_id, currency, panel_currency


async def set_rate(
    conn: asyncpg.Connection, email: str, service: int, rate: str
) -> tuple[int, int]:
    """A user-specific price; `service` is the user's panel-local id first, then the global id."""
    units = parse_money(rate, "rate")
    user = await user_by_email(conn, email)
    service_id = await conn.fetchval(
        """SELECT id FROM services
            WHERE (panel_id = $1 AND local_id = $2)
               OR (id = $2 AND (panel_id IS NULL OR panel_id = $1))
            ORDER BY (local_id = $2) DESC NULLS LAST LIMIT 1""",
        user.panel_id,
        service,
    )
    if service_id is None:
        raise InputError(f"no service {service} on the user's panel")
    await conn.execute(
        """INSERT INTO user_rates (user_id, service_id, rate) VALUES ($1, $2, $3)
           ON CONFLICT (user_id, service_id) DO UPDATE SET rate = EXCLUDED.rate""",
        user.id,
        service_id,
        units,
    )
    return user.id, service_id


# $1 status, $2 provider, $3 panel (NULL: any), $4 limit -> orders, newest first.
LIST_ORDERS = """
SELECT o.id, p.domain, u.email, o.status, o.charge,
       coalesce((SELECT e.amount FROM ledger_entries e
                  WHERE e.order_id = o.id AND e.kind = 'refund'), 0) AS refunded,
       p.currency, pr.name AS provider, o.upstream_id, o.error, o.created_at, o.updated_at,
       h.held_at, h.last_error AS held_why
  FROM orders o JOIN panels p ON p.id = o.panel_id JOIN users u ON u.id = o.user_id
  LEFT JOIN providers pr ON pr.id = o.provider_id
  LEFT JOIN LATERAL (SELECT x.held_at, x.last_error FROM outbox x
                      WHERE x.order_id = o.id AND x.held_at IS NOT NULL
                      ORDER BY x.id LIMIT 1) h ON true
 WHERE ($1::text IS NULL OR o.status = $1) AND ($2::bigint IS NULL OR o.provider_id = $2)
   AND ($3::bigint IS NULL OR o.panel_id = $3) AND (NOT $5 OR h.held_at IS NOT NULL)
 ORDER BY o.id DESC
 LIMIT $4
"""


async def list_orders(
    conn: asyncpg.Connection,
    status: str | None = None,
    provider: str | None = None,
    domain: str | None = None,
    limit: int = 100,
    held: bool = False,
) -> list[dict[str, object]]:
    """Orders for the operator, newest first: e.g. `status="Error"`, those a provider reported
    as failed (refunded in full), or `held`, those waiting for the operator after an attempt of
    unknown outcome (held.resolve). Amounts are decimal text in the panel's currency."""
    if status is not None and status not in ORDER_STATUSES:
        raise InputError(f"status must be one of: {', '.join(ORDER_STATUSES)}")
    if not 1 <= limit <= MAX_LISTED:
        raise InputError(f"limit must be between 1 and {MAX_LISTED}")
    prov = await provider_id(conn, provider) if provider else None
    panel = (await panel_by_domain(conn, domain))[0] if domain else None
    rows = await conn.fetch(LIST_ORDERS, status, prov, panel, limit, held)
    return [
        {
            "order": r["id"],
            "panel": r["domain"],
            "user": r["email"],
            "status": r["status"],
            "charge": money.format(r["charge"]),
            "refunded": money.format(r["refunded"]),
            "currency": r["currency"],
            "provider": r["provider"],
            "upstream_id": r["upstream_id"],
            "error": r["error"],
            "created": r["created_at"].isoformat(),
            "updated": r["updated_at"].isoformat(),
            "held": r["held_why"] if r["held_at"] is not None else None,
        }
        for r in rows
    ]


# -- rate-limit tiers --------------------------------------------------------------------------

# $1 panel, $2 tier (NULL: any) -> tiers with how many users each has, by panel and name.
LIST_TIERS = """
SELECT t.id, p.domain, t.name, t.rate, t.burst, t.orders,
       (SELECT count(*) FROM users u WHERE u.tier_id = t.id) AS users
  FROM tiers t JOIN panels p ON p.id = t.panel_id
 WHERE ($1::bigint IS NULL OR t.panel_id = $1) AND ($2::bigint IS NULL OR t.id = $2)
 ORDER BY p.domain, t.name
"""


def _tier_doc(row: asyncpg.Record) -> dict[str, object]:
    return {
        "tier": row["id"],
        "panel": row["domain"],
        "name": row["name"],
        "rate": row["rate"],
        "burst": row["burst"],
        "orders": row["orders"],
        "users": row["users"],
    }


async def _tier_id(conn: asyncpg.Connection, panel_id: int, name: str) -> int:
    found = await conn.fetchval(
        "SELECT id FROM tiers WHERE panel_id = $1 AND name = $2", panel_id, name
    )
    if found is None:
        raise InputError(f"no tier {name!r} on that panel (see `panelsrv tier list`)")
    return int(found)


def _check_tier(name: str, rate: float, burst: int, orders: int) -> None:
    problem = panelconf.tier_problem(name, rate, burst, orders)
    if problem is not None:
        raise InputError(problem)


async def _one_tier(conn: asyncpg.Connection, tier_id: int) -> dict[str, object]:
    return _tier_doc((await conn.fetch(LIST_TIERS, None, tier_id))[0])


async def add_tier(
    conn: asyncpg.Connection,
    domain: str | None,
    name: str,
    rate: float,
    burst: int,
    orders: int = panelconf.ORDER_CEILING,
) -> dict[str, object]:
    """A named rate-limit tier on a panel: per-user `rate` requests/s with `burst`, and at most
    `orders` orders per minute (never above the ceiling of ORDER_CEILING)."""
    name = name.strip()
    _check_tier(name, rate, burst, orders)
    async with conn.transaction():
        panel_id, _ = await _panel(conn, domain)
        try:
            tier_id = await conn.fetchval(
                "INSERT INTO tiers (panel_id, name, rate, burst, orders)"
                " VALUES ($1, $2, $3, $4, $5) RETURNING id",
                panel_id,
                name,
                rate,
                burst,
                orders,
            )
        except asyncpg.UniqueViolationError:
            raise InputError(
                f"the panel has a tier named {name!r} already (change it with `tier set`)"
            ) from None
        return await _one_tier(conn, tier_id)


async def set_tier(
    conn: asyncpg.Connection,
    domain: str | None,
    name: str,
    rate: float | None = None,
    burst: int | None = None,
    orders: int | None = None,
) -> dict[str, object]:
    """Change a tier's limits (None: keep that one); every process applies them at once."""
    if rate is None and burst is None and orders is None:
        raise InputError("nothing to change: give --rate, --burst or --orders")
    name = name.strip()
    async with conn.transaction():
        panel_id, _ = await _panel(conn, domain)
        row = await conn.fetchrow(
            "SELECT id, rate, burst, orders FROM tiers WHERE panel_id = $1 AND name = $2"
            " FOR UPDATE",
            panel_id,
            name,
        )
        if row is None:
            raise InputError(f"no tier {name!r} on that panel (see `panelsrv tier list`)")
        rate = row["rate"] if rate is None else rate
        burst = row["burst"] if burst is None else burst
        orders = row["orders"] if orders is None else orders
        _check_tier(name, rate, burst, orders)
        await conn.execute(
            "UPDATE tiers SET rate = $2, burst = $3, orders = $4 WHERE id = $1",
            row["id"],
            rate,
            burst,
            orders,
        )
        return await _one_tier(conn, row["id"])


async def list_tiers(
    conn: asyncpg.Connection, domain: str | None = None
) -> list[dict[str, object]]:
    """The tiers of one panel (`domain`) or of every panel, with their users counted."""
    panel_id = (await panel_by_domain(conn, domain))[0] if domain else None
    return [_tier_doc(r) for r in await conn.fetch(LIST_TIERS, panel_id, None)]


async def set_user_tier(
    conn: asyncpg.Connection, email: str, tier: str | None
) -> tuple[UserRef, str | None]:
    """Put a user on one of their panel's tiers, or back on the server's per-user cap (None);
    every process applies it at once."""
    async with conn.transaction():
        user = await user_by_email(conn, email)
        tier_id = None if tier is None else await _tier_id(conn, user.panel_id, tier.strip())
        await conn.execute("UPDATE users SET tier_id = $2 WHERE id = $1", user.id, tier_id)
    return user, None if tier is None else tier.strip()
