"""The API v2 client against the simulator (and a canned upstream) over real loopback sockets."""

from __future__ import annotations

import asyncio
import socket
import time
from decimal import Decimal
from urllib.parse import parse_qsl

import aiohttp
import orjson
import pytest

from panelsrv.client.answers import (
    MISSING,
    ErrorKind,
    ItemError,
    OrderStatus,
    ProviderError,
    ProviderUnavailable,
)
from panelsrv.sim.provider import FAULT_KINDS, Faults, Simulator
from panelsrv.worker.providers import CircuitOpen, Provider
from tests.kit.waiting import until


class Canned:
    """A loopback upstream that records each request and plays back prepared answers."""

    def __init__(self, *answers: tuple[int, str, bytes] | tuple[int, str, bytes, str]) -> None:
        self.answers = list(answers)  # (status, content type, body[, more header lines])
        self.requests: list[tuple[dict[str, str], dict[str, str]]] = []  # (headers, form)

    async def __aenter__(self) -> Canned:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/api/v2"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                lines = head.decode().split("\r\n")[1:]
                headers = {
                    k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines if x)
                }
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                self.requests.append((headers, dict(parse_qsl(body.decode()))))
                status, ctype, payload, *more = self.answers.pop(0)
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nRetry-After: 2\r\n"
                    f"{''.join(more)}Content-Length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def ok(obj: object) -> tuple[int, str, bytes]:
    return 200, "application/json", orjson.dumps(obj)


async def test_redirects_and_oversized_answers_are_unavailable():
    big = ok([{"service": i, "name": "x" * 100} for i in range(100)])
    up = Canned((302, "text/plain", b""), big)
    async with up, Provider(up.url, "K", max_answer_bytes=4096) as p:
        with pytest.raises(ProviderUnavailable) as redirected:
            await p.services()
        assert redirected.value.reason == "HTTP 302"
        with pytest.raises(ProviderUnavailable) as oversized:
            await p.services()
        assert oversized.value.reason == "answer too large"


async def test_every_call_shape_against_the_simulator():
    async with Simulator(complete_after=60, seed=3) as sim, Provider(sim.url, sim.key) as p:
        services = await p.services()
        assert len(services) == 20 and services[0].service == "1"
        assert {s.type for s in services} >= {"default", "Package", "Custom Comments"}

        first = await p.add({"service": 1, "link": "https://x.test/a", "quantity": 100})
        comments = [f"nice {i}" for i in range(12)]
        second = await p.add({"service": 4, "link": "https://x.test/b", "comments": comments})
        status = await p.status(second)
        assert status.status == "Pending" and status.remains == 12  # comments went as lines
        assert status.currency == "USD" and isinstance(status.start_count, int)

        many = await p.multi_status([first, second, "424242"])
        assert many[first] == await p.status(first)
        assert many["424242"] == ItemError("Incorrect order ID")

        cancels = await p.cancel([first, "424242"])
        assert cancels == {first: True, "424242": ItemError("Incorrect order ID")}
        assert (await p.status(first)).status == "Canceled"

        with pytest.raises(ProviderError) as caught:  # Pending: nothing to refill yet
            await p.refill(second)
        assert caught.value.kind is ErrorKind.REJECTED
        refills = await p.multi_refill([second, "424242"])
        assert refills == {
            second: ItemError("Refill is not available"),
            "424242": ItemError("Incorrect order ID"),
        }
        assert await p.refill_status(["1"]) == {"1": ItemError("Refill not found")}

        balance = await p.balance()
        assert balance.currency == "USD"
        assert balance.balance == Decimal(1_000_000) - sim.book.orders[int(second)].charge
        with pytest.raises(ProviderError):
            await p.status("424242")
        assert sim.counters["requests"] == p.stats.calls == p.stats.ok + p.stats.errors


async def test_add_is_a_form_post_like_a_reseller_sdk():
    async with Canned(ok({"order": 8842}), ok({"order": "8843"})) as up, Provider(up.url, "K") as p:
        fields = {
            "service": 12, "link": "https://x.test/p", "quantity": 1000, "runs": 5,
            "interval": 30, "usernames": ["a", "b"], "answer_number": 2, "dripfeed": True,
            "expiry": None,
        }  # fmt: skip
        assert await p.add(fields, idempotency_key="order-1") == "8842"
        assert await p.add({"service": 1, "link": "l", "quantity": 10}) == "8843"
        with pytest.raises(ValueError):
            await p.add({"key": "other"})
    headers, form = up.requests[0]
    assert headers["content-type"] == "application/x-www-form-urlencoded"
    assert headers["idempotency-key"] == "order-1"
    assert form == {
        "key": "K", "action": "add", "service": "12", "link": "https://x.test/p",
        "quantity": "1000", "runs": "5", "interval": "30", "usernames": "a\nb",
        "answer_number": "2", "dripfeed": "1",
    }  # fmt: skip
    assert "idempotency-key" not in up.requests[1][0]


async def test_answers_with_numbers_variants_and_errors_from_other_panels():
    answers = [
        ok({"1": {"charge": 0.45, "start_count": 14523, "status": "Processing", "remains": "10"},
            "2": {"status": "Cancelled", "remains": ""}}),
        ok({"error": "You have active order with this link. Please wait until order is done."}),
        (429, "application/json", b'{"error": "Too many requests"}'),
        (200, "application/json", b'{"status": "Completed", "start_count": "1e999999"}'),
        ok([{"order": 5, "refill": 71}, {"order": 6, "refill": {"error": "Refill disabled"}}]),
    ]  # fmt: skip
    async with Canned(*answers) as up, Provider(up.url, "K") as p:
        got = await p.multi_status([1, 2, 3])
        assert got == {
            "1": OrderStatus(status="In progress", start_count=14523, remains=10,
                             charge=Decimal("0.45")),
            "2": OrderStatus(status="Canceled"),
            "3": ItemError(MISSING),
        }  # fmt: skip
        with pytest.raises(ProviderError) as caught:
            await p.add({"service": 1, "link": "l", "quantity": 1})
        assert caught.value.kind is ErrorKind.ACTIVE_LINK and caught.value.hold
        with pytest.raises(ProviderUnavailable) as limited:
            await p.status(1)
        assert not limited.value.maybe_sent and limited.value.retry_after == 2.0
        # A cosmetic number it cannot use is unknown; the status it came with still counts.
        assert await p.status(1) == OrderStatus(status="Completed")
        assert await p.multi_refill([5, 6]) == {"5": "71", "6": ItemError("Refill disabled")}
    assert up.requests[0][1] == {"key": "K", "action": "status", "orders": "1,2,3"}
    assert up.requests[4][1] == {"key": "K", "action": "refill", "orders": "5,6"}


async def test_multi_status_asks_for_a_hundred_ids_in_one_call():
    async with Simulator(complete_after=60) as sim, Provider(sim.url, sim.key) as p:
        ids = [await p.add({"service": 1, "link": f"l{i}", "quantity": 10}) for i in range(100)]
        before = sim.counters["action.status"]
        got = await p.multi_status(ids)
        assert sim.counters["action.status"] == before + 1
        assert list(got) == ids
        assert all(isinstance(s, OrderStatus) and s.status == "Pending" for s in got.values())
        with pytest.raises(ValueError):
            await p.multi_status([*ids, "101"])


async def test_a_hanging_provider_times_out_within_the_deadline():
    async with Simulator(faults=Faults(force="timeout")) as sim:
        async with Provider(sim.url, sim.key, timeout=0.3, breaker_threshold=100) as p:
            for call in (p.balance(), p.add({"service": 1, "link": "l", "quantity": 10})):
                started = time.monotonic()
                with pytest.raises(ProviderUnavailable) as caught:
                    await call
                assert 0.25 <= time.monotonic() - started < 1.0
                assert caught.value.maybe_sent
        assert sim.counters["fault.timeout"] == 2


@pytest.mark.parametrize("kind", ["5xx", "html", "html502", "garbage", "shape", "drop"])
async def test_broken_answers_are_unavailable_never_a_crash(kind):
    async with Simulator(faults=Faults(force=kind)) as sim, Provider(sim.url, sim.key) as p:
        for call in (p.services(), p.balance(), p.status(1), p.multi_status([1]), p.cancel([1])):
            with pytest.raises(ProviderUnavailable) as caught:
                await call
            assert caught.value.maybe_sent
        assert p.stats.unavailable == 5


async def test_not_enough_funds_is_a_hold_whether_200_or_402():
    sim = Simulator(faults=Faults(force="funds"), balance="0.01")
    async with sim, Provider(sim.url, sim.key) as p:
        order = {"service": 1, "link": "l", "quantity": 100}  # 100 * 0.05 / 1000 = 0.005
        with pytest.raises(ProviderError) as legacy:
            await p.add(order)
        assert legacy.value.http_status == 200
        sim.faults = Faults()
        assert await p.add(order) == "1"
        await p.add(order)
        with pytest.raises(ProviderError) as spent:
            await p.add(order)
        assert spent.value.http_status == 402
        for caught in (legacy, spent):
            assert caught.value.kind is ErrorKind.NO_FUNDS and caught.value.hold
        assert len(sim.book.orders) == 2 and p.circuit_state == "closed"


async def test_a_refused_connection_was_certainly_not_sent():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        async with Provider(f"http://127.0.0.1:{port}/api/v2", "K", timeout=2) as p:
            with pytest.raises(ProviderUnavailable) as caught:
                await p.add({"service": 1, "link": "l", "quantity": 10})
    assert not caught.value.maybe_sent


async def test_a_dropped_add_is_not_resent_by_the_http_client():
    """aiohttp must not silently retry a POST on a dropped keep-alive connection."""
    async with Simulator() as sim, Provider(sim.url, sim.key) as p:
        await p.balance()  # warm a keep-alive connection
        sim.faults = Faults(force="drop", after_ratio=1.0)
        with pytest.raises(ProviderUnavailable) as caught:
            await p.add({"service": 1, "link": "l", "quantity": 10}, idempotency_key="o-1")
        assert caught.value.maybe_sent
        assert sim.counters["action.add"] == 1 and sim.counters["orders_created"] == 1
        sim.faults = Faults()
        assert await p.add({"service": 1, "link": "l", "quantity": 10}, "o-1") == "1"
        assert sim.counters["orders_created"] == 1 and sim.counters["idempotent_replays"] == 1


async def test_circuit_opens_after_repeated_failures_then_half_opens():
    now = [0.0]
    sim = Simulator(faults=Faults(force="5xx"))
    breaker = {"breaker_threshold": 3, "breaker_cooldown": 10, "clock": lambda: now[0]}
    async with sim, Provider(sim.url, sim.key, **breaker) as p:
        for _ in range(3):
            with pytest.raises(ProviderUnavailable):
                await p.balance()
        assert p.circuit_state == "open" and sim.counters["requests"] == 3
        with pytest.raises(CircuitOpen) as caught:
            await p.balance()
        assert not caught.value.maybe_sent and caught.value.retry_after == pytest.approx(10)
        assert sim.counters["requests"] == 3  # refused locally

        now[0] = 10.0  # cooled down: one probe goes, and fails -> open again
        with pytest.raises(ProviderUnavailable) as caught:
            await p.balance()
        assert not isinstance(caught.value, CircuitOpen) and p.circuit_state == "open"

        now[0] = 20.0
        sim.faults = Faults(latency_ms=200)
        probe = asyncio.ensure_future(p.balance())
        await until(lambda: p.circuit_state == "half-open")  # the probe is in flight
        with pytest.raises(CircuitOpen):  # only the probe goes while half-open
            await p.balance()
        assert (await probe).currency == "USD"
        assert p.circuit_state == "closed"
        assert p.snapshot()["circuit_opens"] == 2 and p.stats.circuit_rejects == 2


async def test_provider_errors_do_not_trip_the_circuit():
    async with Simulator() as sim, Provider(sim.url, "wrong", breaker_threshold=2) as p:
        for _ in range(4):
            with pytest.raises(ProviderError) as caught:
                await p.balance()
            assert caught.value.kind is ErrorKind.AUTH
        assert p.circuit_state == "closed"


async def test_concurrency_cap_holds_at_the_provider():
    async with Simulator(faults=Faults(latency_ms=100)) as sim:
        async with Provider(sim.url, sim.key, max_concurrency=3) as p:
            await asyncio.gather(*(p.balance() for _ in range(12)))
        assert sim.max_in_flight == 3


async def test_rate_limit_spaces_calls():
    async with Simulator() as sim, Provider(sim.url, sim.key, rate_per_sec=20, rate_burst=1) as p:
        started = time.monotonic()
        await asyncio.gather(*(p.balance() for _ in range(11)))
        assert time.monotonic() - started >= 0.49  # 10 intervals of 50 ms after the first


async def test_idempotency_key_returns_the_same_order():
    async with Simulator() as sim, Provider(sim.url, sim.key) as p:
        order = {"service": 1, "link": "https://x.test/same", "quantity": 10}
        first = await p.add(order, idempotency_key="panel-order-7")
        assert await p.add(order, idempotency_key="panel-order-7") == first
        assert await p.add(order, idempotency_key="panel-order-8") != first
        with pytest.raises(ProviderError) as caught:  # same key, other order: refused
            await p.add({**order, "quantity": 20}, idempotency_key="panel-order-7")
        assert caught.value.http_status == 400 and not caught.value.hold
        assert sim.counters["orders_created"] == 2 and sim.counters["idempotent_replays"] == 1
    async with Simulator(honour_idempotency=False) as sim, Provider(sim.url, sim.key) as p:
        assert await p.add(order, "k") != await p.add(order, "k")
        assert sim.book.creations_by_link() == {"https://x.test/same": 2}


async def test_orders_progress_to_completed_or_partial():
    now = [0.0]  # the simulator's clock, moved by hand: no sleeping, no flakiness
    sim = Simulator(complete_after=0.5, partial_ratio=0.5, seed=7, clock=lambda: now[0])
    async with sim, Provider(sim.url, sim.key) as p:
        ids = [await p.add({"service": 1, "link": f"l{i}", "quantity": 1000}) for i in range(20)]
        assert {s.status for s in (await p.multi_status(ids)).values()} == {"Pending"}
        now[0] = 0.35
        middle = await p.multi_status(ids)
        assert {s.status for s in middle.values()} == {"In progress"}
        now[0] = 0.5
        done = await p.multi_status(ids)
        assert {s.status for s in done.values()} == {"Completed", "Partial"}
        for order_id, s in done.items():
            assert isinstance(s, OrderStatus) and isinstance(middle[order_id], OrderStatus)
            assert s.remains == sim.book.orders[int(order_id)].final_remains
            assert 1000 > middle[order_id].remains >= s.remains
            if s.status == "Partial":
                assert 0 < s.remains < 1000
        refill = await p.refill(ids[0])
        assert await p.refill_status([refill]) == {refill: "Pending"}
        now[0] = 1.0
        assert await p.refill_status([refill]) == {refill: "Completed"}


async def test_orders_complete_in_real_time():
    async with Simulator(complete_after=0.3) as sim, Provider(sim.url, sim.key) as p:
        order = await p.add({"service": 1, "link": "l", "quantity": 100})

        async def done() -> bool:
            return (await p.status(order)).status in ("Completed", "Partial")

        await until(done, 5.0)


async def test_a_shared_session_is_not_closed_by_the_provider():
    async with Simulator() as sim, aiohttp.ClientSession() as session:
        async with Provider(sim.url, sim.key, session=session) as p:
            await p.balance()
        assert not session.closed


def test_every_fault_kind_is_covered():
    covered = {"timeout", "funds", "5xx", "html", "html502", "garbage", "shape", "drop"}
    assert set(FAULT_KINDS) == covered
