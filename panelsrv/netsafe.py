"""Outbound URL safety for webhooks (no SSRF): the URL's shape, and where its host resolves.

Imports only the standard library. A webhook URL must be https (http only when allowed), carry
no credentials, and its host must resolve exclusively to public addresses (no private,
loopback, link-local, multicast, reserved or unspecified ones) unless private targets are
allowed. The check runs when the webhook is added AND again at every delivery, on the addresses
actually connected to, so a DNS answer that changes later (rebinding) gains nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

MAX_URL = 2048


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
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def resolve(host: str, port: int, allow_private: bool) -> list[str]:
    """Every address `host` resolves to; UnsafeUrl when any of them is not public (unless
    private targets are allowed) or when it does not resolve at all."""
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
        raise UnsafeUrl("host resolves to a private, loopback or link-local address")
    return addresses
