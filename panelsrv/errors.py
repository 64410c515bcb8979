"""Every error the API can answer, from one table: code -> (HTTP status, message).

Leaf module: imports nothing from panelsrv. `ApiError` is raised by validation and business
code and rendered at exactly one place (the API handler); library errors (msgspec, asyncpg) are
translated into it at their own boundary, never here.
"""

from __future__ import annotations

import enum

import orjson


class Code(enum.Enum):
    """Error codes; the value is (HTTP status, fixed message or None when a detail is required)."""

    BAD_REQUEST = (400, None)  # detail names the field and the rule
    MALFORMED_BODY = (400, "Malformed request body")
    INCORRECT_ACTION = (400, "Incorrect action")
    INCORRECT_SERVICE = (400, "Incorrect service ID")
    INCORRECT_ORDER = (400, "Incorrect order ID")
    REFILL_NOT_FOUND = (400, "Refill not found")
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
    always has one). `retry_after` (seconds) goes out as a Retry-After header (429, 503)."""

    __slots__ = ("code", "detail", "retry_after")

    def __init__(
        self, code: Code, detail: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(detail or code.message or code.name)
        self.code = code
        self.detail = detail
        self.retry_after = retry_after

    @property
    def status(self) -> int:
        return self.code.status

    def body(self) -> bytes:
        if self.detail is None:
            return ERROR_BODIES[self.code]
        return error_body(self.detail)


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


# Prebuilt bodies for every code with a fixed message: the hot error paths encode nothing.
ERROR_BODIES: dict[Code, bytes] = {
    code: error_body(code.message) for code in Code if code.message is not None
}


def retry_after_header(seconds: int) -> bytes:
    """The `Retry-After` header line of a 429 or 503, in whole seconds."""
    return b"Retry-After: %d\r\n" % seconds


def bad_request(field: str, rule: str) -> ApiError:
    """`400 {"error": "<field>: <rule>"}`, the shape every validation error takes."""
    return ApiError(Code.BAD_REQUEST, f"{field}: {rule}")
