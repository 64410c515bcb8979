"""A PostgreSQL server of our own, to stop, start and restart at will, for the availability
tests and the chaos run (the shared test server is never touched): the binaries and the
run-as-another-user-when-root handling of the `pgserver` package, the embedded database's, with
its data directory under a directory of the caller's.

It listens on a Unix socket only; `url()` names a database on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pgserver

from panelsrv.store import db

logging.getLogger("pgserver").setLevel(logging.CRITICAL)  # a failed pg_ctl raises anyway


class Cluster:
    def __init__(self, root: Path) -> None:
        self.pgdata = root / "pgdata"
        self.pgdata.mkdir(parents=True)
        self._server = pgserver.get_server(
            self.pgdata, cleanup_mode=None
        )  # close() stops and deletes
        uri = self._server.get_uri("postgres")
        self.socket_dir = parse_qs(urlsplit(uri).query)["host"][0]
        self._user = self._server.system_user
        self._log = self.pgdata / "log"

    def url(self, database: str = "panelsrv") -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}"

    def _pg_ctl(self, *args: str) -> None:
        kwargs = {"user": self._user} if self._user else {}
        pgserver.pg_ctl([*args], pgdata=self.pgdata, **kwargs)  # type: ignore[attr-defined]

    def stop(self) -> None:
        self._pg_ctl("-w", "-m", "immediate", "stop")

    def start(self) -> None:
        self._pg_ctl(
            "-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self._log), "start"
        )

    def restart(self) -> None:
        """What a crash and a supervisor's restart look like: every backend killed at once."""
        self._pg_ctl("-w", "-m", "immediate", "restart")

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # stopped already
            self._pg_ctl("-w", "-m", "immediate", "stop")
        self._server.cleanup()
        shutil.rmtree(self.pgdata, ignore_errors=True)


async def answers(url: str) -> bool:
    """`select 1` works on a new connection."""
    try:
        conn = await db.connect(url, timeout=1.0)
    except db.DatabaseError:
        return False
    try:
        return await conn.fetchval("SELECT 1") == 1
    except Exception:  # whatever a server that is going down or starting up answers
        return False
    finally:
        await conn.close()


async def until_answering(url: str, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await answers(url):
        assert asyncio.get_running_loop().time() < deadline, "the database did not come back"
        await asyncio.sleep(0.02)
