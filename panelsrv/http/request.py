"""The handler contract: what a handler reads (Request), what it answers, where it is mounted.

Pure: imports only panelsrv.http.wire. A handler is `async (Request) -> (status, body,
extra_header_bytes)`; `extra_header_bytes` is b"" or complete header lines built by our own code
(e.g. b"Retry-After: 1\\r\\n"), never request input. Content-Type, Content-Length, Date and
Connection are the protocol's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NamedTuple

from panelsrv.http import wire

Answer = tuple[int, bytes, bytes]  # status, body, extra header lines
# A handler answers at once (a tuple: nothing to wait for, no task is created) or with an
# awaitable when it needs I/O; the protocol runs the awaitable as the connection's one task.
Handler = Callable[["Request"], "Answer | Awaitable[Answer]"]


class Route(NamedTuple):
    """What a path answers: its method, the handler, and the Content-Type line it sends.
    With `takes_get`, a GET reaches the handler too (a page: GET shows its form, POST sends
    it; /api/v2: the handler decides whether to serve it, by the panel setting `accept_get`).
    Any other method is the route's 405, whose Allow line names the methods the route takes,
    or `allow` when given (/api/v2 names POST alone: only the handler knows the panel)."""

    method: bytes
    handler: Handler
    content_type: bytes = wire.JSON
    takes_get: bool = False
    allow: bytes = b""

    def allowed(self) -> bytes:
        """The value of the route's 405's Allow line."""
        if self.allow:
            return self.allow
        return b"GET, " + self.method if self.takes_get and self.method != b"GET" else self.method


class Bounds(NamedTuple):
    """What one connection may send and how long it may take: sizes, deadlines, counts (the
    transport's own bounds; the API's rate limits live in `guard`)."""

    max_header_bytes: int = 16 * 1024  # request line + headers (431)
    max_body_bytes: int = 256 * 1024  # declared or running (413)
    header_timeout: float = 10.0  # absolute, from the request's first byte
    body_timeout: float = 30.0  # absolute, from the end of the headers
    keepalive_timeout: float = 60.0  # idle between requests
    write_timeout: float = 30.0  # how long the client may leave our writes unread
    max_connections: int = 10_000  # per process
    max_connections_per_ip: int = 256  # per process and client address (trusted proxies: none)
    max_headers: int = 100
    max_pipelined: int = 64  # requests parsed ahead of the one in flight


class Request:
    """One request as the handler sees it. The protocol reuses it for the connection's next
    request once the response is written, so a handler must not keep it beyond its return.

    `method` is the request's (the route's, or GET on a route that `takes_get`); `host` the
    Host header lowercased without port; `content_type` lowercased (b"" if none);
    `query` the raw query string; `cookie` the Cookie header (several joined by "; ", b"" if
    none; bounded by the header limits, unparsed); `idempotency_key` the header decoded
    latin-1 (one char per byte, unvalidated); `body` the whole body; `id` a per-process
    request number for logs (`request_id` is the same as text); `action` may be set by the
    handler to label metrics. The underscored slots belong to the protocol.
    """

    __slots__ = (
        "_continue",
        "_http10",
        "_keep_alive",
        "_pending",
        "_reject",
        "_retry_after",
        "_route",
        "_t0",
        "action",
        "body",
        "client_ip",
        "content_type",
        "cookie",
        "host",
        "id",
        "idempotency_key",
        "method",
        "query",
    )

    def __init__(self) -> None:
        self._pending = False  # parsed and not yet answered: not to be reused
        self._retry_after = 0  # with _reject 429: its Retry-After seconds
        self._reset(0, "")

    @property
    def request_id(self) -> str:
        """`id` as text, for log lines."""
        return str(self.id)

    def early_status(self) -> tuple[int, bytes, int]:
        """What `wire.early_answer` renders for a request refused before its handler."""
        return self._reject, self._route.allowed() if self._route else b"", self._retry_after

    def _reset(self, rid: int, ip: str) -> None:
        self.id = rid
        self.client_ip = ip
        self.method = b""
        self.host = ""
        self.content_type = b""
        self.query = b""
        self.cookie = b""
        self.idempotency_key: str | None = None
        self.body = b""
        self.action = ""
        self._reject = 0  # 404 / 405 / 429 answered without the handler, keeping the connection
        self._route: Route | None = None
        self._keep_alive = False
        self._http10 = False
        # asked for a 100 Continue while requests ahead were unanswered: sent when the
        # connection gets to it, only if it is still in its body phase then
        self._continue = False
        self._t0 = 0.0
