"""The fuzz targets: one pure function per surface that reads untrusted bytes, `target_x(data)`,
which returns when the property holds and raises AssertionError when it does not. Any other
exception is a crash: the surface let an input through that it should have refused cleanly.

Imports only panelsrv (no atheris, no hypothesis): `tests/fuzz/test_fuzz.py` feeds them
hypothesis bytes and the seed corpus (`tests/fuzz/corpus/<target>/`), `tests/fuzz/run.py`
drives them under atheris. Each target reads its first bytes as choices and the rest as the
payload, so a corpus file is mostly the text it is about:

- `reader`: [options, cut seed] + a byte stream from a client;
- `decode`: [content type, service type] + body, NUL, query string;
- `sign`: [action, key] + `name=value` lines;
- `money`: [options] + the text of an amount;
- `answers`: [call, HTTP status, content type, Retry-After] + a provider's answer body.
"""

from __future__ import annotations

import datetime as dt
import random
import re
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

import msgspec

from panelsrv import money
from panelsrv.api import sign
from panelsrv.api.actions import FIELD_NAMES, Add
from panelsrv.api.decode import decode_request
from panelsrv.api.validate import validate_add
from panelsrv.client.answers import (
    BIGINT_MAX,
    Balance,
    ItemError,
    OrderStatus,
    ProviderError,
    ProviderFailure,
    ProviderUnavailable,
    UnreadableAnswer,
)
from panelsrv.client.core import Core, Reply
from panelsrv.client.dialects import DIALECT, word
from panelsrv.errors import ApiError
from panelsrv.http import wire
from panelsrv.http.clientip import TrustedProxies
from panelsrv.http.listener import api_routes
from panelsrv.http.reader import Reader, Rules
from panelsrv.http.request import Bounds, Request
from panelsrv.servicetypes import SERVICE_TYPES


def _byte(data: bytes, at: int) -> int:
    return data[at] if len(data) > at else 0


# -- reader: bytes in any split, events out ---------------------------------------------------

# Small bounds reach the body and header-count refusals with short inputs; the defaults are
# what runs. The head's byte bound stays the default's, past any input (its raw-byte count at
# every split is tests/http/test_reader.py's).
_BOUNDS = (
    Bounds(),
    Bounds(max_body_bytes=32, max_headers=4),
)
_TRUSTED = TrustedProxies(("127.0.0.1",))
_ROUTES = api_routes(lambda req: (200, b"", b""))
_STATUS_LINE = re.compile(rb"HTTP/1\.1 [1-5][0-9][0-9] [\x20-\x7e]+")
_HEADER_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+): ([\x20-\x7e]*)")
MAX_EVERY_BYTE = 64  # streams up to this long are also fed one byte per read


class _Recorder:
    """A Reader's Sink that keeps every event as a comparable tuple, and checks each answer
    the connection would write for it."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []
        self.closed = False

    def complete(self, req: Request) -> None:
        assert not self.closed, "an event after the last word"
        req._pending = False
        if req._reject:
            _check_answer(wire.early_answer(req.early_status(), req._keep_alive), req._keep_alive)
        self.seen.append(
            (
                "complete",
                req.method,
                req.host,
                req.query,
                req.body,
                req.content_type,
                req.idempotency_key,
                req.cookie,
                req.client_ip,
                req._keep_alive,
                req._reject,
                req._http10,
            )
        )

    def rejected(self, reason: str) -> None:
        assert not self.closed, "an event after the last word"
        self.seen.append(("rejected", reason))

    def refuse(self, response: bytes, reason: str) -> None:
        assert not self.closed, "refused twice"
        _check_answer(response, keep_alive=False)
        self.closed = True
        self.seen.append(("refuse",))  # which one may depend on the cut (`target_reader`)

    def continue_100(self, req: Request) -> None:
        self.seen.append(("continue",))

    def deadline(self, seconds: float) -> None:
        assert seconds > 0
        # Left out of the comparison: a start refused in its first byte is refused before its
        # head's deadline is set, so where the reads are cut may add or drop one.


def _check_answer(response: bytes, keep_alive: bool) -> None:
    """A whole HTTP/1.1 answer: status line, well-formed headers, a Content-Length that is the
    body's, `Connection: close` exactly when the connection ends."""
    head, blank, body = response.partition(b"\r\n\r\n")
    assert blank, "no end of head"
    status, *lines = head.split(b"\r\n")
    assert _STATUS_LINE.fullmatch(status), status
    headers: dict[bytes, list[bytes]] = {}
    for line in lines:
        match = _HEADER_LINE.fullmatch(line)
        assert match, line
        headers.setdefault(match[1].lower(), []).append(match[2])
    assert headers.get(b"content-length") == [str(len(body)).encode()], headers
    assert (headers.get(b"connection") == [b"close"]) == (not keep_alive), headers


def _read(pieces: list[bytes], bounds: Bounds, trusted: bool) -> list[tuple[Any, ...]]:
    sink = _Recorder()
    rules = Rules(bounds, _ROUTES, None, _TRUSTED, iter(range(1, 1 << 30)).__next__)
    reader = Reader(sink, rules, "127.0.0.1" if trusted else "192.0.2.1", trusted)
    for piece in pieces:
        reader.feed(piece)
    return sink.seen


def target_reader(data: bytes) -> None:
    """Never an exception; the events of the stream fed whole are the events of the same bytes
    cut anywhere (so no split frames a request otherwise); every refusal is the last event
    and a whole answer that closes. Which refusal it is may depend on the cut: httptools
    reports a header once it sees the next one begin, so a request that breaks both the header
    count (431) and the grammar (400) is refused for whichever it sees first."""
    options, seed, stream = _byte(data, 0), data[1:2], data[2:]
    bounds, trusted = _BOUNDS[options & 1], bool(options & 2)
    whole = _read([stream], bounds, trusted)
    if not stream:
        return
    rand = random.Random(seed)
    cuts = sorted(rand.randrange(len(stream) + 1) for _ in range(1 + (options >> 2) % 4))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert _read(pieces, bounds, trusted) == whole, pieces
    if len(stream) <= MAX_EVERY_BYTE:
        each = [stream[i : i + 1] for i in range(len(stream))]
        assert _read(each, bounds, trusted) == whole, "fed one byte per read"


# -- decode: body and query of every content type -> an action, or a 400 ----------------------

CONTENT_TYPES = (
    b"application/x-www-form-urlencoded",
    b"application/json",
    b"multipart/form-data; boundary=XyZ",
    b"",
    b"application/json; charset=utf-8",
    b'multipart/form-data; boundary="a b"; charset=utf-8',
    b"text/plain",
    b"application/x-www-form-urlencoded; charset=latin-1",
)
_TODAY = dt.date(2026, 1, 1)


def target_decode(data: bytes) -> None:
    """Never an exception but a 400 `ApiError`: a decoded action (its signed fields all text),
    and for an `add`, the service type's rules applied, each again an order or a 400. A content
    type past the table's is the payload's first line."""
    kind, service, payload = _byte(data, 0), _byte(data, 1), data[2:]
    if kind < len(CONTENT_TYPES):
        content_type = CONTENT_TYPES[kind]
    else:
        content_type, _, payload = payload.partition(b"\n")
    body, _, query = payload.partition(b"\0")
    try:
        decoded = decode_request(body, content_type, query)
        assert all(type(k) is str and type(v) is str for k, v in decoded.fields.items())
        action = decoded.action
        if isinstance(action, Add):
            validate_add(
                action,
                SERVICE_TYPES[service % len(SERVICE_TYPES)],
                1 + (service >> 4),
                10**6,
                bool(service & 8),
                _TODAY,
            )
    except ApiError as exc:
        assert exc.status == 400, exc
        msgspec.json.decode(exc.body())


# -- sign: the canonical strings ---------------------------------------------------------------

_TAGS = sorted(FIELD_NAMES)
# Where a field of the action starts in a form-1 string, by action.
_STARTS = {
    tag: re.compile("&(?=(?:" + "|".join(map(re.escape, sorted(names))) + ")=)")
    for tag, names in FIELD_NAMES.items()
}


def _fields(text: str) -> dict[str, str]:
    fields = {}
    for line in text.split("\n"):
        name, _, value = line.partition("=")
        fields[name] = value
    return fields


def _split_v1(canonical: str, tag: str) -> dict[str, str]:
    """A form-1 string of `tag`'s fields cut where a field of `tag` starts: the one reading
    `check_signed` leaves it (its values hold no `&name=` of any API field)."""
    pairs = _STARTS[tag].split(canonical) if canonical else []
    return dict(pair.partition("=")[::2] for pair in pairs)


def _split_v2(canonical: str) -> dict[str, str]:
    pairs = canonical.split("&") if canonical else []
    split = (pair.split("=") for pair in pairs)
    return {unquote(k, errors="strict"): unquote(v, errors="strict") for k, v in split}


def target_sign(data: bytes) -> None:
    """Never an exception (a refusal is a 400); both forms deterministic whatever the fields'
    order; form 2 always reads back as the fields signed, so no two field sets share a string;
    form 1 reads back so whenever `check_signed` admits the fields; `verify` takes what
    `compute` signs and nothing the fields do not."""
    options, key_byte = _byte(data, 0), _byte(data, 1)
    tag = _TAGS[options % len(_TAGS)]
    fields = _fields(data[2:].decode("utf-8", "replace"))
    fields["action"] = tag
    unsigned = {k: v for k, v in fields.items() if k != "sign"}
    backwards = dict(reversed(list(fields.items())))
    key = chr(0x20 + key_byte % 0x5F) * (1 + key_byte % 7)
    for version in (1, 2):
        text = sign.canonical(fields, version)
        assert text == sign.canonical(backwards, version) == sign.canonical(unsigned, version)
        signature = sign.compute(key, fields, version)
        assert sign.verify(key, backwards, signature.upper(), version)
        assert not sign.verify(key, {**fields, "sign_version": "x"}, signature, version)
    assert _split_v2(sign.canonical(fields, 2).decode()) == unsigned
    try:
        sign.check_signed(tag, fields, 1)
    except ApiError as exc:
        assert exc.status == 400, exc
        return
    assert _split_v1(sign.canonical(fields, 1).decode(), tag) == unsigned


# -- money: text <-> minor units ---------------------------------------------------------------

_PLAIN = re.compile(r"[ \t]*(-?)([0-9]+)(?:\.([0-9]+))?[ \t]*")


def target_money(data: bytes) -> None:
    """`parse` gives a count of minor units within the bounds, exactly the decimal written, that
    `format` writes back to parse the same; anything else is a `MoneyError`. The same for
    percentages; and any count in bounds survives format then parse."""
    options, text = _byte(data, 0), data[1:].decode("utf-8", "replace")
    negative = bool(options & 1)
    try:
        units = money.parse(text, allow_negative=negative)
    except money.MoneyError:
        pass
    else:
        assert abs(units) <= money.MAX_UNITS and (negative or units >= 0)
        assert Decimal(units).scaleb(-money.SCALE_DIGITS) == Decimal(text.strip(" \t"))
        assert money.parse(money.format(units), allow_negative=True) == units
    try:
        bp = money.parse_percent_bp(text, maximum=1 + options % 100)
    except money.MoneyError:
        pass
    else:
        assert 0 <= bp <= (1 + options % 100) * 100
        assert Decimal(bp).scaleb(-2) == Decimal(text.strip(" \t"))
    units = int.from_bytes(data[1:9], "big", signed=True) % (2 * money.MAX_UNITS + 1)
    units -= money.MAX_UNITS
    assert money.parse(money.format(units), allow_negative=True) == units
    assert _PLAIN.fullmatch(money.format(units))


# -- answers: what a provider's answer moves ---------------------------------------------------

_CLIENT = Core("http://provider.test/api/v2", "k")
_IDS = ["5", "6", "7"]
CALLS = (
    ("add", _CLIENT.add(1, "https://x.test/p", 100, idempotency_key="k1")),
    ("status", _CLIENT.status("5")),
    ("statuses", _CLIENT.status(_IDS)),
    ("cancel", _CLIENT.cancel("5")),
    ("cancels", _CLIENT.cancel(_IDS)),
    ("refill", _CLIENT.refill("5")),
    ("refills", _CLIENT.refill(_IDS)),
    ("refill_status", _CLIENT.refill_status("5")),
    ("refill_statuses", _CLIENT.refill_status(_IDS)),
    ("balance", _CLIENT.balance()),
    ("services", _CLIENT.catalogue()),
    ("webhooks", _CLIENT.webhooks()),
    ("webhook_add", _CLIENT.webhook_add("https://h.test/")),
    ("webhook_delete", _CLIENT.webhook_delete("5")),
)
HTTP_STATUSES = (200, 200, 201, 400, 401, 402, 403, 404, 409, 422, 429, 500, 503, 302)
ANSWER_TYPES = ("application/json", "text/plain", "text/html; charset=utf-8", "")
RETRY_AFTERS = (None, "5", "-1", "inf", "nan", "1e999", "Wed, 21 Oct 2015 07:28:00 GMT", "x")
_JSON = msgspec.json.Decoder()  # the structure only: numbers are the parser's to judge
_ORDER_KEYS = ("order", "charge", "start_count", "remains")
_ENVELOPE_INNER = ("data", "result", "response")


def _mixed(obj: Any) -> bool:
    """An object that says both: an error, and an order's id, counts or status."""
    if not isinstance(obj, dict) or not obj.get("error"):
        return False
    status = word(obj.get("status"))
    order_status = status in DIALECT["order status"] and status not in DIALECT["envelope"]
    return order_status or any(key in obj for key in _ORDER_KEYS)


def _said(obj: Any) -> list[Any]:
    """An object and what its envelope may hold: where `_mixed` is looked for."""
    if not isinstance(obj, dict):
        return []
    return [obj, *(obj[key] for key in _ENVELOPE_INNER if key in obj)]


def _ambiguous(obj: Any) -> bool:
    return any(_mixed(said) for said in _said(obj))


def _check_status(status: OrderStatus) -> None:
    for count in (status.start_count, status.remains):
        assert count is None or 0 <= count <= BIGINT_MAX, status
    assert status.charge is None or (status.charge.is_finite() and status.charge.adjusted() < 15)
    assert status.status != "Partial" or status.remains is not None, status


def target_answers(data: bytes) -> None:
    """Never an exception but a `ProviderFailure`; typed results within their columns' bounds;
    and an answer that says an error beside an order's fields (itself, in its envelope, or as
    a batch entry) is not understood: it neither gives an order id or status nor refuses the
    request (an `add` refused is refunded), nor is a batch entry of that kind read as either."""
    call_at, status_at, type_at, retry_at = data[:4].ljust(4, b"\0")
    name, call = CALLS[call_at % len(CALLS)]
    http_status = HTTP_STATUSES[status_at % len(HTTP_STATUSES)]
    body = data[4:]
    reply = Reply(
        http_status,
        ANSWER_TYPES[type_at % len(ANSWER_TYPES)],
        RETRY_AFTERS[retry_at % len(RETRY_AFTERS)],
        body,
    )
    try:
        said = _JSON.decode(body)
    except msgspec.DecodeError:
        said = None
    try:
        result = Core.answer(call, reply, 0.0)
    except ProviderError as exc:
        assert http_status == 402 or not _ambiguous(said), (name, exc)
        return
    except UnreadableAnswer:
        return
    except ProviderUnavailable as exc:
        assert exc.retry_after is None or 0 <= exc.retry_after <= 3600, exc.retry_after
        return
    except ProviderFailure as exc:
        raise AssertionError(f"a failure of no documented kind: {exc!r}") from exc
    assert not _ambiguous(said), (name, result)
    if isinstance(result, OrderStatus):
        _check_status(result)
    elif isinstance(result, Balance):
        assert result.balance.is_finite() and result.balance.adjusted() < 15
    elif name == "statuses":
        assert sorted(result) == _IDS, result
        for oid, entry in result.items():
            entries = said.get(oid) if isinstance(said, dict) else None
            if isinstance(entry, OrderStatus):
                _check_status(entry)
                assert not _ambiguous(entries), (oid, entry)
            else:
                assert isinstance(entry, ItemError), entry
                assert entry.unreadable or not _ambiguous(entries), (oid, entry)
    elif name == "services":
        services, skipped = result
        assert skipped >= 0
        for service in services:
            assert service.rate.is_finite() and service.rate >= 0 and service.rate.adjusted() < 15
            assert 1 <= service.min <= service.max <= BIGINT_MAX


TARGETS = {
    "reader": target_reader,
    "decode": target_decode,
    "sign": target_sign,
    "money": target_money,
    "answers": target_answers,
}
