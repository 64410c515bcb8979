"""Where a panelsrv worker's CPU goes under one scenario: py-spy on the worker while wrk drives.

    python -m bench.profile [--scenarios balance,services] [--seconds 10] [--quick]
                            [--patch MODULE]

Imports bench.run (the same dataset, pinning and systems). For each scenario writes
`<out>/profiles/<scenario>.svg` (flame graph) and `<scenario>.txt`: the functions with the
largest inclusive and self share of the samples (py-spy samples the worker at 1 kHz with
--nonblocking, from the client CPUs, so it does not compete with the server core). `--patch`
starts the server through `bench.patched` with that module's monkeypatches applied, to
measure a prototype of a server change without editing panelsrv/.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
from pathlib import Path

from bench import load, systems
from bench.procs import tree
from bench.run import CONNECTIONS, DATA, ROOT, WRITES, Bench, Settings

# Where a sample's time goes: the first rule (in this order) matching any frame of its stack.
CATEGORIES = [
    ("asyncpg (pool acquire/release, query round trip)", ("asyncpg/",)),
    ("client address (X-Forwarded-For -> ipaddress)", ("clientip.py", "_client_ip")),
    ("limits (guard: IP bucket, user bucket, strikes)", ("panelsrv/guard/",)),
    ("body decoding (form -> msgspec Struct)", ("api/decode.py",)),
    ("key cache / authentication", ("keycache.py", "_authenticate")),
    ("action (respond.py, encoding the reply)", ("api/respond.py", "api/actions.py",
                                                  "store/catalog.py", "money.py")),
    ("handler glue (handler.py)", ("api/handler.py",)),
    ("response write + metrics (_finish)", ("HttpProtocol._finish",)),
    ("connection accept/close (refusals)", ("connection_made", "HttpProtocol.refuse",
                                            "_linger", "connection_lost", "listener.py")),
    ("HTTP parsing (httptools callbacks, reader.py)", ("reader.py", "data_received")),
    ("protocol: task per request, next request", ("protocol.py",)),
    ("event loop (uvloop C: epoll, socket I/O)", ("run_service",)),
]


RATE = 1000  # py-spy samples per second: one sample stands for 1 ms of the worker's time


def summarize(collapsed: Path, requests: int, top: int = 40) -> str:
    """Per-category µs per request (samples x 1 ms / requests), then inclusive and self shares
    per function, from py-spy's collapsed stacks. py-spy cannot tell uvloop's epoll_wait from
    work (both are C under `run_service`), so "event loop" includes idle time when the worker
    was not saturated; every other category is Python work."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    category: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
        name = next((c for c, marks in CATEGORIES
                     if any(m in f for f in frames for m in marks)), "other")
        category[name] += n
    per = 1e6 / RATE / max(1, requests)
    out = [f"{total} samples, {requests} requests\n", "per request (samples x 1 ms / requests):"]
    out += [f"  {100 * n / total:5.1f}%  {n * per:6.1f} µs  {c}" for c, n in category.most_common()]
    out += ["", "inclusive:"]
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    out += ["", "self:"]
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--scenarios", default="balance,services,reject_ip")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--patch", default="", help="module in bench.prototypes to apply")
    parser.add_argument("--no-spy", action="store_true", help="measure only (no py-spy)")
    parser.add_argument("--append", default="", help="also append each run's line to this file")
    parser.add_argument("--out", default=str(ROOT / "results"))
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = Path(args.out) / "profiles"
    out.mkdir(parents=True, exist_ok=True)
    bench = Bench(Settings(args.quick), Path(args.out))
    (bench.out / "logs").mkdir(parents=True, exist_ok=True)
    bench.prepare()
    srv = systems.panelsrv(bench.url, bench.lay.server, bench.logs, patch=args.patch)
    try:
        bench.warm(srv)
        worker = max(p for p in tree(srv.proc.pid) if p != srv.proc.pid)
        for scenario in args.scenarios.split(","):
            tag = f"{scenario}{'-' + args.patch if args.patch else ''}"
            if scenario in WRITES:
                bench.settle()
            raw = out / f"{tag}.collapsed"
            cmd = ["taskset", "-c", bench.lay.client, spy, "record", "--pid", str(worker),
                   "--rate", str(RATE), "--nonblocking", "--duration", str(round(args.seconds)),
                   "--format", "raw", "--output", str(raw)]
            spying = None if args.no_spy else subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            run = load.wrk(srv.port, scenario, data=DATA, users=bench.s.users,
                           seconds=args.seconds, connections=CONNECTIONS,
                           cpus=bench.lay.client, cpu=bench.cpu_probe(srv.proc))
            if spying is not None:
                spying.wait()
            server_us = run.cpu.get("server", 0) / max(1, run.requests) * 1e6
            head = (f"{tag}: {run.rps:,.0f} req/s, p50 {run.p50_ms:.2f} ms, p99 "
                    f"{run.p99_ms:.2f} ms, server CPU {server_us:.1f} µs/request, PostgreSQL "
                    f"{run.cpu.get('postgresql', 0) / max(1, run.requests) * 1e6:.0f} µs/request "
                    f"{'' if args.no_spy else '(py-spy running)'}\n")
            text = head
            if spying is not None:
                text += summarize(raw, run.requests) if raw.exists() else "no samples\n"
                (out / f"{tag}.txt").write_text(text)
            if args.append:
                with open(args.append, "a") as f:
                    f.write(head)
            print(text[:3000], flush=True)
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
