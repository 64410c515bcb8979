"""Limits shared by several processes: decide locally, reconcile in the background.

Pure: imports only msgspec and the guard leaves, reads no clock, does no I/O. The sync loop
(`guard/sync.py`) calls `collect()`, sends the `SyncRequest` to a backend (Redis for several
hosts, `guard/hub.py` for one host's workers) and hands the `SyncReply` to `apply(reply, now)`.
The per-request path (`Limiter.take`, `Coordinator.strike`) never waits for the backend.

Every rate-limit tier in use is one more per-user limit with its own rate and burst, named by
the tier and its limits (panelconf.Tier.key), so the backend keeps its buckets apart and a tier
whose limits change starts afresh under a new name.

One limit (per-IP or per-user; rate r, burst b, T = 1/r) shared by P live processes, synced
every D seconds:
- Share mode (every key at first). Each process admits a key within its share bucket
  (r/P per second, burst max(1, b // P)). Summed over processes that is at most r*W + b in any
  window W, so a key that stays within its share everywhere needs no coordination, and a flood of
  distinct addresses costs the backend nothing.
- Lease mode. A key that exceeds its share escalates: from then on the process spends tokens
  leased from the global bucket (a GCRA in the backend, on the backend's clock). At each sync the
  process returns every unspent token and asks for `want` (twice its demand in the last interval,
  at least ceil(r*D), at most b); the backend first charges the admissions made without a lease,
  then grants what the bucket holds. A granted token is reserved in the backend before it is
  spent, so leased admissions never overrun the global bucket.
  Before the first grant arrives (at most D + a round trip), an escalated key may use `grace`
  = min(b, ceil(r*D)) tokens plus its share bucket, charged at the next sync; escalating also
  charges the share debt (tokens used and not yet refilled), so the global bucket sees the
  share-mode usage.
- Hot notices. The backend announces each escalated key (again every `hot_ttl`); a process that
  has share-mode usage for it charges that debt and moves it to lease mode too, so processes
  pacing a key just under their share cannot add up behind the global bucket's back.
- A lease is dropped once the key had no demand for a whole interval and its global bucket is
  full again; the key returns to share mode.

Tolerance (stated for the tests and the operator; `excess_bound` computes it): in any window
of length W a key is admitted at most r*W + b + E times across all processes, where, with
g = min(b, ceil(r*D)),
    E <= g + 2*P*g + max(b, P)
- g: a leased token may be spent up to one interval after it was reserved;
- P*g: each process's grace before its first grant;
- P*g: tokens returned at a sync stay usable (charged) until the reply, at most g per process;
- max(b, P): share bursts of processes that had not yet charged them when a lease was granted.
Everything admitted is charged, so the excess is paid back by refusals: averaged over a window
much longer than (b + E)/r the rate is r. In a sustained flood (every process in lease mode)
only the first term remains. Measured with the deterministic simulator (tests/guard), defaults
r = b = 100, D = 0.1 s: any one-second window of a flood admits at most 200 with P = 2 or 4
(bound 350 and 390) and at most about 290 with P = 16 (bound 630), where the P*g grace of a cold
start dominates.

The other way (refusing early): a key that escalates on a process has, until that process's
first grant arrives (at most D plus a round trip), only its share burst b/P and the grace g
there. An instant burst of the whole allowance that lands on one process (one keep-alive
connection) is therefore cut to about b/P + g, and the rest is refused with Retry-After: 1
although tokens come back within D. Waiting for the backend instead would put it on the
request path.

When the backend is unreachable (`fail`) every process enforces the whole limit by itself (share
= the full bucket, leased keys start from an empty bucket): requests keep being answered and the
host-wide limit is at most P times the limit until the backend returns. IP blocks already known
stay in force; strikes keep counting locally.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable

import msgspec

from panelsrv.guard.blocklist import Blocklist
from panelsrv.guard.buckets import Buckets


def excess_bound(procs: int, rate: float, burst: int, sync_interval: float) -> int:
    """E in the tolerance above: admissions beyond rate*W + burst in any window W."""
    g = min(burst, math.ceil(rate * sync_interval))
    return g + 2 * procs * g + max(burst, procs)


class LimitBatch(msgspec.Struct, array_like=True):
    """One limit's lease accounting for a sync: parallel lists, one slot per key."""

    name: str
    interval: float  # T = 1/rate, seconds
    tau: float  # burst * T, seconds
    keys: list[str]
    charge: list[int]  # admissions made without a lease since the last sync
    refund: list[int]  # leased tokens given back unspent
    want: list[int]  # tokens asked for the next interval


class SyncRequest(msgspec.Struct, array_like=True):
    pid: str
    limits: list[LimitBatch]
    strike_ips: list[str]
    strike_counts: list[int]
    strike_limit: int
    strike_window: float
    block_seconds: float
    block_cursor: str  # "" = from the oldest retained block
    hot_cursor: str  # "" = from hot_ttl ago
    live_ttl: float  # a process silent for this long is no longer counted in P
    hot_ttl: float


class LimitReply(msgspec.Struct, array_like=True):
    grants: list[int]
    debts: list[float]  # seconds until the key's global bucket is full again


class SyncReply(msgspec.Struct, array_like=True):
    now: float  # the backend's clock, seconds
    procs: int
    limits: list[LimitReply]
    blocks: list[tuple[str, float]]  # (ip, until on the backend's clock)
    hot: list[tuple[str, str]]  # (limit name, key)
    block_cursor: str
    hot_cursor: str


class Lease:
    """A key in lease mode on this process."""

    __slots__ = ("asked", "bridge", "charge", "demand", "grace", "tokens", "until")

    def __init__(self, charge: int, grace: int) -> None:
        self.tokens = 0  # granted and not spent
        self.bridge = 0  # returned at the last collect, usable (charged) until the reply
        self.charge = charge  # to charge at the next sync
        self.grace = grace  # unleased admissions allowed before the first grant
        self.demand = 0  # attempts since the last collect
        self.asked = False  # the last sync asked for tokens
        self.until = 0.0  # local time the global bucket has a token again


class Limiter:
    """One limit (per-IP or per-user) on one process: share buckets plus leases."""

    __slots__ = (
        "_inflight",
        "buckets",
        "burst",
        "grace",
        "leases",
        "max_leases",
        "name",
        "parse",
        "procs",
        "rate",
    )

    def __init__(
        self,
        name: str,
        rate: float,
        burst: int,
        sync_interval: float,
        parse: Callable[[str], Hashable] = str,
        max_keys: int = 65_536,
    ) -> None:
        self.name = name
        self.rate = rate
        self.burst = burst
        self.parse = parse
        self.grace = min(burst, math.ceil(rate * sync_interval))
        self.buckets = Buckets(rate, burst, max_keys)
        self.leases: dict[Hashable, Lease] = {}
        # A full lease table keeps new hot keys on their share: r/P, the safe side.
        self.max_leases = max(4, max_keys // 8)
        self.procs = 1  # processes sharing the limit; 1 = decide alone
        self._inflight: list[tuple[Hashable, Lease, bool]] = []

    def take(self, key: Hashable, now: float) -> float:
        """0.0 when admitted, else the seconds until a retry may pass."""
        if self.leases:
            lease = self.leases.get(key)
            if lease is not None:
                return self._take_leased(lease, key, now)
        wait = self.buckets.take(key, now)
        if wait == 0.0 or self.procs == 1 or len(self.leases) >= self.max_leases:
            return wait
        lease = self.leases[key] = Lease(self.buckets.debt(key, now), self.grace)
        return self._take_leased(lease, key, now)

    def _take_leased(self, lease: Lease, key: Hashable, now: float) -> float:
        lease.demand += 1
        if lease.tokens:
            lease.tokens -= 1
            return 0.0
        if lease.bridge:
            lease.bridge -= 1
            lease.charge += 1
            return 0.0
        if not lease.asked and lease.until <= now:
            # No lease asked for (new or idle key) and the global bucket had a token when
            # last seen: the share bucket and the grace admit, charged at the next sync.
            if self.buckets.take(key, now) == 0.0:
                lease.charge += 1
                return 0.0
            if lease.grace:
                lease.grace -= 1
                lease.charge += 1
                return 0.0
        return max(lease.until - now, 1.0 / self.rate)

    def learn(self, key: Hashable, now: float) -> None:
        """Another process escalated `key`: charge our share-mode usage and lease it too."""
        if self.procs == 1 or key in self.leases or len(self.leases) >= self.max_leases:
            return
        debt = self.buckets.debt(key, now)
        if debt:
            self.leases[key] = Lease(debt, 0)

    def collect(self) -> LimitBatch:
        batch = LimitBatch(self.name, 1.0 / self.rate, self.burst / self.rate, [], [], [], [])
        inflight = self._inflight = []
        for key, lease in self.leases.items():
            want = 0
            if lease.demand:
                want = min(self.burst, max(self.grace, 2 * lease.demand))
            batch.keys.append(str(key))
            batch.charge.append(lease.charge)
            batch.refund.append(lease.tokens)
            batch.want.append(want)
            inflight.append((key, lease, want == 0))
            lease.bridge = min(lease.tokens, self.grace)
            lease.tokens = lease.charge = lease.demand = 0
            lease.asked = want > 0
        return batch

    def apply(self, reply: LimitReply, now: float) -> None:
        inflight, self._inflight = self._inflight, []
        answers = zip(inflight, reply.grants, reply.debts, strict=True)
        for (key, lease, idle), grant, debt in answers:
            if self.leases.get(key) is not lease:
                continue
            lease.bridge = lease.grace = 0
            lease.tokens += grant
            # Seconds until the global bucket has one token: debt - (tau - T).
            lease.until = now + debt - (self.burst - 1) / self.rate
            if idle and debt <= 0 and not lease.demand and not lease.charge:
                del self.leases[key]

    def share(self, procs: int, now: float) -> None:
        """Set how many processes share the limit (1 = decide alone, e.g. backend down)."""
        if procs == self.procs:
            return
        self.procs = procs
        self.buckets.reconfigure(self.rate / procs, max(1, self.burst // procs), now)
        if procs == 1:
            # Keys that were hot go on with an empty bucket: the limit's rate, no fresh burst.
            for key in self.leases:
                self.buckets.drain(key, now)
            self.leases.clear()


class Coordinator:
    """Everything the guard shares: the per-IP and per-user limiters (one per rate-limit tier
    besides the default), strikes and blocks."""

    __slots__ = (
        "_block_cursor",
        "_collected",
        "_hot_cursor",
        "_strikes",
        "blocks",
        "hot_ttl",
        "ip",
        "limiters",
        "live_ttl",
        "pid",
        "procs",
        "sharing",
        "user",
    )

    def __init__(
        self, pid: str, ip: Limiter, user: Limiter, blocks: Blocklist, sync_interval: float
    ) -> None:
        self.pid = pid
        self.ip = ip
        self.user = user
        # By name: "ip", "user" and one per rate-limit tier in use (`adopt`), added as they are
        # met and dropped by `sweep` once idle. Changed in place: the guard holds this dict.
        self.limiters = {ip.name: ip, user.name: user}
        self._collected: list[Limiter] = []  # the limiters of the request in flight, in order
        self.procs = 1  # processes sharing the limits, as the last reply said (1: alone)
        self.blocks = blocks
        self.live_ttl = max(1.0, 5 * sync_interval)
        self.hot_ttl = max(1.0, 10 * sync_interval)
        self._strikes: dict[str, int] = {}  # strikes not yet reported to the backend
        self.sharing = True  # False: no backend will ever collect, so queue nothing for it
        self._block_cursor = ""
        self._hot_cursor = ""

    def strike(self, ip: str, now: float) -> None:
        if self.blocks.allowed(ip):
            return
        self.blocks.strike(ip, now)
        if not self.sharing:
            return
        # Bounded: beyond the cap strikes still block locally, only their sharing is lost.
        if ip in self._strikes or len(self._strikes) < self.blocks.max_keys:
            self._strikes[ip] = self._strikes.get(ip, 0) + 1

    def adopt(self, limiter: Limiter, now: float) -> None:
        """A limiter added while running (a tier met for the first time): shared like the
        others from now on, synced from the next `collect`."""
        limiter.share(self.procs, now)
        self.limiters[limiter.name] = limiter

    def collect(self) -> SyncRequest:
        strikes, self._strikes = self._strikes, {}
        self._collected = list(self.limiters.values())
        return SyncRequest(
            pid=self.pid,
            limits=[limiter.collect() for limiter in self._collected],
            strike_ips=list(strikes),
            strike_counts=list(strikes.values()),
            strike_limit=self.blocks.limit,
            strike_window=self.blocks.window,
            block_seconds=self.blocks.block_seconds,
            block_cursor=self._block_cursor,
            hot_cursor=self._hot_cursor,
            live_ttl=self.live_ttl,
            hot_ttl=self.hot_ttl,
        )

    def apply(self, reply: SyncReply, now: float) -> None:
        """Take in a backend reply; `now` is the local clock when it arrived."""
        offset = now - reply.now
        collected, self._collected = self._collected, []
        for limiter, limit_reply in zip(collected, reply.limits, strict=True):
            limiter.apply(limit_reply, now)
        self.procs = max(1, reply.procs)
        for limiter in self.limiters.values():  # adopted since `collect` too
            limiter.share(self.procs, now)
        for ip, until in reply.blocks:
            self.blocks.block(ip, until + offset, now)
        for name, key in reply.hot:
            learner = self.limiters.get(name)
            if learner is not None:
                try:
                    learner.learn(learner.parse(key), now)
                except ValueError:
                    continue
        self._block_cursor = reply.block_cursor
        self._hot_cursor = reply.hot_cursor

    def fail(self, now: float) -> None:
        """The backend is unreachable: every limit is enforced by this process alone."""
        self.procs = 1
        for limiter in self.limiters.values():
            limiter.share(1, now)

    def sweep(self, now: float) -> None:
        """Drop full buckets, and the tier limiters left with none and no lease (a tier no
        longer in use, or one whose limits changed): `adopt` makes one again when needed."""
        idle = []
        for name, limiter in self.limiters.items():
            limiter.buckets.sweep(now)
            fixed = limiter is self.ip or limiter is self.user
            if not fixed and not limiter.leases and not len(limiter.buckets):
                idle.append(name)
        for name in idle:
            del self.limiters[name]
        self.blocks.sweep(now)
