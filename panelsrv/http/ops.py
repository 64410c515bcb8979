"""The operations listener's routes, and the metrics every worker process shares.

Transport layer: imports panelsrv.http.{protocol, wire}, panelsrv.metrics and orjson; no
database. The routes run on the same HttpProtocol as the API (a separate HttpServer, bound to
loopback by default): `GET /healthz` (the process answers), `GET /readyz` (the injected
`ready()` says yes within `ready_timeout`), `GET /metrics` (Prometheus text).

Several workers, one scrape: every worker runs a MetricsShare that writes its registry's
snapshot to `<run_dir>/metrics-<slot>.json` about once a second (write to a temp file, then
rename, so readers never see half a file). Whichever worker the scrape reaches (the ops port is
shared with SO_REUSEPORT like the API port) writes its own file first, then merges all of them,
so the answer is the whole process tree within a second's staleness. A worker restarted into the
same slot starts from its predecessor's file (gauges excepted), so counters never go backwards.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import os
from collections.abc import Awaitable, Callable

import orjson

from panelsrv import metrics
from panelsrv.http import wire
from panelsrv.http.request import Request, Route

log = logging.getLogger("panelsrv.ops")

OK_BODY = b'{"status":"ok"}'
UNAVAILABLE_BODY = b'{"status":"unavailable"}'


def ops_routes(
    ready: Callable[[], Awaitable[bool]],
    collect: Callable[[], bytes],
    *,
    ready_timeout: float = 2.0,
) -> dict[bytes, Route]:
    """Routes for an HttpServer: `ready` checks dependencies, `collect` renders the metrics."""

    async def healthz(req: Request) -> tuple[int, bytes, bytes]:
        return 200, OK_BODY, b""

    async def readyz(req: Request) -> tuple[int, bytes, bytes]:
        try:
            ok = await asyncio.wait_for(ready(), ready_timeout)
        except Exception as exc:  # a failing check means "not ready", not a 500
            log.warning("readiness check failed: %s", type(exc).__name__)
            ok = False
        if ok:
            return 200, OK_BODY, b""
        return 503, UNAVAILABLE_BODY, wire.RETRY_AFTER_1

    async def metrics_(req: Request) -> tuple[int, bytes, bytes]:
        return 200, collect(), b""

    return {
        b"/healthz": Route(b"GET", healthz),
        b"/readyz": Route(b"GET", readyz),
        b"/metrics": Route(b"GET", metrics_, wire.PROMETHEUS),
    }


def _read(path: str) -> metrics.Snapshot | None:
    try:
        with open(path, "rb") as f:
            data = orjson.loads(f.read())
    except (OSError, orjson.JSONDecodeError):
        return None  # a worker that never wrote, or a file from an older format
    return data if isinstance(data, dict) else None


class MetricsShare:
    """Ships one worker's registry to the run directory; renders the merged scrape.

    With `run_dir=None` (one process, nothing to share) `collect` renders the registry alone.
    """

    FILE = "metrics-{}.json"

    def __init__(
        self, registry: metrics.Registry, run_dir: str | None, slot: int, interval: float = 1.0
    ) -> None:
        self._registry = registry
        self._run_dir = run_dir
        self._path = os.path.join(run_dir, self.FILE.format(slot)) if run_dir else ""
        self._interval = interval
        self._base: metrics.Snapshot = {}
        self._timer: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        if not self._path:
            return
        previous = _read(self._path)
        if previous:  # a predecessor in this slot: carry its counters, not its gauges
            self._base = {k: v for k, v in previous.items() if v.get("type") != "gauge"}
        self._tick()

    async def stop(self, grace: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._path:
            self.flush()

    def _tick(self) -> None:
        try:
            self.flush()
        except OSError as exc:
            log.warning("cannot write %s: %s", self._path, exc.strerror)
        self._timer = asyncio.get_running_loop().call_later(self._interval, self._tick)

    def snapshot(self) -> metrics.Snapshot:
        own = self._registry.snapshot()
        return metrics.merge([self._base, own]) if self._base else own

    def flush(self) -> None:
        tmp = f"{self._path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(orjson.dumps(self.snapshot()))
        os.replace(tmp, self._path)

    def collect(self) -> bytes:
        if not self._path or self._run_dir is None:
            return self._registry.render()
        self.flush()
        pattern = os.path.join(glob.escape(self._run_dir), self.FILE.format("*"))
        snapshots = [s for s in map(_read, sorted(glob.glob(pattern))) if s is not None]
        return metrics.render(metrics.merge(snapshots))
