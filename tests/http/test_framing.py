"""Message framing over real sockets: every good request sent whole and pipelined three deep;
every malformed or ambiguous one answered 400 (a transfer coding we do not implement: 501) and
the connection closed, with nothing after it parsed and the handler never run. The same corpus
split at every byte boundary goes to the Reader without sockets (test_reader); one split here
shows two reads reach it as two."""

from __future__ import annotations

import pytest

from panelsrv.http.reader import BODY
from tests.http.httpkit import Calls, Client, start_server
from tests.kit.wire import post

H = b"POST /api/v2 HTTP/1.1\r\nHost: panel.test\r\n"
CHUNKED = H + b"Transfer-Encoding: chunked\r\n\r\n"
TE = b"Transfer-Encoding: "
NO_BODY = b"Content-Length: 0\r\n\r\n"

# name -> (request, the body the handler must see)
GOOD: dict[str, tuple[bytes, bytes]] = {
    "content_length": (post(b"key=k&action=balance"), b"key=k&action=balance"),
    "no_body": (post(), b""),
    "leading_zero_length": (H + b"Content-Length: 010\r\n\r\n0123456789", b"0123456789"),
    "chunked": (
        CHUNKED + b"3\r\nkey\r\n6\r\n=k&a=b\r\n0\r\n\r\n",
        b"key=k&a=b",
    ),
    "chunked_extension_and_trailer": (
        CHUNKED + b"4;ext=1\r\nab=c\r\n0\r\nX-Trailer: 1\r\n\r\n",
        b"ab=c",
    ),
    # HTTP Garden server bug 39: "0\r\nX:POST / HTTP/1.1\r\n\r\n" is one trailer, not a request
    "trailer_looking_like_a_request": (
        CHUNKED + b"0\r\nX:POST / HTTP/1.1\r\n\r\n",
        b"",
    ),
    "http10_keep_alive": (
        b"POST /api/v2 HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nab",
        b"ab",
    ),
    "expect_continue": (
        H + b"Expect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
        b"abc",
    ),
    "query_and_trailing_slash": (post(b"x=1", target=b"/api/v2/?action=balance"), b"x=1"),
    "absolute_form": (post(b"x=1", target=b"http://panel.test/api/v2"), b"x=1"),
    "absolute_form_https_port_upper_scheme": (
        post(b"x=1", target=b"HTTPS://panel.test:8443/api/v2?a=b"),
        b"x=1",
    ),
    # RFC 9112 2.2: at least one empty line before a request line is to be ignored
    "one_empty_line_before": (b"\r\n" + post(b"x=1"), b"x=1"),
    "te_chunked_upper_case_and_ows": (
        H + TE + b"\tCHUNKED  \r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"abc",
    ),
}

# Smuggling and malformed messages: llhttp's own test corpus and the HTTP Garden trophies.
BAD: dict[str, bytes] = {
    "cl_and_te": H + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_and_cl": H + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    "duplicate_cl_same": H + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "duplicate_cl_conflicting": H + b"Content-Length: 1\r\nContent-Length: 0\r\n\r\nZ",
    "cl_list": H + b"Content-Length: 3, 3\r\n\r\nabc",
    "cl_plus_underscore": H + b"Content-Length: +1_0\r\n\r\n0123456789",
    "cl_negative": H + b"Content-Length: -48\r\n\r\n",
    "cl_hex": H + b"Content-Length: 0x3\r\n\r\nabc",
    "cl_trailing_garbage": H + b"Content-Length: 1Z\r\n\r\nZ",
    "cl_empty": H + b"Content-Length: \r\n\r\n" + post(),
    "cl_overflow": H + b"Content-Length: 99999999999999999999999\r\n\r\n",
    "cl_space_before_colon": H + b"Content-Length : 3\r\n\r\nabc",
    "cl_no_colon": H + b"Content-Length 10\r\n\r\n0123456789",
    "cl_obs_text_in_name": H + b"Content-Length\x85: 10\r\n\r\n0123456789",
    "te_not_chunked": H + b"Transfer-Encoding: gzip\r\n\r\nabc",
    "te_chunked_not_last": H + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    "te_twice": H + TE + b"chunked\r\n" + TE + b"chunked\r\n\r\n1\r\nZ\r\n0\r\n\r\n",
    "te_comma_chunked_with_cl": H + TE + b",chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    "te_nbsp": H + b"Transfer-Encoding: \xa0chunked\xa0\r\n\r\n0\r\n\r\n",
    "te_vertical_tab": H + b"Transfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n",
    "te_space_before_colon": H + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "te_name_folded": H + b"Transfer-\r\nEncoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    "te_obs_fold": H + b"Transfer-Encoding: x\r\n chunked\r\n\r\n0\r\n\r\n",
    "te_empty": H + b"Transfer-Encoding: \r\n\r\n",
    "http10_with_te": b"POST /api/v2 HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "obs_fold": H + b"X-A: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    "leading_whitespace_first_header": b"POST /api/v2 HTTP/1.1\r\n\tContent-Length: 1\r\n\r\nX",
    "bare_lf": b"POST /api/v2 HTTP/1.1\nHost: panel.test\nContent-Length: 0\n\n",
    "bare_lf_in_headers": H + b"Useless:\n\nPOST /api/v2 HTTP/1.1\r\n\r\n",
    "bare_cr_in_header_line": H + b"Visible: :/\rSmuggled: :)\r\nContent-Length: 0\r\n\r\n",
    "cr_in_header_value": H + b"X-A: va\rlue\r\nContent-Length: 0\r\n\r\n",
    "nul_in_header_value": H + b"X-A: v\x00alue\r\nContent-Length: 0\r\n\r\n",
    "header_block_cr_x": H + b"\rZPOST /api/v2 HTTP/1.1\r\nHost: a\r\n\r\n",
    "empty_header_name": H + b": ignored\r\nContent-Length: 0\r\n\r\n",
    "empty_header_line": H + b":\r\nI: am chopped off\r\n\r\n",
    "control_chars_in_name": H + b"\x01\x02(),/;<=>?@: x\r\nContent-Length: 0\r\n\r\n",
    "non_ascii_in_name": H + b"\xefoo: bar\r\nContent-Length: 0\r\n\r\n",
    "chunk_size_underscore": CHUNKED + b"0_2e\r\n\r\n" + post(),
    "chunk_size_hex_prefix": CHUNKED + b"0x3\r\nabc\r\n0\r\n\r\n",
    "chunk_size_negative": CHUNKED + b"-1\r\nabc\r\n0\r\n\r\n",
    "chunk_size_space": CHUNKED + b"3 \r\nabc\r\n0\r\n\r\n",
    "chunk_size_empty": CHUNKED + b"\r\n\r\n",
    "chunk_size_overflow": CHUNKED + b"fffffffffffffffffff\r\nabc\r\n",
    "chunk_data_too_long": CHUNKED + b"3\r\nabcX\r\n0\r\n\r\n",
    "chunk_bare_lf": CHUNKED + b"3\nabc\n0\n\n",
    "chunk_line_cr_x": CHUNKED + b"5\r\r;ABCD\r\n34\r\nE\r\n0\r\n\r\n",
    "chunk_ext_unbalanced_quote": CHUNKED + b'3;a="b\r\nabc\r\n0\r\n\r\n',
    "method_garbage": b'G=":<>(e),[T];?" /api/v2 HTTP/1.1\r\nHost: a\r\n\r\n',
    "method_nul": b"\x00 / HTTP/............0596.7407.\r\n\r\n",
    "tls_hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    "url_control_char": b"POST /api/\x01v2 HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    "url_space": b"POST /api/v2 x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    "request_line_bare_lf": b"GET /\nHTTP/1.1\r\n\r\n",
    "version_1_32": b"POST /api/v2 HTTP/1.32\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    "version_cr": b"POST /api/v2 HTTP/\r\r1.1\r\n\r\n",
    "version_huge": b"POST /api/v2 HTTP/4294967295.255\r\n\r\n",
    "version_lowercase": b"POST /api/v2 http/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    "http09": b"GET /api/v2\r\n\r\n",
    "http2_version": b"POST /api/v2 HTTP/2.0\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    "upgrade": H + b"Connection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 3\r\n\r\nabc",
    "connect": b"CONNECT panel.test:443 HTTP/1.1\r\nHost: panel.test:443\r\n\r\n",
    "missing_host": b"POST /api/v2 HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    "duplicate_host": H + b"Host: evil.test\r\nContent-Length: 0\r\n\r\n",
    "invalid_host": b"POST /api/v2 HTTP/1.1\r\nHost: a b/c\r\nContent-Length: 0\r\n\r\n",
    "duplicate_content_type": H + b"Content-Type: a/b\r\nContent-Type: c/d\r\n\r\n",
    "duplicate_idempotency_key": H + b"Idempotency-Key: a\r\nIdempotency-Key: b\r\n\r\n",
    # request lines llhttp tolerates and a strict front proxy reads otherwise (issue 12, point 22)
    "two_spaces_before_version": b"POST /api/v2  HTTP/1.1\r\nHost: a\r\n" + NO_BODY,
    "two_spaces_after_method": b"POST  /api/v2 HTTP/1.1\r\nHost: a\r\n" + NO_BODY,
    "bare_lf_before": b"\n" + post(),
    "bare_lf_lines_before": b"\n\n\n" + post(),
    "bare_cr_before": b"\r" + post(),
    "two_empty_lines_before": b"\r\n\r\n" + post(),
    "lf_then_crlf_before": b"\n\r\n" + post(),
    # absolute-form and Host (RFC 9112 3.2): a scheme we do not serve, a bad authority or port
    "absolute_form_other_scheme": post(target=b"x://panel.test/api/v2"),
    "absolute_form_userinfo": post(target=b"http://user@panel.test/api/v2"),
    "absolute_form_empty_authority": post(target=b"http:///api/v2"),
    "absolute_form_port_out_of_range": post(target=b"http://panel.test:99999/api/v2"),
    "absolute_form_without_host": b"POST http://a/api/v2 HTTP/1.1\r\n" + NO_BODY,
    "host_port_out_of_range": b"POST /api/v2 HTTP/1.1\r\nHost: a:99999\r\n" + NO_BODY,
    "host_port_zero": b"POST /api/v2 HTTP/1.1\r\nHost: a:0\r\n" + NO_BODY,
    "missing_host_unknown_path": b"GET /nope HTTP/1.1\r\n\r\n",
}

# Chunked is the final coding, but another coding we do not implement comes first: 501
# (RFC 9112 6.1), and the body is not read as plain chunked.
NOT_IMPLEMENTED: dict[str, bytes] = {
    "gzip_chunked": H + TE + b"gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "identity_chunked": H + TE + b"identity, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "gzip_then_chunked_headers": H + TE + b"gzip\r\n" + TE + b"Chunked\r\n\r\n0\r\n\r\n",
    "coding_with_parameter": H + TE + b"gzip;q=1, chunked\r\n\r\n0\r\n\r\n",
}


def _check_echo(response: object, body: bytes) -> None:
    assert response is not None
    assert response.status == 200, response  # type: ignore[attr-defined]
    assert response.json()["body"] == body.decode("latin-1")  # type: ignore[attr-defined]
    headers = response.headers  # type: ignore[attr-defined]
    assert headers["content-type"] == "application/json; charset=utf-8"
    assert int(headers["content-length"]) == len(response.body)  # type: ignore[attr-defined]
    assert headers["date"].endswith(" GMT")


@pytest.mark.parametrize("name", list(GOOD))
async def test_good_request_whole_and_pipelined(name: str) -> None:
    request, body = GOOD[name]
    server = await start_server()
    try:
        client = await Client.connect(server.port)
        await client.send(request)
        _check_echo(await client.final(), body)
        await client.close()

        client = await Client.connect(server.port)
        await client.send(request * 3)
        ids = []
        for _ in range(3):
            response = await client.final()
            _check_echo(response, body)
            assert response is not None
            ids.append(response.json()["id"])
        assert ids == sorted(ids) and len(set(ids)) == 3
        await client.close()
    finally:
        await server.stop(1.0)


async def test_split_reaches_the_server_in_two_reads() -> None:
    request, _ = GOOD["content_length"]
    server = await start_server()
    try:
        client = await Client.connect(server.port)
        await client.send_split(request, len(request) - 3)
        (conn,) = server.conns
        reader = conn._reader
        assert reader.phase == BODY and reader._body_len == len(b"key=k&action=balance") - 3
        assert await client.final() is not None
        await client.close()
    finally:
        await server.stop(1.0)


async def _expect_refusal_and_close(client: Client, status: int = 400) -> None:
    response = await client.final()
    assert response is not None and response.status == status, response
    assert response.headers["connection"] == "close"
    message = "Bad request" if status == 400 else "Transfer-Encoding not implemented"
    assert response.json() == {"error": message}
    assert await client.closed()


@pytest.mark.parametrize(
    ("name", "status"),
    [(name, 400) for name in BAD] + [(name, 501) for name in NOT_IMPLEMENTED],
)
async def test_bad_request_is_refused_and_closed(name: str, status: int) -> None:
    request = BAD[name] if status == 400 else NOT_IMPLEMENTED[name]
    calls = Calls()
    server = await start_server(calls)
    try:
        client = await Client.connect(server.port)
        await client.send(request + post(b"smuggled=1"))
        await _expect_refusal_and_close(client, status)
        await client.close()

        # behind two good requests: both answered in order, then the 400, then close
        good = post(b"a=1")
        client = await Client.connect(server.port)
        await client.send(good + good + request + good)
        for _ in range(2):
            response = await client.final()
            assert response is not None and response.status == 200
        await _expect_refusal_and_close(client, status)
        await client.close()
        assert calls.count == 2
    finally:
        await server.stop(1.0)


async def test_nothing_is_parsed_after_connection_close() -> None:
    calls = Calls()
    server = await start_server(calls)
    try:
        client = await Client.connect(server.port)
        first = post(b"a=1", b"Connection: close\r\n")
        await client.send(first + post(b"smuggled=1"))
        response = await client.final()
        assert response is not None and response.status == 200
        assert response.headers["connection"] == "close"
        assert await client.closed()  # (after the one answer: nothing else was parsed)
        await client.close()
        assert calls.count == 1
    finally:
        await server.stop(1.0)
