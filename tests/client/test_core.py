"""The client's sans-IO core, fed values: the requests it builds, the signature, and every retry
decision, by driving `Core.exchange` with canned replies and failures (no I/O, no clock)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

import orjson
import pytest

from panelsrv.client import NO_RETRY, Core, ProviderError, ProviderUnavailable, Retry
from panelsrv.client.core import RETRY, Call, Reply, Request, canonical_v2

URL = "https://panel.example/api/v2"


def fields_of(request: Request) -> dict[str, str]:
    return dict(parse_qsl(request.body.decode(), keep_blank_values=True))


def ok(obj: object, status: int = 200, retry_after: str | None = None) -> Reply:
    return Reply(status, "application/json", retry_after, orjson.dumps(obj))


def drive(core: Core, call: Call[Any], outcomes: list[Reply | ProviderUnavailable],
          retry: Retry = RETRY) -> tuple[Any, list[Request], list[float]]:  # fmt: skip
    """Run `call` against `outcomes` (one per request sent); -> (result, requests, waits). The
    clock only moves by the waits."""
    sent: list[Request] = []
    waits: list[float] = []
    steps = core.exchange(call, retry, lambda: sum(waits), lambda: 1_700_000_000.0, lambda: 0.0)
    step = next(steps)
    try:
        while True:
            if isinstance(step, Request):
                sent.append(step)
                outcome = outcomes.pop(0)
                step = (
                    steps.throw(outcome)
                    if isinstance(outcome, ProviderUnavailable)
                    else steps.send(outcome)
                )
            else:
                waits.append(step)
                step = steps.send(None)
    except StopIteration as done:
        return done.value, sent, waits


def lost() -> ProviderUnavailable:
    return ProviderUnavailable("transport: dropped", maybe_sent=True)


@pytest.fixture
def core() -> Iterator[Core]:
    yield Core(URL, "K")


def test_an_add_is_a_form_post_with_a_fresh_idempotency_key_per_call(core: Core):
    call = core.add(7, "https://x.test/p?a=1&b=2", 100, runs=None, comments=["a", "b"], fast=True)
    request = core.request(call, 0)
    assert fields_of(request) == {
        "key": "K", "action": "add", "service": "7", "link": "https://x.test/p?a=1&b=2",
        "quantity": "100", "comments": "a\nb", "fast": "1",
    }  # fmt: skip
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.headers["Accept-Encoding"] == "identity"
    key = request.headers["Idempotency-Key"]
    assert len(key) == 32 and key != core.request(core.add(7), 0).headers["Idempotency-Key"]
    assert core.request(core.add(7, idempotency_key="mine"), 0).headers["Idempotency-Key"] == "mine"
    assert "Idempotency-Key" not in core.request(core.add(7, idempotency_key=False), 0).headers


def test_caller_mistakes_are_value_errors_before_anything_is_sent(core: Core):
    with pytest.raises(ValueError, match="'key' is set by the client"):
        core.add(7, key="other")
    with pytest.raises(ValueError, match="between 1 and 100 ids"):
        core.status(range(1, 102))
    with pytest.raises(ValueError, match="without commas"):
        core.cancel(["1,2"])
    with pytest.raises(ValueError, match="without commas"):
        core.status("1,2")  # one id, not a list in disguise
    with pytest.raises(ValueError, match="not an http or https URL"):
        Core("ftp://panel.example/api/v2", "K")


def test_a_signed_request_is_the_documented_sign_version_2():
    # docs/API.md "Signatures": the example's canonical string, byte for byte.
    link = "https://instagram.com/p/x?a=1&quantity=5&é=~ *+"
    fields = {"key": "YOUR_API_KEY", "action": "add", "service": "1234", "quantity": "1000",
              "link": link, "sign_version": "2"}  # fmt: skip
    assert canonical_v2(fields) == (
        "action=add&key=YOUR_API_KEY&link=https%3A%2F%2Finstagram.com%2Fp%2Fx%3Fa%3D1"
        "%26quantity%3D5%26%C3%A9%3D~%20%2A%2B&quantity=1000&service=1234&sign_version=2"
    )
    signed = fields_of(Core(URL, "K", sign=True).request(Core(URL, "K").balance(), 1_700_000_000))
    assert (signed["sign_version"], signed["timestamp"]) == ("2", "1700000000")
    assert len(signed["sign"]) == 64


def test_single_and_list_forms_answer_in_their_shapes(core: Core):
    one, _, _ = drive(core, core.cancel(5), [ok({"cancel": 1})])
    assert one is True
    many, (request,), _ = drive(core, core.cancel([5, "6"]), [ok([{"order": 5, "cancel": 1}])])
    assert fields_of(request)["orders"] == "5,6" and many["5"] is True
    assert many["6"].message == "Missing from provider answer"
    assert drive(core, core.refill_status(3), [ok({"status": "Completed"})])[0] == "Completed"


def test_retry_after_is_the_wait_and_every_attempt_sends_the_same_bytes(core: Core):
    call = core.add(7, "https://x.test/p", 100)
    throttled = ok({"error": "Too many requests"}, 429, "1")
    result, sent, waits = drive(core, call, [throttled, ok({"order": 42})])
    assert (result, waits) == ("42", [1.0])
    assert sent[0] is sent[1]  # built and signed once: the same key, the same body


def test_a_lost_answer_is_retried_only_for_an_idempotent_call(core: Core):
    result, sent, waits = drive(core, core.add(7), [lost(), lost(), ok({"order": 1})])
    assert (result, len(sent), waits) == ("1", 3, [0.25, 0.5])  # backoff, least jitter
    with pytest.raises(ProviderUnavailable):
        drive(core, core.add(7, idempotency_key=False), [lost(), ok({"order": 2})])
    with pytest.raises(ProviderUnavailable):
        drive(core, core.webhook_add("https://hooks.example/x"), [lost(), ok({})])
    # Never sent at all (refused connection): safe to repeat, with or without a key.
    refused = ProviderUnavailable("cannot connect", maybe_sent=False)
    assert drive(core, core.add(7, idempotency_key=False), [refused, ok({"order": 3})])[0] == "3"


def test_refusals_wrong_urls_and_unreadable_answers_are_not_retried(core: Core):
    with pytest.raises(ProviderError, match="Not enough funds"):
        drive(core, core.add(7), [ok({"error": "Not enough funds on balance"}, 402)])
    for answer in (Reply(404, "text/plain", None, b"no"),
                   Reply(200, "text/html", None, b"<html>"),
                   ok({"what": 1})):  # fmt: skip
        with pytest.raises(ProviderUnavailable) as caught:
            drive(core, core.balance(), [answer, ok({"balance": "1", "currency": "USD"})])
        assert not caught.value.transient


def test_retries_are_bounded_in_attempts_and_in_total_time(core: Core):
    outcomes: list[Reply | ProviderUnavailable] = [ok({"error": "Busy"}, 503, "2")] * 9
    with pytest.raises(ProviderUnavailable) as caught:
        drive(core, core.balance(), outcomes, Retry(attempts=3))
    assert caught.value.retry_after == 2.0 and len(outcomes) == 6  # three tries
    outcomes = [ok({"error": "Busy"}, 503, "2")] * 9
    with pytest.raises(ProviderUnavailable):
        drive(core, core.balance(), outcomes, Retry(attempts=9, total=5))
    assert len(outcomes) == 6  # tries at 0, 2 and 4 s; a wait to 6 s ends past the total


def test_no_retry_makes_one_attempt(core: Core):
    with pytest.raises(ProviderUnavailable):
        drive(core, core.balance(), [lost(), ok({"balance": "1", "currency": "USD"})], NO_RETRY)
