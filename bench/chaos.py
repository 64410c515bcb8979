"""`python -m bench.chaos [--seconds 360 | --cycles 1000]` (`make chaos`): the whole system under
faults, then the books checked; tests/chaos/test_chaos_short.py runs the same `Run` for 60 s.

What runs, all on 127.0.0.1 and all started (and stopped) here: a PostgreSQL server of its own
(bench/pgcluster.py), a Redis of its own when `redis-server` is installed, `panelsrv serve
--workers 2` and two `panelsrv worker`s against them, and a simulated provider (in this process)
that times out, answers 5xx or HTML, and loses answers, half of them after it created the order.
Clients place orders with idempotency keys and retry the *same* key on every answer that is not
definitive (a refused or reset connection, a timeout, 5xx, 409, 429), poll statuses, cancel
some orders and ask refills of completed ones; a probe opens a connection every 100 ms.
Meanwhile, every 2-5 s, one fault (a cycle), the kinds in rounds of a random order so that each
comes once in every len(kinds) cycles: SIGKILL an API process (one of two that listen), SIGKILL
a worker and start it again, restart PostgreSQL (`pg_ctl restart -m immediate`), SIGKILL Redis
and start it again. Each cycle ends when what it broke is back (both API processes listen, the
new worker's /readyz answers 200, a request succeeds, Redis answers PING): its recovery time
(for a database restart also the time from `select 1` working again to the API's first 200).

When the time (or the number of cycles) is up the faults stop, the provider heals, and the
system settles; then it checks (`problems`, each 0 or false when all is well) and prints (and
writes as JSON with --out): `panelsrv audit` clean; every acknowledged order exists exactly once,
as the order its key was answered with, and no link (one per intended order) has two orders;
the provider's own book has no link twice; no refund twice; each wallet equals its initial
funds minus its net charges (the charges less the refunds of its orders); no order or refill
left non-terminal without a reason (a job that is still retrying or held, with its error); no
answer but 200/400/402/409/429/503, every 503 with Retry-After, no hang; the first request after
each database restart, and every request sent once it was back, succeeded; no probe refused.
Figures: cycles by kind, requests, definitive answers, 5xx by status, action and error, answers
the provider lost after acting, probes, and the recovery times by kind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from bench.pgcluster import Cluster, until_answering
from bench.procs import Proc, free_port, listening_children
from panelsrv import money
from panelsrv.sim.provider import Faults, Simulator
from panelsrv.store import admin, db, keys

USERS = 20
FUNDS = "1000.00"
RATE = "1.00"  # per 1000: a 100..1000 order costs 0.10..1.00
HOST = "chaos.test"
API_PROCESSES = 2
NO_HANG = 10.0  # seconds: an answer later than this is a hang
BACK_WITHIN = 30.0  # seconds: what a cycle may take to recover before the run fails
PROVIDER_FAULTS = Faults(fail_ratio=0.05, kinds=["timeout", "5xx", "html", "drop"], after_ratio=0.5)
ALLOWED = {200, 400, 402, 409, 429, 503}
INDEFINITE = {409, 429, 500, 502, 503, 504}
ACTIVE = ("Pending", "In progress")


@dataclass
class Tally:
    requests: Counter[str] = field(default_factory=Counter)  # by action
    statuses: Counter[int] = field(default_factory=Counter)
    errors_5xx: Counter[str] = field(default_factory=Counter)  # "503 add: <error>"
    no_retry_after: int = 0  # 503s without a Retry-After header
    transport: Counter[str] = field(default_factory=Counter)  # refused, reset, hang
    faults: Counter[str] = field(default_factory=Counter)
    acked: dict[str, int] = field(default_factory=dict)  # idempotency key -> order id
    conflicts: list[str] = field(default_factory=list)  # a key answered with two orders
    probes: Counter[str] = field(default_factory=Counter)
    recoveries: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    first_after_db_back: Counter[str] = field(default_factory=Counter)  # its status, or no answer
    after_recovery_503: int = 0
    db_up_since: float = 0.0  # monotonic time the database last answered after a restart
    db_down: bool = False


class Answer(Exception):
    """No HTTP answer: `kind` is refused, reset or hang."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


async def post(
    port: int, fields: dict[str, Any], timeout: float = NO_HANG
) -> tuple[int, dict[str, str], Any]:
    """One request on its own connection: (status, headers by lower-case name, JSON or None)."""
    body = urlencode(fields).encode()
    head = (
        b"POST /api/v2 HTTP/1.1\r\nHost: %s\r\nContent-Type: application/x-www-form-urlencoded"
        b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % (HOST.encode(), len(body))
    )
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(head + body)
                data = await reader.read()
            finally:
                writer.close()
    except ConnectionRefusedError:
        raise Answer("refused") from None
    except TimeoutError:
        raise Answer("hang") from None
    except OSError:
        raise Answer("reset") from None
    if not data.startswith(b"HTTP/1.1 "):
        raise Answer("reset")
    status = int(data[9:12])
    top, _, payload = data.partition(b"\r\n\r\n")
    headers = {}
    for line in top.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    try:
        return status, headers, json.loads(payload)
    except ValueError:
        return status, headers, None


def redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def ready(port: int) -> bool:
    """An ops listener on `port` answers 200 at /readyz."""
    try:
        with socket.create_connection(("127.0.0.1", port), 0.5) as s:
            s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return s.recv(16).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


async def back(condition: Any, what: str) -> None:
    """Until `condition()` holds (looked at every 20 ms), at most BACK_WITHIN seconds."""
    deadline = time.monotonic() + BACK_WITHIN
    while not condition():
        assert time.monotonic() < deadline, f"not back within {BACK_WITHIN} s: {what}"
        await asyncio.sleep(0.02)


class Run:
    """One chaos run: faults for `seconds`, or for `cycles` faults when that is given."""

    def __init__(self, root: Path, seconds: float, seed: int, cycles: int | None = None) -> None:
        self.root = root
        self.seconds = seconds
        self.cycles = cycles
        self.rng = random.Random(seed)
        self.tally = Tally()
        self.cluster = Cluster(root / "pg")
        self.url = self.cluster.url()
        self.port = free_port()
        self.redis_port = free_port() if shutil.which("redis-server") else 0
        self.redis: Proc | None = None
        self.serve: Proc | None = None
        self.worker_ports = [free_port() for _ in range(2)]
        self.workers: list[Proc] = []
        self.sim = Simulator(complete_after=2.0, partial_ratio=0.2, seed=seed)
        self.users: list[tuple[int, str]] = []  # (user id, raw key)
        self.stopping = asyncio.Event()
        self.started = 0.0
        self._worker_logs = 0

    @property
    def kinds(self) -> list[str]:
        """The faults this run deals: Redis's only when there is a Redis."""
        return ["kill_api", "kill_worker", "restart_db"] + (
            ["restart_redis"] if self.redis_port else []
        )

    # -- the system ------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if not k.startswith("PANELSRV_")}

    def _settings(self, **extra: str) -> list[str]:
        sets = {
            "ops_port": "0", "log_level": "warning", "ip_rate": "100000", "ip_burst": "100000",
            "user_rate": "100000", "user_burst": "100000", "never_block": "127.0.0.1",
            "sync_interval": "1", "provider_timeout": "2", "provider_connect_timeout": "2",
            "provider_breaker_threshold": "1000", "default_panel": HOST, **extra,
        }  # fmt: skip
        if self.redis_port:
            sets["redis_url"] = f"redis://127.0.0.1:{self.redis_port}/0"
        return [arg for name, value in sets.items() for arg in ("--set", f"{name}={value}")]

    def start_redis(self) -> None:
        if self.redis_port:
            self.redis = Proc(
                "redis",
                ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no"],
                None, self.root / "redis.log",
            )  # fmt: skip

    def start_worker(self, n: int) -> Proc:
        self._worker_logs += 1
        return Proc(
            "worker",
            [sys.executable, "-m", "panelsrv", "worker", "--database-url", self.url,
             *self._settings(worker_ops_port=str(self.worker_ports[n]))],
            None, self.root / f"worker-{self._worker_logs}.log", self._env(),
        )  # fmt: skip

    async def setup(self) -> None:
        await self.sim.start()
        self.start_redis()
        conn = await db.open_migrated(self.url)
        try:
            await admin.add_panel(conn, HOST, "USD")
            provider = await admin.add_provider(
                conn, "sim", self.sim.url, self.sim.key, honours_idempotency=True
            )
            await admin.add_service(
                conn,
                admin.ServiceSpec(
                    name="chaos", type="default", rate=RATE, min=10, max=10_000, cancel=True,
                    refill=True, provider=str(provider), provider_service="1",
                    domain=HOST, local_id=1,
                ),
            )  # fmt: skip
            for n in range(USERS):
                user, _ = await admin.add_user(conn, f"c{n}@chaos.test", HOST, FUNDS, "0")
                self.users.append((user.id, (await keys.create(conn, user.id)).raw))
        finally:
            await conn.close()
        self.serve = Proc(
            "serve",
            [sys.executable, "-m", "panelsrv", "serve", "--database-url", self.url, "--port",
             str(self.port), "--workers", str(API_PROCESSES), *self._settings()],
            None, self.root / "serve.log", self._env(),
        )  # fmt: skip
        self.workers = [self.start_worker(n) for n in range(2)]
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(Answer):
                status, _, _ = await post(self.port, {"key": self.users[0][1], "action": "balance"})
                if status == 200 and len(self.api()) == API_PROCESSES:
                    break
            assert time.monotonic() < deadline, "serve did not start (see serve.log)"
            await asyncio.sleep(0.1)
        await back(lambda: all(map(ready, self.worker_ports)), "the workers' /readyz")
        self.sim.faults = PROVIDER_FAULTS

    def api(self) -> list[int]:
        """The API processes that listen now."""
        assert self.serve is not None
        return listening_children(self.serve.pid, self.port)

    async def close(self) -> None:
        for proc in (*self.workers, self.serve, self.redis):
            if proc is not None:
                proc.stop()
        await self.sim.stop()
        self.cluster.close()

    # -- load --------------------------------------------------------------------------------

    async def ask(self, action: str, fields: dict[str, Any]) -> tuple[int, Any] | None:
        t = self.tally
        t.requests[action] += 1
        sent = time.monotonic()
        try:
            status, headers, body = await post(self.port, {"action": action, **fields})
        except Answer as exc:
            t.transport[exc.kind] += 1
            return None
        t.statuses[status] += 1
        if status >= 500:
            error = body.get("error") if isinstance(body, dict) else None
            t.errors_5xx[f"{status} {action}: {error}"] += 1
        if status == 503:
            t.no_retry_after += "retry-after" not in headers
            if not t.db_down and sent > t.db_up_since > 0:
                t.after_recovery_503 += 1
        return status, body

    async def client(self, n: int) -> None:
        key = self.users[n % USERS][1]
        seq = 0
        placed: list[int] = []
        while not self.stopping.is_set():
            seq += 1
            roll = self.rng.random()
            if roll < 0.4:
                await self.place(key, f"k{n}-{seq}", placed)
            elif roll < 0.8 and placed:
                ids = ",".join(map(str, self.rng.sample(placed, min(len(placed), 20))))
                await self.ask("status", {"key": key, "orders": ids})
            elif roll < 0.9 and placed:
                await self.ask("cancel", {"key": key, "order": self.rng.choice(placed)})
            elif placed:
                await self.ask("refill", {"key": key, "order": self.rng.choice(placed)})
            await asyncio.sleep(self.rng.uniform(0.05, 0.3))

    async def place(self, key: str, idem: str, placed: list[int]) -> None:
        """One intended order: the same key until a definitive answer (or the run ends)."""
        fields = {
            "key": key, "service": 1, "link": f"https://chaos.test/{idem}",
            "quantity": self.rng.randrange(100, 1001), "idempotency_key": idem,
        }  # fmt: skip
        while not self.stopping.is_set():
            answer = await self.ask("add", fields)
            if answer is not None and answer[0] == 429:  # the order ceiling: wait for it
                await asyncio.sleep(self.rng.uniform(1.0, 3.0))
                continue
            if answer is not None and answer[0] not in INDEFINITE:
                status, body = answer
                if status == 200:
                    order = body["order"]
                    first = self.tally.acked.setdefault(idem, order)
                    if first != order:
                        self.tally.conflicts.append(idem)
                    placed.append(order)
                return
            await asyncio.sleep(self.rng.uniform(0.1, 0.5))

    async def probe(self) -> None:
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.port), 2.0
                )
                writer.close()
                self.tally.probes["accepted"] += 1
            except ConnectionRefusedError:
                self.tally.probes["refused"] += 1
            except (OSError, TimeoutError):
                self.tally.probes["failed"] += 1
            await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - started)))

    # -- faults ------------------------------------------------------------------------------

    def over(self) -> bool:
        if self.cycles is not None:
            return sum(self.tally.faults.values()) >= self.cycles
        return time.monotonic() - self.started >= self.seconds

    async def faults(self) -> None:
        """Cycles until the run is over, then stop the clients."""
        rounds: list[str] = []
        try:
            while not self.over():
                await asyncio.sleep(self.rng.uniform(2.0, 5.0))
                if not rounds:
                    rounds = self.rng.sample(self.kinds, len(self.kinds))
                kind = rounds.pop()
                self.tally.faults[kind] += 1
                began = time.monotonic()
                await getattr(self, kind)()
                self.tally.recoveries[kind].append(time.monotonic() - began)
        finally:
            self.stopping.set()

    async def kill_api(self) -> None:
        """SIGKILL one of the two API processes; back when two listen again."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.rng.choice(self.api()), signal.SIGKILL)
        await back(lambda: len(self.api()) == API_PROCESSES, "both API processes listening")

    async def kill_worker(self) -> None:
        n = self.rng.randrange(len(self.workers))
        os.killpg(self.workers[n].pid, signal.SIGKILL)
        self.workers[n].popen.wait()
        self.workers[n] = self.start_worker(n)
        await back(lambda: ready(self.worker_ports[n]), "the new worker's /readyz")

    async def restart_db(self) -> None:
        """Restart PostgreSQL; back at the first 200 (the first request once `select 1` works
        again must be it)."""
        t = self.tally
        t.db_down = True
        await asyncio.to_thread(self.cluster.restart)
        await until_answering(self.url, BACK_WITHIN)
        t.db_down = False
        t.db_up_since = time.monotonic()
        key = self.users[0][1]
        first = True
        while (answer := await self.ask("balance", {"key": key})) is None or answer[0] != 200:
            if first:
                t.first_after_db_back["no answer" if answer is None else str(answer[0])] += 1
                first = False
            assert time.monotonic() - t.db_up_since < BACK_WITHIN, "no 200 after a db restart"
            await asyncio.sleep(0.02)
        if first:
            t.first_after_db_back["200"] += 1
        t.recoveries["api_after_database_back"].append(time.monotonic() - t.db_up_since)

    async def restart_redis(self) -> None:
        assert self.redis is not None
        os.killpg(self.redis.pid, signal.SIGKILL)
        self.redis.popen.wait()
        await asyncio.sleep(1.0)  # a second without Redis
        self.start_redis()
        await back(lambda: redis_answers(self.redis_port), "Redis answering PING")

    # -- the run and its checks --------------------------------------------------------------

    async def run(self, settle_timeout: float = 180.0) -> dict[str, Any]:
        await self.setup()
        self.started = time.monotonic()
        tasks = [asyncio.create_task(self.client(n)) for n in range(2 * USERS)]
        tasks += [asyncio.create_task(self.probe()), asyncio.create_task(self.faults())]
        await asyncio.gather(*tasks)
        faulted = time.monotonic() - self.started
        self.sim.faults = Faults()
        settle = time.monotonic()
        await self.settle(settle_timeout)
        figures = await self.check()
        figures["fault_seconds"] = round(faulted, 1)
        figures["settle_seconds"] = round(time.monotonic() - settle, 1)
        return figures

    async def settle(self, timeout: float) -> None:
        """Until no order or refill is active (bringing retries forward), or `timeout`."""
        conn = await db.connect(self.url)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                await conn.execute("UPDATE outbox SET run_after = now() WHERE run_after > now()"
                                   " AND held_at IS NULL")  # fmt: skip
                left = await conn.fetchval(
                    "SELECT (SELECT count(*) FROM orders WHERE status = ANY($1))"
                    " + (SELECT count(*) FROM refills WHERE status = ANY($1))",
                    list(ACTIVE),
                )
                if left == 0:
                    return
                await asyncio.sleep(0.5)
        finally:
            await conn.close()

    async def check(self) -> dict[str, Any]:
        t = self.tally
        audit = subprocess.run(
            [sys.executable, "-m", "panelsrv", "audit", "--json", "--database-url", self.url],
            capture_output=True, check=False, env=self._env(),
        )  # fmt: skip
        conn = await db.connect(self.url)
        try:
            orders = await conn.fetch("SELECT id, user_id, link FROM orders")
            refunds = await conn.fetch(
                "SELECT order_id, count(*) AS n FROM ledger_entries WHERE kind = 'refund'"
                " GROUP BY order_id"
            )
            wallets = await conn.fetch(
                """SELECT w.user_id, w.balance,
                          (SELECT coalesce(sum(amount), 0) FROM ledger_entries e
                            WHERE e.user_id = w.user_id AND e.kind = 'credit') AS funds,
                          (SELECT coalesce(sum(charge - refunded), 0) FROM orders o
                            WHERE o.user_id = w.user_id) AS net_charges
                     FROM wallets w"""
            )
            # A non-terminal order or refill has a reason when a job for it is still there
            # (retrying or held for the operator) with the error it met.
            unexplained = await conn.fetchval(
                """SELECT (SELECT count(*) FROM orders o WHERE o.status = ANY($1)
                             AND NOT EXISTS (SELECT 1 FROM outbox x WHERE x.order_id = o.id
                                               AND x.refill_id IS NULL
                                               AND x.last_error IS NOT NULL))
                        + (SELECT count(*) FROM refills r WHERE r.status = ANY($1)
                             AND NOT EXISTS (SELECT 1 FROM outbox x WHERE x.refill_id = r.id
                                               AND x.last_error IS NOT NULL))""",
                list(ACTIVE),
            )
            active = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM orders WHERE status = ANY($1)) AS orders,"
                " (SELECT count(*) FROM refills WHERE status = ANY($1)) AS refills",
                list(ACTIVE),
            )
            held = await conn.fetchval("SELECT count(*) FROM outbox WHERE held_at IS NOT NULL")
        finally:
            await conn.close()
        by_id = {r["id"]: r for r in orders}
        links = Counter((r["user_id"], r["link"]) for r in orders)
        upstream = self.sim.book.creations_by_link()
        funds = money.parse(FUNDS)
        problems = {
            "audit": audit.returncode != 0,
            "acked_missing": sum(
                1
                for idem, order in t.acked.items()
                if order not in by_id or not by_id[order]["link"].endswith(f"/{idem}")
            ),
            "key_conflicts": len(t.conflicts),
            "orders_twice": sum(1 for n in links.values() if n > 1),
            "created_upstream_twice": sum(1 for n in upstream.values() if n > 1),
            "refunded_twice": sum(1 for r in refunds if r["n"] > 1),
            "wallets_off": sum(
                1
                for w in wallets
                if w["funds"] != funds or w["balance"] != w["funds"] - w["net_charges"]
            ),
            "left_active_without_reason": unexplained,
            "unexpected_statuses": sum(n for s, n in t.statuses.items() if s not in ALLOWED),
            "503_without_retry_after": t.no_retry_after,
            "hangs": t.transport["hang"],
            "first_request_after_database_back_failed": sum(
                n for status, n in t.first_after_db_back.items() if status != "200"
            ),
            "503_after_database_back": t.after_recovery_503,
            "probes_refused": t.probes["refused"],
        }
        sim = sorted(self.sim.counters.items())
        return {
            "ok": not any(problems.values()),
            "problems": problems,
            "cycles": sum(t.faults.values()),
            "faults": dict(t.faults),
            "requests": sum(t.requests.values()),
            "requests_by_action": dict(t.requests),
            "answers": dict(sorted(t.statuses.items())),
            "answers_5xx": dict(sorted(t.errors_5xx.items())),
            "no_answer": dict(t.transport),
            "definitive_orders": len(t.acked),
            "orders": len(orders),
            "left_active": dict(active),
            "held_for_operator": held,
            "provider_faults": {k[6:]: n for k, n in sim if k.startswith("fault.")},
            "provider_answers_lost_after_acting": {
                k[12:]: n for k, n in sim if k.startswith("fault_after.")
            },
            "probes": dict(t.probes),
            "first_request_after_database_back": dict(t.first_after_db_back),
            "recovery_seconds": {
                kind: {
                    "count": len(times),
                    "mean": round(sum(times) / len(times), 3),
                    "longest": round(max(times), 3),
                }
                for kind, times in sorted(t.recoveries.items())
            },
            "redis": bool(self.redis_port),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=360.0, help="faults for this long")
    parser.add_argument("--cycles", type=int, help="faults until this many (instead of seconds)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (logs)")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="panelsrv-chaos-"))

    async def go() -> dict[str, Any]:
        chaos = Run(root, args.seconds, args.seed, args.cycles)
        try:
            return await chaos.run()
        finally:
            await chaos.close()

    import uvloop

    try:
        figures = uvloop.run(go())
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    figures["command"] = " ".join(["python -m bench.chaos", *(argv or sys.argv[1:])])
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
