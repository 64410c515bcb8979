"""A loopback API v2 upstream whose answers a test writes, for what the simulator never says.

`FakeProvider` keeps its orders as the status entries it answers (`orders`, upstream id -> entry,
edited by the test at any time) and records every `add` with its Idempotency-Key (`adds`).
`on_add(fields)` may answer an add itself ((status, JSON, headers)); `gate`, when given, holds
every `balance` call until it is set (`held` is set once one waits), so a test can occupy a
client's concurrency slot. An entry field set to ABSENT is left out of the answer.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import aiohttp.web
import orjson

Answer = tuple[int, Any, dict[str, str]]


class FakeProvider:
    def __init__(self) -> None:
        self.key = "fake-key"
        self.orders: dict[str, dict[str, Any]] = {}
        self.adds: list[tuple[str | None, dict[str, str]]] = []  # (Idempotency-Key, fields)
        self.cancels: list[str] = []
        self.on_add: Callable[[dict[str, str]], Answer | None] = lambda fields: None
        self.gate: asyncio.Event | None = None
        self.held = asyncio.Event()
        self._ids = itertools.count(1001)
        self._runner: aiohttp.web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> FakeProvider:
        app = aiohttp.web.Application()
        app.router.add_post("/api/v2", self._serve)
        self._runner = aiohttp.web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = aiohttp.web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/api/v2"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.gate is not None:
            self.gate.set()
        assert self._runner is not None
        await self._runner.cleanup()

    def upstream_of(self, link: str) -> str:
        """The upstream id of the order created for `link`."""
        return next(oid for oid, entry in self.orders.items() if entry["link"] == link)

    async def _serve(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        fields = {k: str(v) for k, v in (await request.post()).items()}
        if fields.get("key") != self.key:
            return _answer((401, {"error": "Invalid API key"}, {}))
        action = fields.get("action")
        if action == "add":
            self.adds.append((request.headers.get("Idempotency-Key"), fields))
            return _answer(self.on_add(fields) or self._create(fields))
        if action == "status":
            ids = fields["orders"].split(",")
            return _answer((200, {i: self._entry(i) for i in ids}, {}))
        if action == "cancel":
            ids = fields["orders"].split(",")
            self.cancels.extend(ids)
            return _answer((200, [{"order": i, "cancel": 1} for i in ids], {}))
        if action == "refill_status":
            ids = fields["refills"].split(",")
            return _answer((200, [{"refill": i, "status": "Completed"} for i in ids], {}))
        if action == "balance":
            if self.gate is not None:
                self.held.set()
                await self.gate.wait()
            return _answer((200, {"balance": "100.00", "currency": "USD"}, {}))
        return _answer((400, {"error": "Incorrect action"}, {}))

    def _create(self, fields: dict[str, str]) -> Answer:
        oid = str(next(self._ids))
        self.orders[oid] = {
            "status": "Pending",
            "start_count": "0",
            "remains": fields.get("quantity", "1"),
            "charge": "1.00",
            "currency": "USD",
            "link": fields.get("link", ""),
        }
        return 200, {"order": int(oid)}, {}

    def _entry(self, oid: str) -> dict[str, Any]:
        entry = self.orders.get(oid)
        if entry is None:
            return {"error": "Incorrect order ID"}
        return {k: v for k, v in entry.items() if k != "link" and v is not ABSENT}


ABSENT = object()


def _answer(answer: Answer) -> aiohttp.web.Response:
    status, body, headers = answer
    return aiohttp.web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )
