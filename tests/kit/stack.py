"""Starting what the tests serve against, as the production box starts it: subprocesses.

`Served` is one `panelsrv serve` (N worker processes) on free ports, started and ready (its ops
listener answers 200 at /readyz, or /healthz for a test whose database is down) and stopped with
SIGTERM; `served()` is the usual one, which exempts loopback from the invalid-key auto-block
(`QUIET`: tests send bad keys on purpose, and poll with keys a process does not know yet).
`spawn` starts any other command (`panelsrv worker`, `panelsrv run`, a test app) the same way:
the environment without the runner's PANELSRV_* settings, the output to a file or discarded.
In-process servers (sockets or a fake transport) are in tests/http/httpkit.py and sansio.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.http.httpkit import free_port
from tests.kit.waiting import until_sync

# Limits far above what a test sends, unless a test is about limits.
GENEROUS = {
    "ip_rate": "1000000",
    "ip_burst": "1000000",
    "user_rate": "1000000",
    "user_burst": "1000000",
}
QUIET = {"never_block": "127.0.0.1,::1"}


def panelsrv_argv(*args: str) -> list[str]:
    """The argv of `panelsrv <args>` (through this interpreter, so PYTHONPATH holds)."""
    return [sys.executable, "-m", "panelsrv", *args]


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    output: Path | None = None,
    **popen: Any,
) -> subprocess.Popen[Any]:
    """Start `argv` with the test run's environment minus PANELSRV_* plus `env`; `output`: a
    file that gets its stdout and stderr (appended), else they go where `popen` says (the
    test run's by default)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PANELSRV_")}
    popen.setdefault("stdin", subprocess.DEVNULL)
    if output is None:
        return subprocess.Popen(argv, env={**base, **(env or {})}, **popen)
    with output.open("ab") as out:  # the child has its own copy once started
        return subprocess.Popen(
            argv, env={**base, **(env or {})}, stdout=out, stderr=subprocess.STDOUT, **popen
        )


def ops_status(port: int, path: str = "/readyz") -> int | None:
    """The status an ops listener answers at `path`; None while nothing answers."""
    try:
        with socket.create_connection(("127.0.0.1", port), 0.5) as s:
            s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode())
            head = s.recv(64)
    except OSError:
        return None
    return int(head[9:12]) if head.startswith(b"HTTP/1.1 ") else None


class Served:
    def __init__(
        self,
        database_url: str,
        *,
        workers: int = 1,
        settings: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        output: Path | None = None,
    ) -> None:
        """`output`: a file that gets the server's stdout and stderr (its log lines), for a
        test that reads them; else they are the test run's."""
        self.database_url = database_url
        self.output = output
        self.workers = workers
        self.settings = {**GENEROUS, **(settings or {})}
        self.env = env or {}
        self.port = free_port()
        self.ops_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0, until: str = "/readyz") -> Served:
        """Start, and wait until the ops listener answers 200 at `until` (`/healthz`: the
        processes listen, whether or not the database answers)."""
        args = panelsrv_argv(
            "serve", "--database-url", self.database_url, "--port", str(self.port),
            "--workers", str(self.workers), "--set", f"ops_port={self.ops_port}",
        )  # fmt: skip
        for name, value in self.settings.items():
            args += ["--set", f"{name}={value}"]
        proc = self.proc = spawn(args, env=self.env, output=self.output)

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"panelsrv serve exited with {proc.returncode}")
            return ops_status(self.ops_port, until) == 200

        try:
            until_sync(ready, timeout, interval=0.05, what="panelsrv serve ready")
        except AssertionError:
            self.stop()
            raise
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def __enter__(self) -> Served:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def served(database_url: str, workers: int = 1, **settings: str) -> Iterator[Served]:
    """A started `Served` with loopback exempt from the auto-block (`QUIET`) and `settings`."""
    with Served(database_url, workers=workers, settings={**QUIET, **settings}) as server:
        yield server
