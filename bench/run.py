"""`make bench` / `make bench-quick` / `make bench-soak`: the side-by-side benchmark.

    python -m bench.run [--quick] [--soak SECONDS] [--out bench/results]

Imports bench.{dataset, procs, systems, load, report, tools} and panelsrv.store.db. One run, one
machine, one database: PostgreSQL is PANELSRV_DATABASE_URL when set, else the embedded one
(under PANELSRV_DATA_DIR or ./var), in a dedicated `panelsrv_bench` database rebuilt at the
start. Every system under test is pinned to the server CPUs, the load generators (wrk,
pgbench) and the embedded PostgreSQL to the client CPUs (bench/procs.py `layout`). Results go
to `<out>/latest.json`, `<out>/results.md` and `<out>/*.png`.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import uvloop

from bench import dataset, load, report, systems, tools
from bench.procs import Layout, Proc, cpu_seconds, layout, pin_tree, rss_bytes, tree
from panelsrv.store import db

ROOT = Path(__file__).resolve().parent
DATA = ROOT / ".data"

# scenario -> systems that run it, panelsrv first. Baselines answer the same requests.
MATRIX: dict[str, list[str]] = {
    "services": ["panelsrv", "nginx", "minimal", "fastapi"],
    "balance": ["panelsrv", "minimal_db", "fastapi"],
    "status": ["panelsrv", "minimal_db", "fastapi"],
    "status100": ["panelsrv", "minimal_db", "fastapi"],
    "add": ["panelsrv", "pgbench", "fastapi"],
    "mix": ["panelsrv", "fastapi"],
    "reject_key": ["panelsrv", "minimal", "nginx"],
    "reject_unknown_key": ["panelsrv", "minimal"],
    "reject_ip": ["panelsrv", "minimal"],
}
CONNECTIONS = 64
# Runs that write: each starts from the same database state (see Bench.settle).
WRITES = ("add", "mix")
POOL_SIZE = 8  # panelsrv's default pool_size: pgbench gets as many connections


class Settings:
    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.seconds = 2.0 if quick else 10.0
        self.warm_seconds = 0.0 if quick else 2.0  # an unrecorded run before each recorded one
        self.users = 10_000 if quick else dataset.USERS


def database_url() -> tuple[str, int | None]:
    """(bench database URL, postmaster pid when the server is the embedded one)."""
    configured = os.environ.get("PANELSRV_DATABASE_URL", "")
    if configured:
        return dataset.bench_url(configured), None
    data_dir = os.environ.get("PANELSRV_DATA_DIR", "./var")
    url = dataset.bench_url(db.embedded_url(data_dir))
    pid_file = Path(data_dir).expanduser().resolve() / "pgdata" / "postmaster.pid"
    return url, int(pid_file.read_text().split()[0])


async def _db_facts(url: str) -> dict[str, str]:
    conn = await asyncpg.connect(url)
    try:
        facts = {}
        for name in ("server_version", "synchronous_commit", "fsync", "shared_buffers",
                     "max_connections"):
            facts[name] = await conn.fetchval(f"SHOW {name}")
        return facts
    finally:
        await conn.close()


async def _settle(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("VACUUM (ANALYZE) wallets, orders, ledger_entries, idempotency, outbox")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


def busy_cpu_pct(seconds: float = 1.0) -> float:
    """How busy the machine is before we start (other people's work skews every number)."""

    def read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values), values[3] + values[4]

    total0, idle0 = read()
    time.sleep(seconds)
    total1, idle1 = read()
    return round(100 * (1 - (idle1 - idle0) / max(1, total1 - total0)), 1)


def machine(lay: Layout, db_facts: dict[str, str], embedded: bool) -> dict[str, object]:
    def version(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        except OSError:
            return "absent"
        return (out.stdout or out.stderr).strip().splitlines()[0]

    import fastapi
    import httptools
    import uvicorn

    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {
        "cores": lay.cores,
        "cpu": model,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "loadavg_at_start": os.getloadavg(),
        "busy_cpu_pct_before_start": busy_cpu_pct(),
        "pinning": {
            "server_cpus": lay.server,
            "client_cpus": lay.client,
            "postgresql": f"cpus {lay.client} (embedded, pinned by us)" if embedded
            else "not pinned (configured server, not ours)",
        },
        "python": sys.version.split()[0],
        "uvloop": uvloop.__version__,
        "httptools": httptools.__version__,
        "asyncpg": asyncpg.__version__,
        "fastapi": fastapi.__version__,
        "uvicorn": uvicorn.__version__,
        "postgresql": db_facts,
        "wrk": version(["wrk", "-v"]),
        "nginx": version(["nginx", "-v"]),
        "pgbench": version(["pgbench", "--version"]),
        "panelsrv_limits": "defaults: ip_rate 100/s burst 100, user_rate 50/s burst 100, "
        "strike_limit 10/60 s, orders 30/min/user; trusted_proxies 127.0.0.1",
        "connections": CONNECTIONS,
    }


class Bench:
    def __init__(self, settings: Settings, out: Path) -> None:
        self.s = settings
        self.out = out
        self.lay = layout()
        self.work = DATA / "run"
        self.logs = self.out / "logs"
        self.runs: dict[str, dict[str, load.Run]] = {}
        self.extra: dict[str, object] = {}
        self.pg_pid: int | None = None
        self.url = ""

    # -- CPU accounting: server under test, PostgreSQL ------------------------------------

    def cpu_probe(self, server: Proc | None) -> Callable[[], dict[str, float]]:
        def probe() -> dict[str, float]:
            found: dict[str, float] = {}
            if server is not None:
                found["server"] = server.cpu()
            if self.pg_pid is not None:
                found["postgresql"] = cpu_seconds(tree(self.pg_pid))
            return found

        return probe

    def record(self, scenario: str, system: str, run: load.Run) -> None:
        self.runs.setdefault(scenario, {})[system] = run
        print(f"  {scenario:<20} {system:<14} {run.rps:>9.0f} req/s  p50 {run.p50_ms:7.2f} ms"
              f"  p99 {run.p99_ms:7.2f} ms  non2xx {run.non2xx}  errors {run.errors}",
              flush=True)

    def settle(self) -> None:
        """Vacuum what the writes touch, then checkpoint: otherwise whichever write run happens
        to overlap an autovacuum of `wallets` (triggered every ~20k orders) or the full-page
        writes after a checkpoint pays for them, and the add ratios drift by 2x between runs."""
        uvloop.run(_settle(self.url))

    def drive(self, sys_: systems.System, scenario: str, *, seconds: float | None = None,
              record_as: str | None = None) -> load.Run:
        if scenario in WRITES:
            self.settle()
        kwargs = dict(data=DATA, users=self.s.users, connections=CONNECTIONS,
                      cpus=self.lay.client, cpu=self.cpu_probe(sys_.proc))
        if self.s.warm_seconds:
            load.wrk(sys_.port, scenario, seconds=self.s.warm_seconds, **kwargs)  # type: ignore[arg-type]
        run = load.wrk(sys_.port, scenario, seconds=seconds or self.s.seconds, **kwargs)  # type: ignore[arg-type]
        self.record(scenario, record_as or sys_.name, run)
        return run

    def warm(self, sys_: systems.System, passes: int = 1) -> None:
        """Every user once per pass: key caches hold the whole active set before anything is
        timed. Several workers each keep their own cache, and a connection lands on one of
        them, so they need several passes (3 leave each worker missing ~1/8 of the keys)."""
        print(f"  warming {sys_.name}: {self.s.users} keys x {passes}", flush=True)
        offset = 0
        while offset < self.s.users * passes:
            run = load.wrk(sys_.port, "warm", data=DATA, users=self.s.users, seconds=1,
                           connections=CONNECTIONS, cpus=self.lay.client, cpu=lambda: {},
                           env={"BENCH_OFFSET": str(offset % self.s.users)})
            # Requests in flight when the thread stopped were sent but not counted.
            offset += run.requests + CONNECTIONS

    def scenarios_for(self, system: str) -> list[str]:
        return [name for name, names in MATRIX.items() if system in names]

    # -- the run ---------------------------------------------------------------------------

    def prepare(self) -> None:
        t0 = time.perf_counter()
        self.url, self.pg_pid = database_url()
        if self.pg_pid is not None and self.lay.pinned:
            pin_tree(self.pg_pid, self.lay.client)
        timings = uvloop.run(dataset.load(self.url, DATA))
        timings["total_s"] = round(time.perf_counter() - t0, 2)
        self.extra["dataset"] = {
            "users": dataset.USERS, "active_users": self.s.users, "panels": dataset.PANELS,
            "services": dataset.SERVICES,
            "historical_orders": dataset.RESELLERS * dataset.ORDERS_PER_RESELLER,
            "load_seconds": {k: round(v, 2) for k, v in timings.items()},
        }
        facts = uvloop.run(_db_facts(self.url))
        self.machine = machine(self.lay, facts, self.pg_pid is not None)
        print(f"dataset loaded in {timings['total_s']} s; server CPUs {self.lay.server}, "
              f"client CPUs {self.lay.client}", flush=True)

    def run_panelsrv(self) -> None:
        srv = systems.panelsrv(self.url, self.lay.server, self.logs)
        try:
            self.warm(srv)
            workers = [p for p in tree(srv.proc.pid) if p != srv.proc.pid]
            rss_before = {p: rss_bytes(p) for p in workers}
            for scenario in self.scenarios_for("panelsrv"):
                self.drive(srv, scenario)
            self.extra["panelsrv_rss_mb"] = {
                str(p): [round(rss_before[p] / 2**20, 1), round(rss_bytes(p) / 2**20, 1)]
                for p in workers
            }
        finally:
            srv.stop()

    def run_baselines(self) -> None:
        bodies = DATA / "bodies"
        lay, logs = self.lay, self.logs
        for body, scenarios in ((bodies / "services.json", ["services"]),
                                (bodies / "small.json", ["reject_key"])):
            srv = systems.nginx(body, lay.server, logs, self.work / f"nginx-{body.stem}")
            try:
                for scenario in scenarios:
                    self.drive(srv, scenario)
            finally:
                srv.stop()
        for body, scenarios in ((bodies / "services.json", ["services"]),
                                (bodies / "small.json",
                                 ["reject_key", "reject_unknown_key", "reject_ip"])):
            srv = systems.minimal("fixed", lay.server, logs, body=body)
            try:
                for scenario in scenarios:
                    self.drive(srv, scenario)
            finally:
                srv.stop()
        srv = systems.minimal("db", lay.server, logs, body=bodies / "small.json", url=self.url,
                              users=DATA / "users.tsv")
        try:
            for scenario in self.scenarios_for("minimal_db"):
                self.drive(srv, scenario)
        finally:
            srv.stop()
        srv = systems.fastapi(self.url, lay.server, logs)
        try:
            self.warm(srv)
            for scenario in self.scenarios_for("fastapi"):
                self.drive(srv, scenario)
        finally:
            srv.stop()
        self.settle()
        run = load.pgbench(self.url, users=self.s.users, seconds=self.s.seconds,
                           clients=POOL_SIZE, cpus=lay.client, cpu=self.cpu_probe(None),
                           work=self.work / "pgbench")
        self.record("add", "pgbench", run)

    def run_scaling(self) -> None:
        """1, 2 and N API workers, unpinned (every process may use every core)."""
        counts = sorted({1, 2, self.lay.cores})
        scaling: dict[str, dict[str, dict[str, object]]] = {}
        for workers in counts:
            srv = systems.panelsrv(self.url, None, self.logs, workers=workers)
            try:
                self.warm(srv, passes=1 if workers == 1 else 3)
                for scenario in ("services", "balance", "add"):
                    if scenario in WRITES:
                        self.settle()
                    kwargs = dict(data=DATA, users=self.s.users, connections=CONNECTIONS,
                                  cpus=None, cpu=self.cpu_probe(srv.proc))
                    run = load.wrk(srv.port, scenario, seconds=self.s.seconds, **kwargs)  # type: ignore[arg-type]
                    scaling.setdefault(scenario, {})[str(workers)] = {
                        **run.summary(), "cpu": run.cpu, "requests": run.requests}
                    print(f"  scaling {scenario:<10} workers={workers} {run.rps:>8.0f} req/s "
                          f"cpu {run.cpu}", flush=True)
            finally:
                srv.stop()
        self.extra["scaling"] = scaling

    def soak(self, seconds: float) -> None:
        """The mixed load for `seconds`, sampling every worker's RSS every 10 s (a thread: the
        load generator runs in the foreground)."""
        srv = systems.panelsrv(self.url, self.lay.server, self.logs)
        samples: list[dict[str, float]] = []
        stop = threading.Event()
        try:
            self.warm(srv)
            workers = [p for p in tree(srv.proc.pid) if p != srv.proc.pid]
            t0 = time.monotonic()

            def sample() -> None:
                samples.append({"t": round(time.monotonic() - t0, 1),
                                **{str(p): round(rss_bytes(p) / 2**20, 2) for p in workers}})

            def sampler() -> None:
                while not stop.wait(10):
                    sample()

            sample()
            thread = threading.Thread(target=sampler, daemon=True)
            thread.start()
            run = load.wrk(srv.port, "mix", data=DATA, users=self.s.users, seconds=seconds,
                           connections=CONNECTIONS, cpus=self.lay.client,
                           cpu=self.cpu_probe(srv.proc))
            stop.set()
            thread.join()
            sample()
        finally:
            stop.set()
            srv.stop()
        self.extra["soak"] = report.soak_summary(samples, run, seconds)

    def write(self) -> None:
        report.write(self.out, self.runs, self.machine, self.extra, quick=self.s.quick)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run")
    parser.add_argument("--quick", action="store_true", help="short runs, 10k active users")
    parser.add_argument("--soak", type=float, default=0.0,
                        help="only the memory soak: mixed load for this many seconds")
    parser.add_argument("--out", default=str(ROOT / "results"))
    args = parser.parse_args(argv)
    tools.ensure()
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    bench = Bench(Settings(args.quick), out)
    t0 = time.perf_counter()
    bench.prepare()
    if args.soak:
        bench.soak(args.soak)
        report.write_soak(out, bench.extra["soak"], bench.machine)  # type: ignore[arg-type]
    else:
        bench.run_panelsrv()
        bench.run_baselines()
        if not args.quick:
            bench.run_scaling()
        bench.extra["wall_seconds"] = round(time.perf_counter() - t0, 1)
        bench.write()
    print(f"done in {time.perf_counter() - t0:.0f} s; see {out}/results.md", flush=True)
    shutil.rmtree(bench.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
