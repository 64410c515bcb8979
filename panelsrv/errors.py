"""Every error the API can answer, from one table: code -> (HTTP status, message).

Leaf module: imports nothing from panelsrv. `ApiError` is raised by validation and business
code and rendered at exactly one place (the API handler); library errors (msgspec, asyncpg) are
translated into it at their own boundary, never here.

Also the one JSON encoder of every body panelsrv answers (`encode_reply`, msgspec) and the shape
every error takes (`ErrorReply`): `api.actions` renders its replies with both, and the error
bodies are prebuilt here with them, so an error reads the same whoever answers it.
"""

from __future__ import annotations

import enum
from typing import Final

import msgspec


class Code(enum.Enum):
    """Error codes; the value is (HTTP status, fixed message or None when a detail is required)."""

    BAD_REQUEST = (400, None)  # detail names the field and the rule
    MALFORMED_BODY = (400, "Malformed request body")
    INCORRECT_ACTION = (400, "Incorrect action")
    INCORRECT_SERVICE = (400, "Incorrect service ID")
    INCORRECT_ORDER = (400, "Incorrect order ID")
    REFILL_NOT_FOUND = (400, "Refill not found")
    CANCEL_UNAVAILABLE = (400, "Cancel is not available")
    REFILL_UNAVAILABLE = (400, "Refill is not available")
    WEBHOOK_NOT_FOUND = (400, "Incorrect webhook ID")
    DUPLICATE_LINK = (
        400,
        "You have active order with this link. Please wait until order being completed.",
    )
    IDEMPOTENCY_MISMATCH = (400, "idempotency_key: reused with different parameters")
    GET_WITH_BODY = (400, "A GET carries its fields in the query string, not in a body")
    INVALID_KEY = (401, "Invalid API key")
    INVALID_SIGNATURE = (401, "Invalid signature")
    NOT_ENOUGH_FUNDS = (402, "Not enough funds on balance")
    NOT_FOUND = (404, "Not found")
    USE_POST = (405, "Method not allowed: use POST")  # /api/v2 (and a GET the panel refuses)
    USE_GET = (405, "Method not allowed: use GET")  # the operations routes
    USE_GET_OR_POST = (405, "Method not allowed: use GET or POST")  # the pages' forms
    DUPLICATE_REQUEST = (409, "Duplicate request")
    BODY_TOO_LARGE = (413, "Request body too large")
    HEADERS_TOO_LARGE = (431, "Request header fields too large")
    TOO_MANY_REQUESTS = (429, "Too many requests")
    INTERNAL = (500, "Internal server error")
    NOT_IMPLEMENTED = (501, "Transfer-Encoding not implemented")  # a coding other than chunked
    UNAVAILABLE = (503, "Service unavailable")

    @property
    def status(self) -> int:
        return self.value[0]

    @property
    def message(self) -> str | None:
        return self.value[1]


class ApiError(Exception):
    """An error with its HTTP meaning; `detail` replaces the table's message (BAD_REQUEST
    always has one). `retry_after` (seconds) goes out as a Retry-After header (429, 503).
    `prebuilt`: the whole body, built once beforehand (a 429 naming its limit)."""

    __slots__ = ("code", "detail", "prebuilt", "retry_after")

    def __init__(
        self,
        code: Code,
        detail: str | None = None,
        retry_after: float | None = None,
        prebuilt: bytes | None = None,
    ) -> None:
        super().__init__(detail or code.message or code.name)
        self.code = code
        self.detail = detail
        self.retry_after = retry_after
        self.prebuilt = prebuilt

    @property
    def status(self) -> int:
        return self.code.status

    def body(self) -> bytes:
        if self.prebuilt is not None:
            return self.prebuilt
        if self.detail is None:
            return ERROR_BODIES[self.code]
        return error_body(self.detail)


class ErrorReply(msgspec.Struct, frozen=True, gc=False):
    """`{"error": "..."}`: an error's body, and a refused item inside a multi reply."""

    error: str


encode_reply: Final = msgspec.json.Encoder().encode
"""Reply (or list/dict of replies) -> JSON bytes, in field declaration order."""


def error_body(message: str) -> bytes:
    return encode_reply(ErrorReply(message))


# Prebuilt bodies for every code with a fixed message: the hot error paths encode nothing.
ERROR_BODIES: dict[Code, bytes] = {
    code: error_body(code.message) for code in Code if code.message is not None
}


def too_many_body(limit: str) -> bytes:
    """A 429 body naming the limit that was hit: `Too many requests: <limit>`. Built once per
    limit (a tier, the panel's order ceiling), never per request."""
    return error_body(f"{Code.TOO_MANY_REQUESTS.message}: {limit}")


def retry_after_header(seconds: int) -> bytes:
    """The `Retry-After` header line of a 429 or 503, in whole seconds."""
    return b"Retry-After: %d\r\n" % seconds


def bad_request(field: str, rule: str) -> ApiError:
    """`400 {"error": "<field>: <rule>"}`, the shape every validation error takes."""
    return ApiError(Code.BAD_REQUEST, f"{field}: {rule}")
