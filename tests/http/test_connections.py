"""Per-connection bookkeeping, mostly through a fake transport: the per-address connection cap
and its count (decremented exactly once however a connection ends), and which request a
deferred 100 Continue belongs to."""

from __future__ import annotations

from panelsrv.guard.limits import client_key
from panelsrv.http.listener import HttpServer, api_routes
from panelsrv.http.request import Bounds
from tests.http.httpkit import Client, connect, start_server
from tests.http.sansio import HOLD, Gate
from tests.kit.waiting import until
from tests.kit.wire import post


def gated(**options: object) -> tuple[HttpServer, Gate]:
    gate = Gate()
    return HttpServer(api_routes(gate), **options), gate  # type: ignore[arg-type]


async def test_connections_per_address_are_capped_and_each_end_is_counted_once() -> None:
    server, gate = gated(bounds=Bounds(max_connections_per_ip=3))
    # the ways a connection ends: the peer leaves while idle; we close after a response that
    # says so (and linger); the peer leaves while a handler runs (counted until it returns)
    idle, idle_t = connect(server, "10.0.0.1")
    closing, closing_t = connect(server, "10.0.0.1")
    busy, busy_t = connect(server, "10.0.0.1")
    assert server.addresses == {"10.0.0.1": 3}
    refused, refused_t = connect(server, "10.0.0.1")  # over the cap: refused like the global cap
    assert refused_t.closed and refused_t.statuses() == [503]
    refused.connection_lost(None)  # the loop reports the refused one's end too
    _, other_t = connect(server, "10.0.0.2")  # another address is not affected
    assert server.addresses == {"10.0.0.1": 3, "10.0.0.2": 1}

    idle_t.lose()
    closing.data_received(post(b"a=1", b"Connection: close\r\n"))
    assert closing_t.statuses() == [200] and closing_t.eof_written
    closing_t.lose()
    busy.data_received(HOLD)
    busy_t.lose()
    assert server.addresses == {"10.0.0.1": 1, "10.0.0.2": 1}
    await gate.release()
    assert server.addresses == {"10.0.0.2": 1}
    idle.connection_lost(None)  # a second report of the same end changes nothing
    other_t.lose()
    assert server.addresses == {} and not server.conns


async def test_a_handler_that_fails_after_its_peer_left_releases_the_count_once() -> None:
    server, gate = gated(bounds=Bounds(max_connections_per_ip=1))
    proto, transport = connect(server, "10.0.0.1")
    proto.data_received(post(target=b"/api/v2?hold&raise"))
    transport.lose()
    await gate.release(fail=True)
    assert server.addresses == {}
    _, again_t = connect(server, "10.0.0.1")
    assert not again_t.closed and server.addresses == {"10.0.0.1": 1}
    again_t.lose()


async def test_ipv6_addresses_are_counted_by_their_64_as_the_server_wires_it() -> None:
    server, _ = gated(bounds=Bounds(max_connections_per_ip=1), address_key=client_key)
    _, first_t = connect(server, "2001:db8:1:2::1")
    _, second_t = connect(server, "2001:db8:1:2:ffff::2")  # same /64
    _, third_t = connect(server, "2001:db8:1:3::1")  # another /64
    assert second_t.statuses() == [503] and not third_t.closed
    first_t.lose()
    third_t.lose()
    assert server.addresses == {}


async def test_trusted_proxies_are_not_capped() -> None:
    server, _ = gated(bounds=Bounds(max_connections_per_ip=1), trusted_proxies=["127.0.0.1"])
    ends = [connect(server, "127.0.0.1")[1] for _ in range(3)]
    assert not any(t.closed for t in ends) and server.addresses == {}
    for t in ends:
        t.lose()
    assert not server.conns


async def test_the_cap_over_real_sockets_and_stop_releases_every_count() -> None:
    server = await start_server(bounds=Bounds(max_connections_per_ip=2))
    try:
        first, second = await Client.connect(server.port), await Client.connect(server.port)
        third = await Client.connect(server.port)
        response = await third.final()
        assert response is not None and response.status == 503
        assert response.headers["connection"] == "close" and await third.closed()
        for client in (first, second):
            await client.send(post())
            response = await client.final()
            assert response is not None and response.status == 200
        await first.close()
        await until(lambda: server.addresses == {"127.0.0.1": 1})  # the server saw the close
        fourth = await Client.connect(server.port)
        await fourth.send(post())
        response = await fourth.final()
        assert response is not None and response.status == 200
    finally:
        await server.stop(1.0)
    assert server.addresses == {} and not server.conns
    for client in (second, third, fourth):
        await client.close()


H_EXPECT = b"POST /api/v2 HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
HTTP10 = b"POST /api/v2 HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\n"


async def test_a_deferred_100_continue_belongs_to_the_request_that_asked() -> None:
    server, gate = gated()
    proto, transport = connect(server)
    # B asks for a 100 while A is in flight, then sends its body anyway: no 100 is owed
    proto.data_received(HOLD + H_EXPECT + b"abc")
    await gate.release()
    assert transport.statuses() == [200, 200]
    # D (HTTP/1.0: never a 100) waits in its body phase behind C: B's 100 must not reach it
    proto.data_received(HOLD + HTTP10)
    await gate.release()
    assert transport.statuses() == [200, 200, 200]
    proto.data_received(b"xyz")
    assert transport.statuses() == [200] * 4
    # F asks while E is in flight and waits for it: F gets its 100 once E is answered
    proto.data_received(HOLD + H_EXPECT)
    await gate.release()
    assert transport.statuses() == [200] * 5 + [100]
    proto.data_received(b"abc")
    assert transport.statuses() == [200] * 5 + [100, 200]
    transport.lose()
