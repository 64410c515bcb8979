"""api/validate: API.md's per-type table of `add`, with its boundaries."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from panelsrv import money
from panelsrv.api.actions import Add
from panelsrv.api.validate import (
    SERVICE_TYPES,
    ValidatedOrder,
    normalize_link,
    parse_expiry,
    validate_add,
)
from panelsrv.errors import ApiError

TODAY = dt.date(2026, 5, 16)
LINK = "https://instagram.com/p/abc"


def run(
    service_type: str = "default",
    *,
    low: int = 100,
    high: int = 100_000,
    dripfeed: bool = False,
    **fields: Any,
) -> ValidatedOrder:
    fields.setdefault("service", 1)
    return validate_add(Add(key="k", **fields), service_type, low, high, dripfeed, TODAY)


def refused(service_type: str = "default", **fields: Any) -> str:
    with pytest.raises(ApiError) as info:
        run(service_type, **fields)
    assert info.value.status == 400
    return str(json.loads(info.value.body())["error"])


# -- default: link and quantity ---------------------------------------------------------------


def test_default_order() -> None:
    order = run(link=LINK, quantity=1000)
    assert order == ValidatedOrder(LINK, 1000, 1, 0, {}, 1000)


@pytest.mark.parametrize("quantity", [100, 101, 99_999, 100_000])
def test_quantity_within_service_bounds(quantity: int) -> None:
    assert run(link=LINK, quantity=quantity).quantity == quantity


@pytest.mark.parametrize("quantity", [0, 99, 100_001])
def test_quantity_outside_service_bounds(quantity: int) -> None:
    assert refused(link=LINK, quantity=quantity) == "quantity: must be between 100 and 100000"


def test_quantity_and_link_required() -> None:
    assert refused(link=LINK) == "quantity: required"
    assert refused(quantity=100) == "link: required"
    assert refused(link="  ", quantity=100) == "link: required"


def test_fields_that_do_not_apply_are_ignored() -> None:
    order = run(
        link=LINK,
        quantity=100,
        comments="a",
        usernames="b",
        username="c",
        hashtag="d",
        media="e",
        posts=1,
        min=1,
        max=2,
        answer_number=3,
        expiry="garbage",
    )
    assert order.extras == {}


# -- links ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("https://instagram.com/x", "https://instagram.com/x"),
        ("http://instagram.com/x", "http://instagram.com/x"),
        ("HTTPS://Instagram.com/X", "https://Instagram.com/X"),
        ("instagram.com/x", "https://instagram.com/x"),
        ("  instagram.com/x\n", "https://instagram.com/x"),
        ("//instagram.com/x", "https://instagram.com/x"),
        ("t.me/channel", "https://t.me/channel"),
        ("instagram.com:443/x", "https://instagram.com:443/x"),
        ("localhost:8080", "https://localhost:8080"),
        ("www.youtube.com/watch?v=a&t=1#c", "https://www.youtube.com/watch?v=a&t=1#c"),
        ("https://пример.рф/путь", "https://пример.рф/путь"),
    ],
)
def test_link_normalization(raw: str, normalized: str) -> None:
    assert normalize_link(raw, required=True) == normalized
    assert run(link=raw, quantity=100).link == normalized


@pytest.mark.parametrize(
    ("raw", "rule"),
    [
        ("javascript:alert(1)", "must be an http or https URL"),
        ("JavaScript://%0aalert(1)", "must be an http or https URL"),
        ("data:text/html,<script>", "must be an http or https URL"),
        ("ftp://example.com/x", "must be an http or https URL"),
        ("mailto:a@b.c", "must be an http or https URL"),
        ("file:///etc/passwd", "must be an http or https URL"),
        ("http:/example.com", "must be an http or https URL"),
        ("https://", "must name a host"),
        ("https:///path", "must name a host"),
        ("//", "must name a host"),
        ("https://exa mple.com", "must not contain whitespace or control characters"),
        ("https://example.com/\x00", "must not contain whitespace or control characters"),
        ("https://example.com/\x7f", "must not contain whitespace or control characters"),
        ("https://example.com/a\tb", "must not contain whitespace or control characters"),
        ("https://example.com/\u202eevil", "must not contain whitespace or control characters"),
        ("https://example.com/\u200bx", "must not contain whitespace or control characters"),
        ("https://example.com/\u00a0x", "must not contain whitespace or control characters"),
    ],
)
def test_bad_links_are_refused(raw: str, rule: str) -> None:
    assert refused(link=raw, quantity=100) == f"link: {rule}"


@pytest.mark.parametrize(
    ("raw", "rule"),
    [
        ("http://@", "must name a host"),
        ("http://@/x", "must name a host"),
        ("https://user:pass@/x", "must name a host"),
        ("https://:80", "must name a host"),
        ("https://:80/x", "must name a host"),
        ("https://user@:443", "must name a host"),
        ("//@", "must name a host"),
        ("https://[]/x", "must name a host"),
        ("https://[::1/x", "must name a host"),
        ("https://[::1]x/", "must name a host"),
        ("https://host:0/x", "must have a port between 1 and 65535"),
        ("https://host:65536", "must have a port between 1 and 65535"),
        ("https://host:99999/x", "must have a port between 1 and 65535"),
        ("https://host:000080", "must have a port between 1 and 65535"),
        ("https://host:/x", "must have a port between 1 and 65535"),
        ("https://host:8a/x", "must have a port between 1 and 65535"),
        ("https://host:+80", "must have a port between 1 and 65535"),
        ("https://host:\uff18\uff10", "must have a port between 1 and 65535"),
        ("https://a:b:c/", "must have a port between 1 and 65535"),
        ("https://[::1]:0/", "must have a port between 1 and 65535"),
        ("instagram.com:0/x", "must have a port between 1 and 65535"),
    ],
)
def test_a_link_names_a_real_host_and_port(raw: str, rule: str) -> None:
    assert refused(link=raw, quantity=100) == f"link: {rule}"


@pytest.mark.parametrize(
    "raw",
    [
        "https://user@example.com/x",
        "https://user:pass@example.com:8443/x",
        "https://example.com:1/",
        "https://example.com:65535",
        "https://[::1]:8080/x",
        "https://[2001:db8::1]/x?q=1",
        "https://example.com/a@b:c",
        "https://example.com?next=http://@",
        "https://example.com#:80",
    ],
)
def test_hosts_ports_and_userinfo_that_pass(raw: str) -> None:
    assert run(link=raw, quantity=100).link == raw


def test_the_1000_character_limit_is_on_the_stored_link() -> None:
    raw = "example.com/" + "a" * 980
    assert len("https://" + raw) == 1000
    assert run(link=raw, quantity=100).link == "https://" + raw
    assert refused(link=raw + "a", quantity=100) == (
        "link: must be a string of at most 1000 characters"
    )
    assert refused(link="//" + raw + "a", quantity=100) == (
        "link: must be a string of at most 1000 characters"
    )
    exact = "https://" + raw
    assert run(link=f"  {exact}  ", quantity=100).link == exact  # blanks trimmed first


# -- drip-feed ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("runs", "interval"), [(1, 1), (10, 1008), (1008, 10), (1, 10080), (112, 90), (1000, 10)]
)
def test_dripfeed_up_to_10080_minutes(runs: int, interval: int) -> None:
    order = run(link=LINK, quantity=100, runs=runs, interval=interval, dripfeed=True)
    assert (order.runs, order.interval) == (runs, interval)
    assert order.units == 100 * runs
    assert money.charge(450, order.units) == money.charge(450, 100, runs)


@pytest.mark.parametrize(
    ("runs", "interval"), [(10081, 1), (1, 10081), (7, 1441), (1000, 11), (101, 100)]
)
def test_dripfeed_over_10080_minutes(runs: int, interval: int) -> None:
    message = refused(link=LINK, quantity=100, runs=runs, interval=interval, dripfeed=True)
    assert message == "runs: runs * interval must be at most 10080 minutes"


def test_dripfeed_needs_both_fields() -> None:
    assert refused(link=LINK, quantity=100, runs=5, dripfeed=True) == "interval: required with runs"
    assert refused(link=LINK, quantity=100, interval=5, dripfeed=True) == (
        "runs: required with interval"
    )
    order = run(link=LINK, quantity=100, dripfeed=True)
    assert (order.runs, order.interval, order.units) == (1, 0, 100)


def test_dripfeed_ignored_on_services_without_it() -> None:
    order = run(link=LINK, quantity=100, runs=1000, interval=43200)
    assert (order.runs, order.interval, order.units) == (1, 0, 100)


def test_dripfeed_ignored_for_flat_and_subscription_types() -> None:
    order = run("Package", runs=10, interval=10, dripfeed=True)
    assert (order.runs, order.units) == (1, 1000)
    order = run(
        "Subscriptions",
        username="nike",
        min=100,
        max=200,
        posts=2,
        runs=10,
        interval=10,
        dripfeed=True,
    )
    assert (order.runs, order.units) == (1, 400)


# -- package types -------------------------------------------------------------------------------


@pytest.mark.parametrize("service_type", ["Package", "Custom Comments Package"])
def test_package_types_are_one_unit_at_the_flat_rate(service_type: str) -> None:
    extra = {"comments": "nice\n\ngreat\n"} if service_type == "Custom Comments Package" else {}
    order = run(service_type, quantity=5_000_000, **extra)
    assert (order.quantity, order.runs, order.units) == (1, 1, 1000)
    assert money.charge(12_345_678, order.units) == 12_345_678
    assert order.link == ""
    assert run(service_type, link="ig.com/x", **extra).link == "https://ig.com/x"
    if extra:
        assert order.extras == {"comments": "nice\ngreat"}


def test_custom_comments_package_needs_comments() -> None:
    assert refused("Custom Comments Package") == "comments: required"
    assert refused("Custom Comments Package", comments=" \n \r\n") == "comments: required"


# -- comments ------------------------------------------------------------------------------------


def test_custom_comments_quantity_defaults_to_non_empty_lines() -> None:
    comments = "\n".join(f"comment {i}" for i in range(150)) + "\n\n  \r\n"
    order = run("Custom Comments", comments=comments)
    assert order.quantity == 150 and order.units == 150
    assert order.extras == {"comments": "\n".join(f"comment {i}" for i in range(150))}
    assert order.link == ""


def test_custom_comments_lines_must_be_within_bounds() -> None:
    assert refused("Custom Comments", comments="a\nb") == (
        "quantity: must be between 100 and 100000"
    )
    assert refused("Custom Comments") == "comments: required"


COUNTED = [
    ("Custom Comments", "comments", {}),
    ("Comment Replies", "comments", {"link": LINK, "username": "author"}),
    ("Mentions Custom List", "usernames", {"link": LINK}),
]


@pytest.mark.parametrize(("service_type", "field", "extra"), COUNTED)
def test_counted_types_charge_every_line_sent(
    service_type: str, field: str, extra: dict[str, str]
) -> None:
    # Every line goes upstream, so the quantity charged is the number of lines, whatever the
    # client says: 10 for 1,000 lines would charge 10 and deliver 1,000.
    lines = "\n".join(f"line {i}" for i in range(1000)) + "\n\n"
    for quantity in (10, 999, 1001, 1):
        assert refused(service_type, low=1, quantity=quantity, **{field: lines}, **extra) == (
            f"quantity: must be the number of non-empty {field} lines (1000), or left out"
        )
    for quantity in (None, 0, 1000):  # absent, a PHP form's 0, or the count itself
        order = run(service_type, low=1, quantity=quantity, **{field: lines}, **extra)
        assert (order.quantity, order.units) == (1000, 1000)


def test_comments_keep_crlf_text_but_refuse_control_characters() -> None:
    order = run("Custom Comments", comments="a\tb 😀\r\nc\u200dd\r\n", low=1)
    assert order.extras["comments"] == "a\tb 😀\nc\u200dd"
    assert refused("Custom Comments", comments="a\x00b") == (
        "comments: must not contain control characters"
    )
    assert refused("Custom Comments", comments="a\x1bb") == (
        "comments: must not contain control characters"
    )


def test_comment_replies_need_comments_and_username() -> None:
    order = run("Comment Replies", link=LINK, comments="x\ny", username="@author", low=1)
    assert order.extras == {"comments": "x\ny", "username": "@author"}
    assert order.quantity == 2
    assert refused("Comment Replies", link=LINK, username="a") == "comments: required"
    assert refused("Comment Replies", link=LINK, comments="x") == "username: required"
    assert refused("Comment Replies", comments="x", username="a") == "link: required"


# -- mentions ------------------------------------------------------------------------------------


def test_mentions_need_usernames() -> None:
    order = run("Mentions", link=LINK, quantity=100, usernames="@a\n@b\n")
    assert order.extras == {"usernames": "@a\n@b"}
    assert refused("Mentions", link=LINK, quantity=100) == "usernames: required"


def test_mentions_with_hashtags_need_usernames_and_hashtags() -> None:
    order = run("Mentions with Hashtags", link=LINK, quantity=100, usernames="a", hashtags="#x")
    assert order.extras == {"usernames": "a", "hashtags": "#x"}
    order = run("Mentions with Hashtags", link=LINK, quantity=100, usernames="a", hashtag="#y")
    assert order.extras["hashtags"] == "#y"
    assert refused("Mentions with Hashtags", link=LINK, quantity=100, usernames="a") == (
        "hashtags: required"
    )
    assert refused("Mentions with Hashtags", link=LINK, quantity=100, hashtags="#x") == (
        "usernames: required"
    )


def test_mentions_custom_list_quantity_defaults_to_usernames() -> None:
    order = run("Mentions Custom List", link=LINK, usernames="a\nb\nc", low=1)
    assert order.quantity == 3
    assert order.extras == {"usernames": "a\nb\nc"}
    assert refused("Mentions Custom List", link=LINK, usernames="a\nb\nc") == (
        "quantity: must be between 100 and 100000"
    )


def test_mentions_hashtag_takes_hashtag_or_hashtags() -> None:
    assert run("Mentions Hashtag", link=LINK, quantity=100, hashtag="#a").extras == {
        "hashtag": "#a"
    }
    assert run("Mentions Hashtag", link=LINK, quantity=100, hashtags="#b").extras == {
        "hashtag": "#b"
    }
    assert refused("Mentions Hashtag", link=LINK, quantity=100) == "hashtag: required"


def test_mentions_user_followers_need_username() -> None:
    order = run("Mentions User Followers", link=LINK, quantity=100, username=" nike ")
    assert order.extras == {"username": "nike"}
    assert refused("Mentions User Followers", link=LINK, quantity=100) == "username: required"
    assert refused("Mentions User Followers", link=LINK, quantity=100, username="a b") == (
        "username: must not contain whitespace or control characters"
    )


def test_mentions_media_likers_need_media() -> None:
    order = run("Mentions Media Likers", link=LINK, quantity=100, media="https://ig.com/p/1")
    assert order.extras == {"media": "https://ig.com/p/1"}
    assert refused("Mentions Media Likers", link=LINK, quantity=100) == "media: required"


def test_comment_likes_need_username() -> None:
    order = run("Comment Likes", link=LINK, quantity=100, username="fan")
    assert order.extras == {"username": "fan"}
    assert refused("Comment Likes", link=LINK, quantity=100) == "username: required"


# -- poll ----------------------------------------------------------------------------------------


def test_poll_needs_answer_number() -> None:
    order = run("Poll", link=LINK, quantity=100, answer_number=1)
    assert order.extras == {"answer_number": 1} and order.units == 100
    assert refused("Poll", link=LINK, quantity=100) == "answer_number: required"


# -- subscriptions -------------------------------------------------------------------------------

SUB = {"username": "nike", "min": 100, "max": 200, "posts": 5}


def test_subscription_units_are_max_times_posts() -> None:
    order = run("Subscriptions", **SUB, old_posts=3, delay=30, expiry="2026-06-01")
    assert order.units == 200 * 8 and order.quantity == 200 * 8
    assert money.charge(450, order.units) == money.div_round_half_up(450 * 200 * 8, 1000)
    assert order.extras == {
        "min": 100,
        "max": 200,
        "posts": 5,
        "old_posts": 3,
        "delay": 30,
        "username": "nike",
        "expiry": "2026-06-01",
    }
    assert (order.link, order.runs, order.interval) == ("", 1, 0)


def test_subscription_takes_username_or_link() -> None:
    fields = {k: v for k, v in SUB.items() if k != "username"}
    order = run("Subscriptions", link="instagram.com/nike", **fields)
    assert order.link == "https://instagram.com/nike" and "username" not in order.extras
    assert refused("Subscriptions", **fields) == "username: required"


def test_subscription_min_max_within_service_bounds() -> None:
    assert run("Subscriptions", **(SUB | {"min": 100, "max": 100_000})).units == 500_000
    assert refused("Subscriptions", **(SUB | {"min": 99})) == (
        "min: must be between 100 and 100000"
    )
    assert refused("Subscriptions", **(SUB | {"max": 100_001})) == (
        "max: must be between 100 and 100000"
    )
    assert refused("Subscriptions", **(SUB | {"min": 201})) == "min: must not exceed max"
    assert refused("Subscriptions", **(SUB | {"min": None})) == "min: required"
    assert refused("Subscriptions", **(SUB | {"max": None})) == "max: required"


def test_subscription_posts() -> None:
    assert run("Subscriptions", **(SUB | {"posts": None, "old_posts": 2})).units == 400
    assert run("Subscriptions", **(SUB | {"posts": 0, "old_posts": 1})).units == 200
    assert refused("Subscriptions", **(SUB | {"posts": None})) == "posts: required"
    assert refused("Subscriptions", **(SUB | {"posts": 0, "old_posts": 0})) == (
        "posts: posts + old_posts must be at least 1"
    )
    assert run("Subscriptions", **SUB).extras["delay"] == 0


@pytest.mark.parametrize(
    ("text", "day"),
    [
        ("2026-05-17", dt.date(2026, 5, 17)),
        ("2030-01-31", dt.date(2030, 1, 31)),
        ("2026-05-17T00:00:00", dt.date(2026, 5, 17)),
        ("2026-05-17T23:59:59Z", dt.date(2026, 5, 17)),
        ("2026-12-01T10:30:00+03:00", dt.date(2026, 12, 1)),
        ("2026-12-01 10:30", dt.date(2026, 12, 1)),
        ("17/05/2026", dt.date(2026, 5, 17)),
        ("1/6/2026", dt.date(2026, 6, 1)),
        (" 31/12/2026 ", dt.date(2026, 12, 31)),
    ],
)
def test_expiry_formats(text: str, day: dt.date) -> None:
    assert parse_expiry(text, TODAY) == day
    assert run("Subscriptions", **SUB, expiry=text).extras["expiry"] == day.isoformat()


@pytest.mark.parametrize(
    "text", ["2026-05-16", "2026-05-15", "16/05/2026", "2020-01-01T10:00", "2026-05-16T23:59:59"]
)
def test_expiry_must_be_in_the_future(text: str) -> None:
    assert refused("Subscriptions", **SUB, expiry=text) == "expiry: must be in the future"


@pytest.mark.parametrize(
    "text",
    [
        "tomorrow",
        "2026-13-01",
        "31/02/2027",
        "05/16/2027",
        "2027/05/16",
        "16-05-2027",
        "1e9",
        "2027-05-16T25:00",
    ],
)
def test_expiry_must_parse(text: str) -> None:
    assert refused("Subscriptions", **SUB, expiry=text) == (
        "expiry: must be YYYY-MM-DD, an ISO datetime or d/m/Y"
    )


def test_expiry_optional() -> None:
    assert "expiry" not in run("Subscriptions", **SUB).extras
    assert "expiry" not in run("Subscriptions", **SUB, expiry=" ").extras


# -- the table as a whole ------------------------------------------------------------------------

MINIMAL: dict[str, dict[str, Any]] = {
    "default": {"link": LINK, "quantity": 100},
    "Package": {},
    "Custom Comments": {"comments": "a\n" * 100},
    "Custom Comments Package": {"comments": "a"},
    "Mentions": {"link": LINK, "quantity": 100, "usernames": "a"},
    "Mentions with Hashtags": {"link": LINK, "quantity": 100, "usernames": "a", "hashtags": "b"},
    "Mentions Custom List": {"link": LINK, "usernames": "a\n" * 100},
    "Mentions Hashtag": {"link": LINK, "quantity": 100, "hashtag": "b"},
    "Mentions User Followers": {"link": LINK, "quantity": 100, "username": "a"},
    "Mentions Media Likers": {"link": LINK, "quantity": 100, "media": "m"},
    "Subscriptions": SUB,
    "Poll": {"link": LINK, "quantity": 100, "answer_number": 2},
    "Comment Likes": {"link": LINK, "quantity": 100, "username": "a"},
    "Comment Replies": {"link": LINK, "username": "a", "comments": "c\n" * 100},
}


def test_every_service_type_is_covered() -> None:
    assert set(MINIMAL) == set(SERVICE_TYPES)


@pytest.mark.parametrize("service_type", sorted(MINIMAL))
def test_minimal_order_of_each_type_passes(service_type: str) -> None:
    order = run(service_type, **MINIMAL[service_type])
    assert order.quantity >= 1 and order.units >= 1 and order.runs == 1


@pytest.mark.parametrize(
    ("service_type", "field"),
    [
        (t, f)
        for t, fields in MINIMAL.items()
        for f in fields
        if not (t == "Subscriptions" and f == "username")
        and not (
            t in ("Custom Comments", "Mentions Custom List", "Comment Replies") and f == "quantity"
        )
    ],
)
def test_each_required_field_of_each_type(service_type: str, field: str) -> None:
    fields = {k: v for k, v in MINIMAL[service_type].items() if k != field}
    assert refused(service_type, **fields).startswith(f"{field}: ")


def test_unknown_service_type_is_a_server_bug() -> None:
    with pytest.raises(ValueError, match="unknown service type"):
        run("Followers", link=LINK, quantity=100)
