"""Prototype: answer "IP over its bucket" with a keep-alive 429 when the body is small.

Measured change for panelsrv/http/reader.py `Reader.on_headers_complete` (the precheck branch)
and panelsrv/http/protocol.py `HttpProtocol._start` (the `_reject` branch). Today a refusal
from `check_ip` ends the connection, so a client over its rate pays, and makes us pay, a TCP
accept + close per request (~2x the CPU of the refusal itself). When the declared body is small
(Content-Length <= 16 KiB, no chunking) reading and discarding it is cheaper than the reconnect:
mark the request rejected (as 404/405 already are) and answer 429 + Retry-After keep-alive once
the body is in. Blocked addresses (strike blocks) keep the closing refusal the spec asks for;
in this prototype every refusal of a small request is treated as a bucket refusal (the bench's
reject_ip scenario has no blocked address). Also includes ipcache (the same measured run).
"""

from __future__ import annotations

from bench.prototypes import ipcache  # noqa: F401 - applies its patch too
from panelsrv.errors import ERROR_BODIES, Code
from panelsrv.http import protocol, reader, wire

SMALL_BODY = 16 * 1024
_headers_complete = reader.Reader.on_headers_complete
_start = protocol.HttpProtocol._start


def on_headers_complete(self: reader.Reader) -> None:
    srv = self._srv
    check = srv.precheck
    if check is None or self._te or self._cl > SMALL_BODY:
        _headers_complete(self)
        return
    refused: list[bytes] = []

    def soft(ip: str) -> bytes | None:
        answer = check(ip)
        if answer is not None:
            refused.append(answer)
        return None

    srv.precheck = soft
    try:
        _headers_complete(self)
    finally:
        srv.precheck = check
    if refused and not self.dead:
        srv.metrics.reject("precheck")
        self.req._reject = 429


def start(self: protocol.HttpProtocol, req: protocol.Request) -> bool:
    if req._reject != 429:
        return _start(self, req)
    keep = req._keep_alive and not self._closing and not req._http10
    data = wire.render(429, ERROR_BODIES[Code.TOO_MANY_REQUESTS], keep, wire.RETRY_AFTER_1)
    return self._finish(req, 429, data, keep)


reader.Reader.on_headers_complete = on_headers_complete  # type: ignore[method-assign]
protocol.HttpProtocol._start = start  # type: ignore[method-assign]
