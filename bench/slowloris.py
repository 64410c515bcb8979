"""`python -m bench.slowloris [--slow 1000]` (`make slowloris`): slow clients against `panelsrv
serve --workers 2` while real traffic is measured; tests/chaos/test_slowloris_short.py runs the
same `measure` with 300.

The server runs with `header_timeout` and `body_timeout` of 2 s (HEADER_TIMEOUT, BODY_TIMEOUT)
against a PostgreSQL server of the run's own (bench/pgcluster.py; the test passes its database
instead). First `unloaded` seconds of steady traffic alone: 100 requests a second (`balance`
with a real key, each on a new connection, sent on a fixed schedule and timed from it, so a
late send counts against the server); then the swarm (`python -m bench.slowloris --swarm`, a
process of its own so its work does not delay the measuring loop) keeps `slow` connections
open, half trickling a request head a byte every TRICKLE seconds and half a body after a
complete head, each opened again as soon as the server drops it, from the loopback addresses
127.0.0.2-127.0.0.9 (`slow` / 8 each: under `max_connections_per_ip`, 256 per process, which
stays at its default); after `ramp` seconds the same traffic is measured for `loaded` seconds.

Checks (`problems`, each 0 when all is well): every steady request answered 200; the loaded p99
within 2x the unloaded p99 of the same run; every slow connection dropped by the server within
its timeout (from the connection, or from the end of the head for a body) plus SLACK, none kept
longer. Figures: p50/p99/max of both phases, shed counts and times by kind. Everything listens
on and connects to 127.0.0.1 (the swarm from 127.0.0.x); everything started here is stopped
by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from bench.procs import Proc, free_port
from panelsrv.store import admin, db, keys

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
SLACK = 1.0  # seconds past a timeout a connection may still be open (timer and accept delays)
TRICKLE = 0.5  # seconds between two bytes of a slow connection
SOURCES = [f"127.0.0.{n}" for n in range(2, 10)]
RATE = 100  # steady requests a second
HOST = "slowloris.test"
RATIO = 2.0  # the loaded p99 may be at most this times the unloaded one


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


# -- the swarm (its own process) ---------------------------------------------------------------


async def slow_connection(
    port: int, source: str, body: bool, until: float, failed: list[str]
) -> list[float]:
    """Connections one after another until `until`: each trickles a head (or a body after a
    complete head) until the server drops it. Seconds each was kept, from the connection (or
    the end of the head); a connection still open past its timeout + SLACK + 5 s counts as
    `inf`. A connection that could not be made goes to `failed`."""
    kept: list[float] = []
    limit = (BODY_TIMEOUT if body else HEADER_TIMEOUT) + SLACK + 5.0
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, local_addr=(source, 0)
            )
        except OSError as exc:
            failed.append(type(exc).__name__)
            await asyncio.sleep(TRICKLE)
            continue
        since = time.monotonic()
        if body:
            writer.write(
                b"POST /api/v2 HTTP/1.1\r\nHost: %s\r\nContent-Type: application/"
                b"x-www-form-urlencoded\r\nContent-Length: 100000\r\n\r\n" % HOST.encode()
            )
            since = time.monotonic()
        else:
            writer.write(b"POST /api/v2 HTTP/1.1\r\nHost: %s\r\nX-Slow: " % HOST.encode())

        async def trickle(w: asyncio.StreamWriter = writer) -> None:
            with contextlib.suppress(OSError):
                while True:
                    await asyncio.sleep(TRICKLE)
                    w.write(b"a")
                    await w.drain()

        dripping = asyncio.create_task(trickle())
        try:
            async with asyncio.timeout(limit):
                while await reader.read(4096):
                    pass
            kept.append(time.monotonic() - since)
        except TimeoutError:
            kept.append(float("inf"))
        except OSError:
            kept.append(time.monotonic() - since)
        finally:
            dripping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dripping
            writer.close()
    return kept


async def swarm(port: int, slow: int, seconds: float) -> dict[str, Any]:
    until = time.monotonic() + seconds
    kinds = [i % 2 == 1 for i in range(slow)]  # even: head, odd: body
    failed: list[str] = []
    kept = await asyncio.gather(
        *(slow_connection(port, SOURCES[i % len(SOURCES)], body, until, failed)
          for i, body in enumerate(kinds))
    )  # fmt: skip
    return {
        "failed": failed,
        "head": [t for body, ks in zip(kinds, kept, strict=True) if not body for t in ks],
        "body": [t for body, ks in zip(kinds, kept, strict=True) if body for t in ks],
    }


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            sys.exit(f"slowloris needs {needed} file descriptors; `ulimit -n` allows {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


# -- the steady traffic and the run -----------------------------------------------------------


async def one(port: int, body: bytes, due: float) -> tuple[int, float]:
    """(status or 0 for no answer, seconds from `due` to the whole answer)."""
    await asyncio.sleep(max(0.0, due - time.monotonic()))
    try:
        async with asyncio.timeout(10.0):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(body)
                data = await reader.read()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return 0, time.monotonic() - due
    status = int(data[9:12]) if data.startswith(b"HTTP/1.1 ") else 0
    return status, time.monotonic() - due


async def steady(port: int, key: str, seconds: float) -> list[tuple[int, float]]:
    form = urlencode({"key": key, "action": "balance"}).encode()
    body = (
        b"POST /api/v2 HTTP/1.1\r\nHost: %s\r\nContent-Type: application/x-www-form-urlencoded"
        b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (HOST.encode(), len(form), form)
    )
    start = time.monotonic() + 0.1
    n = int(seconds * RATE)
    return await asyncio.gather(*(one(port, body, start + i / RATE) for i in range(n)))


def latency(results: list[tuple[int, float]]) -> dict[str, float]:
    ms = [s * 1000 for _, s in results]
    return {
        "requests": len(results),
        "p50_ms": round(percentile(ms, 50), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2),
    }


def shed(kept: list[float], timeout: float) -> dict[str, Any]:
    return {
        "connections": len(kept),
        "longest_s": round(max(kept, default=0.0), 3),
        "mean_s": round(sum(kept) / max(1, len(kept)), 3),
        "past_timeout": sum(1 for t in kept if t > timeout + SLACK),
    }


async def measure(
    database_url: str, root: Path, *, slow: int, unloaded: float, ramp: float, loaded: float
) -> dict[str, Any]:
    conn = await db.connect(database_url)
    try:
        domain = f"{time.monotonic_ns()}.{HOST}"
        await admin.add_panel(conn, domain, "USD")
        user, _ = await admin.add_user(conn, f"steady@{domain}", domain, "10.00", "0")
        key = (await keys.create(conn, user.id)).raw
    finally:
        await conn.close()
    port = free_port()
    sets = {
        "ops_port": "0", "log_level": "warning", "header_timeout": str(HEADER_TIMEOUT),
        "body_timeout": str(BODY_TIMEOUT), "ip_rate": "1000000", "ip_burst": "1000000",
        "user_rate": "1000000", "user_burst": "1000000", "never_block": "127.0.0.1",
        "default_panel": domain,
    }  # fmt: skip
    serve = Proc(
        "serve",
        [sys.executable, "-m", "panelsrv", "serve", "--database-url", database_url, "--port",
         str(port), "--workers", "2",
         *(arg for name, value in sets.items() for arg in ("--set", f"{name}={value}"))],
        None, root / "serve.log", {k: v for k, v in os.environ.items() if k[:9] != "PANELSRV_"},
    )  # fmt: skip
    try:
        probe = b"GET /api/v2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        await asyncio.to_thread(serve.wait_ready, port, probe, b"HTTP/1.1 ")
        await steady(port, key, 2.0)  # warm: keys and wallets cached in both processes
        quiet = await steady(port, key, unloaded)
        swarming = subprocess.Popen(
            [sys.executable, "-m", "bench.slowloris", "--swarm", str(port), "--slow", str(slow),
             "--seconds", str(ramp + loaded)],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        try:
            await asyncio.sleep(ramp)  # the swarm connects and reaches its steady state
            busy = await steady(port, key, loaded)
            out, _ = await asyncio.to_thread(swarming.communicate, timeout=ramp + loaded + 60)
        finally:
            if swarming.poll() is None:
                swarming.kill()
                swarming.wait()
        kept = json.loads(out)
    finally:
        serve.stop()
    before, during = latency(quiet), latency(busy)
    heads, bodies = shed(kept["head"], HEADER_TIMEOUT), shed(kept["body"], BODY_TIMEOUT)
    problems = {
        "steady_not_200": sum(1 for status, _ in quiet + busy if status != 200),
        "p99_over_2x": int(during["p99_ms"] > RATIO * before["p99_ms"]),
        "slow_kept_past_timeout": heads["past_timeout"] + bodies["past_timeout"],
        "slow_connects_failed": len(kept["failed"]),
    }
    return {
        "ok": not any(problems.values()),
        "problems": problems,
        "slow_connections": slow,
        "rate": RATE,
        "timeouts_s": {"header": HEADER_TIMEOUT, "body": BODY_TIMEOUT, "slack": SLACK},
        "unloaded": before,
        "loaded": during,
        "p99_ratio": round(during["p99_ms"] / before["p99_ms"], 2),
        "shed_head": heads,
        "shed_body": bodies,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.slowloris", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--slow", type=int, default=1000, help="slow connections held open")
    parser.add_argument("--unloaded", type=float, default=20.0, help="seconds measured alone")
    parser.add_argument("--ramp", type=float, default=5.0, help="seconds the swarm ramps up")
    parser.add_argument("--loaded", type=float, default=30.0, help="seconds measured with it")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    parser.add_argument("--swarm", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    import uvloop

    if args.swarm:  # the child: the slow connections; their kept times on stdout
        raise_fd_limit(args.slow + 256)
        print(json.dumps(uvloop.run(swarm(args.swarm, args.slow, args.seconds))))
        return 0
    from bench.pgcluster import Cluster

    with tempfile.TemporaryDirectory(prefix="panelsrv-slowloris-") as tmp:
        cluster = Cluster(Path(tmp) / "pg")
        try:

            async def go() -> dict[str, Any]:
                await (await db.open_migrated(cluster.url())).close()
                return await measure(
                    cluster.url(), Path(tmp), slow=args.slow, unloaded=args.unloaded,
                    ramp=args.ramp, loaded=args.loaded,
                )  # fmt: skip

            figures = uvloop.run(go())
        finally:
            cluster.close()
    figures["command"] = " ".join(["python -m bench.slowloris", *(argv or sys.argv[1:])])
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
