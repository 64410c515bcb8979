"""Fields an `add` passes to the provider (targeting: `country`, `device`, ...): kept, bounded,
fingerprinted and signed; never a name of this API."""

from __future__ import annotations

import datetime as dt
import json
from urllib.parse import urlencode

import pytest
import requests

from panelsrv.api import actions, extras, sign
from panelsrv.api.actions import Add, fingerprint
from panelsrv.api.decode import decode_request
from panelsrv.api.validate import validate_add
from panelsrv.errors import ApiError
from panelsrv.store.jobs import Job
from panelsrv.worker.dispatch import order_fields

KEY = "YOUR_API_KEY"
ADD = {
    "key": KEY,
    "action": "add",
    "service": "1",
    "link": "https://a.example/x",
    "quantity": "100",
}
TARGETING = {"country": "us", "device": "mobile"}


def error_of(body: bytes, content_type: bytes = b"", query: bytes = b"") -> str:
    with pytest.raises(ApiError) as info:
        decode_request(body, content_type, query)
    assert info.value.status == 400
    return str(json.loads(info.value.body())["error"])


def sent(**kwargs: object) -> tuple[bytes, bytes]:
    """What Python `requests` sends: (body, content type)."""
    request = requests.Request("POST", "http://127.0.0.1/api/v2", **kwargs).prepare()  # type: ignore[arg-type]
    body = request.body if isinstance(request.body, bytes) else request.body.encode()
    return body, request.headers["Content-Type"].encode()


@pytest.mark.parametrize("encoding", ["data", "json", "files"])
def test_unknown_add_fields_are_kept_in_every_encoding(encoding: str) -> None:
    action = decode_request(*sent(**{encoding: ADD | {"device": "mobile", "country": "us"}}), b"")
    assert isinstance(action.action, Add)
    assert action.action.extras == (("country", "us"), ("device", "mobile"))  # sorted by name


def test_query_string_extras_count_and_the_body_wins() -> None:
    decoded = decode_request(urlencode(ADD | {"country": "us"}).encode(), b"", b"country=de&x=1")
    assert decoded.action.extras == (("country", "us"), ("x", "1"))  # type: ignore[attr-defined]


def test_targeting_values_pass_unchanged() -> None:
    text = " Keyword one\nkeyword two\t(x) é😀 https://r.example/?a=1&b=2 "
    action = decode_request(urlencode(ADD | {"keywords": text}).encode(), b"", b"").action
    assert action.extras == (("keywords", text),)  # type: ignore[attr-defined]
    body = json.dumps(ADD | {"groups": 12, "none": None}).encode()
    action = decode_request(body, b"application/json", b"").action
    assert action.extras == (("groups", "12"),)  # type: ignore[attr-defined]


def test_an_empty_extra_is_absent() -> None:
    action = decode_request(urlencode(ADD | {"country": "", "device": "x"}).encode(), b"", b"")
    assert action.action.extras == (("device", "x"),)  # type: ignore[attr-defined]


def test_other_actions_still_ignore_unknown_fields() -> None:
    decoded = decode_request(b"key=k&action=status&order=5&country=us", b"", b"")
    assert decoded.action == actions.Status(key="k", order=5)


RESERVED_EXAMPLES = ["orders", "order", "url", "events", "webhook", "refill", "refills", "extras"]


@pytest.mark.parametrize("name", RESERVED_EXAMPLES)
def test_a_name_of_this_api_is_never_passed_through(name: str) -> None:
    assert error_of(urlencode(ADD | {name: "1"}).encode()) == (
        f"{name}: a field of this API but not of add, never passed to the provider"
    )


def test_every_name_panelsrv_sends_upstream_is_reserved() -> None:
    job_fields = {"service", "link", "quantity", "runs", "interval", "comments", "usernames"}
    job_fields |= {"username", "hashtags", "hashtag", "media", "answer_number", "min", "max"}
    job_fields |= {"posts", "old_posts", "delay", "expiry", "key", "action", "idempotency_key"}
    assert job_fields <= extras.RESERVED_NAMES
    assert {"sign", "sign_version", "timestamp"} <= extras.RESERVED_NAMES


@pytest.mark.parametrize(
    "name",
    ["Key", "ACTION", "Country", "key ", " action", "my-field", "groups[]", "a.b", "é", "x" * 65,
     "link=https://a&quantity", "key\x00"],
)  # fmt: skip
def test_a_name_outside_the_pattern_is_refused(name: str) -> None:
    assert error_of(urlencode(ADD | {name: "1"}).encode()) == (
        f"{name[:100]}: not a field of add; a field passed to the provider is named with 1 to 64"
        " characters a-z, 0-9 or _"
    )


def test_the_bounds_are_stated_in_the_error() -> None:
    many = {f"t{i:02d}": "1" for i in range(21)}
    assert error_of(urlencode(ADD | many).encode()) == (
        "t20: at most 20 fields beyond those of add are passed to the provider"
    )
    twenty = {f"t{i:02d}": "1" for i in range(20)}
    assert len(decode_request(urlencode(ADD | twenty).encode(), b"", b"").action.extras) == 20  # type: ignore[attr-defined]
    assert error_of(urlencode(ADD | {"kw": "k" * 1001}).encode()) == (
        "kw: must be a string of at most 1000 characters"
    )
    decode_request(urlencode(ADD | {"kw": "é" * 1000, "x" * 64: "1"}).encode(), b"", b"")
    for control in ("\x00", "\x1b", "\x7f", "\x85"):
        assert error_of(urlencode(ADD | {"kw": f"a{control}b"}).encode()) == (
            "kw: must not contain control characters"
        )
    for value in ("true", "1.5", "[1]", '{"a": 1}'):
        body = json.dumps(ADD).replace("}", f', "kw": {value}}}', 1)
        assert error_of(body.encode(), b"application/json") == (
            "kw: must be a string or an integer"
        )


def test_fingerprint_covers_the_extras_and_not_their_order() -> None:
    plain = Add(key="k", service=1, link="x", quantity=100)
    with_us = decode_request(urlencode(ADD | TARGETING).encode(), b"", b"").action
    reordered = json.dumps(ADD | {"device": "mobile", "country": "us"}).encode()
    with_us_json = decode_request(reordered, b"application/json", b"").action
    with_de = decode_request(
        urlencode(ADD | {"country": "de", "device": "mobile"}).encode(), b"", b""
    )
    assert fingerprint(with_us) == fingerprint(with_us_json)
    assert fingerprint(with_us) != fingerprint(with_de.action)
    assert fingerprint(with_us) != fingerprint(
        decode_request(urlencode(ADD).encode(), b"", b"").action
    )
    # An add without extras keeps the fingerprint it had before extras existed (this digest is
    # the one the release before them computed), so a retry across an upgrade still finds its
    # stored answer.
    assert fingerprint(plain).hex() == (
        "e72bc15adec0fc738bbec322215bd401d60e6fe3c5917ec7a5652a52b66b01bf"
    )


def test_extras_are_stored_with_the_order_beside_the_types_own() -> None:
    add = Add(key="k", service=1, link="x.example", comments="a\nb", extras=(("country", "us"),))
    order = validate_add(add, "Custom Comments", 1, 100, False, dt.date(2026, 1, 1))
    assert order.extras == {"country": "us", "comments": "a\nb"}


# -- signing -------------------------------------------------------------------------------------


def test_extras_are_signed_fields_in_form_2() -> None:
    fields = ADD | TARGETING | {"sign_version": "2"}
    body = urlencode(fields | {"sign": sign.compute(KEY, fields, 2)}).encode()
    decoded = decode_request(body, b"", b"")
    assert decoded.action.extras == (("country", "us"), ("device", "mobile"))  # type: ignore[attr-defined]
    assert sign.verify(KEY, decoded.fields, decoded.action.sign or "", 2)
    # The extra is in the signed string: changing it breaks the signature.
    tampered = decode_request(body.replace(b"country=us", b"country=de"), b"", b"")
    assert not sign.verify(KEY, tampered.fields, tampered.action.sign or "", 2)
    added = decode_request(body + b"&referrer=evil", b"", b"")
    assert not sign.verify(KEY, added.fields, added.action.sign or "", 2)


def test_extras_in_form_1_are_refused_with_the_way_out() -> None:
    # `link=https://a&mobile=1` in the form 1 string is also the link https://a plus an extra
    # `mobile`: form 1 cannot carry extras unambiguously.
    fields = ADD | {"country": "us"}
    body = urlencode(fields | {"sign": sign.compute(KEY, fields)}).encode()
    assert error_of(body) == (
        "country: a field passed to the provider is signed with sign_version=2 only (the"
        " sign_version 1 string cannot tell it from text inside a value)"
    )
    # Names outside the extras rule keep their signing messages.
    assert error_of(b"key=k&action=balance&country=us&sign=0") == (
        "country: not a field of balance, refused in a signed request"
    )


# -- dispatch ------------------------------------------------------------------------------------


def test_the_order_fields_sent_upstream_carry_the_extras_and_ours_win() -> None:
    job = Job(
        id=1, attempt=1, ambiguous=False, refill_id=None, order_id=1, status="Pending",
        provider_id=1, upstream_id=None, link="https://a.example/x", quantity=100, runs=1,
        interval=0, extras={"country": "us", "device": "mobile", "quantity": 999, "service": 9},
        cancel_requested=False, service_type="default", provider_service="7", upstream_key="u",
    )  # fmt: skip
    assert order_fields(job) == {
        "country": "us", "device": "mobile", "quantity": 100, "service": "7",
        "link": "https://a.example/x",
    }  # fmt: skip
