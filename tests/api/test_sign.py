"""api/sign: the seed's HMAC snippet verifies here, and nothing else does."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
import requests

from panelsrv.api import sign
from panelsrv.api.decode import decode_request
from panelsrv.errors import ApiError

API_KEY = "YOUR_API_KEY"
# hex(hmac_sha256("YOUR_API_KEY", "action=balance&key=YOUR_API_KEY")), from the seed's snippet.
SEED_SIGN = "f544e72fb75571fd6e129d331d463c931701302fb324ceb8452c80bc5e0a7fe0"


def seed_snippet(payload: dict[str, object], api_key: str = API_KEY) -> dict[str, object]:
    """The seed's Python snippet, verbatim apart from taking the payload as a parameter."""
    canonical = "&".join(f"{k}={v}" for k, v in sorted(payload.items()))
    signature = hmac.new(api_key.encode(), canonical.encode(), hashlib.sha256).hexdigest()
    payload["sign"] = signature
    return payload


def sent_by_requests(**kwargs: object) -> tuple[bytes, bytes]:
    request = requests.Request("POST", "http://127.0.0.1/api/v2", **kwargs).prepare()  # type: ignore[arg-type]
    body = request.body if isinstance(request.body, bytes) else request.body.encode()
    return body, request.headers["Content-Type"].encode()


def verified(
    body: bytes, content_type: bytes = b"", query: bytes = b"", key: str = API_KEY
) -> bool:
    decoded = decode_request(body, content_type, query)
    assert decoded.action.sign is not None
    return sign.verify(key, decoded.fields, decoded.action.sign)


def test_seed_vector() -> None:
    payload = seed_snippet({"key": API_KEY, "action": "balance"})
    assert payload["sign"] == SEED_SIGN
    fields = {"key": API_KEY, "action": "balance", "sign": SEED_SIGN}
    assert sign.canonical(fields) == b"action=balance&key=YOUR_API_KEY"
    assert sign.compute(API_KEY, fields) == SEED_SIGN
    assert sign.verify(API_KEY, fields, SEED_SIGN)


ADD = {
    "key": API_KEY,
    "action": "add",
    "service": 1234,
    "link": "https://instagram.com/x?a=1&b=é",
    "quantity": 1000,
    "runs": 2,
    "interval": 30,
    "timestamp": 1763900000,
}


@pytest.mark.parametrize("encoding", ["data", "json", "files"])
def test_seed_snippet_verifies_whatever_requests_sends(encoding: str) -> None:
    payload = seed_snippet(dict(ADD))
    assert verified(*sent_by_requests(**{encoding: payload}))


def test_json_values_are_signed_as_python_str_renders_them() -> None:
    payload = seed_snippet(
        {
            "key": API_KEY,
            "action": "add",
            "service": 1,
            "ratio": 1.5,
            "flag": True,
            "none": None,
            "nested": {"a": [1, "b"]},
        }
    )
    assert verified(json.dumps(payload).encode(), b"application/json")


def test_form_values_are_signed_as_received_not_as_typed() -> None:
    # '0100' decodes to the integer 100, but the client signed the text it sent.
    payload = seed_snippet({"key": API_KEY, "action": "status", "order": "0100"})
    assert verified(*sent_by_requests(data=payload))
    decoded = decode_request(*sent_by_requests(data=payload), b"")
    assert sign.compute(API_KEY, decoded.fields | {"order": "100"}) != payload["sign"]


def test_query_fields_that_take_effect_are_signed() -> None:
    body_only = seed_snippet({"key": API_KEY, "action": "add", "service": 1, "quantity": 100})
    body, ctype = sent_by_requests(data=body_only)
    assert verified(body, ctype)
    # An unsigned query field would change the order (runs): refused.
    assert not verified(body, ctype, b"runs=10&interval=5")
    # A query field the body overrides does not take effect and does not count.
    assert verified(body, ctype, b"quantity=999")
    # A client that puts fields in the query string signs them.
    everything = seed_snippet(
        {"key": API_KEY, "action": "add", "service": 1, "quantity": 100, "runs": 10, "interval": 5}
    )
    fields = {k: v for k, v in everything.items() if k not in ("runs", "interval")}
    assert verified(*sent_by_requests(data=fields), b"runs=10&interval=5")


def test_any_single_byte_change_of_the_sign_fails() -> None:
    fields = {"key": API_KEY, "action": "balance"}
    for position in range(len(SEED_SIGN)):
        for replacement in "0123456789abcdefABCDEF":
            if replacement.lower() == SEED_SIGN[position]:
                continue
            mutated = SEED_SIGN[:position] + replacement + SEED_SIGN[position + 1 :]
            assert not sign.verify(API_KEY, fields, mutated)
    assert not sign.verify(API_KEY, fields, SEED_SIGN[:-1])
    assert not sign.verify(API_KEY, fields, SEED_SIGN + "0")
    assert not sign.verify(API_KEY, fields, "")
    assert not sign.verify(API_KEY, fields, "é" * 64)  # non-ASCII: False, not TypeError


def test_uppercase_hex_is_accepted() -> None:
    assert sign.verify(API_KEY, {"key": API_KEY, "action": "balance"}, SEED_SIGN.upper())


def test_any_single_byte_change_of_the_body_fails() -> None:
    payload = seed_snippet(dict(ADD))
    body, ctype = sent_by_requests(data=payload)
    sign_at = body.index(b"sign=")
    changed = 0
    for position in range(sign_at):  # every byte before the sign field
        for replacement in (b"0", b"x", b"%"):
            mutated = body[:position] + replacement + body[position + 1 :]
            if mutated == body:
                continue
            try:
                ok = verified(mutated, ctype)
            except ApiError:
                continue  # no longer decodes at all
            except AssertionError:
                continue  # the mutation renamed `sign`
            assert not ok, mutated
            changed += 1
    assert changed > sign_at


def test_wrong_key_fails() -> None:
    payload = seed_snippet({"key": API_KEY, "action": "balance"})
    assert not verified(*sent_by_requests(data=payload), key="YOUR_API_KEX")


def test_duplicate_fields_never_reach_verification() -> None:
    payload = seed_snippet({"key": API_KEY, "action": "balance"})
    body, ctype = sent_by_requests(data=payload)
    for extra in (b"&action=balance", b"&sign=" + SEED_SIGN.encode(), b"&key=other"):
        with pytest.raises(ApiError, match="sent more than once"):
            decode_request(body + extra, ctype, b"")
    with pytest.raises(ApiError, match="sent more than once"):
        decode_request(
            json.dumps(payload)[:-1].encode() + b', "key": "x"}', b"application/json", b""
        )


def test_verify_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(sign.hmac, "compare_digest", spy)
    fields = {"key": API_KEY, "action": "balance"}
    assert sign.verify(API_KEY, fields, SEED_SIGN)
    assert not sign.verify(API_KEY, fields, "0" * 64)
    assert calls == [(SEED_SIGN.encode(), SEED_SIGN.encode()), (SEED_SIGN.encode(), b"0" * 64)]


NOW = 1_763_900_000.0


@pytest.mark.parametrize("offset", [-300, -299, 0, 299, 300])
def test_timestamp_within_300_seconds_is_fresh(offset: int) -> None:
    assert sign.fresh(int(NOW) + offset, NOW)


@pytest.mark.parametrize("offset", [-301, 301, -86_400, 10**9])
def test_timestamp_outside_300_seconds_is_stale(offset: int) -> None:
    assert not sign.fresh(int(NOW) + offset, NOW)
    assert sign.fresh(int(NOW) + offset, NOW, max_skew=abs(offset))


def test_verify_request_checks_sign_then_freshness() -> None:
    fields = {"key": API_KEY, "action": "balance", "timestamp": str(int(NOW))}
    good = sign.compute(API_KEY, fields)
    assert sign.verify_request(API_KEY, fields, good, int(NOW), NOW + 300)
    assert not sign.verify_request(API_KEY, fields, good, int(NOW), NOW + 301)
    assert not sign.verify_request(API_KEY, fields, good, int(NOW), NOW - 301)
    assert not sign.verify_request(API_KEY, fields, "0" * 64, int(NOW), NOW)
    untimed = {"key": API_KEY, "action": "balance"}
    assert sign.verify_request(API_KEY, untimed, SEED_SIGN, None, NOW + 10**9)


def test_signed_timestamp_from_the_wire() -> None:
    payload = seed_snippet({"key": API_KEY, "action": "balance", "timestamp": int(NOW)})
    decoded = decode_request(*sent_by_requests(data=payload), b"")
    action = decoded.action
    assert action.sign is not None and action.timestamp == int(NOW)
    assert sign.verify_request(API_KEY, decoded.fields, action.sign, action.timestamp, NOW + 5)
    assert not sign.verify_request(
        API_KEY, decoded.fields, action.sign, action.timestamp, NOW + 301
    )
