"""`panelsrv provider sim`: a simulated upstream provider speaking API v2 (demos, tests, bench).

Self-contained: asyncio streams, msgspec, orjson, `sim.book` (the in-memory account and its
orders) and `sim.dialect` (how answers are worded: API v2 as specified, or as other panels
answer); imports nothing else from panelsrv. Faults are drawn per API request from `Faults`:
set at start, from Python (`sim.faults = Faults(...)`), or over loopback with
`POST /_sim/faults` (a JSON object of the fields to change); `GET /_sim/stats` shows the
counters (`fault.<kind>` per fault, `fault_after.<action>` per fault that struck after the
action ran: an answer lost or garbled although the order, cancel or refill happened).
HTTP/1.1 subset: Content-Length bodies and keep-alive, enough for HTTP clients.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import random
import secrets
import signal
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from http import HTTPStatus
from typing import Any, Literal, get_args
from urllib.parse import parse_qsl

import msgspec
import orjson

from panelsrv.sim.book import SimBook
from panelsrv.sim.dialect import Dialect

log = logging.getLogger("panelsrv.sim.provider")

FaultKind = Literal["timeout", "5xx", "html", "html502", "garbage", "shape", "funds", "drop"]
FAULT_KINDS: tuple[FaultKind, ...] = get_args(FaultKind)
MAX_BODY = 1 << 20
SimResponse = tuple[int, str, bytes] | None  # None: close the connection without answering


def _json(status: int, obj: Any) -> tuple[int, str, bytes]:
    return status, "application/json; charset=utf-8", orjson.dumps(obj)


FAULT_ANSWERS: dict[str, tuple[int, str, bytes]] = {
    "5xx": (500, "text/plain", b"Internal Server Error"),
    "html": (200, "text/html; charset=utf-8", b"<!DOCTYPE html><html><head><title>Just a "
             b"moment...</title></head><body>Checking your browser</body></html>"),
    "html502": (502, "text/html", b"<html><head><title>502 Bad Gateway</title></head><body>"
                b"<center><h1>502 Bad Gateway</h1></center></body></html>"),
    "garbage": (200, "application/json", b'{"order": 88\x00\xff<br />'),
    "shape": (200, "application/json", b'"OK"'),
    "funds": _json(200, {"error": "Not enough funds on balance"}),
}  # fmt: skip


class Faults(msgspec.Struct, forbid_unknown_fields=True):
    latency_ms: float = 0.0  # added to every API answer
    fail_ratio: float = 0.0  # share of API requests that get a fault drawn from `kinds`
    kinds: list[FaultKind] = msgspec.field(default_factory=lambda: list(FAULT_KINDS))
    force: FaultKind | None = None  # every API request gets this fault
    after_ratio: float = 0.0  # share of faults that strike after the action ran (order exists)


class SimOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 0
    key: str | None = None  # the API key accepted; random when None
    services: int = 20  # demo services
    complete_after: float = 30.0  # seconds from add to Completed/Partial
    partial_ratio: float = 0.1  # share of orders that end Partial
    balance: Decimal = Decimal(1_000_000)  # our account at the provider; add spends it
    currency: str = "USD"
    faults: Faults = msgspec.field(default_factory=Faults)
    honour_idempotency: bool = True  # False: behave like a provider that ignores the header
    seed: int | None = None
    hang_seconds: float = 3600.0  # how long a "timeout" fault waits for the client to give up
    dialect: Dialect = msgspec.field(default_factory=Dialect)  # how answers are worded


class Simulator:
    """`async with Simulator(complete_after=0.5) as sim:` then POST to `sim.url` with `sim.key`.

    Keyword arguments are `SimOptions` fields; `clock` drives order progress. For tests:
    `book` (orders, balance, `creations_by_link()`), `counters`, `in_flight`, `max_in_flight`;
    `dialect` (a `sim.dialect.Dialect`) may be replaced at any time.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, **options: Any) -> None:
        self.options = o = msgspec.convert(options, SimOptions)
        self.host, self.port, self.faults, self.dialect = o.host, o.port, o.faults, o.dialect
        self.key = o.key or secrets.token_hex(16)
        self.book = SimBook(
            key=self.key, services=o.services, complete_after=o.complete_after,
            partial_ratio=o.partial_ratio, balance=o.balance, currency=o.currency,
            honour_idempotency=o.honour_idempotency, seed=o.seed, clock=clock,
        )  # fmt: skip
        self.counters = self.book.counters  # one Counter: requests, actions, faults, orders
        self._rng = random.Random(o.seed)
        self.in_flight = self.max_in_flight = 0
        self._server: asyncio.Server | None = None
        self._writers: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}  # open connections

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/api/v2"

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            # Abort rather than cancel: a cancelled stream callback is logged as an error, an
            # aborted connection just ends its handler (EOF or ConnectionError).
            for writer in self._writers.values():
                writer.transport.abort()
            await asyncio.gather(*self._writers, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    # -- HTTP ---------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._writers[task] = writer
        peer = writer.get_extra_info("peername")
        try:
            while request := await _read_request(reader):
                method, target, headers, body = request
                answer = await self._answer(method, target, headers, body, peer, reader)
                if answer is None:
                    writer.transport.abort()
                    return
                close = headers.get("connection", "").lower() == "close" or answer[0] == 411
                writer.write(_render(*answer, close))
                await writer.drain()
                if close:
                    break
        except (
            ConnectionError,
            ValueError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass
        except Exception:
            log.exception("simulator connection failed")
        finally:
            del self._writers[task]
            writer.close()

    async def _answer(
        self, method: str, target: str, headers: dict[str, str], body: bytes, peer: Any,
        reader: asyncio.StreamReader,
    ) -> SimResponse:  # fmt: skip
        path, _, query = target.partition("?")
        if path.startswith("/_sim/"):
            return self._control(method, path, body, peer)
        if path not in ("/api/v2", "/api/v2/"):
            return _json(404, {"error": "Not found"})
        if method != "POST":
            return _json(405, {"error": "Method not allowed"})
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return _json(411, {"error": "Content-Length required"})
        try:
            fields = dict(parse_qsl(query, keep_blank_values=True))
            fields.update(_decode_fields(headers.get("content-type", ""), body))
        except ValueError:
            return _json(400, {"error": "Malformed request body"})
        if "idempotency-key" in headers:
            fields["idempotency_key"] = headers["idempotency-key"]
        self.counters["requests"] += 1
        self.counters[f"action.{fields.get('action', '')}"] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._api(fields, reader)
        finally:
            self.in_flight -= 1

    async def _api(self, fields: dict[str, str], reader: asyncio.StreamReader) -> SimResponse:
        faults = self.faults
        if faults.latency_ms > 0:
            await asyncio.sleep(faults.latency_ms / 1000)
        fault = faults.force
        if fault is None and faults.kinds and self._rng.random() < faults.fail_ratio:
            fault = self._rng.choice(faults.kinds)
        if fault == "funds" and fields.get("action") != "add":
            fault = None
        if fault is None or (fault != "funds" and self._rng.random() < faults.after_ratio):
            answer = _json(*self.dialect.render(fields, *self.book.act(fields)))
            if fault is None:
                return answer
            self.counters[f"fault_after.{fields.get('action', '')}"] += 1
        self.counters[f"fault.{fault}"] += 1
        if fault == "timeout":  # hang until the client gives up (closes) or hang_seconds pass
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.read(1 << 16), self.options.hang_seconds)
            return None
        return None if fault == "drop" else FAULT_ANSWERS[fault]

    def _control(self, method: str, path: str, body: bytes, peer: Any) -> SimResponse:
        if not peer or not ipaddress.ip_address(peer[0]).is_loopback:
            return _json(404, {"error": "Not found"})
        if path == "/_sim/stats":
            return _json(200, {
                "counters": self.counters, "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight, "orders": len(self.book.orders),
                "balance": f"{self.book.balance:f}",
            })  # fmt: skip
        if path != "/_sim/faults":
            return _json(404, {"error": "Not found"})
        if method == "POST":
            try:
                changes = orjson.loads(body or b"{}")
                self.faults = msgspec.convert(
                    {**msgspec.to_builtins(self.faults), **changes}, Faults
                )
            except (orjson.JSONDecodeError, TypeError, msgspec.ValidationError) as exc:
                return _json(400, {"error": str(exc)})
        return _json(200, msgspec.to_builtins(self.faults))

    # -- API v2 -------------------------------------------------------------------------------


def _decode_fields(content_type: str, body: bytes) -> dict[str, str]:
    """Form or JSON body -> text fields; ValueError (incl. JSON and UTF-8 errors) if malformed."""
    if "json" in content_type.lower():
        data = orjson.loads(body) if body else {}
        if not isinstance(data, dict):
            raise ValueError("not an object")
        return {k: v if isinstance(v, str) else orjson.dumps(v).decode() for k, v in data.items()}
    return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))


async def _read_request(
    reader: asyncio.StreamReader,
) -> tuple[str, str, dict[str, str], bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None  # the client closed between requests
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length") or 0)
    if not 0 <= length <= MAX_BODY:
        raise ConnectionError("body too large")
    return method, target, headers, await reader.readexactly(length)


def _render(status: int, content_type: str, body: bytes, close: bool) -> bytes:
    connection = "close" if close else "keep-alive"
    return (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: {connection}\r\n\r\n"
    ).encode() + body


# -- command line ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `panelsrv provider sim`, added to the caller's (sub)parser."""
    add = parser.add_argument
    add("--host", default="127.0.0.1")
    add("--port", type=int, default=9100)
    add("--key", default=None, help="the API key to accept (default: random, printed)")
    add("--complete-after", type=float, default=30.0, metavar="SECONDS")
    add("--partial-ratio", type=float, default=0.1)
    add("--latency-ms", type=float, default=0.0)
    add("--fail-ratio", type=float, default=0.0)
    add("--fault-kinds", default=",".join(FAULT_KINDS), help="comma list of kinds to draw")
    add("--services", type=int, default=20)
    add("--balance", default="1000000")
    add("--seed", type=int, default=None)
    dialect = '\'{"statuses": {"Completed": "completed"}, "envelope": "data", "batch": "keyed"}\''
    add(
        "--dialect",
        default="{}",
        metavar="JSON",
        help=f"answer as other panels do, e.g. {dialect} (fields: panelsrv/sim/dialect.py)",
    )
    add("--json", action="store_true", help="print the URL and key as one JSON object")


def simulator_from(options: argparse.Namespace) -> Simulator:
    """A Simulator from `add_arguments`' options; ValueError names a bad one."""
    try:
        faults = msgspec.convert({
            "latency_ms": options.latency_ms, "fail_ratio": options.fail_ratio,
            "kinds": [k.strip() for k in options.fault_kinds.split(",") if k.strip()],
        }, Faults)  # fmt: skip
        return Simulator(
            host=options.host, port=options.port, key=options.key, services=options.services,
            complete_after=options.complete_after, partial_ratio=options.partial_ratio,
            balance=options.balance, faults=faults, seed=options.seed,
            dialect=msgspec.json.decode(options.dialect),
        )  # fmt: skip
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ValueError(str(exc)) from None


async def serve(sim: Simulator, json_out: bool = False) -> None:
    """Run until SIGINT/SIGTERM; first print where to reach it."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with sim:
        control = sim.url.replace("/api/v2", "/_sim/faults")
        services = len(sim.book.services)
        info = {"url": sim.url, "key": sim.key, "services": services, "control": control}
        human = f"provider sim on {sim.url} key={sim.key} (faults: POST {control})"
        print(orjson.dumps(info).decode() if json_out else human, flush=True)
        await stop.wait()


def run_sim(options: argparse.Namespace) -> int:
    """`panelsrv provider sim`: 0 after SIGINT/SIGTERM, 2 on bad options, 1 if it cannot listen."""
    try:
        sim = simulator_from(options)
    except ValueError as exc:
        print(f"panelsrv provider sim: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(sim, options.json))
    except OSError as exc:
        print(f"panelsrv provider sim: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="panelsrv provider sim")
    add_arguments(parser)
    return run_sim(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
