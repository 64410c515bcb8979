"""The one request builder of the test suite, and one request over a fresh connection.

`request` writes the bytes of one HTTP/1.1 request exactly as given (tests about framing need
that); `post` is the API's POST: fields (a mapping) are encoded as a form, JSON or multipart
body with their Content-Type, while bytes go out as they are with only the headers given.
`exchange` sends one request on a connection of its own, from a chosen loopback source address
(Linux routes all of 127/8 to loopback), and returns the final (non-1xx) response.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping
from urllib.parse import urlencode

import orjson

from tests.http.httpkit import Client, Response

FORM = b"Content-Type: application/x-www-form-urlencoded\r\n"
LOOPBACK = "127.0.0.1"


def encode(fields: Mapping[str, object], encoding: str = "form") -> tuple[bytes, bytes]:
    """(Content-Type header line, body) of `fields` as a form, json or multipart body."""
    if encoding == "json":
        return b"Content-Type: application/json\r\n", orjson.dumps(fields)
    if encoding == "multipart":
        boundary = secrets.token_hex(8).encode()
        parts = b"".join(
            b'--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n'
            % (boundary, str(k).encode(), str(v).encode())
            for k, v in fields.items()
        )
        body = parts + b"--%s--\r\n" % boundary
        return b"Content-Type: multipart/form-data; boundary=%s\r\n" % boundary, body
    assert encoding == "form", encoding
    return FORM, urlencode({k: str(v) for k, v in fields.items()}).encode()


def request(
    method: bytes,
    target: bytes,
    *,
    host: str = "panel.test",
    headers: bytes = b"",
    body: bytes | None = None,
) -> bytes:
    """One request; a Content-Length is sent unless `body` is None."""
    length = b"" if body is None else b"Content-Length: %d\r\n" % len(body)
    return b"%s %s HTTP/1.1\r\nHost: %s\r\n%s%s\r\n%s" % (
        method, target, host.encode(), headers, length, body or b""
    )  # fmt: skip


def post(
    body: bytes | Mapping[str, object] = b"",
    headers: bytes = b"",
    *,
    host: str = "panel.test",
    target: bytes = b"/api/v2",
    encoding: str = "form",
) -> bytes:
    """A POST (to /api/v2 unless `target` says otherwise) of raw bytes or encoded fields."""
    if not isinstance(body, bytes):
        ctype, body = encode(body, encoding)
        headers = ctype + headers
    return request(b"POST", target, host=host, headers=headers, body=body)


async def connect(port: int, source: str = LOOPBACK) -> Client:
    """A connection to the loopback `port` from the loopback address `source`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    return Client(reader, writer)


async def exchange(
    port: int, data: bytes, *, source: str = LOOPBACK, timeout: float = 30.0
) -> Response:
    """Send `data` on a fresh connection (so successive calls spread over the worker
    processes); the final response, which must come."""
    client = await connect(port, source)
    try:
        await client.send(data)
        response = await client.final(timeout)
        assert response is not None, "connection closed without an answer"
        return response
    finally:
        await client.close()
