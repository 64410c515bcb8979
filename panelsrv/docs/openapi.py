"""`GET /api/openapi.json`: the OpenAPI 3.1 document of `POST /api/v2`, built from the msgspec
types the API decodes and encodes with, so that it cannot say what the code does not.

Imports api.actions (the action union, the reply types and the decoder's field tables),
api.decode (the digits an integer field takes), api.extras (an `add`'s provider fields),
api.handler (the catalog holder, the 503 while the database is away), errors (the table of
statuses and messages) and http (the route, the content type). Nothing here restates a field,
a bound, a status or a message:
- The schemas are `msgspec.json.schema_components` over `AnyAction` (one schema per action, a
  discriminator on `action`) and `REPLIES`. A request schema is widened only where the wire
  takes more than the Struct, each time from the decoder's own table: integer fields take
  digit strings too (`MAX_DIGITS`), optional fields `""`, `undefined` and `null`
  (`ABSENT_TEXTS`), id fields lists (`ID_LISTS`, `ID_LIST`), an `add` its provider fields
  (`api.extras`); `NOT_WIRE` fields are left out; Python's `\\A`/`\\Z` anchors become `^`/`$`.
  So the document accepts every request the server accepts (what schemathesis's negative
  cases rely on); a request it accepts may still be refused (a service that does not exist).
- The responses are every status of `errors.Code` a request to this path can meet, each with
  its messages; `legacy_errors` moves the handler's 4xx but 429 to 200, as the handler does.
  `x-panelsrv-actions` says, per action, the schema of its 200 body and its statuses (one path,
  one operation: OpenAPI cannot tie a response to a field of the request).

Invariants: the parts every panel shares are built once per process, on first use; a panel's
document differs only in `servers` (the request's Host: the URL its resellers use), whether
`legacy_errors` is on and whether `accept_get` adds the GET operation. The encoded bytes are
kept per (Host, legacy_errors, accept_get), at most CACHE_SIZE of them (with `default_panel`
any Host is served). Its own exact-path route: the API's hot path does not see it.
"""

from __future__ import annotations

import copy
import functools
import re
import typing
from collections.abc import Iterable
from typing import Any, Final

import msgspec

from panelsrv.api import actions as a
from panelsrv.api.decode import JSON, MAX_DIGITS, MULTIPART
from panelsrv.api.extras import CONTROL_IN_TEXT, MAX_EXTRA_VALUE, MAX_EXTRAS, RESERVED_NAMES
from panelsrv.api.handler import UNAVAILABLE_ANSWER, Answer, CatalogHolder
from panelsrv.errors import ERROR_BODIES, Code
from panelsrv.http.request import Request, Route

PATH: Final = b"/api/openapi.json"
API_PATH: Final = "/api/v2"
CACHE_SIZE: Final = 256
REF: Final = "#/components/schemas/{name}"
FORM: Final = "application/x-www-form-urlencoded"

# Codes a request to /api/v2 never meets: other paths' and other methods' (the route's 405 to
# any method but POST, and GET where `accept_get` is off, is the transport's, not an operation's).
_OTHER_ROUTES: Final = frozenset(
    {Code.NOT_FOUND, Code.USE_POST, Code.USE_GET, Code.USE_GET_OR_POST}
)
_GET_ONLY: Final = frozenset({Code.GET_WITH_BODY})
# Answered by the transport before the handler, so `legacy_errors` leaves them alone.
_TRANSPORT: Final = frozenset({Code.BODY_TOO_LARGE, Code.HEADERS_TOO_LARGE, Code.NOT_IMPLEMENTED})
# The one action that debits the wallet (`ledger.place_order`): the only one answering 402.
_CHARGES: Final = frozenset({"add"})
# Codes whose message may be followed by `: <what>` (a 429 names the limit it hit:
# `errors.too_many_body`).
_PREFIXED: Final = frozenset({Code.TOO_MANY_REQUESTS})
_SPECIAL: Final = re.compile(r"[\\^$.|?*+()\[\]{}/]")
_RETRY_AFTER: Final = frozenset({429, 503})

_PLAIN: Final = {"type": "string"}  # takes the absent texts as it is
_DIGITS: Final = {"type": "string", "pattern": f"^[0-9]{{1,{MAX_DIGITS}}}$"}
_ABSENT: Final = {"enum": sorted(a.ABSENT_TEXTS)}
_ID: Final = {"type": "integer", "minimum": 1, "maximum": a.MAX_BIGINT}
_ID_LIST: Final = {"type": "string", "pattern": f"^{a.ID_LIST.pattern}$"}
_ID_ARRAY: Final = {"type": "array", "maxItems": a.MAX_IDS, "items": {"anyOf": [_ID, _ID_LIST]}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(name=name)}


def _ecma(schema: Any) -> Any:
    """Python's `\\A` and `\\Z` anchors (the Structs' patterns) as JSON Schema's `^` and `$`,
    everywhere in `schema`."""
    if isinstance(schema, dict):
        out = {k: _ecma(v) for k, v in schema.items()}
        pattern = out.get("pattern")
        if isinstance(pattern, str) and pattern.startswith("\\A") and pattern.endswith("\\Z"):
            out["pattern"] = f"^{pattern[2:-2]}$"
        return out
    if isinstance(schema, list):
        return [_ecma(v) for v in schema]
    return schema


def _options(prop: dict[str, Any]) -> list[dict[str, Any]]:
    return list(prop["anyOf"]) if "anyOf" in prop else [dict(prop)]


def _request_schema(tag: str, schema: dict[str, Any]) -> dict[str, Any]:
    """One action's Struct schema, as wide as the decoder (see the module's docstring)."""
    required = set(schema.get("required", ()))
    lists = a.ID_LISTS.get(tag, {})
    properties: dict[str, Any] = {}
    for name, prop in schema["properties"].items():
        if name in a.NOT_WIRE or name == "action":
            properties[name] = prop
            continue
        options = _options({k: v for k, v in prop.items() if k != "default"})
        if name in a.INT_FIELDS[tag]:
            options.append(_DIGITS)
        if name in lists:  # a list in the single field is read as the list field
            options += [_ID_LIST, _ID_ARRAY]
        if name in lists.values():
            options = [{"type": "null"}, _ID, _ID_LIST, _ID_ARRAY]
        if name in a.BLANK_IS_ABSENT and name not in required and _PLAIN not in options:
            options.append(_ABSENT)
        properties[name] = options[0] if len(options) == 1 else {"anyOf": options}
        if "default" in prop:
            properties[name]["default"] = prop["default"]
    for name in a.NOT_WIRE:
        properties.pop(name, None)
    widened = {**schema, "properties": properties}
    if tag == "add":  # the fields it passes to the provider (api.extras), and nothing else
        text = CONTROL_IN_TEXT.pattern[1:-1]
        widened["patternProperties"] = {
            "^[a-z0-9_]{1,64}$": {
                "anyOf": [
                    {"type": "string", "maxLength": MAX_EXTRA_VALUE, "pattern": f"^[^{text}]*$"},
                    {"type": "integer"},
                    {"type": "null"},
                ]
            }
        }
        widened["propertyNames"] = {"not": {"enum": sorted(RESERVED_NAMES - a.FIELD_NAMES[tag])}}
        widened["additionalProperties"] = False
        widened["description"] = (
            f"{schema.get('description', '')} Any other field of 1 to 64 characters a-z, 0-9"
            f" or _ that is no field of this API (at most {MAX_EXTRAS}) is passed to the"
            " provider unchanged (targeting: country, device, ...)."
        ).strip()
    return widened


def _reply_schema(kind: object, types: list[object]) -> dict[str, Any]:
    """A reply type's schema; `types` gathers what `schema_components` must define. A dict of
    untagged Struct unions (the multi `status`) is spelled out here: msgspec cannot."""
    if typing.get_origin(kind) is dict:
        members = typing.get_args(typing.get_args(kind)[1])
        types.extend(members)
        names = [m.__name__ for m in members]
        return {"type": "object", "additionalProperties": {"anyOf": [_ref(n) for n in names]}}
    types.append(kind)
    return {"$placeholder": len(types) - 1}


def _resolve(schema: Any, resolved: list[dict[str, Any]]) -> Any:
    if isinstance(schema, dict):
        if "$placeholder" in schema:
            return resolved[schema["$placeholder"]]
        return {k: _resolve(v, resolved) for k, v in schema.items()}
    return schema


class _Shared(msgspec.Struct, frozen=True):
    components: dict[str, Any]
    request: dict[str, Any]
    replies: dict[str, list[dict[str, Any]]]  # tag -> its 200 bodies' schemas


@functools.cache
def _shared() -> _Shared:
    """The schemas every panel's document shares, built once."""
    types: list[object] = [a.AnyAction, a.ErrorReply]
    pending = {tag: [_reply_schema(k, types) for k in kinds] for tag, kinds in a.REPLIES.items()}
    resolved, components = msgspec.json.schema_components(types, ref_template=REF)
    request, _ = resolved[0], resolved[1]
    replies = {tag: [_resolve(s, list(resolved)) for s in kinds] for tag, kinds in pending.items()}
    for tag, cls in a.STRUCTS.items():
        name = cls.__name__
        components[name] = _request_schema(tag, components[name])
    request = {"oneOf": request["anyOf"], "discriminator": request["discriminator"]}
    components["Request"] = request
    return _Shared(_ecma(components), _ref("Request"), replies)


def _codes(get: bool) -> list[Code]:
    skip = _OTHER_ROUTES if get else _OTHER_ROUTES | _GET_ONLY
    return [code for code in Code if code not in skip]


def _by_status(codes: Iterable[Code]) -> dict[int, list[Code]]:
    statuses: dict[int, list[Code]] = {}
    for code in codes:
        statuses.setdefault(code.status, []).append(code)
    return dict(sorted(statuses.items()))


def _legacy_moved(code: Code) -> bool:
    """What `legacy_errors` answers as 200 (api.handler `Api._final`)."""
    return 400 <= code.status < 500 and code.status != 429 and code not in _TRANSPORT


def action_statuses(tag: str, legacy: bool, get: bool = False) -> list[int]:
    """The statuses an action can answer with on a panel: every one of the operation's but 402
    (actions that charge) and 409 (actions that take an idempotency key)."""
    fields = a.STRUCTS[tag].__struct_fields__
    statuses = {200}
    for code in _codes(get):
        if code is Code.NOT_ENOUGH_FUNDS and tag not in _CHARGES:
            continue
        if code is Code.DUPLICATE_REQUEST and "idempotency_key" not in fields:
            continue
        statuses.add(200 if legacy and _legacy_moved(code) else code.status)
    return sorted(statuses)


def _error_schema(codes: list[Code]) -> dict[str, Any]:
    messages = [code.message for code in codes]
    if any(m is None for m in messages):
        return _ref("ErrorReply")
    texts = [m for m in messages if m is not None]
    rule: dict[str, Any]
    if len(codes) == 1 and codes[0] in _PREFIXED:
        escaped = _SPECIAL.sub(r"\\\g<0>", texts[0])  # ECMA-262: escaping a space is an error
        rule = {"type": "string", "pattern": f"^{escaped}(: .+)?$"}
    else:
        rule = {"enum": texts}
    return {"type": "object", "properties": {"error": rule}, "required": ["error"]}


def _describe(codes: list[Code]) -> str:
    texts = [
        "a field missing or breaking its rule: `<field>: <rule>`"
        if code.message is None
        else f"`{code.message}`" + (" (and what limit was hit)" if code in _PREFIXED else "")
        for code in codes
    ]
    return "; ".join(texts)


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _responses(shared: _Shared, legacy: bool, get: bool) -> dict[str, Any]:
    bodies = [s for kinds in shared.replies.values() for s in kinds]
    moved = [code for code in _codes(get) if legacy and _legacy_moved(code)]
    ok_text = "The action's answer: its body for each action is in `x-panelsrv-actions`."
    if moved:
        bodies.append(_ref("ErrorReply"))
        ok_text += (
            f" This panel answers these errors with 200 too (`legacy_errors`): {_describe(moved)}."
        )
    responses: dict[str, Any] = {
        "200": {"description": ok_text, "content": _json({"anyOf": bodies})}
    }
    for status, codes in _by_status(c for c in _codes(get) if c not in moved).items():
        response: dict[str, Any] = {
            "description": _describe(codes),
            "content": _json(_error_schema(codes)),
        }
        if status in _RETRY_AFTER:
            response["headers"] = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
        responses[str(status)] = response
    return responses


def _operation(shared: _Shared, legacy: bool, get: bool) -> dict[str, Any]:
    media = (FORM, JSON.decode(), MULTIPART.decode())
    operation: dict[str, Any] = {
        "operationId": "apiV2Get" if get else "apiV2",
        "summary": "Every action of API v2, chosen by the `action` field",
        "description": (
            "Authenticated by the `key` field (optionally `sign`: HMAC-SHA256); the body's"
            " encoding is chosen by Content-Type (none: form). Fields in the query string of a"
            " POST are merged under the body's."
        ),
        "parameters": [{"$ref": "#/components/parameters/IdempotencyKey"}],
        "responses": _responses(shared, legacy, get),
        "x-panelsrv-actions": {
            tag: {
                "request": _ref(a.STRUCTS[tag].__name__),
                "reply": kinds[0] if len(kinds) == 1 else {"anyOf": kinds},
                "statuses": action_statuses(tag, legacy, get),
            }
            for tag, kinds in shared.replies.items()
        },
    }
    if get:
        operation["description"] = "The POST whose form body is this query string (`accept_get`)."
        operation["parameters"].append(
            {"name": "fields", "in": "query", "required": True, "style": "form",
             "explode": True, "schema": shared.request}
        )  # fmt: skip
    else:
        operation["requestBody"] = {
            "required": True,
            "content": {m: {"schema": shared.request} for m in media},
        }
    return operation


def document(host: str, legacy: bool, accept_get: bool) -> dict[str, Any]:
    """The OpenAPI document of a panel reached at `host`."""
    shared = _shared()
    path: dict[str, Any] = {"post": _operation(shared, legacy, False)}
    if accept_get:
        path["get"] = _operation(shared, legacy, True)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"{host} API v2",
            "version": "2",
            "description": (
                "The SMM panel API v2: one path, the action in the `action` field. Errors are"
                ' `{"error": "..."}` with the status listed for them.'
            ),
        },
        "servers": [{"url": f"https://{host}"}],
        "paths": {API_PATH: path},
        "components": {
            "schemas": copy.deepcopy(shared.components),
            "headers": {
                "RetryAfter": {
                    "description": "Seconds to wait before retrying.",
                    "required": True,
                    "schema": {"type": "integer", "minimum": 0},
                }
            },
            "parameters": {
                "IdempotencyKey": {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": (
                        f"`add`, `cancel`, `refill`: at most {a.MAX_IDEMPOTENCY_KEY} printable"
                        " characters, as the `idempotency_key` field (both sent: they must"
                        " agree); a replay within 24 h gets the first answer. Other actions"
                        " ignore it."
                    ),
                    "schema": {"type": "string"},
                }
            },
        },
    }


@functools.lru_cache(maxsize=CACHE_SIZE)
def document_bytes(host: str, legacy: bool, accept_get: bool) -> bytes:
    return msgspec.json.encode(document(host, legacy, accept_get))


# Public and the same for everyone: cached briefly (a panel setting change shows within 5
# minutes), readable by tools on other origins (an API explorer), never sniffed.
HEADERS: Final = (
    b"Cache-Control: public, max-age=300\r\n"
    b"Access-Control-Allow-Origin: *\r\n"
    b"X-Content-Type-Options: nosniff\r\n"
)
NOT_FOUND: Final[Answer] = (404, ERROR_BODIES[Code.NOT_FOUND], b"")


class OpenApi:
    """The route of a process that can read its catalog."""

    def __init__(self, state: CatalogHolder, default_panel: str) -> None:
        self._state = state
        self._default_panel = default_panel

    def serve(self, req: Request) -> Answer:
        panel = self._state.catalog.panel_for_host(req.host, self._default_panel)
        if panel is None:
            return NOT_FOUND
        settings = panel.settings
        return 200, document_bytes(req.host, settings.legacy_errors, settings.accept_get), HEADERS

    def routes(self) -> dict[bytes, Route]:
        return {PATH: Route(b"GET", self.serve)}


def _unavailable(req: Request) -> Answer:
    return UNAVAILABLE_ANSWER


def unavailable_routes() -> dict[bytes, Route]:
    """While the process cannot reach the database: 503 with Retry-After, as the API answers.
    The document needs no query, but what it says depends on the panel (whether the Host is
    one, its `legacy_errors`), which only the catalog knows: no guess is served."""
    return {PATH: Route(b"GET", _unavailable)}
