"""The worker's side of each upstream: one `Provider` per provider, sending through `client`.

Imports `panelsrv.client` (the API v2 client resellers use: it builds every request, sends it
and reads what its answer means), `worker.pacing` (pure) and `metrics`. On top of the client,
per provider: one keep-alive connection pool, a semaphore capping concurrent calls, a reserving
token bucket capping the call rate, a circuit breaker, counters, and the log of answers not
understood; the client's own retries are off (`NO_RETRY`): the worker retries by rescheduling.
Invariant: a call returns a typed result or raises `ProviderUnavailable` (retry later;
`maybe_sent` says whether it may have reached the provider) or `ProviderError` (the provider
answered `{"error": ...}`; `.hold` says retry later, else refuse for good), whatever the
provider or the network does. `ValueError` only for a caller's mistake (101 ids, a reserved
field).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp

from panelsrv import metrics, money
from panelsrv.client.aio import AsyncClient
from panelsrv.client.answers import (
    Balance,
    ItemError,
    OrderStatus,
    ProviderError,
    ProviderUnavailable,
    Service,
    UnreadableAnswer,
)
from panelsrv.client.core import NO_RETRY, Call
from panelsrv.worker.pacing import BreakerState, CircuitBreaker, TokenBucket

log = logging.getLogger("panelsrv.worker.providers")

T = TypeVar("T")
BeforeSend = Callable[[], Awaitable[None]]
USER_AGENT = "panelsrv/0.1 (+api-v2 client)"
# The largest markup `service import` takes, and so the largest rate it can import: marked up,
# it stays within money.MAX_UNITS (and every product of it within bigint).
MAX_MARKUP_PERCENT = 10_000
MAX_RATE = Decimal(money.MAX_UNITS) / money.SCALE / (1 + Decimal(MAX_MARKUP_PERCENT) / 100)
UNREADABLE_LOG_EVERY = 60.0  # seconds: one log line per provider and action at most


class CircuitOpen(ProviderUnavailable):
    """Refused locally: the provider failed too often; nothing was sent."""

    def __init__(self, retry_after: float):
        super().__init__("circuit open", maybe_sent=False, retry_after=retry_after)


class ProviderStats:
    """Counters for logs and metrics; only this provider's calls."""

    __slots__ = ("calls", "circuit_rejects", "errors", "ok", "unavailable", "unreadable")

    def __init__(self) -> None:
        self.calls = 0  # HTTP requests sent
        self.ok = 0
        self.errors = 0  # {"error": ...} answers
        self.unavailable = 0
        self.circuit_rejects = 0  # refused locally while the circuit was open
        self.unreadable = 0  # answers, and entries of batch answers, not understood


class Provider:
    """An upstream speaking API v2. Use `async with Provider(...)` or call `close()`.

    `session`: share one aiohttp session (and its pool) between providers; it is then not
    closed here. Without one, the first call opens a private pool of `max_concurrency`
    keep-alive connections. `timeout` bounds each HTTP exchange (connect, send, full answer);
    waiting for a concurrency or rate slot is not part of it. `rate_per_sec=None`: no rate cap.
    Answers are read undecompressed, each bounded by what its call can need (`ANSWER_BYTES`);
    `max_answer_bytes` bounds the largest, the catalogue. An answer, or an entry of a batch
    answer, that cannot be understood is counted in `stats.unreadable` and on `unreadable`
    (labels: this provider's name, the action) and logged at most once per action a minute.
    """

    __slots__ = (
        "_breaker",
        "_bucket",
        "_client",
        "_clock",
        "_semaphore",
        "_unreadable",
        "_unreadable_logged",
        "name",
        "stats",
    )

    def __init__(
        self,
        url: str,
        key: str,
        *,
        name: str = "",
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        max_concurrency: int = 8,
        rate_per_sec: float | None = None,
        rate_burst: int | None = None,
        breaker_threshold: int = 5,
        breaker_cooldown: float = 30.0,
        max_answer_bytes: int = 8 << 20,
        unreadable: metrics.Counter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_concurrency < 1 or timeout <= 0:
            raise ValueError("max_concurrency must be >= 1 and timeout > 0")
        self._client = AsyncClient(
            url, key, timeout=timeout, connect_timeout=connect_timeout, retry=NO_RETRY,
            session=session, max_connections=max_concurrency, max_answer_bytes=max_answer_bytes,
            user_agent=USER_AGENT,
        )  # fmt: skip
        self.name = name or (urlsplit(url).netloc or url)
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._bucket = (
            TokenBucket(rate_per_sec, rate_burst or max(1, int(rate_per_sec)))
            if rate_per_sec
            else None
        )
        self._breaker = CircuitBreaker(breaker_threshold, breaker_cooldown)
        self._clock = clock
        self._unreadable = unreadable
        self._unreadable_logged: dict[str, tuple[float, int]] = {}  # action -> (when, since)
        self.stats = ProviderStats()

    async def __aenter__(self) -> Provider:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._client.close()

    @property
    def circuit_state(self) -> str:
        """ "closed", "open" or "half-open"."""
        return self._breaker.state.value

    def snapshot(self) -> dict[str, Any]:
        """Everything worth a log line or a metric, as plain values."""
        s = self.stats
        return {
            "provider": self.name,
            "circuit": self.circuit_state,
            "consecutive_failures": self._breaker.failures,
            "circuit_opens": self._breaker.opens,
            "calls": s.calls,
            "ok": s.ok,
            "errors": s.errors,
            "unavailable": s.unavailable,
            "circuit_rejects": s.circuit_rejects,
            "unreadable": s.unreadable,
        }

    # -- actions ----------------------------------------------------------------------------

    async def services(self) -> list[Service]:
        """The provider's catalogue; malformed or out-of-range entries are skipped (and logged)."""
        services, skipped = await self._call(self._client.core.catalogue(MAX_RATE))
        if skipped:
            log.warning(
                "provider %s: skipped %d malformed or out-of-range service entries (a rate "
                "above %.2f, counts past bigint, min < 1 or max < min)",
                self.name,
                skipped,
                MAX_RATE,
            )
        return services

    async def add(
        self,
        fields: Mapping[str, Any],
        idempotency_key: str | None = None,
        before_send: BeforeSend | None = None,
    ) -> str:
        """Place an order; -> the upstream order id.

        `fields`: service, link, quantity, runs, interval and any type's extras (comments,
        usernames, username, hashtags, hashtag, posts, old_posts, delay, expiry, media, min,
        max, answer_number...), sent as given; None values are left out, lists are joined by
        newlines, booleans become 1/0. `idempotency_key` goes in the `Idempotency-Key` header.
        `before_send` is awaited once the call has its concurrency and rate slot, right before
        the request goes out; whatever it raises ends the call with nothing sent.
        """
        call = self._client.core.add_fields(fields, idempotency_key=idempotency_key or False)
        return await self._call(call, before_send)

    async def status(self, order_id: str | int) -> OrderStatus:
        return await self._call(self._client.core.status(order_id))

    async def multi_status(self, ids: Iterable[str | int]) -> dict[str, OrderStatus | ItemError]:
        """One call for up to 100 ids; every id gets an entry (an `ItemError` when it failed)."""
        return await self._call(self._client.core.status(list(ids)))

    async def cancel(self, ids: Iterable[str | int]) -> dict[str, bool | ItemError]:
        """Ask to cancel up to 100 orders; True where the provider accepted."""
        return await self._call(self._client.core.cancel(list(ids), idempotency_key=False))

    async def refill(
        self,
        order_id: str | int,
        idempotency_key: str | None = None,
        before_send: BeforeSend | None = None,
    ) -> str:
        """Request a refill; -> the upstream refill id. `before_send`: as for `add`."""
        call = self._client.core.refill(order_id, idempotency_key=idempotency_key or False)
        return await self._call(call, before_send)

    async def multi_refill(
        self, ids: Iterable[str | int], idempotency_key: str | None = None
    ) -> dict[str, str | ItemError]:
        """Refills for up to 100 orders; -> order id -> refill id (or `ItemError`)."""
        call = self._client.core.refill(list(ids), idempotency_key=idempotency_key or False)
        return await self._call(call)

    async def refill_status(self, ids: Iterable[str | int]) -> dict[str, str | ItemError]:
        """Refill id -> Pending / In progress / Completed / Rejected / Error (or `ItemError`)."""
        return await self._call(self._client.core.refill_status(list(ids)))

    async def balance(self) -> Balance:
        return await self._call(self._client.core.balance())

    # -- one call ---------------------------------------------------------------------------

    async def _call(self, call: Call[T], before_send: BeforeSend | None = None) -> T:
        async with self._semaphore:
            wait = self._breaker.admit(self._clock())
            if wait is not None:
                self.stats.circuit_rejects += 1
                raise CircuitOpen(wait)
            probe = self._breaker.state is BreakerState.HALF_OPEN
            try:
                if self._bucket is not None:
                    delay = self._bucket.reserve(self._clock())
                    if delay > 0:
                        await asyncio.sleep(delay)
                if before_send is not None:
                    await before_send()
                self.stats.calls += 1
                result = await self._client.perform(call)
            except ProviderUnavailable as exc:
                self.stats.unavailable += 1
                if isinstance(exc, UnreadableAnswer):
                    self._not_understood(call.action, 1, exc.reason)
                if self._breaker.failed(self._clock()):
                    log.warning(
                        "provider %s: circuit open for %.0f s after %d consecutive failures "
                        "(last: %s)",
                        self.name,
                        self._breaker.cooldown,
                        self._breaker.failures,
                        exc.reason,
                    )
                raise
            except ProviderError:
                self.stats.errors += 1
                self._record_answer()
                raise
            except BaseException:
                # Cancelled, or refused by `before_send`: no verdict on the provider, but a
                # half-open probe must not stay taken forever.
                if probe:
                    self._breaker.abandoned()
                raise
            self.stats.ok += 1
            self._record_answer()
            if isinstance(result, dict):  # a batch: entries it could not understand
                bad = [e for e in result.values() if isinstance(e, ItemError) and e.unreadable]
                if bad:
                    self._not_understood(call.action, len(bad), bad[0].message)
            return result

    def _not_understood(self, action: str, count: int, example: str) -> None:
        """Count `count` answers (or entries) of `action` not understood; log it, once a minute
        per action at most, with how many went unlogged since."""
        self.stats.unreadable += count
        if self._unreadable is not None:
            self._unreadable.inc((self.name, action), count)
        now = self._clock()
        last, since = self._unreadable_logged.get(action, (None, 0))
        if last is not None and now - last < UNREADABLE_LOG_EVERY:
            self._unreadable_logged[action] = (last, since + count)
            return
        self._unreadable_logged[action] = (now, 0)
        log.warning(
            "provider %s: %s answer not understood (%s); it changed no order and no money%s",
            self.name,
            action,
            f"{count} entries, first: {example}" if count > 1 else example,
            f" ({since} more since the last such line)" if since else "",
        )

    def _record_answer(self) -> None:
        if self._breaker.state is not BreakerState.CLOSED:
            log.info("provider %s: answering again, circuit closed", self.name)
        self._breaker.succeeded()
