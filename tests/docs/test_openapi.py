"""The OpenAPI document (panelsrv/docs/openapi.py) without a server: valid OpenAPI 3.1, the
actions it lists are exactly the server's, and it accepts every request the decoder accepts."""

from __future__ import annotations

import ast
import inspect
import json
import typing
from typing import Any
from urllib.parse import urlencode

import jsonschema
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate

from panelsrv.api import actions as a
from panelsrv.api import respond
from panelsrv.api.decode import decode_request
from panelsrv.docs import openapi
from panelsrv.errors import ApiError, Code

VARIANTS = [(False, False), (True, False), (False, True), (True, True)]


def union_tags() -> set[str]:
    """The tags of the action union the decoder converts to."""
    return {cls.__struct_config__.tag for cls in typing.get_args(a.AnyAction)}  # type: ignore[misc]


def dispatched_tags() -> set[str]:
    """The actions `respond.respond`'s `match` answers, read from its source."""
    tree = ast.parse(inspect.getsource(respond))
    (fn,) = (n for n in tree.body if isinstance(n, ast.AsyncFunctionDef) and n.name == "respond")
    (match,) = (n for n in ast.walk(fn) if isinstance(n, ast.Match))
    by_name = {cls.__name__: tag for tag, cls in a.STRUCTS.items()}
    classes = [case.pattern.cls for case in match.cases]  # type: ignore[attr-defined]
    return {by_name[c.attr] for c in classes}


def post(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["paths"]["/api/v2"]["post"]


@pytest.mark.parametrize(("legacy", "accept_get"), VARIANTS)
def test_document_is_valid_openapi_3_1(legacy: bool, accept_get: bool) -> None:
    doc = orjson.loads(openapi.document_bytes("shop.test", legacy, accept_get))
    validate(doc)
    assert doc["openapi"] == "3.1.0"
    assert doc["servers"] == [{"url": "https://shop.test"}]
    assert ("get" in doc["paths"]["/api/v2"]) is accept_get


def test_every_dispatched_action_is_in_the_document_and_nothing_else() -> None:
    tags = dispatched_tags()
    assert tags == union_tags() == set(a.STRUCTS)
    doc = openapi.document("shop.test", False, True)
    schemas = doc["components"]["schemas"]
    request = schemas["Request"]
    assert set(request["discriminator"]["mapping"]) == tags
    listed = {ref["$ref"].rsplit("/", 1)[1] for ref in request["oneOf"]}
    assert {schemas[name]["properties"]["action"]["enum"][0] for name in listed} == tags
    with_action = {s["properties"]["action"]["enum"][0] for s in schemas.values()
                   if "action" in s.get("properties", {})}  # fmt: skip
    assert with_action == tags  # no schema for an action the server does not have
    for method in ("post", "get"):
        assert set(doc["paths"]["/api/v2"][method]["x-panelsrv-actions"]) == tags


def test_request_bodies_are_form_json_and_multipart_of_the_one_union() -> None:
    body = post(openapi.document("shop.test", False, False))["requestBody"]
    assert body["required"] is True
    assert set(body["content"]) == {
        "application/x-www-form-urlencoded", "application/json", "multipart/form-data"
    }  # fmt: skip
    assert {m["schema"]["$ref"] for m in body["content"].values()} == {
        "#/components/schemas/Request"
    }


def test_responses_are_every_status_of_the_error_table_this_path_can_meet() -> None:
    responses = post(openapi.document("shop.test", False, False))["responses"]
    elsewhere = {Code.NOT_FOUND, Code.USE_POST, Code.USE_GET, Code.USE_GET_OR_POST,
                 Code.GET_WITH_BODY}  # fmt: skip
    assert set(responses) == {"200"} | {str(c.status) for c in Code if c not in elsewhere}
    assert responses["401"]["content"]["application/json"]["schema"]["properties"]["error"] == {
        "enum": ["Invalid API key", "Invalid signature"]
    }
    for status in ("429", "503"):
        assert "Retry-After" in responses[status]["headers"]


def test_legacy_errors_answers_the_handlers_4xx_but_429_as_200() -> None:
    doc = openapi.document("old.test", True, False)
    assert set(post(doc)["responses"]) == {"200", "413", "429", "431", "500", "501", "503"}
    ok = post(doc)["responses"]["200"]["content"]["application/json"]["schema"]["anyOf"]
    assert {"$ref": "#/components/schemas/ErrorReply"} in ok
    assert post(doc)["x-panelsrv-actions"]["add"]["statuses"] == [
        200, 413, 429, 431, 500, 501, 503
    ]  # fmt: skip


def test_402_only_for_add_and_409_only_where_an_idempotency_key_is_taken() -> None:
    actions = post(openapi.document("shop.test", False, False))["x-panelsrv-actions"]
    assert [t for t, v in actions.items() if 402 in v["statuses"]] == ["add"]
    assert sorted(t for t, v in actions.items() if 409 in v["statuses"]) == [
        "add", "cancel", "refill"
    ]  # fmt: skip


def test_the_document_is_kept_per_host_and_settings() -> None:
    first = openapi.document_bytes("one.test", False, False)
    assert openapi.document_bytes("one.test", False, False) is first
    assert openapi.document_bytes("two.test", False, False) != first
    assert openapi.document_bytes("one.test", True, False) != first


# -- the document accepts what the decoder accepts -----------------------------------------------


def _validator() -> jsonschema.Draft202012Validator:
    doc = openapi.document("shop.test", False, False)
    return jsonschema.Draft202012Validator({**doc, "$ref": "#/components/schemas/Request"})


VALIDATOR = _validator()
VALUES = st.one_of(
    st.sampled_from(["", "null", "undefined", "NULL", "007", "1,2", " 3 ,", "1e3", "-1",
                     "https://x.test/p?a=1", "de", "\x01", "é"]),
    st.integers(-3, 2**64),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False),
    st.lists(st.one_of(st.integers(0, 10), st.sampled_from(["4", "5,6", "x"])), max_size=3),
    st.text(max_size=5),
)  # fmt: skip
EXTRA_NAMES = st.sampled_from(["country", "Country", "orders", "url", "extras", "groups[]", "x"])


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    tag = draw(st.sampled_from(sorted(a.STRUCTS)))
    names = sorted(a.FIELD_NAMES[tag] - {"action", "sign", "sign_version", "timestamp"})
    fields: dict[str, Any] = {"action": tag, "key": "psk_k"}
    for name in draw(st.lists(st.sampled_from(names), unique=True)):
        fields[name] = draw(VALUES)
    for name in draw(st.lists(EXTRA_NAMES, unique=True, max_size=2)):
        fields[name] = draw(VALUES)
    return fields


def taken(body: bytes, content_type: bytes) -> bool:
    """Whether the server takes these fields: the decoder, then the id lists (read when the
    action runs)."""
    try:
        action = decode_request(body, content_type, b"").action
        if isinstance(action, a.Status | a.Cancel | a.Refill):
            a.order_ids(action)
        elif isinstance(action, a.RefillStatus):
            a.refill_ids(action)
    except ApiError:
        return False
    return True


@settings(max_examples=400, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(requests())
def test_every_json_body_the_server_takes_the_document_takes(fields: dict[str, Any]) -> None:
    if not taken(json.dumps(fields).encode(), b"application/json"):
        return
    errors = [e.message for e in VALIDATOR.iter_errors(fields)]
    assert not errors, (fields, errors)


@settings(max_examples=400, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(requests())
def test_every_form_body_the_server_takes_the_document_takes(fields: dict[str, Any]) -> None:
    texts = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
    if not taken(urlencode(texts).encode(), b""):
        return
    errors = [e.message for e in VALIDATOR.iter_errors(texts)]
    assert not errors, (texts, errors)
