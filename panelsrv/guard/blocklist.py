"""Invalid-key strikes per IP turn into temporary IP blocks; an allow-list is never blocked.

Leaf module: imports nothing from panelsrv (stdlib `ipaddress` only), reads no clock; `now` is a
monotonic float in seconds chosen by the caller.

A strike is one failed authentication (bad key or bad signature). `limit` strikes within
`window` seconds of the first one (a fixed window opened by the first strike) block the address
for `block_seconds`. Blocks learned from other processes arrive through `block(ip, until)`.

Invariants:
- An allow-listed address (exact address or inside an allowed network) is never struck and never
  blocked, whatever the source of the block.
- Memory is bounded: at most `max_keys` strike records and `max_keys` blocks. Expired records go
  first; when a flood of distinct addresses still fills a table, strike records with the fewest
  strikes are dropped (the addresses closest to a block are kept), and among blocks the ones that
  expire soonest are dropped (they were about to lapse anyway). Both keep the most dangerous
  addresses, the safe direction; the cap (default 65,536, about 10 MB) is far above any sane count
  of blocked addresses.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AllowList:
    """Addresses and networks never blocked. An unparsable client address is not allowed."""

    __slots__ = ("_exact", "_networks")

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self._exact: set[str] = set()
        self._networks: list[_Network] = []
        for entry in entries:
            net = ipaddress.ip_network(entry.strip(), strict=False)
            if net.num_addresses == 1:
                self._exact.add(str(net.network_address))
            else:
                self._networks.append(net)

    def __contains__(self, ip: str) -> bool:
        if ip in self._exact:
            return True
        if not self._networks and not self._exact:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if str(addr) in self._exact:
            return True
        return any(addr in net for net in self._networks)


class Blocklist:
    """Strike counting and IP blocks for one process."""

    __slots__ = ("_allow", "_blocks", "_strikes", "block_seconds", "limit", "max_keys", "window")

    def __init__(
        self,
        limit: int = 10,
        window: float = 60.0,
        block_seconds: float = 300.0,
        allow: Iterable[str] = (),
        max_keys: int = 65_536,
    ) -> None:
        if limit < 1 or window <= 0 or block_seconds <= 0 or max_keys < 4:
            raise ValueError("limit >= 1, window > 0, block_seconds > 0, max_keys >= 4")
        self.limit = limit
        self.window = window
        self.block_seconds = block_seconds
        self._allow = AllowList(allow)
        self.max_keys = max_keys
        self._strikes: dict[str, list[float]] = {}  # ip -> [count, window end]
        self._blocks: dict[str, float] = {}  # ip -> blocked until

    def allowed(self, ip: str) -> bool:
        return ip in self._allow

    def blocked_until(self, ip: str, now: float) -> float:
        """The time the block on `ip` ends, or 0.0 when it is not blocked."""
        until = self._blocks.get(ip)
        if until is None:
            return 0.0
        if until > now:
            return until
        del self._blocks[ip]
        return 0.0

    def strike(self, ip: str, now: float) -> bool:
        """Count a failed authentication from `ip`; True when this strike blocked it."""
        if ip in self._allow:
            return False
        record = self._strikes.get(ip)
        if record is None or record[1] <= now:
            if record is None and len(self._strikes) >= self.max_keys:
                self._make_room_strikes(now)
            record = self._strikes[ip] = [0.0, now + self.window]
        record[0] += 1
        if record[0] < self.limit:
            return False
        del self._strikes[ip]
        return self.block(ip, now + self.block_seconds, now)

    def block(self, ip: str, until: float, now: float) -> bool:
        """Block `ip` until `until` (a later block wins); False for an allow-listed address."""
        if until <= now or ip in self._allow:
            return False
        current = self._blocks.get(ip)
        if current is None and len(self._blocks) >= self.max_keys:
            self._make_room_blocks(now)
        if current is None or until > current:
            self._blocks[ip] = until
        return True

    def blocked_count(self, now: float) -> int:
        return sum(1 for until in self._blocks.values() if until > now)

    def sweep(self, now: float) -> None:
        """Drop expired strike windows and blocks (rebuilt so the dicts shrink)."""
        self._strikes = {ip: r for ip, r in self._strikes.items() if r[1] > now}
        self._blocks = {ip: u for ip, u in self._blocks.items() if u > now}

    def _make_room_strikes(self, now: float) -> None:
        # Expired windows first, then addresses with a single strike (most of a flood spread
        # over many addresses), and only then a sort that keeps the most struck half.
        self._strikes = {ip: r for ip, r in self._strikes.items() if r[1] > now}
        if len(self._strikes) > self.max_keys * 3 // 4:
            self._strikes = {ip: r for ip, r in self._strikes.items() if r[0] > 1}
        if len(self._strikes) > self.max_keys * 3 // 4:
            ranked = sorted(self._strikes.items(), key=lambda item: item[1][0])
            self._strikes = dict(ranked[-(self.max_keys // 2) :])

    def _make_room_blocks(self, now: float) -> None:
        self._blocks = {ip: u for ip, u in self._blocks.items() if u > now}
        if len(self._blocks) > self.max_keys * 3 // 4:
            ranked = sorted(self._blocks.items(), key=lambda item: item[1])
            self._blocks = dict(ranked[-(self.max_keys // 2) :])
