"""HttpProtocol: one TCP connection; its Reader parses, it answers.

Transport layer: imports asyncio and panelsrv.http.{reader, request, wire, clientip}; never
panelsrv.api, panelsrv.store or asyncpg: handlers arrive as plain callables on the routes.

Invariants:
- One request in flight per connection; responses leave in request order, each as ONE write
  call (a large body as the second buffer of the same writev, so it is never copied).
  Requests a client pipelined into the same read are parsed ahead and queued (at most
  `max_pipelined`, then the connection ends after answering them); reading stays paused while
  a handler runs and while the client is not reading our writes (pause_writing).
- A refusal (`refuse`) is answered after the responses already owed, then the connection closes;
  the parser is never fed again. A parser error is such a refusal, with 400.
- Closing after a response half-closes first and drains the client's leftovers for a while, so
  the kernel does not reset the connection under a response the client has yet to read.
- One lazy TimerHandle per connection: each phase moves `_deadline`; the timer is re-armed only
  when a deadline moves earlier than it, or when it fires early. A handler's time is not
  bounded here (it may be moving money); the client's reading and writing are.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections import deque
from collections.abc import Awaitable
from time import perf_counter
from typing import TYPE_CHECKING

from panelsrv.errors import ERROR_BODIES, Code
from panelsrv.http import wire
from panelsrv.http.clientip import normalize
from panelsrv.http.reader import CLOSING, HEAD, IDLE, Reader, early_answer
from panelsrv.http.request import Answer, Request

if TYPE_CHECKING:
    from panelsrv.http.listener import HttpServer

log = logging.getLogger("panelsrv.http")
access_log = logging.getLogger("panelsrv.access")

INF = float("inf")
LINGER_SECONDS = 5.0  # after a closing response, how long the client's leftovers are drained
LARGE_BODY = 4096  # a body this long is written after its head (writev), not copied into it


def _log_failure(rid: int, exc: BaseException) -> None:
    # One line, no exception message: messages can quote request values (keys).
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f"{frame.filename}:{frame.lineno} in {frame.name}" if frame else "?"
    log.error("request %d: handler raised %s at %s", rid, type(exc).__name__, where)


class HttpProtocol(asyncio.Protocol):
    __slots__ = (
        "_busy",
        "_closing",
        "_deadline",
        "_eof",
        "_final",
        "_lim",
        "_loop",
        "_queue",
        "_read_paused",
        "_reader",
        "_srv",
        "_task",
        "_timer",
        "_timer_at",
        "_transport",
        "_write_paused",
    )

    def __init__(self, server: HttpServer) -> None:
        self._srv = server
        self._lim = server.limits
        self._loop = server.loop
        self._reader = Reader(self, server)
        self._transport: asyncio.Transport | None = None
        self._busy: Request | None = None  # the request whose handler runs
        self._queue: deque[Request] | None = None  # parsed ahead, waiting their turn
        self._final: bytes | None = None  # the last word, after everything queued
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = INF
        self._deadline = INF
        self._closing = False  # answer what is owed, then close (stop() or the client's EOF)
        self._eof = False
        self._read_paused = False
        self._write_paused = False

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
        reader = self._reader
        reader.peer = ip
        reader.trusted_peer = trusted
        reader.dead = False
        self.set_deadline(self._loop.time() + self._lim.header_timeout)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)

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
        self._reader.dead = True
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
        self.set_deadline(self._loop.time() + self._lim.write_timeout)

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._busy is not None:
            self._deadline = INF
        elif self.lingering:  # the last response is flushing
            self.set_deadline(self._loop.time() + LINGER_SECONDS)
        else:
            self._next()

    # -- from the Reader ---------------------------------------------------------------------

    def complete(self, req: Request) -> None:
        """A whole request: answer it now, or queue it behind the ones ahead."""
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
            self._reader.dead = True
            self._reader.phase = CLOSING
            return
        queue.append(req)

    def refuse(self, response: bytes, reason: str | None) -> None:
        """End the connection with `response`, after the answers already owed; read no more."""
        reader = self._reader
        if reader.dead:
            return
        if reason is not None:
            self._srv.metrics.reject(reason)
            log.debug("request %d refused: %s", reader.req.id, reason)
        reader.dead = True
        reader.phase = CLOSING
        self._final = response
        self._pause_reading()
        if self._busy is None and not self._queue and not self._write_paused:
            self._next()

    def continue_100(self, req: Request) -> None:
        """`req`'s headers passed every check: invite its body (RFC 9110 10.1.1) now, or once
        the requests ahead are answered, if `req` is then still waiting for its body."""
        transport = self._transport
        if transport and self._busy is None and not self._queue and not self._write_paused:
            transport.write(wire.CONTINUE_100)
        else:
            req._continue = True

    # -- answering ---------------------------------------------------------------------------

    def _start(self, req: Request) -> bool:
        """Answer a rejected request now, or run the handler; False when the connection ends."""
        status = req._reject
        if status:
            keep = req._keep_alive and not self._closing and not req._http10
            return self._finish(req, status, early_answer(req, keep), keep)
        route = req._route
        assert route is not None
        self._busy = req
        try:
            answer = route.handler(req)
        except Exception as exc:
            return self._respond(req, None, exc)
        if type(answer) is tuple:  # answered from memory: no task, no pause
            return self._respond(req, answer, None)
        self._pause_reading()
        self._deadline = INF  # the handler's time is not the client's; the timer idles
        self._task = self._loop.create_task(self._run(req, answer))  # type: ignore[arg-type]
        return True

    async def _run(self, req: Request, pending: Awaitable[Answer]) -> None:
        try:
            answer = await pending
        except Exception as exc:
            self._task = None
            if self._respond(req, None, exc):
                self._next()
            return
        self._task = None
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
        self._busy = None
        transport = self._transport
        if transport is None:
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
        while queue and not self._write_paused:
            if not self._start(queue.popleft()) or self._busy is not None:
                return
        transport = self._transport
        if self._write_paused or self._busy is not None or transport is None:
            return  # resume_writing or the handler's completion calls us again
        final = self._final
        if final is not None:
            self._final = None
            self._srv.metrics.request_done("", int(final[9:12]), 0.0)
            transport.write(final)
            self._linger()
            return
        reader = self._reader
        if reader.dead or self._closing:
            self._linger()
            return
        now = self._loop.time()
        if reader.phase == IDLE:
            self.set_deadline(now + self._lim.keepalive_timeout)
        elif reader.phase == HEAD:
            self.set_deadline(now + self._lim.header_timeout)
        else:  # the 100 is owed only to the request whose body is being read, if it asked
            if reader.req._continue:
                reader.req._continue = False
                transport.write(wire.CONTINUE_100)
            self.set_deadline(now + self._lim.body_timeout)
        self._resume_reading()

    def _linger(self) -> None:
        """Half-close after the last response and drain the client's leftovers for a while."""
        transport = self._transport
        self._reader.dead = True
        self._reader.phase = CLOSING
        self._queue = None
        self._final = None
        if transport is None:
            return
        if self._eof or not transport.can_write_eof():
            transport.close()  # nothing more can arrive to be reset by
            return
        transport.write_eof()
        self._resume_reading()
        self.set_deadline(self._loop.time() + LINGER_SECONDS)
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

    def set_deadline(self, when: float) -> None:
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
                self.set_deadline(deadline)  # fired early: the deadline moved on
            return
        reader = self._reader
        if self._write_paused:
            self._srv.metrics.reject("write_timeout")
            transport.abort()
        elif self.lingering:
            transport.abort()
        elif self._busy is not None or self._queue or self._final is not None:
            return  # a deadline of a request parsed ahead; _next() sets a fresh one
        else:
            if reader.phase != IDLE:
                reason = "header_timeout" if reader.phase == HEAD else "body_timeout"
                self._srv.metrics.reject(reason)
                log.debug("request %d closed: %s", reader.req.id, reason)
            reader.dead = True
            transport.close()

    # -- listener control --------------------------------------------------------------------

    @property
    def lingering(self) -> bool:
        """Nothing more to answer: only the client's leftovers are being drained."""
        return (
            self._reader.phase == CLOSING
            and self._busy is None
            and not self._queue
            and self._final is None
            and self._task is None
        )

    def shutdown(self) -> None:
        """Stop after the request in progress (if any); close now when idle."""
        self._closing = True
        transport = self._transport
        if transport and self._busy is None and not self._queue and self._reader.phase == IDLE:
            self._reader.dead = True
            transport.close()

    def abort(self) -> None:
        """The grace period is over: drop the connection and stop its handler."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._transport is not None:
            self._transport.abort()
