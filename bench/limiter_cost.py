"""What the limits cost: requests/s of `panelsrv serve --workers 1` with the guard and without.

    .venv/bin/python -m bench.limiter_cost [--rounds 5] [--seconds 5] [--database-url URL]
        [--out bench/results/limiter_cost.md]

Two servers run side by side on the same core, against the same database:
- `on`: `panelsrv serve` with the default limits (100 req/s and burst 100 per IP, 50 req/s and
  burst 100 per user, strikes and blocks). wrk names a client in X-Forwarded-For (127.0.0.1 is a
  trusted proxy) spread over 40,000 addresses and, for `balance`, over 1,000 users' keys, so no
  limit refuses: every request pays the checks and the per-IP table holds thousands of
  addresses, as behind nginx. The bucket code runs; it just never says no.
- `off`: the same program with `run_serve(cfg, guarded=False)`: no guard object at all (no
  pre-body check, no per-user cap, no strike counting, no background sweep). Raising the limits
  instead would still run every check, so it could not show what they cost.

Scenarios: `nope` (an unknown action: the cheapest request, answered 400 before any key lookup;
only the per-IP check runs, so it is the largest share the limiter can take) and `balance` (a
valid key: per-IP and per-user checks, one database read).

The two arms run at the same time, pinned to the same core, one wrk each (both wrk pinned to
another core): the scheduler gives each server half the core, so the ratio of their requests/s
is the ratio of their CPU cost per request, and whatever else the (shared) machine does at that
moment slows both alike. Running the arms one after the other instead was tried first: on a
machine other jobs share, the per-round ratio swung from 0.5 to 1.5. Each round runs both
scenarios; the per-round ratio's median is reported with its range. Processes are ours and
stopped by pid. The database is created for the run and dropped after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
XFF_POOL = 40_000
USERS = 1_000
CONNECTIONS = 64
WARMUP_SECONDS = 3
CLK_TCK = os.sysconf("SC_CLK_TCK")

LUA = r"""
local scenario = os.getenv("LC_SCENARIO")
local host = os.getenv("LC_HOST")
local pool = tonumber(os.getenv("LC_XFF_POOL"))
local out = os.getenv("LC_OUT")
local bodies = {}
for line in io.lines(os.getenv("LC_KEYS")) do
  bodies[#bodies + 1] = "key=" .. line .. "&action=balance"
end
local threads = {}
local n = 0

function setup(thread)
  threads[#threads + 1] = thread
end

function init(args)
  statuses = {}
end

function request()
  n = n + 1
  local a = n % pool
  local xff = "10." .. math.floor(a / 65536) .. "." .. (math.floor(a / 256) % 256) .. "."
    .. (a % 256)
  local body = "action=nope"
  if scenario == "balance" then body = bodies[(n % #bodies) + 1] end
  return wrk.format("POST", "/api/v2", {
    ["Host"] = host,
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["X-Forwarded-For"] = xff,
  }, body)
end

function response(status, headers, body)
  local s = tostring(status)
  statuses[s] = (statuses[s] or 0) + 1
end

function done(summary, latency, requests)
  local merged = {}
  for _, t in ipairs(threads) do
    for s, c in pairs(t:get("statuses")) do merged[s] = (merged[s] or 0) + c end
  end
  local parts = {}
  for s, c in pairs(merged) do parts[#parts + 1] = string.format('"%s": %d', s, c) end
  local e = summary.errors
  local f = io.open(out, "w")
  f:write(string.format(
    '{"requests": %d, "duration_us": %d, "socket_errors": %d, "p50_us": %d, "p99_us": %d, '
      .. '"statuses": {%s}}',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), table.concat(parts, ", ")))
  f:close()
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


async def make_database(server_url: str, name: str, keys_path: Path) -> str:
    """A fresh, migrated database with one panel and USERS users; their keys go to keys_path."""
    import asyncpg

    from panelsrv.store import admin, db, keys

    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = with_database(server_url, name)
    conn = await db.open_migrated(url)
    try:
        await admin.add_panel(conn, "limits.bench", "USD")
        raw = []
        for i in range(USERS):
            user, _ = await admin.add_user(conn, f"u{i}@bench.test", "limits.bench", "100", "0")
            raw.append((await keys.create(conn, user.id)).raw)
    finally:
        await conn.close()
    keys_path.write_text("\n".join(raw) + "\n")
    return url


async def drop_database(server_url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def http_get(port: int, path: str) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), 2) as s:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@dataclass
class Arm:
    name: str
    cpu: str
    url: str
    port: int = field(default_factory=free_port)
    ops_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [
            "--database-url", self.url, "--port", str(self.port), "--workers", "1",
            "--set", f"ops_port={self.ops_port}", "--set", "log_level=warning",
        ]  # fmt: skip
        if self.name == "on":
            command = [sys.executable, "-m", "panelsrv", "serve", *args]
        else:
            command = [sys.executable, "-m", "bench.limiter_cost", "--serve-unlimited", *args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PANELSRV_")}
        self.proc = subprocess.Popen(
            ["taskset", "-c", self.cpu, *command], env=env, cwd=ROOT, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                if http_get(self.ops_port, "/readyz")[0] == 200:
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server {self.name} did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cpu_seconds(self) -> float:
        """CPU time of the server's processes (the supervisor and its worker)."""
        assert self.proc is not None
        pids = [self.proc.pid]
        with contextlib.suppress(OSError):
            pids += [int(p) for p in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
                     .read_text().split()]  # fmt: skip
        total = 0
        for pid in pids:
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / CLK_TCK

    def metrics(self) -> dict[str, float]:
        _, body = http_get(self.ops_port, "/metrics")
        values = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values


@dataclass
class Run:
    arm: str
    scenario: str
    round: int
    rps: float
    cpu_us: float  # server CPU per request
    p50_us: int
    p99_us: int
    statuses: dict[str, int]
    socket_errors: int
    ip_keys: int  # per-IP buckets the guard held mid-run (0 for `off`: no guard)
    user_keys: int


def load(arms: list[Arm], scenario: str, seconds: int, cpu: str, lua: Path, keys: Path
         ) -> tuple[list[Run], float]:  # fmt: skip
    """One wrk per arm, all at once; the runs and the server core's busy share meanwhile."""
    outs = [Path(tempfile.mkstemp(prefix="limiter-cost-", suffix=".json")[1]) for _ in arms]
    procs = []
    cpu_before = [arm.cpu_seconds() for arm in arms]
    started = time.monotonic()
    try:
        for arm, out in zip(arms, outs, strict=True):
            env = {
                **os.environ, "LC_SCENARIO": scenario, "LC_HOST": "limits.bench",
                "LC_XFF_POOL": str(XFF_POOL), "LC_KEYS": str(keys), "LC_OUT": str(out),
            }  # fmt: skip
            procs.append(subprocess.Popen(
                ["taskset", "-c", cpu, "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s",
                 "--timeout", "5s", "-s", str(lua), f"http://127.0.0.1:{arm.port}/api/v2"],
                env=env, stdout=subprocess.DEVNULL,
            ))  # fmt: skip
        time.sleep(seconds / 2)
        held = [arm.metrics() for arm in arms]  # mid-run: what the guard holds under load
        for proc in procs:
            if proc.wait(seconds + 30) != 0:
                raise RuntimeError(f"wrk exited with {proc.returncode}")
        elapsed = time.monotonic() - started
        results = [json.loads(out.read_text()) for out in outs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for out in outs:
            out.unlink(missing_ok=True)
    runs = []
    busy = 0.0
    for arm, result, before, metrics in zip(arms, results, cpu_before, held, strict=True):
        spent = arm.cpu_seconds() - before
        busy += spent
        requests = result["requests"]
        runs.append(Run(
            arm=arm.name,
            scenario=scenario,
            round=0,
            rps=requests / (result["duration_us"] / 1e6),
            cpu_us=spent / max(1, requests) * 1e6,
            p50_us=result["p50_us"],
            p99_us=result["p99_us"],
            statuses=result["statuses"],
            socket_errors=result["socket_errors"],
            ip_keys=int(metrics.get("panelsrv_guard_ip_keys", 0)),
            user_keys=int(metrics.get("panelsrv_guard_user_keys", 0)),
        ))  # fmt: skip
    return runs, busy / elapsed


EXPECTED = {"nope": "400", "balance": "200"}


def machine() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs ({model or platform.machine()}), Linux {platform.release()}, "
        f"Python {platform.python_version()}; load average at start {load}"
    )


def commit() -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        return subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
    return "unknown"


def report(runs: list[Run], args: argparse.Namespace, layout: tuple[str, str], notes: list[str]
           ) -> str:  # fmt: skip
    lines = [
        "# Limiter cost: `panelsrv serve --workers 1`, limits on vs off",
        "",
        f"Recorded {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} at commit {commit()} "
        f"by `python -m bench.limiter_cost --rounds {args.rounds} --seconds {args.seconds}`.",
        f"Machine: {machine()}.",
        f"Both servers pinned to CPU {layout[0]} and loaded at the same time; each by its own "
        f"wrk (1 thread, {CONNECTIONS} keep-alive connections), both on CPU {layout[1]}; "
        "PostgreSQL unpinned on the same machine.",
        "Method, arms and scenarios: see the docstring of bench/limiter_cost.py. `on` runs the "
        "default limits with X-Forwarded-For spread over "
        f"{XFF_POOL:,} addresses and `balance` over {USERS:,} users (nothing refused); `off` "
        "builds no guard at all.",
        "",
        "## Result",
        "",
        "| scenario | on: req/s (median) | off: req/s (median) | on/off per round: median "
        "(min–max) | cost | server CPU µs/req on / off |",
        "|---|---|---|---|---|---|",
    ]
    for scenario in EXPECTED:
        on = [r for r in runs if r.scenario == scenario and r.arm == "on"]
        off = [r for r in runs if r.scenario == scenario and r.arm == "off"]
        ratios = [a.rps / b.rps for a, b in zip(on, off, strict=True)]
        median = statistics.median(ratios)
        lines.append(
            f"| {scenario} | {statistics.median(r.rps for r in on):,.0f} | "
            f"{statistics.median(r.rps for r in off):,.0f} | {median:.3f} "
            f"({min(ratios):.3f}–{max(ratios):.3f}) | {(1 - median) * 100:.1f}% | "
            f"{statistics.median(r.cpu_us for r in on):.1f} / "
            f"{statistics.median(r.cpu_us for r in off):.1f} |"
        )
    lines += [
        "",
        "## Every run (`on` and `off` of a round ran at the same time)",
        "",
        "| round | scenario | arm | req/s | server CPU µs/req | p50 µs | p99 µs | statuses "
        "| socket errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r.statuses.items()))
        lines.append(
            f"| {r.round} | {r.scenario} | {r.arm} | {r.rps:,.0f} | {r.cpu_us:.1f} | "
            f"{r.p50_us} | {r.p99_us} | {statuses} | {r.socket_errors} |"
        )
    lines += ["", "## Notes", "", *[f"- {note}" for note in notes], ""]
    return "\n".join(lines)


def serve_unlimited(argv: list[str]) -> None:
    """The `off` arm: the `serve` command line, run with no guard."""
    import logging

    from panelsrv import cli, server

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = cli.load_config(cli.build_parser().parse_args(["serve", *argv]))
    logging.getLogger("panelsrv").setLevel(cfg.log_level.upper())
    sys.exit(server.run_serve(cfg, guarded=False))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-unlimited":
        serve_unlimited(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "PANELSRV_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="a PostgreSQL server (its maintenance database); a database is created on it",
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "limiter_cost.md"))
    args = parser.parse_args()
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (apt-get install -y {tool})")
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, wrk_cpu = str(cpus[-1]), str(cpus[0])
    work = Path(tempfile.mkdtemp(prefix="limiter-cost-"))
    lua, keys = work / "limiter_cost.lua", work / "keys.txt"
    lua.write_text(LUA)
    name = f"panelsrv_limiter_cost_{os.getpid()}_{secrets.token_hex(3)}"
    url = asyncio.run(make_database(args.database_url, name, keys))
    arms = [Arm("on", server_cpu, url), Arm("off", server_cpu, url)]
    runs: list[Run] = []
    notes: list[str] = []
    try:
        for arm in arms:
            arm.start()
        for scenario in EXPECTED:  # warm both: key caches, catalog, allocator
            load(arms, scenario, WARMUP_SECONDS, wrk_cpu, lua, keys)
        busy: list[float] = []
        for n in range(1, args.rounds + 1):
            for scenario in EXPECTED:
                pair, share = load(arms, scenario, args.seconds, wrk_cpu, lua, keys)
                busy.append(share)
                for run in pair:
                    run.round = n
                    runs.append(run)
                on, off = pair
                print(
                    f"round {n} {scenario:8} on {on.rps:8,.0f} off {off.rps:8,.0f} req/s "
                    f"ratio {on.rps / off.rps:.3f}, server core busy {share:.0%}",
                    flush=True,
                )
        notes.append(
            f"The server core was busy {min(busy):.0%}–{max(busy):.0%} of each run (both "
            "servers together): the servers, not wrk, were the bottleneck."
            if min(busy) >= 0.9
            else f"The server core was busy only {min(busy):.0%}–{max(busy):.0%} of some runs: "
            "wrk (or the machine) may have limited them; read the ratios with care."
        )
        held = [r for r in runs if r.arm == "on"]
        notes.append(
            "Mid-run, the `on` server's guard held "
            f"{min(r.ip_keys for r in held):,}–{max(r.ip_keys for r in held):,} per-IP buckets "
            f"and up to {max(r.user_keys for r in held):,} per-user buckets (the addresses and "
            "users seen within the last sweep, about a second); the `off` server has no guard "
            f"gauges at all ({sum(k.startswith('panelsrv_guard_') for k in arms[1].metrics())})."
        )
        unexpected = [r for r in runs if set(r.statuses) != {EXPECTED[r.scenario]}]
        notes.append(
            "Every response had the scenario's expected status (400 for `nope`, 200 for "
            "`balance`): nothing was refused."
            if not unexpected
            else f"{len(unexpected)} runs saw unexpected statuses: see the table."
        )
    finally:
        for arm in arms:
            arm.stop()
        asyncio.run(drop_database(args.database_url, name))
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report(runs, args, (server_cpu, wrk_cpu), notes))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
