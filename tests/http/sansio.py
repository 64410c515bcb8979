"""Test helpers without sockets or wall time: a Reader that records its events, a fake clock, and
a connection (HttpProtocol) over a FakeTransport on that clock, with a handler (Gate) whose
held answers the test releases by hand.

`events(data)` feeds a Reader (one read, or a list of reads) and returns what it said;
`every_split(data)` feeds the same bytes cut at every byte boundary and one byte at a time, so
a test checks that where the reads are cut never changes what a request means.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from panelsrv.http.clientip import TrustedProxies
from panelsrv.http.listener import HttpServer, api_routes
from panelsrv.http.protocol import HttpProtocol
from panelsrv.http.reader import Reader, Rules
from panelsrv.http.request import Answer, Bounds, Request
from tests.http.httpkit import FakeTransport, connect
from tests.kit.wire import post

Event = tuple[object, ...]
DEFAULT_BOUNDS = Bounds()


class Events:
    """A Reader's Sink: each event as a tuple; a complete request as ("complete", method,
    host, query, body, keep-alive, reject status), and its Cookie in `cookies`."""

    def __init__(self) -> None:
        self.seen: list[Event] = []
        self.cookies: list[bytes] = []

    def complete(self, req: Request) -> None:
        req._pending = False  # answered at once, as a connection that is not busy would
        self.seen.append(
            ("complete", req.method, req.host, req.query, req.body, req._keep_alive, req._reject)
        )
        self.cookies.append(req.cookie)

    def rejected(self, reason: str) -> None:
        self.seen.append(("rejected", reason))

    def refuse(self, response: bytes, reason: str) -> None:
        self.seen.append(("refuse", int(response[9:12]), reason))

    def continue_100(self, req: Request) -> None:
        self.seen.append(("continue",))

    def deadline(self, seconds: float) -> None:
        self.seen.append(("deadline", seconds))


def reader(
    bounds: Bounds = DEFAULT_BOUNDS,
    precheck: Callable[[str], int] | None = None,
    peer: str = "127.0.0.1",
    trusted: tuple[str, ...] = (),
) -> tuple[Reader, Events]:
    """A Reader on the API routes (handler never called: the Reader only parses)."""
    sink = Events()
    proxies = TrustedProxies(trusted)
    routes = api_routes(lambda req: (200, b"", b""))
    rules = Rules(bounds, routes, precheck, proxies, itertools.count(1).__next__)
    return Reader(sink, rules, peer, peer in proxies), sink


def events(data: bytes | list[bytes], **options: object) -> list[Event]:
    """What a fresh Reader says when fed `data` (one read, or the reads listed)."""
    r, sink = reader(**options)  # type: ignore[arg-type]
    for piece in [data] if isinstance(data, bytes) else data:
        r.feed(piece)
    return sink.seen


def splits(data: bytes) -> Iterator[list[bytes]]:
    """`data` cut in two at every byte boundary, then one byte per read."""
    for at in range(1, len(data)):
        yield [data[:at], data[at:]]
    yield [data[i : i + 1] for i in range(len(data))]


def every_split(data: bytes, **options: object) -> list[Event]:
    """The events of `data` fed whole, asserted the same however the reads are cut (but for
    deadlines: a start refused in its first byte is refused before its head's deadline)."""
    whole = events(data, **options)
    said = [e for e in whole if e[0] != "deadline"]
    for pieces in splits(data):
        assert [e for e in events(pieces, **options) if e[0] != "deadline"] == said, pieces
    return whole


class FakeClock:
    """The protocol's Clock: time moves only by `advance`, which fires what falls due, in order."""

    def __init__(self) -> None:
        self.now = 1024.0
        self._due: list[tuple[float, int, Handle]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], object], /) -> Handle:
        handle = Handle(callback)
        heapq.heappush(self._due, (when, next(self._seq), handle))
        return handle

    def advance(self, seconds: float) -> None:
        until = self.now + seconds
        while self._due and self._due[0][0] <= until:
            when, _, handle = heapq.heappop(self._due)
            self.now = max(self.now, when)
            if not handle.cancelled:
                handle.callback()
        self.now = until


@dataclass
class Handle:
    callback: Callable[[], object]
    cancelled: bool = False

    def cancel(self) -> None:
        """As asyncio's: the callback, and what it holds, is let go at once."""
        self.cancelled = True
        self.callback = int


OK: Answer = (200, b"{}", b"")
HOLD = post(target=b"/api/v2?hold")  # a request Gate holds


class Gate:
    """A handler that answers at once, except `?hold` requests, which wait for `release()`."""

    def __init__(self) -> None:
        self.held: list[asyncio.Future[Answer]] = []

    def __call__(self, req: Request) -> Answer | asyncio.Future[Answer]:
        if b"hold" not in req.query:
            return OK
        held = asyncio.get_running_loop().create_future()
        self.held.append(held)
        return held

    async def release(self, fail: bool = False) -> None:
        held = self.held.pop(0)
        if fail:
            held.set_exception(RuntimeError("handler failed"))
        else:
            held.set_result(OK)
        for _ in range(5):  # let the connection's task finish and write (loop turns, no time)
            await asyncio.sleep(0)


def sync_echo(req: Request) -> Answer:
    return 200, req.body, b""


def served(
    handler: Callable[[Request], object] = sync_echo,  # (or a Gate)
    peer: str = "127.0.0.1",
    **options: object,
) -> tuple[HttpServer, HttpProtocol, FakeTransport, FakeClock]:
    """A connection from `peer` to a server on a fake clock, over a FakeTransport; the
    server does not listen. Call from a running loop (handler tasks run on it)."""
    clock = FakeClock()
    server = HttpServer(api_routes(handler), clock=clock, **options)  # type: ignore[arg-type]
    protocol, transport = connect(server, peer)
    return server, protocol, transport, clock
