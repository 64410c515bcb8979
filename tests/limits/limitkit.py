"""Helpers for the limits tests: clients from chosen loopback addresses, paced floods, metrics.

A test that needs "one client address" connects from its own 127.0.0.x (Linux routes the whole
127/8 to loopback). Only 127.0.0.1 is a trusted proxy by default, so any other source is an
ordinary client: refused at connection time while blocked, counted by its socket address.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import glob
import os
import secrets
from dataclasses import dataclass, field

import orjson

from tests.http.httpkit import Client, Response
from tests.kit.wire import connect, exchange, post

HARNESS_SOURCE = "127.0.0.1"  # the tests' own set-up traffic; kept on the allow-list


async def refused_on_connect(port: int, source: str, wait: float = 0.2) -> bool:
    """True when the server answers 429 to a connection that has sent nothing."""
    client = await connect(port, source)
    try:
        response = await client.final(wait)
    except TimeoutError:
        return False
    finally:
        await client.close()
    return response is not None and not refusal_problems(response, closes=True)


async def place(port: int, domain: str, key: str, service: int, source: str) -> tuple[int, object]:
    link = f"https://instagram.com/{secrets.token_hex(6)}"
    fields = {"key": key, "action": "add", "service": service, "link": link, "quantity": 100}
    r = await exchange(port, post(fields, host=domain), source=source)
    if r.status == 429:
        assert not refusal_problems(r, closes=False), r
        assert 1 <= int(r.headers["retry-after"]) <= 60
    return r.status, r.json()


def refusal_problems(response: Response, *, closes: bool) -> list[str]:
    """What is wrong with a 429 (empty when it is right): a blocked address's refusal
    `closes` the connection, every other 429 keeps it."""
    problems = []
    if response.status != 429:
        problems.append(f"status {response.status}")
    if (
        not response.headers.get("retry-after", "").isdigit()
        or int(response.headers["retry-after"]) < 1
    ):
        problems.append(f"Retry-After {response.headers.get('retry-after')!r}")
    if closes != (response.headers.get("connection") == "close"):
        problems.append("no Connection: close" if closes else "Connection: close")
    if not orjson.loads(response.body)["error"].startswith("Too many requests"):
        problems.append(f"body {response.body!r}")
    return problems


@dataclass
class Tally:
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    problems: list[str] = field(default_factory=list)
    lost: int = 0  # requests the server closed on without an answer
    elapsed: float = 0.0

    @property
    def answered(self) -> int:
        return sum(self.statuses.values())


async def flood(
    targets: list[int],
    request: bytes,
    total: int,
    seconds: float,
    *,
    lanes: int = 8,
    source: str = HARNESS_SOURCE,
) -> Tally:
    """`total` requests paced evenly over `seconds`, over `lanes` keep-alive connections
    (a closed connection is replaced), round-robin over the `targets` ports. Every 429 must be
    the IP bucket's keep-alive refusal (the only limit a flood of one valid request can hit).
    """
    loop = asyncio.get_running_loop()
    tally = Tally()
    issued = 0
    started = loop.time()

    async def lane(index: int) -> None:
        nonlocal issued
        port = targets[index % len(targets)]
        client: Client | None = None
        try:
            while issued < total:
                n = issued
                issued += 1
                delay = started + n * seconds / total - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if client is None:
                    client = await connect(port, source)
                response = None
                with contextlib.suppress(ConnectionError):
                    await client.send(request)
                    response = await client.final(5.0)
                if response is None:
                    tally.lost += 1
                else:
                    tally.statuses[response.status] += 1
                    if response.status != 200:
                        tally.problems += refusal_problems(response, closes=False)
                if response is None or response.headers.get("connection") == "close":
                    await client.close()
                    client = None
        finally:
            if client is not None:
                await client.close()

    await asyncio.gather(*(lane(i) for i in range(lanes)))
    tally.elapsed = loop.time() - started
    return tally


async def scrape(ops_port: int) -> dict[str, float]:
    """The ops listener's /metrics: unlabelled samples by name (labelled ones summed)."""
    client = await connect(ops_port)
    try:
        await client.send(b"GET /metrics HTTP/1.1\r\nHost: ops\r\nConnection: close\r\n\r\n")
        response = await client.final(5.0)
    finally:
        await client.close()
    assert response is not None and response.status == 200
    values: dict[str, float] = collections.defaultdict(float)
    for line in response.body.decode().splitlines():
        if line and not line.startswith("#"):
            sample, value = line.rsplit(" ", 1)
            values[sample.split("{", 1)[0]] += float(value)
            values[sample] = float(value)
    return values


def slot_metrics(run_dir: str) -> list[dict]:  # type: ignore[type-arg]
    """Each worker process's own metrics snapshot (the files the ops listener merges)."""
    snapshots = []
    for path in sorted(glob.glob(os.path.join(run_dir, "metrics-*.json"))):
        with open(path, "rb") as f:
            snapshots.append(orjson.loads(f.read()))
    return snapshots


def served_by_each(run_dir: str, action: str) -> list[float]:
    """How many `action` requests each worker process answered (flushed about once a second)."""
    counts = []
    for snap in slot_metrics(run_dir):
        samples = snap.get("panelsrv_http_requests_total", {}).get("samples", [])
        counts.append(sum(value for labels, value in samples if labels[0] == action))
    return counts


async def all_grew(run_dir: str, action: str, before: list[float], processes: int) -> bool:
    """Every one of `processes` workers has published more `action` answers than `before`."""
    after = served_by_each(run_dir, action)
    return len(after) == processes and all(a > b for a, b in zip(after, before, strict=False))


async def shared(ops_port: int, local: int, total: int) -> bool:
    """All `local` worker processes behind `ops_port` share their limits with `total` in all."""
    m = await scrape(ops_port)
    return (
        m.get("panelsrv_guard_shared_up") == local
        and m.get("panelsrv_guard_processes") == local * total
    )
