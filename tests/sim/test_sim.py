"""The provider simulator on its own: raw bytes and plain HTTP over loopback, and its CLI."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

import aiohttp
import orjson
import pytest

from panelsrv.sim.dialect import Dialect
from panelsrv.sim.provider import Faults, Simulator, add_arguments, simulator_from


async def post(session: aiohttp.ClientSession, url: str, **kw: object) -> tuple[int, object]:
    async with session.post(url, **kw) as resp:  # type: ignore[arg-type]
        return resp.status, await resp.json(content_type=None)


async def test_form_and_json_bodies_and_errors():
    async with Simulator(complete_after=60) as sim, aiohttp.ClientSession() as s:
        key = sim.key
        assert await post(s, sim.url, data={"key": key, "action": "balance"}) == (
            200,
            {"balance": "1000000", "currency": "USD"},
        )
        order = {"key": key, "action": "add", "service": 1, "link": "x", "quantity": 10}
        assert await post(s, sim.url, json=order) == (200, {"order": 1})
        assert await post(s, sim.url + "/?action=status&order=1", data={"key": key}) == (
            200,
            {"charge": "0.0005", "start_count": str(sim.book.orders[1].start_count),
             "status": "Pending", "remains": "10", "currency": "USD"},
        )  # fmt: skip
        assert await post(s, sim.url, data={"key": "nope", "action": "balance"}) == (
            401,
            {"error": "Invalid API key"},
        )
        assert (await post(s, sim.url, data={"key": key, "action": "fly"}))[0] == 400
        bad_quantity = {**order, "quantity": 5}
        assert await post(s, sim.url, data=bad_quantity) == (
            400,
            {"error": "quantity: must be between 10 and 10000"},
        )
        assert (await post(s, sim.url, data={**order, "service": 999}))[1] == {
            "error": "Incorrect service ID"
        }
        headers = {"Content-Type": "application/json"}
        assert (await post(s, sim.url, data=b"[1]", headers=headers))[0] == 400
        assert (await post(s, sim.url, data=b"\xff", headers={}))[0] == 400
        async with s.get(sim.url) as resp:
            assert resp.status == 405
        assert (await post(s, sim.url.replace("/api/v2", "/other"), data={}))[0] == 404
        too_many = {"key": key, "action": "status", "orders": ",".join(["1"] * 101)}
        assert await post(s, sim.url, data=too_many) == (
            400,
            {"error": "orders: between 1 and 100 ids"},
        )


async def test_cancel_only_pending_and_refill_only_finished():
    now = [0.0]
    sim = Simulator(complete_after=10, partial_ratio=0, clock=lambda: now[0])
    async with sim, aiohttp.ClientSession() as s:

        async def call(**fields: object) -> tuple[int, object]:
            return await post(s, sim.url, data={"key": sim.key, **fields})

        for i in range(3):
            await call(action="add", service=1, link=f"l{i}", quantity=1000)
        balance = sim.book.balance
        assert await call(action="cancel", order=1) == (200, {"cancel": 1})
        assert sim.book.balance == balance + sim.book.orders[1].charge
        now[0] = 5.0  # In progress: too late to cancel, too early to refill
        assert await call(action="cancel", orders="2,9") == (
            200,
            [{"order": 2, "cancel": {"error": "Order cannot be canceled"}},
             {"order": 9, "cancel": {"error": "Incorrect order ID"}}],
        )  # fmt: skip
        assert await call(action="refill", order=2) == (400, {"error": "Refill is not available"})
        now[0] = 10.0
        assert await call(action="refill", order=2) == (200, {"refill": 1})
        assert await call(action="refill", orders="1,3") == (
            200,
            [{"order": 1, "refill": {"error": "Refill is not available"}},  # canceled
             {"order": 3, "refill": 2}],
        )  # fmt: skip
        assert await call(action="refill_status", refill=1) == (200, {"status": "Pending"})
        now[0] = 20.0
        assert await call(action="refill_status", refills="1,2,3") == (
            200,
            [{"refill": 1, "status": "Completed"}, {"refill": 2, "status": "Completed"},
             {"refill": 3, "status": {"error": "Refill not found"}}],
        )  # fmt: skip


async def test_faults_switch_at_runtime_over_loopback_and_count():
    async with Simulator() as sim, aiohttp.ClientSession() as s:
        control = sim.url.replace("/api/v2", "/_sim/faults")
        status, faults = await post(s, control, json={"force": "5xx", "after_ratio": 1})
        assert status == 200 and faults["force"] == "5xx"  # type: ignore[index]
        async with s.post(sim.url, data={"key": sim.key, "action": "add", "service": 1,
                                         "link": "l", "quantity": 10}) as resp:  # fmt: skip
            assert resp.status == 500 and await resp.text() == "Internal Server Error"
        assert sim.counters["orders_created"] == 1  # struck after the order was made
        assert sim.counters["fault_after.add"] == 1
        assert (await post(s, control, json={"force": "earthquake"}))[0] == 400
        assert (await post(s, control, json={"force": None, "latency_ms": 1}))[1]["force"] is None  # type: ignore[index]
        async with s.get(sim.url.replace("/api/v2", "/_sim/stats")) as resp:
            stats = await resp.json()
        assert stats["counters"]["fault.5xx"] == 1 and stats["orders"] == 1


async def test_keep_alive_and_raw_requests():
    async with Simulator() as sim:
        reader, writer = await asyncio.open_connection(sim.host, sim.port)
        body = f"key={sim.key}&action=balance".encode()
        request = (
            b"POST /api/v2 HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded"
            b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        for _ in range(3):  # three answers on one connection
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"keep-alive" in head
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            assert orjson.loads(await reader.readexactly(length))["currency"] == "USD"
        writer.write(b"POST /api/v2 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 411") and b"Connection: close" in head
        writer.close()
        await writer.wait_closed()


def test_cli_options_build_a_simulator():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    sim = simulator_from(parser.parse_args(
        ["--port", "0", "--key", "K", "--complete-after", "2", "--partial-ratio", "0.5",
         "--latency-ms", "5", "--fail-ratio", "0.1", "--fault-kinds", "5xx,html", "--services", "3"]
    ))  # fmt: skip
    assert sim.key == "K" and len(sim.book.services) == 3 and sim.book.complete_after == 2
    assert sim.faults == Faults(latency_ms=5, fail_ratio=0.1, kinds=["5xx", "html"])
    with pytest.raises(ValueError):
        simulator_from(parser.parse_args(["--fault-kinds", "meteor"]))
    worded = simulator_from(parser.parse_args(["--dialect", '{"batch": "keyed", "ok": true}']))
    assert worded.dialect == Dialect(batch="keyed", ok=True)
    for bad in ('{"batch": "tree"}', '{"colour": 1}', "{"):
        with pytest.raises(ValueError):
            simulator_from(parser.parse_args(["--dialect", bad]))


async def test_cli_runs_until_sigterm():
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "panelsrv.sim.provider", "--port", "0", "--key", "K", "--json",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        info = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
        assert info["key"] == "K" and info["url"].startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as s:
            assert await post(s, info["url"], data={"key": "K", "action": "balance"}) == (
                200,
                {"balance": "1000000", "currency": "USD"},
            )
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
