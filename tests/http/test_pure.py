"""The pure modules: response bytes, client-IP resolution, the metrics registry."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from panelsrv import metrics
from panelsrv.http import wire
from panelsrv.http.clientip import TrustedProxies, client_ip, normalize


def test_render_is_one_well_formed_response() -> None:
    wire.set_date(784111777.0)
    data = wire.render(200, b'{"a":1}', True, b"Retry-After: 1\r\n")
    assert data == (
        b"HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
        b"Content-Type: application/json; charset=utf-8\r\nRetry-After: 1\r\n"
        b'Content-Length: 7\r\n\r\n{"a":1}'
    )
    closing = wire.render(404, b"", False)
    assert closing.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert closing.endswith(b"Content-Length: 0\r\nConnection: close\r\n\r\n")


def test_prebuilt_rejects_follow_the_date() -> None:
    wire.set_date(784111777.0)
    first = wire.REJECT_CLOSE[503]
    assert b"Retry-After: 1\r\n" in first and b"Connection: close\r\n" in first
    assert first.endswith(b'{"error":"Service unavailable"}')
    wire.set_date(784111778.0)
    assert wire.REJECT_CLOSE[503] != first
    assert b"08:49:38 GMT" in wire.REJECT_CLOSE[503]
    assert set(wire.REJECT_CLOSE) == {400, 404, 413, 431, 500, 501, 503}
    assert b"Connection" not in wire.REJECT_KEEP[404]
    allow_get = wire.render_405(b"GET", True)
    assert b"Allow: GET\r\n" in allow_get and b"Connection" not in allow_get
    assert allow_get.endswith(b'{"error":"Method not allowed: use GET"}')
    allow_post = wire.render_405(b"POST", False)
    assert b"Allow: POST\r\n" in allow_post and b"Connection: close\r\n" in allow_post
    assert allow_post.endswith(b'{"error":"Method not allowed: use POST"}')


def test_429s_are_rendered_once_per_retry_after_and_date() -> None:
    wire.set_date(784111777.0)
    keep, close = wire.too_many(7, True), wire.too_many(7, False)
    assert keep.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
    assert b"Retry-After: 7\r\n" in keep and b"Connection" not in keep
    assert b"Retry-After: 7\r\n" in close and b"Connection: close\r\n" in close
    assert keep.endswith(b'{"error":"Too many requests"}')
    assert wire.too_many(7, True) is keep  # a flood of refusals renders nothing
    wire.set_date(784111778.0)
    assert b"08:49:38 GMT" in wire.too_many(7, True)  # never an old Date


@pytest.mark.parametrize(
    ("peer", "canonical"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("fe80::1%eth0", "fe80::1"),
        ("2001:DB8::0:1", "2001:db8::1"),
    ],
)
def test_peer_addresses_are_normalised(peer: str, canonical: str) -> None:
    assert normalize(peer) == canonical


def test_trusted_proxies_take_addresses_and_networks() -> None:
    trusted = TrustedProxies(["127.0.0.1", "::1", "10.0.0.0/8"])
    assert "127.0.0.1" in trusted and "::1" in trusted and "10.9.8.7" in trusted
    assert "11.0.0.1" not in trusted and "junk" not in trusted
    assert not TrustedProxies([])
    with pytest.raises(ValueError, match="trusted_proxies"):
        TrustedProxies(["not-an-ip"])


@pytest.mark.parametrize(
    ("xff", "real_ip", "expected"),
    [
        (b"1.1.1.1", None, "1.1.1.1"),
        (b"6.6.6.6, 1.1.1.1", None, "1.1.1.1"),  # the client forged the left entry
        (b"1.1.1.1, 10.0.0.2", None, "1.1.1.1"),  # an inner proxy of ours appended
        (b"1.1.1.1,10.0.0.2 , 10.0.0.3", None, "1.1.1.1"),
        (b"10.0.0.2, 10.0.0.3", None, "10.0.0.2"),  # all ours: the left-most
        (b"1.1.1.1, unknown", None, "127.0.0.1"),  # junk from a trusted hop: stop there
        (b"unknown, 10.0.0.2", None, "10.0.0.2"),
        (b"[2001:db8::7]", None, "2001:db8::7"),
        (b"::ffff:1.1.1.1", None, "1.1.1.1"),
        (b"001.1.1.1", None, "127.0.0.1"),  # not an address (leading zeros): stop there
        (b"256.1.1.1, 1.1.1.1", None, "1.1.1.1"),
        (None, b"2.2.2.2", "2.2.2.2"),
        (None, b"junk", "127.0.0.1"),
        (None, None, "127.0.0.1"),
    ],
)
def test_client_is_the_right_most_untrusted_forwarded_entry(
    xff: bytes | None, real_ip: bytes | None, expected: str
) -> None:
    trusted = TrustedProxies(["127.0.0.1", "10.0.0.0/8"])
    assert client_ip("127.0.0.1", xff, real_ip, trusted) == expected


def test_with_real_ip_only_a_forwarded_for_the_client_wrote_is_ignored() -> None:
    # A proxy that sets X-Real-IP and passes the client's own X-Forwarded-For through: the
    # forged entry would win the walk; with client_ip_header = "x-real-ip" it is never read.
    forged, real = b"6.6.6.6", b"1.1.1.1"
    walk = TrustedProxies(["127.0.0.1"])
    assert client_ip("127.0.0.1", forged, real, walk) == "6.6.6.6"
    real_only = TrustedProxies(["127.0.0.1"], real_ip_only=True)
    assert client_ip("127.0.0.1", forged, real, real_only) == "1.1.1.1"
    assert client_ip("127.0.0.1", forged, None, real_only) == "127.0.0.1"


@given(st.tuples(*[st.integers(0, 300)] * 4), st.sampled_from(["", "0", "00"]))
def test_the_ipv4_shortcut_agrees_with_ipaddress(octets: tuple[int, ...], pad: str) -> None:
    text = ".".join(str(o) for o in octets[:3]) + "." + pad + str(octets[3])
    try:
        expected = str(ipaddress.ip_address(text))
    except ValueError:
        expected = "127.0.0.1"  # not an address: the trusted peer stays the client
    trusted = TrustedProxies(["127.0.0.1"])
    assert client_ip("127.0.0.1", text.encode(), None, trusted) == expected
    assert client_ip("127.0.0.1", b" %s " % text.encode(), None, trusted) == expected


def test_registry_renders_prometheus_text() -> None:
    registry = metrics.Registry()
    requests = registry.counter("t_requests_total", "Requests", ("action", "status"))
    requests.inc(("add", 200))
    requests.inc(("add", 200))
    requests.inc(('we"ird\\', 500))
    latency = registry.histogram("t_seconds", "Latency", ("action",), buckets=(0.1, 1.0))
    latency.observe(("add",), 0.05)
    latency.observe(("add",), 0.5)
    latency.observe(("add",), 5.0)
    registry.gauge("t_pool", "Pool", fn=lambda: 3)
    with pytest.raises(ValueError, match="twice"):
        registry.gauge("t_pool", "again")
    assert registry.render().decode().splitlines() == [
        "# HELP t_requests_total Requests",
        "# TYPE t_requests_total counter",
        't_requests_total{action="add",status="200"} 2',
        't_requests_total{action="we\\"ird\\\\",status="500"} 1',
        "# HELP t_seconds Latency",
        "# TYPE t_seconds histogram",
        't_seconds_bucket{action="add",le="0.1"} 1',
        't_seconds_bucket{action="add",le="1"} 2',
        't_seconds_bucket{action="add",le="+Inf"} 3',
        't_seconds_sum{action="add"} 5.55',
        't_seconds_count{action="add"} 3',
        "# HELP t_pool Pool",
        "# TYPE t_pool gauge",
        "t_pool 3",
    ]


def test_snapshots_of_several_processes_add_up() -> None:
    def one(n: int) -> metrics.Snapshot:
        registry = metrics.Registry()
        server = metrics.ServerMetrics(registry)
        for _ in range(n):
            server.request_done("add", 200, 0.002)
        server.reject("precheck")
        server.connections.value = n
        return registry.snapshot()

    merged = metrics.merge([one(1), one(2)])
    text = metrics.render(merged).decode()
    assert 'panelsrv_http_requests_total{action="add",status="200"} 3' in text
    assert 'panelsrv_http_rejects_total{reason="precheck"} 2' in text
    assert "panelsrv_http_open_connections 3" in text
    assert 'panelsrv_http_request_duration_seconds_count{action="add"} 3' in text
    assert 'panelsrv_http_request_duration_seconds_bucket{action="add",le="0.001"} 0' in text
    assert 'panelsrv_http_request_duration_seconds_bucket{action="add",le="0.0025"} 3' in text
