"""Which address a request comes from: the socket peer, or what a trusted proxy says.

Pure: standard library only. Invariant: forwarding headers are believed only when the TCP peer
is in `trusted_proxies`; then the client is the right-most `X-Forwarded-For` entry that is not
itself a trusted proxy (each trusted hop vouches for the entry to its left, nothing vouches for
what the client wrote further left), else `X-Real-IP`, else the peer. A proxy that sets only
`X-Real-IP` passes the client's own `X-Forwarded-For` through untouched, which would then be
believed: `client_ip_header = "x-real-ip"` (TrustedProxies.real_ip_only) ignores
`X-Forwarded-For` altogether and takes `X-Real-IP` alone. Addresses are normalised
(IPv4-mapped IPv6 -> IPv4, zone ids dropped) so one client has one spelling for rate limits.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# An IPv4 address exactly as `str(IPv4Address)` writes it (no leading zeros, each octet <= 255):
# the usual X-Forwarded-For entry, taken as it is without the ~3 us of `ipaddress`.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


def parse(text: str) -> Address | None:
    """An address from text, normalised; None when it is not an IP address."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.partition("%")[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def normalize(peer: str) -> str:
    """The canonical text of a socket peer address (uvloop gives '::ffff:1.2.3.4' on dual stack)."""
    if ":" not in peer and "%" not in peer:
        return peer  # plain IPv4 from the socket is already canonical
    addr = parse(peer)
    return peer if addr is None else str(addr)


class TrustedProxies:
    """A set of IPs and CIDR networks; `in` takes canonical address text. `real_ip_only`:
    these proxies set X-Real-IP and do not maintain X-Forwarded-For, so only the former counts."""

    __slots__ = ("_exact", "_networks", "real_ip_only")

    def __init__(self, entries: Iterable[str], real_ip_only: bool = False) -> None:
        self.real_ip_only = real_ip_only
        exact: set[str] = set()
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in entries:
            if "/" in entry:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            else:
                addr = parse(entry)
                if addr is None:
                    raise ValueError(f"trusted_proxies: not an IP address or network: {entry!r}")
                exact.add(str(addr))
        self._exact = frozenset(exact)
        self._networks = tuple(networks)

    def __bool__(self) -> bool:
        return bool(self._exact or self._networks)

    def __contains__(self, ip: object) -> bool:
        if not isinstance(ip, str):
            return False
        if ip in self._exact:
            return True
        if not self._networks:
            return False
        addr = parse(ip)
        return addr is not None and any(addr in net for net in self._networks)


# Behind a proxy every connection carries many clients, so the per-connection memo in the
# reader misses; parsing X-Forwarded-For costs ~3 us a request (bench/README.md, ipcache).
# Header values longer than this are parsed every time: an attacker's unique long values
# must not fill memory (the cache holds at most CACHE_SIZE short entries).
CACHE_SIZE = 16_384
CACHEABLE_HEADER = 256


@functools.lru_cache(maxsize=CACHE_SIZE)
def _cached_client_ip(
    peer: str, forwarded_for: bytes | None, real_ip: bytes | None, trusted: TrustedProxies
) -> str:
    return _client_ip(peer, forwarded_for, real_ip, trusted)


def client_ip(
    peer: str, forwarded_for: bytes | None, real_ip: bytes | None, trusted: TrustedProxies
) -> str:
    if len(forwarded_for or b"") + len(real_ip or b"") <= CACHEABLE_HEADER:
        return _cached_client_ip(peer, forwarded_for, real_ip, trusted)
    return _client_ip(peer, forwarded_for, real_ip, trusted)


def _client_ip(
    peer: str, forwarded_for: bytes | None, real_ip: bytes | None, trusted: TrustedProxies
) -> str:
    """The client of a request whose TCP peer `peer` (canonical) is a trusted proxy.

    An entry that is not an address stops the walk: the hop to its right (already trusted) is
    the best we know, so limits fall on that proxy rather than on a forgeable string.
    """
    last = peer
    if forwarded_for and not trusted.real_ip_only:
        for raw in reversed(forwarded_for.decode("latin-1").split(",")):
            raw = raw.strip()
            if _CANONICAL_IPV4.fullmatch(raw):
                last = raw
            else:
                addr = parse(raw)
                if addr is None:
                    return last
                last = str(addr)
            if last not in trusted:
                return last
        return last
    if real_ip:
        addr = parse(real_ip.decode("latin-1"))
        if addr is not None:
            return str(addr)
    return peer
