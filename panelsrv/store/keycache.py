"""API key -> principal, through an in-process cache in front of the hashed-key table.

Imports asyncpg, keys and panelconf. A hit is one dict lookup; a miss costs one indexed lookup
(concurrent misses for the same key share it); unknown keys are remembered as unknown briefly.
Entries are dropped the moment a revocation NOTIFY arrives (see notifications.py), all of them
when a price, a discount or a rate-limit tier changes (`clear`). The cache answers only until the
time the listener last vouched for (`trust_until`: about a second past its last answered ping),
so when that channel is down or silently dead the cache is bypassed within about a second and a
revocation is never missed for longer; `ttl` bounds staleness regardless.
A lookup that was in flight when a revocation or a price change arrived answers its request but
is not remembered: its row may predate the change, whose NOTIFY can overtake the lookup's answer.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from panelsrv.panelconf import Tier
from panelsrv.store import keys
from panelsrv.store.pool import Pool

# $1 sha256 -> the active key's principal, with the user's own rates as [[service, rate], ...],
# the user's tier (all NULL without one) and the key's allowed client networks (cidr[], '{}':
# any): one indexed lookup, the tier's row by its key.
LOOKUP_PRINCIPAL = """
SELECT k.id, k.user_id, u.panel_id, u.discount_bp,
       coalesce((SELECT array_agg(ARRAY[r.service_id, r.rate]) FROM user_rates r
                  WHERE r.user_id = u.id), '{}'),
       t.id, t.name, t.rate, t.burst, t.orders, k.allowed_ips
  FROM api_keys k JOIN users u ON u.id = k.user_id LEFT JOIN tiers t ON t.id = u.tier_id
 WHERE k.hash = $1 AND k.revoked_at IS NULL
"""
MAX_ENTRIES = 200_000
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: int
    user_id: int
    panel_id: int
    discount_bp: int
    overrides: dict[int, int]  # service id -> the user's own rate
    digest_hex: str
    tier: Tier | None  # None: the server's per-user cap and the panel's order ceiling
    allowed: tuple[Network, ...] = ()  # the client networks the key may be used from; (): any

    def admits(self, client_ip: str) -> bool:
        """Whether a request from `client_ip` (canonical text) may use the key: always for a
        key without a list, else when the address is in one of its networks."""
        if not self.allowed:
            return True
        try:
            addr = ipaddress.ip_address(client_ip)
        except ValueError:
            return False
        return any(addr in net for net in self.allowed)


class KeyCache:
    __slots__ = (
        "_by_digest",
        "_clock",
        "_entries",
        "_generation",
        "_inflight",
        "_negative_ttl",
        "_pool",
        "_trusted_until",
        "_ttl",
    )

    def __init__(
        self,
        pool: Pool,
        ttl: float,
        negative_ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._clock = clock
        self._entries: dict[str, tuple[Principal | None, float]] = {}
        self._by_digest: dict[str, str] = {}
        self._inflight: dict[str, asyncio.Future[Principal | None]] = {}
        self._trusted_until = float("-inf")  # until the invalidation channel vouches for us
        self._generation = 0  # bumped by every invalidation

    def cached(self, raw: str) -> tuple[bool, Principal | None]:
        """(hit, principal) without I/O: the hot path's fast answer. A string that cannot be a
        key (wrong shape or checksum) is a hit for "no such key": a flood of made-up keys
        costs neither a lookup nor a task."""
        entry = self._entries.get(raw)
        if entry is not None:
            now = self._clock()
            if now <= entry[1] and now < self._trusted_until:
                return True, entry[0]
        return not keys.well_formed(raw), None

    async def resolve(self, raw: str) -> Principal | None:
        hit, principal = self.cached(raw)
        if hit:
            return principal
        pending = self._inflight.get(raw)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Principal | None] = asyncio.get_running_loop().create_future()
        self._inflight[raw] = future
        generation = self._generation
        try:
            principal = await self._load(raw)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here: waiters re-raise it, nobody is left unaware
            raise
        else:
            future.set_result(principal)
            if generation == self._generation:
                self._remember(raw, principal)
            return principal
        finally:
            del self._inflight[raw]

    async def _load(self, raw: str) -> Principal | None:
        digest = keys.digest(raw)
        row = await self._pool.fetchrow(LOOKUP_PRINCIPAL, digest)
        if row is None:
            return None
        overrides = {int(service): int(rate) for service, rate in row[4]}
        tier = None if row[5] is None else Tier(row[5], row[6], row[7], row[8], row[9])
        allowed = tuple(row[10])  # asyncpg decodes cidr as ipaddress networks
        return Principal(row[0], row[1], row[2], row[3], overrides, digest.hex(), tier, allowed)

    def _remember(self, raw: str, principal: Principal | None) -> None:
        if self._clock() >= self._trusted_until:
            return
        if len(self._entries) >= MAX_ENTRIES:
            self.clear()
        ttl = self._ttl if principal is not None else self._negative_ttl
        # +-10 % jitter: keys loaded together (a restart, a burst) do not all expire together
        # and reload in one storm (bench/README.md, the soak's RSS step at the TTL).
        ttl *= 0.9 + 0.2 * random.random()
        self._entries[raw] = (principal, self._clock() + ttl)
        if principal is not None:
            self._by_digest[principal.digest_hex] = raw

    def revoke(self, digest_hex: str) -> None:
        self._generation += 1
        raw = self._by_digest.pop(digest_hex, None)
        if raw is not None:
            self._entries.pop(raw, None)

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()
        self._by_digest.clear()

    def trust_until(self, when: float) -> None:
        """Every revocation committed before `when - MAX_STALENESS` has reached us (the listener
        says so after each answered ping): entries may answer until `when` (this clock)."""
        self._trusted_until = max(self._trusted_until, when)

    def distrust(self) -> None:
        """The invalidation channel was lost, so revocations may have been missed: forget
        everything, and cache nothing until `trust_until` is called again."""
        self._trusted_until = float("-inf")
        self.clear()
