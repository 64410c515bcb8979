"""What providers' answers say, in every dialect seen from real panels: one table, two shapes.

Pure and a leaf: no I/O, imports nothing from panelsrv. `client.answers` types and bounds what these
functions find; this module only knows where panels put things and what their words mean.

- `DIALECT`: every known word or key, by the place it is said in, and what it means there. One
  row per variant, each tested against the simulator answering that way
  (tests/worker/test_dialects.py, which also checks that its rows are this whole table).
- `unwrap`: an answer in an envelope (`{"status": "success", "data": ...}`) or a refusal
  (`{"error": m}`, `{"status": "error", "message": m}`) -> what it says.
- `batch_entries`: a batch answer as API v2's list or as an object keyed by id -> its entries.

A word means something only in its place. "success" wraps an answer and is never an order's
status (a wrapper must not complete an order); "error" is an order's status in a status answer
and a refusal's verdict in an envelope, told apart by the object's other fields (`unwrap`). An
object that is both, a refusal beside an order's id, counts or status, means neither: `unwrap`
finds it unreadable, since either reading could refund an order the provider may be running.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

OK, FAILED = "ok", "failed"  # an envelope's verdict on the request
UNKNOWN = "unknown"  # a count the provider does not know

DIALECT: dict[str, dict[str, Any]] = {
    # An order's "status" -> the API's seven.
    "order status": {
        **dict.fromkeys(("pending", "awaiting", "queued"), "Pending"),
        **dict.fromkeys(("in progress", "inprogress", "processing", "started"), "In progress"),
        **dict.fromkeys(("completed", "complete"), "Completed"),
        **dict.fromkeys(("partial", "partially completed"), "Partial"),
        **dict.fromkeys(("canceled", "cancelled"), "Canceled"),
        "refunded": "Refunded",
        **dict.fromkeys(("error", "failed", "fail"), "Error"),
    },
    # A refill's "status" -> Pending / In progress / Completed / Rejected / Error.
    "refill status": {
        **dict.fromkeys(("pending", "awaiting", "queued"), "Pending"),
        **dict.fromkeys(("in progress", "inprogress", "processing"), "In progress"),
        **dict.fromkeys(("completed", "complete", "success"), "Completed"),
        **dict.fromkeys(("rejected", "refused", "canceled", "cancelled"), "Rejected"),
        **dict.fromkeys(("error", "failed", "fail"), "Error"),
    },
    # The "status" of an envelope around an answer: the request was done, or refused.
    "envelope": {
        **dict.fromkeys(("success", "ok", "true"), OK),
        **dict.fromkeys(("error", "fail", "failed", "false"), FAILED),
    },
    # Where a done envelope holds the answer, first found first ({"status": "success", "data":
    # {...}}); with none of them its other fields are the answer ({"status": "success",
    # "order": 123}).
    "answer key": dict.fromkeys(("data", "result", "response"), "the answer"),
    # Where a refusal's text is, first found first ({"status": "error", "message": "..."}).
    "message key": dict.fromkeys(("error", "message", "msg"), "the message"),
    # A count that says it is not known ("remains": "Unknown"), as absent and null do.
    "count": dict.fromkeys(("unknown", "n/a", ""), UNKNOWN),
    # A cancel's result that says it was accepted ({"order": 1, "cancel": 1}).
    "cancel": dict.fromkeys(("1", "true", "ok", "success"), True),
    # An HTTP status that decides the answer whatever its body says (an `answers.ErrorKind`):
    # 402 is "not enough funds", so the request did nothing.
    "http status": {"402": "no_funds"},
}

# The counts of an order's status: an object with any of them is a status, never an envelope.
ORDER_FIELDS = ("charge", "start_count", "remains")


def word(value: Any) -> str | None:
    """A provider's word as `DIALECT` has it: text lower-cased, `_` and `-` as spaces, runs of
    spaces collapsed; JSON true/false and integers as their text; None for anything else."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return " ".join(value.replace("_", " ").replace("-", " ").split()).lower()
    return None


def means(place: str, value: Any) -> Any:
    """What `value` means said in `place` of `DIALECT`; None when it means nothing there."""
    key = word(value)
    return None if key is None else DIALECT[place].get(key)


def unwrap(data: Any) -> tuple[Any, str | None]:
    """An answer, or an entry of one -> (what it says, None), or (None, message) when it refuses
    the request: API v2's `{"error": m}` or an envelope `{"status": "error", "message": m}`.

    `{"status": "success", "data": x}` says x, `{"status": "success", "order": 1}` says
    `{"order": 1}`. An object with an order's fields, or with nothing beside its status, is no
    envelope: its status is an order's (`{"status": "Error", "remains": "100"}`, or
    `{"status": "Error"}` alone).

    ValueError: a refusal whose text is nowhere the table looks, or an answer that says two
    things (`_says_both`): read either way it could refund an order, so it is read neither way.
    """
    if not isinstance(data, dict):
        return data, None
    verdict = means("envelope", data["status"]) if "status" in data else None
    if _says_both(data, verdict):
        raise _two_answers(data)
    if "status" not in data:
        error = data.get("error")
        return (None, str(error)) if error else (data, None)
    rest = {k: v for k, v in data.items() if k != "status"}
    if verdict is None or not rest or any(field in data for field in ORDER_FIELDS):
        return data, None
    inner = next((rest[key] for key in DIALECT["answer key"] if key in rest), rest)
    if verdict == OK:
        if isinstance(inner, dict) and _says_both(inner, means("envelope", inner.get("status"))):
            raise _two_answers(inner)
        return inner, None
    message = _message(rest) or (_message(inner) if isinstance(inner, dict) else None)
    if message is None:
        raise ValueError(f"a refusal without a message (fields: {', '.join(sorted(rest))})"[:200])
    return None, message


def _says_both(data: dict[str, Any], verdict: str | None) -> bool:
    """An error beside an order's id, counts or status (`{"error": m, "status": "Canceled"}`,
    `{"order": 5, "error": m}`), or an envelope's refusal naming an order
    (`{"status": "error", "order": 5, "message": m}`): the order's answer and a refusal at once.
    `verdict`: what the object's status means as an envelope's."""
    order = "order" in data or any(field in data for field in ORDER_FIELDS)
    if data.get("error"):
        return order or ("status" in data and verdict is None)
    return verdict == FAILED and "order" in data and not any(f in data for f in ORDER_FIELDS)


def _two_answers(data: dict[str, Any]) -> ValueError:
    fields = ", ".join(sorted(data))
    return ValueError(f"an error beside an order's answer (fields: {fields})"[:200])


def _message(data: dict[str, Any]) -> str | None:
    return next((str(data[key]) for key in DIALECT["message key"] if data.get(key)), None)


def batch_entries(data: Any, id_field: str) -> Iterable[tuple[Any, Any]] | None:
    """A batch answer (cancel, refill, refill_status) -> its (id, entry) pairs: API v2's list
    `[{id_field: id, ...}]`, or an object keyed by id (`{"1": {"cancel": 1}}`, `{"1": 1}`);
    None for any other shape."""
    if isinstance(data, list):
        return [(item.get(id_field) if isinstance(item, dict) else None, item) for item in data]
    if isinstance(data, dict):
        return data.items()
    return None
