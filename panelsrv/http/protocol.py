"""HttpProtocol: one TCP connection; its Reader parses, it answers.

Transport layer: imports asyncio and panelsrv.http.{reader, request, wire, clientip}, never the
listener (what it needs of it is `Conns`), panelsrv.api, panelsrv.store or asyncpg: handlers
arrive as plain callables on the routes. Time comes from a `Clock` (the event loop, or a fake
one in tests); the Reader is its Sink (`complete`, `rejected`, `refuse`, `continue_100`,
`deadline`), so every byte of request input reaches the protocol as one of those events.

The connection's state is `_state`, written only by `_to(event)` through `TRANSITIONS`:

    state           event    next            what it is (RFC 9112)
    NEW             open     READY           admitted (refused: 503 over a cap, 429 blocked)
    READY           run      BUSY            a handler awaits I/O; one request in flight (9.3.2)
    BUSY            done     READY           its response is written; queued ones next, in order
    BUSY_BLOCKED    done     BLOCKED
    GONE            done     GONE            the client left while the handler ran: answer dropped
    READY           pause    BLOCKED         the client is not reading our writes (flow control)
    BUSY            pause    BUSY_BLOCKED
    LINGER          pause    LINGER_BLOCKED
    BLOCKED         resume   READY
    BUSY_BLOCKED    resume   BUSY
    LINGER_BLOCKED  resume   LINGER
    READY           last     LINGER          the last response is out: half-close, drain (9.6)
    BLOCKED         last     LINGER_BLOCKED
    any             lost     GONE            the transport is gone (any state but NEW, GONE)

READY is "nothing owed": a complete request is answered at once (a request answered from memory
leaves it READY; only one whose handler awaits makes it BUSY). Two facts beside the state:
`_closing` (keep-alive withdrawn by the client's EOF, 9.6, or by stop(): what is owed is
answered with `Connection: close`, then `last`) and `_eof` (the client half-closed: nothing to
drain). Whether a response keeps the connection is the request's
(9.3: HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with keep-alive), withdrawn by
`_closing`. The one timer's deadline by state: READY follows the Reader's phase (between
requests `keepalive_timeout`, in a head `header_timeout`, in a body `body_timeout`, each set
when the phase begins: 9.5); BUSY none (a handler's time is not bounded here, it may be moving
money); the *_BLOCKED states `write_timeout`, then abort; LINGER `LINGER_SECONDS`, then abort.

Invariants:
- A request is answered at once only in READY; otherwise it waits in the queue (at most
  `max_pipelined`, then the Reader is closed and the connection ends after answering them).
  Responses leave in request order, each as ONE write call (a large body as the second buffer
  of the same writev, so it is never copied). Reading is paused outside READY and LINGER.
- A refusal (`refuse`) is answered after the responses already owed, then `last`; the Reader
  has closed itself. A parser error is such a refusal, with 400.
- Closing after a response half-closes first (LINGER) and drains the client's leftovers for a
  while, so the kernel does not reset the connection under a response the client has yet to read.
- One lazy timer per connection: each state or phase moves `_deadline`; the timer is re-armed
  only when a deadline moves earlier than it, or when it fires early.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections import deque
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Protocol

from panelsrv.errors import ERROR_BODIES, Code
from panelsrv.http import wire
from panelsrv.http.clientip import TrustedProxies, normalize
from panelsrv.http.reader import BODY, CLOSED, HEAD, IDLE, Reader, Rules
from panelsrv.http.request import Answer, Bounds, Request
from panelsrv.metrics import ServerMetrics

log = logging.getLogger("panelsrv.http")
access_log = logging.getLogger("panelsrv.access")

INF = float("inf")
LINGER_SECONDS = 5.0  # after a closing response, how long the client's leftovers are drained
LARGE_BODY = 4096  # a body this long is written after its head (writev), not copied into it

# The connection's states (the table above); the Reader's phases (IDLE, HEAD, BODY, CLOSED)
# are its own.
NEW, READY, BUSY, BLOCKED = "new", "ready", "busy", "blocked"
BUSY_BLOCKED, LINGER, LINGER_BLOCKED, GONE = "busy+blocked", "linger", "linger+blocked", "gone"
# By event, then state: two plain lookups on the hot path (no key tuple to build and hash).
TRANSITIONS: dict[str, dict[str, str]] = {
    "open": {NEW: READY},
    "run": {READY: BUSY},
    "done": {BUSY: READY, BUSY_BLOCKED: BLOCKED, GONE: GONE},
    "pause": {READY: BLOCKED, BUSY: BUSY_BLOCKED, LINGER: LINGER_BLOCKED},
    "resume": {BLOCKED: READY, BUSY_BLOCKED: BUSY, LINGER_BLOCKED: LINGER},
    "last": {READY: LINGER, BLOCKED: LINGER_BLOCKED},
    "lost": dict.fromkeys((READY, BUSY, BLOCKED, BUSY_BLOCKED, LINGER, LINGER_BLOCKED), GONE),
}
BLOCKED_STATES = (BLOCKED, BUSY_BLOCKED, LINGER_BLOCKED)
_LINGERING = (LINGER, LINGER_BLOCKED)
_READING = (READY, LINGER)  # where reading is not paused
_RUNNING = (BUSY, BUSY_BLOCKED)


class Timer(Protocol):
    """What `Clock.call_at` returns (an asyncio.TimerHandle)."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """Where the connection's time comes from: the event loop, or a fake clock in tests."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], object], /) -> Timer: ...


class Conns(Protocol):
    """What a connection needs of its listener (HttpServer): the shared settings, the counts it
    is admitted to and released from, and the metrics it reports to."""

    bounds: Bounds
    rules: Rules
    loop: asyncio.AbstractEventLoop
    metrics: ServerMetrics
    access_log: bool
    trusted: TrustedProxies

    @property
    def clock(self) -> Clock: ...

    def admit(self, conn: HttpProtocol, ip: str, trusted: bool) -> bytes | None: ...

    def release(self, conn: HttpProtocol) -> None: ...

    def settle(self) -> None: ...


def _log_failure(rid: int, exc: BaseException) -> None:
    # One line, no exception message: messages can quote request values (keys).
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f"{frame.filename}:{frame.lineno} in {frame.name}" if frame else "?"
    log.error("request %d: handler raised %s at %s", rid, type(exc).__name__, where)


class HttpProtocol(asyncio.Protocol):
    __slots__ = (
        "_clock",
        "_closing",
        "_deadline",
        "_eof",
        "_final",
        "_lim",
        "_queue",
        "_read_paused",
        "_reader",
        "_srv",
        "_state",
        "_task",
        "_timer",
        "_timer_at",
        "_transport",
    )

    def __init__(self, server: Conns) -> None:
        self._srv = server
        self._lim = server.bounds
        self._clock = server.clock
        self._state = NEW
        self._reader: Reader  # from connection_made, once admitted
        self._transport: asyncio.Transport | None = None
        self._queue: deque[Request] | None = None  # parsed ahead, waiting their turn
        self._final: bytes | None = None  # the last word, after everything queued
        self._task: asyncio.Task[None] | None = None
        self._timer: Timer | None = None
        self._timer_at = INF
        self._deadline = INF
        self._closing = False
        self._eof = False
        self._read_paused = False

    @property
    def state(self) -> str:
        """The connection's state (`TRANSITIONS`)."""
        return self._state

    def _to(self, event: str) -> str:
        """The one way `_state` changes; an event the table has no row for is a bug."""
        state = self._state = TRANSITIONS[event][self._state]
        return state

    def _owed(self) -> bool:
        """Something is still to be answered: a handler runs, requests wait, a last word."""
        return self._state in _RUNNING or bool(self._queue) or self._final is not None

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        srv = self._srv
        peer = transport.get_extra_info("peername")
        ip = normalize(peer[0]) if isinstance(peer, tuple) else ""
        trusted = ip in srv.trusted
        refusal = srv.admit(self, ip, trusted)
        if refusal is not None:
            transport.write(refusal)
            transport.close()
            return
        self._transport = transport
        self._reader = Reader(self, srv.rules, ip, trusted)
        self._to("open")
        self.deadline(self._lim.header_timeout)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)

    def eof_received(self) -> bool:
        self._eof = True
        if self._owed():
            self._closing = True  # the client half-closed after its requests: answer, then close
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._state == NEW or self._state == GONE:
            return  # refused in connection_made, or a second report of the same end
        self._to("lost")
        self._transport = None
        self._reader.close()
        self._queue = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is None:
            self._srv.release(self)
        # else: the handler runs to completion (it may be moving money); _finish releases us

    def pause_writing(self) -> None:
        self._to("pause")
        self._pause_reading()
        self.deadline(self._lim.write_timeout)

    def resume_writing(self) -> None:
        state = self._to("resume")
        if state == BUSY:
            self._deadline = INF
        elif state == LINGER:  # the last response is flushing
            self.deadline(LINGER_SECONDS)
        else:
            self._next()

    # -- the Reader's events (reader.Sink) ---------------------------------------------------

    def complete(self, req: Request) -> None:
        """A whole request: answer it now, or queue it behind the ones ahead."""
        if self._state == READY:
            if self._start(req) and self._state == READY:
                self._next()
            return
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        if len(queue) >= self._lim.max_pipelined:
            # Answer what is queued, then close; the client resends the rest (RFC 9112 9.3.2).
            self._srv.metrics.reject("pipelined")
            self._reader.close()
            return
        queue.append(req)

    def rejected(self, reason: str) -> None:
        """A request refused before its handler, answered in its turn: counted now."""
        self._srv.metrics.reject(reason)

    def refuse(self, response: bytes, reason: str) -> None:
        """End the connection with `response`, after the answers already owed."""
        self._srv.metrics.reject(reason)
        log.debug("request %d refused: %s", self._reader.req.id, reason)
        self._final = response
        self._pause_reading()
        if self._state == READY:
            self._next()

    def continue_100(self, req: Request) -> None:
        """`req`'s headers passed every check: invite its body (RFC 9110 10.1.1) now, or once
        the requests ahead are answered, if `req` is then still waiting for its body."""
        if self._state == READY and self._transport is not None:
            self._transport.write(wire.CONTINUE_100)
        else:
            req._continue = True

    def deadline(self, seconds: float) -> None:
        """The client's next step is due within `seconds` from now (the one timer, re-armed
        only when this is earlier than where it is set)."""
        when = self._deadline = self._clock.time() + seconds
        if when < self._timer_at:
            self._arm(when)

    # -- answering ---------------------------------------------------------------------------

    def _start(self, req: Request) -> bool:
        """Answer a rejected request now, or run the handler; False when the connection ends."""
        status = req._reject
        if status:
            keep = req._keep_alive and not self._closing and not req._http10
            return self._finish(req, status, wire.early_answer(req.early_status(), keep), keep)
        route = req._route
        assert route is not None
        try:
            answer = route.handler(req)
        except Exception as exc:
            return self._respond(req, None, exc)
        if type(answer) is tuple:  # answered from memory: no task, no pause
            return self._respond(req, answer, None)
        self._to("run")
        self._pause_reading()
        self._deadline = INF  # the handler's time is not the client's; the timer idles
        self._task = self._srv.loop.create_task(self._run(req, answer))  # type: ignore[arg-type]
        return True

    async def _run(self, req: Request, pending: Awaitable[Answer]) -> None:
        try:
            answer = await pending
        except Exception as exc:
            self._task = None
            self._to("done")
            if self._respond(req, None, exc):
                self._next()
            return
        self._task = None
        self._to("done")
        if self._respond(req, answer, None):
            self._next()

    def _respond(self, req: Request, answer: Answer | None, exc: Exception | None) -> bool:
        """Render the handler's answer (or a 500 for its exception) and write it."""
        route = req._route
        assert route is not None
        if answer is not None:
            status, body, extra = answer
            keep = req._keep_alive and not self._closing
            if keep and req._http10:
                extra += wire.KEEP_ALIVE
            if len(body) >= LARGE_BODY:
                head = wire.render_head(status, len(body), keep, extra, route.content_type)
                return self._finish(req, status, head, keep, body)
            data = wire.render(status, body, keep, extra, route.content_type)
        else:
            assert exc is not None
            _log_failure(req.id, exc)
            status = 500
            keep = req._keep_alive and not self._closing and not req._http10
            data = wire.render(500, ERROR_BODIES[Code.INTERNAL], keep)
        return self._finish(req, status, data, keep)

    def _finish(
        self, req: Request, status: int, data: bytes, keep: bool, body: bytes = b""
    ) -> bool:
        """Write one response (`data`, then `body` if given); False when the connection ends
        with it (or already has)."""
        srv = self._srv
        elapsed = perf_counter() - req._t0
        srv.metrics.request_done(req.action, status, elapsed)
        if srv.access_log:
            access_log.info(
                "%s %d %d %.1fms id=%d %s",
                req.client_ip,
                status,
                len(data) + len(body),
                elapsed * 1e3,
                req.id,
                req.action or "-",
            )
        req._pending = False
        transport = self._transport
        if transport is None:  # CLOSED: the client is gone
            srv.release(self)
            return False
        if body:
            transport.writelines((data, body))  # one writev: the body is not copied
        else:
            transport.write(data)
        if not keep:
            self._linger()
            return False
        return True

    def _next(self) -> None:
        """Nothing is in flight: answer what is queued, then the final word, or go back to
        reading with the deadline of whatever the parser is in the middle of."""
        queue = self._queue
        while queue and self._state == READY:
            self._start(queue.popleft())
        transport = self._transport
        if self._state != READY or transport is None:
            return  # resume_writing or the handler's completion calls us again (or it ended)
        final = self._final
        if final is not None:
            self._final = None
            self._srv.metrics.request_done("", int(final[9:12]), 0.0)
            transport.write(final)
            self._linger()
            return
        reader = self._reader
        phase = reader.phase
        if phase == CLOSED or self._closing:
            self._linger()
            return
        # the 100 is owed only to the request whose body is being read, if it asked
        if phase == BODY and reader.req._continue:
            reader.req._continue = False
            transport.write(wire.CONTINUE_100)
        lim = self._lim
        if phase == IDLE:
            self.deadline(lim.keepalive_timeout)
        else:
            self.deadline(lim.header_timeout if phase == HEAD else lim.body_timeout)
        self._resume_reading()

    def _linger(self) -> None:
        """Half-close after the last response and drain the client's leftovers for a while."""
        self._reader.close()
        self._queue = None
        self._final = None
        self._to("last")
        transport = self._transport
        assert transport is not None  # (from READY or BLOCKED, never GONE)
        if self._eof or not transport.can_write_eof():
            transport.close()  # nothing more can arrive to be reset by
            return
        transport.write_eof()
        self._resume_reading()
        self.deadline(LINGER_SECONDS)
        self._srv.settle()

    # -- flow control and the one timer -------------------------------------------------------

    def _pause_reading(self) -> None:
        if not self._read_paused and self._transport is not None:
            self._read_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._read_paused and self._state in _READING and self._transport is not None:
            self._read_paused = False
            self._transport.resume_reading()

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._clock.call_at(when, self._on_timer)
        self._timer_at = when

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = INF
        transport = self._transport
        if transport is None:
            return
        deadline = self._deadline
        if self._clock.time() < deadline:
            if deadline != INF:
                self._arm(deadline)  # fired early: the deadline moved on
            return
        state = self._state
        if state in BLOCKED_STATES:
            self._srv.metrics.reject("write_timeout")
            transport.abort()
        elif state in _LINGERING:
            transport.abort()
        elif state != READY:
            return  # BUSY: a deadline of a request parsed ahead; _next() sets a fresh one
        else:
            reader = self._reader
            if reader.phase != IDLE:
                reason = "header_timeout" if reader.phase == HEAD else "body_timeout"
                self._srv.metrics.reject(reason)
                log.debug("request %d closed: %s", reader.req.id, reason)
            reader.close()
            transport.close()

    # -- listener control --------------------------------------------------------------------

    @property
    def lingering(self) -> bool:
        """Nothing more to answer: only the client's leftovers are being drained."""
        return self._state in _LINGERING

    def shutdown(self) -> None:
        """Stop after the request in progress (if any); close now when idle."""
        self._closing = True
        transport = self._transport
        if transport and not self._owed() and self._reader.phase == IDLE:
            self._reader.close()
            transport.close()

    def abort(self) -> None:
        """The grace period is over: drop the connection and stop its handler."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._transport is not None:
            self._transport.abort()
