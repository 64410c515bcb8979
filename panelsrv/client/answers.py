"""What an API v2 panel's answers mean: typed results, the failure types, the bounds.

Pure: imports only msgspec and `client.dialects` (what panels' words and shapes mean), does no
I/O and never reads a clock (times are passed in). The I/O shells are `client.aio` and
`client.blocking`, through `client.core`; the worker's `Provider` is one more user. Invariant:
`interpret` and the `parse_*` functions either return a typed value or raise
`ProviderUnavailable` / `ProviderError`; nothing a provider sends can raise anything else, and
a word the table does not know never maps to a status that moves money. Every number a
provider sends is bounded here to the column it is stored in (counts: 0 to 2**63-1), and an
upstream id is one that can be sent back in a comma-separated batch.

An answer that cannot be understood (not JSON, no known shape, an unknown status) raises
`UnreadableAnswer`, or, for one entry of a batch, is an `ItemError` marked `unreadable`: it
changes nothing, and the worker's `Provider` counts and logs it. So is a `Partial` whose
`remains` is not a count; one whose `remains` is unknown (absent, null, "", "Unknown") is not
final either (its refund depends on it): the order stays active and is polled again.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Annotated, Any

import msgspec

from panelsrv.client.dialects import DIALECT, batch_entries, means, unwrap

MAX_BATCH = 100  # ids per multi call: the API's limit
MISSING = "Missing from provider answer"
BIGINT_MAX = 2**63 - 1  # counts (start_count, remains, min, max) are bigint columns
INT_MAX = 2**31 - 1  # avg_time is an integer column
MAX_RETRY_AFTER = 3600.0  # seconds: a provider's Retry-After is clamped to [0, 1 h]

# -- failures -------------------------------------------------------------------------------


class ProviderFailure(Exception):
    """Base of everything a provider call raises on purpose."""


class ProviderUnavailable(ProviderFailure):
    """No usable answer: transport error, timeout, 5xx, 429, HTML, non-JSON or wrong shape.

    Retry later. `maybe_sent` is False only when the request certainly never reached the
    provider (connection refused, connect timeout, circuit open); when True an `add` may have
    created the order upstream, so resend it only with the same idempotency key or after
    checking. `retry_after` is the provider's or the breaker's hint in seconds, when known.
    `transient`: the same request may well get an answer later (a timeout, a dropped connection,
    429, 5xx, 409 while the same idempotency key is in flight); False when asking again would
    get the same (a wrong URL: 3xx, 404, 405, HTML; an unreadable, compressed or oversized
    answer). The clients retry only transient failures.
    """

    def __init__(
        self,
        reason: str,
        *,
        maybe_sent: bool,
        retry_after: float | None = None,
        transient: bool = True,
    ):
        super().__init__(reason)
        self.reason = reason
        self.maybe_sent = maybe_sent
        self.retry_after = retry_after
        self.transient = transient


class UnreadableAnswer(ProviderUnavailable):
    """An answer arrived but cannot be understood: not JSON, or JSON of no known shape. It
    changes nothing; the worker's `Provider` counts it (per provider and action) and logs it."""

    def __init__(self, reason: str):
        super().__init__(reason, maybe_sent=True, transient=False)


class ErrorKind(enum.Enum):
    NO_FUNDS = "no_funds"  # our account at the provider is short: top it up, retry
    ACTIVE_LINK = "active_link"  # the provider's duplicate-link guard: retry when it finishes
    AUTH = "auth"  # our key at the provider is wrong: an operator problem, not the order's
    REJECTED = "rejected"  # anything else: the provider refused this request for good

    @property
    def hold(self) -> bool:
        """True when the order should wait and be retried (and the operator told)."""
        return self is not ErrorKind.REJECTED


def classify(message: str, http_status: int = 200) -> ErrorKind:
    text = message.lower()
    by_status = DIALECT["http status"].get(str(http_status))
    if by_status is not None:
        return ErrorKind(by_status)
    if any(p in text for p in _FUNDS):
        return ErrorKind.NO_FUNDS
    if "active order" in text:
        return ErrorKind.ACTIVE_LINK
    if http_status in (401, 403) or any(p in text for p in _AUTH):
        return ErrorKind.AUTH
    return ErrorKind.REJECTED


_FUNDS = ("not enough funds", "insufficient funds", "insufficient balance", "not enough balance")
_AUTH = ("invalid api key", "incorrect api key", "invalid key", "invalid signature")


class ProviderError(ProviderFailure):
    """The provider answered `{"error": message}` for the whole request."""

    def __init__(self, message: str, http_status: int = 200):
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.kind = classify(message, http_status)

    @property
    def hold(self) -> bool:
        return self.kind.hold


# -- results ----------------------------------------------------------------------------------


Count = Annotated[int, msgspec.Meta(ge=0, le=BIGINT_MAX)]


class Service(msgspec.Struct, frozen=True, kw_only=True):
    service: str
    name: str
    rate: Decimal  # per 1000, in the provider's currency; not negative, below 1e15
    min: Count
    max: Count
    type: str = "default"
    category: str = ""
    dripfeed: bool = False
    refill: bool = False
    cancel: bool = False
    avg_time: int | None = None


class OrderStatus(msgspec.Struct, frozen=True, kw_only=True):
    status: str  # one of the API's seven, after ORDER_STATUSES
    start_count: int | None = None
    remains: int | None = None
    charge: Decimal | None = None
    currency: str | None = None


class ItemError(msgspec.Struct, frozen=True):
    """One id of a multi call failed; the others may have succeeded. `unreadable`: its entry
    could not be understood (rather than refused by the provider): counted and logged."""

    message: str
    unreadable: bool = False

    @property
    def kind(self) -> ErrorKind:
        return classify(self.message)


class Balance(msgspec.Struct, frozen=True):
    balance: Decimal
    currency: str


class Webhook(msgspec.Struct, frozen=True, kw_only=True):
    webhook: str
    url: str
    events: list[str]
    active: bool = True


class WebhookCreated(msgspec.Struct, frozen=True):
    """A new webhook and its signing secret, which the panel shows this once."""

    webhook: str
    secret: str


# -- decoding ---------------------------------------------------------------------------------

_NAN = Decimal("NaN")


def _number(text: str) -> Decimal:
    """A JSON number with a fraction or exponent, exactly (rates are money). One whose exponent
    is past what Decimal can hold (`1e99999999999999999999`) is NaN: every reader of a number
    here refuses one that is not finite, so it is a value not understood, never an exception."""
    try:
        return Decimal(text)
    except ArithmeticError:
        return _NAN


_DECODER = msgspec.json.Decoder(float_hook=_number)


def interpret(
    http_status: int, content_type: str, body: bytes, retry_after: str | None, now: float
) -> Any:
    """An HTTP answer -> what it says (out of its envelope, if any), or the failure it means.
    `now`: the wall clock (Unix seconds), for a Retry-After given as an HTTP-date."""
    if http_status in _NOT_PROCESSED or not (200 <= http_status < 300 or 400 <= http_status < 500):
        raise ProviderUnavailable(
            f"HTTP {http_status}",
            maybe_sent=http_status not in _NOT_PROCESSED,
            retry_after=retry_after_seconds(retry_after, now),
            transient=http_status == 429 or http_status >= 500,
        )
    try:
        data = _DECODER.decode(body)
    except msgspec.DecodeError:
        data = _NOT_JSON
    if str(http_status) in DIALECT["http status"]:  # whatever the body says
        raise ProviderError(_refusal(data) or f"HTTP {http_status}", http_status)
    if "html" in content_type.lower() or body.lstrip()[:1] == b"<":
        raise ProviderUnavailable(
            f"HTML answer (HTTP {http_status})", maybe_sent=True, transient=False
        )
    if data is _NOT_JSON:
        raise UnreadableAnswer(f"not JSON (HTTP {http_status})")
    try:
        answer, refused = unwrap(data)
    except ValueError as exc:
        raise wrong_shape(str(exc)) from None
    if refused is not None:
        if http_status == 409:  # our idempotency key is still in flight upstream
            raise ProviderUnavailable(refused, maybe_sent=True)
        raise ProviderError(refused, http_status)
    if http_status >= 400:
        raise UnreadableAnswer(f"HTTP {http_status} without an error")
    return answer


_NOT_JSON = object()


def _refusal(data: Any) -> str | None:
    try:
        return unwrap(data)[1]
    except ValueError:
        return None


# Answers that mean the request was not processed: rate limited, or a wrong URL (which must
# hold orders for the operator, not fail them with a refund).
_NOT_PROCESSED = frozenset((404, 405, 429))


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """A Retry-After header (delay-seconds or an HTTP-date) -> seconds in [0, MAX_RETRY_AFTER];
    None when absent or not understood. Never inf or NaN: the delay goes into a timestamp."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError, OverflowError):
            return None
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def wrong_shape(what: str) -> UnreadableAnswer:
    return UnreadableAnswer(f"unexpected answer shape: {what}")


def as_int(value: Any, maximum: int = BIGINT_MAX) -> int | None:
    """A count, 0 to `maximum`: 14523, "14523", "14523.0", 14523.0 -> 14523; None, "" -> None;
    anything else (negative, too large, fractional, not a number) -> ValueError."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("boolean")
    if isinstance(value, int):
        number = value
    else:
        exact = Decimal(value.strip()) if isinstance(value, str) else Decimal(value)
        # Bound the exponent before int(): "1e999999" would otherwise build a million-digit int.
        if not exact.is_finite() or exact.adjusted() > 18 or exact != exact.to_integral_value():
            raise ValueError(f"not an integer: {value!r}")
        number = int(exact)
    if not 0 <= number <= maximum:
        raise ValueError(f"out of range 0..{maximum}: {value!r}")
    return number


def as_amount(value: Any, *, allow_negative: bool = False) -> Decimal | None:
    """A money amount: a finite decimal below 1e15 in size (string or number), not negative
    unless allowed; None, "" -> None."""
    if value is None or value == "":
        return None
    number = Decimal(str(value).strip())
    if not number.is_finite() or number.adjusted() >= 15 or (number < 0 and not allow_negative):
        raise ValueError(f"not an amount: {value!r}")
    return number


def usable_id(text: str) -> bool:
    """An upstream id we can send back: 1..64 printable characters, no comma (ids are joined
    by commas in batch calls), no surrounding space."""
    return 0 < len(text) <= 64 and text.isprintable() and "," not in text and text == text.strip()


def as_id(value: Any) -> str | None:
    """An upstream id (int or short string) as text; None when it is not a usable one."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return str(value)
    if isinstance(value, str) and usable_id(value.strip()):
        return value.strip()
    return None


def parse_services(data: Any, max_rate: Decimal | None = None) -> tuple[list[Service], int]:
    """-> (services, how many entries were skipped as malformed or out of range: a rate above
    `max_rate` (when given), counts outside bigint, min < 1 or max < min)."""
    if not isinstance(data, list):
        raise wrong_shape("services is not a list")
    services: list[Service] = []
    skipped = 0
    for item in data:
        try:
            fields = dict(item)
            fields["service"] = as_id(fields.get("service"))
            fields["rate"] = as_amount(fields.get("rate"))
            fields["avg_time"] = _optional_int(fields.get("avg_time"), INT_MAX)
            service = msgspec.convert(fields, Service, strict=False)
        except (TypeError, ValueError, ArithmeticError, msgspec.ValidationError):
            skipped += 1
            continue
        too_dear = max_rate is not None and service.rate > max_rate
        if too_dear or not 1 <= service.min <= service.max:
            skipped += 1
            continue
        services.append(service)
    return services, skipped


def _optional_int(value: Any, maximum: int) -> int | None:
    """For cosmetic fields (avg_time): anything that is not a count up to `maximum` is unknown."""
    try:
        return as_int(value, maximum)
    except (TypeError, ValueError, ArithmeticError):
        return None


def parse_order_id(data: Any, field: str) -> str:
    """`{"order": 8842}` / `{"refill": 317}` -> "8842"."""
    upstream = as_id(data.get(field)) if isinstance(data, dict) else None
    if upstream is None:
        raise wrong_shape(f"no {field} id")
    return upstream


def parse_status_entry(entry: Any) -> OrderStatus | ItemError:
    try:
        entry, refused = unwrap(entry)
    except ValueError as exc:
        return ItemError(str(exc), unreadable=True)
    if refused is not None:
        return ItemError(refused)
    if not isinstance(entry, dict):
        return ItemError("unexpected status entry", unreadable=True)
    status = means("order status", entry.get("status"))
    if status is None:
        return ItemError(f"unknown status {entry.get('status')!r:.80}", unreadable=True)
    # Only `remains` moves money (a Partial's refund); the rest is shown to the customer. So a
    # number the worker cannot use never holds back the status it came with: an unusable
    # start_count or charge is unknown, a negative remains is over-delivery (0), one past the
    # column's range the largest count. Only a Partial needs a usable remains.
    remains = entry.get("remains")
    result = OrderStatus(
        status=status,
        start_count=_optional_int(entry.get("start_count"), BIGINT_MAX),
        remains=_clamped_count(remains),
        charge=_optional_amount(entry.get("charge")),
        currency=str(entry["currency"])[:8] if entry.get("currency") else None,
    )
    if result.status == "Partial" and result.remains is None:
        unknown = remains is None or means("count", remains) is not None
        return ItemError("Partial without a usable remains", unreadable=not unknown)
    return result


def _clamped_count(value: Any) -> int | None:
    """A remains: a whole number clamped to 0..BIGINT_MAX; None when absent or not one."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        exact = Decimal(value.strip()) if isinstance(value, str) else Decimal(value)
        if not exact.is_finite() or exact != exact.to_integral_value():
            return None
    except (TypeError, ValueError, ArithmeticError):
        return None
    # Compared as Decimal first: int() of "1e999999" would build a million-digit number.
    return 0 if exact < 0 else BIGINT_MAX if exact > BIGINT_MAX else int(exact)


def _optional_amount(value: Any) -> Decimal | None:
    """For a cosmetic amount (the provider's charge): anything but a usable one is unknown."""
    try:
        return as_amount(value)
    except (TypeError, ValueError, ArithmeticError):
        return None


def parse_status(data: Any) -> OrderStatus:
    result = parse_status_entry(data)
    if isinstance(result, ItemError):
        if result.unreadable:
            raise wrong_shape(result.message)
        raise ProviderUnavailable(result.message, maybe_sent=True)
    return result


def parse_multi_status(data: Any, ids: list[str]) -> dict[str, OrderStatus | ItemError]:
    if not isinstance(data, dict):
        raise wrong_shape("multi-status is not an object")
    if data and not any(oid in data for oid in ids):
        raise wrong_shape("multi-status names none of the ids asked")
    return {
        oid: parse_status_entry(data[oid]) if oid in data else ItemError(MISSING) for oid in ids
    }


def parse_per_id(
    data: Any, ids: list[str], id_field: str, value_field: str, value: Callable[[Any], Any]
) -> dict[str, Any]:
    """A batch answer (`dialects.batch_entries`) -> {id: value(v) | ItemError} for every id
    asked; an entry is `{value_field: v}`, `{"error": m}` or v. `value`: v typed, or None."""
    entries = batch_entries(data, id_field)
    if entries is None:
        raise wrong_shape(f"{value_field} answer is neither a list nor an object")
    results: dict[str, Any] = dict.fromkeys(ids, ItemError(MISSING))
    named = 0
    for key, entry in entries:
        upstream = as_id(key)
        if upstream in results:
            named += 1
            results[upstream] = _batch_value(entry, value_field, value)
    if data and not named:
        raise wrong_shape(f"{value_field} answer names none of the ids asked")
    return results


def _batch_value(entry: Any, field: str, value: Callable[[Any], Any]) -> Any:
    got = entry.get(field, entry) if isinstance(entry, dict) else entry
    if isinstance(got, dict):
        error = got.get("error")
        return ItemError(str(error)) if error else ItemError(f"no {field}", unreadable=True)
    typed = value(got)
    return typed if typed is not None else ItemError(f"bad {field}: {got!r:.80}", unreadable=True)


def cancel_accepted(value: Any) -> bool | None:
    return means("cancel", value)


def refill_state(value: Any) -> str | None:
    return means("refill status", value)


def parse_one(data: Any, field: str, value: Callable[[Any], Any]) -> Any:
    """A single-id answer, `{field: v}` (`{"cancel": 1}`, `{"status": "Completed"}`) -> value(v);
    a v that means nothing is an unreadable answer."""
    typed = value(data.get(field)) if isinstance(data, dict) else None
    if typed is None:
        raise wrong_shape(f"no usable {field}")
    return typed


def parse_webhook_created(data: Any) -> WebhookCreated:
    webhook = as_id(data.get("webhook")) if isinstance(data, dict) else None
    secret = data.get("secret") if isinstance(data, dict) else None
    if webhook is None or not isinstance(secret, str) or not secret:
        raise wrong_shape("no webhook id and secret")
    return WebhookCreated(webhook, secret)


def parse_webhooks(data: Any) -> list[Webhook]:
    if not isinstance(data, list):
        raise wrong_shape("webhooks is not a list")
    try:
        return [
            msgspec.convert({**item, "webhook": as_id(item.get("webhook"))}, Webhook)
            for item in data
        ]
    except (TypeError, AttributeError, msgspec.ValidationError):
        raise wrong_shape("a webhook entry") from None


def parse_deleted(data: Any) -> bool:
    # `{"deleted": 1}`: said in the words that accept a cancel.
    if not isinstance(data, dict) or means("cancel", data.get("deleted")) is not True:
        raise wrong_shape("no deleted")
    return True


def parse_balance(data: Any) -> Balance:
    try:
        amount = as_amount(data["balance"], allow_negative=True)  # an account on credit
        if amount is None:
            raise ValueError("empty")
        return Balance(amount, str(data.get("currency") or ""))
    except (TypeError, KeyError, ValueError, ArithmeticError):
        raise wrong_shape("no balance") from None


def join_ids(ids: Iterable[str | int]) -> list[str]:
    """Validate a batch of ids (1..MAX_BATCH, no commas) and return them as text."""
    text = [str(i).strip() for i in ids]
    if not 0 < len(text) <= MAX_BATCH:
        raise ValueError(f"between 1 and {MAX_BATCH} ids per call, got {len(text)}")
    if not all(map(usable_id, text)):
        raise ValueError("ids must be 1..64 printable characters without commas")
    return text
