"""The process model, run for real: a supervisor forking workers that share a port."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from panelsrv.procs import Supervisor, _Child, notify
from tests.http.httpkit import free_port
from tests.kit.waiting import until_sync

ROOT = Path(__file__).resolve().parents[2]  # serve_app runs as a module of the tests package
PROGRAM = (sys.executable, "-m", "tests.http.serve_app")
pytestmark = pytest.mark.slow


class Notifications:
    """A unix datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address.replace("@", "\0", 1) if address.startswith("@") else address)

    def wait(self, timeout: float = 15.0) -> bytes:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096)


def request(port: int, target: str = "/api/v2", timeout: float = 10.0) -> tuple[int, dict, str]:  # type: ignore[type-arg]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST" if target.startswith("/api") else "GET", target, body=b"")
        response = conn.getresponse()
        body = response.read()
        connection = response.getheader("Connection") or ""
        return (
            response.status,
            orjson.loads(body) if target.startswith("/api") else {},
            (connection if target.startswith("/api") else body.decode()),
        )
    finally:
        conn.close()


@contextlib.contextmanager
def serve(tmp_path: Path, *extra: str, notify_address: str | None = None) -> Iterator[tuple]:  # type: ignore[type-arg]
    port, ops_port = free_port(), free_port()
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    notes = None
    if notify_address is not None:
        notes = Notifications(notify_address)
        env["NOTIFY_SOCKET"] = notify_address
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [*PROGRAM, "--port", str(port), "--ops-port", str(ops_port), *extra],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc, port, ops_port, notes
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        if notes is not None:
            notes.sock.close()


def answering(port: int) -> bool:
    try:
        request(port)
    except OSError:
        return False
    return True


def pids_answering(port: int, want: int, attempts: int = 300) -> set[int]:
    seen: set[int] = set()
    for _ in range(attempts):  # each a new connection: SO_REUSEPORT spreads them
        seen.add(request(port)[1]["pid"])
        if len(seen) >= want:
            break
    return seen


def test_two_workers_answer_and_systemd_hears_ready_then_stopping(tmp_path: Path) -> None:
    address = f"@panelsrv-test-{os.getpid()}"  # an abstract socket, as systemd may hand out
    with serve(tmp_path, "--workers", "2", notify_address=address) as (proc, port, ops, notes):
        assert notes.wait() == b"READY=1"
        pids = pids_answering(port, 2)
        assert len(pids) == 2 and proc.pid not in pids
        # each froze what it had built by then (full collections walk only what serving makes)
        assert request(port)[1]["frozen"] > 10_000
        # one scrape on either worker covers both (shared through the run directory)
        for _ in range(len(pids)):
            request(port)

        def total() -> int:
            status, _, text = request(ops, "/metrics")
            assert status == 200
            prefix = "panelsrv_http_requests_total"
            return int(next(x for x in text.splitlines() if x.startswith(prefix)).split()[-1])

        until_sync(
            lambda: total() >= len(pids) + 2, 10.0
        )  # each worker writes its share every 0.1 s
        assert request(ops, "/readyz")[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert notes.wait() == b"STOPPING=1"
        assert proc.wait(15) == 0


def test_sigterm_lets_a_slow_request_finish_then_exits_0(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    with serve(tmp_path, "--workers", "2", "--grace", "5", "--gate", str(gate)) as (
        proc,
        port,
        _,
        _notes,
    ):
        until_sync(lambda: answering(port), 15.0)
        result: list[tuple] = []  # type: ignore[type-arg]
        slow = threading.Thread(target=lambda: result.append(request(port, f"/api/v2?gate={gate}")))
        slow.start()
        until_sync(lambda: any(gate.glob("entered-*")), 10.0)  # the request is in its handler
        (entered,) = gate.glob("entered-*")
        pid = int(entered.name.split("-")[1])
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        until_sync(
            (gate / f"stopping-{pid}").exists, 10.0
        )  # its worker is stopping, the handler held
        (gate / "open").touch()
        slow.join(10)
        status, body, connection = result[0]
        assert status == 200 and body["pid"] == pid and connection == "close"
        assert proc.wait(15) == 0
        assert time.monotonic() - started < 5  # well inside the grace: nobody was killed
        with pytest.raises(OSError):
            request(port, timeout=1.0)


def test_a_killed_worker_is_restarted(tmp_path: Path) -> None:
    with serve(tmp_path, "--workers", "2") as (proc, port, _, _notes):
        until_sync(lambda: answering(port), 15.0)
        before = pids_answering(port, 2)
        victim = next(iter(before))
        os.kill(victim, signal.SIGKILL)
        after: set[int] = set()

        def replaced() -> bool:
            with contextlib.suppress(OSError):
                after.add(request(port, timeout=2.0)[1]["pid"])
            return bool(after - before)

        until_sync(replaced, 10.0)  # a replacement worker answered
        assert victim not in pids_answering(port, 2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    assert b"killed by signal 9; restarting" in (tmp_path / "serve.log").read_bytes()


def test_workers_that_cannot_start_make_the_supervisor_give_up(tmp_path: Path) -> None:
    with serve(tmp_path, "--workers", "1", "--fail-start") as (proc, _, _, _notes):
        assert proc.wait(20) == 1
    assert b"keeps failing at start; giving up" in (tmp_path / "serve.log").read_bytes()


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_workers_stop_when_the_supervisor_dies(tmp_path: Path) -> None:
    with serve(tmp_path, "--workers", "2") as (proc, port, _, _notes):
        until_sync(lambda: answering(port), 15.0)
        pids = pids_answering(port, 2)
        proc.kill()
        proc.wait()
        until_sync(lambda: all(_gone(pid) for pid in pids), 10.0)


def test_notify_writes_a_datagram_to_a_path_socket(tmp_path: Path) -> None:
    notes = Notifications(str(tmp_path / "notify.sock"))
    try:
        assert notify(b"READY=1", notes.address)
        assert notes.wait(1) == b"READY=1"
        assert not notify(b"READY=1", "")
        assert not notify(b"READY=1", str(tmp_path / "nobody-listens"))
    finally:
        notes.sock.close()


def test_a_worker_that_was_ready_is_replaced_at_once_however_soon_it_died() -> None:
    # Kills every few seconds must not turn into outages: only a child that never became ready
    # (a failing start) is restarted with backoff, and only those count towards giving up.
    supervisor = Supervisor(lambda slot: None, workers=1, min_uptime=5.0, backoff=(0.5, 30.0))  # type: ignore[arg-type,return-value]
    for _ in range(10):
        died = _Child(0, 4242, time.monotonic() - 1.0, ready=True)
        supervisor._schedule_restart(died, -signal.SIGKILL)
        assert supervisor._restart_at[0] - time.monotonic() <= 0.01
        assert not supervisor._stop_requested
    delays = []
    for ready in (False, False, True):  # a failing start, or one that crashes once ready
        died = _Child(0, 4242, time.monotonic() - 1.0, ready=ready)
        supervisor._schedule_restart(died, 1)
        delays.append(round(supervisor._restart_at[0] - time.monotonic(), 1))
    assert delays == [0.5, 1.0, 2.0]
