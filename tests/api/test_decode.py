"""api/decode: the three body encodings, the query-string merge, duplicates, and error texts."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest
import requests

from panelsrv.api import actions
from panelsrv.api.decode import MAX_FIELDS, MAX_PART_HEADER, decode_request
from panelsrv.errors import ApiError

ADD = {
    "key": "k" * 40,
    "action": "add",
    "service": "1234",
    "link": "https://instagram.com/p/x?a=1&b=2 3+4%",
    "quantity": "1000",
    "runs": "5",
    "interval": "60",
    "comments": "first é\nsecond 😀\r\nthird",
    "expiry": "16/05/2030",
    "idempotency_key": "order-2026-05-16-8842",
}


def form(fields: dict[str, str]) -> bytes:
    return urlencode(fields).encode()


def prepared(**kwargs: object) -> tuple[bytes, bytes]:
    """What Python `requests` really sends: (body, content type)."""
    request = requests.Request("POST", "http://127.0.0.1/api/v2", **kwargs).prepare()  # type: ignore[arg-type]
    body = request.body if isinstance(request.body, bytes) else request.body.encode()
    return body, request.headers["Content-Type"].encode()


def multipart(
    fields: dict[str, str] | list[tuple[str, str]], boundary: str = "b0undary"
) -> tuple[bytes, bytes]:
    pairs = fields.items() if isinstance(fields, dict) else fields
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in pairs
    ]
    body = ("".join(parts) + f"--{boundary}--\r\n").encode()
    return body, f"multipart/form-data; boundary={boundary}".encode()


def error_of(body: bytes, content_type: bytes = b"", query: bytes = b"") -> tuple[int, str]:
    with pytest.raises(ApiError) as info:
        decode_request(body, content_type, query)
    return info.value.status, json.loads(info.value.body())["error"]


# -- one struct, every encoding --------------------------------------------------------------


def encodings(fields: dict[str, str]) -> list[tuple[bytes, bytes]]:
    as_json = {k: int(v) if v.isdigit() else v for k, v in fields.items()}
    return [
        (form(fields), b""),
        (form(fields), b"application/x-www-form-urlencoded"),
        (form(fields), b"Application/X-WWW-Form-Urlencoded; charset=UTF-8"),
        prepared(data=fields),
        (json.dumps(fields).encode(), b"application/json"),
        (json.dumps(as_json, ensure_ascii=False).encode(), b"application/json; charset=utf-8"),
        (json.dumps(as_json, indent=2).encode(), b"application/json"),
        prepared(json=as_json),
        multipart(fields),
        prepared(files=fields),
        prepared(files={k: (None, v) for k, v in fields.items()}),
    ]


@pytest.mark.parametrize(
    "fields",
    [
        ADD,
        {"key": "abc", "action": "services"},
        {"key": "abc", "action": "balance"},
        {"key": "abc", "action": "status", "orders": "1,2, 3"},
        {"key": "abc", "action": "status", "order": "8842"},
        {"key": "abc", "action": "cancel", "orders": "8842,8843"},
        {"key": "abc", "action": "refill", "order": "8842", "idempotency_key": "r-1"},
        {"key": "abc", "action": "refill_status", "refills": "317,9"},
        {
            "key": "abc",
            "action": "webhook_add",
            "url": "https://hook.example/x",
            "events": "order.status",
        },
        {"key": "abc", "action": "webhooks"},
        {"key": "abc", "action": "webhook_delete", "webhook": "12"},
    ],
    ids=lambda fields: fields["action"],
)
def test_form_json_and_multipart_decode_to_the_same_struct(fields: dict[str, str]) -> None:
    decoded = [decode_request(body, ctype, b"") for body, ctype in encodings(fields)]
    first = decoded[0]
    assert isinstance(first.action, actions.STRUCTS[fields["action"]])
    assert first.tag == fields["action"] == actions.tag_of(first.action)
    for other in decoded[1:]:
        assert other.action == first.action
        assert other.tag == first.tag


def test_add_fields_are_typed_and_percent_decoded() -> None:
    action = decode_request(form(ADD), b"", b"").action
    assert isinstance(action, actions.Add)
    assert action.service == 1234 and action.quantity == 1000
    assert action.runs == 5 and action.interval == 60
    assert action.link == ADD["link"]
    assert action.comments == ADD["comments"]
    assert action.idempotency_key == ADD["idempotency_key"]
    assert action.sign is None and action.timestamp is None and action.posts is None


def test_plus_is_a_space_and_encoded_plus_stays_a_plus() -> None:
    action = decode_request(b"key=a+b%2Bc&action=balance", b"", b"").action
    assert action.key == "a b+c"


def test_raw_utf8_and_escaped_utf8_agree() -> None:
    raw = decode_request("key=é😀&action=balance".encode(), b"", b"").action
    escaped = decode_request(b"key=%C3%A9%F0%9F%98%80&action=balance", b"", b"").action
    assert raw.key == escaped.key == "é😀"


def test_invalid_percent_escapes_stay_literal_like_urllib() -> None:
    assert decode_request(b"key=%zz%4&action=balance", b"", b"").action.key == "%zz%4"


def test_name_without_value_and_empty_parts() -> None:
    decoded = decode_request(b"&&key=abc&&action=balance&flag&", b"", b"")
    assert decoded.fields == {"key": "abc", "action": "balance", "flag": ""}


def test_json_numbers_and_strings_both_accepted_for_numeric_fields() -> None:
    for quantity in (1000, "1000", "0001000"):
        body = json.dumps({"key": "k", "action": "add", "service": 1, "quantity": quantity})
        action = decode_request(body.encode(), b"application/json", b"").action
        assert isinstance(action, actions.Add) and action.quantity == 1000


# Text that is not a string of decimal digits, however a lax parser would read it: exponents,
# fractions (rounded by a float: 99.99999999999999999 -> 100, 1e-400 -> 0), signs, blanks,
# separators, non-ASCII digits (str.isdigit() is True for them), more than 19 digits.
NOT_DIGITS = [
    "1e3",
    "1E3",
    "100.0",
    "0.5e1",
    "-0",
    "+100",
    "99.99999999999999999",
    "4.9999999999999999",
    "0.99999999999999999",
    "1e-400",
    " 100",
    "100 ",
    "100\n",
    "1_000",
    "1,000",
    "0x10",
    "\u0661\u0660\u0660",  # Arabic-Indic 100
    "\uff11\uff10\uff10",  # fullwidth 100
    "12345678901234567890",
    "inf",
    "nan",
    "true",
]  # `null` and `undefined` mean absent: test_unset_values_of_optional_fields_mean_absent
INTEGER_FIELDS = [
    ("service", "must be an integer >= 1"),
    ("quantity", "must be an integer >= 0"),
    ("runs", "must be an integer between 1 and 1000"),
    ("timestamp", "must be an integer >= 0"),
]


@pytest.mark.parametrize("text", NOT_DIGITS)
@pytest.mark.parametrize(("field", "rule"), INTEGER_FIELDS)
def test_integer_fields_take_only_decimal_digits(text: str, field: str, rule: str) -> None:
    fields = {"key": "k", "action": "add", "service": "5", "quantity": "100", field: text}
    for body, ctype in (
        (form(fields), b""),
        multipart(fields),
        (json.dumps(fields).encode(), b"application/json"),
    ):
        assert error_of(body, ctype) == (400, f"{field}: {rule}")
    assert error_of(b"", b"", form(fields)) == (400, f"{field}: {rule}")


@pytest.mark.parametrize("number", ["100.0", "1e2", "1E2", "0.5e1", "true", "false", "-0.0"])
@pytest.mark.parametrize(("field", "rule"), INTEGER_FIELDS)
def test_json_integer_fields_take_only_json_integers(number: str, field: str, rule: str) -> None:
    fields = {"key": "k", "action": "add", "service": 5, "quantity": 100, field: "NUMBER"}
    body = json.dumps(fields).replace('"NUMBER"', number).encode()
    assert error_of(body, b"application/json") == (400, f"{field}: {rule}")


def test_decimal_digits_are_read_exactly_up_to_the_bound() -> None:
    top = str(actions.MAX_BIGINT)
    decoded = decode_request(form({"key": "k", "action": "status", "order": top}), b"", b"")
    assert decoded.action == actions.Status(key="k", order=actions.MAX_BIGINT)
    over = str(actions.MAX_BIGINT + 1)
    assert error_of(form({"key": "k", "action": "status", "order": over})) == (
        400,
        "order: must be an integer >= 1",
    )
    body = json.dumps({"key": "k", "action": "status", "order": 10**30}).encode()
    assert error_of(body, b"application/json") == (400, "order: must be an integer >= 1")
    # Leading zeros are decimal digits; the text, not the number, is what a signature covers.
    decoded = decode_request(b"key=k&action=add&service=007&quantity=0100", b"", b"")
    assert isinstance(decoded.action, actions.Add)
    assert (decoded.action.service, decoded.action.quantity) == (7, 100)
    assert decoded.fields["quantity"] == "0100"


@pytest.mark.parametrize("unset", ["", "undefined", "null"])
def test_unset_values_of_optional_fields_mean_absent(unset: str) -> None:
    # PHP forms send `runs=`, a Node SDK `runs=undefined`: an option left unset, in every
    # encoding, for every optional field (an extra too) and every integer field.
    unsets = {
        name: unset
        for name in ("runs", "interval", "sign", "idempotency_key", "link", "username", "country")
    }
    for body, ctype in encodings({"key": "k", "action": "add", "service": "1", **unsets}):
        decoded = decode_request(body, ctype, b"")
        assert decoded.action == actions.Add(key="k", service=1), (body, ctype)
        assert decoded.fields["runs"] == unset  # what a signature covers: as received
    for body, ctype in encodings(
        {"key": "k", "action": "webhook_add", "url": "u", "events": unset}
    ):
        assert decode_request(body, ctype, b"").action == actions.WebhookAdd(key="k", url="u")
    # A required integer sent unset is missing; a required text is the text.
    assert error_of(form({"key": "k", "action": "add", "service": unset})) == (
        400,
        "service: required",
    )
    assert decode_request(form({"key": unset, "action": "balance"}), b"", b"").action.key == unset
    # JSON null is absent for every optional field, as msgspec reads it.
    body = b'{"key": "k", "action": "add", "service": 1, "runs": null, "link": null}'
    assert decode_request(body, b"application/json", b"").action == actions.Add(key="k", service=1)


def test_unset_is_only_the_whole_value() -> None:
    add = decode_request(b"key=k&action=add&service=1&username=nullable&link=Undefined", b"", b"")
    assert isinstance(add.action, actions.Add)
    assert (add.action.username, add.action.link) == ("nullable", "Undefined")
    assert error_of(b"key=k&action=add&service=1&runs=NULL") == (
        400,
        "runs: must be an integer between 1 and 1000",
    )


def test_unknown_fields_are_ignored_but_kept_for_the_signature() -> None:
    decoded = decode_request(b"key=k&action=balance&lang=en", b"", b"")
    assert decoded.action == actions.Balance(key="k")
    assert decoded.fields["lang"] == "en"


# -- query string ------------------------------------------------------------------------------


def test_query_fields_are_merged_under_the_body() -> None:
    decoded = decode_request(
        b"key=body&action=add&service=1&quantity=10",
        b"",
        b"key=query&runs=2&interval=3&action=balance",
    )
    action = decoded.action
    assert isinstance(action, actions.Add)
    assert action.key == "body"
    assert (action.runs, action.interval) == (2, 3)
    assert decoded.fields == {
        "key": "body",
        "action": "add",
        "service": "1",
        "quantity": "10",
        "runs": "2",
        "interval": "3",
    }


@pytest.mark.parametrize(
    "ctype", [b"", b"application/json", b"multipart/form-data; boundary=B", b"text/plain"]
)
def test_query_alone_can_carry_the_whole_request(ctype: bytes) -> None:
    decoded = decode_request(b"", ctype, b"key=abc&action=status&order=5")
    assert decoded.action == actions.Status(key="abc", order=5)
    assert error_of(b"", ctype) == (400, "Incorrect action")


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (b'{"key": "k", "action": "add", "service": 7}', b"application/json"),
        multipart({"key": "k", "action": "add", "service": "7"}),
    ],
)
def test_query_merges_under_json_and_multipart_too(body: bytes, ctype: bytes) -> None:
    decoded = decode_request(body, ctype, b"service=9&quantity=50")
    assert isinstance(decoded.action, actions.Add)
    assert (decoded.action.service, decoded.action.quantity) == (7, 50)


# -- duplicates ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "ctype", "query", "field"),
    [
        (b"key=a&action=balance&key=b", b"", b"", "key"),
        (b"key=a&action=balance&key=a", b"", b"", "key"),
        (b"key=a&action=balance&act%69on=balance", b"", b"", "action"),
        (b"key=a&action=balance", b"", b"x=1&x=2", "x"),
        (b'{"key": "a", "action": "balance", "key": "b"}', b"application/json", b"", "key"),
        (b'{"key": "a", "action": "balance", "k\\u0065y": "b"}', b"application/json", b"", "key"),
        (
            b'{"key": "a", "action": "balance", "o": {"x": 1, "x": 2}}',
            b"application/json",
            b"",
            "x",
        ),
        (
            *multipart([("key", "a"), ("action", "balance"), ("sign", "s"), ("sign", "t")]),
            b"",
            "sign",
        ),
    ],
)
def test_duplicate_fields_are_refused(body: bytes, ctype: bytes, query: bytes, field: str) -> None:
    assert error_of(body, ctype, query) == (400, f"{field}: sent more than once")


def test_same_name_in_body_and_query_is_not_a_duplicate() -> None:
    decoded = decode_request(b"key=a&action=balance", b"", b"key=b")
    assert decoded.action.key == "a"


def test_nested_objects_without_repeats_are_not_duplicates() -> None:
    body = b'{"key": "a", "action": "balance", "meta": {"x": 1, "y": {"x": 2}}, "x": 3}'
    decoded = decode_request(body, b"application/json", b"")
    assert decoded.action == actions.Balance(key="a")
    assert decoded.fields["meta"] == "{'x': 1, 'y': {'x': 2}}"


def test_key_like_text_inside_json_strings_is_not_counted() -> None:
    body = json.dumps({"key": 'a":"b', "action": "balance", "link": '\\":', "x": "\\"}).encode()
    assert decode_request(body, b"application/json", b"").action.key == 'a":"b'


# -- action --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "nope",
        "",
        "Add",
        "ADD",
        " add",
        "withdraw",
        "transfer",
        "transfers",
        "api_key_create",
        "key_create",
        "keys",
        "rotate_key",
        "password",
        "change_password",
        "email",
        "2fa",
        "admin",
        "users",
        "moderation",
        "payout",
    ],
)
def test_unknown_and_forbidden_actions_are_incorrect(name: str) -> None:
    assert error_of(form({"key": "k", "action": name})) == (400, "Incorrect action")
    body = json.dumps({"key": "k", "action": name}).encode()
    assert error_of(body, b"application/json") == (400, "Incorrect action")
    assert error_of(*multipart({"key": "k", "action": name})) == (400, "Incorrect action")


@pytest.mark.parametrize("value", ["1", "null", "true", '["add"]', '{"a": "add"}'])
def test_non_string_json_action_is_incorrect(value: str) -> None:
    body = f'{{"key": "k", "action": {value}}}'.encode()
    assert error_of(body, b"application/json") == (400, "Incorrect action")


def test_incorrect_action_comes_before_duplicates_and_missing_fields() -> None:
    assert error_of(b"action=nope&x=1&x=2") == (400, "Incorrect action")
    assert error_of(b"x=1") == (400, "Incorrect action")
    assert error_of(b"") == (400, "Incorrect action")
    assert error_of(b"action=withdraw&amount=5") == (400, "Incorrect action")


def test_missing_key_is_named_before_other_missing_fields() -> None:
    assert error_of(b"action=add") == (400, "key: required")
    assert error_of(b"action=balance") == (400, "key: required")
    assert error_of(b"key=k&action=add") == (400, "service: required")
    assert error_of(b"key=k&action=webhook_delete") == (400, "webhook: required")


# -- malformed bodies ----------------------------------------------------------------------------

MALFORMED = (400, "Malformed request body")


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (b"key=\xff&action=balance", b""),
        (b"key=%FF&action=balance", b""),
        (b"key=%C3&action=balance", b""),
        (b"key=\xed\xa0\x80&action=balance", b""),  # an encoded surrogate is not UTF-8
        (b"key=k&action=balance", b"text/plain"),
        (b"key=k&action=balance", b"application/xml"),
        (b'{"key": "k", "action": "balance"', b"application/json"),
        (b"[1, 2]", b"application/json"),
        (b'["key", "action"]', b"application/json"),
        (b'"key"', b"application/json"),
        (b"null", b"application/json"),
        (b'{"key": NaN, "action": "balance"}', b"application/json"),
        (b'{"key": "\\ud800", "action": "balance"}', b"application/json"),
        (b'{"key": "\xff", "action": "balance"}', b"application/json"),
        (b'\xef\xbb\xbf{"key": "k", "action": "balance"}', b"application/json"),
        (b'{"key": "k", "action": "balance"} {}', b"application/json"),
        (b'{"a": ' * 10_000 + b"1" + b"}" * 10_000, b"application/json"),
        (b"[" * 100_000, b"application/json"),
        (b"key=k&action=balance", b"multipart/form-data"),
        (b"key=k&action=balance", b"multipart/form-data; boundary=b0undary"),
    ],
)
def test_undecodable_bodies_are_malformed(body: bytes, ctype: bytes) -> None:
    assert error_of(body, ctype) == MALFORMED


def test_malformed_query_string_is_malformed() -> None:
    assert error_of(b"key=k&action=balance", b"", b"x=%FF") == MALFORMED


def test_malformed_comes_before_incorrect_action() -> None:
    assert error_of(b"action=nope&x=\xff") == MALFORMED


GOOD_PART = b'Content-Disposition: form-data; name="key"\r\n\r\nk\r\n'


@pytest.mark.parametrize(
    "body",
    [
        b"preamble\r\n--B\r\n" + GOOD_PART + b"--B--\r\n",
        b"--B\r\n" + GOOD_PART,  # no close delimiter
        b"--B\r\n" + GOOD_PART + b"--B",  # truncated close delimiter
        b"--B\r\n\r\nk\r\n--B--\r\n",  # no headers
        b"--B\r\nContent-Type: text/plain\r\n\r\nk\r\n--B--\r\n",  # no disposition
        b'--B\r\nContent-Disposition: attachment; name="key"\r\n\r\nk\r\n--B--\r\n',
        b"--B\r\nContent-Disposition: form-data\r\n\r\nk\r\n--B--\r\n",  # no name
        b'--B\r\nContent-Disposition: form-data; filename="key"\r\n\r\nk\r\n--B--\r\n',
        b'--B\r\nContent-Disposition: form-data; name="key"\r\nContent-Disposition: form-data; '
        b'name="x"\r\n\r\nk\r\n--B--\r\n',
        b'--B\r\nContent-Disposition : form-data; name="key"\r\n\r\nk\r\n--B--\r\n',
        b'--B\r\n Content-Disposition: form-data; name="key"\r\n\r\nk\r\n--B--\r\n',
        b'--B\r\nContent-Disposition: form-data;\r\n name="key"\r\n\r\nk\r\n--B--\r\n',  # obs-fold
        b'--B\r\nContent-Disposition: form-data; name="key"\nX: y\r\n\r\nk\r\n--B--\r\n',
        b'--B\r\nContent-Disposition: form-data; name="key"\r\nContent-Transfer-Encoding: base64'
        b"\r\n\r\naw==\r\n--B--\r\n",
        b'--B\r\nContent-Disposition: form-data; name="key"\r\nX-Pad: '
        + b"x" * MAX_PART_HEADER
        + b"\r\n\r\nk\r\n--B--\r\n",
        b'--B \r\nContent-Disposition: form-data; name="key"\r\n\r\nk\r\n--B--\r\n',
        b'--B\r\nContent-Disposition: form-data; name="key"\r\n\r\n\xff\r\n--B--\r\n',
        b'--B\r\nContent-Disposition: form-data; name="\xff"\r\n\r\nk\r\n--B--\r\n',
    ],
)
def test_strict_multipart(body: bytes) -> None:
    assert error_of(body, b"multipart/form-data; boundary=B") == MALFORMED


def test_multipart_details() -> None:
    body = (
        b'--B\r\ncontent-disposition: FORM-DATA; filename="a;b"; name=key\r\n'
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        b"line1\r\nline2\r\n--B\r\n"
        b'Content-Disposition: form-data; name="act\\"ion"\r\n\r\nx\r\n--B\r\n'
        b'Content-Disposition: form-data; name="action"\r\n\r\nbalance\r\n--B--\r\nepilogue'
    )
    decoded = decode_request(body, b'multipart/form-data; charset=utf-8; boundary="B"', b"")
    assert decoded.action == actions.Balance(key="line1\r\nline2")
    assert decoded.fields['act"ion'] == "x"


def part(disposition: bytes, value: bytes = b"v", extra: bytes = b"") -> bytes:
    return (
        b"--B\r\nContent-Disposition: " + disposition + b"\r\n" + extra + b"\r\n" + value + b"\r\n"
    )


KEY_AND_ACTION = part(b'form-data; name="key"', b"k") + part(b"form-data; name=action", b"balance")


@pytest.mark.parametrize(
    ("disposition", "name"),
    [
        # The name is a parameter of its own, never text inside another one's quoted value.
        (b'form-data; filename="a;name=key"; name="x"', "x"),
        (b'form-data; filename="a\\"; name=key"; name="x"', "x"),
        (b'form-data; name="x"; filename="; name=key"', "x"),
        (b"form-data;name=x", "x"),
        (b"FORM-DATA; NAME=x; FileName=y", "x"),
        (b'form-data; name = "x" ; filename = y', "x"),
        (b'form-data; name="a\\"b"', 'a"b'),
        (b'form-data; name="a;b=c"', "a;b=c"),
        (b"form-data; name=a.b-c_d!#$%&'*+^`|~9", "a.b-c_d!#$%&'*+^`|~9"),
        (b'form-data; name="\xc3\xa9"', "\u00e9"),
        (b'form-data; name="x";', "x"),
        (b"form-data; name*=UTF-8''y; name=x", "x"),
    ],
)
def test_multipart_parameters_follow_the_grammar(disposition: bytes, name: str) -> None:
    body = KEY_AND_ACTION + part(disposition) + b"--B--\r\n"
    decoded = decode_request(body, b"multipart/form-data; boundary=B", b"")
    assert decoded.action == actions.Balance(key="k")
    assert decoded.fields[name] == "v"
    assert set(decoded.fields) == {"key", "action", name}


@pytest.mark.parametrize(
    "disposition",
    [
        b'form-data; name=\x1faction"',  # a token holds tchars only: not \x1c-\x1f, not `"`
        b"form-data; name=\x1faction",
        b'form-data; name=act"ion"',
        b'form-data; name="key"x',
        b'form-data; name="key" x',
        b'form-data; name="unterminated',
        b"form-data; name=",
        b"form-data; name",
        b'form-data; =x; name="key"',
        b'form-data; name="key"; name="x"',  # which one? neither
        b'form-data; name="key"; NAME="key"',
        b'form-data name="key"',
        b'form-data; name="a\x01b"',
        b"form-data; name=a b",
        b"form-data; name=a,b",
        b"form-data; name=(key)",
    ],
)
def test_multipart_parameters_outside_the_grammar_are_malformed(disposition: bytes) -> None:
    body = KEY_AND_ACTION + part(disposition) + b"--B--\r\n"
    assert error_of(body, b"multipart/form-data; boundary=B") == MALFORMED


@pytest.mark.parametrize(
    "ctype",
    [
        b"multipart/form-data; boundary=B; boundary=C",
        b"multipart/form-data; boundary=",
        b'multipart/form-data; boundary="B',
        b"multipart/form-data; boundary=B x",
        b"multipart/form-data; boundary=" + b"B" * 71,
        b"application/x-www-form-urlencoded; charset",
        b"application/json; charset=utf-8; charset=utf-8",
        b"application/json; x=\x1f",
    ],
)
def test_request_content_type_parameters_follow_the_grammar(ctype: bytes) -> None:
    bodies = {
        b"application/x-www-form-urlencoded": b"key=k&action=balance",
        b"application/json": b'{"key": "k", "action": "balance"}',
        b"multipart/form-data": KEY_AND_ACTION + b"--B--\r\n",
    }
    body = bodies[ctype.partition(b";")[0]]
    assert error_of(body, ctype) == MALFORMED


@pytest.mark.parametrize(
    "charset", ["latin-1", "ISO-8859-1", '"iso-8859-1"', "windows-1251", "utf-16", "UTF-7", "x"]
)
def test_a_charset_other_than_utf8_is_refused(charset: str) -> None:
    rule = (400, "Content-Type: charset must be UTF-8 or US-ASCII")
    param = f"; charset={charset}".encode()
    assert error_of(b"key=k&action=balance", b"application/x-www-form-urlencoded" + param) == rule
    assert error_of(b'{"key": "k", "action": "balance"}', b"application/json" + param) == rule
    body = KEY_AND_ACTION + b"--B--\r\n"
    assert error_of(body, b"multipart/form-data; boundary=B" + param) == rule
    assert error_of(body, b"multipart/form-data" + param + b"; boundary=B") == rule
    # A part's own Content-Type may declare one too: the field it belongs to is named.
    typed = part(b'form-data; name="comments"', b"x", b"Content-Type: text/plain" + param + b"\r\n")
    assert error_of(KEY_AND_ACTION + typed + b"--B--\r\n", b"multipart/form-data; boundary=B") == (
        400,
        "comments: charset must be UTF-8 or US-ASCII",
    )


@pytest.mark.parametrize(
    "charset", ["utf-8", "UTF-8", '"utf-8"', "utf8", "us-ascii", "US-ASCII", "ascii"]
)
def test_utf8_and_ascii_charsets_are_accepted(charset: str) -> None:
    param = f"; charset={charset}".encode()
    balance = actions.Balance(key="k")
    assert (
        decode_request(
            b"key=k&action=balance", b"application/x-www-form-urlencoded" + param, b""
        ).action
        == balance
    )
    assert (
        decode_request(
            b'{"key": "k", "action": "balance"}', b"application/json" + param, b""
        ).action
        == balance
    )
    typed = part(b'form-data; name="x"', b"v", b"Content-Type: text/plain" + param + b"\r\n")
    body = KEY_AND_ACTION + typed + b"--B--\r\n"
    assert decode_request(body, b"multipart/form-data; boundary=B" + param, b"").action == balance
    # Query-only requests: the charset of an empty body is not a question.
    assert (
        decode_request(b"", b"text/plain; charset=latin-1", b"key=k&action=balance").action
        == balance
    )


def test_field_count_is_bounded_in_every_encoding() -> None:
    many = {f"f{i}": "1" for i in range(MAX_FIELDS)} | {"key": "k", "action": "balance"}
    assert error_of(form(many)) == MALFORMED
    assert error_of(json.dumps(many).encode(), b"application/json") == MALFORMED
    assert error_of(*multipart(many)) == MALFORMED
    assert error_of(b"key=k&action=balance", b"", form(many)) == MALFORMED
    few = {f"f{i}": "1" for i in range(MAX_FIELDS - 3)} | {"key": "k", "action": "balance"}
    for body, ctype in (
        (form(few), b""),
        (json.dumps(few).encode(), b"application/json"),
        multipart(few),
    ):
        assert decode_request(body, ctype, b"").action == actions.Balance(key="k")


# -- validation errors name the field and the rule --------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"service": "x"}, "service: must be an integer >= 1"),
        ({"service": "0"}, "service: must be an integer >= 1"),
        ({"service": "1.5"}, "service: must be an integer >= 1"),
        ({"service": "9223372036854775808"}, "service: must be an integer >= 1"),
        ({"quantity": "-1"}, "quantity: must be an integer >= 0"),
        ({"runs": "0"}, "runs: must be an integer between 1 and 1000"),
        ({"runs": "1001"}, "runs: must be an integer between 1 and 1000"),
        ({"interval": "43201"}, "interval: must be an integer between 1 and 43200"),
        ({"link": "x" * 1001}, "link: must be a string of at most 1000 characters"),
        ({"comments": "c" * 10_001}, "comments: must be a string of at most 10000 characters"),
        ({"usernames": "u" * 10_001}, "usernames: must be a string of at most 10000 characters"),
        ({"answer_number": "0"}, "answer_number: must be an integer between 1 and 1000"),
        ({"posts": "100001"}, "posts: must be an integer between 0 and 100000"),
        ({"delay": "-5"}, "delay: must be an integer between 0 and 43200"),
        ({"min": "0"}, "min: must be an integer >= 1"),
        ({"timestamp": "soon"}, "timestamp: must be an integer >= 0"),
        ({"idempotency_key": "i" * 129}, "idempotency_key: must be 1 to 128 printable characters"),
        ({"idempotency_key": "a\tb"}, "idempotency_key: must be 1 to 128 printable characters"),
    ],
)
def test_validation_errors_name_the_field_and_rule(extra: dict[str, str], message: str) -> None:
    fields = {"key": "k", "action": "add", "service": "1", "quantity": "10"} | extra
    assert error_of(form(fields)) == (400, message)


def test_boundaries_that_pass_decoding() -> None:
    fields = {
        "key": "k",
        "action": "add",
        "service": "1",
        "link": "x" * 1000,
        "comments": "c" * 10_000,
        "usernames": "u" * 10_000,
        "runs": "1000",
        "interval": "43200",
        "idempotency_key": "i" * 128,
        "quantity": "0",
    }
    action = decode_request(form(fields), b"", b"").action
    assert isinstance(action, actions.Add)
    assert action.link is not None and len(action.link) == 1000


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("true", "key: must be a string"),
        ("1", "key: must be a string"),
        ("null", "key: must be a string"),
        ('["k"]', "key: must be a string"),
    ],
)
def test_json_type_errors_name_the_field(value: str, message: str) -> None:
    body = f'{{"key": {value}, "action": "balance"}}'.encode()
    assert error_of(body, b"application/json") == (400, message)


def test_json_float_with_fraction_is_refused_for_integers() -> None:
    body = b'{"key": "k", "action": "add", "service": 1, "quantity": 10.5}'
    assert error_of(body, b"application/json") == (400, "quantity: must be an integer >= 0")


def test_an_integer_name_is_an_integer_field_in_every_action_that_has_it() -> None:
    # The form parsers read such a name's digits as an int whatever the action.
    for tag, cls in actions.STRUCTS.items():
        assert actions.INT_NAMES & set(cls.__struct_fields__) == actions.INT_FIELDS[tag]


def test_every_field_has_a_rule_text() -> None:
    for tag, names in actions.FIELD_NAMES.items():
        for name in names - {"action"}:
            assert actions.FIELD_RULES[tag, name].startswith("must be ")


# -- the fields a signature covers ---------------------------------------------------------------


def test_fields_are_values_as_received() -> None:
    decoded = decode_request(form(ADD), b"", b"")
    assert decoded.fields == ADD


def test_json_fields_render_like_python_str() -> None:
    body = json.dumps(
        {
            "key": "k",
            "action": "status",
            "order": 1,
            "flag": True,
            "none": None,
            "list": [1, "a"],
            "text": "é",
        }
    ).encode()
    decoded = decode_request(body, b"application/json", b"q=1")
    assert decoded.fields == {
        "q": "1",
        "key": "k",
        "action": "status",
        "order": "1",
        "flag": "True",
        "none": "None",
        "list": "[1, 'a']",
        "text": "é",
    }


# -- id lists where clients put them ------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "single", "many"),
    [
        ("status", "order", "orders"),
        ("cancel", "order", "orders"),
        ("refill", "order", "orders"),
        ("refill_status", "refill", "refills"),
    ],
)
def test_a_list_in_the_single_field_is_the_list_form(tag: str, single: str, many: str) -> None:
    expected = actions.STRUCTS[tag](key="k", **{many: "1,2,3"})
    for body, ctype in encodings({"key": "k", "action": tag, single: "1,2,3"}):
        assert decode_request(body, ctype, b"").action == expected, (body, ctype)
    body = json.dumps({"key": "k", "action": tag, single: [1, 2, 3]}).encode()
    assert decode_request(body, b"application/json", b"").action == expected
    # One id with a comma is a list of one; both forms at once stay a 400.
    assert decode_request(form({"key": "k", "action": tag, single: "7,"}), b"", b"").action == (
        actions.STRUCTS[tag](key="k", **{many: "7,"})
    )
    assert error_of(form({"key": "k", "action": tag, single: "1,2", many: "3"})) == (
        400,
        f"{many}: send either {single} or {many}, not both",
    )


def test_json_id_lists_as_arrays_and_numbers() -> None:
    def status(orders: object) -> actions.Action:
        body = json.dumps({"key": "k", "action": "status", "orders": orders}).encode()
        return decode_request(body, b"application/json", b"").action

    assert status([1, 2]) == actions.Status(key="k", orders="1,2")
    assert status(["1", 2]) == actions.Status(key="k", orders="1,2")
    assert status(5) == actions.Status(key="k", orders="5")
    for bad in ([1.5], [True], [[1]], [{"a": 1}]):
        with pytest.raises(ApiError) as info:
            status(bad)
        assert json.loads(info.value.body())["error"] == (
            "orders: must be comma-separated positive integers"
        )
    # What the array says is judged by the list rule afterwards (api.actions.parse_ids).
    assert actions.order_ids(status([3, 3, 4])) == [3, 4]  # type: ignore[arg-type]
    with pytest.raises(ApiError):
        actions.order_ids(status([]))  # type: ignore[arg-type]
    with pytest.raises(ApiError):
        actions.order_ids(status([0, -1]))  # type: ignore[arg-type]
    # The signature covers what was received, rendered as Python's str() does.
    body = b'{"key": "k", "action": "status", "orders": [1, 2]}'
    assert decode_request(body, b"application/json", b"").fields["orders"] == "[1, 2]"


def test_the_tables_of_id_lists_name_real_fields() -> None:
    for tag, pairs in actions.ID_LISTS.items():
        for single, many in pairs.items():
            assert {single, many} <= set(actions.STRUCTS[tag].__struct_fields__)
