"""A `serve`-shaped program for the process tests: N forked workers, each with the echo API on
--port and the ops listener on --ops-port (both SO_REUSEPORT), metrics shared across workers.

    python -m tests.http.serve_app --port P --ops-port Q --workers 2 [--grace S] [--fail-start]
        [--gate DIR]

With --gate, a worker leaves `stopping-<pid>` in DIR as its stop begins, just before its API
listener stops (no loop turn between), for the tests that hold a request across a stop.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from panelsrv import metrics
from panelsrv.http.listener import HttpServer, Listen, api_routes
from panelsrv.http.ops import MetricsShare, ops_routes
from panelsrv.procs import Group, Runnable, Slot, Supervisor
from tests.http.httpkit import echo


class StopMark:
    """Stopped first (a Group stops in reverse order): marks that the worker's stop began."""

    def __init__(self, gate: str) -> None:
        self._mark = Path(gate) / f"stopping-{os.getpid()}"

    async def start(self) -> None:
        pass

    async def stop(self, grace: float) -> None:
        self._mark.touch()


class FailingStart:
    async def start(self) -> None:
        raise RuntimeError("cannot start")

    async def stop(self, grace: float) -> None:
        pass


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ops-port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--grace", type=float, default=5.0)
    parser.add_argument("--fail-start", action="store_true")
    parser.add_argument("--gate", default="")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(process)d %(name)s %(message)s")

    async def ready() -> bool:
        return True

    def factory(slot: Slot) -> Runnable:
        if args.fail_start:
            return FailingStart()
        registry = metrics.Registry()
        share = MetricsShare(registry, slot.run_dir, slot.index, interval=0.1)
        api = HttpServer(api_routes(echo), registry=registry)
        ops = HttpServer(ops_routes(ready, share.collect))
        listeners = (Listen(api, "127.0.0.1", args.port), Listen(ops, "127.0.0.1", args.ops_port))
        return Group(share, *listeners, *([StopMark(args.gate)] if args.gate else []))

    supervisor = Supervisor(
        factory,
        workers=args.workers,
        grace=args.grace,
        min_uptime=1.0,
        backoff=(0.05, 0.2),
        max_start_failures=3,
    )
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
