"""Reading requests off one connection, sans I/O: bytes in, events out.

Transport layer: imports httptools and panelsrv.http.{clientip, request, syntax, wire}; never the
protocol or the listener. A Reader is given, once, what it reads by (`Rules`: bounds, routes,
the per-request precheck, the trusted proxies, the request numbering) and where its events go
(a `Sink`); `feed(bytes)` is its one input and `close()` stops it. It reads no clock and writes
to no socket: each event says what happened and the connection decides what that means.

Events (the Sink's methods):
- `complete(req)`: a whole request (`req._reject` set: answered without its handler, 404, 405
  or 429 with its body read and dropped);
- `rejected(reason)`: such a request was refused, counted now, answered in its turn;
- `refuse(response, reason)`: the last word; the Reader has closed itself (reads no more);
- `continue_100(req)`: the request's headers passed, its body may be invited (RFC 9110 10.1.1);
- `deadline(seconds)`: the next part (a head, a body) must arrive within `seconds` from now.

Pre-body checks run in `on_headers_complete` (cheapest first: framing and transfer coding,
target and Host, the per-IP precheck, path and method, the declared size). Only the callbacks
defined here are wired by httptools.

llhttp skips any CR/LF run before a request line and any run of spaces inside it, which a
strict front proxy reads otherwise: the Reader allows one CRLF before it and one space between
its parts (else 400, close). httptools gives no offsets, so each read is fed in pieces that start
at a message boundary (a message begun earlier is fed up to its end first), and where a message
ends inside a piece is worked out (`syntax`) only when something follows it.

State: `phase` (IDLE between messages, HEAD, BODY, CLOSED), written only here. Invariants: a
callback never raises (that would leave the parser broken); once CLOSED, nothing is fed to the
parser again and late callbacks of the same read are ignored; header bytes, header count, body
bytes and what httptools may buffer in an unfinished header are all bounded; no request is
served whose first bytes were not checked (when a read defeats the bookkeeping, the Reader
closes after the request it was in).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from time import perf_counter
from typing import NamedTuple, Protocol

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from panelsrv.http import syntax, wire
from panelsrv.http.clientip import TrustedProxies, client_ip
from panelsrv.http.request import Bounds, Request, Route

IDLE, HEAD, BODY, CLOSED = range(4)  # the Reader's phase: between messages, in one, no more

_HOST, _CONTENT_LENGTH, _TRANSFER_ENCODING, _CONTENT_TYPE, _EXPECT = range(1, 6)
_IDEMPOTENCY_KEY, _FORWARDED_FOR, _REAL_IP, _COOKIE = range(6, 10)
_WANTED = {
    b"host": _HOST,
    b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"content-type": _CONTENT_TYPE,
    b"expect": _EXPECT,
    b"idempotency-key": _IDEMPOTENCY_KEY,
    b"x-forwarded-for": _FORWARDED_FOR,
    b"x-real-ip": _REAL_IP,
    b"cookie": _COOKIE,
}
_OWS = b" \t"
_CODING_REASONS = {400: "bad_request", 501: "not_implemented"}
# `_piece_seq` of a piece in which a message may end at an unknown place: the read was stepped
# through MAX_CHUNK_STEPS times already; the connection ends after that message
_LOST = -1
MAX_CHUNK_STEPS = 64  # CRLF CRLFs inside a chunked body fed one by one per read, at most
# A refused request with a declared body up to this size is read and dropped, keeping the
# connection (cheaper for both sides than a reconnect); a larger or chunked one closes it.
SKIP_BODY_MAX = 16 * 1024


class Rules(NamedTuple):
    """What every Reader of a listener reads by, built once: `precheck(client_ip)` answers 0
    to admit, else a 429's Retry-After seconds (negative: and close); `next_id()` numbers
    requests across the listener's connections."""

    bounds: Bounds
    routes: Mapping[bytes, Route]
    precheck: Callable[[str], int] | None
    trusted: TrustedProxies
    next_id: Callable[[], int]


class Sink(Protocol):
    """Where a Reader's events go (the connection)."""

    def complete(self, req: Request) -> None: ...

    def rejected(self, reason: str) -> None: ...

    def refuse(self, response: bytes, reason: str) -> None: ...

    def continue_100(self, req: Request) -> None: ...

    def deadline(self, seconds: float) -> None: ...


class _Detached:
    """A closed Reader's sink, and the callbacks of its parser: nothing reaches them (every
    event and feed stops at CLOSED). Its parser calls the Reader back and the Reader calls its
    connection, so a Reader that kept both would hold the three in a cycle, freed by the cycle
    collector, whose full collections grow with dropped connections and stall every one still
    open (50 ms at 500 connections a second); without it they go by reference count."""

    def complete(self, req: Request) -> None:
        pass

    def rejected(self, reason: str) -> None:
        pass

    def refuse(self, response: bytes, reason: str) -> None:
        pass

    def continue_100(self, req: Request) -> None:
        pass

    def deadline(self, seconds: float) -> None:
        pass


_DETACHED = _Detached()
_DETACHED_PARSER = HttpRequestParser(_DETACHED)


class Reader:
    __slots__ = (
        "_at",
        "_body_buf",
        "_body_len",
        "_cl",
        "_expect",
        "_fed",
        "_forwarded_for",
        "_head",
        "_host_cache",
        "_host_raw",
        "_host_value",
        "_invalid",
        "_lead",
        "_lim",
        "_line_end",
        "_nheaders",
        "_parser",
        "_piece",
        "_piece_seq",
        "_raw",
        "_real_ip",
        "_rules",
        "_seq",
        "_sink",
        "_skip_max",
        "_tail",
        "_te",
        "_url",
        "peer",
        "phase",
        "req",
        "trusted_peer",
    )

    def __init__(self, sink: Sink, rules: Rules, peer: str, trusted_peer: bool) -> None:
        """A Reader for one connection from `peer` (its forwarding headers count only when
        `trusted_peer`)."""
        self._sink = sink
        self._rules = rules
        self._lim = lim = rules.bounds
        self._skip_max = min(SKIP_BODY_MAX, lim.max_body_bytes)
        self._parser = HttpRequestParser(self)
        self.req = Request()  # the one being parsed
        self.phase = IDLE
        self.peer = peer
        self.trusted_peer = trusted_peer
        self._seq = 0
        self._host_cache: bytes | None = None
        self._host_value = ""
        self._piece = b""  # the part of a read being fed, which starts at a message boundary
        self._piece_seq = 0  # `_seq` when it began: a later message in it follows another
        self._lead = b""  # CR/LF received since the last message ended (b"", b"\r" or b"\r\n")
        # the message being read: where it starts in `_piece` (-1: in an earlier read); the
        # last byte of its request line while that is unfinished; the last bytes fed of its
        # head or chunked body while that is unfinished (each ends with a CRLF CRLF)
        self._at = 0
        self._line_end: bytes | None = None
        self._tail = b""
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
        self._raw = 0  # bytes of the head (request line on) or body read in earlier pieces
        self._fed = 0  # length of the piece `_feed` is feeding

    def close(self) -> None:
        """Read no more: whatever arrives from now on is dropped, no event follows (the parser
        and the sink are let go: `_Detached`)."""
        self.phase = CLOSED
        self._sink = _DETACHED
        self._parser = _DETACHED_PARSER

    def feed(self, data: bytes) -> None:
        """Bytes the client sent, in order; events go to the sink while they are parsed."""
        if not data:  # an empty read says nothing (and a piece must end in a byte)
            return
        phase = self.phase
        if phase != IDLE:
            if phase == CLOSED:
                return  # lingering, or refused: the parser is never fed again
            data = self._feed_on(data)
            if not data or self.phase == CLOSED:
                return
        self._piece = data
        self._piece_seq = self._seq
        try:  # (no byte bound here: a piece that starts at a boundary starts a message)
            self._parser.feed_data(data)
        except (HttpParserError, HttpParserUpgrade):
            self._bad_request()
        else:  # (CR/LF left after the last message would end the piece with a byte < 14)
            if self.phase != IDLE or data[-1] < 14:
                self._piece_end(data)
        self._piece = b""

    def _piece_end(self, data: bytes) -> None:
        """A piece fed whole: what it left unfinished is checked while its bytes are here."""
        phase = self.phase
        if phase == IDLE:  # after the last message, only CR/LF llhttp skipped: an empty line?
            self._lead_in(data[self._after() if self._seq != self._piece_seq else 0 :])
        elif phase != CLOSED:  # a message goes on in the next read (it began here)
            if phase == HEAD and self._at >= 0:  # its request line, checked while it is here
                at, self._at = self._at, -1
                self._raw = len(data) - _line_start(data, at)
                if self._start_ok(data, at) and self._raw > self._lim.max_header_bytes:
                    self._refuse(wire.REJECT_CLOSE[431], "headers_too_large")
            self._tail = data[-3:]  # (the bytes before the message hold no CRLF CRLF with it)

    def _feed_on(self, data: bytes) -> bytes:
        """Feed the rest of a message begun in an earlier read, up to its end; return what
        follows it, which starts at a message boundary (b"" if nothing does)."""
        steps = 0
        while self.phase != IDLE and self.phase != CLOSED:
            self._piece_seq = self._seq  # the pieces below end where the message may end
            if self.phase == HEAD:
                if self._line_end is not None and not self._line_on(data):
                    return b""
                cut = syntax.crlf2_end(self._tail, data)
            elif self._te is None:
                cut = self._cl - self._body_len
            elif steps < MAX_CHUNK_STEPS:
                steps += 1
                cut = syntax.crlf2_end(self._tail, data)
            else:  # an adversarial body: feed the rest at once; if it ends in it, stop there
                self._piece_seq = _LOST
                self._feed(data)
                return b""
            if cut < 0 or cut >= len(data):
                self._feed(data)
                return b""
            self._feed(data[:cut])
            data = data[cut:]
        return data

    def _feed(self, piece: bytes) -> None:
        phase, seq = self.phase, self._seq
        self._fed = len(piece)
        try:
            self._parser.feed_data(piece)
        except (HttpParserError, HttpParserUpgrade):
            self._bad_request()
            return
        now = self.phase
        # A piece that began and ended inside one message's head (or body) is wholly that part:
        # this bounds what httptools buffers in a header it has not finished.
        if phase == now and seq == self._seq and now != CLOSED:
            self._raw += len(piece)
            lim = self._lim
            if phase == HEAD and self._raw > lim.max_header_bytes:
                self._refuse(wire.REJECT_CLOSE[431], "headers_too_large")
            # chunk framing and trailers ride on top of a body: allow generous overhead
            elif phase == BODY and self._raw > 4 * lim.max_body_bytes + lim.max_header_bytes:
                self._refuse(wire.REJECT_CLOSE[413], "body_too_large")
        if now == HEAD or (now == BODY and self._te is not None):
            self._tail = piece[-3:] if len(piece) >= 3 else (self._tail + piece)[-3:]

    def _after(self) -> int:
        """Where the message that just completed in `_piece` (it began there) ends."""
        data = self._piece
        at = data.find(syntax.CRLF2, self._at) + 4
        return at + self._cl if self._te is None else syntax.chunked_end(data, at)

    def _lead_in(self, skipped: bytes) -> None:
        """CR/LF llhttp skipped between messages: one CRLF is allowed (RFC 9112 2.2)."""
        lead = self._lead + skipped
        if b"\r\n".startswith(lead):
            self._lead = lead
        else:
            self._bad_request()

    def _start_ok(self, data: bytes, at: int) -> bool:
        """A message's bytes from `data[at]`: at most one empty line before the request line,
        one space between its parts. Refused when not."""
        at, self._lead = syntax.line_start(data, at, self._lead), b""
        if at < 0:
            self._bad_request()
            return False
        return self._line_on(data, at)

    def _line_on(self, data: bytes, at: int = 0) -> bool:
        """The request line, from `data[at]` or going on from the previous read."""
        ok, self._line_end = syntax.spaced_once(data, at, self._line_end)
        if not ok:
            self._bad_request()
        return ok

    def _bad_request(self) -> None:
        self._refuse(wire.REJECT_CLOSE[400], "bad_request")

    def _refuse(self, response: bytes, reason: str) -> None:
        """The last word: close, then say so (once; a refusal of a late callback is dropped)."""
        if self.phase != CLOSED:
            self.phase = CLOSED
            self._sink.refuse(response, reason)

    # -- parser callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.phase == CLOSED:
            return
        req = self.req
        if req._pending:  # parsed ahead while the previous request is in flight (rare)
            req = self.req = Request()
        req._reset(self._rules.next_id(), self.peer)
        # where this message starts: at the piece's start, or after the previous one (whose
        # scratch is still here)
        at = 0 if self._seq == self._piece_seq else self._after()
        self._begin()
        self._seq += 1
        self.phase = HEAD
        self._sink.deadline(self._lim.header_timeout)
        self._at = at  # checked with the request line, once llhttp has parsed it

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
        if self.phase != HEAD:
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
        elif key == _COOKIE:  # several are one list (RFC 9113 8.2.3, RFC 6265 5.4)
            req = self.req
            cookie = value.rstrip(_OWS)
            req.cookie = cookie if not req.cookie else req.cookie + b"; " + cookie
        elif self.trusted_peer:  # forwarding headers count only from our own proxies
            if key == _FORWARDED_FOR:
                xff = self._forwarded_for
                self._forwarded_for = value if xff is None else xff + b"," + value
            else:
                self._invalid |= self._real_ip is not None
                self._real_ip = value

    def on_headers_complete(self) -> None:
        if self.phase == CLOSED:
            return
        req, parser, lim, rules = self.req, self._parser, self._lim, self._rules
        # The head's bytes, request line to empty line, however the reads cut it: all in this
        # piece from where the message began, or the earlier pieces' and this one's, which
        # `_feed_on` cut where the head ends.
        at = self._at
        if at >= 0:
            data = self._piece
            head = data.find(syntax.CRLF2, at) + 4 - _line_start(data, at)
        else:
            head = self._raw + self._fed
        if head > lim.max_header_bytes:
            self._refuse(wire.REJECT_CLOSE[431], "headers_too_large")
            return
        self.phase = BODY
        self._raw = 0
        self._sink.deadline(lim.body_timeout)
        version = parser.get_http_version()
        te = self._te
        # Only HTTP/1.1 and 1.0; a 1.0 request with Transfer-Encoding has faulty framing
        # (RFC 9112 6.1); an Upgrade would hand the rest of the stream to another protocol.
        if (version != "1.1" and (version != "1.0" or te is not None)) or parser.should_upgrade():
            self._bad_request()
            return
        if te is not None and te != b"chunked":
            status = syntax.transfer_coding(te)
            if status:  # and the body is not read as plain chunked
                self._refuse(wire.REJECT_CLOSE[status], _CODING_REASONS[status])
                return
        method, url, at = parser.get_method(), self._url, self._at
        if at >= 0:  # the message began in this piece: check its start here
            # The strict line is `method SP target SP HTTP/d.d CRLF`, no empty line before it:
            # its LF is where that puts it (a run of spaces moves it on). Else look closer.
            data, line_feed = self._piece, at + len(method) + len(url) + 11
            strict = data[line_feed] == 10 and data[at] > 13 and not self._lead  # 13: CR
            if not strict and not self._start_ok(data, at):
                return
        req._http10 = version == "1.0"
        q = url.find(b"?")
        if q >= 0:
            req.query = bytes(url[q + 1 :])
            url = url[:q]
        path = url if type(url) is bytes else bytes(url)
        authority = None
        if path[:1] != b"/" and path != b"*":
            form = syntax.absolute_form(path)
            if form is None:
                self._bad_request()
                return
            authority, path = form
        if not self._resolve_host(req, authority) or self._invalid:
            self._bad_request()
            return
        if self.trusted_peer:
            req.client_ip = client_ip(self.peer, self._forwarded_for, self._real_ip, rules.trusted)
        precheck = rules.precheck
        if precheck is not None:  # every request on the listener, found or not
            wait = precheck(req.client_ip)
            if wait:
                req._retry_after = abs(wait)
                self._reject(req, 429, "precheck", close=wait < 0)
                return
        route = rules.routes.get(path)
        if route is None:
            self._reject(req, 404, "not_found")
            return
        req._route = route
        if method != route.method and (method != b"GET" or not route.takes_get):
            self._reject(req, 405, "method")
            return
        req.method = method
        if self._cl > lim.max_body_bytes:
            self._refuse(wire.REJECT_CLOSE[413], "body_too_large")
            return
        if self._expect and (self._cl > 0 or te is not None) and not req._http10:
            self._sink.continue_100(req)

    def on_body(self, body: bytes) -> None:
        if self.phase == CLOSED:
            return
        n = self._body_len = self._body_len + len(body)  # counted: the body's end is known
        req = self.req
        if req._reject:  # a refused request's body is read and dropped
            return
        if n > self._lim.max_body_bytes:  # chunked: only the running length tells
            self._refuse(wire.REJECT_CLOSE[413], "body_too_large")
            return
        if not req.body:
            req.body = body  # the common case: one chunk, kept as is
        elif self._body_buf is None:
            self._body_buf = bytearray(req.body)
            self._body_buf += body
        else:
            self._body_buf += body

    def on_message_complete(self) -> None:
        if self.phase == CLOSED:
            return
        req = self.req
        self.phase = IDLE
        req._keep_alive = self._parser.should_keep_alive()
        if self._piece_seq == _LOST:  # nothing after it could be checked: the last one read
            req._keep_alive = False
            self.phase = CLOSED
        if self._body_buf is not None:
            req.body = bytes(self._body_buf)
        req._pending = True
        req._t0 = perf_counter()
        self._sink.complete(req)

    # -- pre-body checks ---------------------------------------------------------------------

    def _reject(self, req: Request, status: int, reason: str, close: bool = False) -> None:
        """Answer `status` (404, 405, 429) without the handler. The connection stays when the
        body can be read and dropped cheaply (none, or declared and at most `SKIP_BODY_MAX`,
        without a 100-continue to wait for); otherwise, or when `close`, answer and close."""
        req._reject = status
        cl = self._cl
        te = self._te is not None
        if not close and not te and (cl == 0 or (cl <= self._skip_max and not self._expect)):
            self._sink.rejected(reason)  # answered once the body is in, in its turn
            return
        self._refuse(wire.early_answer(req.early_status(), False), reason)

    def _resolve_host(self, req: Request, authority: bytes | None) -> bool:
        """Host must be valid when sent, and sent in HTTP/1.1 (RFC 9112 3.2); an absolute-form
        target's authority names the host instead (3.2.2)."""
        raw = self._host_raw
        if raw is None:
            if not req._http10:
                return False
        elif raw != self._host_cache:
            name = syntax.host_name(raw)
            if name is None:
                return False
            self._host_cache = raw
            self._host_value = name
        if authority is not None:
            name = syntax.host_name(authority)
            if name is None:
                return False
            req.host = name
        elif raw is not None:
            req.host = self._host_value
        return True


def _line_start(data: bytes, at: int) -> int:
    """Past the CR/LF llhttp skipped before a message that begins at `data[at]` (whether that
    was one empty line is `_start_ok`'s to say): where its request line starts."""
    while data[at] in b"\r\n":
        at += 1
    return at
