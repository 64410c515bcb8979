"""Per-call cost of the guard's hot path, in ns (not a test).

    .venv/bin/python bench/micro_guard.py [--n 200000]

Prints the best of 7 runs for each case. Context: the bare uvloop + httptools server spends
~8 µs of Python per request (ARCHITECTURE.md), so the limiter's budget for "< 10% of a request"
is ~800 ns per request: `check_ip` on the admitted path (once per request) plus, for an
authenticated request, `check_user`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from panelsrv.guard import Guard, GuardSettings
from panelsrv.guard.coord import Lease

REQUEST_NS = 8000


def best_ns(call: Callable[[int], object], n: int) -> float:
    runs = []
    for _ in range(7):
        started = time.perf_counter_ns()
        call(n)
        runs.append((time.perf_counter_ns() - started) / n)
    return min(runs)


def loop_of(fn: Callable[[str], object], keys: list[str]) -> Callable[[int], object]:
    count = len(keys)

    def run(n: int) -> None:
        for i in range(n):
            fn(keys[i % count])

    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200_000)
    n = parser.parse_args().n
    ips = [f"198.51.{i >> 8}.{i & 255}" for i in range(1000)]

    # Rate high enough that every call is admitted: the common path of a legitimate client.
    admit = Guard(
        GuardSettings(ip_rate=1e9, ip_burst=10**9, user_rate=1e9, user_burst=10**9)
    )
    # Shared mode, key leased (a hot key spending granted tokens).
    hot = Guard(GuardSettings(ip_rate=1e9, ip_burst=10**9))
    hot.coord.ip.share(2, time.monotonic())
    lease = hot.coord.ip.leases["203.0.113.1"] = Lease(0, 0)
    lease.tokens = 10**12
    # Refusal paths: a blocked address, an address over its bucket.
    refuse = Guard(GuardSettings(ip_rate=1, ip_burst=1))
    for _ in range(10):
        refuse.strike("192.0.2.66")
    refuse.check_ip("192.0.2.1")
    user_ids = list(range(1000))

    def users(n: int) -> None:
        check = admit.check_user
        for i in range(n):
            check(user_ids[i % 1000])

    cases: list[tuple[str, Callable[[int], object]]] = [
        ("time.monotonic() alone", lambda n: [time.monotonic() for _ in range(n)]),
        ("check_ip admitted, 1000 addresses", loop_of(admit.check_ip, ips)),
        ("check_ip admitted, one address", loop_of(admit.check_ip, ["198.51.100.1"])),
        ("check_ip admitted, shared mode, leased key", loop_of(hot.check_ip, ["203.0.113.1"])),
        ("check_block, not blocked", loop_of(admit.check_block, ips)),
        ("check_user admitted", users),
        ("check_ip refused, blocked address", loop_of(refuse.check_ip, ["192.0.2.66"])),
        ("check_ip refused, over the bucket", loop_of(refuse.check_ip, ["192.0.2.1"])),
        ("strike (bad key)", loop_of(admit.strike, ips)),
    ]
    width = max(len(name) for name, _ in cases)
    print(f"{'case':<{width}}  ns/call  share of an {REQUEST_NS / 1000:.0f} µs request")
    for name, call in cases:
        ns = best_ns(call, n)
        print(f"{name:<{width}}  {ns:7.0f}  {100 * ns / REQUEST_NS:5.1f}%")


if __name__ == "__main__":
    main()
