"""Bounds where the socket is the subject: the connection caps, the refusal at connect, the real
timer closing a silent connection, and a client that never reads (the kernel's buffers fill and
the transport pauses us). Sizes, deadlines to the edge, early refusals and pipelining depth are
checked without sockets (test_reader, test_lifecycle)."""

from __future__ import annotations

import asyncio
import socket

from panelsrv.http.protocol import BLOCKED_STATES
from panelsrv.http.request import Bounds
from tests.http.httpkit import Calls, Client, start_server
from tests.kit.waiting import until
from tests.kit.wire import post


async def _refused(client: Client, status: int) -> None:
    response = await client.final()
    assert response is not None and response.status == status, response
    assert response.headers["connection"] == "close"
    assert await client.closed()


async def test_a_connection_that_never_sends_is_closed() -> None:
    server = await start_server(bounds=Bounds(header_timeout=0.2))
    try:
        client = await Client.connect(server.port)
        assert await client.closed(timeout=2.0)
        await client.close()
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
    server = await start_server(bounds=Bounds(max_connections=2))
    try:
        first, second = await Client.connect(server.port), await Client.connect(server.port)
        third = await Client.connect(server.port)
        await _refused(third, 503)
        await third.close()
        await first.close()
        await until(lambda: len(server.conns) == 1)  # the server saw the close
        fourth = await Client.connect(server.port)
        await fourth.send(post())
        response = await fourth.final()
        assert response is not None and response.status == 200
        await fourth.close()
        await second.close()
    finally:
        await server.stop(1.0)


async def test_a_client_that_never_reads_cannot_make_the_server_buffer() -> None:
    calls = Calls()
    server = await start_server(calls, bounds=Bounds(write_timeout=0.5))
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", server.port))
        request = post(target=b"/api/v2?big=65536")
        (conn,) = server.conns
        for sent in range(4, 801, 4):  # ~13 MB of answers asked for; none read
            await loop.sock_sendall(sock, request * 4)
            # each round answered, or the server paused by its transport
            await until(lambda: conn.state in BLOCKED_STATES or calls.count >= sent)  # noqa: B023
            if conn.state in BLOCKED_STATES:
                break
        assert conn.state in BLOCKED_STATES and conn._read_paused
        transport = conn._transport
        assert transport is not None
        high = transport.get_write_buffer_limits()[1]

        def gone() -> bool:  # no progress while paused, until the write timeout ends it
            assert transport.get_write_buffer_size() <= high + 70_000  # one answer over
            return not server.conns

        await until(gone)
        sock.close()
    finally:
        await server.stop(1.0)
