"""HttpServer: one listening socket, the state its connections share, and its graceful stop.

Transport layer: imports asyncio and panelsrv.http.{protocol, reader, request, wire, clientip},
panelsrv.metrics; nothing imports it back within http (a connection sees it as
`protocol.Conns`). It is the protocol factory (`loop.create_server(server, ...)` calls it per
connection) and keeps the per-process connections (for the caps, the gauge and draining) and
the once-a-second Date ticker. What every connection's Reader reads by is built once
(`rules`: bounds, routes, precheck, trusted proxies, the request numbering); time comes from
`clock` (the loop, unless a test hands a fake one). What it serves comes in as `routes`; who is
refused early comes in as `precheck`
(per request, before the path is looked up and the body read) and `connect_check` (per
connection, for peers that are not trusted proxies); both answer 0 to admit, else a 429's
Retry-After seconds: positive lets the connection stay (the body is skipped), negative closes it.

Invariant: a connection is counted in `conns` (and, unless its peer is a trusted proxy, in
`addresses` under `address_key(peer)`) from `admit` to its one effective `release`, however it
ends; a refused connection is never counted.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import Callable, Iterable, Mapping

from panelsrv.http import wire
from panelsrv.http.clientip import TrustedProxies
from panelsrv.http.protocol import Clock, HttpProtocol
from panelsrv.http.reader import Rules
from panelsrv.http.request import Bounds, Handler, Route
from panelsrv.metrics import Registry, ServerMetrics

Check = Callable[[str], int]
DEFAULT_BOUNDS = Bounds()
UNCOUNTED = ""  # the address key of a trusted proxy's connection: not capped per address


class HttpServer:
    def __init__(
        self,
        routes: Mapping[bytes, Route],
        *,
        bounds: Bounds = DEFAULT_BOUNDS,
        precheck: Check | None = None,
        connect_check: Check | None = None,
        trusted_proxies: Iterable[str] = (),
        client_ip_header: str = "x-forwarded-for",
        address_key: Callable[[str], str] = str,
        registry: Registry | None = None,
        access_log: bool = False,
        clock: Clock | None = None,
    ) -> None:
        """`address_key` maps a peer address to what the per-address connection cap counts
        it under (the server passes the guard's: an IPv6 address by its /64); `clock` is the
        connections' time (default: the loop `start` runs on)."""
        self.routes = dict(routes)  # (the same dict as `rules.routes`: updated in place)
        self.bounds = bounds
        self.connect_check = connect_check
        self.trusted = TrustedProxies(trusted_proxies, client_ip_header == "x-real-ip")
        self.rules = Rules(bounds, self.routes, precheck, self.trusted, itertools.count(1).__next__)
        self.address_key = address_key
        self.metrics = ServerMetrics(registry if registry is not None else Registry())
        self.metrics.connections.fn = lambda: len(self.conns)
        self.access_log = access_log
        self.conns: dict[HttpProtocol, str] = {}  # each open connection -> its address key
        self.addresses: dict[str, int] = {}  # address key -> open connections (never 0)
        self.loop: asyncio.AbstractEventLoop  # set by start(); no connection exists before
        self._clock = clock
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._drained: asyncio.Future[None] | None = None

    def __call__(self) -> HttpProtocol:
        return HttpProtocol(self)

    @property
    def clock(self) -> Clock:
        """The connections' time: the fake one given, else the loop's."""
        return self._clock if self._clock is not None else self.loop

    async def start(
        self,
        host: str | None,
        port: int,
        *,
        reuse_port: bool = False,
        backlog: int = 2048,
    ) -> None:
        """Listen on host:port (None: every interface; port 0: any free port);
        `reuse_port` lets sibling processes bind the same port (SO_REUSEPORT)."""
        self.loop = asyncio.get_running_loop()
        self._server = await self.loop.create_server(
            self, host, port, reuse_port=reuse_port, backlog=backlog
        )
        self._tick()

    @property
    def sockets(self) -> list[socket.socket]:
        return list(self._server.sockets) if self._server is not None else []

    @property
    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])

    def _tick(self) -> None:
        now = time.time()
        wire.set_date(now)
        # fire just after the next second starts, so Date turns over on time
        self._ticker = self.loop.call_later(1.0 - now % 1.0 + 0.001, self._tick)

    def admit(self, conn: HttpProtocol, ip: str, trusted: bool) -> bytes | None:
        """A new connection from `ip`: counted, or the response that refuses it (the caps:
        503, as nginx's limit_conn; a blocked address: 429)."""
        lim = self.bounds
        if len(self.conns) >= lim.max_connections:
            self.metrics.reject("connections")
            return wire.REJECT_CLOSE[503]
        key = UNCOUNTED
        if not trusted:  # every client of a trusted proxy shares its address
            wait = self.connect_check(ip) if self.connect_check is not None else 0
            if wait:
                self.metrics.reject("precheck")
                return wire.too_many(abs(wait), False)
            key = self.address_key(ip)
            count = self.addresses.get(key, 0)
            if count >= lim.max_connections_per_ip:
                self.metrics.reject("connections_per_ip")
                return wire.REJECT_CLOSE[503]
            self.addresses[key] = count + 1
        self.conns[conn] = key
        return None

    def release(self, conn: HttpProtocol) -> None:
        """A connection is gone (and its handler, if any, has returned); again is a no-op."""
        key = self.conns.pop(conn, None)
        if key:
            left = self.addresses[key] - 1
            if left:
                self.addresses[key] = left
            else:
                del self.addresses[key]
        self.settle()

    def settle(self) -> None:
        """While stopping: done once every connection is gone or has said its last word."""
        drained = self._drained
        if drained is not None and not drained.done() and all(c.lingering for c in self.conns):
            drained.set_result(None)

    async def stop(self, grace: float) -> None:
        """Stop accepting, let requests in progress finish for up to `grace` seconds (their
        responses say `Connection: close`), close idle keep-alive connections, then drop the
        rest."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for conn in list(self.conns):
            conn.shutdown()
        self._drained = self.loop.create_future()
        self.settle()
        await asyncio.wait([self._drained], timeout=grace)
        for conn in list(self.conns):
            conn.abort()
            self.release(conn)  # an aborted handler never reaches its own release
        await server.wait_closed()
        await asyncio.sleep(0)  # let aborted transports deliver connection_lost
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None


def api_routes(handler: Handler) -> dict[bytes, Route]:
    """`POST /api/v2` and `/api/v2/` answered by `handler` (JSON responses); a GET reaches
    `handler` too, which serves or refuses it (`accept_get`), so other methods' 405 names POST
    alone, as the handler's refusal of a GET does."""
    route = Route(b"POST", handler, takes_get=True, allow=b"POST")
    return {b"/api/v2": route, b"/api/v2/": route}


class Listen:
    """An HttpServer bound to an address, in the start/stop shape `procs` runs."""

    def __init__(self, server: HttpServer, host: str | None, port: int, *, reuse_port: bool = True):
        self.server = server
        self._address = (host, port)
        self._reuse_port = reuse_port

    async def start(self) -> None:
        await self.server.start(*self._address, reuse_port=self._reuse_port)

    async def stop(self, grace: float) -> None:
        await self.server.stop(grace)
