"""Reading requests off one connection: the httptools parser's callback target.

Transport layer: imports httptools and panelsrv.http.{clientip, request, syntax, wire}. The
Reader never writes to the socket; it builds each Request from parser events, applies the
pre-body checks in `on_headers_complete` (cheapest first: framing and transfer coding, Host,
the per-IP precheck, path and method, the declared size) and hands the connection either a
complete request (`conn.complete`) or a refusal (`conn.refuse`). Only the callbacks defined
here are wired by httptools.

Invariants: a callback never raises (that would leave the parser broken); once `dead`, nothing
is fed to the parser again and late callbacks of the same read are ignored; header bytes, header
count, body bytes and what httptools may buffer in an unfinished header are all bounded.
"""

from __future__ import annotations

import re
from time import perf_counter
from typing import TYPE_CHECKING

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from panelsrv.http import syntax, wire
from panelsrv.http.clientip import client_ip
from panelsrv.http.request import Request

if TYPE_CHECKING:
    from panelsrv.http.listener import HttpServer
    from panelsrv.http.protocol import HttpProtocol

IDLE, HEAD, BODY, CLOSING = range(4)  # where the parser is; the connection's timer follows it

_HOST, _CONTENT_LENGTH, _TRANSFER_ENCODING, _CONTENT_TYPE, _EXPECT = range(1, 6)
_IDEMPOTENCY_KEY, _FORWARDED_FOR, _REAL_IP = range(6, 9)
_WANTED = {
    b"host": _HOST,
    b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"content-type": _CONTENT_TYPE,
    b"expect": _EXPECT,
    b"idempotency-key": _IDEMPOTENCY_KEY,
    b"x-forwarded-for": _FORWARDED_FOR,
    b"x-real-ip": _REAL_IP,
}
# A reg-name (DNS-ish, '_' tolerated) or a bracketed IPv6 literal, then an optional port.
_HOST_RE = re.compile(rb"([a-z0-9._-]+|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?")
_OWS = b" \t"
# A refused request with a declared body up to this size is read and dropped, keeping the
# connection (cheaper for both sides than a reconnect); a larger or chunked one closes it.
SKIP_BODY_MAX = 16 * 1024


def early_answer(req: Request, keep_alive: bool) -> bytes:
    """The response to a request refused before its handler (`req._reject`: 404, 405, 429)."""
    status = req._reject
    if status == 404:
        return wire.REJECT_KEEP[404] if keep_alive else wire.REJECT_CLOSE[404]
    if status == 429:
        return wire.too_many(req._retry_after, keep_alive)
    assert status == 405 and req._route is not None
    return wire.render_405(req._route.method, keep_alive)


def origin_path(target: bytes) -> bytes:
    """The path of an absolute-form target (`http://host/path`), which servers must accept."""
    start = target.find(b"://")
    if start <= 0:
        return target
    slash = target.find(b"/", start + 3)
    return target[slash:] if slash >= 0 else b"/"


class Reader:
    __slots__ = (
        "_body_buf",
        "_body_len",
        "_cl",
        "_conn",
        "_expect",
        "_forwarded_for",
        "_head",
        "_host_cache",
        "_host_raw",
        "_host_value",
        "_invalid",
        "_lim",
        "_nheaders",
        "_parser",
        "_raw",
        "_real_ip",
        "_seq",
        "_skip_max",
        "_srv",
        "_te",
        "_url",
        "dead",
        "peer",
        "phase",
        "req",
        "trusted_peer",
    )

    def __init__(self, conn: HttpProtocol, server: HttpServer) -> None:
        self._conn = conn
        self._srv = server
        self._lim = server.limits
        self._skip_max = min(SKIP_BODY_MAX, server.limits.max_body_bytes)
        self._parser = HttpRequestParser(self)
        self.req = Request()  # the one being parsed
        self.dead = True  # until the connection is accepted
        self.phase = IDLE
        self.peer = ""
        self.trusted_peer = False
        self._seq = 0
        self._host_cache: bytes | None = None
        self._host_value = ""
        self._begin()

    def _begin(self) -> None:
        """Reset the per-message scratch."""
        self._url: bytes | bytearray = b""
        self._cl = 0
        self._te: bytes | None = None  # Transfer-Encoding, its lines joined by ","
        self._expect = False
        self._forwarded_for: bytes | None = None
        self._real_ip: bytes | None = None
        self._host_raw: bytes | None = None
        self._invalid = False
        self._head = 0
        self._nheaders = 0
        self._body_len = 0
        self._body_buf: bytearray | None = None
        self._raw = 0

    def feed(self, data: bytes) -> None:
        if self.dead:
            return  # lingering, or refused: the parser is never fed again
        phase, seq = self.phase, self._seq
        try:
            self._parser.feed_data(data)
        except (HttpParserError, HttpParserUpgrade):
            self._conn.refuse(wire.REJECT_CLOSE[400], "bad_request")
            return
        # A read that began and ended inside one message's head (or body) is wholly that part:
        # this bounds what httptools buffers in a header it has not finished.
        if phase == self.phase and seq == self._seq and not self.dead:
            self._raw += len(data)
            lim = self._lim
            if phase == HEAD and self._raw > lim.max_header_bytes:
                self._conn.refuse(wire.REJECT_CLOSE[431], "headers_too_large")
            # chunk framing and trailers ride on top of a body: allow generous overhead
            elif phase == BODY and self._raw > 4 * lim.max_body_bytes + lim.max_header_bytes:
                self._conn.refuse(wire.REJECT_CLOSE[413], "body_too_large")

    # -- parser callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.dead:
            return
        req = self.req
        if req._pending:  # parsed ahead while the previous request is in flight (rare)
            req = self.req = Request()
        srv = self._srv
        srv.next_id += 1
        req._reset(srv.next_id, self.peer)
        self._begin()
        self._seq += 1
        self.phase = HEAD
        self._conn.set_deadline(srv.loop.time() + self._lim.header_timeout)

    def on_url(self, url: bytes) -> None:
        u = self._url
        if not u:
            self._url = url
        else:  # the target arrived in pieces: grow a bytearray, not a quadratic bytes chain
            if type(u) is bytes:
                u = self._url = bytearray(u)
            u += url
        self._head += len(url)
        if self._head > self._lim.max_header_bytes:
            self._conn.refuse(wire.REJECT_CLOSE[431], "headers_too_large")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.phase != HEAD:
            return  # a trailer (never trusted) or a refused message
        self._head += len(name) + len(value) + 4
        self._nheaders += 1
        if self._head > self._lim.max_header_bytes or self._nheaders > self._lim.max_headers:
            self._conn.refuse(wire.REJECT_CLOSE[431], "headers_too_large")
            return
        key = _WANTED.get(name.lower())
        if key is None:
            return
        if key == _CONTENT_LENGTH:
            self._cl = int(value)  # llhttp already refused anything but digits, and duplicates
        elif key == _TRANSFER_ENCODING:
            te = self._te
            self._te = value if te is None else te + b"," + value
        elif key == _HOST:
            self._invalid |= self._host_raw is not None
            self._host_raw = value
        elif key == _CONTENT_TYPE:
            req = self.req
            self._invalid |= bool(req.content_type)
            req.content_type = value.rstrip(_OWS).lower()
        elif key == _EXPECT:
            self._expect = value.rstrip(_OWS).lower() == b"100-continue"
        elif key == _IDEMPOTENCY_KEY:
            req = self.req
            self._invalid |= req.idempotency_key is not None
            req.idempotency_key = value.rstrip(_OWS).decode("latin-1")
        elif self.trusted_peer:  # forwarding headers count only from our own proxies
            if key == _FORWARDED_FOR:
                xff = self._forwarded_for
                self._forwarded_for = value if xff is None else xff + b"," + value
            else:
                self._invalid |= self._real_ip is not None
                self._real_ip = value

    def on_headers_complete(self) -> None:
        if self.dead:
            return
        req, parser, lim, conn = self.req, self._parser, self._lim, self._conn
        self.phase = BODY
        self._raw = 0
        conn.set_deadline(self._srv.loop.time() + lim.body_timeout)
        version = parser.get_http_version()
        te = self._te
        # Only HTTP/1.1 and 1.0; a 1.0 request with Transfer-Encoding has faulty framing
        # (RFC 9112 6.1); an Upgrade would hand the rest of the stream to another protocol.
        if (version != "1.1" and (version != "1.0" or te is not None)) or parser.should_upgrade():
            conn.refuse(wire.REJECT_CLOSE[400], "bad_request")
            return
        if te is not None and te != b"chunked":
            coding = syntax.transfer_coding(te)
            if coding != syntax.CHUNKED:  # and the body is not read as plain chunked
                if coding == syntax.UNKNOWN_CODING:
                    conn.refuse(wire.REJECT_CLOSE[501], "not_implemented")
                else:
                    conn.refuse(wire.REJECT_CLOSE[400], "bad_request")
                return
        req._http10 = version == "1.0"
        url = self._url
        q = url.find(b"?")
        if q >= 0:
            req.query = bytes(url[q + 1 :])
            url = url[:q]
        path = url if type(url) is bytes else bytes(url)
        if path[:1] != b"/":
            path = origin_path(path)
        if not self._resolve_host(req) or self._invalid:
            conn.refuse(wire.REJECT_CLOSE[400], "bad_request")
            return
        if self.trusted_peer:
            req.client_ip = self._client_ip()
        precheck = self._srv.precheck
        if precheck is not None:  # every request on the listener, found or not
            wait = precheck(req.client_ip)
            if wait:
                req._retry_after = abs(wait)
                self._reject(req, 429, "precheck", close=wait < 0)
                return
        route = self._srv.routes.get(path)
        if route is None:
            self._reject(req, 404, "not_found")
            return
        req._route = route
        if parser.get_method() != route.method:
            self._reject(req, 405, "method")
            return
        if self._cl > lim.max_body_bytes:
            conn.refuse(wire.REJECT_CLOSE[413], "body_too_large")
            return
        if self._expect and (self._cl > 0 or te is not None) and not req._http10:
            conn.continue_100(req)

    def on_body(self, body: bytes) -> None:
        if self.dead or self.req._reject:  # a refused request's body is read and dropped
            return
        n = self._body_len + len(body)
        if n > self._lim.max_body_bytes:  # chunked: only the running length tells
            self._conn.refuse(wire.REJECT_CLOSE[413], "body_too_large")
            return
        self._body_len = n
        req = self.req
        if not req.body:
            req.body = body  # the common case: one chunk, kept as is
        elif self._body_buf is None:
            self._body_buf = bytearray(req.body)
            self._body_buf += body
        else:
            self._body_buf += body

    def on_message_complete(self) -> None:
        if self.dead:
            return
        req = self.req
        self.phase = IDLE
        req._keep_alive = self._parser.should_keep_alive()
        if self._body_buf is not None:
            req.body = bytes(self._body_buf)
        req._pending = True
        req._t0 = perf_counter()
        self._conn.complete(req)

    # -- pre-body checks ---------------------------------------------------------------------

    def _reject(self, req: Request, status: int, reason: str, close: bool = False) -> None:
        """Answer `status` (404, 405, 429) without the handler. The connection stays when the
        body can be read and dropped cheaply (none, or declared and at most `SKIP_BODY_MAX`,
        without a 100-continue to wait for); otherwise, or when `close`, answer and close."""
        req._reject = status
        cl = self._cl
        te = self._te is not None
        if not close and not te and (cl == 0 or (cl <= self._skip_max and not self._expect)):
            self._srv.metrics.reject(reason)  # answered once the body is in (protocol._start)
            return
        self._conn.refuse(early_answer(req, False), reason)

    def _resolve_host(self, req: Request) -> bool:
        raw = self._host_raw
        if raw is None:
            return req._http10  # HTTP/1.1 requires Host (RFC 9112 3.2)
        if raw != self._host_cache:
            m = _HOST_RE.fullmatch(raw.rstrip(_OWS).lower())
            if m is None:
                return False
            self._host_cache = raw
            self._host_value = m.group(1).decode("ascii")
        req.host = self._host_value
        return True

    def _client_ip(self) -> str:
        return client_ip(self.peer, self._forwarded_for, self._real_ip, self._srv.trusted)
