"""What an API v2 provider's answers mean: typed results, the status tables, the failure types.

Pure: imports only the leaf `money`, does no I/O and never reads a clock (times are passed in).
The I/O shell is `providers.py`. Invariant: `interpret` and the `parse_*` functions either
return a typed value or raise `ProviderUnavailable` / `ProviderError`; nothing a provider sends
can raise anything else, and an unknown status never maps to one that moves money. Every
number a provider sends is bounded here to the column it is stored in (counts: 0 to 2**63-1),
and an upstream id is one that can be sent back in a comma-separated batch.

Status table (keys compared after lower-casing, `_`/`-` -> space, runs of spaces collapsed):

| provider says                                        | order status   |
|------------------------------------------------------|----------------|
| pending, awaiting, queued                            | Pending        |
| in progress, inprogress, processing, started         | In progress    |
| completed, complete, success                         | Completed      |
| partial, partially completed                         | Partial        |
| canceled, cancelled                                  | Canceled       |
| refunded                                             | Refunded       |
| error, failed, fail                                  | Error          |

Refill statuses: pending/awaiting/queued -> Pending; in progress/inprogress/processing ->
In progress; completed/complete/success -> Completed; rejected/refused/canceled/cancelled ->
Rejected; error/failed/fail -> Error. Anything else is an `ItemError`, never a guess, and so
is a `Partial` without a usable `remains` (its refund depends on it): the order stays active.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Annotated, Any

import msgspec

from panelsrv import money

MAX_BATCH = 100  # ids per multi call: the API's limit
MISSING = "Missing from provider answer"
BIGINT_MAX = 2**63 - 1  # counts (start_count, remains, min, max) are bigint columns
INT_MAX = 2**31 - 1  # avg_time is an integer column
MAX_RETRY_AFTER = 3600.0  # seconds: a provider's Retry-After is clamped to [0, 1 h]
# The largest markup `service import` takes, and so the largest rate it can import: marked up,
# it stays within money.MAX_UNITS (and every product of it within bigint).
MAX_MARKUP_PERCENT = 10_000
MAX_RATE = Decimal(money.MAX_UNITS) / money.SCALE / (1 + Decimal(MAX_MARKUP_PERCENT) / 100)

ORDER_STATUSES = {
    **dict.fromkeys(("pending", "awaiting", "queued"), "Pending"),
    **dict.fromkeys(("in progress", "inprogress", "processing", "started"), "In progress"),
    **dict.fromkeys(("completed", "complete", "success"), "Completed"),
    **dict.fromkeys(("partial", "partially completed"), "Partial"),
    **dict.fromkeys(("canceled", "cancelled"), "Canceled"),
    "refunded": "Refunded",
    **dict.fromkeys(("error", "failed", "fail"), "Error"),
}
REFILL_STATUSES = {
    **dict.fromkeys(("pending", "awaiting", "queued"), "Pending"),
    **dict.fromkeys(("in progress", "inprogress", "processing"), "In progress"),
    **dict.fromkeys(("completed", "complete", "success"), "Completed"),
    **dict.fromkeys(("rejected", "refused", "canceled", "cancelled"), "Rejected"),
    **dict.fromkeys(("error", "failed", "fail"), "Error"),
}


# -- failures -------------------------------------------------------------------------------


class ProviderFailure(Exception):
    """Base of everything a provider call raises on purpose."""


class ProviderUnavailable(ProviderFailure):
    """No usable answer: transport error, timeout, 5xx, 429, HTML, non-JSON or wrong shape.

    Retry later. `maybe_sent` is False only when the request certainly never reached the
    provider (connection refused, connect timeout, circuit open); when True an `add` may have
    created the order upstream, so resend it only with the same idempotency key or after
    checking. `retry_after` is the provider's or the breaker's hint in seconds, when known.
    """

    def __init__(self, reason: str, *, maybe_sent: bool, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.maybe_sent = maybe_sent
        self.retry_after = retry_after


class CircuitOpen(ProviderUnavailable):
    """Refused locally: the provider failed too often; nothing was sent."""

    def __init__(self, retry_after: float):
        super().__init__("circuit open", maybe_sent=False, retry_after=retry_after)


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
    if http_status == 402 or any(p in text for p in _FUNDS):
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
    rate: Decimal  # per 1000, in the provider's currency; 0..MAX_RATE
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
    """One id of a multi call failed; the others may have succeeded."""

    message: str

    @property
    def kind(self) -> ErrorKind:
        return classify(self.message)


class Balance(msgspec.Struct, frozen=True):
    balance: Decimal
    currency: str


# -- decoding ---------------------------------------------------------------------------------

_DECODER = msgspec.json.Decoder(float_hook=Decimal)  # floats stay exact: rates are money


def interpret(
    http_status: int, content_type: str, body: bytes, retry_after: str | None, now: float
) -> Any:
    """An HTTP answer -> its decoded JSON, or the failure it means. `now`: the wall clock (Unix
    seconds), for a Retry-After given as an HTTP-date."""
    if http_status in _NOT_PROCESSED or not (200 <= http_status < 300 or 400 <= http_status < 500):
        raise ProviderUnavailable(
            f"HTTP {http_status}",
            maybe_sent=http_status not in _NOT_PROCESSED,
            retry_after=retry_after_seconds(retry_after, now),
        )
    if "html" in content_type.lower() or body.lstrip()[:1] == b"<":
        raise ProviderUnavailable(f"HTML answer (HTTP {http_status})", maybe_sent=True)
    try:
        data = _DECODER.decode(body)
    except msgspec.DecodeError:
        raise ProviderUnavailable(f"not JSON (HTTP {http_status})", maybe_sent=True) from None
    if isinstance(data, dict) and data.get("error") and "status" not in data:
        if http_status == 409:  # our idempotency key is still in flight upstream
            raise ProviderUnavailable(str(data["error"]), maybe_sent=True)
        raise ProviderError(str(data["error"]), http_status)
    if http_status >= 400:
        raise ProviderUnavailable(f"HTTP {http_status} without an error", maybe_sent=True)
    return data


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


def wrong_shape(what: str) -> ProviderUnavailable:
    return ProviderUnavailable(f"unexpected answer shape: {what}", maybe_sent=True)


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


def canonical(table: dict[str, str], status: Any) -> str | None:
    if not isinstance(status, str):
        return None
    return table.get(" ".join(status.replace("_", " ").replace("-", " ").split()).lower())


def parse_services(data: Any) -> tuple[list[Service], int]:
    """-> (services, how many entries were skipped as malformed or out of range: a rate above
    MAX_RATE, counts outside bigint, min < 1 or max < min)."""
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
        if service.rate > MAX_RATE or not 1 <= service.min <= service.max:
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
    if not isinstance(entry, dict):
        return ItemError("unexpected status entry")
    if entry.get("error") and "status" not in entry:
        return ItemError(str(entry["error"]))
    status = canonical(ORDER_STATUSES, entry.get("status"))
    if status is None:
        return ItemError(f"unknown status {entry.get('status')!r}")
    # Only `remains` moves money (a Partial's refund); the rest is shown to the customer. So a
    # number the worker cannot use never holds back the status it came with: an unusable
    # start_count or charge is unknown, a negative remains is over-delivery (0), one past the
    # column's range the largest count. Only a Partial needs a usable remains.
    result = OrderStatus(
        status=status,
        start_count=_optional_int(entry.get("start_count"), BIGINT_MAX),
        remains=_clamped_count(entry.get("remains")),
        charge=_optional_amount(entry.get("charge")),
        currency=str(entry["currency"])[:8] if entry.get("currency") else None,
    )
    if result.status == "Partial" and result.remains is None:
        return ItemError("Partial without a usable remains")
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
        raise wrong_shape(result.message)
    return result


def parse_multi_status(data: Any, ids: list[str]) -> dict[str, OrderStatus | ItemError]:
    if not isinstance(data, dict):
        raise wrong_shape("multi-status is not an object")
    return {
        oid: parse_status_entry(data[oid]) if oid in data else ItemError(MISSING) for oid in ids
    }


def parse_per_id(
    data: Any, ids: list[str], id_field: str, value_field: str, value: Callable[[Any], Any]
) -> dict[str, Any]:
    """`[{id_field: id, value_field: v | {"error": m}}]` -> {id: value(v) | ItemError}.

    `value` returns the typed success, or None when `v` is not one. Every id gets an entry.
    """
    if not isinstance(data, list):
        raise wrong_shape(f"{value_field} answer is not a list")
    results: dict[str, Any] = dict.fromkeys(ids, ItemError(MISSING))
    for item in data:
        key = as_id(item.get(id_field)) if isinstance(item, dict) else None
        if key not in results:
            continue
        got = item.get(value_field)
        if isinstance(got, dict) and got.get("error"):
            results[key] = ItemError(str(got["error"]))
        else:
            typed = value(got)
            results[key] = typed if typed is not None else ItemError(f"bad {value_field}: {got!r}")
    return results


def cancel_accepted(value: Any) -> bool | None:
    return True if value in (1, "1", True, "ok", "success") else None


def refill_state(value: Any) -> str | None:
    return canonical(REFILL_STATUSES, value)


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
