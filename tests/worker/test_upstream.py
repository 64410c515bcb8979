"""The pure meaning of provider answers, and the two limiters, fed values (no I/O, no clock)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from email.utils import format_datetime

import orjson
import pytest

from panelsrv import money
from panelsrv.client.answers import (
    MAX_BATCH,
    MISSING,
    ErrorKind,
    ItemError,
    OrderStatus,
    ProviderError,
    ProviderUnavailable,
    UnreadableAnswer,
    as_int,
    cancel_accepted,
    classify,
    interpret,
    join_ids,
    parse_balance,
    parse_multi_status,
    parse_order_id,
    parse_per_id,
    parse_services,
    parse_status,
    parse_status_entry,
    refill_state,
    retry_after_seconds,
)
from panelsrv.worker.importer import marked_up
from panelsrv.worker.pacing import BreakerState, CircuitBreaker, TokenBucket
from panelsrv.worker.providers import MAX_MARKUP_PERCENT, MAX_RATE

JSON = "application/json"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(14523, 14523), ("14523", 14523), (" 14523 ", 14523), ("14523.0", 14523), (Decimal("7.00"), 7),
     ("0", 0), (2**63 - 1, 2**63 - 1), (str(2**63 - 1), 2**63 - 1), (None, None), ("", None)],
)  # fmt: skip
def test_as_int_accepts_numbers_and_numeric_strings(value, expected):
    assert as_int(value) == expected


@pytest.mark.parametrize(
    "value",
    ["abc", "1.5", True, [], "1e999999", "-5", -1, "-1e0", 2**63, str(2**63), "1e19",
     10**19, "9999999999999999999"],
)  # fmt: skip
def test_as_int_refuses_non_integers_negatives_and_numbers_past_bigint(value):
    with pytest.raises((ValueError, ArithmeticError, TypeError)):
        as_int(value)
    assert as_int(2**31 - 1, 2**31 - 1) == 2**31 - 1
    with pytest.raises(ValueError):
        as_int(2**31, 2**31 - 1)


@pytest.mark.parametrize(
    ("numbers", "read"),
    [({"start_count": "-1"}, {"start_count": None}), ({"remains": -5}, {"remains": 0}),
     ({"remains": "-50"}, {"remains": 0}), ({"charge": "-0.01"}, {"charge": None}),
     ({"start_count": "1e19"}, {"start_count": None}),
     ({"start_count": 10**19}, {"start_count": None}),
     ({"remains": str(2**63)}, {"remains": 2**63 - 1}),
     ({"remains": "1e999999"}, {"remains": 2**63 - 1}), ({"charge": "1e99"}, {"charge": None})],
)  # fmt: skip
def test_a_number_out_of_range_never_holds_back_its_status(numbers, read):
    # A Canceled order with start_count -1 must still be refunded (issue 12, points 3 and 25):
    # only the refund's input, remains, is clamped; the cosmetic numbers become unknown.
    for status in ("Completed", "Canceled"):
        entry = {"status": status, "start_count": "10", "remains": "0", "charge": "1.5"}
        expected = {"start_count": 10, "remains": 0, "charge": Decimal("1.5"), **read}
        assert parse_status_entry({**entry, **numbers}) == OrderStatus(status=status, **expected)


@pytest.mark.parametrize("remains", ["absent", None, ""])
def test_a_partial_without_remains_is_not_final(remains):
    entry = {"status": "Partial", "start_count": "5", "charge": "1.00"}
    if remains != "absent":
        entry["remains"] = remains
    assert parse_status_entry(entry) == ItemError("Partial without a usable remains")
    assert parse_status_entry({**entry, "remains": "0"}) == OrderStatus(
        status="Partial", start_count=5, remains=0, charge=Decimal("1.00")
    )


@pytest.mark.parametrize(
    ("said", "status"),
    [("Pending", "Pending"), ("In progress", "In progress"), ("In Progress", "In progress"),
     ("in_progress", "In progress"), ("Processing", "In progress"), ("inprogress", "In progress"),
     ("Completed", "Completed"), ("complete", "Completed"), ("Partial", "Partial"),
     ("Canceled", "Canceled"), ("Cancelled", "Canceled"), ("Refunded", "Refunded"),
     ("Error", "Error"), ("failed", "Error"), ("  PENDING ", "Pending")],
)  # fmt: skip
def test_status_variants_map_to_the_api_statuses(said, status):
    assert parse_status({"status": said, "remains": "0"}).status == status


def test_status_numbers_may_be_strings_numbers_or_empty():
    got = parse_status(
        {"charge": 0.45, "start_count": "14523", "status": "In progress", "remains": 1000,
         "currency": "USD"}
    )  # fmt: skip
    assert got == OrderStatus(
        status="In progress", start_count=14523, remains=1000, charge=Decimal("0.45"),
        currency="USD",
    )  # fmt: skip
    got = parse_status({"status": "Pending", "start_count": "", "remains": None, "charge": ""})
    assert got == OrderStatus(status="Pending")


@pytest.mark.parametrize(
    "answer",
    [{"status": "Weird"}, {"status": 3}, [], "OK", {"status": "Partial", "remains": "x"},
     {"status": "Partial", "remains": "12.5"}, {"status": "Partial", "remains": [1]}],
)  # fmt: skip
def test_a_status_that_cannot_be_understood_is_unavailable_not_guessed(answer):
    with pytest.raises(ProviderUnavailable) as caught:
        parse_status(answer)
    assert caught.value.maybe_sent


def test_multi_status_gives_every_id_an_entry():
    answer = {
        "1": {"status": "Completed", "remains": "0"},
        "2": {"error": "Incorrect order ID"},
        "3": {"status": "Unheard of"},
        "99": {"status": "Completed"},  # not asked for: ignored
    }
    got = parse_multi_status(answer, ["1", "2", "3", "4"])
    assert got == {
        "1": OrderStatus(status="Completed", remains=0),
        "2": ItemError("Incorrect order ID"),
        "3": ItemError("unknown status 'Unheard of'", unreadable=True),
        "4": ItemError(MISSING),
    }
    with pytest.raises(ProviderUnavailable):
        parse_multi_status([], ["1"])


def test_per_id_lists_for_cancel_refill_and_refill_status():
    answer = [{"order": 1, "cancel": 1}, {"order": "2", "cancel": {"error": "Too late"}},
              {"order": 3, "cancel": "maybe"}]  # fmt: skip
    got = parse_per_id(answer, ["1", "2", "3", "4"], "order", "cancel", cancel_accepted)
    assert got == {
        "1": True,
        "2": ItemError("Too late"),
        "3": ItemError("bad cancel: 'maybe'", unreadable=True),
        "4": ItemError(MISSING),
    }
    answer = [{"refill": 7, "status": "Completed"}, {"refill": 8, "status": "Cancelled"}]
    assert parse_per_id(answer, ["7", "8"], "refill", "status", refill_state) == {
        "7": "Completed",
        "8": "Rejected",
    }
    # Keyed by id, entry or bare value; an answer naming none of the ids asked is unreadable.
    keyed = {"1": {"cancel": "ok"}, "2": {"error": "Too late"}, "3": True, "9": 1}
    assert parse_per_id(keyed, ["1", "2", "3"], "order", "cancel", cancel_accepted) == {
        "1": True,
        "2": ItemError("Too late"),
        "3": True,
    }
    for unreadable in ("OK", {"canceled": [1]}, [{"order": 9, "cancel": 1}]):
        with pytest.raises(UnreadableAnswer):
            parse_per_id(unreadable, ["1"], "order", "cancel", cancel_accepted)
    assert parse_per_id([], ["1"], "order", "cancel", cancel_accepted) == {"1": ItemError(MISSING)}


@pytest.mark.parametrize(
    ("entry", "read"),
    [({"status": "Error"}, "Error"),  # nothing beside it: an order's status, as API v2 says
     ({"status": "error", "remains": "100", "charge": "1"}, "Error"),  # an order's counts
     ({"status": "Completed", "data": {"x": 1}}, "Completed"),  # not an envelope word
     ({"status": "success", "data": {"status": "Pending"}}, "Pending"),
     ({"status": True, "result": {"status": "Canceled", "remains": 5}}, "Canceled"),
     ({"status": "error", "error": "Incorrect order ID"}, ItemError("Incorrect order ID")),
     ({"status": False, "data": {"msg": "Order not found"}}, ItemError("Order not found")),
     ({"status": "fail", "reason": "?"},
      ItemError("a refusal without a message (fields: reason)", unreadable=True)),
     ({"status": "success"}, ItemError("unknown status 'success'", unreadable=True)),
     ({"status": "success", "remains": "0"},
      ItemError("unknown status 'success'", unreadable=True)),
     ({"status": "Partial", "remains": "Unknown"}, ItemError("Partial without a usable remains")),
     ({"status": "Partial", "remains": "lots"},
      ItemError("Partial without a usable remains", unreadable=True))],
)  # fmt: skip
def test_an_envelope_is_never_an_order_status_nor_a_status_an_envelope(entry, read):
    # A wrapper must not complete an order; a refusal must not be an order's Error (refunded).
    got = parse_status_entry(entry)
    assert (got.status if isinstance(got, OrderStatus) else got) == read


def test_order_ids_and_balance():
    assert parse_order_id({"order": 8842}, "order") == "8842"
    assert parse_order_id({"order": "A-17"}, "order") == "A-17"
    bad_ids = ({"order": 0}, {"order": True}, {"order": ""}, {}, [8842], {"order": "x" * 65},
               {"order": "12,13"}, {"order": "12, 13"}, {"order": "a\nb"})  # fmt: skip
    for bad in bad_ids:
        with pytest.raises(ProviderUnavailable):
            parse_order_id(bad, "order")
    assert parse_balance({"balance": "42.81", "currency": "USD"}).balance == Decimal("42.81")
    assert parse_balance({"balance": Decimal("1.5")}).currency == ""
    assert parse_balance({"balance": "-3.5"}).balance == Decimal("-3.5")  # on credit
    for bad in ({}, {"balance": "lots"}, {"balance": "NaN"}, []):
        with pytest.raises(ProviderUnavailable):
            parse_balance(bad)


def test_services_are_typed_and_malformed_entries_skipped():
    answer = [
        {"service": 1, "name": "A", "type": "default", "category": "IG", "rate": Decimal("0.45"),
         "min": "100", "max": 1000, "dripfeed": False, "refill": "1", "cancel": True,
         "avg_time": "1 hour"},
        {"service": "B2", "name": "B", "rate": "1.10", "min": 1, "max": 1},
        {"service": 3, "name": "no rate", "min": 1, "max": 1},
        "not even an object",
        {"service": 5, "name": "min 0", "rate": "1", "min": 0, "max": 10},
        {"service": 6, "name": "huge", "rate": "1e999999", "min": 1, "max": 10},
        {"service": 7, "name": "max < min", "rate": "1", "min": 10, "max": 5},
        {"service": 8, "name": "negative", "rate": "-1", "min": 1, "max": 5},
        {"service": 9, "name": "past bigint", "rate": "1", "min": 1, "max": 2**63},
        {"service": "1,2", "name": "comma id", "rate": "1", "min": 1, "max": 5},
        {"service": 10, "name": "markup past MAX_UNITS", "rate": "9999999999", "min": 1, "max": 5},
        {"service": 11, "name": "most", "rate": str(MAX_RATE), "min": 1, "max": 2**63 - 1,
         "avg_time": 2**31},
    ]  # fmt: skip
    services, skipped = parse_services(answer, MAX_RATE)
    assert skipped == 9
    assert [s.service for s in services] == ["1", "B2", "11"]
    assert services[0].rate == Decimal("0.45") and services[0].min == 100
    assert services[0].refill is True and services[0].avg_time is None
    assert services[1].type == "default" and services[1].rate == Decimal("1.10")
    assert services[2].avg_time is None  # past the integer column: unknown
    # The largest rate accepted stays within the largest money value at the largest markup.
    assert marked_up(services[2].rate, MAX_MARKUP_PERCENT * 100) <= money.MAX_UNITS
    assert marked_up(Decimal("9999999999"), MAX_MARKUP_PERCENT * 100) > money.MAX_UNITS


@pytest.mark.parametrize(
    ("message", "status", "kind"),
    [("Not enough funds on balance", 200, ErrorKind.NO_FUNDS),
     ("Insufficient balance", 400, ErrorKind.NO_FUNDS),
     ("anything", 402, ErrorKind.NO_FUNDS),
     ("You have active order with this link. Please wait until order being completed.", 200,
      ErrorKind.ACTIVE_LINK),
     ("Invalid API key", 401, ErrorKind.AUTH),
     ("Incorrect service ID", 400, ErrorKind.REJECTED),
     ("quantity: must be between 100 and 1000", 400, ErrorKind.REJECTED)],
)  # fmt: skip
def test_error_messages_are_classified(message, status, kind):
    assert classify(message, status) is kind
    assert ProviderError(message, status).hold is (kind is not ErrorKind.REJECTED)


def test_interpret_turns_every_bad_answer_into_a_failure():
    def unavailable(status, ctype, body, retry_after=None):
        with pytest.raises(ProviderUnavailable) as caught:
            interpret(status, ctype, body, retry_after, NOW)
        return caught.value

    assert unavailable(500, JSON, b'{"error": "Internal server error"}').maybe_sent
    assert unavailable(502, "text/html", b"<html>502</html>").maybe_sent
    limited = unavailable(429, JSON, b'{"error": "Too many requests"}', "3")
    assert not limited.maybe_sent and limited.retry_after == 3.0
    assert not unavailable(404, JSON, b'{"error": "Not found"}').maybe_sent
    assert unavailable(301, "text/html", b"").maybe_sent
    assert unavailable(200, "text/html", b'{"order": 1}').reason.startswith("HTML")
    assert unavailable(200, JSON, b"  <br />Warning: mysql").reason.startswith("HTML")
    assert unavailable(200, JSON, b'{"order": 1').reason.startswith("not JSON")
    assert unavailable(200, JSON, b"").reason.startswith("not JSON")
    assert unavailable(409, JSON, b'{"error": "Duplicate request"}').maybe_sent
    assert unavailable(400, JSON, b'{"detail": "?"}').maybe_sent
    assert unavailable(503, JSON, b"{}", "soon").retry_after is None
    assert unavailable(429, JSON, b"{}", "inf").retry_after is None
    assert unavailable(503, JSON, b"{}", "1e10").retry_after == 3600.0

    with pytest.raises(ProviderError) as caught:
        interpret(200, JSON, b'{"error": "Not enough funds on balance"}', None, NOW)
    assert caught.value.kind is ErrorKind.NO_FUNDS and caught.value.hold
    with pytest.raises(ProviderError) as caught:
        interpret(400, JSON, b'{"error": "Incorrect service ID"}', None, NOW)
    assert caught.value.http_status == 400 and not caught.value.hold
    assert interpret(200, "text/plain", b'{"order": 1.5}', None, NOW) == {"order": Decimal("1.5")}

    # Dialects: an envelope is opened, a refusal in one is an error, 402 is "no funds" whatever
    # its body, and an answer of no known shape is unreadable (counted by the client).
    wrapped = b'{"status": "success", "data": {"order": 7}}'
    assert interpret(200, JSON, wrapped, None, NOW) == {"order": 7}
    assert interpret(200, JSON, b'{"status": "ok", "order": 8}', None, NOW) == {"order": 8}
    with pytest.raises(ProviderError) as caught:
        interpret(400, JSON, b'{"status": "error", "message": "Incorrect service ID"}', None, NOW)
    assert caught.value.message == "Incorrect service ID" and not caught.value.hold
    for body in (b"Payment Required", b'{"status": "error"}', b"<html>402</html>"):
        with pytest.raises(ProviderError) as caught:
            interpret(402, "text/plain", body, None, NOW)
        assert caught.value.kind is ErrorKind.NO_FUNDS and caught.value.message == "HTTP 402"
    for status, body in ((200, b'{"status": "fail", "reason": "?"}'), (400, b'{"detail": "?"}'),
                         (200, b"OK")):  # fmt: skip
        assert isinstance(unavailable(status, JSON, body), UnreadableAnswer)
    assert not isinstance(unavailable(200, "text/html", b"<html>"), UnreadableAnswer)


NOW = 1_800_000_000.0


def _http_date(offset: float) -> str:
    return format_datetime(datetime.fromtimestamp(NOW + offset, UTC), usegmt=True)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("3", 3.0), ("0", 0.0), ("2.5", 2.5), ("-5", 0.0), ("3600", 3600.0), ("3601", 3600.0),
     ("1e10", 3600.0), ("1e300", 3600.0), ("inf", None), ("-inf", None), ("Infinity", None),
     ("nan", None), ("1e999", None), ("soon", None), ("", None), (None, None),
     (_http_date(120), 120.0), (_http_date(-60), 0.0), (_http_date(86400 * 365), 3600.0),
     ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0), ("Mon, 99 Foo 2015 07:28:00 GMT", None)],
)  # fmt: skip
def test_retry_after_is_finite_and_at_most_an_hour(header, seconds):
    assert retry_after_seconds(header, NOW) == seconds


def test_join_ids_bounds_a_batch():
    assert join_ids([1, "2", " 3 "]) == ["1", "2", "3"]
    assert len(join_ids(range(1, MAX_BATCH + 1))) == MAX_BATCH
    for bad in ([], range(MAX_BATCH + 1), ["1,2"], [""], ["x" * 65], ["a\tb"]):
        with pytest.raises(ValueError):
            join_ids(bad)


def test_token_bucket_spaces_reservations_after_the_burst():
    bucket = TokenBucket(rate=10, burst=3)
    assert [bucket.reserve(0.0) for _ in range(5)] == pytest.approx([0, 0, 0, 0.1, 0.2])
    # After a quiet second the burst is available again, not more.
    assert [bucket.reserve(2.0) for _ in range(4)] == pytest.approx([0, 0, 0, 0.1])
    with pytest.raises(ValueError):
        TokenBucket(rate=0)


def test_circuit_breaker_opens_half_opens_and_closes():
    breaker = CircuitBreaker(threshold=3, cooldown=10.0)
    for _ in range(2):
        assert breaker.admit(0.0) is None
        assert not breaker.failed(0.0)
    breaker.succeeded()  # an answer resets the run of failures
    for i in range(3):
        assert breaker.admit(1.0) is None
        assert breaker.failed(1.0) is (i == 2)
    assert breaker.state is BreakerState.OPEN
    assert breaker.admit(5.0) == pytest.approx(6.0)
    assert breaker.admit(11.0) is None  # the probe
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.admit(11.0) is not None  # one probe at a time
    assert breaker.failed(11.5)  # the probe failed: open again for a full cooldown
    assert breaker.admit(20.0) == pytest.approx(1.5)
    assert breaker.admit(21.5) is None
    breaker.abandoned()  # a cancelled probe frees the slot
    assert breaker.admit(21.5) is None
    breaker.succeeded()
    assert breaker.state is BreakerState.CLOSED and breaker.admit(22.0) is None
    assert breaker.opens == 2


TWO_ANSWERS = [
    {"error": "x", "status": "Canceled"},  # read as the order's status, it was refunded
    {"order": 5, "error": "x"},  # read as a refusal of an add, it was refunded
    {"error": "x", "status": "Partial", "remains": "100"},
    {"status": "error", "order": 5, "message": "x"},
    {"status": "success", "data": {"order": 5, "error": "x"}},
    {"status": "success", "data": {"status": "Refunded", "error": "x"}},
]


@pytest.mark.parametrize("answer", TWO_ANSWERS)
def test_an_error_beside_an_orders_fields_is_unreadable(answer: dict[str, object]):
    body = orjson.dumps(answer)
    with pytest.raises(UnreadableAnswer, match="an error beside an order's answer"):
        interpret(200, JSON, body, None, 0.0)
    entry = parse_multi_status({"5": answer}, ["5"])["5"]
    assert isinstance(entry, ItemError) and entry.unreadable, entry


def test_an_error_alone_or_in_an_envelope_is_still_a_refusal():
    refusals = [{"error": "x"}, {"status": "error", "message": "x"}]
    refusals.append({"status": "Error", "error": "x"})  # "Error" here is an envelope's verdict
    for answer in refusals:
        with pytest.raises(ProviderError) as caught:
            interpret(200, JSON, orjson.dumps(answer), None, 0.0)
        assert caught.value.message == "x"


HUGE = "1e" + "9" * 30  # past Decimal's exponent range: Decimal() raised out of the decoder


def test_a_number_past_decimals_range_is_a_value_not_understood():
    status = f'{{"status": "Partial", "remains": {HUGE}, "charge": {HUGE}}}'.encode()
    with pytest.raises(UnreadableAnswer, match="Partial without a usable remains"):
        parse_status(interpret(200, JSON, status, None, 0.0))
    completed = f'{{"status": "Completed", "charge": {HUGE}, "start_count": {HUGE}}}'.encode()
    shown = parse_status(interpret(200, JSON, completed, None, 0.0))  # charge, start: unknown
    assert shown == OrderStatus(status="Completed")
    with pytest.raises(UnreadableAnswer):
        parse_balance(interpret(200, JSON, f'{{"balance": {HUGE}}}'.encode(), None, 0.0))
    batch = f'{{"5": {{"status": "Partial", "remains": {HUGE}}}, "6": {{"status": "Completed"}}}}'
    got = parse_multi_status(interpret(200, JSON, batch.encode(), None, 0.0), ["5", "6"])
    assert got["5"] == ItemError("Partial without a usable remains", unreadable=True)
    assert got["6"] == OrderStatus(status="Completed")
    catalogue = f'[{{"service": 1, "name": "x", "rate": {HUGE}, "min": 1, "max": 2}}]'.encode()
    assert parse_services(interpret(200, JSON, catalogue, None, 0.0)) == ([], 1)
