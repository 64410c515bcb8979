"""`AsyncClient`: the API v2 client on aiohttp; what the worker's `Provider` sends through too.

Imports aiohttp and `client.core` (which builds, reads and retries every call). This module only
sends a `Request` and waits: `perform` drives `Core.exchange`. Invariants: every exchange is
bounded in time (`timeout`: connect, send and the whole answer; `connect_timeout` alone for
the connect, so a refused or silent host is known never to have got the request); an answer
is read undecompressed and at most its call's bound (a compressed or larger one is refused,
its connection dropped); redirects are not followed; no cookies are kept.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar, overload

import aiohttp

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


class AsyncClient:
    """One panel's API v2 (`url`: its endpoint, https://panel.example/api/v2) with one key.

    `async with AsyncClient(url, key) as api: order = await api.add(1, link, 1000)`. One method
    per action, each answering a typed result or raising `ProviderError` (the panel refused:
    `.message`, `.http_status`) or `ProviderUnavailable` (no usable answer, after the retries
    `retry` allows: `.maybe_sent`, `.retry_after`); `ValueError` for a caller's mistake.
    `sign`: sign every request (sign_version 2). `session`: share an aiohttp session (not
    closed here); without one, the first call opens a pool of `max_connections` keep-alive
    connections. `headers`: extra request headers. `sleep`, `clock` (monotonic), `wall`
    (Unix time) and `rand`: injectable, for tests.
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
        session: aiohttp.ClientSession | None = None,
        max_connections: int = 8,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        headers: Mapping[str, str] | None = None,
        user_agent: str = USER_AGENT,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if timeout <= 0 or max_connections < 1:
            raise ValueError("timeout must be > 0 and max_connections >= 1")
        self.core = Core(
            url, key, sign=sign, headers=headers, user_agent=user_agent,
            max_answer_bytes=max_answer_bytes,
        )  # fmt: skip
        self.retry = retry
        self._timeout = timeout
        # The whole exchange is bounded by asyncio.timeout; aiohttp only times the connect.
        self._client_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=min(connect_timeout, timeout)
        )
        self._session = session
        self._owns_session = session is None
        self._max_connections = max_connections
        self._sleep, self._clock, self._wall, self._rand = sleep, clock, wall, rand
        self.requests_sent = 0  # HTTP requests, retries included

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # -- the actions (each: `Core`'s call, performed) ----------------------------------------

    async def services(self) -> list[Service]:
        return await self.perform(self.core.services())

    async def add(
        self,
        service: Id,
        link: str | None = None,
        quantity: int | None = None,
        *,
        idempotency_key: str | bool = True,
        **fields: Any,
    ) -> str:
        call = self.core.add(service, link, quantity, idempotency_key=idempotency_key, **fields)
        return await self.perform(call)

    @overload
    async def status(self, orders: Id) -> OrderStatus: ...  # type: ignore[overload-overlap]
    @overload
    async def status(self, orders: Iterable[Id]) -> dict[str, OrderStatus | ItemError]: ...
    async def status(self, orders: Id | Iterable[Id]) -> Any:
        call: Call[Any] = self.core.status(orders)  # either overload
        return await self.perform(call)

    @overload
    async def cancel(  # type: ignore[overload-overlap]
        self, orders: Id, *, idempotency_key: str | bool = ...
    ) -> bool: ...
    @overload
    async def cancel(
        self, orders: Iterable[Id], *, idempotency_key: str | bool = ...
    ) -> dict[str, bool | ItemError]: ...
    async def cancel(self, orders: Id | Iterable[Id], *, idempotency_key: str | bool = True) -> Any:
        call: Call[Any] = self.core.cancel(
            orders, idempotency_key=idempotency_key
        )  # either overload
        return await self.perform(call)

    @overload
    async def refill(  # type: ignore[overload-overlap]
        self, orders: Id, *, idempotency_key: str | bool = ...
    ) -> str: ...
    @overload
    async def refill(
        self, orders: Iterable[Id], *, idempotency_key: str | bool = ...
    ) -> dict[str, str | ItemError]: ...
    async def refill(self, orders: Id | Iterable[Id], *, idempotency_key: str | bool = True) -> Any:
        call: Call[Any] = self.core.refill(
            orders, idempotency_key=idempotency_key
        )  # either overload
        return await self.perform(call)

    @overload
    async def refill_status(self, refills: Id) -> str: ...  # type: ignore[overload-overlap]
    @overload
    async def refill_status(self, refills: Iterable[Id]) -> dict[str, str | ItemError]: ...
    async def refill_status(self, refills: Id | Iterable[Id]) -> Any:
        call: Call[Any] = self.core.refill_status(refills)  # either overload
        return await self.perform(call)

    async def balance(self) -> Balance:
        return await self.perform(self.core.balance())

    async def webhook_add(self, url: str, events: Iterable[str] | None = None) -> WebhookCreated:
        return await self.perform(self.core.webhook_add(url, events))

    async def webhooks(self) -> list[Webhook]:
        return await self.perform(self.core.webhooks())

    async def webhook_delete(self, webhook: Id) -> bool:
        return await self.perform(self.core.webhook_delete(webhook))

    # -- one call ---------------------------------------------------------------------------

    async def perform(self, call: Call[T]) -> T:
        """Send `call` (any `Core` call), retrying as `retry` allows; -> its typed result."""
        steps = self.core.exchange(call, self.retry, self._clock, self._wall, self._rand)
        try:
            step = next(steps)
            while True:
                if isinstance(step, Request):
                    try:
                        reply = await self.send(step)
                    except ProviderUnavailable as failure:
                        step = steps.throw(failure)
                    else:
                        step = steps.send(reply)
                else:
                    await self._sleep(step)
                    step = steps.send(None)
        except StopIteration as done:
            return done.value

    async def send(self, request: Request) -> Reply:
        """One exchange, no retry: -> the `Reply`, or `ProviderUnavailable`."""
        session = self._session or self._open()
        self.requests_sent += 1
        try:
            async with asyncio.timeout(self._timeout):
                async with session.post(
                    request.url,
                    data=request.body,
                    headers=request.headers,
                    allow_redirects=False,
                    timeout=self._client_timeout,
                    auto_decompress=False,  # also when the session is a caller's
                ) as resp:
                    body = await _read(resp, request.answer_bytes)
                    return Reply(
                        resp.status,
                        resp.headers.get("Content-Type", ""),
                        resp.headers.get("Retry-After"),
                        body,
                    )
        except aiohttp.ClientConnectorError as exc:  # incl. connect timeout: nothing was sent
            raise cannot_connect(str(exc)) from None
        except TimeoutError:
            raise no_answer(self._timeout) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise transport_failure(exc) from None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=30.0)
        self._session = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
        )
        return self._session


async def _read(resp: aiohttp.ClientResponse, bound: int) -> bytes:
    """The raw body, at most `bound` bytes: a compressed or larger answer is refused (and its
    connection dropped, as the body is left unread)."""
    check_answer_head(resp.headers.get("Content-Encoding", "identity"), resp.content_length, bound)
    body = bytearray()
    async for chunk in resp.content.iter_any():
        body += chunk
        check_answer_size(len(body), bound)
    return bytes(body)
