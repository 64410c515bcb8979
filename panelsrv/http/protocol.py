"""HttpProtocol: one TCP connection, one httptools parser, one reused Request.

Transport layer. Imports asyncio, httptools and panelsrv.http.{wire, clientip}; never
panelsrv.api, panelsrv.store or asyncpg: the listener hands it routes whose handlers are plain
callables. No leniency of llhttp is ever enabled.

Invariants:
- One request in flight per connection; responses leave in request order, each as ONE write.
  Requests a client pipelined into the same read are parsed ahead and queued (at most
  `max_pipelined`), and reading stays paused until the queue drains.
- Rejections never raise out of a parser callback (that would break the parser): a request that
  may keep its connection gets `_reject` set; otherwise `_refuse` stores the final response,
  stops reading and feeding, and the connection closes after that response.
- After a parser error nothing is fed again: 400 (after what is already queued), then close.
- Closing after a response half-closes first and drains the client's leftovers briefly, so the
  kernel does not reset the connection under the response the client has yet to read.
- One lazy TimerHandle per connection: phases move `_deadline`; the timer is re-armed only when
  a deadline moves earlier than it, or when it fires early.
- Memory per connection is bounded: head bytes, body bytes, queued requests, and the write buffer
  (pause_writing stops all processing until the client reads).
"""

from __future__ import annotations

import asyncio
import logging
import re
import traceback
from collections import deque
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import TYPE_CHECKING, NamedTuple

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from panelsrv.errors import ERROR_BODIES, Code
from panelsrv.http import wire
from panelsrv.http.clientip import client_ip, normalize

if TYPE_CHECKING:
    from panelsrv.http.listener import HttpServer

log = logging.getLogger("panelsrv.http")
access_log = logging.getLogger("panelsrv.access")

INF = float("inf")
LINGER_SECONDS = 5.0  # after a closing response, how long the client's leftovers are drained

_IDLE, _HEAD, _BODY, _CLOSING = range(4)  # where the parser is (the timer's meaning follows)

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

Handler = Callable[["Request"], Awaitable[tuple[int, bytes, bytes]]]


class Route(NamedTuple):
    """What a path answers: its one method, the handler, and the Content-Type line it sends."""

    method: bytes
    handler: Handler
    content_type: bytes = wire.JSON


class Limits(NamedTuple):
    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 256 * 1024
    header_timeout: float = 10.0  # absolute, from the request's first byte
    body_timeout: float = 30.0  # absolute, from the end of the headers
    keepalive_timeout: float = 60.0  # idle between requests
    write_timeout: float = 30.0  # how long the client may leave our writes unread
    max_connections: int = 10_000  # per process
    max_headers: int = 100
    max_pipelined: int = 64  # requests parsed ahead of the one in flight


class Request:
    """One request as the handler sees it. The protocol reuses it for the connection's next
    request once the response is written, so a handler must not keep it beyond its return.

    `host` is the Host header lowercased without port; `content_type` lowercased (b"" if none);
    `query` the raw query string; `idempotency_key` the header decoded latin-1 (one char per
    byte, unvalidated); `body` the whole body; `id` a per-process request number for logs
    (`request_id` is the same as text); `action` may be set by the handler to label metrics.
    """

    __slots__ = (
        "_http10",
        "_keep_alive",
        "_pending",
        "_reject",
        "_route",
        "_t0",
        "action",
        "body",
        "client_ip",
        "content_type",
        "host",
        "id",
        "idempotency_key",
        "query",
    )

    def __init__(self) -> None:
        self._pending = False  # parsed and not yet answered: not to be reused
        self._reset(0, "")

    @property
    def request_id(self) -> str:
        """`id` as text, for log lines."""
        return str(self.id)

    def _reset(self, rid: int, ip: str) -> None:
        self.id = rid
        self.client_ip = ip
        self.host = ""
        self.content_type = b""
        self.query = b""
        self.idempotency_key: str | None = None
        self.body = b""
        self.action = ""
        self._reject = 0  # 404 / 405 answered without the handler, keeping the connection
        self._route: Route | None = None
        self._keep_alive = False
        self._http10 = False
        self._t0 = 0.0


def _log_failure(rid: int, exc: BaseException) -> None:
    # One line, no exception message: messages can quote request values (keys).
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f"{frame.filename}:{frame.lineno} in {frame.name}" if frame else "?"
    log.error("request %d: handler raised %s at %s", rid, type(exc).__name__, where)


def _origin_path(target: bytes) -> bytes:
    """The path of an absolute-form target (`http://host/path`), which servers must accept."""
    start = target.find(b"://")
    if start <= 0:
        return target
    slash = target.find(b"/", start + 3)
    return target[slash:] if slash >= 0 else b"/"


class HttpProtocol(asyncio.Protocol):
    __slots__ = (
        "_body_buf",
        "_body_len",
        "_busy",
        "_cl",
        "_closing",
        "_continue",
        "_dead",
        "_deadline",
        "_eof",
        "_expect",
        "_final",
        "_forwarded_for",
        "_head",
        "_host_cache",
        "_host_raw",
        "_host_value",
        "_invalid",
        "_ip_cache",
        "_ip_value",
        "_lim",
        "_loop",
        "_nheaders",
        "_parser",
        "_peer",
        "_phase",
        "_queue",
        "_raw",
        "_read_paused",
        "_real_ip",
        "_req",
        "_seq",
        "_srv",
        "_task",
        "_te",
        "_timer",
        "_timer_at",
        "_transport",
        "_trusted_peer",
        "_url",
        "_write_paused",
    )

    def __init__(self, server: HttpServer) -> None:
        self._srv = server
        self._lim = server.limits
        self._loop = server.loop
        self._transport: asyncio.Transport | None = None
        self._parser = HttpRequestParser(self)
        self._req = Request()
        self._busy: Request | None = None
        self._queue: deque[Request] | None = None
        self._final: bytes | None = None
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = INF
        self._deadline = INF
        self._dead = True  # until connection_made accepts the connection
        self._closing = False
        self._eof = False
        self._read_paused = False
        self._write_paused = False
        self._phase = _IDLE
        self._seq = 0
        self._raw = 0
        self._peer = ""
        self._trusted_peer = False
        self._host_cache: bytes | None = None
        self._host_value = ""
        self._ip_cache: tuple[bytes | None, bytes | None] | None = None
        self._ip_value = ""
        self._begin()

    def _begin(self) -> None:
        """Reset the per-message scratch (kept on the connection, not on the Request)."""
        self._url: bytes | bytearray = b""
        self._cl = 0
        self._te = False
        self._expect = False
        self._continue = False
        self._forwarded_for: bytes | None = None
        self._real_ip: bytes | None = None
        self._host_raw: bytes | None = None
        self._invalid = False
        self._head = 0
        self._nheaders = 0
        self._body_len = 0
        self._body_buf: bytearray | None = None
        self._raw = 0

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        srv = self._srv
        peer = transport.get_extra_info("peername")
        ip = normalize(peer[0]) if isinstance(peer, tuple) else ""
        refusal: bytes | None = None
        if len(srv.conns) >= self._lim.max_connections:
            srv.metrics.reject("connections")
            refusal = wire.REJECT_CLOSE[503]
        elif ip in srv.trusted:
            self._trusted_peer = True
        elif srv.connect_check is not None:
            refusal = srv.connect_check(ip)
            if refusal is not None:
                srv.metrics.reject("precheck")
        if refusal is not None:
            transport.write(refusal)
            transport.close()
            return
        self._transport = transport
        self._peer = ip
        self._dead = False
        srv.conns.add(self)
        self._set_deadline(self._loop.time() + self._lim.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self._dead:
            return  # lingering, or refused: the parser is never fed again
        phase, seq = self._phase, self._seq
        try:
            self._parser.feed_data(data)
        except (HttpParserError, HttpParserUpgrade):
            self._refuse(wire.REJECT_CLOSE[400], "bad_request")
            return
        # A read that began and ended inside one message's head (or body) is wholly that part:
        # this bounds what httptools buffers in a header it has not finished.
        if phase == self._phase and seq == self._seq and not self._dead:
            if phase == _HEAD:
                self._raw += len(data)
                if self._raw > self._lim.max_header_bytes:
                    self._refuse(wire.REJECT_CLOSE[431], "headers_too_large")
            elif phase == _BODY:
                # chunk framing and trailers ride on top of the body; allow generous overhead
                self._raw += len(data)
                if self._raw > 4 * self._lim.max_body_bytes + self._lim.max_header_bytes:
                    self._refuse(wire.REJECT_CLOSE[413], "body_too_large")

    def eof_received(self) -> bool:
        self._eof = True
        if self._busy is not None or self._queue or self._final is not None:
            self._closing = True  # the client half-closed after its requests: answer, then close
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is None:
            return  # refused in connection_made
        self._transport = None
        self._dead = True
        self._queue = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is None:
            self._srv.release(self)
        # else: the handler runs to completion (it may be moving money); _finish releases us

    def pause_writing(self) -> None:
        self._write_paused = True
        self._pause_reading()
        self._set_deadline(self._loop.time() + self._lim.write_timeout)

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._busy is not None:
            self._deadline = INF
        elif self._queue or self._final is not None or self._phase != _CLOSING:
            self._next()
        else:  # lingering: the last response is flushing
            self._set_deadline(self._loop.time() + LINGER_SECONDS)

    # -- parser callbacks (only those used are defined: httptools wires no others) ----------

    def on_message_begin(self) -> None:
        if self._dead:
            return
        req = self._req
        if req._pending:  # parsed ahead while the previous request is in flight (rare)
            req = self._req = Request()
        srv = self._srv
        srv.next_id += 1
        req._reset(srv.next_id, self._peer)
        self._begin()
        self._seq += 1
        self._phase = _HEAD
        self._set_deadline(self._loop.time() + self._lim.header_timeout)

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
            self._refuse(wire.REJECT_CLOSE[431], "headers_too_large")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._phase != _HEAD:
            return  # a trailer (never trusted) or a refused message
        self._head += len(name) + len(value) + 4
        self._nheaders += 1
        if self._head > self._lim.max_header_bytes or self._nheaders > self._lim.max_headers:
            self._refuse(wire.REJECT_CLOSE[431], "headers_too_large")
            return
        key = _WANTED.get(name.lower())
        if key is None:
            return
        if key == _CONTENT_LENGTH:
            self._cl = int(value)  # llhttp already refused anything but digits, and duplicates
        elif key == _TRANSFER_ENCODING:
            self._te = True
        elif key == _HOST:
            self._invalid |= self._host_raw is not None
            self._host_raw = value
        elif key == _CONTENT_TYPE:
            req = self._req
            self._invalid |= bool(req.content_type)
            req.content_type = value.rstrip(_OWS).lower()
        elif key == _EXPECT:
            self._expect = value.rstrip(_OWS).lower() == b"100-continue"
        elif key == _IDEMPOTENCY_KEY:
            req = self._req
            self._invalid |= req.idempotency_key is not None
            req.idempotency_key = value.rstrip(_OWS).decode("latin-1")
        elif self._trusted_peer:  # forwarding headers count only from our own proxies
            if key == _FORWARDED_FOR:
                xff = self._forwarded_for
                self._forwarded_for = value if xff is None else xff + b"," + value
            else:
                self._invalid |= self._real_ip is not None
                self._real_ip = value

    def on_headers_complete(self) -> None:
        if self._dead:
            return
        req, parser, lim = self._req, self._parser, self._lim
        self._phase = _BODY
        self._raw = 0
        self._set_deadline(self._loop.time() + lim.body_timeout)
        version = parser.get_http_version()
        # Only HTTP/1.1 and 1.0; a 1.0 request with Transfer-Encoding has faulty framing
        # (RFC 9112 6.1); an Upgrade would hand the rest of the stream to another protocol.
        if (version != "1.1" and (version != "1.0" or self._te)) or parser.should_upgrade():
            self._refuse(wire.REJECT_CLOSE[400], "bad_request")
            return
        req._http10 = version == "1.0"
        has_body = self._cl > 0 or self._te
        url = self._url
        q = url.find(b"?")
        if q >= 0:
            req.query = bytes(url[q + 1 :])
            url = url[:q]
        path = url if type(url) is bytes else bytes(url)
        if path[:1] != b"/":
            path = _origin_path(path)
        route = self._srv.routes.get(path)
        if route is None:
            self._reject(req, 404, "not_found", has_body)
            return
        req._route = route
        if parser.get_method() != route.method:
            self._reject(req, 405, "method", has_body)
            return
        if not self._resolve_host(req) or self._invalid:
            self._refuse(wire.REJECT_CLOSE[400], "bad_request")
            return
        if self._trusted_peer:
            req.client_ip = self._client_ip()
        precheck = self._srv.precheck
        if precheck is not None:
            refusal = precheck(req.client_ip)
            if refusal is not None:
                self._refuse(refusal, "precheck")
                return
        if self._cl > lim.max_body_bytes:
            self._refuse(wire.REJECT_CLOSE[413], "body_too_large")
            return
        if self._expect and has_body and not req._http10:
            transport = self._transport
            if transport and self._busy is None and not self._queue and not self._write_paused:
                transport.write(wire.CONTINUE_100)
            else:
                self._continue = True  # sent when the requests ahead of it are answered

    def on_body(self, body: bytes) -> None:
        if self._dead:
            return
        n = self._body_len + len(body)
        if n > self._lim.max_body_bytes:  # chunked: only the running length tells
            self._refuse(wire.REJECT_CLOSE[413], "body_too_large")
            return
        self._body_len = n
        req = self._req
        if not req.body:
            req.body = body  # the common case: one chunk, kept as is
        elif self._body_buf is None:
            self._body_buf = bytearray(req.body)
            self._body_buf += body
        else:
            self._body_buf += body

    def on_message_complete(self) -> None:
        if self._dead:
            return
        req = self._req
        self._phase = _IDLE
        req._keep_alive = self._parser.should_keep_alive()
        if self._body_buf is not None:
            req.body = bytes(self._body_buf)
        req._pending = True
        req._t0 = perf_counter()
        if self._busy is None and not self._queue and not self._write_paused:
            if self._start(req) and self._busy is None:
                self._next()
            return
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        if len(queue) >= self._lim.max_pipelined:
            # Answer what is queued, then close; the client resends the rest (RFC 9112 9.3.2).
            self._srv.metrics.reject("pipelined")
            self._dead = True
            self._phase = _CLOSING
            return
        queue.append(req)

    # -- pre-body checks ---------------------------------------------------------------------

    def _reject(self, req: Request, status: int, reason: str, has_body: bool) -> None:
        """404/405: keep the connection when there is no body to skip, else answer and close."""
        self._srv.metrics.reject(reason)
        if not has_body:
            req._reject = status
            return
        if status == 404:
            self._refuse(wire.REJECT_CLOSE[404], None)
        else:
            self._refuse(self._render_405(req, False), None)

    def _render_405(self, req: Request, keep: bool) -> bytes:
        route = req._route
        assert route is not None
        body = ERROR_BODIES[Code.METHOD_NOT_ALLOWED]
        return wire.render(405, body, keep, wire.allow(route.method))

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
        key = (self._forwarded_for, self._real_ip)
        if key != self._ip_cache:
            self._ip_cache = key
            self._ip_value = client_ip(self._peer, key[0], key[1], self._srv.trusted)
        return self._ip_value

    def _refuse(self, response: bytes, reason: str | None) -> None:
        """End the connection with `response`, after the answers already owed; read no more."""
        if self._dead:
            return
        if reason is not None:
            self._srv.metrics.reject(reason)
            log.debug("request %d refused: %s", self._req.id, reason)
        self._dead = True
        self._phase = _CLOSING
        self._final = response
        self._pause_reading()
        if self._busy is None and not self._queue and not self._write_paused:
            self._next()

    # -- answering ---------------------------------------------------------------------------

    def _start(self, req: Request) -> bool:
        """Answer a rejected request now, or run the handler; False when the connection ends."""
        status = req._reject
        if status:
            keep = req._keep_alive and not self._closing and not req._http10
            if status == 404:
                data = wire.REJECT_KEEP[404] if keep else wire.REJECT_CLOSE[404]
            else:
                data = self._render_405(req, keep)
            return self._finish(req, status, data, keep)
        self._busy = req
        self._pause_reading()
        self._deadline = INF  # the handler's time is not the client's; the timer idles
        self._task = self._loop.create_task(self._run(req))
        return True

    async def _run(self, req: Request) -> None:
        route = req._route
        assert route is not None
        try:
            status, body, extra = await route.handler(req)
            keep = req._keep_alive and not self._closing
            if keep and req._http10:
                extra += wire.KEEP_ALIVE
            data = wire.render(status, body, keep, extra, route.content_type)
        except Exception as exc:
            _log_failure(req.id, exc)
            status = 500
            keep = req._keep_alive and not self._closing and not req._http10
            data = wire.render(500, ERROR_BODIES[Code.INTERNAL], keep)
        self._task = None
        if self._finish(req, status, data, keep):
            self._next()

    def _finish(self, req: Request, status: int, data: bytes, keep: bool) -> bool:
        """Write one response; False when the connection ends with it (or already has)."""
        srv = self._srv
        srv.metrics.request_done(req.action, status, perf_counter() - req._t0)
        if srv.access_log:
            access_log.info(
                "%s %d %d %.1fms id=%d %s",
                req.client_ip,
                status,
                len(data),
                (perf_counter() - req._t0) * 1e3,
                req.id,
                req.action or "-",
            )
        req._pending = False
        self._busy = None
        transport = self._transport
        if transport is None:
            srv.release(self)
            return False
        transport.write(data)
        if not keep:
            self._linger()
            return False
        return True

    def _next(self) -> None:
        """Nothing is in flight: answer what is queued, then the final word, or go back to
        reading with the deadline of whatever the parser is in the middle of."""
        queue = self._queue
        while queue and not self._write_paused:
            if not self._start(queue.popleft()) or self._busy is not None:
                return
        if self._write_paused or self._busy is not None or self._transport is None:
            return  # resume_writing or the handler's completion calls us again
        final = self._final
        if final is not None:
            self._final = None
            self._srv.metrics.request_done("", int(final[9:12]), 0.0)
            self._transport.write(final)
            self._linger()
            return
        if self._dead or self._closing:
            self._linger()
            return
        now = self._loop.time()
        if self._phase == _IDLE:
            self._set_deadline(now + self._lim.keepalive_timeout)
        elif self._phase == _HEAD:
            self._set_deadline(now + self._lim.header_timeout)
        else:
            if self._continue:
                self._continue = False
                self._transport.write(wire.CONTINUE_100)
            self._set_deadline(now + self._lim.body_timeout)
        self._resume_reading()

    def _linger(self) -> None:
        """Half-close after the last response and drain the client's leftovers for a while."""
        transport = self._transport
        self._dead = True
        self._phase = _CLOSING
        self._queue = None
        self._final = None
        if transport is None:
            return
        if self._eof or not transport.can_write_eof():
            transport.close()  # nothing more can arrive to be reset by
            return
        transport.write_eof()
        self._resume_reading()
        self._set_deadline(self._loop.time() + LINGER_SECONDS)
        self._srv.settle()

    # -- flow control and the one timer -------------------------------------------------------

    def _pause_reading(self) -> None:
        if not self._read_paused and self._transport is not None:
            self._read_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._read_paused and self._transport is not None and not self._write_paused:
            self._read_paused = False
            self._transport.resume_reading()

    def _set_deadline(self, when: float) -> None:
        self._deadline = when
        if when < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(when, self._on_timer)
            self._timer_at = when

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = INF
        transport = self._transport
        if transport is None:
            return
        deadline = self._deadline
        if self._loop.time() < deadline:
            if deadline != INF:
                self._set_deadline(deadline)  # fired early: the deadline moved on
            return
        if self._write_paused:
            self._srv.metrics.reject("write_timeout")
            transport.abort()
        elif self.lingering:
            transport.abort()
        elif self._busy is not None or self._queue or self._final is not None:
            return  # a deadline of a request parsed ahead; _next() sets a fresh one
        else:
            if self._phase != _IDLE:
                reason = "header_timeout" if self._phase == _HEAD else "body_timeout"
                self._srv.metrics.reject(reason)
                log.debug("request %d closed: %s", self._req.id, reason)
            self._dead = True
            transport.close()

    # -- listener control --------------------------------------------------------------------

    @property
    def lingering(self) -> bool:
        """Nothing more to answer: only the client's leftovers are being drained."""
        return (
            self._phase == _CLOSING
            and self._busy is None
            and not self._queue
            and self._final is None
            and self._task is None
        )

    def shutdown(self) -> None:
        """Stop after the request in progress (if any); close now when idle."""
        self._closing = True
        if (
            self._transport is not None
            and self._busy is None
            and not self._queue
            and self._phase == _IDLE
        ):
            self._dead = True
            self._transport.close()

    def abort(self) -> None:
        """The grace period is over: drop the connection and stop its handler."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._transport is not None:
            self._transport.abort()
