"""The simulated provider's books: services, orders, refills and balance, in memory.

Pure: no I/O, imports nothing from panelsrv, time comes from the clock passed in. `sim.py` puts
it behind HTTP. An order's status is computed on read from its age: Pending for the first fifth
of `complete_after`, then In progress with `remains` falling, then Completed, or Partial with a
random `remains` for `partial_ratio` of the orders. Answers are shaped as API v2 specifies.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from typing import Any

PENDING_SHARE = 0.2  # of complete_after; only Pending orders can be canceled
NO_LINK = ("Package", "Custom Comments Package", "Custom Comments")
FLAT_RATE = ("Package", "Custom Comments Package")
FINISHED = ("Completed", "Partial")


@dataclasses.dataclass(slots=True)
class SimOrder:
    id: int
    service: dict[str, Any]
    link: str
    quantity: int
    charge: Decimal
    created: float
    start_count: int
    final_remains: int  # 0: ends Completed, else Partial with this many left
    idempotency_key: str | None
    received: dict[str, str]  # the add's fields as they arrived, the key left out
    canceled: bool = False


def demo_services(n: int) -> list[dict[str, Any]]:
    """`n` deterministic services of varied platforms, types, rates, bounds and flags."""
    platforms = ("Instagram", "TikTok", "YouTube", "Telegram", "Twitter")
    kinds = (
        ("Followers", "default"),
        ("Likes", "default"),
        ("Views", "default"),
        ("Comments", "Custom Comments"),
        ("Starter pack", "Package"),
        ("Auto likes", "Subscriptions"),
        ("Poll votes", "Poll"),
        ("Mentions", "Mentions"),
    )
    services = []
    for i in range(n):
        platform, (what, kind) = platforms[i % len(platforms)], kinds[i % len(kinds)]
        low = 1 if kind in FLAT_RATE else (10, 50, 100)[i % 3]
        high = 1 if kind in FLAT_RATE else low * (1000, 100, 10000)[(i // 3) % 3]
        services.append({
            "service": i + 1, "name": f"{platform} {what} #{i + 1}", "type": kind,
            "category": platform, "rate": str(Decimal(5 + (i * 37) % 500) / 100),
            "min": low, "max": high, "dripfeed": kind == "default" and i % 4 == 0,
            "refill": i % 2 == 0, "cancel": i % 3 != 2, "avg_time": 600 * (1 + i % 12),
        })  # fmt: skip
    return services


class SimBook:
    """One provider account: `act(fields)` answers an API v2 request."""

    def __init__(
        self, *, key: str, services: int, complete_after: float, partial_ratio: float,
        balance: Decimal, currency: str, honour_idempotency: bool, seed: int | None,
        clock: Callable[[], float],
    ) -> None:  # fmt: skip
        self.key, self.balance, self.currency = key, balance, currency
        self.complete_after, self.partial_ratio = complete_after, partial_ratio
        self.honour_idempotency = honour_idempotency
        self.services = demo_services(services)
        self._by_id = {str(s["service"]): s for s in self.services}
        self._clock = clock
        self._rng = random.Random(seed)
        self.orders: dict[int, SimOrder] = {}
        self.refills: dict[int, tuple[int, float]] = {}  # refill id -> (order id, created)
        self._idempotent: dict[str, tuple[int, dict[str, str]]] = {}  # key -> order, request
        self.counters: Counter[str] = Counter()
        self._actions: dict[str, Callable[[dict[str, str]], tuple[int, Any]]] = {
            "services": lambda f: (200, self.services),
            "add": self._add,
            "status": self._status,
            "cancel": lambda f: self._per_id(f, "order", "cancel", self._cancel_one),
            "refill": lambda f: self._per_id(f, "order", "refill", self._refill_one),
            "refill_status": lambda f: self._per_id(f, "refill", "status", self._refill_state),
            "balance": lambda f: (200, {"balance": f"{self.balance:f}", "currency": currency}),
        }

    def creations_by_link(self) -> Counter[str]:
        """How many upstream orders each link got: exactly-once dispatch means all ones."""
        return Counter(o.link for o in self.orders.values())

    def act(self, fields: dict[str, str]) -> tuple[int, Any]:
        """Request fields (the idempotency key, if any, as `idempotency_key`) -> (status, JSON)."""
        if fields.get("key") != self.key:
            return 401, {"error": "Invalid API key"}
        handler = self._actions.get(fields.get("action", ""))
        if handler is None:
            return 400, {"error": "Incorrect action"}
        try:
            return handler(fields)
        except _Bad as exc:
            return 400, {"error": str(exc)}

    def _add(self, fields: dict[str, str]) -> tuple[int, Any]:
        idem = fields.get("idempotency_key") or None
        request = {k: v for k, v in fields.items() if k not in ("key", "idempotency_key")}
        if idem and self.honour_idempotency and idem in self._idempotent:
            oid, first = self._idempotent[idem]
            if request != first:
                return 400, {"error": "idempotency_key: reused with different parameters"}
            self.counters["idempotent_replays"] += 1
            return 200, {"order": oid}
        service = self._by_id.get(fields.get("service", ""))
        if service is None:
            return 400, {"error": "Incorrect service ID"}
        kind, link = service["type"], fields.get("link", "")
        if kind in FLAT_RATE:
            quantity = 1
        elif kind == "Custom Comments" and not fields.get("quantity"):
            quantity = sum(1 for line in fields.get("comments", "").splitlines() if line.strip())
        else:
            quantity = _int(fields, "quantity")
        if not service["min"] <= quantity <= service["max"]:
            raise _Bad(f"quantity: must be between {service['min']} and {service['max']}")
        if not link and kind not in NO_LINK:
            raise _Bad("link: required")
        runs = _int(fields, "runs") if fields.get("runs") else 1
        if not 1 <= runs <= 1000:
            raise _Bad("runs: must be between 1 and 1000")
        rate = Decimal(service["rate"])
        charge = rate if kind in FLAT_RATE else rate * quantity * runs / 1000
        if charge > self.balance:
            return 402, {"error": "Not enough funds on balance"}
        self.balance -= charge
        oid = len(self.orders) + 1
        partial = self._rng.random() < self.partial_ratio
        final_remains = self._rng.randint(1, max(1, quantity - 1)) if partial else 0
        self.orders[oid] = SimOrder(oid, service, link, quantity, charge, self._clock(),
                                    self._rng.randint(0, 50_000), final_remains, idem,
                                    request)  # fmt: skip
        if idem:
            self._idempotent[idem] = (oid, request)
        self.counters["orders_created"] += 1
        return 200, {"order": oid}

    def _progress(self, created: float) -> float:
        """<= 0 while pending, 0..1 in progress, >= 1 when finished."""
        total = self.complete_after
        if total <= 0:
            return 1.0
        return (self._clock() - created - total * PENDING_SHARE) / (total * (1 - PENDING_SHARE))

    def _order(self, oid: str) -> SimOrder | None:
        return self.orders.get(int(oid)) if oid.isdigit() else None

    def _order_state(self, order: SimOrder) -> tuple[str, int]:
        if order.canceled:
            return "Canceled", order.quantity
        done = self._progress(order.created)
        if done >= 1.0:
            return ("Partial", order.final_remains) if order.final_remains else ("Completed", 0)
        if done <= 0.0:
            return "Pending", order.quantity
        return "In progress", order.quantity - int(done * (order.quantity - order.final_remains))

    def _status_entry(self, oid: str) -> dict[str, str]:
        order = self._order(oid)
        if order is None:
            return {"error": "Incorrect order ID"}
        status, remains = self._order_state(order)
        return {"charge": f"{order.charge:f}", "start_count": str(order.start_count),
                "status": status, "remains": str(remains), "currency": self.currency}  # fmt: skip

    def _status(self, fields: dict[str, str]) -> tuple[int, Any]:
        if "orders" in fields:
            return 200, {oid: self._status_entry(oid) for oid in _ids(fields["orders"], "orders")}
        entry = self._status_entry(fields.get("order", ""))
        return (400 if "error" in entry else 200), entry

    def _cancel_one(self, oid: str) -> int | dict[str, str]:
        order = self._order(oid)
        if order is None:
            return {"error": "Incorrect order ID"}
        if not order.service["cancel"] or self._order_state(order)[0] != "Pending":
            return {"error": "Order cannot be canceled"}
        order.canceled = True
        self.balance += order.charge
        return 1

    def _refill_one(self, oid: str) -> int | dict[str, str]:
        order = self._order(oid)
        if order is None:
            return {"error": "Incorrect order ID"}
        if not order.service["refill"] or self._order_state(order)[0] not in FINISHED:
            return {"error": "Refill is not available"}
        rid = len(self.refills) + 1
        self.refills[rid] = (order.id, self._clock())
        return rid

    def _refill_state(self, rid: str) -> str | dict[str, str]:
        refill = self.refills.get(int(rid)) if rid.isdigit() else None
        if refill is None:
            return {"error": "Refill not found"}
        done = self._progress(refill[1])
        return "Completed" if done >= 1 else "Pending" if done <= 0 else "In progress"

    def _per_id(
        self, fields: dict[str, str], name: str, result: str, one: Callable[[str], Any]
    ) -> tuple[int, Any]:
        """The single form (`order=`) answers `{result: v}`; the multi form (`orders=`) a list."""
        if f"{name}s" in fields:
            ids = _ids(fields[f"{name}s"], f"{name}s")
            return 200, [{name: int(i) if i.isdigit() else i, result: one(i)} for i in ids]
        value = one(fields.get(name, ""))
        return (400, value) if isinstance(value, dict) else (200, {result: value})


class _Bad(Exception):
    """A 400 whose message names the field and the rule."""


def _int(fields: dict[str, str], name: str) -> int:
    try:
        return int(fields.get(name, ""))
    except ValueError:
        raise _Bad(f"{name}: must be an integer") from None


def _ids(text: str, name: str) -> list[str]:
    ids = [i.strip() for i in text.split(",") if i.strip()]
    if not 0 < len(ids) <= 100:
        raise _Bad(f"{name}: between 1 and 100 ids")
    return ids
