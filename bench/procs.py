"""Processes of a benchmark run: pinning, starting and stopping the systems, CPU and memory.

Imports only the standard library. Every process is started by us, pinned with `taskset`,
and stopped by its own pid (SIGTERM, then SIGKILL after a grace period); nothing is matched by
name. CPU time is read from /proc for a process and all its descendants (utime + stime +
the reaped children's times), so a run can say how much CPU the server, PostgreSQL and the
load generator each spent per request.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Layout:
    """Which CPUs run what. `server` runs the system under test; `client` runs the load
    generator and, when it is ours to pin, PostgreSQL (the database is a separate host in
    production, so it does not share the server's cores)."""

    server: str
    client: str
    cores: int

    @property
    def pinned(self) -> bool:
        return self.server != self.client


def layout() -> Layout:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        only = ",".join(map(str, cpus))
        return Layout(only, only, len(cpus))
    half = len(cpus) // 2
    return Layout(
        ",".join(map(str, cpus[half:])), ",".join(map(str, cpus[:half])), len(cpus)
    )


def cpu_set(spec: str) -> set[int]:
    return {int(c) for c in spec.split(",") if c}


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def listening_children(pid: int, port: int) -> list[int]:
    """The children of `pid` that listen on TCP `port` (a server's API processes, not the other
    processes it supervises)."""
    import psutil  # a dev dependency, like everything that kills processes on purpose

    found = []
    for child in children(pid):
        try:
            conns = psutil.Process(child).net_connections(kind="tcp")
        except psutil.Error:
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in conns):
            found.append(child)
    return found


def tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children(p))
    return found


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime + cutime + cstime over the processes (each tree member once)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])
    return total / CLK_TCK


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:
        return 0


def pin_tree(pid: int, cpus: str) -> None:
    """Pin a process we did not start under taskset (the embedded PostgreSQL) and its children;
    backends it forks later inherit the mask."""
    mask = cpu_set(cpus)
    for p in tree(pid):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(p, mask)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers(port: int, request: bytes, timeout: float = 1.0) -> bytes | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout) as s:
            s.sendall(request)
            return s.recv(256)
    except OSError:
        return None


class Proc:
    """One started command (and its process tree), pinned to `cpus`."""

    def __init__(self, name: str, argv: Sequence[str], cpus: str | None, log: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        cmd = (["taskset", "-c", cpus] if cpus else []) + list(argv)
        self._log = open(log, "ab")  # noqa: SIM115 - kept open for the process's lifetime
        self.popen = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env=env, start_new_session=True,
        )
        self.pid = self.popen.pid

    def wait_ready(self, port: int, request: bytes, expect: bytes, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode} "
                                   f"(see {self._log.name})")
            got = answers(port, request)
            if got is not None and got.startswith(expect):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} not ready on port {port} (see {self._log.name})")
            time.sleep(0.1)

    def cpu(self) -> float:
        return cpu_seconds(tree(self.pid))

    def stop(self, grace: float = 15.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
