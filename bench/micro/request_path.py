"""Micro-benchmark of panelsrv's whole request path in one process, without sockets (not a test).

    .venv/bin/python -m bench.micro.request_path --database-url postgresql://.../panelsrv_bench

Needs the bench dataset (`make bench-quick` once builds it and bench/.data/users.tsv). Starts a
real `App` (pool, catalog, key cache, limits as configured for the bench), then feeds prebuilt
request bytes to one `HttpProtocol` whose transport only counts what it is given, and times
the Python work per request: parse, limits, decode, key cache, action, render, metrics. The
write syscall and the event loop are not in it, which is what makes it steady enough (best of
5) to compare two versions of the code on a noisy machine, where `make bench` is not.
Scenarios that answer from memory (services, reject_key, reject_ip) are fed back to back and
timed by the wall clock; those that query PostgreSQL (balance, status, status100) one at a
time, awaiting each answer, and timed by this process's CPU time (PostgreSQL's is not in it;
`--wall` times the whole round trip instead). Prints µs per request; `--profile` adds a
cProfile of one round.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import pstats
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

from panelsrv.config import Config
from panelsrv.http.protocol import READY, HttpProtocol
from panelsrv.procs import Slot
from panelsrv.server import App

DATA = Path(__file__).resolve().parent.parent / ".data"
N = 40_000  # distinct client addresses, as in the bench
TURN = 200  # requests fed between loop turns (`feed_now`)


class Sink:
    """The transport: takes every write, counts the bytes."""

    def __init__(self) -> None:
        self.written = 0
        self.last = b""
        self.answered = asyncio.Event()  # set by every write: `feed_awaiting` waits on it

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.written += len(data)
        self.last = data
        self.answered.set()

    def writelines(self, parts: tuple[bytes, ...]) -> None:
        self.written += sum(map(len, parts))
        self.last = parts[0]
        self.answered.set()

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def can_write_eof(self) -> bool:
        return True

    def is_closing(self) -> bool:
        return False

    def close(self) -> None: ...

    def abort(self) -> None: ...

    def write_eof(self) -> None: ...


@dataclass
class Served:
    """What `served` yields: the connection, its transport, and the requests of every scenario
    (answered from memory; answered by PostgreSQL)."""

    proto: HttpProtocol
    sink: Sink
    memory: dict[str, list[bytes]]
    db: dict[str, list[bytes]]


def request(host: str, ip: str, body: bytes) -> bytes:
    return (
        b"POST /api/v2 HTTP/1.1\r\nHost: %s\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"X-Forwarded-For: %s\r\nContent-Length: %d\r\n\r\n%s"
        % (host.encode(), ip.encode(), len(body), body)
    )


def db_scenarios(
    users: list[tuple[str, str]], resellers: list[list[str]]
) -> dict[str, list[bytes]]:
    """Requests that query PostgreSQL: balance of 2,000 users, the status of one order and of
    100 for 1,000 resellers (bench/.data/resellers.tsv: key, host, user, ids), twice; `add`
    (an order per request, 2 per user and round: within the 30 orders/min ceiling) and the
    same under an idempotency key per request (the first places, the rest replay); a cancel of
    each reseller's 100 orders (after the warm-up round: accepted again or refused, no change)
    and the same under one key per reseller (replays of its stored answer)."""
    balance = [b"key=%s&action=balance" % key.encode() for key, _ in users]
    one = [
        b"key=%s&action=status&order=%s" % (r[0].encode(), r[3].split(",")[n % 100].encode())
        for n, r in enumerate(resellers)
    ]
    many = [b"key=%s&action=status&orders=%s" % (r[0].encode(), r[3].encode()) for r in resellers]
    add = [
        b"key=%s&action=add&service=%d&link=https://instagram.com/p/b%d&quantity=100"
        % (key.encode(), i % 166 + 1, i)
        for i, (key, _) in enumerate(users)
    ]
    cancel = [b"key=%s&action=cancel&orders=%s" % (r[0].encode(), r[3].encode()) for r in resellers]
    replay = b"&idempotency_key=bench-%s-%d"

    def rounds(hosts: list[str], net: int, bodies: list[bytes], key: bytes = b"") -> list[bytes]:
        """2,000 requests from 10.<net>.x.y, the i-th with bodies[i % 1000] (and an
        idempotency key per body when `key` names the scenario)."""
        return [
            request(
                hosts[i % len(hosts)],
                f"10.{net}.{i // 256 % 256}.{i % 256}",
                bodies[i % 1000] + (replay % (key, i % 1000) if key else b""),
            )
            for i in range(2000)
        ]

    user_hosts = [host for _, host in users]
    reseller_hosts = [r[1] for r in resellers[:1000]]
    return {
        "add": rounds(user_hosts[:1000], 4, add),
        "add_replay": rounds(user_hosts[:1000], 5, add, b"add"),
        "cancel100": rounds(reseller_hosts, 6, cancel),
        "cancel100_replay": rounds(reseller_hosts, 7, cancel, b"cancel"),
        "balance": rounds(user_hosts, 1, balance),
        "status": rounds(reseller_hosts, 3, one),
        "status100": rounds(reseller_hosts, 2, many),
    }


def scenarios(users: list[tuple[str, str]]) -> dict[str, list[bytes]]:
    ips = [f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}" for i in range(N)]
    bad = b"key=psk_%s&action=balance" % (b"x" * 47)
    services = [b"key=%s&action=services" % key.encode() for key, _ in users]
    host0 = users[0][1]
    return {
        "services": [
            request(users[i % len(users)][1], ips[i], services[i % len(users)]) for i in range(N)
        ],
        "reject_key": [request("panel1.bench", ips[i], bad) for i in range(N)],
        # one address with a valid key: its first 100 are served, the rest refused
        "reject_ip": [request(host0, "11.0.0.1", services[0])] * N,
    }


async def feed_now(proto: HttpProtocol, reqs: list[bytes]) -> None:
    """Back to back: for requests answered from memory. One loop turn per `TURN` requests,
    so the invalidation listener's pings are answered and the key cache stays trusted (it
    trusts itself about a second past the last answered ping)."""
    for i, data in enumerate(reqs, 1):
        proto.data_received(data)
        if not i % TURN:
            await asyncio.sleep(0)


async def feed_awaiting(proto: HttpProtocol, reqs: list[bytes]) -> None:
    """One at a time, each answered before the next: for requests that query PostgreSQL.
    Waits on the sink rather than polling, so this process's CPU time is the requests' own
    (a polling loop's turns grow with PostgreSQL's latency, which a loaded machine varies)."""
    sink: Sink = proto._transport  # type: ignore[assignment]
    for data in reqs:
        sink.answered.clear()
        proto.data_received(data)
        await sink.answered.wait()


async def measure(
    proto: HttpProtocol,
    reqs: list[bytes],
    feeder: Callable[[HttpProtocol, list[bytes]], Awaitable[None]],
    clock: Callable[[], float],
    profile: bool,
) -> list[float]:
    """µs per request of 5 rounds by `clock`; then one round under cProfile if asked."""
    runs = []
    for _ in range(5):
        start = clock()
        await feeder(proto, reqs)
        runs.append((clock() - start) / len(reqs) * 1e6)
        assert proto.state == READY, f"the connection is {proto.state}"
        await asyncio.sleep(0.2)  # the guard's sweeps and syncs run between rounds
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        await feeder(proto, reqs)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    return runs


def report(name: str, runs: list[float], unit: str) -> None:
    best, median = min(runs), sorted(runs)[2]
    print(f"{name:12s} {best:6.2f} {unit} (best of 5; median {median:.2f})")


@contextlib.asynccontextmanager
async def served(database_url: str, **settings: Any) -> AsyncIterator[Served]:
    """A started `App` on the bench dataset (`settings` over the bench's config), one
    `HttpProtocol` on a `Sink`, every key of the `services` scenario resolved once; the App
    stopped on leaving."""
    users = []
    with open(DATA / "users.tsv") as f:
        for line in f:
            key, host = line.split("\t")[:2]
            users.append((key, host))
            if len(users) >= 1000:
                break
    with open(DATA / "resellers.tsv") as f:
        resellers = [line.rstrip("\n").split("\t") for line in f]
    cfg = Config(trusted_proxies=["127.0.0.1"], port=0, ops_port=0, **settings)
    app = App(cfg, database_url, Slot(0, 1, None))
    await app.start()
    try:
        assert app.http is not None
        proto = HttpProtocol(app.http)
        sink = Sink()
        proto.connection_made(sink)  # type: ignore[arg-type]
        memory = scenarios(users)
        warm = memory["services"][:1000]
        # Each key resolved once the store is open (a process that did not reach it within
        # START_WAIT answers 503 from memory until it does) and the notification listener has
        # connected (which resets the key cache) and vouched for the cache (which caches
        # nothing before): until the first request, repeated, is served from memory (at once,
        # in data_received).
        for _ in range(60):
            await feed_awaiting(proto, warm)
            sink.answered.clear()
            proto.data_received(warm[0])
            if sink.answered.is_set() and sink.last.startswith(b"HTTP/1.1 200"):
                break
            await sink.answered.wait()
            await asyncio.sleep(0.5)
        else:
            raise RuntimeError(f"no request served from memory in 60 tries: {sink.last[:300]!r}")
        yield Served(proto, sink, memory, db_scenarios(users, resellers))
    finally:
        await app.stop(1.0)


async def main(args: argparse.Namespace) -> None:
    only = args.only.split(",") if args.only else None
    async with served(args.database_url) as path:
        for name, reqs in path.memory.items():
            if only is None or name in only:
                runs = await measure(path.proto, reqs, feed_now, time.perf_counter, args.profile)
                assert path.proto.state == READY, f"{name}: a request went to the database"
                report(name, runs, "µs/request")
        for name, reqs in path.db.items():
            if only is None or name in only:
                await feed_awaiting(path.proto, reqs)  # warm: keys resolved, statements prepared
                clock = time.perf_counter if args.wall else time.process_time
                runs = await measure(path.proto, reqs, feed_awaiting, clock, args.profile)
                assert path.sink.last.startswith(b"HTTP/1.1 200"), path.sink.last[:200]
                report(name, runs, "µs/request, wall" if args.wall else "µs/request of CPU")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--only", default="", help="scenarios to run, comma-separated")
    parser.add_argument("--profile", action="store_true", help="cProfile one round of each")
    parser.add_argument(
        "--wall",
        action="store_true",
        help="time the PostgreSQL scenarios by the wall clock (the round trip, PostgreSQL's work"
        " included) instead of this process's CPU time",
    )
    uvloop.run(main(parser.parse_args()))
