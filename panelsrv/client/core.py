"""The clients' one code path, sans-IO: a call built, its answer read, its retries decided.

Imports the standard library and the pure `client.answers`; sends nothing, never sleeps and
never reads a clock (times are passed in). `Core` turns an action into a `Call` (its form
fields, its idempotency key, whether it may be repeated, how its answer is read and how large
it may be), a `Call` into the bytes of a `Request`, and a `Reply` into the typed result or the
failure it means. `Core.exchange` is a whole call, retries included, as a generator that yields
a `Request` to send or a number of seconds to wait: `client.aio` and `client.blocking` drive it
with their own I/O, so the two clients differ in nothing but how they send and wait.

Invariants:
- A request is a form-encoded POST, as reseller SDKs send, built (and signed, with
  sign_version 2) once per call: every attempt sends the same bytes and the same
  `Idempotency-Key`, so a retried `add` is at most one order.
- A failure that may have reached the panel (`maybe_sent`) is retried only for an idempotent
  call: never an `add` or `refill` sent without an idempotency key, never a `webhook_add`.
- Only transient failures are retried (`ProviderUnavailable.transient`), `Retry.attempts` tries
  in all, no wait ending past `Retry.total` seconds after the first try; the panel's
  `Retry-After` (429, 503) is the wait when it gives one. A `ProviderError` (the panel refused)
  is never retried.
- `ValueError` for a caller's mistake (no ids or more than 100, a reserved field, a URL that is
  not http or https), raised before anything is sent.
- An answer is refused (`ProviderUnavailable`, not transient) when compressed or larger than its
  call's bound (`check_answer_head`, `check_answer_size`); the transports' failures are worded
  and classed (`maybe_sent`) here too (`cannot_connect`, `no_answer`, `transport_failure`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Generic, TypeVar, overload
from urllib.parse import quote, urlencode, urlsplit

from panelsrv.client.answers import (
    Balance,
    ItemError,
    OrderStatus,
    ProviderUnavailable,
    Service,
    Webhook,
    WebhookCreated,
    as_id,
    cancel_accepted,
    interpret,
    join_ids,
    parse_balance,
    parse_deleted,
    parse_multi_status,
    parse_one,
    parse_order_id,
    parse_per_id,
    parse_services,
    parse_status,
    parse_webhook_created,
    parse_webhooks,
    refill_state,
)

T = TypeVar("T")
Id = int | str
USER_AGENT = "panelsrv-client/1 (+api-v2)"
# The most an answer may weigh, from its shape, with room for the fields a panel adds: one
# object (add, status, refill, balance, an error), plus one per id of a batch (status, cancel,
# refill and refill_status of up to 100). A 100-id status answer is about 12 KB; its bound is
# 216 KiB. Only the catalogue (services: thousands of entries) may reach `max_answer_bytes`.
ANSWER_BYTES = 16 << 10
ANSWER_BYTES_PER_ID = 2 << 10
MAX_ANSWER_BYTES = 8 << 20
# Set by the client, never by a caller's field.
_RESERVED = frozenset(("key", "action", "sign", "sign_version", "timestamp"))


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One action, ready to send: `fields` beside `key` and `action`; `read`: the answer
    (out of its envelope) -> the typed result. `idempotent`: may be sent again when an attempt
    may have reached the panel."""

    action: str
    fields: Mapping[str, str]
    read: Callable[[Any], T]
    answer_bytes: int = ANSWER_BYTES
    idempotency_key: str | None = None
    idempotent: bool = True


@dataclass(frozen=True, slots=True)
class Request:
    """What a transport sends: `POST url` with these headers and body; it reads at most
    `answer_bytes` of the answer, undecompressed."""

    url: str
    headers: Mapping[str, str]
    body: bytes
    answer_bytes: int


@dataclass(frozen=True, slots=True)
class Reply:
    """What a transport got: the status, two headers, the whole (bounded) body."""

    status: int
    content_type: str
    retry_after: str | None
    body: bytes


@dataclass(frozen=True, slots=True)
class Retry:
    """When to try again: `attempts` tries in all (1: never again); no wait that would end more
    than `total` seconds after the first try began; waits of `backoff` seconds doubling up to
    `max_backoff`, jittered (half to all of it), or the panel's Retry-After when it sent one."""

    attempts: int = 4
    total: float = 60.0
    backoff: float = 0.5
    max_backoff: float = 8.0

    def wait(
        self,
        failure: ProviderUnavailable,
        tries: int,
        elapsed: float,
        idempotent: bool,
        rand: float,
    ) -> float | None:
        """Seconds to wait before the next try after `tries` failed ones, or None: give up.
        `rand`: uniform in [0, 1), for the jitter."""
        if tries >= self.attempts or not failure.transient:
            return None
        if failure.maybe_sent and not idempotent:
            return None
        if failure.retry_after is not None:
            wait = failure.retry_after
        else:
            wait = min(self.max_backoff, self.backoff * 2 ** (tries - 1)) * (0.5 + rand / 2)
        return wait if elapsed + wait <= self.total else None


RETRY = Retry()  # the clients' default
NO_RETRY = Retry(attempts=1)
Step = Request | float  # what `exchange` asks of its driver: send this, or wait this long


def canonical_v2(fields: Mapping[str, str]) -> str:
    """The sign_version 2 string (docs/API.md "Signatures"): every field but `sign`, name and
    value percent-encoded (RFC 3986 unreserved kept), sorted by encoded name, joined by `&`."""
    pairs = sorted((quote(k, safe=""), quote(v, safe="")) for k, v in fields.items() if k != "sign")
    return "&".join(f"{name}={value}" for name, value in pairs)


def sign_v2(key: str, fields: Mapping[str, str]) -> str:
    return hmac.new(key.encode(), canonical_v2(fields).encode(), hashlib.sha256).hexdigest()


def new_idempotency_key() -> str:
    """192 random bits, URL-safe: unique to one call of this client."""
    return secrets.token_urlsafe(24)


def form_value(value: Any) -> str | None:
    """A field's form text: None left out, booleans 1/0, lists one item a line."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, list | tuple):
        return "\n".join(str(v) for v in value)
    return str(value)


def check_answer_head(coding: str, length: int | None, bound: int) -> None:
    """Refuse an answer from its head, before its body is read: compressed (`coding`: its
    Content-Encoding, "identity" when it has none) or of a declared `length` above `bound`."""
    coding = coding.strip().lower()
    if coding != "identity":
        raise ProviderUnavailable(
            f"compressed answer ({coding[:40]})", maybe_sent=True, transient=False
        )
    if length is not None:
        check_answer_size(length, bound)


def check_answer_size(size: int, bound: int) -> None:
    """Refuse an answer of `size` bytes (so far) when that is more than its call's `bound`."""
    if size > bound:
        raise ProviderUnavailable("answer too large", maybe_sent=True, transient=False)


def cannot_connect(detail: str) -> ProviderUnavailable:
    """No connection was made: the request certainly never reached the panel."""
    return ProviderUnavailable(f"cannot connect: {detail}", maybe_sent=False)


def no_answer(timeout: float) -> ProviderUnavailable:
    """The exchange outlasted its `timeout` seconds: the request may have reached the panel."""
    return ProviderUnavailable(f"no answer within {timeout:g} s", maybe_sent=True)


def transport_failure(exc: BaseException) -> ProviderUnavailable:
    """The connection failed once made: the request may have reached the panel."""
    return ProviderUnavailable(f"transport: {exc!r}", maybe_sent=True)


class Core:
    """Builds every action's `Call` for one panel URL and key, and runs one (`exchange`).

    `sign`: every request carries `sign_version=2`, `timestamp` and `sign`. `headers`: extra
    request headers (a `Host` for a panel reached by address, say); `max_answer_bytes` bounds
    the largest answer, the catalogue. Single-id forms (`status(8842)`) answer one result and
    raise `ProviderError` when refused; lists of 1 to 100 ids (`status([8842, 8843])`) answer a
    dict by id, every id asked present, an `ItemError` where that id failed.
    """

    __slots__ = ("_headers", "_key", "_sign", "max_answer_bytes", "url")

    def __init__(
        self,
        url: str,
        key: str,
        *,
        sign: bool = False,
        headers: Mapping[str, str] | None = None,
        user_agent: str = USER_AGENT,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise ValueError(f"not an http or https URL: {url!r}")
        self.url = url
        self._key = key
        self._sign = sign
        self.max_answer_bytes = max_answer_bytes
        self._headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
            # aiohttp offers gzip/deflate/br by default; a compressed answer is refused unread.
            "Accept-Encoding": "identity",
            "User-Agent": user_agent,
            **(headers or {}),
        }

    # -- the actions ------------------------------------------------------------------------

    def services(self) -> Call[list[Service]]:
        """The catalogue; malformed entries are left out (`catalogue` counts them)."""
        return Call("services", {}, lambda data: parse_services(data)[0], self.max_answer_bytes)

    def catalogue(self, max_rate: Decimal | None = None) -> Call[tuple[list[Service], int]]:
        """(services, how many entries were skipped: malformed, or a rate above `max_rate`)."""
        return Call(
            "services", {}, lambda data: parse_services(data, max_rate), self.max_answer_bytes
        )

    def add(
        self,
        service: Id,
        link: str | None = None,
        quantity: int | None = None,
        *,
        idempotency_key: str | bool = True,
        **fields: Any,
    ) -> Call[str]:
        """-> the order id. `fields`: runs, interval, a type's extras (comments, usernames,
        ...; a list is sent one item a line) and provider fields (country, ...), None left out.
        `idempotency_key`: True makes one, a str is yours (send the same again to retry this
        order later), False sends none: then the call is never retried once it may have gone."""
        given = {"service": service, "link": link, "quantity": quantity, **fields}
        return self.add_fields(given, idempotency_key=idempotency_key)

    def add_fields(
        self, fields: Mapping[str, Any], *, idempotency_key: str | bool = True
    ) -> Call[str]:
        """`add` from a mapping of its fields (service, link, quantity, ...)."""
        if reserved := _RESERVED.intersection(fields):
            raise ValueError(f"{min(reserved)!r} is set by the client")
        form = {name: text for name, v in fields.items() if (text := form_value(v)) is not None}
        key = _idempotency(idempotency_key)
        return Call("add", form, _order_id, idempotency_key=key, idempotent=key is not None)

    @overload
    def status(self, orders: Id) -> Call[OrderStatus]: ...  # type: ignore[overload-overlap]
    @overload
    def status(self, orders: Iterable[Id]) -> Call[dict[str, OrderStatus | ItemError]]: ...
    def status(self, orders: Id | Iterable[Id]) -> Call[Any]:
        if isinstance(orders, int | str):
            return Call("status", {"order": _one(orders)}, parse_status)
        batch = join_ids(orders)
        return _batch("status", "orders", batch, lambda data: parse_multi_status(data, batch))

    @overload
    def cancel(  # type: ignore[overload-overlap]
        self, orders: Id, *, idempotency_key: str | bool = ...
    ) -> Call[bool]: ...
    @overload
    def cancel(
        self, orders: Iterable[Id], *, idempotency_key: str | bool = ...
    ) -> Call[dict[str, bool | ItemError]]: ...
    def cancel(self, orders: Id | Iterable[Id], *, idempotency_key: str | bool = True) -> Call[Any]:
        """True where the panel accepted the cancel. Asking twice is harmless: idempotent."""
        key = _idempotency(idempotency_key)
        if isinstance(orders, int | str):
            read = _single("cancel", cancel_accepted)
            return Call("cancel", {"order": _one(orders)}, read, idempotency_key=key)
        batch = join_ids(orders)
        read_batch = _per_id(batch, "order", "cancel", cancel_accepted)
        return _batch("cancel", "orders", batch, read_batch, key, idempotent=True)

    @overload
    def refill(  # type: ignore[overload-overlap]
        self, orders: Id, *, idempotency_key: str | bool = ...
    ) -> Call[str]: ...
    @overload
    def refill(
        self, orders: Iterable[Id], *, idempotency_key: str | bool = ...
    ) -> Call[dict[str, str | ItemError]]: ...
    def refill(self, orders: Id | Iterable[Id], *, idempotency_key: str | bool = True) -> Call[Any]:
        """-> the refill id (by order id for a list). `idempotency_key`: as for `add`."""
        key = _idempotency(idempotency_key)
        if isinstance(orders, int | str):
            form = {"order": _one(orders)}
            return Call("refill", form, _refill_id, idempotency_key=key, idempotent=key is not None)
        batch = join_ids(orders)
        read_batch = _per_id(batch, "order", "refill", as_id)
        return _batch("refill", "orders", batch, read_batch, key, idempotent=key is not None)

    @overload
    def refill_status(self, refills: Id) -> Call[str]: ...  # type: ignore[overload-overlap]
    @overload
    def refill_status(self, refills: Iterable[Id]) -> Call[dict[str, str | ItemError]]: ...
    def refill_status(self, refills: Id | Iterable[Id]) -> Call[Any]:
        """Pending / In progress / Completed / Rejected / Error (by refill id for a list)."""
        if isinstance(refills, int | str):
            return Call("refill_status", {"refill": _one(refills)}, _single("status", refill_state))
        batch = join_ids(refills)
        read = _per_id(batch, "refill", "status", refill_state)
        return _batch("refill_status", "refills", batch, read)

    def balance(self) -> Call[Balance]:
        return Call("balance", {}, parse_balance)

    def webhook_add(self, url: str, events: Iterable[str] | None = None) -> Call[WebhookCreated]:
        """A webhook to `url` for `events` (order.status, refill.status; None: both). Never
        retried once it may have gone: a second one would be another webhook."""
        form = {"url": url} if events is None else {"url": url, "events": ",".join(events)}
        return Call("webhook_add", form, parse_webhook_created, idempotent=False)

    def webhooks(self) -> Call[list[Webhook]]:
        return Call("webhooks", {}, parse_webhooks)

    def webhook_delete(self, webhook: Id) -> Call[bool]:
        return Call("webhook_delete", {"webhook": _one(webhook)}, parse_deleted)

    # -- one call ---------------------------------------------------------------------------

    def request(self, call: Call[Any], now: float) -> Request:
        """The bytes of `call`; `now`: the wall clock, for a signature's timestamp."""
        fields = {"key": self._key, "action": call.action, **call.fields}
        if self._sign:
            fields["sign_version"] = "2"
            fields["timestamp"] = str(int(now))
            fields["sign"] = sign_v2(self._key, fields)
        headers = self._headers
        if call.idempotency_key is not None:
            headers = {**headers, "Idempotency-Key": call.idempotency_key}
        bound = min(call.answer_bytes, self.max_answer_bytes)
        return Request(self.url, headers, urlencode(fields).encode(), bound)

    @staticmethod
    def answer(call: Call[T], reply: Reply, now: float) -> T:
        """What `reply` says, typed, or the failure it means (`now`: wall clock, for an
        HTTP-date Retry-After)."""
        data = interpret(reply.status, reply.content_type, reply.body, reply.retry_after, now)
        return call.read(data)

    def exchange(
        self,
        call: Call[T],
        retry: Retry,
        clock: Callable[[], float],
        wall: Callable[[], float],
        rand: Callable[[], float],
    ) -> Generator[Step, Reply | None, T]:
        """`call` with its retries. Yields a `Request` (send it: send back its `Reply`, or
        throw the `ProviderUnavailable` it met) or seconds to wait (then send None); returns
        the result or raises the last failure. `clock`: monotonic, for `retry.total`."""
        request = self.request(call, wall())
        started = clock()
        tries = 0
        while True:
            tries += 1
            try:
                reply = yield request
                assert reply is not None, "a Request is answered with its Reply"
                return self.answer(call, reply, wall())
            except ProviderUnavailable as failure:
                wait = retry.wait(failure, tries, clock() - started, call.idempotent, rand())
                if wait is None:
                    raise
            yield wait


def _one(given: Id) -> str:
    """One id, as `join_ids` checks those of a list."""
    return join_ids([given])[0]


def _idempotency(given: str | bool) -> str | None:
    if given is True:
        return new_idempotency_key()
    return given or None


def _batch(
    action: str,
    field: str,
    batch: list[str],
    read: Callable[[Any], T],
    key: str | None = None,
    *,
    idempotent: bool = True,
) -> Call[T]:
    bound = ANSWER_BYTES + len(batch) * ANSWER_BYTES_PER_ID
    return Call(action, {field: ",".join(batch)}, read, bound, key, idempotent)


def _per_id(
    batch: list[str], id_field: str, value_field: str, value: Callable[[Any], Any]
) -> Callable[[Any], dict[str, Any]]:
    return lambda data: parse_per_id(data, batch, id_field, value_field, value)


def _single(field: str, value: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda data: parse_one(data, field, value)


def _order_id(data: Any) -> str:
    return parse_order_id(data, "order")


def _refill_id(data: Any) -> str:
    return parse_order_id(data, "refill")
