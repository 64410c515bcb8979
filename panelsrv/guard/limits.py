"""The guard facade: what the HTTP protocol and the API handler call on the hot path.

Imports msgspec and the guard modules; never `panelsrv.http` (the checks answer with numbers;
the HTTP layer renders the 429) nor a backend library (the caller passes a `Backend` to
`start`). Every check is synchronous and amortised O(1): a clock read, one or two dict lookups,
a float comparison. The clock is injected (default `time.monotonic`); the pure parts below it
receive `now` as an argument.

Wiring, per worker process:
    guard = Guard(GuardSettings(...))
    guard.start(backend)   # in the running loop; backend None, RedisBackend(...) or HubBackend(...)
    ... guard.check_block(ip) in connection_made, guard.check_ip(ip) in on_headers_complete,
    ... guard.strike(ip) on a bad key or signature, guard.check_user(user_id, tier) after auth
    await guard.close()    # on shutdown: stops the sync task, closes the backend

Invariants:
- `check_block`/`check_ip` answer with an int and allocate nothing: 0 admits; otherwise its
  magnitude is the Retry-After, and its sign says whether the connection may stay (an address
  over its bucket, > 0) or must close (a blocked address, < 0, as the API contract asks).
- Retry-After is whole seconds, at least 1, rounded up: a client that honours it is admitted.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Protocol

import msgspec

from panelsrv.guard.blocklist import Blocklist
from panelsrv.guard.coord import Coordinator, Limiter
from panelsrv.guard.sync import Backend, Syncer
from panelsrv.outages import Outage


class GuardSettings(msgspec.Struct, frozen=True, kw_only=True):
    ip_rate: float = 100.0  # per-IP requests per second
    ip_burst: int = 100
    user_rate: float = 50.0  # per-user soft cap, requests per second
    user_burst: int = 100
    strike_limit: int = 10  # failed authentications ...
    strike_window: float = 60.0  # ... within this many seconds ...
    block_seconds: float = 300.0  # ... block the address this long
    never_block: tuple[str, ...] = ()  # addresses or CIDR networks never blocked
    sync_interval: float = 0.1  # seconds between reconciliations with the backend
    sync_timeout: float = 0.5  # a sync slower than this counts as the backend being down
    max_keys: int = 65_536  # cap per table (IP buckets, user buckets, strikes, blocks)


class UserTier(Protocol):
    """A user's rate-limit tier as the guard needs it (panelconf.Tier is one)."""

    @property
    def key(self) -> str:
        """The tier and its limits: another key whenever its rate or burst changes."""
        ...

    @property
    def rate(self) -> float: ...

    @property
    def burst(self) -> int: ...


@functools.lru_cache(maxsize=65_536)
def client_key(ip: str) -> str:
    """What a client's limits and blocks are kept under: an IPv4 address as it is, an IPv6
    address by its /64 (one subscriber's usual allocation), so rotating addresses inside one's
    own prefix dodges neither the bucket nor a block."""
    if ":" not in ip:
        return ip
    try:
        addr = ipaddress.IPv6Address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(ipaddress.IPv6Network((addr, 64), strict=False))


def retry_after(wait: float) -> int:
    """Seconds for a Retry-After header: whole, at least 1, rounded up."""
    return max(1, math.ceil(wait - 1e-9))


class Guard:
    __slots__ = ("_blocks", "_clock", "_ip", "_limiters", "_settings", "_syncer", "_user", "coord")

    def __init__(
        self,
        settings: GuardSettings,
        clock: Callable[[], float] = time.monotonic,
        pid: str | None = None,
        outage: Outage | None = None,
    ) -> None:
        """`outage`: where the backend's outages are reported (default: the log only)."""
        s = settings
        self._clock = clock
        pid = pid or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.coord = Coordinator(
            pid,
            Limiter("ip", s.ip_rate, s.ip_burst, s.sync_interval, str, s.max_keys),
            Limiter("user", s.user_rate, s.user_burst, s.sync_interval, int, s.max_keys),
            Blocklist(s.strike_limit, s.strike_window, s.block_seconds, s.never_block, s.max_keys),
            s.sync_interval,
        )
        self._settings = s
        self._ip = self.coord.ip
        self._user = self.coord.user
        self._limiters = self.coord.limiters
        self._blocks = self.coord.blocks
        self._syncer = Syncer(
            self.coord, None, s.sync_interval, s.sync_timeout, clock=clock, outage=outage
        )

    # -- hot path --

    def check_block(self, ip: str) -> int:
        """At connection time: Retry-After seconds while `ip` is blocked, else 0. No token."""
        now = self._clock()
        key = client_key(ip) if ":" in ip else ip
        until = self._blocks.blocked_until(key, now)
        return retry_after(until - now) if until and not self._blocks.allowed(ip) else 0

    def check_ip(self, ip: str) -> int:
        """When the headers are complete, before the body: 0 admits (a token taken); n > 0 is
        over the bucket (429, Retry-After n, the connection may stay); n < 0 is blocked (429,
        Retry-After -n, close)."""
        now = self._clock()
        key = client_key(ip) if ":" in ip else ip  # IPv4 skips the call
        until = self._blocks.blocked_until(key, now)
        if until and not self._blocks.allowed(ip):  # an allowed address inside a blocked /64
            return -retry_after(until - now)
        wait = self._ip.take(key, now)
        return retry_after(wait) if wait else 0

    def strike(self, ip: str) -> None:
        """A failed authentication (bad key or bad signature) from `ip`."""
        if not self._blocks.allowed(ip):  # by the address itself: the allow-list is exact
            self.coord.strike(client_key(ip), self._clock())

    def check_user(self, user_id: int, tier: UserTier | None = None) -> float:
        """The per-user soft cap, the tier's when the user has one: 0.0 admitted, else seconds
        to wait (see `retry_after`). Each tier's users are limited in a limiter of its own, kept
        under `tier.key`: made the first time it is met, so a tier whose limits changed starts
        with full buckets at its new limits."""
        now = self._clock()
        if tier is None:
            return self._user.take(user_id, now)
        limiter = self._limiters.get(tier.key)
        if limiter is None:
            s = self._settings
            limiter = Limiter(tier.key, tier.rate, tier.burst, s.sync_interval, int, s.max_keys)
            self.coord.adopt(limiter, now)
        return limiter.take(user_id, now)

    # -- lifecycle and observability --

    def start(self, backend: Backend | None = None) -> None:
        """Start the background task (sync with `backend`, or only sweeping). In the loop."""
        self._syncer.backend = backend
        self.coord.sharing = backend is not None
        self._syncer.start()

    async def close(self) -> None:
        await self._syncer.close()

    @property
    def shared(self) -> bool:
        """True while limits are shared through a reachable backend (False: per process)."""
        return self._syncer.up

    def metrics(self) -> dict[str, float]:
        now = self._clock()
        return {
            "guard_shared_up": float(self._syncer.up),
            "guard_processes": float(self._ip.procs),
            "guard_ip_keys": float(len(self._ip.buckets)),
            "guard_ip_leases": float(len(self._ip.leases)),
            "guard_user_keys": float(
                sum(len(lim.buckets) for lim in self._limiters.values() if lim is not self._ip)
            ),
            "guard_blocked_ips": float(self._blocks.blocked_count(now)),
        }
