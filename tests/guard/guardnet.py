"""Real-time helpers for the guard's backend tests: a cuttable TCP proxy, a paced flood."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from panelsrv.guard import Guard
from tests.kit.waiting import until


async def paced_flood(
    guards: list[Guard], ip: str, per_second: int, seconds: float
) -> tuple[int, float]:
    """Attempts spread evenly in time and round-robin over `guards`; (admitted, elapsed)."""
    total = int(per_second * seconds)
    started = time.monotonic()
    admitted = done = 0
    while done < total:
        due = min(total, int((time.monotonic() - started) * per_second) + 1)
        while done < due:
            admitted += guards[done % len(guards)].check_ip(ip) == 0
            done += 1
        await asyncio.sleep(0.001)
    return admitted, time.monotonic() - started


class Proxy:
    """A loopback TCP proxy the test can cut (close everything, refuse) and restore, or freeze
    (keep every connection open but drop what either side sends: a silent partition)."""

    def __init__(self, host: str, port: int = 0) -> None:
        self.target = (host, port)  # a host and port, or (a Unix socket's path, 0)
        self.port = 0
        self.frozen = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def for_database(cls, url: str) -> tuple[Proxy, Callable[[], str]]:
        """A proxy in front of the PostgreSQL server of `url` (TCP or a Unix socket, as the
        embedded one listens), and a function giving `url` through it once it is started."""
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        socket_dir = query.pop("host", "") or (parts.hostname or "")
        port = parts.port or int(query.pop("port", "5432"))
        if socket_dir.startswith("/"):
            proxy = cls(str(Path(socket_dir) / f".s.PGSQL.{port}"))
        else:
            proxy = cls(parts.hostname or "127.0.0.1", port)

        def through() -> str:
            userinfo = parts.netloc.rpartition("@")[0]
            netloc = f"127.0.0.1:{proxy.port}"
            netloc = f"{userinfo}@{netloc}" if userinfo else netloc
            return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), parts.fragment))

        return proxy, through

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = self.target
        try:
            if port:
                up_reader, up_writer = await asyncio.open_connection(host, port)
            else:
                up_reader, up_writer = await asyncio.open_unix_connection(host)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.get_running_loop().create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await src.read(65536):
                if self.frozen:
                    continue
                dst.write(data)
                await dst.drain()
        dst.transport.abort()
        self._writers.discard(dst)


def hub_worker(path: str, pid: str, procs: int, go: Any, per_second: int, out: Any) -> None:
    """A worker process: wait for `procs` peers on the hub, say so on `out` ("ready"), flood
    once the `go` event is set, and put (admitted, started, ended) on `out`."""
    import uvloop

    from panelsrv.guard import GuardSettings
    from panelsrv.guard.hub import HubBackend

    async def main() -> None:
        guard = Guard(GuardSettings(), pid=pid)
        guard.start(HubBackend(path))
        try:
            await until(lambda: guard.shared and guard.coord.ip.procs == procs, 10.0)
            out.put("ready")
            assert await asyncio.to_thread(go.wait, 20.0), "never told to go"
            started = time.time()
            admitted, _ = await paced_flood([guard], "203.0.113.50", per_second, 1.0)
            out.put((admitted, started, time.time()))
        finally:
            await guard.close()

    uvloop.run(main())
