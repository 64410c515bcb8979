"""Property tests of the decoder against the standard library (skipped without hypothesis)."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl, quote, urlencode

import pytest

from panelsrv.api.decode import decode_request
from panelsrv.errors import ApiError

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies
given = hypothesis.given
settings = hypothesis.settings(max_examples=300, deadline=None)

# Names and values drawn from the characters that matter to the form grammar and UTF-8.
text = st.text(alphabet=st.sampled_from("ab=&+%2Bé😀 \n;/?#"), max_size=12)
raw_form = st.lists(st.tuples(text, text), max_size=8)


@settings
@given(raw_form, st.booleans())
def test_form_fields_match_parse_qsl(pairs: list[tuple[str, str]], escape: bool) -> None:
    # Unescaped, as sloppy clients send it, the grammar alone decides where fields split.
    raw = urlencode(pairs) if escape else "&".join(f"{k}={v}" for k, v in pairs)
    body = raw.encode()
    body += b"&key=k&action=balance"
    try:
        expected = parse_qsl(body.decode(), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        with pytest.raises(ApiError, match="Malformed request body"):
            decode_request(body, b"", b"")
        return
    expected = expected[:-2]
    names = [name for name, _ in expected]
    fields = dict(expected) | {"key": "k", "action": "balance"}
    try:
        decoded = decode_request(body, b"", b"")
    except ApiError as exc:
        assert len(set(names) | {"key", "action"}) < len(names) + 2, exc.body()
        return
    assert len(set(names)) == len(names) and not {"key", "action"} & set(names)
    assert decoded.fields == fields


@settings
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "key", "é", 'q"', "\\"]),
            st.one_of(st.integers(), st.text(max_size=5), st.none(), st.booleans()),
        ),
        max_size=6,
    )
)
def test_json_duplicates_found_exactly(pairs: list[tuple[str, object]]) -> None:
    body = (
        "{"
        + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs)
        + (", " if pairs else "")
        + '"action": "balance", "key": "k0"}'
    ).encode()
    names = [k for k, _ in pairs]
    repeated = len(set(names)) != len(names) or "key" in names
    try:
        decoded = decode_request(body, b"application/json", b"")
    except ApiError as exc:
        assert repeated and json.loads(exc.body())["error"].endswith("sent more than once")
        return
    assert not repeated
    assert decoded.fields == {k: str(v) for k, v in pairs} | {"action": "balance", "key": "k0"}


@settings
@given(st.text(max_size=40))
def test_any_unicode_key_round_trips_through_every_encoding(key: str) -> None:
    bodies = [
        (urlencode({"key": key, "action": "balance"}).encode(), b""),
        (f"key={quote(key)}&action=balance".encode(), b"application/x-www-form-urlencoded"),
        (json.dumps({"key": key, "action": "balance"}).encode(), b"application/json"),
    ]
    if "\r\n--B" not in key:
        body = (
            f'--B\r\nContent-Disposition: form-data; name="key"\r\n\r\n{key}\r\n'
            f'--B\r\nContent-Disposition: form-data; name="action"\r\n\r\nbalance\r\n--B--'
        )
        bodies.append((body.encode(), b"multipart/form-data; boundary=B"))
    for body, ctype in bodies:
        assert decode_request(body, ctype, b"").action.key == key
