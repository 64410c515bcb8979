"""Protocol behaviour over real sockets: routes, keep-alive, Expect, the Request handed to the
handler, handler failures, client IP through trusted proxies only, stop. Which request a
deferred 100 Continue belongs to is checked on a fake transport (test_connections,
test_lifecycle)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from panelsrv.http import wire
from panelsrv.http.listener import HttpServer
from panelsrv.http.request import Answer, Bounds, Request, Route
from panelsrv.metrics import Registry
from tests.http.httpkit import Calls, Client, connect, start_server
from tests.kit.waiting import until
from tests.kit.wire import post, request


async def test_request_fields_reach_the_handler() -> None:
    server = await start_server()
    try:
        client = await Client.connect(server.port)
        await client.send(
            b"POST /api/v2?action=balance&key=k HTTP/1.1\r\nHost: Panel.TEST:8080\r\n"
            b"Content-Type: Application/JSON; Charset=UTF-8\r\nIdempotency-Key: Order-42 \r\n"
            b"Content-Length: 2\r\n\r\n{}"
        )
        response = await client.final()
        assert response is not None and response.status == 200
        seen = response.json()
        assert seen["host"] == "panel.test"
        assert seen["content_type"] == "application/json; charset=utf-8"
        assert seen["query"] == "action=balance&key=k"
        assert seen["idempotency_key"] == "Order-42"
        assert seen["body"] == "{}"
        assert seen["client_ip"] == "127.0.0.1"
        assert "connection" not in response.headers  # keep-alive is HTTP/1.1's default

        await client.send(b"POST /api/v2 HTTP/1.1\r\nHost: [::1]:9\r\nContent-Length: 0\r\n\r\n")
        response = await client.final()
        assert response is not None
        seen2 = response.json()
        assert seen2["host"] == "[::1]"
        assert seen2["content_type"] == "" and seen2["idempotency_key"] is None
        assert seen2["query"] == "" and seen2["id"] == seen["id"] + 1
        await client.close()
    finally:
        await server.stop(1.0)


@pytest.mark.parametrize(
    ("target", "host"),
    [
        (b"http://Target.TEST/api/v2", "target.test"),
        (b"https://target.test:8443/api/v2?action=balance", "target.test"),
        (b"http://[::1]:9/api/v2", "[::1]"),
    ],
)
async def test_an_absolute_form_target_names_the_host_over_the_host_header(
    target: bytes, host: str
) -> None:
    server = await start_server()
    try:
        client = await Client.connect(server.port)
        await client.send(b"POST %s HTTP/1.1\r\nHost: other.test\r\n\r\n" % target)
        response = await client.final()
        assert response is not None and response.status == 200
        assert response.json()["host"] == host  # RFC 9112 3.2.2: the target's authority wins
        await client.close()
    finally:
        await server.stop(1.0)


@pytest.mark.parametrize(
    "target", [b"/api/v2x", b"/API/V2", b"/api/v2/x", b"/", b"/api/%762", b"*"]
)
async def test_other_paths_are_404_and_keep_the_connection(target: bytes) -> None:
    calls = Calls()
    server = await start_server(calls)
    try:
        client = await Client.connect(server.port)
        await client.send(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % target + post(b"a=1"))
        response = await client.final()
        assert response is not None and response.status == 404
        assert response.json() == {"error": "Not found"}
        assert "connection" not in response.headers
        response = await client.final()
        assert response is not None and response.status == 200
        await client.close()
        assert calls.count == 1
    finally:
        await server.stop(1.0)


async def test_404_with_a_small_body_skips_it_and_keeps_the_connection() -> None:
    server = await start_server()
    try:
        client = await Client.connect(server.port)
        await client.send(post(b"x" * 10, target=b"/nope") + post(b"action=balance"))
        response = await client.final()
        assert response is not None and response.status == 404
        assert "connection" not in response.headers
        response = await client.final()
        assert response is not None and response.status == 200
        await client.close()
    finally:
        await server.stop(1.0)


async def test_404_with_a_large_body_is_answered_without_reading_it_and_closes() -> None:
    server = await start_server()
    try:
        client = await Client.connect(server.port)
        await client.send(post(b"x" * 20_000, target=b"/nope")[:-5])  # body only half sent
        response = await client.final()
        assert response is not None and response.status == 404
        assert response.headers["connection"] == "close"
        assert await client.closed()
        await client.close()
    finally:
        await server.stop(1.0)


def page(req: Request) -> Answer:
    return 200, b"<p>%s</p>" % req.method, b""


async def test_a_page_takes_get_and_post_and_its_405_allows_both_and_static_files_get() -> None:
    server = HttpServer({
        b"/login": Route(b"POST", page, content_type=wire.HTML, takes_get=True),
        b"/static/panelsrv.css": Route(b"GET", page, content_type=wire.CSS),
        b"/static/panelsrv.js": Route(b"GET", page, content_type=wire.JS),
    })  # fmt: skip
    proto, transport = connect(server)
    for method, target in [
        (b"GET", b"/login"), (b"POST", b"/login"), (b"PUT", b"/login"), (b"DELETE", b"/login"),
        (b"GET", b"/static/panelsrv.css"), (b"POST", b"/static/panelsrv.css"),
        (b"GET", b"/static/panelsrv.js"),
    ]:  # fmt: skip
        proto.data_received(request(method, target, body=b""))
    heads = [data.partition(b"\r\n\r\n") for data in transport.writes]
    assert transport.statuses() == [200, 200, 405, 405, 200, 405, 200] and not transport.closed
    html, css, js = (b"\r\n" + line for line in (wire.HTML, wire.CSS, wire.JS))
    assert [body for _, _, body in heads[:2]] == [b"<p>GET</p>", b"<p>POST</p>"]
    assert html in heads[0][0] and html in heads[1][0]
    for head, _, body in heads[2:4]:
        assert b"\r\nAllow: GET, POST\r\n" in head
        assert body == b'{"error":"Method not allowed: use GET or POST"}'
    assert css in heads[4][0] and js in heads[6][0]
    assert b"\r\nAllow: GET\r\n" in heads[5][0]
    assert wire.HTML == b"Content-Type: text/html; charset=utf-8\r\n"
    assert wire.CSS == b"Content-Type: text/css; charset=utf-8\r\n"
    assert wire.JS == b"Content-Type: text/javascript; charset=utf-8\r\n"


@pytest.mark.parametrize("method", [b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH"])
async def test_other_methods_are_405_with_allow_post(method: bytes) -> None:
    calls = Calls()
    server = await start_server(calls)
    try:
        client = await Client.connect(server.port)
        await client.send(b"%s /api/v2?a=1 HTTP/1.1\r\nHost: a\r\n\r\n" % method + post())
        response = await client.final()
        assert response is not None and response.status == 405
        assert response.headers["allow"] == "POST"
        if method != b"HEAD":
            assert response.json() == {"error": "Method not allowed: use POST"}
        response = await client.final()  # the connection stays
        assert response is not None and response.status == 200
        assert calls.count == 1
        await client.close()
    finally:
        await server.stop(1.0)


async def test_a_get_reaches_the_api_handler_which_decides() -> None:
    """/api/v2 takes GET to its handler (the panel's `accept_get` is the handler's to read),
    with the method, query and body as sent."""
    server = await start_server()
    try:
        client = await Client.connect(server.port)
        await client.send(b"GET /api/v2/?action=balance&key=k HTTP/1.1\r\nHost: a\r\n\r\n")
        response = await client.final()
        assert response is not None and response.status == 200
        seen = response.json()
        assert (seen["method"], seen["query"], seen["body"]) == ("GET", "action=balance&key=k", "")
        await client.send(post(b"key=k"))
        response = await client.final()
        assert response is not None and response.json()["method"] == "POST"
        await client.close()
    finally:
        await server.stop(1.0)


async def test_http10_closes_unless_keep_alive_is_asked() -> None:
    server = await start_server()
    try:
        client = await Client.connect(server.port)
        req = b"POST /api/v2 HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
        await client.send(req)
        response = await client.final()
        assert response is not None and response.headers["connection"] == "keep-alive"
        await client.send(b"POST /api/v2 HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
        response = await client.final()
        assert response is not None and response.status == 200
        assert response.headers["connection"] == "close"
        assert await client.closed()
        await client.close()
    finally:
        await server.stop(1.0)


async def test_connection_close_is_honoured() -> None:
    server = await start_server()
    try:
        client = await Client.connect(server.port)
        await client.send(post(b"a", b"Connection: close\r\n"))
        response = await client.final()
        assert response is not None and response.headers["connection"] == "close"
        assert await client.closed()
        await client.close()
    finally:
        await server.stop(1.0)


async def test_expect_continue_is_answered_before_the_body() -> None:
    server = await start_server()
    try:
        client = await Client.connect(server.port)
        await client.send(H_EXPECT % 5)
        interim = await client.next()
        assert interim is not None and interim.status == 100
        await client.send(b"hello")
        response = await client.final()
        assert response is not None and response.json()["body"] == "hello"
        await client.close()
    finally:
        await server.stop(1.0)


H_EXPECT = b"POST /api/v2 HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"


async def test_expect_continue_is_not_sent_for_a_refused_request() -> None:
    server = await start_server(bounds=Bounds(max_body_bytes=1024))
    try:
        client = await Client.connect(server.port)
        await client.send(H_EXPECT % 5000)
        response = await client.next()
        assert response is not None and response.status == 413
        assert await client.closed()
        await client.close()
    finally:
        await server.stop(1.0)


async def test_handler_failure_is_500_logged_once_without_its_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = await start_server()
    try:
        client = await Client.connect(server.port)
        with caplog.at_level(logging.ERROR, logger="panelsrv.http"):
            await client.send(post(b"key=secret", target=b"/api/v2?raise=1") + post(b"a=1"))
            response = await client.final()
            assert response is not None and response.status == 500
            assert response.json() == {"error": "Internal server error"}
            response = await client.final()
            assert response is not None and response.status == 200  # connection survives
        (record,) = [r for r in caplog.records if r.name == "panelsrv.http"]
        text = record.getMessage()
        assert text.startswith("request ") and "RuntimeError" in text
        assert "secret" not in text
        await client.close()
    finally:
        await server.stop(1.0)


async def test_trailers_never_override_headers() -> None:
    server = await start_server(trusted_proxies=["127.0.0.1"])
    try:
        client = await Client.connect(server.port)
        await client.send(
            b"POST /api/v2 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"1\r\nx\r\n0\r\nHost: evil\r\nX-Forwarded-For: 6.6.6.6\r\nContent-Type: a/b\r\n\r\n"
        )
        response = await client.final()
        assert response is not None
        seen = response.json()
        assert (seen["host"], seen["client_ip"], seen["content_type"]) == ("a", "127.0.0.1", "")
        await client.close()
    finally:
        await server.stop(1.0)


XFF = b"POST /api/v2 HTTP/1.1\r\nHost: a\r\n%sContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize(
    ("trusted", "headers", "client_ip"),
    [
        ([], b"X-Forwarded-For: 1.2.3.4\r\n", "127.0.0.1"),
        ([], b"X-Real-IP: 1.2.3.4\r\n", "127.0.0.1"),
        (["127.0.0.1"], b"X-Forwarded-For: 9.9.9.9, 1.2.3.4\r\n", "1.2.3.4"),
        (["127.0.0.0/8"], b"X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 127.0.0.5\r\n", "1.2.3.4"),
        (["127.0.0.1"], b"X-Real-IP: 1.2.3.4\r\n", "1.2.3.4"),
        (["127.0.0.1"], b"X-Real-IP: 1.2.3.4\r\nX-Forwarded-For: 5.6.7.8\r\n", "5.6.7.8"),
        (["127.0.0.1"], b"", "127.0.0.1"),
        (["127.0.0.1"], b"X-Forwarded-For: ::ffff:10.0.0.1\r\n", "10.0.0.1"),
        (["127.0.0.1"], b"X-Forwarded-For: 1.2.3.4, junk\r\n", "127.0.0.1"),
    ],
)
async def test_client_ip_comes_from_forwarding_headers_of_trusted_peers_only(
    trusted: list[str], headers: bytes, client_ip: str
) -> None:
    server = await start_server(trusted_proxies=trusted)
    try:
        client = await Client.connect(server.port)
        await client.send(XFF % headers)
        response = await client.final()
        assert response is not None and response.json()["client_ip"] == client_ip
        await client.close()
    finally:
        await server.stop(1.0)


async def test_metrics_count_responses_and_rejects() -> None:
    registry = Registry()
    server = await start_server(registry=registry)
    try:
        client = await Client.connect(server.port)
        await client.send(post() + b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await client.final()) is not None
        assert (await client.final()) is not None
        text = registry.render().decode()
        assert 'panelsrv_http_requests_total{action="echo",status="200"} 1' in text
        assert 'panelsrv_http_requests_total{action="none",status="404"} 1' in text
        assert 'panelsrv_http_rejects_total{reason="not_found"} 1' in text
        assert "panelsrv_http_open_connections 1" in text
        assert 'panelsrv_http_request_duration_seconds_count{action="echo"} 1' in text
        await client.close()
    finally:
        await server.stop(1.0)


async def test_stop_lets_a_slow_request_finish_and_closes_idle_connections() -> None:
    calls = Calls()
    server = await start_server(calls)
    idle = await Client.connect(server.port)
    await idle.send(post())
    assert (await idle.final()) is not None
    busy = await Client.connect(server.port)
    await busy.send(post(target=b"/api/v2?hold=1"))
    await until(lambda: calls.active == 1)
    stopping = asyncio.ensure_future(server.stop(5.0))
    assert await idle.closed()
    calls.release()
    response = await busy.final()
    assert response is not None and response.status == 200
    assert response.headers["connection"] == "close"
    assert await busy.closed()
    await stopping
    await idle.close()
    await busy.close()


async def test_access_log_is_off_by_default_and_never_shows_bodies(
    caplog: pytest.LogCaptureFixture,
) -> None:
    for enabled in (False, True):
        server = await start_server(access_log=enabled)
        try:
            client = await Client.connect(server.port)
            with caplog.at_level(logging.INFO, logger="panelsrv.access"):
                caplog.clear()
                await client.send(post(b"key=secret-api-key&action=balance"))
                response = await client.final()
                assert response is not None
            lines = [r.getMessage() for r in caplog.records if r.name == "panelsrv.access"]
            if not enabled:
                assert lines == []
            else:
                (line,) = lines
                assert line.startswith("127.0.0.1 200 ") and "echo" in line
                assert f"id={response.json()['id']}" in line and "secret" not in line
            await client.close()
        finally:
            await server.stop(1.0)
