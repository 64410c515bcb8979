"""Pipelines fed at random splits through a fake transport: the Reader's own bookkeeping of
where each message starts (to check its request line) must agree with llhttp's framing, whatever
the bodies hold and wherever the reads are cut."""

from __future__ import annotations

import random

import pytest

from panelsrv.http.listener import HttpServer, api_routes
from panelsrv.http.reader import MAX_CHUNK_STEPS
from panelsrv.http.request import Answer, Request
from tests.http.httpkit import FakeTransport, connect

H = b"POST /api/v2 HTTP/1.1\r\nHost: a\r\n"


def echo(req: Request) -> Answer:
    return 200, req.body, b""


def content_length(body: bytes) -> bytes:
    return H + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


def chunked(body: bytes, rng: random.Random) -> bytes:
    out = [H + b"Transfer-Encoding: chunked\r\n\r\n"]
    i = 0
    while i < len(body):
        n = min(rng.randint(1, 9), len(body) - i)
        ext = rng.choice([b"", b";x=1", b';q="a;b"'])
        out.append(b"%0*x%s\r\n%s\r\n" % (rng.randint(1, 3), n, ext, body[i : i + n]))
        i += n
    trailer = rng.choice([b"", b"X-T: 1\r\n", b"X: POST /api/v2  HTTP/1.1\r\n"])
    out.append(b"0\r\n%s\r\n" % trailer)
    return b"".join(out)


# bodies that look like framing: request lines with a double space, empty lines, CRLF CRLF
TRICKY = [
    b"",
    b"a=1",
    b"\r\n\r\n",
    b"\r\n\r\n\r\n\r\nPOST /api/v2  HTTP/1.1\r\n\r\n",
    b"x\r\n0\r\n\r\n",
    b"\n\nPOST  / HTTP/1.1\r\n",
    b"0\r\n\r\nGET / HTTP/1.1\r\n\r\n",
]


NOT_FOUND = (404, b'{"error":"Not found"}')


def good(rng: random.Random) -> tuple[bytes, tuple[int, bytes]]:
    """(message, the response it gets): echoed, or a 404 whose small body is skipped."""
    body = rng.choice(TRICKY) * rng.randint(1, 3)
    lead = b"\r\n" if rng.random() < 0.2 else b""
    if body and rng.random() < 0.5:
        return lead + chunked(body, rng), (200, body)
    if rng.random() < 0.2:
        return lead + content_length(body).replace(b"/api/v2", b"/nope", 1), NOT_FOUND
    return lead + content_length(body), (200, body)


BAD_STARTS = [
    b"\n" + content_length(b"z"),
    b"\r\n\r\n" + content_length(b"z"),
    b"\r" + content_length(b"z"),
    b"POST /api/v2  HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    b"POST  /api/v2 HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
]


def feed_split(proto: object, data: bytes, rng: random.Random) -> None:
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 6))))
    for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
        proto.data_received(data[a:b])  # type: ignore[attr-defined]


def responses(transport: FakeTransport) -> list[tuple[int, bytes]]:
    found = []
    for data in transport.writes:
        head, _, body = data.partition(b"\r\n\r\n")
        found.append((int(head[9:12]), body))
    return found


@pytest.mark.parametrize("seed", range(8))
async def test_good_pipelines_at_random_splits_are_all_answered_in_order(seed: int) -> None:
    rng = random.Random(seed)
    server = HttpServer(api_routes(echo))
    for _ in range(60):
        messages = [good(rng) for _ in range(rng.randint(1, 5))]
        proto, transport = connect(server)
        feed_split(proto, b"".join(m for m, _ in messages), rng)
        assert responses(transport) == [answer for _, answer in messages]
        assert not transport.closed
        transport.lose()


@pytest.mark.parametrize("seed", range(8))
async def test_a_bad_start_anywhere_in_a_pipeline_is_refused_after_the_ones_before(
    seed: int,
) -> None:
    rng = random.Random(1000 + seed)
    server = HttpServer(api_routes(echo))
    for _ in range(60):
        before = [good(rng) for _ in range(rng.randint(0, 3))]
        bad = rng.choice(BAD_STARTS)
        data = b"".join(m for m, _ in before) + bad + content_length(b"smuggled")
        proto, transport = connect(server)
        feed_split(proto, data, rng)
        expected = [answer for _, answer in before] + [(400, b'{"error":"Bad request"}')]
        assert responses(transport) == expected, data
        transport.lose()


async def test_a_chunked_body_with_too_many_empty_lines_in_one_read_ends_the_connection() -> None:
    server = HttpServer(api_routes(echo))
    proto, transport = connect(server)
    body = b"\r\n\r\n" * (MAX_CHUNK_STEPS + 4)
    message = H + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    proto.data_received(message[:60])  # the head and the start of the body
    proto.data_received(message[60:] + content_length(b"next"))  # the rest, and another
    ((status, answer),) = responses(transport)
    assert (status, answer) == (200, body)
    assert b"Connection: close\r\n" in transport.writes[0] and transport.eof_written
