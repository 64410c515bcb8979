"""The API v2 client: one `Provider` per upstream; the only module that sends orders over HTTP.

Imports aiohttp, `worker.upstream` (what answers mean) and `worker.pacing` (both pure). Per
provider: one keep-alive connection pool, a semaphore capping concurrent calls, a reserving token
bucket capping the call rate, a circuit breaker, and a deadline on every call. Requests are
form-encoded POSTs exactly as reseller SDKs send them. Invariant: a call returns a typed result
or raises `ProviderUnavailable` (retry later; `maybe_sent` says whether it may have reached the
provider) or `ProviderError` (the provider answered `{"error": ...}`; `.hold` says retry later,
else refuse for good), whatever the provider or the network does. `ValueError` only for a
caller's mistake (101 ids, a reserved field).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp

from panelsrv import metrics
from panelsrv.worker.pacing import BreakerState, CircuitBreaker, TokenBucket
from panelsrv.worker.upstream import (
    MAX_RATE,
    Balance,
    CircuitOpen,
    ItemError,
    OrderStatus,
    ProviderError,
    ProviderUnavailable,
    UnreadableAnswer,
    UpstreamService,
    as_id,
    cancel_accepted,
    interpret,
    join_ids,
    parse_balance,
    parse_multi_status,
    parse_order_id,
    parse_per_id,
    parse_services,
    parse_status,
    refill_state,
)

log = logging.getLogger("panelsrv.worker.providers")

T = TypeVar("T")
BeforeSend = Callable[[], Awaitable[None]]
USER_AGENT = "panelsrv/0.1 (+api-v2 client)"
# identity: aiohttp offers gzip/deflate/br by default; a compressed answer is refused unread.
_HEADERS = {"Accept": "application/json", "Accept-Encoding": "identity", "User-Agent": USER_AGENT}
_RESERVED = frozenset(("key", "action"))
# The most an answer may weigh, from its shape, with room for the fields a provider adds: one
# object (add, status, refill, balance, an error), plus one per id of a batch (status, cancel,
# refill and refill_status of up to 100). A 100-id status answer is about 12 KB; its bound is
# 216 KiB. Only the catalogue (services: thousands of entries) may reach `max_answer_bytes`.
ANSWER_BYTES = 16 << 10
ANSWER_BYTES_PER_ID = 2 << 10
UNREADABLE_LOG_EVERY = 60.0  # seconds: one log line per provider and action at most


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
        "_client_timeout",
        "_clock",
        "_key",
        "_max_answer",
        "_max_concurrency",
        "_owns_session",
        "_semaphore",
        "_session",
        "_timeout",
        "_unreadable",
        "_unreadable_logged",
        "_url",
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
        self._url = url
        self._key = key
        self.name = name or (urlsplit(url).netloc or url)
        self._session = session
        self._owns_session = session is None
        self._timeout = timeout
        # The whole exchange is bounded by asyncio.timeout; aiohttp only times the connect so
        # that a refused or silent host is known never to have received the request.
        self._client_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=min(connect_timeout, timeout)
        )
        self._max_concurrency = max_concurrency
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._bucket = (
            TokenBucket(rate_per_sec, rate_burst or max(1, int(rate_per_sec)))
            if rate_per_sec
            else None
        )
        self._breaker = CircuitBreaker(breaker_threshold, breaker_cooldown)
        self._max_answer = max_answer_bytes
        self._clock = clock
        self._unreadable = unreadable
        self._unreadable_logged: dict[str, tuple[float, int]] = {}  # action -> (when, since)
        self.stats = ProviderStats()

    async def __aenter__(self) -> Provider:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

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

    async def services(self) -> list[UpstreamService]:
        """The provider's catalogue; malformed or out-of-range entries are skipped (and logged)."""
        services, skipped = await self._call(self._form("services"), parse_services)
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
        form = self._form("add")
        for name, value in fields.items():
            if name in _RESERVED:
                raise ValueError(f"{name!r} is set by the client")
            text = _form_value(value)
            if text is not None:
                form[name] = text
        return await self._call(form, _order_id, idempotency_key, before_send)

    async def status(self, order_id: str | int) -> OrderStatus:
        return await self._call(self._form("status", order=str(order_id)), parse_status)

    async def multi_status(self, ids: Iterable[str | int]) -> dict[str, OrderStatus | ItemError]:
        """One call for up to 100 ids; every id gets an entry (an `ItemError` when it failed)."""
        batch = join_ids(ids)
        form = self._form("status", orders=",".join(batch))
        return await self._call(form, lambda data: parse_multi_status(data, batch))

    async def cancel(self, ids: Iterable[str | int]) -> dict[str, bool | ItemError]:
        """Ask to cancel up to 100 orders; True where the provider accepted."""
        batch = join_ids(ids)
        form = self._form("cancel", orders=",".join(batch))
        return await self._call(
            form, lambda data: parse_per_id(data, batch, "order", "cancel", cancel_accepted)
        )

    async def refill(
        self,
        order_id: str | int,
        idempotency_key: str | None = None,
        before_send: BeforeSend | None = None,
    ) -> str:
        """Request a refill; -> the upstream refill id. `before_send`: as for `add`."""
        form = self._form("refill", order=str(order_id))
        return await self._call(form, _refill_id, idempotency_key, before_send)

    async def multi_refill(
        self, ids: Iterable[str | int], idempotency_key: str | None = None
    ) -> dict[str, str | ItemError]:
        """Refills for up to 100 orders; -> order id -> refill id (or `ItemError`)."""
        batch = join_ids(ids)
        form = self._form("refill", orders=",".join(batch))
        return await self._call(
            form,
            lambda data: parse_per_id(data, batch, "order", "refill", as_id),
            idempotency_key,
        )

    async def refill_status(self, ids: Iterable[str | int]) -> dict[str, str | ItemError]:
        """Refill id -> Pending / In progress / Completed / Rejected / Error (or `ItemError`)."""
        batch = join_ids(ids)
        form = self._form("refill_status", refills=",".join(batch))
        return await self._call(
            form, lambda data: parse_per_id(data, batch, "refill", "status", refill_state)
        )

    async def balance(self) -> Balance:
        return await self._call(self._form("balance"), parse_balance)

    # -- one call ---------------------------------------------------------------------------

    def _form(self, action: str, **extra: str) -> dict[str, str]:
        return {"key": self._key, "action": action, **extra}

    async def _call(
        self,
        form: dict[str, str],
        parse: Callable[[Any], T],
        idempotency_key: str | None = None,
        before_send: BeforeSend | None = None,
    ) -> T:
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
                result = parse(await self._exchange(form, idempotency_key))
            except ProviderUnavailable as exc:
                self.stats.unavailable += 1
                if isinstance(exc, UnreadableAnswer):
                    self._not_understood(form["action"], 1, exc.reason)
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
                    self._not_understood(form["action"], len(bad), bad[0].message)
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

    async def _exchange(self, form: dict[str, str], idempotency_key: str | None) -> Any:
        headers = {**_HEADERS, "Idempotency-Key": idempotency_key} if idempotency_key else _HEADERS
        session = self._session or self._open()
        self.stats.calls += 1
        try:
            async with asyncio.timeout(self._timeout):
                async with session.post(
                    self._url,
                    data=form,
                    headers=headers,
                    allow_redirects=False,
                    timeout=self._client_timeout,
                    auto_decompress=False,  # also when the session is a caller's
                ) as resp:
                    body = await self._read(resp, self._answer_bound(form))
                    return interpret(
                        resp.status,
                        resp.headers.get("Content-Type", ""),
                        body,
                        resp.headers.get("Retry-After"),
                        time.time(),
                    )
        except aiohttp.ClientConnectorError as exc:  # incl. connect timeout: nothing was sent
            raise ProviderUnavailable(f"cannot connect: {exc}", maybe_sent=False) from None
        except TimeoutError:
            raise ProviderUnavailable(
                f"no answer within {self._timeout:g} s", maybe_sent=True
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ProviderUnavailable(f"transport: {exc!r}", maybe_sent=True) from None

    def _answer_bound(self, form: dict[str, str]) -> int:
        if form["action"] == "services":
            return self._max_answer
        batch = form.get("orders") or form.get("refills")
        ids = batch.count(",") + 1 if batch else 0
        return min(ANSWER_BYTES + ids * ANSWER_BYTES_PER_ID, self._max_answer)

    @staticmethod
    async def _read(resp: aiohttp.ClientResponse, bound: int) -> bytes:
        """The raw body, at most `bound` bytes: a compressed or larger answer is refused (and its
        connection dropped, as the body is left unread)."""
        coding = resp.headers.get("Content-Encoding", "identity").strip().lower()
        if coding != "identity":
            raise ProviderUnavailable(f"compressed answer ({coding[:40]})", maybe_sent=True)
        if resp.content_length is not None and resp.content_length > bound:
            raise ProviderUnavailable("answer too large", maybe_sent=True)
        body = bytearray()
        async for chunk in resp.content.iter_any():
            body += chunk
            if len(body) > bound:
                raise ProviderUnavailable("answer too large", maybe_sent=True)
        return bytes(body)

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self._max_concurrency, keepalive_timeout=30.0)
        self._session = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
        )
        return self._session


def _form_value(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, list | tuple):
        return "\n".join(str(v) for v in value)
    return str(value)


def _order_id(data: Any) -> str:
    return parse_order_id(data, "order")


def _refill_id(data: Any) -> str:
    return parse_order_id(data, "refill")
