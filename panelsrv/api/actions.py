"""The wire actions of `POST /api/v2` as msgspec Structs, their replies, id lists and fingerprints.

Leaf module apart from `panelsrv.errors`; pure. Every action subclasses `Action`, tagged on the
`action` field with the exact wire name (`AnyAction` is their union, for `match`); `STRUCTS`
maps a tag to its Struct so the decoder converts straight to the one class (converting to the
union costs ~8x more, about 2.5 µs). Only type-independent rules
live here (ranges, lengths); rules that need the service are in `api/validate.py`.

Invariants:
- Actions an API key must not have (keys, passwords, transfers, withdrawals, admin) have no
  Struct, so they decode as `Incorrect action`.
- Every wire field of every Struct is a str, an int or None, and the error messages of `decode`
  are derived from these annotations (`FIELD_RULES`). The one field no request names,
  `Add.extras`, is a tuple of (str, str) pairs: with nothing that can refer back to a Struct,
  `gc=False` is safe.
- Integers that reach PostgreSQL `bigint` are capped at `MAX_BIGINT` here, so no value can
  overflow a statement parameter.

Replies: every body an action answers is one of the reply Structs below (or a list or dict of
them), encoded with `encode_reply`, the one encoder of every body (it and `ErrorReply`, a per-id
error inside a multi reply, live in `panelsrv.errors`, which prebuilds the error bodies with
them).
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Final

import msgspec
from msgspec import Meta

from panelsrv.errors import ErrorReply as ErrorReply  # re-exported with the reply types
from panelsrv.errors import bad_request
from panelsrv.errors import encode_reply as encode_reply

MAX_BIGINT: Final = 2**63 - 1
MAX_IDS: Final = 100
MAX_IDEMPOTENCY_KEY: Final = 128
MAX_NAME_ECHO: Final = 100  # longest client-chosen field name quoted back in an error

Id = Annotated[int, Meta(ge=1, le=MAX_BIGINT)]
Count = Annotated[int, Meta(ge=0, le=MAX_BIGINT)]
Runs = Annotated[int, Meta(ge=1, le=1000)]
Minutes = Annotated[int, Meta(ge=1, le=43200)]
Delay = Annotated[int, Meta(ge=0, le=43200)]
Posts = Annotated[int, Meta(ge=0, le=100_000)]
Timestamp = Annotated[int, Meta(ge=0, le=MAX_BIGINT)]
SignVersion = Annotated[int, Meta(ge=1, le=2)]  # the canonical form a `sign` covers (api.sign)
# Printable: it is stored in a text column (no NUL) and echoed in logs.
IdempotencyKey = Annotated[
    str, Meta(min_length=1, max_length=MAX_IDEMPOTENCY_KEY, pattern=r"\A[^\x00-\x1f\x7f]*\Z")
]
Link = Annotated[str, Meta(max_length=1000)]
LongText = Annotated[str, Meta(max_length=10_000)]
ShortText = Annotated[str, Meta(max_length=1000)]
DateText = Annotated[str, Meta(max_length=64)]
URL_MAX = 2048
EVENTS_MAX = 256
Url = Annotated[str, Meta(max_length=URL_MAX)]
Events = Annotated[str, Meta(max_length=EVENTS_MAX)]


class Action(msgspec.Struct, tag_field="action", frozen=True, gc=False, kw_only=True):
    """Fields every action accepts. A missing `key` is a 400; whether a key is valid is the
    handler's question (401)."""

    key: str
    sign: str | None = None
    sign_version: SignVersion | None = None
    timestamp: Timestamp | None = None


class Services(Action, tag="services", frozen=True):
    """Every service the panel offers the caller, at the caller's price."""


class Add(Action, tag="add", frozen=True):
    """Place an order: the wallet is debited the charge at once, or nothing happens."""

    service: Id
    link: Link | None = None
    quantity: Count | None = None
    runs: Runs | None = None
    interval: Minutes | None = None
    comments: LongText | None = None
    usernames: LongText | None = None
    username: ShortText | None = None
    hashtags: LongText | None = None
    hashtag: ShortText | None = None
    posts: Posts | None = None
    old_posts: Posts | None = None
    delay: Delay | None = None
    expiry: DateText | None = None
    media: ShortText | None = None
    min: Id | None = None
    max: Id | None = None
    answer_number: Annotated[int, Meta(ge=1, le=1000)] | None = None
    idempotency_key: IdempotencyKey | None = None
    # Not a wire field: the fields beyond these that the request carried, passed to the provider
    # unchanged (targeting: country, device, ...), as checked and sorted by `api.extras`. Set
    # by the decoder; a field named `extras` is refused like any name of this API.
    extras: tuple[tuple[str, str], ...] = ()


class Status(Action, tag="status", frozen=True):
    """An order's status (`order`), or several orders' keyed by id (`orders`)."""

    order: Id | None = None
    orders: str | None = None


class Balance(Action, tag="balance", frozen=True):
    """The wallet's balance, in the panel's currency."""


class Cancel(Action, tag="cancel", frozen=True):
    """Cancel orders that have not started, refunded in full."""

    order: Id | None = None
    orders: str | None = None
    idempotency_key: IdempotencyKey | None = None


class Refill(Action, tag="refill", frozen=True):
    """Ask for a refill of completed (or partial) orders."""

    order: Id | None = None
    orders: str | None = None
    idempotency_key: IdempotencyKey | None = None


class RefillStatus(Action, tag="refill_status", frozen=True):
    """A refill's status (`refill`), or several refills' (`refills`)."""

    refill: Id | None = None
    refills: str | None = None


class WebhookAdd(Action, tag="webhook_add", frozen=True):
    """Register an https endpoint for status events; its signing secret is shown once."""

    url: Url
    events: Events | None = None


class Webhooks(Action, tag="webhooks", frozen=True):
    """The caller's webhooks."""


class WebhookDelete(Action, tag="webhook_delete", frozen=True):
    """Delete one of the caller's webhooks."""

    webhook: Id


AnyAction = (
    Services
    | Add
    | Status
    | Balance
    | Cancel
    | Refill
    | RefillStatus
    | WebhookAdd
    | Webhooks
    | WebhookDelete
)

STRUCTS: Final[dict[str, type[Action]]] = {
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in (
        Services,
        Add,
        Status,
        Balance,
        Cancel,
        Refill,
        RefillStatus,
        WebhookAdd,
        Webhooks,
        WebhookDelete,
    )
}


def tag_of(action: Action) -> str:
    """The wire name of an action (`"add"`), without a lookup table."""
    return action.__struct_config__.tag  # type: ignore[return-value]


# -- error texts derived from the annotations -----------------------------------------------


def _rule(info: msgspec.inspect.Type) -> str:
    if isinstance(info, msgspec.inspect.UnionType):
        (info,) = (t for t in info.types if not isinstance(t, msgspec.inspect.NoneType))
    if isinstance(info, msgspec.inspect.IntType):
        if info.le is None or info.le == MAX_BIGINT:
            return "must be an integer" if info.ge is None else f"must be an integer >= {info.ge}"
        return f"must be an integer between {info.ge} and {info.le}"
    if isinstance(info, msgspec.inspect.StrType):
        if info.max_length is None:
            return "must be a string"
        low = info.min_length or 0
        if info.pattern is not None:
            return f"must be {low} to {info.max_length} printable characters"
        if low:
            return f"must be a string of {low} to {info.max_length} characters"
        return f"must be a string of at most {info.max_length} characters"
    raise TypeError(f"no rule text for {info!r}")


NOT_WIRE: Final = frozenset({"extras"})  # Struct fields no request sets by name

# (tag, field) -> the rule a bad value broke, e.g. ("add", "runs") -> "must be an integer
# between 1 and 1000". Built once; `decode` looks it up instead of parsing msgspec's wording.
FIELD_RULES: Final[dict[tuple[str, str], str]] = {
    (tag, f.name): _rule(f.type)
    for tag, cls in STRUCTS.items()
    for f in msgspec.inspect.type_info(cls).fields  # type: ignore[attr-defined]
    if f.name not in NOT_WIRE
}

# tag -> its integer fields. `decode` reads their text itself (decimal digits only) rather than
# let msgspec's lax str -> int conversion take exponents and fractions.
INT_FIELDS: Final[dict[str, frozenset[str]]] = {
    tag: frozenset(
        name
        for (t, name), rule in FIELD_RULES.items()
        if t == tag and rule.startswith("must be an integer")
    )
    for tag in STRUCTS
}

# tag -> every field name the action knows, `action` included: a signed request carries no
# other (api.sign). Their union: the names a value must not spell out in the seeds' form.
FIELD_NAMES: Final[dict[str, frozenset[str]]] = {
    tag: (frozenset(cls.__struct_fields__) - NOT_WIRE) | {"action"} for tag, cls in STRUCTS.items()
}
EVERY_FIELD_NAME: Final = frozenset[str]().union(*FIELD_NAMES.values())

# Every name that is an integer field of some action, and of every action that has it (a test
# keeps it so): the form parsers convert their digits as they read them.
INT_NAMES: Final = frozenset[str]().union(*INT_FIELDS.values())

# What clients send for an option left unset: PHP forms `runs=`, a Node SDK `runs=undefined`,
# others `null` (and JSON null, which msgspec reads as None already). Each means "absent" for
# the fields of `BLANK_IS_ABSENT`: every optional field and every integer field (a required one
# is then reported missing).
ABSENT_TEXTS: Final = frozenset({"", "undefined", "null"})
BLANK_IS_ABSENT: Final = INT_NAMES | frozenset(
    f.name
    for cls in STRUCTS.values()
    for f in msgspec.inspect.type_info(cls).fields  # type: ignore[attr-defined]
    if not f.required and f.name not in NOT_WIRE
)

# tag -> {single: multi}: the id fields whose list form is the other one (`order` -> `orders`).
# A list sent in the single field (`order=1,2,3`, as a Node SDK does) is read as the list form.
ID_LISTS: Final[dict[str, dict[str, str]]] = {
    "status": {"order": "orders"},
    "cancel": {"order": "orders"},
    "refill": {"order": "orders"},
    "refill_status": {"refill": "refills"},
}


# -- id lists ----------------------------------------------------------------------------------


# Comma-separated ASCII integers, blanks around each, at most one trailing comma.
ID_LIST: Final = re.compile(r"[ \t]*[0-9]{1,19}[ \t]*(?:,[ \t]*[0-9]{1,19}[ \t]*)*(?:,[ \t]*)?")


def parse_ids(field: str, text: str, limit: int = MAX_IDS) -> list[int]:
    """'8842, 8843,8842' -> [8842, 8843]: positive integers, first occurrence order kept.

    Duplicates are dropped so that no id is processed twice in one request; `limit` counts the
    ids as sent (duplicates included), checked before anything else so a huge list costs
    nothing. Blanks around an id and one trailing comma are tolerated; an empty item is not.
    One regex checks the shape (19 digits bound the int() work), then int() converts.
    """
    commas = text.count(",")  # ids sent, less one unless the list ends with a comma
    if commas > limit or (commas == limit and not text.rstrip(" \t").endswith(",")):
        raise bad_request(field, f"at most {limit} ids")
    if ID_LIST.fullmatch(text) is None:
        raise bad_request(field, "must be comma-separated positive integers")
    items = text.split(",")
    if not items[-1].strip(" \t"):
        items.pop()  # the tolerated trailing comma
    seen = dict.fromkeys(map(int, items))
    if 0 in seen or max(seen) > MAX_BIGINT:
        raise bad_request(field, "must be comma-separated positive integers")
    return list(seen)


def requested_ids(
    single: int | None, many: str | None, single_name: str, many_name: str
) -> int | list[int]:
    """The ids asked for: an int for the single form (`order`), a list for the multi form.

    The reply's shape follows the form the client used, so the two are never mixed: sending both
    is a 400, as is sending neither.
    """
    if many is not None:
        if single is not None:
            raise bad_request(many_name, f"send either {single_name} or {many_name}, not both")
        return parse_ids(many_name, many)
    if single is None:
        raise bad_request(single_name, "required")
    return single


def order_ids(action: Status | Cancel | Refill) -> int | list[int]:
    return requested_ids(action.order, action.orders, "order", "orders")


def refill_ids(action: RefillStatus) -> int | list[int]:
    return requested_ids(action.refill, action.refills, "refill", "refills")


_PRINTABLE: Final = re.compile(r"[^\x00-\x1f\x7f]+")


def idempotency_key(field: str | None, header: str | None) -> str | None:
    """The request's idempotency key, from the `Idempotency-Key` header or the field.

    The header obeys the field's rule; an empty header counts as absent (like an empty field).
    When both are sent they must agree, or which one the stored outcome answers is ambiguous.
    """
    if not header:
        return field
    if not (len(header) <= MAX_IDEMPOTENCY_KEY and _PRINTABLE.fullmatch(header)):
        raise bad_request("Idempotency-Key", FIELD_RULES["add", "idempotency_key"])
    if field is not None and field != header:
        raise bad_request("idempotency_key", "differs from the Idempotency-Key header")
    return header


# -- idempotency fingerprint -------------------------------------------------------------------

_NOT_PARAMETERS: Final = frozenset({"key", "sign", "sign_version", "timestamp", "idempotency_key"})
_PARAMETERS: Final[dict[type[Action], tuple[str, ...]]] = {
    cls: tuple(f for f in cls.__struct_fields__ if f not in _NOT_PARAMETERS | NOT_WIRE)
    for cls in STRUCTS.values()
}
_FINGERPRINT_ENCODER: Final = msgspec.json.Encoder()


def fingerprint(action: Action) -> bytes:
    """SHA-256 over the action's tag and parameters, as decoded (so form and JSON agree).

    `key`, `sign`, `sign_version`, `timestamp` and `idempotency_key` are left out: they say who
    sent the request, how and when, not what it asks for. Absent fields count as null, so adding
    one changes it. An `add`'s extras (sorted by name, so their order does not count) are
    appended when there are any: an `add` without them keeps the fingerprint it had before they
    existed, so a retry across an upgrade still finds its stored answer.
    """
    cls = type(action)
    values = [getattr(action, name) for name in _PARAMETERS[cls]]
    parts: list[object] = [tag_of(action), _PARAMETERS[cls], values]
    if cls is Add and action.extras:  # type: ignore[attr-defined]
        parts.append(action.extras)  # type: ignore[attr-defined]
    return hashlib.sha256(_FINGERPRINT_ENCODER.encode(parts)).digest()


# -- replies -----------------------------------------------------------------------------------


class Reply(msgspec.Struct, frozen=True, gc=False):
    pass


class ServiceReply(Reply, frozen=True):
    service: int
    name: str
    type: str
    category: str
    rate: str
    min: int
    max: int
    dripfeed: bool
    refill: bool
    cancel: bool
    avg_time: int


class AddReply(Reply, frozen=True):
    order: int


class StatusReply(Reply, frozen=True):
    charge: str
    start_count: str
    status: str
    remains: str
    currency: str


class BalanceReply(Reply, frozen=True):
    balance: str
    currency: str


class CancelReply(Reply, frozen=True):
    cancel: int


class CancelItem(Reply, frozen=True):
    order: int
    cancel: int | ErrorReply


class RefillReply(Reply, frozen=True):
    refill: int


class RefillItem(Reply, frozen=True):
    order: int
    refill: int | ErrorReply


class RefillStatusReply(Reply, frozen=True):
    status: str


class RefillStatusItem(Reply, frozen=True):
    refill: int
    status: str | ErrorReply


class WebhookAddReply(Reply, frozen=True):
    webhook: int
    secret: str


class WebhookItem(Reply, frozen=True, gc=True):
    webhook: int
    url: str
    events: list[str]
    active: bool


class WebhookDeleteReply(Reply, frozen=True):
    deleted: int


# A multi `status` reply is keyed by the id as a string: {"8842": StatusReply | ErrorReply}.
StatusMany = dict[str, StatusReply | ErrorReply]


# tag -> the types its 200 body takes: the single form's first, then the multi form's (`orders`,
# `refills`). What `respond` renders for each action, stated once for the OpenAPI document
# (docs/openapi.py); the schemathesis run (tests/e2e/test_schemathesis.py) holds `respond` to it.
REPLIES: Final[dict[str, tuple[object, ...]]] = {
    "services": (list[ServiceReply],),
    "add": (AddReply,),
    "status": (StatusReply, StatusMany),
    "balance": (BalanceReply,),
    "cancel": (CancelReply, list[CancelItem]),
    "refill": (RefillReply, list[RefillItem]),
    "refill_status": (RefillStatusReply, list[RefillStatusItem]),
    "webhook_add": (WebhookAddReply,),
    "webhooks": (list[WebhookItem],),
    "webhook_delete": (WebhookDeleteReply,),
}
