"""Instructions per request on the socket-free request path, counted by callgrind (not a test).

    .venv/bin/python -m bench.micro.gauge --database-url postgresql://.../panelsrv_bench

The harness's µs (bench/micro/request_path.py) move with the machine's load, wrk's by ±30 %;
an instruction count does not, so this is the figure to quote for a change to the hot path.
Runs itself again under `valgrind --tool=callgrind --dump-before=getpgrp` with a fixed
PYTHONHASHSEED. That inner run starts the harness's `App` and connection (`served`), then per
scenario feeds its first `--count` requests once to warm (keys resolved, statements prepared,
buckets and strikes in the state the harness's later rounds see) and the same requests again
between two `os.getpgrp()` calls: callgrind dumps and zeroes its counters before every call of
libc's getpgrp, so the second dump of each pair holds exactly the measured requests. What is
counted is this process's work (parse, limits, decode, key cache, action, render, metrics,
asyncpg's client side, the event loop's turns); PostgreSQL's and the kernel's are not in it.
Writes instructions per request per scenario to `--out` (bench/results/gauge.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import uvloop

from bench.limiter_cost import commit
from bench.micro.request_path import feed_awaiting, feed_now, served
from panelsrv.config import Config
from panelsrv.guard import sync
from panelsrv.http.protocol import READY
from panelsrv.store import db, notifications

ROOT = Path(__file__).resolve().parent.parent.parent
TOTALS = re.compile(rb"^totals:\s+(\d+)", re.M)
SLOWDOWN = 50  # about how much slower a process runs under callgrind


async def inner(database_url: str, only: list[str], count: int) -> None:
    """Under callgrind: one dump pair per scenario, in `only`'s order."""
    # Callgrind runs every step ~50x slower, and the key cache trusts itself only
    # MAX_STALENESS past its listener's last answered ping: at 1 s it lapsed between pings, so
    # the memory scenarios went to the database and their pipelined requests closed the
    # connection. The window, the ping's interval and the connections' timeouts are stretched
    # by the same factor (a pool's connect took over 5 s: the first requests answered 503), and
    # so are the limits' sweep and reconciliation, which run every so much wall time.
    for module, name in ((notifications, "MAX_STALENESS"), (notifications, "PING_INTERVAL"),
                         (notifications, "PING_TIMEOUT"), (notifications, "CONNECT_TIMEOUT"),
                         (db, "CONNECT_TIMEOUT"), (sync, "SWEEP_EVERY")):
        setattr(module, name, getattr(module, name) * SLOWDOWN)
    sync_interval = Config().limit_sync_interval * SLOWDOWN
    async with served(database_url, limit_sync_interval=sync_interval) as path:
        for name in only:
            memory = name in path.memory
            reqs = (path.memory if memory else path.db)[name][:count]
            feeder = feed_now if memory else feed_awaiting
            await feeder(path.proto, reqs)
            os.getpgrp()
            await feeder(path.proto, reqs)
            os.getpgrp()
            # what the harness checks: answered from memory, or answered
            assert path.proto.state == READY, f"{name}: the connection is {path.proto.state}"
            assert path.sink.last.startswith(b"HTTP/1.1 "), f"{name}: {path.sink.last[:200]!r}"


def counted(database_url: str, only: list[str], count: int) -> dict[str, int]:
    """Runs `inner` under callgrind; instructions of each scenario's measured requests."""
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "cg.out"
        env = dict(os.environ, PYTHONHASHSEED="0")
        subprocess.run(
            ["valgrind", "--tool=callgrind", "--dump-before=getpgrp",
             f"--log-file={work}/valgrind.log",
             f"--callgrind-out-file={out}", sys.executable, "-m", "bench.micro.gauge",
             "--inner", "--database-url", database_url, "--only", ",".join(only),
             "--count", str(count)],
            check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        # dumps 1, 3, 5, ... hold what came before each scenario's measured requests
        measured = [out.with_name(f"cg.out.{2 * i + 2}") for i in range(len(only))]
        return {name: int(TOTALS.search(dump.read_bytes()).group(1))  # type: ignore[union-attr]
                for name, dump in zip(only, measured, strict=True)}


def main(args: argparse.Namespace) -> None:
    only = args.only.split(",")
    if args.inner:
        uvloop.run(inner(args.database_url, only, args.count))
        return
    totals = counted(args.database_url, only, args.count)
    per_request = {name: round(ir / args.count) for name, ir in totals.items()}
    for name, ir in per_request.items():
        print(f"{name:16s} {ir:10,d} instructions/request")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "command": "python -m bench.micro.gauge --database-url URL/panelsrv_bench"
                       f" --count {args.count} --only {args.only}",
            "commit": commit(),
            "python": platform.python_version(),
            "requests_per_scenario": args.count,
            "instructions_per_request": per_request,
        }, indent=2) + "\n")


SCENARIOS = ("services,reject_key,reject_ip,balance,status,status100,add,add_replay,"
             "cancel100,cancel100_replay")

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--only", default=SCENARIOS, help="scenarios, comma-separated")
    parser.add_argument("--count", type=int, default=1000, help="measured requests per scenario")
    parser.add_argument("--out", default="", help="write the figures here as JSON")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    main(parser.parse_args())
