"""Limits over real sockets: sizes, absolute timeouts, early refusals that skip the body, the
connection cap, pipelining depth, and a client that never reads."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from panelsrv.http.protocol import BLOCKED_STATES
from panelsrv.http.request import Limits
from tests.http.httpkit import Calls, Client, post, start_server

H = b"POST /api/v2 HTTP/1.1\r\nHost: a\r\n"


async def _refused(client: Client, status: int) -> None:
    response = await client.final()
    assert response is not None and response.status == status, response
    assert response.headers["connection"] == "close"
    assert await client.closed()


async def test_declared_body_over_the_limit_is_413_before_it_is_read() -> None:
    calls = Calls()
    server = await start_server(calls, limits=Limits(max_body_bytes=1024))
    try:
        client = await Client.connect(server.port)
        await client.send(H + b"Content-Length: 1025\r\n\r\n")  # no body sent at all
        await _refused(client, 413)
        await client.close()

        client = await Client.connect(server.port)
        await client.send(post(b"x" * 1024))  # exactly the limit is fine
        response = await client.final()
        assert response is not None and response.status == 200
        await client.close()
        assert calls.count == 1
    finally:
        await server.stop(1.0)


async def test_chunked_body_over_the_limit_is_413_on_the_running_length() -> None:
    server = await start_server(limits=Limits(max_body_bytes=1024))
    try:
        client = await Client.connect(server.port)
        chunk = b"200\r\n" + b"x" * 512 + b"\r\n"
        await client.send(H + b"Transfer-Encoding: chunked\r\n\r\n" + chunk * 2)
        await asyncio.sleep(0.05)
        await client.send(chunk)  # 1536 bytes: over
        await _refused(client, 413)
        await client.close()
    finally:
        await server.stop(1.0)


async def test_headers_over_the_limit_are_431() -> None:
    server = await start_server(limits=Limits(max_header_bytes=2048, max_headers=20))
    try:
        cases = [
            H + b"X-Big: " + b"a" * 3000 + b"\r\nContent-Length: 0\r\n\r\n",
            b"POST /api/v2?" + b"q" * 3000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
            H + b"".join(b"X-%d: 1\r\n" % i for i in range(25)) + b"\r\n",
        ]
        for request in cases:
            client = await Client.connect(server.port)
            await client.send(request)
            await _refused(client, 431)
            await client.close()
    finally:
        await server.stop(1.0)


async def test_an_endless_header_trickled_in_is_cut_at_the_limit() -> None:
    server = await start_server(limits=Limits(max_header_bytes=2048))
    try:
        client = await Client.connect(server.port)
        await client.send(H + b"X-Endless: ")
        for _ in range(10):  # each read lands inside the same unfinished header
            await asyncio.sleep(0.01)
            await client.send(b"a" * 500)
            if client.responses.eof or client.writer.is_closing():
                break
        await _refused(client, 431)
        await client.close()
    finally:
        await server.stop(1.0)


async def test_slow_headers_are_cut_by_an_absolute_deadline() -> None:
    server = await start_server(limits=Limits(header_timeout=0.3))
    try:
        client = await Client.connect(server.port)
        started = time.monotonic()
        await client.send(b"POST /api/v2 HTTP/1.1\r\n")
        # a byte every 50 ms would reset an inactivity timer forever; the deadline holds
        for _ in range(20):
            await asyncio.sleep(0.05)
            if client.writer.is_closing():
                break
            try:
                await client.send(b"X")
            except ConnectionError:
                break
        assert await client.closed(timeout=2.0)
        assert 0.25 < time.monotonic() - started < 1.0
        await client.close()
    finally:
        await server.stop(1.0)


async def test_slow_body_is_cut_by_an_absolute_deadline() -> None:
    server = await start_server(limits=Limits(body_timeout=0.3))
    try:
        client = await Client.connect(server.port)
        await client.send(H + b"Content-Length: 100\r\n\r\n")
        started = time.monotonic()
        for _ in range(20):
            await asyncio.sleep(0.05)
            try:
                await client.send(b"x")
            # uvloop: ConnectionError, or RuntimeError once the transport saw the close itself.
            except (ConnectionError, RuntimeError):
                break
        assert await client.closed(timeout=2.0)
        assert 0.25 < time.monotonic() - started < 1.0
        await client.close()
    finally:
        await server.stop(1.0)


async def test_idle_keep_alive_connection_is_closed() -> None:
    server = await start_server(limits=Limits(keepalive_timeout=0.2, header_timeout=5.0))
    try:
        client = await Client.connect(server.port)
        await client.send(post())
        assert (await client.final()) is not None
        started = time.monotonic()
        assert await client.closed(timeout=2.0)
        assert 0.15 < time.monotonic() - started < 1.0
        await client.close()
    finally:
        await server.stop(1.0)


async def test_a_connection_that_never_sends_is_closed() -> None:
    server = await start_server(limits=Limits(header_timeout=0.2))
    try:
        client = await Client.connect(server.port)
        assert await client.closed(timeout=2.0)
        await client.close()
    finally:
        await server.stop(1.0)


async def test_precheck_refusal_of_a_large_body_is_answered_without_it_and_closes() -> None:
    calls = Calls()
    seen: list[str] = []

    def precheck(ip: str) -> int:
        seen.append(ip)
        return 7  # over the bucket: the connection could stay, but the body is not worth reading

    server = await start_server(calls, precheck=precheck)
    try:
        client = await Client.connect(server.port)
        await client.send(H + b"Content-Length: 100000\r\n\r\nkey=only-the-start")
        response = await client.final()
        assert response is not None and response.status == 429
        assert response.headers["retry-after"] == "7"
        assert response.json() == {"error": "Too many requests"}
        assert await client.closed()
        await client.close()
        assert seen == ["127.0.0.1"] and calls.count == 0
    finally:
        await server.stop(1.0)


async def test_bucket_refusal_of_a_small_request_keeps_the_connection() -> None:
    calls = Calls()
    waits = [2, 0]  # refused, then admitted

    server = await start_server(calls, precheck=lambda ip: waits.pop(0))
    try:
        client = await Client.connect(server.port)
        await client.send(post(b"action=balance&key=" + b"k" * 1000) + post(b"action=balance"))
        refused = await client.final()
        assert refused is not None and refused.status == 429
        assert refused.headers["retry-after"] == "2" and "connection" not in refused.headers
        assert refused.json() == {"error": "Too many requests"}
        served = await client.final()  # the refused body was dropped, the next request parsed
        assert served is not None and served.status == 200
        assert served.json()["body"] == "action=balance" and calls.count == 1
        await client.close()
    finally:
        await server.stop(1.0)


@pytest.mark.parametrize(
    ("wait", "framing"),
    [
        (-300, b"Content-Length: 3\r\n\r\nk=1"),  # a blocked address: always closed
        (1, b"Transfer-Encoding: chunked\r\n\r\n3\r\nk=1\r\n0\r\n\r\n"),
        (1, b"Content-Length: 3\r\nExpect: 100-continue\r\n\r\n"),  # no 100 for a refusal
        (1, b"Content-Length: 16385\r\n\r\n"),  # over SKIP_BODY_MAX
    ],
)
async def test_precheck_refusals_that_close(wait: int, framing: bytes) -> None:
    server = await start_server(precheck=lambda ip: wait)
    try:
        client = await Client.connect(server.port)
        await client.send(H + framing)
        await _refused(client, 429)
        await client.close()
    finally:
        await server.stop(1.0)


@pytest.mark.parametrize(
    "request_line",
    [b"GET /nope HTTP/1.1", b"POST /nope HTTP/1.1", b"PUT /api/v2 HTTP/1.1", b"GET /api/v2 HTTP/1.1"],
)
async def test_404_and_405_pass_the_precheck_like_any_request(request_line: bytes) -> None:
    seen: list[str] = []
    server = await start_server(precheck=lambda ip: seen.append(ip) or 3)  # type: ignore[func-returns-value]
    try:
        client = await Client.connect(server.port)
        await client.send(request_line + b"\r\nHost: a\r\n\r\n")
        response = await client.final()
        assert response is not None and response.status == 429, response
        assert response.headers["retry-after"] == "3" and seen == ["127.0.0.1"]
        await client.close()
    finally:
        await server.stop(1.0)


async def test_precheck_runs_before_the_size() -> None:
    refused: list[str] = []
    server = await start_server(
        precheck=lambda ip: refused.append(ip) or 1,  # type: ignore[func-returns-value]
        limits=Limits(max_body_bytes=1024),
    )
    try:
        client = await Client.connect(server.port)
        await client.send(H + b"Content-Length: 5000\r\n\r\n")
        await _refused(client, 429)
        await client.close()
        assert refused == ["127.0.0.1"]
    finally:
        await server.stop(1.0)


async def test_connect_check_refuses_at_once() -> None:
    server = await start_server(connect_check=lambda ip: 1)
    try:
        client = await Client.connect(server.port)
        await _refused(client, 429)
        await client.close()
    finally:
        await server.stop(1.0)


async def test_connection_cap_refuses_with_503() -> None:
    server = await start_server(limits=Limits(max_connections=2))
    try:
        first, second = await Client.connect(server.port), await Client.connect(server.port)
        third = await Client.connect(server.port)
        await _refused(third, 503)
        await third.close()
        await first.close()
        await asyncio.sleep(0.05)
        fourth = await Client.connect(server.port)
        await fourth.send(post())
        response = await fourth.final()
        assert response is not None and response.status == 200
        await fourth.close()
        await second.close()
    finally:
        await server.stop(1.0)


async def test_pipelining_beyond_the_depth_answers_what_was_queued_then_closes() -> None:
    calls = Calls()
    server = await start_server(calls, limits=Limits(max_pipelined=4))
    try:
        client = await Client.connect(server.port)
        await client.send(post(target=b"/api/v2?sleep=0.05") + post() * 10)
        statuses = []
        while (response := await client.final()) is not None:
            statuses.append(response.status)
        assert statuses == [200] * 5  # the one in flight and the four queued behind it
        await client.close()
        assert calls.count == 5
    finally:
        await server.stop(1.0)


async def test_a_client_that_never_reads_cannot_make_the_server_buffer() -> None:
    server = await start_server(limits=Limits(write_timeout=0.5))
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", server.port))
        request = post(target=b"/api/v2?big=65536")
        for _ in range(200):  # ~13 MB of answers asked for; none read
            await loop.sock_sendall(sock, request * 4)
            await asyncio.sleep(0.002)
            (conn,) = server.conns
            if conn.state in BLOCKED_STATES:
                break
        (conn,) = server.conns
        assert conn.state in BLOCKED_STATES and conn._read_paused
        transport = conn._transport
        assert transport is not None
        high = transport.get_write_buffer_limits()[1]
        assert transport.get_write_buffer_size() <= high + 70_000  # one answer over the mark
        for _ in range(5):  # no progress while paused
            await asyncio.sleep(0.02)
            assert transport.get_write_buffer_size() <= high + 70_000
        # the client still does not read: the write timeout ends the connection
        await asyncio.sleep(0.6)
        assert not server.conns
        sock.close()
    finally:
        await server.stop(1.0)


async def test_a_refusal_queued_behind_a_slow_request_waits_for_it() -> None:
    checks: list[str] = []

    def precheck(ip: str) -> int:  # the second request is refused, as a blocked address
        checks.append(ip)
        return -1 if len(checks) == 2 else 0

    server = await start_server(precheck=precheck, limits=Limits(body_timeout=0.1))
    try:
        client = await Client.connect(server.port)
        # the refused request's own deadlines must not cut the slow answer ahead of it
        await client.send(post(target=b"/api/v2?sleep=0.4") + H + b"Content-Length: 50\r\n\r\n")
        first = await client.final()
        assert first is not None and first.status == 200
        await _refused(client, 429)
        await client.close()
    finally:
        await server.stop(1.0)


class _CountingLoop:
    """The server's loop, counting the timers its connections schedule."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.timers = 0

    def call_at(self, when: float, callback: object) -> asyncio.TimerHandle:
        self.timers += 1
        return self._loop.call_at(when, callback)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> object:
        return getattr(self._loop, name)


async def test_keep_alive_requests_do_not_schedule_a_timer_each() -> None:
    server = await start_server()
    counting = _CountingLoop(server.loop)
    server.loop = counting  # type: ignore[assignment]
    try:
        client = await Client.connect(server.port)
        for _ in range(200):
            await client.send(post(b"a=1"))
            response = await client.final()
            assert response is not None and response.status == 200
        assert counting.timers <= 3  # connect, then only re-arms when a deadline moved earlier
        await client.close()
    finally:
        await server.stop(1.0)
