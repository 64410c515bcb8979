"""api/sign: the seed's HMAC snippet verifies here, and nothing else does."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
from urllib.parse import quote, unquote, urlencode

import pytest
import requests

from panelsrv.api import sign
from panelsrv.api.actions import STRUCTS
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
        {"key": API_KEY, "action": "add", "service": 1, "quantity": 1000, "link": "é/\\"}
    )
    assert verified(json.dumps(payload).encode(), b"application/json")
    assert verified(json.dumps(payload, ensure_ascii=False).encode(), b"application/json")


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


# -- one signature, one meaning (issue 12, point 18) -------------------------------------------

COMMENTS = "\n".join(f"c{i}" for i in range(100))


def error_of(body: bytes, content_type: bytes = b"") -> str:
    with pytest.raises(ApiError) as info:
        decode_request(body, content_type, b"")
    assert info.value.status == 400
    return str(json.loads(info.value.body())["error"])


def raw_form(fields: dict[str, str]) -> bytes:
    """Fields joined as they are, with no escaping: the wire text is the canonical text."""
    return "&".join(f"{k}={v}" for k, v in fields.items()).encode()


def test_the_three_readings_of_one_seed_string() -> None:
    common = {"key": API_KEY, "action": "add", "service": "5", "comments": "c"}
    two_fields = {**common, "link": "https://a", "quantity": "100"}
    one_link = {**common, "link": "https://a&quantity=100"}
    unknown_name = {**common, "link=https://a&quantity": "100"}
    # The premise: the seeds' canonical string is the same for all three.
    assert sign.canonical(two_fields) == sign.canonical(one_link) == sign.canonical(unknown_name)
    signature = seed_snippet(dict(two_fields))["sign"]

    served = raw_form({**two_fields, "sign": signature})
    assert verified(served)
    assert error_of(urlencode({**one_link, "sign": signature}).encode()) == (
        "link: holds '&quantity=', which the sign_version 1 string cannot tell from a field of"
        " its own: sign with sign_version=2"
    )
    # No add takes that name, signed or not (api.extras: only `a-z 0-9 _` pass to a provider).
    refusal = (
        "link=https://a&quantity: not a field of add; a field passed to the provider is named"
        " with 1 to 64 characters a-z, 0-9 or _"
    )
    assert error_of(urlencode({**unknown_name, "sign": signature}).encode()) == refusal
    assert error_of(urlencode(unknown_name).encode()) == refusal
    # Unsigned, the link means what it says, as before.
    assert decode_request(urlencode(one_link).encode(), b"", b"").action.link == one_link["link"]


@pytest.mark.parametrize("value", ["null", "true", "false", "[]", '["x"]', "{}"])
def test_a_signed_json_value_must_be_a_string_or_a_number(value: str) -> None:
    fields = {"key": API_KEY, "action": "add", "service": 5, "quantity": 100, "link": None}
    payload = seed_snippet(fields)  # signs "link=None", as the string "None" would
    body = json.dumps(payload).replace("null", value).encode()
    message = error_of(body, b"application/json")
    if value == "null":
        assert message == "link: must be a string or a number in a signed request"
    else:  # a type the field refuses anyway
        assert message == "link: must be a string of at most 1000 characters"
    del payload["sign"]
    assert (
        decode_request(json.dumps(payload).encode(), b"application/json", b"").action.link is None
    )


def test_a_signed_request_carries_only_its_actions_fields() -> None:
    payload = seed_snippet({"key": API_KEY, "action": "balance", "lang": "en"})
    assert error_of(urlencode(payload).encode()) == (
        "lang: not a field of balance, refused in a signed request"
    )
    assert error_of(b'{"key": "k", "action": "balance", "a=b": "1", "sign": "0"}', JSON) == (
        "a=b: a field name with '=' or '&' cannot be signed"
    )
    # `service` is a field of `add`, not of `balance`; `action` and `sign_version` are everyone's.
    assert error_of(b"key=k&action=balance&service=1&sign=0") == (
        "service: not a field of balance, refused in a signed request"
    )
    decode_request(b"key=k&action=balance&sign_version=1&sign=0", b"", b"")
    # Unsigned, an unknown field is still ignored.
    assert decode_request(b"key=k&action=balance&lang=en", b"", b"").action.key == "k"


@pytest.mark.parametrize(
    "link",
    [
        "https://x.com/?a=1&b=2",  # `b` is no field: one reading only
        "https://x.com/?quantity=5",  # no `&` before it
        "https://x.com/?a=1&&x=quantity=",
        "https://x.com/?a=1&Quantity=5",  # names are case-sensitive
        "https://x.com/#&links=1",
    ],
)
def test_seed_form_links_with_an_ampersand_that_split_one_way_only(link: str) -> None:
    payload = seed_snippet({"key": API_KEY, "action": "add", "service": 5, "link": link})
    assert verified(*sent_by_requests(data=payload))


@pytest.mark.parametrize("name", sorted({"key", "action", "quantity", "sign", "runs", "orders"}))
def test_seed_form_values_that_spell_a_field_are_refused(name: str) -> None:
    link = f"https://x.com/?a=1&{name}=5"
    payload = seed_snippet({"key": API_KEY, "action": "add", "service": 5, "link": link})
    assert error_of(*sent_by_requests(data=payload)).startswith(f"link: holds '&{name}='")


# -- the unambiguous form, sign_version=2 ---------------------------------------------------------

JSON = b"application/json"
# One vector every sample in docs/samples/ reproduces (tests/e2e/test_signing.py runs them).
V2_FIELDS = {
    "key": API_KEY,
    "action": "add",
    "service": "1234",
    "link": "https://instagram.com/p/x?a=1&quantity=5&é=~ *+",
    "quantity": "1000",
    "sign_version": "2",
}
V2_CANONICAL = (
    "action=add&key=YOUR_API_KEY&link=https%3A%2F%2Finstagram.com%2Fp%2Fx%3Fa%3D1%26quantity%3D5"
    "%26%C3%A9%3D~%20%2A%2B&quantity=1000&service=1234&sign_version=2"
)


def test_the_v2_canonical_string() -> None:
    assert sign.canonical(V2_FIELDS, 2).decode() == V2_CANONICAL
    assert sign.compute(API_KEY, V2_FIELDS, 2) == (
        hmac.new(API_KEY.encode(), V2_CANONICAL.encode(), hashlib.sha256).hexdigest()
    )


def test_v2_sorts_by_encoded_name() -> None:
    # "a" < "a1" as names, though "a=" > "a1=" as text: the pairs are sorted by name.
    assert sign.canonical({"a1": "x", "a": "y"}, 2) == b"a=y&a1=x"
    assert sign.canonical({"é": "1", "z": "2", "Z": "3"}, 2) == b"%C3%A9=1&Z=3&z=2"


@pytest.mark.parametrize("encoding", ["data", "json", "files"])
def test_a_v2_signed_link_with_an_ampersand_is_served(encoding: str) -> None:
    payload = dict(V2_FIELDS) | {"sign": sign.compute(API_KEY, V2_FIELDS, 2)}
    body, ctype = sent_by_requests(**{encoding: payload})
    decoded = decode_request(body, ctype, b"")
    action = decoded.action
    assert action.sign_version == 2 and action.link == V2_FIELDS["link"]
    assert sign.verify_request(API_KEY, decoded.fields, action.sign, None, 0, version=2)
    # The same fields under the seeds' form are refused: that link splits two ways there.
    v1 = {k: v for k, v in V2_FIELDS.items() if k != "sign_version"}
    assert error_of(*sent_by_requests(data=seed_snippet(v1))).startswith("link: holds '&quantity='")


def test_a_signature_holds_in_its_own_form_only() -> None:
    status = {"key": API_KEY, "action": "status", "orders": "1, 2"}  # ", " encodes in form 2
    v2 = status | {"sign_version": "2"}
    assert not sign.verify(API_KEY, v2, sign.compute(API_KEY, v2, 1), 2)
    assert not sign.verify(API_KEY, v2, sign.compute(API_KEY, v2, 2), 1)
    # Dropping sign_version does not turn a v2 request into a v1 one: it was signed.
    assert not sign.verify(API_KEY, status, sign.compute(API_KEY, v2, 2), 1)
    v1 = status | {"sign_version": "1"}
    assert sign.verify_request(API_KEY, v1, sign.compute(API_KEY, v1), None, 0, version=1)
    # Where nothing needs encoding the two strings are the same text, with the same fields.
    plain = {"key": API_KEY, "action": "balance", "sign_version": "2"}
    assert sign.canonical(plain, 1) == sign.canonical(plain, 2)


@pytest.mark.parametrize("version", ["0", "3", "2.0", "v2", "-1"])
def test_sign_version_is_1_or_2(version: str) -> None:
    body = f"key=k&action=balance&sign_version={version}&sign=0".encode()
    assert error_of(body) == "sign_version: must be an integer between 1 and 2"


def test_v2_still_refuses_unknown_fields_and_null() -> None:
    assert error_of(b"key=k&action=balance&sign_version=2&lang=en&sign=0") == (
        "lang: not a field of balance, refused in a signed request"
    )
    body = (
        b'{"key": "k", "action": "add", "service": 1, "link": null, "sign_version": 2, "sign": "0"}'
    )
    assert error_of(body, JSON) == "link: must be a string or a number in a signed request"


# -- the argument, checked: no other accepted field set has the same canonical string ------------

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

# `x` and `mobile` are names an unsigned add passes to its provider (api.extras).
FRAGMENTS = ["a", "&", "=", "&quantity=", "quantity", "&link", "link=", "&x=", "&mobile=", " "]
FRAGMENTS += ["%26"]
NAMES = ["link", "quantity", "comments", "username", "runs", "x", "mobile", "link=a", "a&b"]
piece = st.lists(st.sampled_from(FRAGMENTS), max_size=4).map("".join)
field_sets = st.dictionaries(st.sampled_from(NAMES), piece, max_size=4).map(
    lambda extra: {"action": "add", "key": "k", "service": "1", **extra}
)


def refused(fields: dict[str, str]) -> bool:
    tag = fields.get("action")
    if tag not in STRUCTS:
        return True  # `Incorrect action`
    try:
        sign.check_signed(tag, fields, 1)
    except ApiError:
        return True
    return False


def readings(text: str) -> list[dict[str, str]]:
    """Every field set whose seed-form canonical string is `text`: every way of choosing which
    `&` separate fields, each field split at its first `=` (its name can hold none)."""
    cuts = [i for i, c in enumerate(text) if c == "&"]
    found = []
    for mask in range(1 << len(cuts)):
        bounds = [-1] + [cut for j, cut in enumerate(cuts) if mask >> j & 1] + [len(text)]
        segments = [text[a + 1 : b] for a, b in itertools.pairwise(bounds)]
        if not all("=" in segment for segment in segments):
            continue
        pairs = [segment.split("=", 1) for segment in segments]
        fields = dict(pairs)
        if len(fields) == len(pairs) and sign.canonical(fields).decode() == text:
            found.append(fields)
    return found


@hypothesis.settings(max_examples=400, deadline=None)
@hypothesis.given(field_sets)
def test_an_accepted_seed_form_signature_has_one_reading(fields: dict[str, str]) -> None:
    text = sign.canonical(fields).decode()
    hypothesis.assume(text.count("&") <= 12)
    others = [other for other in readings(text) if other != fields]
    if refused(fields):
        return
    assert all(refused(other) for other in others), others


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(st.dictionaries(st.text(max_size=6), st.text(max_size=8), max_size=5))
def test_the_v2_string_reads_back_as_its_fields(fields: dict[str, str]) -> None:
    fields.pop("sign", None)
    hypothesis.assume(all(c < "\ud800" or c > "\udfff" for k in fields for c in k + fields[k]))
    text = sign.canonical(fields, 2).decode()
    assert text.isascii()
    pairs = [item.split("=") for item in text.split("&")] if text else []
    assert all(len(pair) == 2 for pair in pairs)
    assert {unquote(k): unquote(v) for k, v in pairs} == fields
    assert [k for k, _ in pairs] == sorted(quote(k, safe="") for k in fields)
