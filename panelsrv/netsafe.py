"""Outbound URL safety for webhooks (no SSRF): the URL's shape, and where its host resolves.

Imports only the standard library. A webhook URL must be https (http only when allowed), carry
no credentials, and its host must resolve exclusively to public addresses (no private,
loopback, link-local, multicast, reserved or unspecified ones, nor an IPv6 form carrying such
an IPv4 address) unless private targets are allowed. The check runs when the webhook is added
AND again at every delivery, on the addresses actually connected to, so a DNS answer that
changes later (rebinding) gains nothing, and a literal host added while private targets were
allowed is refused once they are not.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

MAX_URL = 2048
_PRIVATE = "host resolves to a private, loopback or link-local address"

_net = ipaddress.ip_network
# IANA's special-purpose registries (what is not globally reachable), plus multicast and the
# deprecated 6to4 relay anycast.
_NOT_PUBLIC_V4 = tuple(
    _net(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
        "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    )
)  # fmt: skip
_GLOBAL_UNICAST = _net("2000::/3")
# Inside 2000::/3: IETF protocol assignments (Teredo, 2001::/32, is judged by what it
# carries), documentation.
_NOT_PUBLIC_V6 = (_net("2001::/23"), _net("2001:db8::/32"), _net("3fff::/20"))
_NAT64 = _net("64:ff9b::/96")


class UnsafeUrl(ValueError):
    pass


def check_url(url: str, allow_http: bool) -> tuple[str, int]:
    """(host, port) of an acceptable URL, or UnsafeUrl saying what is wrong."""
    if len(url) > MAX_URL or any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise UnsafeUrl("must be a URL without spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeUrl("is not a valid URL") from None
    if parts.scheme == "http" and not allow_http:
        raise UnsafeUrl("must use https")
    if parts.scheme not in ("https", "http"):
        raise UnsafeUrl("must be an https URL")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl("must not contain credentials")
    if not parts.hostname:
        raise UnsafeUrl("has no host")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def public_address(address: str) -> bool:
    """Whether `address` (text, as getaddrinfo or a URL gives it) is a public unicast target.

    IPv4: outside every range of `_NOT_PUBLIC_V4`. IPv6 carrying an IPv4 address (mapped,
    NAT64, 6to4, Teredo): public exactly when every address it carries is. Any other IPv6:
    global unicast (2000::/3) outside `_NOT_PUBLIC_V6`, which refuses whatever they carry the
    deprecated IPv4-compatible ::a.b.c.d and SIIT ::ffff:0:a.b.c.d forms (hosts that still
    implement them route them to the IPv4 address), the local-use NAT64 prefix 64:ff9b:1::/48,
    site-local fec0::/10, unique-local, link-local and multicast, and scoped (`%zone`) ones.
    The tables are this module's own, not `is_global`: on Python 3.11 that calls NAT64,
    IPv4-compatible, SIIT, 6to4, site-local, 5f00::/16 and 3fff::/20 addresses global.
    """
    if "%" in address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv4Address):
        return not any(ip in net for net in _NOT_PUBLIC_V4)
    carried = embedded_ipv4(ip)
    if carried:
        return all(public_address(str(inner)) for inner in carried)
    return ip in _GLOBAL_UNICAST and not any(ip in net for net in _NOT_PUBLIC_V6)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses a packet to `ip` reaches: IPv4-mapped, NAT64 (64:ff9b::/96, the
    last 32 bits), 6to4 (bits 16-47), Teredo (the server in bits 32-63, then the client, the
    last 32 bits inverted); none for any other address."""
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if ip in _NAT64:
        return [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        return list(ip.teredo)
    return []


def check_literal(host: str, allow_private: bool) -> None:
    """UnsafeUrl when `host` is an IP literal that is not public (unless private targets are
    allowed), or numeric without being an address. HTTP clients connect to a literal without
    resolving it (aiohttp takes any host of digits and dots, or with a colon, for one), so a
    resolver-side check never sees it: call this before every connection. A name passes here
    and is judged where it resolves."""
    if ":" not in host and not host.replace(".", "").isdigit():
        return
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:  # 127.1, 2130706433, 0177.0.0.1: what inet_aton would still map
        raise UnsafeUrl("has a numeric host that is not an IP address") from None
    if not allow_private and not public_address(host):
        raise UnsafeUrl(_PRIVATE)


async def resolve(host: str, port: int, allow_private: bool) -> list[str]:
    """Every address `host` resolves to; UnsafeUrl when any of them is not public (unless
    private targets are allowed) or when it does not resolve at all."""
    check_literal(host, allow_private)
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise UnsafeUrl("host does not resolve") from None
    except UnicodeError:  # a label IDNA cannot encode (over 63 characters, empty)
        raise UnsafeUrl("is not a valid URL") from None
    addresses = sorted({str(info[4][0]) for info in infos})
    if not addresses:
        raise UnsafeUrl("host does not resolve")
    if not allow_private and not all(public_address(a) for a in addresses):
        raise UnsafeUrl(_PRIVATE)
    return addresses
