"""Which addresses a webhook may reach: every IPv6 form that carries an IPv4 address is judged by
what it carries, deprecated forms are refused, and nothing rests on `is_global` (which on
Python 3.11 calls NAT64, IPv4-compatible, SIIT, 6to4 and site-local addresses global)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from panelsrv import netsafe

PUBLIC = (
    "8.8.8.8",
    "1.1.1.1",
    "2606:4700:4700::1111",
    "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8",  # IPv4-mapped: the IPv4 address itself on a dual-stack socket
    "64:ff9b::808:808",  # NAT64 of 8.8.8.8 (what DNS64 answers for an IPv4-only host)
    "2002:808:808::1",  # 6to4 behind 8.8.8.8
    "2001:0:808:808:0:0:f7f7:f7f7",  # Teredo: server 8.8.8.8, client ~f7f7f7f7 = 8.8.8.8
)

# (address, what it hides) - each one was accepted before.
NOT_PUBLIC = (
    ("64:ff9b::a00:1", "NAT64 of 10.0.0.1"),
    ("64:ff9b::7f00:1", "NAT64 of 127.0.0.1"),
    ("64:ff9b::a9fe:a9fe", "NAT64 of 169.254.169.254 (cloud metadata)"),
    ("64:ff9b:1::808:808", "local-use NAT64 prefix (RFC 8215), not globally reachable"),
    ("64:ff9b:1:a00::1", "local-use NAT64 prefix carrying 10.0.0.1 in a /48 layout"),
    ("2002:a00:1::", "6to4 behind 10.0.0.1"),
    ("2002:7f00:1::1", "6to4 behind 127.0.0.1"),
    ("2002:a9fe:a9fe::", "6to4 behind 169.254.169.254"),
    ("2001:0:a00:1::f7f7:f7f7", "Teredo server 10.0.0.1"),
    ("2001:0:808:808::80ff:fffe", "Teredo client ~80fffffe = 127.0.0.1"),
    ("2001:0:808:808::f5ff:fffe", "Teredo client ~f5fffffe = 10.0.0.1"),
    ("::10.0.0.1", "IPv4-compatible 10.0.0.1"),
    ("::127.0.0.1", "IPv4-compatible 127.0.0.1"),
    ("::8.8.8.8", "IPv4-compatible (deprecated, RFC 4291): refused whatever it carries"),
    ("::ffff:0:127.0.0.1", "SIIT IPv4-translated 127.0.0.1"),
    ("::ffff:0:8.8.8.8", "SIIT IPv4-translated (obsolete, RFC 6145): refused whatever it carries"),
    ("::ffff:10.0.0.1", "IPv4-mapped 10.0.0.1"),
    ("::ffff:127.0.0.1", "IPv4-mapped 127.0.0.1"),
    ("fec0::1", "site-local (deprecated, RFC 3879)"),
    ("fed0::1", "site-local"),
    ("feff:ffff::1", "site-local, the top of fec0::/10"),
    ("5f00::1", "SRv6 SIDs (RFC 9602)"),
    ("3fff::1", "documentation (RFC 9637)"),
    ("2001:db8::1", "documentation"),
    ("100::1", "discard-only"),
    ("fc00::1", "unique local"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local with a zone"),
    ("2606:4700::1%eth0", "a zone: a scoped address is not a public one"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "global-scope multicast"),
    ("10.0.0.1", "private"),
    ("100.64.0.1", "shared address space (CGNAT)"),
    ("127.0.0.1", "loopback"),
    ("169.254.169.254", "link-local"),
    ("192.0.0.9", "IETF protocol assignments"),
    ("192.88.99.1", "6to4 relay anycast (deprecated)"),
    ("198.18.0.1", "benchmarking"),
    ("224.0.0.1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("0.0.0.0", "this network"),
)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_and_forms_carrying_public_ipv4_are_public(address: str) -> None:
    assert netsafe.public_address(address)


@pytest.mark.parametrize(("address", "why"), NOT_PUBLIC)
def test_every_form_hiding_a_non_public_target_is_refused(address: str, why: str) -> None:
    assert not netsafe.public_address(address), why


def carried(address: str) -> list[str]:
    return [str(inner) for inner in netsafe.embedded_ipv4(ipaddress.IPv6Address(address))]


def test_the_embedded_ipv4_of_each_form() -> None:
    assert carried("64:ff9b::a00:1") == ["10.0.0.1"]
    assert carried("2002:c000:201:1::") == ["192.0.2.1"]
    # Teredo: the server in bits 32-63, the client (inverted) in the last 32 bits.
    assert carried("2001:0:4136:e378:8000:63bf:3fff:fdd2") == ["65.54.227.120", "192.0.2.45"]
    assert carried("::ffff:7f00:1") == ["127.0.0.1"]
    # SIIT and IPv4-compatible: refused as ranges, whatever they carry (NOT_PUBLIC).
    for plain in ("2606:4700::1111", "::ffff:0:7f00:1", "::7f00:1"):
        assert carried(plain) == []


ADDRESSES = st.one_of(
    st.ip_addresses(),
    *(
        st.ip_addresses(network=n)
        for n in ("64:ff9b::/96", "2002::/16", "2001::/32", "::/96", "::ffff:0:0/96")
    ),
)


@given(ADDRESSES)
def test_never_more_permissive_than_what_it_carries_or_is_global(ip) -> None:  # type: ignore[no-untyped-def]
    """Public only if every IPv4 address it carries is, and (carrying none) `is_global`."""
    if netsafe.public_address(str(ip)):
        assert not ip.is_multicast and not ip.is_loopback and not ip.is_link_local
        assert not ip.is_private or isinstance(ip, ipaddress.IPv6Address)
        if isinstance(ip, ipaddress.IPv6Address):
            for inner in netsafe.embedded_ipv4(ip):
                assert netsafe.public_address(str(inner))
            if not netsafe.embedded_ipv4(ip):
                assert ip.is_global


@pytest.mark.parametrize(
    ("host", "public"),
    [
        ("example.com", None),  # a name: judged where it resolves, not here
        ("8.8.8.8", True),
        ("127.0.0.1", False),
        ("::127.0.0.1", False),
        ("64:ff9b::a00:1", False),
        ("2606:4700::1111", True),
    ],
)
def test_literal_hosts_are_judged_without_resolving(host: str, public: bool | None) -> None:
    if public is None:
        netsafe.check_literal(host, allow_private=False)  # nothing to say about a name
    elif public:
        netsafe.check_literal(host, allow_private=False)
    else:
        with pytest.raises(netsafe.UnsafeUrl):
            netsafe.check_literal(host, allow_private=False)
        netsafe.check_literal(host, allow_private=True)


@pytest.mark.parametrize("host", ["127.1", "2130706433", "017700000001", "127.0.0.1.", "::1:"])
def test_numeric_hosts_that_are_not_addresses_are_refused(host: str) -> None:
    """Forms the C library maps onto 127.0.0.1 that `ipaddress` does not parse: an HTTP client
    taking a numeric host for a literal (aiohttp does) may connect to it without resolving."""
    with pytest.raises(netsafe.UnsafeUrl):
        netsafe.check_literal(host, allow_private=False)
