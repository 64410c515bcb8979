"""`python -m bench.chaos [--seconds 360]` (`make chaos`): the whole system under faults, then
the books checked.

What runs, all on 127.0.0.1 and all started (and stopped) here: a PostgreSQL server of its own
(bench/pgcluster.py), a Redis of its own when `redis-server` is installed, `panelsrv serve
--workers 2` and two `panelsrv worker`s against them, and a simulated provider (in this process)
that times out, answers 5xx or HTML, and loses answers after it created the order. Clients place
orders with idempotency keys and retry the *same* key on every answer that is not definitive (a
refused or reset connection, a timeout, 5xx, 409, 429), poll statuses, cancel some orders and
ask refills of completed ones; a probe opens a connection every 100 ms. Meanwhile, every 2-5 s,
one fault at random: SIGKILL an API process, SIGKILL a worker and start it again, restart
PostgreSQL (`pg_ctl restart -m immediate`), kill Redis and start it again.

When the time is up the faults stop, the provider heals, and the system settles; then it checks
and prints (and writes as JSON with --out): `panelsrv audit` clean; every acknowledged order
exists exactly once and no idempotency key made two; the provider's own book has no order
twice; no refund twice; each wallet equals its initial funds minus its charges plus its refunds;
no order left active; no answer but 200/400/402/409/429/503, and no hang; figures: faults by
kind, requests, definitive answers, 5xx by status, refused and reset probes, 503s answered
after the database was back, and the longest recovery after a database restart.
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
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from bench.pgcluster import Cluster, until_answering
from bench.procs import Proc, free_port, listening_children
from panelsrv.sim.provider import Faults, Simulator
from panelsrv.store import admin, db, keys

USERS = 20
FUNDS = "1000.00"
RATE = "1.00"  # per 1000: a 100..1000 order costs 0.10..1.00
HOST = "chaos.test"
NO_HANG = 10.0  # seconds: an answer later than this is a hang
PROVIDER_FAULTS = Faults(fail_ratio=0.05, kinds=["timeout", "5xx", "html", "drop"], after_ratio=0.5)
ALLOWED = {200, 400, 402, 409, 429, 503}
INDEFINITE = {409, 429, 500, 502, 503, 504}


@dataclass
class Tally:
    requests: Counter[str] = field(default_factory=Counter)  # by action
    statuses: Counter[int] = field(default_factory=Counter)
    transport: Counter[str] = field(default_factory=Counter)  # refused, reset, hang
    faults: Counter[str] = field(default_factory=Counter)
    acked: dict[str, int] = field(default_factory=dict)  # idempotency key -> order id
    conflicts: list[str] = field(default_factory=list)  # a key answered with two orders
    probes: Counter[str] = field(default_factory=Counter)
    recoveries: list[float] = field(default_factory=list)  # seconds, restart -> first 200
    after_recovery_503: int = 0
    db_up_since: float = 0.0  # monotonic time the database last answered after a restart
    db_down: bool = False


class Answer(Exception):
    """No HTTP answer: `kind` is refused, reset or hang."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


async def post(port: int, fields: dict[str, Any], timeout: float = NO_HANG) -> tuple[int, Any]:
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
    payload = data.partition(b"\r\n\r\n")[2]
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, None


class Run:
    def __init__(self, root: Path, seconds: float, seed: int) -> None:
        self.root = root
        self.seconds = seconds
        self.rng = random.Random(seed)
        self.tally = Tally()
        self.cluster = Cluster(root / "pg")
        self.url = self.cluster.url()
        self.port = free_port()
        self.redis_port = free_port() if shutil.which("redis-server") else 0
        self.redis: Proc | None = None
        self.serve: Proc | None = None
        self.workers: list[Proc] = []
        self.sim = Simulator(complete_after=2.0, partial_ratio=0.2, seed=seed)
        self.users: list[tuple[int, str]] = []  # (user id, raw key)
        self.stopping = asyncio.Event()
        self._worker_logs = 0

    # -- the system ------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if not k.startswith("PANELSRV_")}

    def _settings(self) -> list[str]:
        sets = {
            "ops_port": "0", "log_level": "warning", "ip_rate": "100000", "ip_burst": "100000",
            "user_rate": "100000", "user_burst": "100000", "never_block": "127.0.0.1",
            "sync_interval": "1", "provider_timeout": "2", "provider_connect_timeout": "2",
            "provider_breaker_threshold": "1000", "default_panel": HOST,
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

    def start_worker(self) -> Proc:
        self._worker_logs += 1
        return Proc(
            "worker",
            [sys.executable, "-m", "panelsrv", "worker", "--database-url", self.url,
             *self._settings()],
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
             str(self.port), "--workers", "2", *self._settings()],
            None, self.root / "serve.log", self._env(),
        )  # fmt: skip
        self.workers = [self.start_worker() for _ in range(2)]
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(Answer):
                status, _ = await post(self.port, {"key": self.users[0][1], "action": "balance"})
                if status == 200:
                    break
            assert time.monotonic() < deadline, "serve did not start (see serve.log)"
            await asyncio.sleep(0.1)
        self.sim.faults = PROVIDER_FAULTS

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
            status, body = await post(self.port, {"action": action, **fields})
        except Answer as exc:
            t.transport[exc.kind] += 1
            return None
        t.statuses[status] += 1
        if status == 503 and not t.db_down and sent > t.db_up_since > 0:
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

    async def faults(self) -> None:
        kinds = ["kill_api", "kill_worker", "restart_db"]
        kinds += ["restart_redis"] if self.redis else []
        while not self.stopping.is_set():
            await asyncio.sleep(self.rng.uniform(2.0, 5.0))
            if self.stopping.is_set():
                return
            kind = self.rng.choice(kinds)
            self.tally.faults[kind] += 1
            await getattr(self, kind)()

    async def kill_api(self) -> None:
        assert self.serve is not None
        api = listening_children(self.serve.pid, self.port)
        if api:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.rng.choice(api), signal.SIGKILL)

    async def kill_worker(self) -> None:
        n = self.rng.randrange(len(self.workers))
        os.killpg(self.workers[n].pid, signal.SIGKILL)
        self.workers[n].popen.wait()
        self.workers[n] = self.start_worker()

    async def restart_db(self) -> None:
        t = self.tally
        t.db_down = True
        began = time.monotonic()
        await asyncio.to_thread(self.cluster.restart)
        await until_answering(self.url, 30.0)
        t.db_down = False
        t.db_up_since = time.monotonic()
        key = self.users[0][1]
        while (await self.ask("balance", {"key": key}) or (0,))[0] != 200:
            await asyncio.sleep(0.02)
        t.recoveries.append(time.monotonic() - began)

    async def restart_redis(self) -> None:
        assert self.redis is not None
        os.killpg(self.redis.pid, signal.SIGKILL)
        self.redis.popen.wait()
        await asyncio.sleep(1.0)
        self.start_redis()

    # -- the run and its checks --------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        await self.setup()
        tasks = [asyncio.create_task(self.client(n)) for n in range(2 * USERS)]
        tasks += [asyncio.create_task(self.probe()), asyncio.create_task(self.faults())]
        await asyncio.sleep(self.seconds)
        self.stopping.set()
        await asyncio.gather(*tasks)
        self.sim.faults = Faults()
        settle = time.monotonic()
        active = await self.settle()
        figures = await self.check(active)
        figures["settle_seconds"] = round(time.monotonic() - settle, 1)
        return figures

    async def settle(self, timeout: float = 180.0) -> int:
        """Until no order is active (bringing retries forward); how many still are."""
        conn = await db.connect(self.url)
        try:
            deadline = time.monotonic() + timeout
            while True:
                await conn.execute("UPDATE outbox SET run_after = now() WHERE run_after > now()"
                                   " AND held_at IS NULL")  # fmt: skip
                left = await conn.fetchval(
                    "SELECT count(*) FROM orders WHERE status IN ('Pending', 'In progress')"
                )
                if left == 0 or time.monotonic() > deadline:
                    return int(left)
                await asyncio.sleep(0.5)
        finally:
            await conn.close()

    async def check(self, active: int) -> dict[str, Any]:
        t = self.tally
        audit = subprocess.run(
            [sys.executable, "-m", "panelsrv", "audit", "--json", "--database-url", self.url],
            capture_output=True, check=False, env=self._env(),
        )  # fmt: skip
        conn = await db.connect(self.url)
        try:
            orders = await conn.fetch("SELECT id, link, charge FROM orders")
            refunds = await conn.fetch(
                "SELECT order_id, count(*) AS n FROM ledger_entries WHERE kind = 'refund'"
                " GROUP BY order_id"
            )
            money = await conn.fetchrow(
                """SELECT (SELECT sum(balance) FROM wallets) AS wallets,
                          (SELECT sum(amount) FROM ledger_entries WHERE kind = 'credit') AS funds,
                          (SELECT sum(amount) FROM ledger_entries WHERE kind = 'charge')
                              AS charges,
                          (SELECT coalesce(sum(amount), 0) FROM ledger_entries
                            WHERE kind = 'refund') AS refunds,
                          (SELECT sum(charge) FROM orders) AS ordered"""
            )
            keyed = await conn.fetchval("SELECT count(*) FROM idempotency WHERE status = 200")
            held = await conn.fetchval("SELECT count(*) FROM outbox WHERE held_at IS NOT NULL")
        finally:
            await conn.close()
        ids = {r["id"] for r in orders}
        upstream = self.sim.book.creations_by_link()
        problems = {
            "audit": audit.returncode != 0,
            "acked_missing": len(set(t.acked.values()) - ids),
            "key_conflicts": len(t.conflicts),
            "orders_without_one_key": len(orders) - keyed,
            "created_upstream_twice": sum(1 for n in upstream.values() if n > 1),
            "refunded_twice": sum(1 for r in refunds if r["n"] > 1),
            "wallets_off": money["wallets"] != money["funds"] + money["charges"] + money["refunds"],
            "charges_off": -money["charges"] != money["ordered"],
            "left_active": active,
            "held_for_operator": held,
            "unexpected_statuses": sum(n for s, n in t.statuses.items() if s not in ALLOWED),
            "hangs": t.transport["hang"],
        }
        return {
            "ok": not any(problems.values()),
            "problems": problems,
            "seconds": self.seconds,
            "faults": dict(t.faults),
            "requests": dict(t.requests),
            "answers": dict(sorted(t.statuses.items())),
            "definitive_orders": len(t.acked),
            "orders": len(orders),
            "no_answer": dict(t.transport),
            "probes": dict(t.probes),
            "probes_refused_percent": round(
                100 * t.probes["refused"] / max(1, sum(t.probes.values())), 2
            ),
            "503_after_database_back": t.after_recovery_503,
            "database_recovery_seconds": {
                "count": len(t.recoveries),
                "longest": round(max(t.recoveries, default=0.0), 3),
                "mean": round(sum(t.recoveries) / max(1, len(t.recoveries)), 3),
            },
            "redis": bool(self.redis_port),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=360.0, help="faults for this long")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (logs)")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="panelsrv-chaos-"))

    async def go() -> dict[str, Any]:
        chaos = Run(root, args.seconds, args.seed)
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
