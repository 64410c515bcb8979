"""How the simulated provider words its answers: API v2 as specified, or the way other panels do.

Pure: msgspec only, imports nothing from panelsrv. `sim.book` answers as API v2 specifies;
`Dialect.render` rewords that answer, changing nothing it means: status words, numbers as
strings or numbers, `remains` unknown or left out, answers wrapped in a
`{"status": "success", ...}` envelope, errors as `{"status": "error", "message": ...}`, and
batch answers (cancel, refill, refill_status) as a list or an object keyed by id. The default
`Dialect()` renders every answer unchanged.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

import msgspec

Word = str | int | bool
BATCH = {"cancel": ("order", "cancel"), "refill": ("order", "refill"),
         "refill_status": ("refill", "status")}  # fmt: skip
COUNTS = ("start_count", "remains")


class Dialect(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How answers are worded; every field's default is API v2 as specified."""

    statuses: dict[str, str] = {}  # an order status -> the word said for it ("completed")
    refill_statuses: dict[str, str] = {}  # likewise for a refill's status
    numbers: bool = False  # counts and amounts as JSON numbers instead of strings
    remains: str | None = None  # said instead of every order's remains ("Unknown")
    omit: list[str] = []  # fields left out of every order status (["remains"])
    envelope: str | None = None  # successes as {"status": ok, <envelope>: answer}; "": merged
    ok: Word = "success"  # the envelope's status on a success
    failed: Word | None = None  # errors as {"status": failed, <message>: text}, not {"error": text}
    message: str = "error"  # where such an error's text is
    # Batch answers: [{"order": 1, "cancel": 1}] (list), {"1": {"cancel": 1}} (keyed), {"1": 1}.
    batch: Literal["list", "keyed", "bare"] = "list"
    accepted: Word = 1  # what a cancel that was accepted says

    def render(self, fields: dict[str, str], status: int, answer: Any) -> tuple[int, Any]:
        """The book's (status, answer) to `fields`, worded in this dialect."""
        if _is_error(answer):
            return status, self._error(answer)
        action = fields.get("action", "")
        if action == "status":
            multi = "orders" in fields
            answer = (
                {k: self._order(v) for k, v in answer.items()} if multi else self._order(answer)
            )
        elif action in BATCH:
            answer = self._batch(fields, *BATCH[action], answer)
        elif action == "balance" and self.numbers:
            answer = {**answer, "balance": float(Decimal(answer["balance"]))}
        if self.envelope is None:
            return status, answer
        if self.envelope == "" and isinstance(answer, dict):
            return status, {"status": self.ok, **answer}
        return status, {"status": self.ok, self.envelope or "data": answer}

    def _error(self, answer: dict[str, Any]) -> dict[str, Any]:
        return (
            answer
            if self.failed is None
            else {"status": self.failed, self.message: answer["error"]}
        )

    def _order(self, entry: dict[str, Any]) -> dict[str, Any]:
        if _is_error(entry):
            return self._error(entry)
        out: dict[str, Any] = {
            **entry,
            "status": self.statuses.get(entry["status"], entry["status"]),
        }
        if self.numbers:
            out.update({k: int(out[k]) for k in COUNTS}, charge=float(Decimal(out["charge"])))
        if self.remains is not None:
            out["remains"] = self.remains
        for name in self.omit:
            out.pop(name, None)
        return out

    def _value(self, result: str, value: Any) -> Any:
        if _is_error(value):
            return value
        if result == "cancel":
            return self.accepted
        if result == "status":
            return self.refill_statuses.get(value, value)
        return value

    def _batch(self, fields: dict[str, str], name: str, result: str, answer: Any) -> Any:
        if f"{name}s" not in fields:  # the single form: {result: value}
            return {result: self._value(result, answer[result])}
        entries = [(str(item[name]), self._value(result, item[result])) for item in answer]
        if self.batch == "keyed":
            return {key: value if _is_error(value) else {result: value} for key, value in entries}
        if self.batch == "bare":
            return dict(entries)
        return [{name: int(key) if key.isdigit() else key, result: value} for key, value in entries]


def _is_error(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"error"}
