"""Load generators: `wrk` with bench/lua/panel.lua, and `pgbench` with our order statement.

Imports bench.procs, bench.dataset and panelsrv.store.ledger (pgbench runs its PLACE_ORDER
statement). Each run returns a `Run` (requests per second, latency percentiles in ms, error
counts, CPU seconds per component) measured over the same window.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from bench import dataset
from bench.procs import cpu_seconds
from panelsrv.store import ledger

LUA = Path(__file__).parent / "lua" / "panel.lua"
# Each scenario draws client addresses from its own /8, so strikes earned by one rejection
# scenario never block the addresses of the next.
XFF_BASE = {"reject_key": 11, "reject_unknown_key": 12}


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    seconds: float
    errors: int  # socket errors and timeouts
    non2xx: int
    percentiles_ms: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # component -> CPU seconds in the run

    def summary(self) -> dict[str, float | int]:
        return {"rps": round(self.rps, 1), "p50_ms": round(self.p50_ms, 3),
                "p99_ms": round(self.p99_ms, 3)}

    def detail(self) -> dict[str, Any]:
        return asdict(self)


CpuProbe = Callable[[], dict[str, float]]


def _cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after[k] - before.get(k, 0.0), 3) for k in after}


def wrk(port: int, scenario: str, *, data: Path, users: int, seconds: float, connections: int,
        cpus: str | None, cpu: CpuProbe, timeout_s: float = 10.0,
        env: dict[str, str] | None = None) -> Run:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
        out_path = out.name
    env = {**os.environ, **(env or {}), "BENCH_SCENARIO": scenario, "BENCH_DATA": str(data),
           "BENCH_USERS": str(users), "BENCH_NONCE": secrets.token_hex(6), "BENCH_OUT": out_path,
           "BENCH_XFF_BASE": str(XFF_BASE.get(scenario, 10))}
    cmd = (["taskset", "-c", cpus] if cpus else []) + [
        "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
        f"--timeout={timeout_s:g}s", "-s", str(LUA), f"http://127.0.0.1:{port}/api/v2"]
    before = cpu()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wrk_cpu = 0.0
    try:
        while proc.poll() is None:
            wrk_cpu = max(wrk_cpu, cpu_seconds([proc.pid]))
            time.sleep(0.2)
        output = proc.stdout.read().decode() if proc.stdout else ""
    finally:
        if proc.poll() is None:
            proc.kill()
    after = cpu()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {output}")
    try:
        result = json.loads(Path(out_path).read_text())
    finally:
        os.unlink(out_path)
    pct = {k: v / 1000 for k, v in result["percentiles_us"].items()}
    secs = result["duration_us"] / 1e6
    usage = _cpu_delta(before, after)
    usage["wrk"] = round(wrk_cpu, 3)
    return Run(
        rps=result["requests"] / secs,
        p50_ms=pct["50"],
        p99_ms=pct["99"],
        requests=result["requests"],
        seconds=round(secs, 3),
        errors=result["connect_errors"] + result["read_errors"] + result["write_errors"]
        + result["timeouts"],
        non2xx=result["non2xx"],
        percentiles_ms=pct,
        cpu=usage,
    )


# place_order's arguments as pgbench expressions, in ledger.PLACE_ORDER's $1..$14 order: the
# script runs that very statement text (its retry_after cap included), so a migration that
# changes the signature changes the script with it.
PGBENCH_ARGS = (
    ":uid", ":panel", ":svc", "1", str(dataset.RATE), "'https://instagram.com/p/pg' || :n",
    "1000", "1", "0", "'{}'::jsonb", "30", "'pg-' || :n", f"'\\x{'ab' * 32}'::bytea", "false")
PGBENCH_SCRIPT = f"""
\\set uid random(1, :users)
\\set panel (:uid - 1) % {dataset.PANELS} + 1
\\set svc (random(1, {dataset.LOCAL_IDS}) - 1) * {dataset.PANELS} + :panel
\\set n random(1, 1000000000000)
""" + re.sub(r"\$(\d+)", lambda m: PGBENCH_ARGS[int(m.group(1)) - 1],
             ledger.PLACE_ORDER.strip()) + ";\n"


def libpq_args(url: str) -> tuple[list[str], str]:
    """pgbench options (-h/-p/-U) and the database name from a postgresql:// URL."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    host = query.get("host", [parts.hostname or ""])[0]
    out = []
    if host:
        out += ["-h", host]
    if parts.port:
        out += ["-p", str(parts.port)]
    out += ["-U", unquote(parts.username or "postgres")]
    return out, unquote(parts.path.lstrip("/"))


def pgbench(url: str, *, users: int, seconds: float, clients: int, cpus: str | None,
            cpu: CpuProbe, work: Path) -> Run:
    """Our exact order statement (`place_order`, same parameters' shapes, prepared like asyncpg
    prepares it), random users, on the same database with its configured durability."""
    work.mkdir(parents=True, exist_ok=True)
    script = work / "place_order.sql"
    script.write_text(PGBENCH_SCRIPT)
    for old in work.glob("pgb*"):
        old.unlink()
    conn, name = libpq_args(url)
    cmd = (["taskset", "-c", cpus] if cpus else []) + [
        "pgbench", "-n", "-M", "prepared", "-c", str(clients), "-j", "1",
        "-T", str(max(1, round(seconds))), "-D", f"users={users}",
        "-f", str(script), "--log", f"--log-prefix={work}/pgb", *conn, name]
    before = cpu()
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = cpu()
    if done.returncode != 0:
        raise RuntimeError(f"pgbench failed: {done.stdout}\n{done.stderr}")
    latencies: list[int] = []
    for log in work.glob("pgb*"):
        for line in log.read_text().splitlines():
            latencies.append(int(line.split()[2]))
    latencies.sort()
    n = len(latencies)
    tps = next(float(line.split("=")[1].split()[0]) for line in done.stdout.splitlines()
               if line.startswith("tps"))

    def pct(p: float) -> float:
        return latencies[min(n - 1, int(p / 100 * n))] / 1000

    return Run(
        rps=tps, p50_ms=pct(50), p99_ms=pct(99), requests=n, seconds=round(wall, 3), errors=0,
        non2xx=0, percentiles_ms={str(p): pct(p) for p in range(1, 100)} | {"99.9": pct(99.9)},
        cpu=_cpu_delta(before, after),
    )
