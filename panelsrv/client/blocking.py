"""`Client`: the API v2 client, blocking, on the standard library's `http.client`.

Imports `client.core` (which builds, reads and retries every call) and the standard library
only. This module only sends a `Request` and waits: `perform` drives `Core.exchange`, as
`client.aio` does. Invariants, as there: every exchange is bounded in time (`connect_timeout`
for the connect, so a refused or silent host is known never to have got the request; then
`timeout` for the whole exchange, each read given what is left of it); an answer is read
undecompressed and at most its call's bound (a compressed or larger one is refused and the
connection dropped); redirects are not followed; one keep-alive connection, dropped after any
failure. Not for use by several threads at once: one `Client` per thread.
"""

from __future__ import annotations

import http.client
import random
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, overload
from urllib.parse import urlsplit

from panelsrv.client.answers import (
    Balance,
    ItemError,
    OrderStatus,
    ProviderUnavailable,
    Service,
    Webhook,
    WebhookCreated,
)
from panelsrv.client.core import (
    MAX_ANSWER_BYTES,
    RETRY,
    USER_AGENT,
    Call,
    Core,
    Id,
    Reply,
    Request,
    Retry,
    cannot_connect,
    check_answer_head,
    check_answer_size,
    no_answer,
    transport_failure,
)

T = TypeVar("T")
_CHUNK = 64 << 10


class Client:
    """One panel's API v2 (`url`: its endpoint, https://panel.example/api/v2) with one key.

    `with Client(url, key) as api: order = api.add(1, link, 1000)`. The same methods, results,
    failures and options as `AsyncClient` (which see), blocking. `ssl_context`: for https (the
    system's trusted CAs by default).
    """

    def __init__(
        self,
        url: str,
        key: str,
        *,
        sign: bool = False,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        retry: Retry = RETRY,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        headers: Mapping[str, str] | None = None,
        user_agent: str = USER_AGENT,
        ssl_context: ssl.SSLContext | None = None,
        sleep: Callable[[float], Any] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        self.core = Core(
            url, key, sign=sign, headers=headers, user_agent=user_agent,
            max_answer_bytes=max_answer_bytes,
        )  # fmt: skip
        self.retry = retry
        parts = urlsplit(url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._ssl = ssl_context
        self._timeout = timeout
        self._connect_timeout = min(connect_timeout, timeout)
        self._conn: http.client.HTTPConnection | None = None
        self._sleep, self._clock, self._wall, self._rand = sleep, clock, wall, rand
        self.requests_sent = 0  # HTTP requests, retries included

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    # -- the actions (each: `Core`'s call, performed) ----------------------------------------

    def services(self) -> list[Service]:
        return self.perform(self.core.services())

    def add(
        self,
        service: Id,
        link: str | None = None,
        quantity: int | None = None,
        *,
        idempotency_key: str | bool = True,
        **fields: Any,
    ) -> str:
        call = self.core.add(service, link, quantity, idempotency_key=idempotency_key, **fields)
        return self.perform(call)

    @overload
    def status(self, orders: Id) -> OrderStatus: ...  # type: ignore[overload-overlap]
    @overload
    def status(self, orders: Iterable[Id]) -> dict[str, OrderStatus | ItemError]: ...
    def status(self, orders: Id | Iterable[Id]) -> Any:
        call: Call[Any] = self.core.status(orders)  # either overload
        return self.perform(call)

    @overload
    def cancel(  # type: ignore[overload-overlap]
        self, orders: Id, *, idempotency_key: str | bool = ...
    ) -> bool: ...
    @overload
    def cancel(
        self, orders: Iterable[Id], *, idempotency_key: str | bool = ...
    ) -> dict[str, bool | ItemError]: ...
    def cancel(self, orders: Id | Iterable[Id], *, idempotency_key: str | bool = True) -> Any:
        call: Call[Any] = self.core.cancel(
            orders, idempotency_key=idempotency_key
        )  # either overload
        return self.perform(call)

    @overload
    def refill(  # type: ignore[overload-overlap]
        self, orders: Id, *, idempotency_key: str | bool = ...
    ) -> str: ...
    @overload
    def refill(
        self, orders: Iterable[Id], *, idempotency_key: str | bool = ...
    ) -> dict[str, str | ItemError]: ...
    def refill(self, orders: Id | Iterable[Id], *, idempotency_key: str | bool = True) -> Any:
        call: Call[Any] = self.core.refill(
            orders, idempotency_key=idempotency_key
        )  # either overload
        return self.perform(call)

    @overload
    def refill_status(self, refills: Id) -> str: ...  # type: ignore[overload-overlap]
    @overload
    def refill_status(self, refills: Iterable[Id]) -> dict[str, str | ItemError]: ...
    def refill_status(self, refills: Id | Iterable[Id]) -> Any:
        call: Call[Any] = self.core.refill_status(refills)  # either overload
        return self.perform(call)

    def balance(self) -> Balance:
        return self.perform(self.core.balance())

    def webhook_add(self, url: str, events: Iterable[str] | None = None) -> WebhookCreated:
        return self.perform(self.core.webhook_add(url, events))

    def webhooks(self) -> list[Webhook]:
        return self.perform(self.core.webhooks())

    def webhook_delete(self, webhook: Id) -> bool:
        return self.perform(self.core.webhook_delete(webhook))

    # -- one call ---------------------------------------------------------------------------

    def perform(self, call: Call[T]) -> T:
        """Send `call` (any `Core` call), retrying as `retry` allows; -> its typed result."""
        steps = self.core.exchange(call, self.retry, self._clock, self._wall, self._rand)
        try:
            step = next(steps)
            while True:
                if isinstance(step, Request):
                    try:
                        reply = self.send(step)
                    except ProviderUnavailable as failure:
                        step = steps.throw(failure)
                    else:
                        step = steps.send(reply)
                else:
                    self._sleep(step)
                    step = steps.send(None)
        except StopIteration as done:
            return done.value

    def send(self, request: Request) -> Reply:
        """One exchange, no retry: -> the `Reply`, or `ProviderUnavailable`."""
        deadline = self._clock() + self._timeout
        conn = self._connected()
        self.requests_sent += 1
        try:
            self._left(conn, deadline)
            conn.request("POST", self._target, request.body, dict(request.headers))
            self._left(conn, deadline)
            resp = conn.getresponse()
            body = self._read(conn, resp, request.answer_bytes, deadline)
            if resp.will_close:
                self.close()
            return Reply(
                resp.status, resp.getheader("Content-Type", ""), resp.getheader("Retry-After"), body
            )
        except ProviderUnavailable:
            self.close()
            raise
        except TimeoutError:
            self.close()
            raise no_answer(self._timeout) from None
        except (http.client.HTTPException, OSError) as exc:
            self.close()
            raise transport_failure(exc) from None

    def _connected(self) -> http.client.HTTPConnection:
        """The keep-alive connection, opened if need be; a failure to open it sent nothing."""
        if self._conn is not None:
            return self._conn
        conn: http.client.HTTPConnection
        if self._https:
            context = self._ssl or ssl.create_default_context()
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=self._connect_timeout, context=context
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._connect_timeout)
        try:
            conn.connect()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise cannot_connect(repr(exc)) from None
        self._conn = conn
        return conn

    def _left(self, conn: http.client.HTTPConnection, deadline: float) -> None:
        """Give the socket's next operation what is left of the exchange's time."""
        left = deadline - self._clock()
        if left <= 0:
            raise TimeoutError
        if conn.sock is not None:
            conn.sock.settimeout(left)

    def _read(
        self,
        conn: http.client.HTTPConnection,
        resp: http.client.HTTPResponse,
        bound: int,
        deadline: float,
    ) -> bytes:
        check_answer_head(resp.getheader("Content-Encoding") or "identity", resp.length, bound)
        body = bytearray()
        while True:
            self._left(conn, deadline)
            chunk = resp.read(min(_CHUNK, bound + 1 - len(body)))
            if not chunk:
                return bytes(body)
            body += chunk
            check_answer_size(len(body), bound)
