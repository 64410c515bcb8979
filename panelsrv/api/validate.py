"""The service-dependent rules of `add`: API.md's table per service type, applied to a decoded
`Add` once the handler has the service in hand.

Pure; imports `api.actions`, `api.extras` and `errors`; the date is a parameter. Every refusal is
`errors.bad_request(field, rule)`. The result carries what the order row stores and the
`units` the charge multiplies: `money.charge(rate, units)` is the charge of every type
(`quantity * runs` by default, 1000 - i.e. the flat rate - for Package types, and
`max * (posts + old_posts)` for Subscriptions).

| type                    | link | quantity                   | extras (required / optional)       |
|-------------------------|------|----------------------------|------------------------------------|
| default                 | yes  | required                   |                                    |
| Package                 | opt. | set to 1, flat rate        |                                    |
| Custom Comments         | opt. | comment lines (*)          | comments                           |
| Custom Comments Package | opt. | set to 1, flat rate        | comments                           |
| Mentions                | yes  | required                   | usernames                          |
| Mentions with Hashtags  | yes  | required                   | usernames, hashtags (or hashtag)   |
| Mentions Custom List    | yes  | username lines (*)         | usernames                          |
| Mentions Hashtag        | yes  | required                   | hashtag (or hashtags)              |
| Mentions User Followers | yes  | required                   | username                           |
| Mentions Media Likers   | yes  | required                   | media                              |
| Subscriptions           | opt. | max * (posts + old_posts)  | username or link, min, max, posts  |
|                         |      |                            | or old_posts / delay, expiry       |
| Poll                    | yes  | required                   | answer_number                      |
| Comment Likes           | yes  | required                   | username                           |
| Comment Replies         | yes  | comment lines (*)          | comments, username                 |

(*) The number of non-empty lines, since every line is sent upstream: a `quantity` that differs
(other than 0, a PHP form's default) is a 400, never a charge for fewer lines than are sent.

Fields beyond the API's own (`Add.extras`, checked by `api.extras`: targeting such as `country`)
join the type's in `extras`, whatever the type, and go to the provider unchanged.

Drip-feed (`runs`, `interval`) applies only on a service with `dripfeed` and a type charged per
unit (not Package types, not Subscriptions, whose charges `runs` would not multiply); anywhere
else the two are ignored. Fields a type does not use are ignored, as the spec says.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Final

import msgspec

from panelsrv.api.actions import FIELD_RULES, Add
from panelsrv.api.extras import CONTROL_IN_TEXT
from panelsrv.errors import bad_request
from panelsrv.servicetypes import PACKAGE_TYPES, SERVICE_TYPES

LINK_OPTIONAL: Final = frozenset({"Package", "Custom Comments Package", "Custom Comments"})
MAX_DRIPFEED_MINUTES: Final = 10080

_COMMENT_TYPES: Final = frozenset({"Custom Comments", "Custom Comments Package", "Comment Replies"})
_USERNAMES_TYPES: Final = frozenset({"Mentions", "Mentions with Hashtags", "Mentions Custom List"})
_USERNAME_TYPES: Final = frozenset({"Mentions User Followers", "Comment Likes", "Comment Replies"})
_COUNTED_TYPES: Final = frozenset({"Custom Comments", "Comment Replies", "Mentions Custom List"})


class ValidatedOrder(msgspec.Struct, frozen=True):
    """What an `add` asks for, normalized. `extras` holds the fields the type uses and the
    request's own extras (no name is in both: `api.extras.RESERVED_NAMES`)."""

    link: str
    quantity: int
    runs: int
    interval: int
    extras: dict[str, str | int]
    units: int


def validate_add(
    add: Add,
    service_type: str,
    min_qty: int,
    max_qty: int,
    dripfeed: bool,
    today: dt.date,
) -> ValidatedOrder:
    """Apply the service's rules to `add`; `today` is the server's current date."""
    if service_type not in SERVICE_TYPES:
        raise ValueError(f"unknown service type {service_type!r}")
    if service_type == "Subscriptions":
        return _subscription(add, min_qty, max_qty, today)

    link = normalize_link(add.link, required=service_type not in LINK_OPTIONAL)
    extras: dict[str, str | int] = dict(add.extras)
    counted = 0
    if service_type in _COMMENT_TYPES:
        extras["comments"], counted = _lines("comments", add.comments)
    if service_type in _USERNAMES_TYPES:
        extras["usernames"], counted = _lines("usernames", add.usernames)
    if service_type in _COUNTED_TYPES and add.quantity and add.quantity != counted:
        # Every line goes upstream: a smaller quantity would be charged for fewer than are sent.
        field = "usernames" if service_type in _USERNAMES_TYPES else "comments"
        raise bad_request(
            "quantity", f"must be the number of non-empty {field} lines ({counted}), or left out"
        )
    if service_type == "Mentions with Hashtags":
        extras["hashtags"], _ = _lines("hashtags", add.hashtags or add.hashtag)
    if service_type == "Mentions Hashtag":
        extras["hashtag"], _ = _lines("hashtag", add.hashtag or add.hashtags)
    if service_type in _USERNAME_TYPES:
        extras["username"] = _word("username", add.username, required=True)
    if service_type == "Mentions Media Likers":
        extras["media"] = _word("media", add.media, required=True)
    if service_type == "Poll":
        if add.answer_number is None:
            raise bad_request("answer_number", "required")
        extras["answer_number"] = add.answer_number

    if service_type in PACKAGE_TYPES:
        return ValidatedOrder(link, 1, 1, 0, extras, 1000)
    # Counted types: absent, a form default's 0, or the count itself (checked above).
    quantity = counted if service_type in _COUNTED_TYPES else add.quantity
    quantity = _within("quantity", quantity, min_qty, max_qty)
    runs, interval = _dripfeed(add.runs, add.interval) if dripfeed else (1, 0)
    return ValidatedOrder(link, quantity, runs, interval, extras, quantity * runs)


def _subscription(add: Add, min_qty: int, max_qty: int, today: dt.date) -> ValidatedOrder:
    link = normalize_link(add.link, required=False)
    username = _word("username", add.username, required=not link)
    low = _within("min", add.min, min_qty, max_qty)
    high = _within("max", add.max, min_qty, max_qty)
    if low > high:
        raise bad_request("min", "must not exceed max")
    if add.posts is None and add.old_posts is None:
        raise bad_request("posts", "required")
    posts = add.posts or 0
    old_posts = add.old_posts or 0
    if posts + old_posts < 1:
        raise bad_request("posts", "posts + old_posts must be at least 1")
    extras: dict[str, str | int] = {
        **dict(add.extras),
        "min": low,
        "max": high,
        "posts": posts,
        "old_posts": old_posts,
        "delay": add.delay or 0,
    }
    if username:
        extras["username"] = username
    if add.expiry is not None and add.expiry.strip():
        extras["expiry"] = parse_expiry(add.expiry, today).isoformat()
    units = high * (posts + old_posts)
    return ValidatedOrder(link, units, 1, 0, extras, units)


def _within(field: str, value: int | None, low: int, high: int) -> int:
    if value is None:
        raise bad_request(field, "required")
    if not low <= value <= high:
        raise bad_request(field, f"must be between {low} and {high}")
    return value


def _dripfeed(runs: int | None, interval: int | None) -> tuple[int, int]:
    if runs is None and interval is None:
        return 1, 0
    if runs is None:
        raise bad_request("runs", "required with interval")
    if interval is None:
        raise bad_request("interval", "required with runs")
    if runs * interval > MAX_DRIPFEED_MINUTES:
        raise bad_request("runs", f"runs * interval must be at most {MAX_DRIPFEED_MINUTES} minutes")
    return runs, interval


# -- text fields -------------------------------------------------------------------------------

# Whitespace, C0/C1 controls, zero-width and bidi-override characters: never inside a URL or a
# single word, and NUL would not even fit in a PostgreSQL text column.
_NOT_IN_WORD: Final = re.compile(
    "[\\s\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]"
)
_SCHEME: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):(.*)", re.S)
_PORT: Final = re.compile(r"\d+(?:[/?#]|$)")
_HOST_END: Final = re.compile(r"[/?#]")
_PORT_NUMBER: Final = re.compile(r"[1-9][0-9]{0,4}")
MAX_LINK: Final = 1000


def normalize_link(raw: str | None, required: bool) -> str:
    """'instagram.com/x' -> 'https://instagram.com/x'; http(s) only; "" when absent and optional.

    Surrounding blanks are trimmed; inner whitespace or control characters are refused. A
    `host:port` start is a host, not a scheme; `javascript:`, `data:` and the like are refused.
    """
    link = raw.strip() if raw else ""
    if not link:
        if required:
            raise bad_request("link", "required")
        return ""
    if _NOT_IN_WORD.search(link):
        raise bad_request("link", "must not contain whitespace or control characters")
    scheme = _SCHEME.match(link)
    if scheme is not None and _PORT.match(scheme.group(2)) is None:
        if scheme.group(1).lower() not in ("http", "https") or not scheme.group(2).startswith("//"):
            raise bad_request("link", "must be an http or https URL")
        link = scheme.group(1).lower() + ":" + scheme.group(2)
    elif link.startswith("//"):
        link = "https:" + link
    else:
        link = "https://" + link
    _check_authority(_HOST_END.split(link[link.index("//") + 2 :], 1)[0])
    if len(link) > MAX_LINK:  # the stored link, its scheme included
        raise bad_request("link", FIELD_RULES["add", "link"])
    return link


def _check_authority(authority: str) -> None:
    """`[userinfo@]host[:port]` (RFC 3986 §3.2): a host, not empty, after any userinfo (so not
    `http://@` nor `https://:80`); an IPv6 literal in brackets; a port, when given, 1-65535."""
    hostport = authority.rpartition("@")[2]
    if hostport.startswith("["):
        literal, bracket, after = hostport[1:].partition("]")
        if not literal or not bracket or (after and after[0] != ":"):
            raise bad_request("link", "must name a host")
        colon, port = after[:1], after[1:]
    else:
        host, colon, port = hostport.partition(":")
        if not host:
            raise bad_request("link", "must name a host")
    if colon and (_PORT_NUMBER.fullmatch(port) is None or int(port) > 65535):
        raise bad_request("link", "must have a port between 1 and 65535")


def _word(field: str, raw: str | None, required: bool) -> str:
    word = raw.strip() if raw else ""
    if not word:
        if required:
            raise bad_request(field, "required")
        return ""
    if _NOT_IN_WORD.search(word):
        raise bad_request(field, "must not contain whitespace or control characters")
    return word


def _lines(field: str, raw: str | None) -> tuple[str, int]:
    """Required newline-separated text -> (its non-empty lines, trimmed, joined by '\\n', count)."""
    if raw and CONTROL_IN_TEXT.search(raw):  # multi-line: tabs and line breaks are kept
        raise bad_request(field, "must not contain control characters")
    lines = [line for line in (part.strip() for part in (raw or "").split("\n")) if line]
    if not lines:
        raise bad_request(field, "required")
    return "\n".join(lines), len(lines)


# -- expiry ------------------------------------------------------------------------------------

_DMY: Final = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4})")


def parse_expiry(text: str, today: dt.date) -> dt.date:
    """`YYYY-MM-DD`, an ISO datetime, or the older `d/m/Y`; strictly after `today`."""
    text = text.strip()
    try:
        dmy = _DMY.fullmatch(text)
        if dmy is not None:
            day = dt.date(int(dmy.group(3)), int(dmy.group(2)), int(dmy.group(1)))
        else:
            day = dt.datetime.fromisoformat(text).date()
    except ValueError:
        raise bad_request("expiry", "must be YYYY-MM-DD, an ISO datetime or d/m/Y") from None
    if day <= today:
        raise bad_request("expiry", "must be in the future")
    return day
