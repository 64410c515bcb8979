"""Request bytes -> the action Struct: form, JSON or multipart body, plus query-string fields.

Pure; imports `api.actions`, `api.extras`, `api.sign` and `errors` only. This is the one
boundary where msgspec's errors become `ApiError`s. Precedence of errors, so that every client
sees the most useful one: undecodable body (`Malformed request body`, or a charset other than
UTF-8) > unknown or missing action (`Incorrect action`) > a field sent twice > a missing `key` >
a field of an `add` beyond its own that breaks the rule of `api.extras` > any other missing
field or one that breaks its type rule > what a signed request may not carry.

Invariants:
- Field names are unique: a name repeated within the body or within the query string is a 400
  (JSON duplicate keys too), so nothing downstream, in particular the HMAC, can be fed an
  ambiguous request. Query fields are merged under the body's; the body wins a clash.
- Text is UTF-8, decoded strictly after percent-decoding; anything else is malformed.
- An integer field takes a string of 1-19 ASCII digits or a JSON integer, nothing else (no
  exponent, fraction, sign, blank, JSON float or boolean), so its value is exactly the text
  that was signed; then msgspec checks the field's bounds (strict mode). The form parsers read
  plain digits as ints as they go (the hot path); the rest, JSON strings and leading zeros,
  are read by `_integers` only when strict conversion has failed.
- An optional or integer field sent as `""`, `undefined` or `null` is absent (`_for_struct`);
  so is JSON null for any optional field. Id lists are read where clients put them: `order=1,2`
  as `orders`, a JSON array or number in `orders`.
- The fields an `add` carries beyond its own become `Add.extras` (`api.extras.add_extras`), for
  the provider; other actions ignore fields they do not know.
- `Decoded.fields` is every field that took effect, values as received (for JSON, as Python's
  `str()` renders them): the input of `api.sign`. A request carrying `sign` is also held to
  `api.sign.check_signed` (nothing its signature could be read to mean otherwise).
- Work is bounded before it is done: at most `MAX_FIELDS` fields per source, short part headers.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final
from urllib.parse import unquote_to_bytes

import msgspec

from panelsrv.api import sign
from panelsrv.api.actions import (
    ABSENT_TEXTS,
    BLANK_IS_ABSENT,
    FIELD_RULES,
    ID_LISTS,
    INT_FIELDS,
    INT_NAMES,
    MAX_NAME_ECHO,
    STRUCTS,
    Action,
    Add,
)
from panelsrv.api.extras import add_extras
from panelsrv.errors import ApiError, Code, bad_request

MAX_FIELDS: Final = 100
MAX_PART_HEADER: Final = 1024

FORM: Final = b"application/x-www-form-urlencoded"
JSON: Final = b"application/json"
MULTIPART: Final = b"multipart/form-data"


class Decoded:
    """A decoded request: the action, its wire tag, and the fields a signature covers."""

    __slots__ = ("_fields", "_rendered", "_texts", "action", "tag")

    def __init__(
        self, action: Action, tag: str, fields: dict[str, Any], texts: dict[str, str] | None
    ) -> None:
        self.action = action
        self.tag = tag
        self._fields = fields
        self._texts = texts
        self._rendered: dict[str, str] | None = None

    @property
    def fields(self) -> dict[str, str]:
        """Field -> value as received. Values that are not strings (JSON values; integer fields
        read as ints) are rendered with `str()` on first use only, since most requests carry no
        `sign` and never ask; `_texts` holds the digit strings `str()` would not give back
        (`007`)."""
        if self._rendered is None:
            rendered = {k: v if type(v) is str else str(v) for k, v in self._fields.items()}
            if self._texts:
                rendered.update(self._texts)
            self._rendered = rendered
        return self._rendered


def decode_request(body: bytes, content_type: bytes, query: bytes) -> Decoded:
    """Decode one request. Raises `ApiError` (400) with the message the client should see."""
    media, semicolon, rest = content_type.partition(b";")
    media = media.strip().lower()
    fields: dict[str, Any]
    duplicate: str | None
    try:
        params = _NO_PARAMETERS
        if body and semicolon and rest.strip(b" \t").lower() not in _UTF8_ONLY:
            params = _parameters(";" + rest.decode("latin-1"))
            _check_charset(params, "Content-Type")
        if not body:  # fields in the query string only, whatever the declared type
            fields, duplicate = {}, None
        elif media == FORM or not media:
            fields, duplicate = _parse_form(body)
        elif media == JSON:
            fields, duplicate = _parse_json(body)
        elif media == MULTIPART:
            fields, duplicate = _parse_multipart(body, params.get("boundary", ""))
        else:
            raise _malformed()
        if query:
            under, query_duplicate = _parse_form(query)
            duplicate = duplicate or query_duplicate
            if under:
                under.update(fields)
                fields = under
    except UnicodeDecodeError:
        raise _malformed() from None

    tag = fields.get("action")
    if not isinstance(tag, str) or (cls := STRUCTS.get(tag)) is None:
        raise ApiError(Code.INCORRECT_ACTION)
    if duplicate is not None:
        raise bad_request(duplicate[:MAX_NAME_ECHO], "sent more than once")
    if "key" not in fields:
        # msgspec names missing fields in its own order; the key is the one to report first.
        raise bad_request("key", "required")
    extras = add_extras(fields) if cls is Add else ()
    present = _for_struct(fields, tag)
    texts = None
    try:
        # Strict: a string for an integer field, a JSON float or boolean, is refused, and
        # msgspec checks every bound. The form parsers have already read plain digits as ints.
        action = msgspec.convert(present, cls)
    except msgspec.ValidationError:
        # Integer fields still holding text (JSON strings, leading zeros), or a real error.
        texts = _integers(present, tag)
        try:
            action = msgspec.convert(present, cls)
        except msgspec.ValidationError as exc:
            raise _translate(exc, tag) from None
    if extras:
        action = msgspec.structs.replace(action, extras=extras)
    if action.sign is not None:
        sign.check_signed(tag, fields, action.sign_version or 1)
    return Decoded(action, tag, fields, texts)


def _for_struct(fields: dict[str, Any], tag: str) -> dict[str, Any]:
    """The fields as the action's Struct takes them; `fields` itself when nothing changes, as
    for nearly every request (it stays what was received, for `Decoded.fields`).

    - A value of `ABSENT_TEXTS` (`""`, `undefined`, `null`) of a `BLANK_IS_ABSENT` field is
      left out: the field is absent.
    - Id lists where clients put them (`ID_LISTS`): a comma-separated list or a JSON array in
      the single field (`order`) is the list field (`orders`); a JSON array or a number in the
      list field is read as its comma-separated text, for `parse_ids` to judge.
    """
    values = fields.values()
    if "" in values or "undefined" in values or "null" in values:
        fields = {
            k: v
            for k, v in fields.items()
            if not (type(v) is str and v in ABSENT_TEXTS and k in BLANK_IS_ABSENT)
        }
    lists = ID_LISTS.get(tag)
    if lists is not None:
        for single, many in lists.items():
            one = fields.get(single)
            if type(one) is list or (type(one) is str and "," in one):
                if many in fields:
                    raise bad_request(many, f"send either {single} or {many}, not both")
                fields = {k: v for k, v in fields.items() if k != single}
                fields[many] = one
            listed = fields.get(many)
            if type(listed) is int:
                fields = {**fields, many: str(listed)}
            elif type(listed) is list:
                fields = {**fields, many: _id_text(many, listed)}
    return fields


def _id_text(field: str, ids: list[Any]) -> str:
    """[8842, "8843"] -> "8842,8843": the text a JSON array of ids stands for. Items are JSON
    integers or strings; anything else (floats, booleans, objects) is a 400."""
    if not all(type(i) is int or type(i) is str for i in ids):
        raise bad_request(field, "must be comma-separated positive integers")
    return ",".join(map(str, ids))


def _malformed() -> ApiError:
    return ApiError(Code.MALFORMED_BODY)


# -- integer fields ------------------------------------------------------------------------------

MAX_DIGITS: Final = 19  # enough for every bound (MAX_BIGINT has 19), and bounds the int() work


def _int_or_text(value: str) -> int | str:
    """An integer field's text: the int it spells when it is `^[0-9]{1,19}$` without a leading
    zero (so `str()` gives the signed text back), else the text, for `_integers` to judge.
    int() alone would also take blanks, signs, `_` and non-ASCII digits, and msgspec's lax mode
    exponents and fractions, rounded (`99.99999999999999999` -> 100)."""
    if (
        value.isdigit()
        and value.isascii()
        and len(value) <= MAX_DIGITS
        and (value[0] != "0" or len(value) == 1)
    ):
        return int(value)
    return value


def _integers(fields: dict[str, Any], tag: str) -> dict[str, str] | None:
    """The integer fields' remaining strings, in the request's order: digits (leading zeros
    too) become ints in place, anything else but "" (absent) is a 400 with the field's rule.
    JSON values of other types are msgspec's to refuse. Returns the texts `str()` would not
    give back, for `Decoded.fields`."""
    ints = INT_FIELDS[tag]
    texts = None
    for name, value in fields.items():
        if type(value) is not str or not value or name not in ints:
            continue
        number = _int_or_text(value.lstrip("0") or "0") if len(value) <= MAX_DIGITS else value
        if type(number) is not int:
            raise bad_request(name, FIELD_RULES[tag, name])
        fields[name] = number
        if str(number) != value:
            texts = texts or {}
            texts[name] = value
    return texts


# -- application/x-www-form-urlencoded (and the query string) ---------------------------------


def _parse_form(data: bytes) -> tuple[dict[str, str | int], str | None]:
    """`a=x+y%21&service=7` -> {'a': 'x y!', 'service': 7}; the first repeated name, if any.

    The same pairs as `urllib.parse.parse_qsl(..., keep_blank_values=True)` for valid UTF-8 (a
    name without `=` has the value ""), but for integer fields' plain digits, read as ints
    (`_int_or_text`), in about half its time: the body is decoded once (no
    multi-byte sequence can contain `&`, `=`, `%` or `+`), and only parts holding `%` or `+`,
    usually just the link, are unquoted.
    """
    text = data.decode()
    if text.count("&") >= MAX_FIELDS:
        raise _malformed()
    fields: dict[str, str | int] = {}
    duplicate = None
    for part in text.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        if "%" in part or "+" in part:
            name = _unquote(name)
            value = _unquote(value)
        if name in fields and duplicate is None:
            duplicate = name
        fields[name] = _int_or_text(value) if name in INT_NAMES else value
    return fields, duplicate


def _unquote(text: str) -> str:
    # `+` first: an encoded plus (%2B) must stay a plus. Invalid escapes stay literal, as in
    # urllib and PHP. Escaped bytes must form valid UTF-8 (decoded strictly).
    if "+" in text:
        text = text.replace("+", " ")
    if "%" in text:
        text = unquote_to_bytes(text).decode()
    return text


# -- application/json ----------------------------------------------------------------------------

_JSON_OBJECT: Final = msgspec.json.Decoder(dict[str, Any])
# Every JSON string token, with the colon that makes it a key. Sound on valid JSON only: outside
# strings no `"` can occur, so the scan never starts inside a string.
_STRING_TOKEN: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"\s*(:?)')


def _parse_json(body: bytes) -> tuple[dict[str, Any], str | None]:
    """A JSON object -> its dict; the first repeated key, if any.

    msgspec validates strictly (UTF-8, no NaN, no lone surrogates) but keeps the last of
    duplicate keys silently, so keys are counted in the text: when the count equals the number
    of distinct top-level keys there is neither a duplicate nor a nested object; otherwise the
    slow, exact scan below finds the culprit.
    """
    try:
        obj = _JSON_OBJECT.decode(body)
    except (msgspec.DecodeError, RecursionError):
        raise _malformed() from None
    if len(obj) > MAX_FIELDS:
        raise _malformed()
    if _STRING_TOKEN.findall(body).count(b":") == len(obj):
        return obj, None
    return obj, _first_duplicate_key(body)


class _DuplicateKey(Exception):
    pass


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise _DuplicateKey(name)
            seen.add(name)
    return obj


def _first_duplicate_key(body: bytes) -> str | None:
    """None when the extra keys belong to nested objects that repeat nothing."""
    try:
        json.loads(body.decode(), object_pairs_hook=_refuse_duplicates)
    except _DuplicateKey as exc:
        return str(exc.args[0])
    except (ValueError, RecursionError):
        raise _malformed() from None
    return None


# -- header parameters (Content-Type, Content-Disposition) ----------------------------------------

# RFC 9110 §5.6.6: `*( OWS ";" OWS [ name "=" ( token / quoted-string ) ] )`, blanks around the
# "=" tolerated (RFC 6266's implied LWS). A token is tchars only; a quoted-string takes any
# character but CTLs (HTAB aside), `"` and `\`, which a backslash escapes.
_TOKEN: Final = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAMETER: Final = re.compile(
    rf'[ \t]*;[ \t]*(?:({_TOKEN})[ \t]*=[ \t]*(?:({_TOKEN})|"((?:[^"\\\x00-\x08\x0a-\x1f\x7f]'
    rf'|\\[^\x00-\x08\x0a-\x1f\x7f])*)"))?'
)
_ESCAPED: Final = re.compile(r"\\(.)", re.S)
_NO_PARAMETERS: Final[dict[str, str]] = {}
_CHARSETS: Final = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})
# The parameters most bodies declare, if any: nothing to parse (what `_parameters` would find).
_UTF8_ONLY: Final = frozenset({b"charset=utf-8", b'charset="utf-8"', b"charset=utf8"})
# What nearly every client sends, within the grammar: the name straight away.
_PLAIN_DISPOSITION: Final = re.compile(
    r'[ \t]*form-data[ \t]*;[ \t]*name="([^"\\\x00-\x1f\x7f]*)"[ \t]*', re.I
)


def _parameters(text: str) -> dict[str, str]:
    """`; name="a\\"b"; x=y` -> {'name': 'a"b', 'x': 'y'} (names lowercased).

    Each parameter is read whole, so a `;` or `name=` inside a quoted value stays in it. Text
    outside the grammar, or a name given twice (which one would count?), is malformed.
    """
    params: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        match = _PARAMETER.match(text, pos)
        if match is None:
            if text[pos:].strip(" \t"):
                raise _malformed()
            break
        name, token, quoted = match.groups()
        if name is not None:
            name = name.lower()
            if name in params:
                raise _malformed()
            if quoted is not None and "\\" in quoted:
                quoted = _ESCAPED.sub(r"\1", quoted)
            params[name] = token if quoted is None else quoted
        pos = match.end()
    return params


def _check_charset(params: dict[str, str], field: str) -> None:
    """Bodies are decoded as UTF-8 only: a declared charset that is not UTF-8 (or its ASCII
    subset) is refused, not silently misread."""
    charset = params.get("charset")
    if charset is not None and charset.lower() not in _CHARSETS:
        raise bad_request(field, "charset must be UTF-8 or US-ASCII")


# -- multipart/form-data -------------------------------------------------------------------------

MAX_BOUNDARY: Final = 70  # RFC 2046 §5.1.1
_IDENTITY_ENCODINGS: Final = frozenset({"7bit", "8bit", "binary"})


def _parse_multipart(body: bytes, boundary: str) -> tuple[dict[str, str | int], str | None]:
    """RFC 7578 form data, strictly: the body starts with the delimiter, each part has one
    `Content-Disposition: form-data; name=...`, lines end in CRLF, the close delimiter ends it
    (an epilogue is ignored). A part with a `filename` is a field like any other: Python
    `requests` sends `files={"key": "..."}` that way.
    """
    if not 0 < len(boundary) <= MAX_BOUNDARY:
        raise _malformed()
    delimiter = b"--" + boundary.encode("latin-1")
    separator = b"\r\n" + delimiter
    if not body.startswith(delimiter):
        raise _malformed()
    fields: dict[str, str | int] = {}
    duplicate = None
    pos = len(delimiter)
    parts = 0
    while True:
        after = body[pos : pos + 2]
        if after == b"--":
            return fields, duplicate
        parts += 1
        if after != b"\r\n" or parts > MAX_FIELDS or body.startswith(b"\r\n", pos + 2):
            raise _malformed()
        head_end = body.find(b"\r\n\r\n", pos + 2, pos + 2 + MAX_PART_HEADER)
        if head_end < 0:
            raise _malformed()
        name = _part_name(body[pos + 2 : head_end].decode())
        end = body.find(separator, head_end + 4)
        if end < 0:
            raise _malformed()
        if name in fields and duplicate is None:
            duplicate = name
        value = body[head_end + 4 : end].decode()
        fields[name] = _int_or_text(value) if name in INT_NAMES else value
        pos = end + len(separator)


def _part_name(head: str) -> str:
    """The field name of a part's headers; its Content-Type's charset, if any, must be UTF-8."""
    name = None
    charset_of: dict[str, str] = _NO_PARAMETERS
    for line in head.split("\r\n"):
        header, colon, value = line.partition(":")
        header = header.lower()
        if not colon or header != header.strip() or "\n" in line or "\r" in line:
            raise _malformed()
        kind, semicolon, rest = value.partition(";")
        if header == "content-disposition":
            if name is not None:
                raise _malformed()
            plain = _PLAIN_DISPOSITION.fullmatch(value)
            if plain is not None:
                name = plain.group(1)
                continue
            params = _parameters(semicolon + rest)
            if kind.strip(" \t").lower() != "form-data" or "name" not in params:
                raise _malformed()
            name = params["name"]
        elif header == "content-type":
            charset_of = _parameters(semicolon + rest)
        elif (
            header == "content-transfer-encoding"
            and value.strip().lower() not in _IDENTITY_ENCODINGS
        ):
            raise _malformed()
    if name is None:
        raise _malformed()
    _check_charset(charset_of, name[:MAX_NAME_ECHO])
    return name


# -- msgspec errors -> the client's message ------------------------------------------------------

_AT_FIELD: Final = re.compile(r"at `\$\.(\w+)`")
_MISSING_FIELD: Final = re.compile(r"missing required field `(\w+)`")


def _translate(exc: msgspec.ValidationError, tag: str) -> ApiError:
    """`Expected `int` >= 1 - at `$.quantity`` -> `quantity: must be an integer >= 1`.

    The rule text comes from the Struct's own annotations (`FIELD_RULES`), so it states the
    whole rule (both bounds) whichever bound the value broke.
    """
    text = str(exc)
    match = _AT_FIELD.search(text)
    if match is not None and (tag, match.group(1)) in FIELD_RULES:
        return bad_request(match.group(1), FIELD_RULES[tag, match.group(1)])
    match = _MISSING_FIELD.search(text)
    if match is not None:
        return bad_request(match.group(1), "required")
    return _malformed()
