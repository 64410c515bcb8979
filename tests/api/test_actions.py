"""api/actions: id lists, idempotency keys, fingerprints and reply encoding."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from panelsrv.api import actions
from panelsrv.api.actions import (
    Add,
    Cancel,
    ErrorReply,
    Refill,
    RefillStatus,
    Status,
    encode_reply,
    fingerprint,
    idempotency_key,
    order_ids,
    parse_ids,
    refill_ids,
)
from panelsrv.api.decode import decode_request
from panelsrv.errors import ApiError


def message(exc: pytest.ExceptionInfo[ApiError]) -> str:
    return message_of(exc.value)


def message_of(exc: ApiError) -> str:
    assert exc.status == 400
    return str(json.loads(exc.body())["error"])


# -- id lists ------------------------------------------------------------------------------------


def test_ids_keep_first_occurrence_order_without_duplicates() -> None:
    assert parse_ids("orders", "8843, 8842,8843 ,1,") == [8843, 8842, 1]
    assert parse_ids("orders", "5") == [5]
    assert parse_ids("orders", str(actions.MAX_BIGINT)) == [actions.MAX_BIGINT]


def test_100_ids_pass_and_101_are_refused() -> None:
    hundred = ",".join(str(i) for i in range(1, 101))
    assert parse_ids("orders", hundred) == list(range(1, 101))
    assert parse_ids("orders", hundred + ",") == list(range(1, 101))
    with pytest.raises(ApiError) as exc:
        parse_ids("orders", hundred + ",101")
    assert message(exc) == "orders: at most 100 ids"
    with pytest.raises(ApiError) as exc:
        parse_ids("refills", ",".join(["7"] * 101))
    assert message(exc) == "refills: at most 100 ids"


def test_huge_lists_are_refused_before_splitting() -> None:
    with pytest.raises(ApiError, match="at most 100 ids"):
        parse_ids("orders", "1," * 100_000)


@pytest.mark.parametrize(
    "text",
    [
        "",
        ",",
        " ",
        "1,,2",
        "a",
        "1;2",
        "1 2",
        "0",
        "-1",
        "+1",
        "1.0",
        "1e3",
        "0x10",
        "١٢",
        "9223372036854775808",
        "99999999999999999999",
        ",1",
    ],
)
def test_bad_ids_are_refused(text: str) -> None:
    with pytest.raises(ApiError) as exc:
        parse_ids("orders", text)
    assert message(exc) == "orders: must be comma-separated positive integers"


def _parse_ids_reference(text: str, limit: int = 100) -> list[int] | str:
    """The rule written out plainly, item by item: what parse_ids must agree with."""
    text = text.strip(" \t")
    if text.endswith(","):
        text = text[:-1]
    if text.count(",") >= limit:
        return "at most"
    seen: dict[int, None] = {}
    for item in text.split(","):
        item = item.strip(" \t")
        if not (item.isascii() and item.isdigit() and len(item) <= 19):
            return "bad"
        if not 1 <= int(item) <= actions.MAX_BIGINT:
            return "bad"
        seen[int(item)] = None
    return list(seen)


@given(
    st.lists(
        st.one_of(
            st.integers(0, 2**64).map(str),
            st.sampled_from(["", " ", "\t", "07", " 5 ", "x", "1_0", "\n3", "١"]),
        ),
        max_size=105,
    ).map(",".join)
    | st.text(alphabet=" \t,0123456789", max_size=40)
)
def test_parse_ids_agrees_with_the_plain_rule(text: str) -> None:
    expected = _parse_ids_reference(text)
    try:
        got: list[int] | str = parse_ids("orders", text)
    except ApiError as exc:
        got = "at most" if "at most" in message_of(exc) else "bad"
    assert got == expected



def test_single_and_multi_forms() -> None:
    assert order_ids(Status(key="k", order=5)) == 5
    assert order_ids(Cancel(key="k", orders="5,6")) == [5, 6]
    assert order_ids(Refill(key="k", orders="5")) == [5]
    assert refill_ids(RefillStatus(key="k", refill=9)) == 9
    assert refill_ids(RefillStatus(key="k", refills="9,317")) == [9, 317]
    with pytest.raises(ApiError) as exc:
        order_ids(Status(key="k"))
    assert message(exc) == "order: required"
    with pytest.raises(ApiError) as exc:
        order_ids(Status(key="k", order=1, orders="2"))
    assert message(exc) == "orders: send either order or orders, not both"
    with pytest.raises(ApiError) as exc:
        refill_ids(RefillStatus(key="k"))
    assert message(exc) == "refill: required"


def test_ids_from_the_wire() -> None:
    decoded = decode_request(b"key=k&action=status&orders=8842%2C8843", b"", b"")
    assert isinstance(decoded.action, Status)
    assert order_ids(decoded.action) == [8842, 8843]


# -- idempotency key -----------------------------------------------------------------------------


def test_idempotency_key_from_header_or_field() -> None:
    assert idempotency_key(None, None) is None
    assert idempotency_key("f", None) == "f"
    assert idempotency_key(None, "h") == "h"
    assert idempotency_key("same", "same") == "same"
    assert idempotency_key("f", "") == "f"
    assert idempotency_key(None, "h" * 128) == "h" * 128


@pytest.mark.parametrize("header", ["h" * 129, "a\x00b", "a\nb", "\x7f"])
def test_idempotency_header_obeys_the_field_rule(header: str) -> None:
    with pytest.raises(ApiError) as exc:
        idempotency_key(None, header)
    assert message(exc) == "Idempotency-Key: must be 1 to 128 printable characters"


def test_idempotency_header_and_field_must_agree() -> None:
    with pytest.raises(ApiError) as exc:
        idempotency_key("a", "b")
    assert message(exc) == "idempotency_key: differs from the Idempotency-Key header"


# -- fingerprint ---------------------------------------------------------------------------------

FORM = b"key=k1&action=add&service=7&link=ig.com%2Fx&quantity=100&idempotency_key=i1"


def test_fingerprint_is_the_same_across_encodings() -> None:
    as_json = (
        b'{"key": "k2", "action": "add", "service": "7", "link": "ig.com/x", '
        b'"quantity": 100, "sign": "s", "timestamp": 5, "idempotency_key": "i2"}'
    )
    a = decode_request(FORM, b"", b"").action
    b = decode_request(as_json, b"application/json", b"").action
    assert len(fingerprint(a)) == 32
    assert fingerprint(a) == fingerprint(b)


@pytest.mark.parametrize(
    "change",
    [
        {"quantity": 101},
        {"service": 8},
        {"link": "ig.com/y"},
        {"runs": 2},
        {"comments": "c"},
        {"quantity": None},
    ],
)
def test_fingerprint_changes_with_any_parameter(change: dict[str, object]) -> None:
    base = Add(key="k", service=7, link="ig.com/x", quantity=100)
    changed = Add(**{"key": "k", "service": 7, "link": "ig.com/x", "quantity": 100} | change)
    assert fingerprint(base) != fingerprint(changed)


def test_fingerprint_tells_actions_apart() -> None:
    assert fingerprint(Cancel(key="k", order=5)) != fingerprint(Refill(key="k", order=5))
    assert fingerprint(Cancel(key="k", order=5)) != fingerprint(Cancel(key="k", orders="5"))


# -- replies -------------------------------------------------------------------------------------


def test_reply_shapes_match_the_spec() -> None:
    assert encode_reply(actions.AddReply(8842)) == b'{"order":8842}'
    assert encode_reply(actions.BalanceReply("42.81", "USD")) == (
        b'{"balance":"42.81","currency":"USD"}'
    )
    status = actions.StatusReply("0.45", "14523", "In progress", "1000", "USD")
    assert json.loads(encode_reply(status)) == {
        "charge": "0.45",
        "start_count": "14523",
        "status": "In progress",
        "remains": "1000",
        "currency": "USD",
    }
    many: actions.StatusMany = {"8842": status, "9999": ErrorReply("Incorrect order ID")}
    assert json.loads(encode_reply(many))["9999"] == {"error": "Incorrect order ID"}
    assert encode_reply(actions.CancelReply(1)) == b'{"cancel":1}'
    assert encode_reply(
        [actions.CancelItem(8842, 1), actions.CancelItem(8843, ErrorReply("Incorrect order ID"))]
    ) == (b'[{"order":8842,"cancel":1},{"order":8843,"cancel":{"error":"Incorrect order ID"}}]')
    assert encode_reply(actions.RefillReply(317)) == b'{"refill":317}'
    assert encode_reply([actions.RefillItem(2, ErrorReply("Refill is not available"))]) == (
        b'[{"order":2,"refill":{"error":"Refill is not available"}}]'
    )
    assert encode_reply(actions.RefillStatusReply("Completed")) == b'{"status":"Completed"}'
    assert encode_reply(
        [
            actions.RefillStatusItem(317, "Completed"),
            actions.RefillStatusItem(9, ErrorReply("Refill not found")),
        ]
    ) == (
        b'[{"refill":317,"status":"Completed"},{"refill":9,"status":{"error":"Refill not found"}}]'
    )
    assert encode_reply(actions.WebhookAddReply(12, "whsec_x")) == (
        b'{"webhook":12,"secret":"whsec_x"}'
    )
    assert encode_reply([actions.WebhookItem(12, "https://h", ["order.status"], True)]) == (
        b'[{"webhook":12,"url":"https://h","events":["order.status"],"active":true}]'
    )
    assert encode_reply(actions.WebhookDeleteReply(1)) == b'{"deleted":1}'
    service = actions.ServiceReply(
        1234,
        "Instagram Followers — High Quality",
        "default",
        "Instagram",
        "0.45",
        100,
        100000,
        False,
        True,
        True,
        3600,
    )
    assert json.loads(encode_reply([service])) == [
        {
            "service": 1234,
            "name": "Instagram Followers — High Quality",
            "type": "default",
            "category": "Instagram",
            "rate": "0.45",
            "min": 100,
            "max": 100000,
            "dripfeed": False,
            "refill": True,
            "cancel": True,
            "avg_time": 3600,
        }
    ]
